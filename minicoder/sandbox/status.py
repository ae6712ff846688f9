"""The verdicts a sandboxed test run and a reward can end in: one `str` enum for every stage.

SWE-bench keeps its verdicts as enums; so do we. `Status` members are strings (`StrEnum`), so they
compare equal to the plain strings in result files (`Status.RESOLVED == "resolved"`), are written
to JSON as those strings, and read back with `Status(text)`.

A test run (`TestRun.status`) is `OK` when the sandbox vouches for its report, or one of the
failure statuses below. A reward (`Reward.status`) is `RESOLVED` (reward 1) or `UNRESOLVED` when
the run was trusted, else the run's failure status (reward 0).
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    OK = "ok"  # test run only: the report is trustworthy
    RESOLVED = "resolved"  # reward only: every FAIL_TO_PASS and PASS_TO_PASS test passed
    UNRESOLVED = "unresolved"  # reward only: a trusted run in which some required test did not pass
    PATCH_FAILED = "patch_failed"  # not UTF-8, not a diff, or does not apply
    SETUP_FAILED = "setup_failed"  # one of the task's setup commands failed
    TIMEOUT = "timeout"  # the tests did not finish within the time limit
    OOM = "oom"  # killed for memory (or a MemoryError in the tests)
    DISK_LIMIT = "disk_limit"  # the workspace grew past its disk quota
    NO_TESTS = "no_tests"  # nothing was collected, or the report holds no test case
    NO_REPORT = "no_report"  # the runner wrote no report
    REPORT_MISMATCH = "report_mismatch"  # exit status and report disagree (early exit, fake output, ...)
    ERROR = "error"  # the sandbox itself failed: not a verdict on the candidate

    @property
    def is_limit(self) -> bool:
        """A resource limit stopped the run (time, memory, disk)."""
        return self in (Status.TIMEOUT, Status.OOM, Status.DISK_LIMIT)


__all__ = ["Status"]
