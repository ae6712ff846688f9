"""Candidate patch + hidden tests -> reward, in a sandbox, hardened against reward hacking.

    evaluate(task, patch)  -> Reward   (1.0 only when every FAIL_TO_PASS and PASS_TO_PASS test passed)
    run_tests(task, patch) -> TestRun  (per-test outcomes; used to mine and validate tasks)

The steps, in this order (SWE-bench's, plus the defences):
  1. a fresh copy of the repository at the base commit (history-free, no remotes);
  2. the candidate patch, with `git apply` on the host (a patch that is not valid UTF-8 or not a
     valid diff stops here: status "patch_failed");
  3. the hidden tests, fresh: the candidate's changes to test files, pytest configuration, conftest
     files, start-up hooks, bytecode and shadowing modules are undone (`patching.protect`), then
     the test_patch is applied;
  4. the task's `setup` commands, then pytest on the requested test ids, inside the sandbox;
  5. the outcome per test from pytest's JUnit XML, written to a random file name in a directory
     mounted outside the workspace, never from stdout (which the code under test can print to).

How the test process is started (`RUNNER`): `python -I -c RUNNER ...` -- isolated mode, so no
PYTHON* variable, user site or current directory is honoured at start-up. The runner imports pytest
and all of its built-in plugins and the XML writer *before* it puts the workspace first on
`sys.path` (what `python -m pytest` would do), so a `pytest.py` or `xml/` in the patch cannot stand
in for them. It disables plugin auto-loading (entry points in a fake `*.dist-info`), the cache
provider, bytecode writing, and reads bytecode only from a private prefix. It ends with `os._exit`
right after pytest returns, so `atexit` handlers of the code under test cannot rewrite the report.

Cross-checks (any failure gives reward 0 with its own status):
  - timeout / out of memory / disk over quota             -> "timeout" / "oom" / "disk_limit"
  - no report: exit 0 -> "report_mismatch" (e.g. `os._exit(0)` at import), exit 5 -> "no_tests",
    else "no_report"
  - a report with no test cases                           -> "no_tests"
  - exit status disagrees with the report (exit 0 with failures, non-zero with all passed)
                                                          -> "report_mismatch"
  - a requested test missing from the report counts as failed.

Residual risk, stated plainly: code that runs inside the test process can monkeypatch pytest's
objects in memory (e.g. rewrite `TestReport.outcome` from an imported module). We make that harder
(the runner's import order, random report path, exit-status cross-check); we do not make it
impossible. A second process that re-runs failures, or running the hidden tests in a fresh
interpreter per test, would raise the bar further at a cost in speed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import stat
import time
from dataclasses import dataclass, field
from typing import Any

from minicoder.gitdiff import patch_files
from minicoder.record import PASSING, Task
from minicoder.sandbox.base import REPORT_DIR, DiskLimitError, ExecResult, Limits, Sandbox, SandboxError
from minicoder.sandbox.junit import ReportError, parse_junit
from minicoder.sandbox.languages import language_of, protect_language
from minicoder.sandbox.patching import decode_patch, protect
from minicoder.sandbox.status import Status
from minicoder.sandbox.verdict import exit_mismatch, limit_verdict

# What the test process imports before any workspace path is on sys.path. The warm runner (zygote.py)
# runs this once at start-up, so each forked child finds pytest already imported.
RUNNER_PRELUDE = r"""
import os, sys, importlib
sys.dont_write_bytecode = True
sys.pycache_prefix = "/tmp/.pycache"
import pytest, _pytest.config
for _name in tuple(_pytest.config.default_plugins) + ("junitxml", "reports", "runner", "main"):
    try:
        importlib.import_module("_pytest." + _name)
    except Exception:
        pass
import xml.etree.ElementTree, xml.sax.saxutils, json, re, platform, functools
"""

RUNNER = RUNNER_PRELUDE + r"""
report, args = sys.argv[1], sys.argv[2:]


class _NodeIds:
    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(self, items):
        for it in items:
            it.user_properties.append(("minicoder.nodeid", it.nodeid))


sys.path.insert(0, os.getcwd())
sys.argv = ["pytest", *args]
rc = pytest.main([*args, "--junitxml=" + report], plugins=[_NodeIds()])
for _s in (sys.stdout, sys.stderr):
    try:
        _s.flush()
    except Exception:
        pass
