"""Errors every layer may raise: a leaf module that imports nothing from minicoder.

`UserError` is a problem with what the user asked for (a bad flag, a missing file, an empty tasks
file). The command line prints it as one line, `minicoder CMD: error: ...`, and exits with status 2,
with no traceback; library code raises it only where the input came straight from a user.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input: printed as a one-line error, exit status 2, no traceback."""
