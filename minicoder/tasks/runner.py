"""The one place synthesis touches execution: a thin adapter over `minicoder.sandbox.run_tests`.

Candidate code (mined commits, mutants, trivial patches) only ever runs inside the sandbox; this
module adds no execution of its own. A failure of the sandbox itself raises `SandboxFailure` so
that no pipeline records it as a verdict on the candidate. It normalises what synthesis needs from
a `TestRun`: the set of test ids that passed, and whether the patch applied.

It also counts sandbox runs, in two ways: `COUNTER` over the whole process (a pipeline's total),
and `count_runs()` for the code inside a `with` block *on the calling thread* - a pipeline counts
each candidate's runs that way, so with several worker threads a candidate's count never includes
another thread's runs. `runs` means one thing everywhere in synthesis: a number of sandbox runs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from minicoder.record import PASSING
from minicoder.sandbox.status import Status


class SandboxFailure(RuntimeError):
    """The sandbox itself failed (not the code under test): stop rather than record a wrong verdict."""


@dataclass
class Run:
    """One sandbox run as synthesis sees it."""

    outcomes: dict[str, str]  # test id -> passed | failed | error | skipped
    status: Status  # the sandbox's status for the run (sandbox/status.py)
    patch_applied: bool
    log: str = ""  # tail of the test output (for problem statements and debugging)
    seconds: float = 0.0
    messages: dict[str, str] = field(default_factory=dict)  # test id -> failure message
    message: str = ""  # the sandbox's explanation when the status is not "ok"

    @property
    def trusted(self) -> bool:
        """The sandbox vouches for the report (no timeout, no exit-status/report mismatch, ...)."""
        return self.status == Status.OK

    @property
    def passed(self) -> set[str]:
        """Tests that passed (an expected failure counts, as in SWE-bench); none if the run is untrusted."""
        if not self.trusted:
            return set()
        return {t for t, o in self.outcomes.items() if o in PASSING}

    def not_passed(self, ids) -> set[str]:
        """Ids among `ids` that did not pass (a test missing from the report counts as failed)."""
        ok = self.passed
        return {t for t in ids if t not in ok}


@dataclass
class RunCounter:
    n: int = 0
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, seconds: float) -> None:
        with self.lock:
            self.n += 1
            self.seconds += seconds


COUNTER = RunCounter()
_local = threading.local()  # per thread: the counters of the open `count_runs` blocks


@contextlib.contextmanager
def count_runs() -> Iterator[RunCounter]:
    """A counter of the sandbox runs this thread makes inside the block (nested blocks both count)."""
    c = RunCounter()
    stack = _local.__dict__.setdefault("stack", [])
    stack.append(c)
    try:
        yield c
    finally:
        stack.remove(c)


def run_tests(task, patch: str, test_ids: list[str] | None = None, backend: Any = "local",
              timeout_s: float | None = None) -> Run:
    """Run `task`'s tests with `patch` applied (hidden `test_patch` applied fresh after it)."""
    import time

    from minicoder.sandbox.reward import run_tests as sandbox_run_tests

    t0 = time.perf_counter()
    tr = sandbox_run_tests(task, patch, test_ids=test_ids, backend=backend, timeout_s=timeout_s)
    dt = time.perf_counter() - t0
    COUNTER.add(dt)
    for c in _local.__dict__.get("stack", ()):
        c.add(dt)
    # An infrastructure failure must not turn into "this mutant/commit/task is bad": a pipeline that
    # recorded it would skip the candidate forever on resume. Code under test cannot cause these.
    if tr.status == Status.ERROR or (tr.status == Status.NO_REPORT and "bwrap:" in tr.message):
        raise SandboxFailure(f"{task.instance_id}: {tr.status}: {tr.message[:300]}")
    log = (tr.exec.stdout or "")[-4000:] if tr.exec is not None else ""
    return Run(outcomes=dict(tr.outcomes), status=Status(tr.status), patch_applied=bool(tr.patch_applied),
               log=log, seconds=dt, messages=dict(getattr(tr, "messages", {}) or {}), message=tr.message)