os._exit(int(rc))
"""


@dataclass
class TestRun:
    """The outcome of running (some of) a task's tests after a candidate patch."""

    __test__ = False  # not a pytest test class

    status: Status  # OK, or why the run cannot be trusted (see sandbox/status.py)
    #              | report_mismatch | error
    outcomes: dict[str, str] = field(default_factory=dict)  # node id -> passed/failed/error/skipped/xfailed
    messages: dict[str, str] = field(default_factory=dict)  # node id -> failure message (first 500 chars)
    exec: ExecResult | None = None
    patch_applied: bool = False
    message: str = ""  # why, in words, when status is not "ok"
    dropped: list[str] = field(default_factory=list)  # candidate changes undone by the defences
    test_ids: list[str] = field(default_factory=list)  # what was asked for ([] = the default set)
    backend: str = ""
    duration_s: float = 0.0


@dataclass
class Reward:
    """The verdict on one candidate patch."""

    instance_id: str
    reward: float  # 1.0 resolved, else 0.0
    fraction: float  # share of FAIL_TO_PASS + PASS_TO_PASS tests that passed (0 when the report is untrusted)
    status: Status  # RESOLVED | UNRESOLVED | the test run's failure status (see sandbox/status.py)
    #              | no_report | report_mismatch | error
    tests: dict[str, str] = field(default_factory=dict)  # requested test -> outcome ("missing" counts failed)
    exec: ExecResult | None = None
    duration_s: float = 0.0
    message: str = ""
    patch_applied: bool = False
    dropped: list[str] = field(default_factory=list)
    backend: str = ""

    @property
    def resolved(self) -> bool:
        return self.reward == 1.0

    def to_dict(self) -> dict[str, Any]:
        e = self.exec
        return {
            "instance_id": self.instance_id, "reward": self.reward, "fraction": round(self.fraction, 6),
            "status": self.status, "message": self.message, "tests": self.tests,
            "patch_applied": self.patch_applied, "dropped": self.dropped, "backend": self.backend,
            "duration_s": round(self.duration_s, 4),
            "exec": None if e is None else {
                "exit_code": e.exit_code, "timed_out": e.timed_out, "oom_killed": e.oom_killed,
                "duration_s": round(e.duration_s, 4), "overhead_s": round(e.overhead_s, 4),
                "stray_killed": e.stray_killed, "stdout_tail": e.stdout[-2000:], "stderr_tail": e.stderr[-2000:]},
        }


# --- the test command -----------------------------------------------------------------------------

def pytest_args(task: Task) -> list[str]:
    """The task's extra pytest arguments; only pytest commands are supported (we parse its report)."""
    try:
        argv = shlex.split(task.environment.test_cmd)
    except ValueError as e:
        raise ValueError(f"{task.instance_id}: environment.test_cmd is not a valid command line ({e})") from None
    if argv[:1] in (["pytest"], ["py.test"]):
        return argv[1:]
    if len(argv) >= 3 and os.path.basename(argv[0]).startswith("python") and argv[1:3] == ["-m", "pytest"]:
        return argv[3:]
    raise ValueError(f"{task.instance_id}: environment.test_cmd {task.environment.test_cmd!r} is not a pytest "
                     "command (`python -m pytest ...` or `pytest ...`); only pytest reports can be graded")


# the runner's fixed pytest options (also what the warm runner's warm-up run uses)
RUNNER_OPTIONS = ["-p", "no:cacheprovider", "-o", "junit_family=xunit1", "-o", "junit_logging=no", "-q",
                  "--tb=short", "-W", "ignore::DeprecationWarning"]
WARMUP_ARGS = RUNNER_OPTIONS
PYTEST_EXIT_CODES = (0, 1, 2, 3, 4)  # ok, failures, interrupted, internal error, usage error


def runner_argv(task: Task, test_ids: list[str], report_path: str) -> list[str]:
    return ["python3", "-I", "-c", RUNNER, report_path, *pytest_args(task), "-p", "no:cacheprovider",
            "-o", "junit_family=xunit1", "-o", "junit_logging=no", "--rootdir=/workspace", "-q",
            "--tb=short", "-W", "ignore::DeprecationWarning", *test_ids]


