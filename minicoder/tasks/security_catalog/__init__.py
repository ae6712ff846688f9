"""The catalogue of vulnerability classes for `minicoder.tasks.security`: one module per class.

Each module defines `CLASS`, a `security.VulnClass` (key, CWE id, the hint sentence, three
`Template`s and ten domains). Order here is the order of reports.
"""

from __future__ import annotations

MODULES = ("sql_injection", "command_injection", "code_injection", "path_traversal", "deserialization",
           "xss", "password_hashing", "tokens", "redos")
