"""The cross-checks every test runner's verdict goes through: one home for pytest and the others.

A test run is trusted only when the process's exit status and its structured report agree. Both
graders (`reward._judge` for pytest, `lang_runners._judge_runs` for node / tape / mocha / jest,
Go and Rust) ask the same two questions here:

  limit_verdict(res)                      did a resource limit end the run (time, memory, disk)?
  exit_mismatch(rc, n_bad, complete, ...) does the exit status contradict the report?

`exit_mismatch` returns why in words (the run is then "report_mismatch"), or None:
  - no exit status at all (the runner's shell never recorded one);
  - exit status 0 with a failing test in the report (a forged report, or a forced exit code);
  - exit status 0 and an incomplete report: the runner never reached its own end (an early
    `exit(0)` after printing fake "ok" lines);
  - a failing exit status with a complete report that has no failure;
  - an exit status the runner never uses (`expected`, when given: pytest's 0-4).
"""

from __future__ import annotations

from collections.abc import Collection

from minicoder.sandbox.base import ExecResult
from minicoder.sandbox.status import Status


def limit_verdict(res: ExecResult) -> tuple[Status, str] | None:
    """(status, message) when the run was stopped by a limit, else None."""
    if res.timed_out:
        return Status.TIMEOUT, f"tests did not finish within {res.duration_s:.1f}s"
    if res.oom_killed:
        return Status.OOM, "killed by the out-of-memory killer"
    if res.disk_exceeded:
        return Status.DISK_LIMIT, "the workspace grew past its disk quota"
    return None


def exit_mismatch(rc: int | None, n_bad: int, complete: bool, runner: str = "the runner",
                  expected: Collection[int] | None = None) -> str | None:
    """Why exit status `rc` contradicts a report with `n_bad` failing tests that is `complete` (the
    runner reached its end), or None when they agree."""
    if rc is None:
        return f"{runner} left no exit status"
    if expected is not None and rc not in expected:
        return f"unexpected {runner} exit status {rc}"
    if rc == 0 and n_bad:
        return f"exit status 0 but the report has {n_bad} failing test(s)"
    if rc == 0 and not complete:
        return f"{runner} exited 0 but never reached its end (early exit?)"
    if rc != 0 and complete and not n_bad:
        return f"exit status {rc} but the report has no failure"
    return None