def default_test_ids(task: Task) -> list[str]:
    """What run_tests runs with no ids: the test files of the test_patch, else the whole suite."""
    lang = language_of(task)
    keep = (lambda f: f.endswith(".py")) if lang.name == "python" else lang.is_test
    files = [f for f in patch_files(task.test_patch) if keep(f)] if task.test_patch.strip() else []
    return files


# --- backends ----------------------------------------------------------------------------------

RUNNERS = ("auto", "warm", "cold")


def resolve_runner(backend: str | Sandbox, runner: str | None = None) -> str:
    """"warm" (fork a sandbox from the warm runner, `warm.py`) or "cold" (a fresh interpreter per run).

    `runner` None reads $MINICODER_SANDBOX_RUNNER (default "auto": warm where the host allows it,
    i.e. a root Linux host, else cold). A caller's own Sandbox instance is always used as it is."""
    if isinstance(backend, Sandbox):
        return "warm" if getattr(backend, "warm", False) else "cold"
    runner = runner or os.environ.get("MINICODER_SANDBOX_RUNNER") or "auto"
    if runner not in RUNNERS:
        raise ValueError(f"unknown sandbox runner {runner!r}: expected one of {RUNNERS}")
    if runner == "cold":
        return "cold"
    from minicoder.sandbox.warm import available

    ok, why = available()
    if runner == "warm" and not ok:
        raise SandboxError(f"the warm runner is not available here: {why}")
    return "warm" if ok else "cold"


@contextlib.contextmanager
def open_sandbox(backend: str | Sandbox, task: Task, limits: Limits, runner: str | None = None):
    """A prepared-to-use sandbox for `task`: "local", "docker", or a caller's instance (not closed here)."""
    if isinstance(backend, Sandbox):
        yield backend
        return
    if backend not in ("local", "docker"):
        raise ValueError(f"unknown sandbox backend {backend!r}: expected 'local', 'docker' or a Sandbox")
    if resolve_runner(backend, runner) == "warm":
        from minicoder.sandbox.warm import WarmSandbox

        sb = WarmSandbox(backend, limits, task=task)
    elif backend == "local":
        from minicoder.sandbox.local import BwrapSandbox

        sb = BwrapSandbox(limits, packages=task.environment.python_packages)
    else:
        from minicoder.sandbox.docker import acquire

        sb = acquire(task, limits)
    try:
        yield sb
    finally:
        sb.close()


def _read_report(sb: Sandbox, name: str) -> bytes | None:
    """The report file, only if it is a regular file (O_NOFOLLOW: never a symlink to a host file)."""
    path = sb.report_dir / name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        return fh.read(32 * 2**20 + 1)


def _judge(tr: TestRun, res: ExecResult, data: bytes | None) -> None:
    """Set tr.status / outcomes from the exit status and the report, with the cross-checks of
    `verdict.py` (pytest writes its JUnit file at the end of the session: a report is a complete one)."""
    limit = limit_verdict(res)
    if limit:
        tr.status, tr.message = limit
        return
    if data is None:
        if res.exit_code == 0:
            tr.status, tr.message = Status.REPORT_MISMATCH, "pytest exited 0 but wrote no report (early exit?)"
        elif res.exit_code == 5:
            tr.status, tr.message = Status.NO_TESTS, "no tests were collected"
        else:
            tr.status, tr.message = Status.NO_REPORT, f"no test report ({res.summary()}): {res.stderr[-300:].strip()}"
        return
    try:
        cases = parse_junit(data)
    except ReportError as e:
        tr.status, tr.message = Status.REPORT_MISMATCH, f"unreadable report: {e}"
        return
    tr.outcomes = {k: v.outcome for k, v in cases.items()}
    tr.messages = {k: v.message for k, v in cases.items() if v.message}
    if not cases:
        tr.status, tr.message = Status.NO_TESTS, "the report holds no test cases"
        return
    bad = [k for k, v in cases.items() if v.outcome in ("failed", "error")]
    why = exit_mismatch(res.exit_code, len(bad), True, "pytest", expected=PYTEST_EXIT_CODES)
    if why:
        tr.status, tr.message = Status.REPORT_MISMATCH, why + ("" if why.startswith("exit") else f" ({res.summary()})")
    else:
        tr.status = Status.OK
    if any("MemoryError" in m for m in tr.messages.values()):
        tr.message = (tr.message + "; " if tr.message else "") + "MemoryError in the tests"


def _tests_in_sandbox(sb: Sandbox, task: Task, text: str, ids: list[str], limits: Limits, tr: TestRun) -> None:
    """Steps 1-5 of the module docstring in an open sandbox; fills `tr`."""
    tr.backend = sb.backend
    sb.prepare(task)
    pr = sb.apply_patch(text)
    tr.patch_applied = pr.applied
    if not pr.applied:
        tr.status, tr.message = Status.PATCH_FAILED, pr.message
        return
    lang = language_of(task)
    try:
        if lang.name == "python":
            tr.dropped = protect(sb.workspace, pr.changed, task.test_patch, task.FAIL_TO_PASS + task.PASS_TO_PASS + ids)
        else:
            tr.dropped = protect_language(sb.workspace, pr.changed, task.test_patch, lang)
    except RuntimeError as e:
        tr.status, tr.message = Status.ERROR, str(e)
        return
    try:
        sb.finalize_workspace()
    except DiskLimitError as e:  # the candidate's files alone are over the quota
        tr.status, tr.message = Status.DISK_LIMIT, str(e)
        return
    for cmd in task.environment.setup:
        res = sb.run(["/bin/sh", "-c", cmd], timeout_s=limits.timeout_s)
        if not res.ok:
            tr.exec = res
            tr.status, tr.message = Status.SETUP_FAILED, f"setup command {cmd!r}: {res.summary()}"
            return
    if lang.name != "python":
        from minicoder.sandbox.lang_runners import run_language_tests

        run_language_tests(sb, task, lang, ids, limits, tr)
        return
    name = secrets.token_hex(16) + ".xml"
    argv = runner_argv(task, ids, f"{REPORT_DIR}/{name}")
    if getattr(sb, "warm", False):  # the same code and arguments, in an interpreter that has pytest loaded
        res = sb.run_python(RUNNER, argv[4:], timeout_s=limits.timeout_s)
    else:
        res = sb.run(argv, timeout_s=limits.timeout_s)
    tr.exec = res
    _judge(tr, res, _read_report(sb, name))


def run_tests(task: Task, patch: str | bytes | None, test_ids: list[str] | None = None,
              backend: str | Sandbox = "local", timeout_s: float | None = None,
              limits: Limits | None = None, *, runner: str | None = None) -> TestRun:
    """Apply `patch` (None/"" = none) to a fresh workspace, then the hidden tests, and run `test_ids`
    (default: the test_patch's test files, or the whole suite). Returns per-test outcomes.

    `runner`: "warm" / "cold" / "auto" (see `resolve_runner`). A warm run whose zygote died under it
    (never the candidate's doing: it cannot see the zygote) is re-run in a fresh sandbox."""
    from minicoder.sandbox.warm import ZygoteDied

    t0 = time.perf_counter()
    limits = (limits or Limits(timeout_s=task.environment.timeout_s)).with_timeout(timeout_s)
    ids = list(test_ids) if test_ids is not None else default_test_ids(task)
    lang = language_of(task)  # JavaScript, Go, Rust: lang_runners.py; Python: the pytest runner here
    if lang.name == "python":
        pytest_args(task)  # fail early and clearly on a non-pytest command
    else:
        from minicoder.sandbox.lang_runners import check_test_cmd

        check_test_cmd(lang, task)
        runner = "cold"  # the warm runner is a Python interpreter with pytest loaded
    tr = TestRun(status=Status.ERROR, test_ids=ids, backend=backend if isinstance(backend, str) else backend.backend)
    text, why = decode_patch(patch)
    if text is None:
        tr.status, tr.message = Status.PATCH_FAILED, why
        tr.duration_s = time.perf_counter() - t0
        return tr
    try:
        for attempt in range(3):
            try:
                with open_sandbox(backend, task, limits, runner) as sb:
                    _tests_in_sandbox(sb, task, text, ids, limits, tr)
                break
            except ZygoteDied as e:
                if attempt == 2:
                    raise SandboxError(f"the warm runner kept dying: {e}") from e
                tr = TestRun(status=Status.ERROR, test_ids=ids, backend=tr.backend)
        return tr
    except SandboxError as e:
        tr.status, tr.message = Status.ERROR, f"sandbox failure: {e}"
        return tr
    finally:
        tr.duration_s = time.perf_counter() - t0


def evaluate(task: Task, patch: str | bytes | None, backend: str | Sandbox = "local",
             timeout_s: float | None = None, limits: Limits | None = None, *, runner: str | None = None,
             security: bool | None = None) -> Reward:
    """Reward 1.0 only when every FAIL_TO_PASS and PASS_TO_PASS test passed, else 0.0.

    `security`: also run the task's exploit tests and bandit, reported apart (a `SecurityReward`,
    see `minicoder.sandbox.security`); None (default) = on for tasks that carry exploit tests.
    """
    from minicoder.sandbox import security as sec  # lazy: security.py builds on this module

    if sec.security_on(task, security):
        return sec.evaluate_security(task, patch, backend=backend, timeout_s=timeout_s, limits=limits)
    ids = list(dict.fromkeys(task.FAIL_TO_PASS + task.PASS_TO_PASS))
    tr = run_tests(task, patch, ids, backend=backend, timeout_s=timeout_s, limits=limits, runner=runner)
    tests = {i: tr.outcomes.get(i, "missing") for i in ids}
    n_pass = sum(o in PASSING for o in tests.values())
    trusted = tr.status == Status.OK
    if trusted:
        status = Status.RESOLVED if n_pass == len(ids) else Status.UNRESOLVED
        if status == Status.UNRESOLVED and "MemoryError" in tr.message:
            status = Status.OOM
    else:
        status = tr.status
    missing = [i for i, o in tests.items() if o == "missing"]
    message = tr.message
    if trusted and missing:
        message = (message + "; " if message else "") + f"{len(missing)} requested test(s) missing from the report"
    return Reward(
        instance_id=task.instance_id, reward=1.0 if status == Status.RESOLVED else 0.0,
        fraction=(n_pass / len(ids)) if (trusted and ids) else 0.0, status=status, tests=tests, exec=tr.exec,
        duration_s=tr.duration_s, message=message, patch_applied=tr.patch_applied, dropped=tr.dropped,
        backend=tr.backend)


def evaluate_many(task: Task, patches: list[str | bytes | None], backend: str = "local", workers: int = 2,
                  limits: Limits | None = None, timeout_s: float | None = None, *, runner: str | None = None,
                  progress: bool = False) -> list[Reward]:
    """Grade many candidates of one task (a GRPO group); the rewards come back in the patches' order.

    What is shared across candidates is only what no candidate can touch: the task's base-commit
    template (copied per candidate), the environment's runtime or image, and the warm runner's
    interpreter (forked per candidate, never run in). Each candidate still gets a fresh sandbox of
    its own -- workspace, namespaces, uid, /tmp -- exactly as `evaluate` gives it, so each reward is
    the one `evaluate` would give that patch alone."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    patches = list(patches)
    if not patches:
        return []
    from concurrent.futures import ThreadPoolExecutor

    from minicoder.sandbox.workspace import template_for

    template_for(task)  # build the base-commit template once, before the workers race for it
    lim = limits or Limits(timeout_s=task.environment.timeout_s)
    if not isinstance(backend, Sandbox) and language_of(task).name == "python" and resolve_runner(backend, runner) == "warm":
        from minicoder.sandbox.warm import get_zygote

        with contextlib.suppress(SandboxError):  # a failing start shows up per candidate, with its message
            get_zygote(backend, task, lim).ensure()
    elif backend == "docker":  # cold: one container started ahead per worker
        from minicoder.sandbox.docker import get_pool, image_for

        with contextlib.suppress(SandboxError):
            get_pool(image_for(task), lim.with_timeout(timeout_s)).ensure_size(workers + 1)

    def one(patch):
        return evaluate(task, patch, backend=backend, timeout_s=timeout_s, limits=limits, runner=runner)

    with ThreadPoolExecutor(max_workers=min(workers, len(patches)), thread_name_prefix="evaluate") as ex:
        futures = [ex.submit(one, p) for p in patches]
        if progress:
            from tqdm.auto import tqdm

            for f in tqdm(futures, desc=f"evaluate {task.instance_id}", unit="eval"):
                f.result()
        return [f.result() for f in futures]
