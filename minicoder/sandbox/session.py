"""Sessions: a live sandbox an agent drives turn by turn for one rollout, graded afterwards in a fresh one.

    from minicoder.sandbox.session import open_session
    with open_session(task, backend="local") as s:       # or "docker"
        print(s.read_file("calc/ops.py"))
        s.write_file("calc/ops.py", fixed_text)
        r = s.exec("python -m pytest -q tests/test_ops.py", timeout=30)   # an ExecResult
        patch = s.diff()                                 # unified diff against the base commit
    reward = evaluate(task, patch, backend="local")      # hidden tests, in a fresh sandbox

What a session holds: the task's repository at its base commit, with only the files the agent may
see -- the hidden tests (`test_patch`) are never applied in a session; they meet the agent's diff
only in the separate, fresh grading sandbox (SWE-bench and SkyRL grade this way too).

Where it runs: on a root host, a sandbox forked from the warm runner (`warm.py`): start-up is a
fork, and each `exec` costs one process start inside the already running sandbox; the processes a
command started are killed when it returns, files in the workspace, $HOME and /tmp persist. Without
root (or with `runner="cold"`), the backend's ordinary sandbox: a bubblewrap run per command
(`local`), a container from the warm pool with `docker exec` (`docker`; there a timeout kills the
container and so ends the session).

Files are read, written, listed and diffed on the host (`workspace.py`: no symlink is followed, no
git is run in a tree untrusted code touched); `diff()` compares against the host's own copy of the
base commit.

Limits: each command has the usual `Limits` (timeout, memory, processes, file size); the session as
a whole has `SessionLimits` (wall time since it opened, total CPU seconds of its commands, workspace
size). A session past a limit, closed, or whose sandbox died (killed from outside, engine gone) is
no longer `alive`: `exec` then returns an error `ExecResult` at once (exit_code None, the reason in
stderr) and file calls raise `SessionError`; nothing ever hangs. `close()` (also on leaving the
`with` block, on Ctrl-C, and at exit) ends everything it started.

`SessionPool` keeps sandboxes started ahead of need, so a batch of rollouts starts without waiting
on namespace or container creation.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass

from minicoder.sandbox.base import ExecResult, Limits, Sandbox, SandboxError
from minicoder.sandbox.workspace import (
    WorkspaceError,
    diff_trees,
    read_bytes,
    snapshot,
    template_for,
    write_bytes,
)

# `python -m pytest ARGS` in a warm interpreter: the workspace first on sys.path, then pytest's main
_PYTEST_MAIN = """
import os, sys
import pytest
sys.path.insert(0, os.getcwd())
sys.argv = ["pytest", *sys.argv[1:]]
rc = pytest.main(sys.argv[1:])
sys.stdout.flush(); sys.stderr.flush()
os._exit(int(rc))
"""


class SessionError(RuntimeError):
    """A session call that cannot be done: the session ended, or a path/file the host refuses."""


@dataclass(frozen=True)
class SessionLimits:
    """Limits of one session as a whole (each command also has its `Limits`).

    wall_s:  seconds from open to the end of the session's life
    cpu_s:   CPU seconds of all its commands together (warm runner: measured; otherwise each command's
             wall time counts as its CPU time)
    disk_mb: largest the workspace may grow (warm runner: a tmpfs of this size, so writes past it fail;
             otherwise checked after each command, and the session ends when it is exceeded)
    """

    wall_s: float = 3600.0
    cpu_s: float = 1800.0
    disk_mb: int = 512

    def check(self) -> None:
        if self.wall_s <= 0 or self.cpu_s <= 0 or self.disk_mb <= 0:
            raise ValueError(f"SessionLimits must be positive, got {self}")


_open_sessions: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for s in list(_open_sessions):
        with contextlib.suppress(Exception):
            s.close()


def _new_sandbox(backend: str, task, limits: Limits, session_limits: SessionLimits, runner: str | None) -> Sandbox:
    from dataclasses import replace

    from minicoder.sandbox.reward import resolve_runner

    if backend not in ("local", "docker"):
        raise ValueError(f"unknown sandbox backend {backend!r}: expected 'local' or 'docker'")
    sized = replace(limits, disk_mb=session_limits.disk_mb)  # the workspace quota is the session's
    if resolve_runner(backend, runner) == "warm":
        from minicoder.sandbox.warm import WarmSandbox

        return WarmSandbox(backend, sized, task=task)
    if backend == "local":
        from minicoder.sandbox.local import BwrapSandbox

        return BwrapSandbox(sized, packages=task.environment.python_packages)
    from minicoder.sandbox.docker import acquire

    return acquire(task, sized)


class Session:
    """A live sandbox holding one task's visible repository. See the module docstring."""

    def __init__(self, task, backend: str = "local", limits: Limits | None = None,
                 session_limits: SessionLimits | None = None, runner: str | None = None,
                 sandbox: Sandbox | None = None):
        self.task, self.backend = task, backend
        self.limits = limits or Limits(timeout_s=task.environment.timeout_s)
        self.session_limits = session_limits or SessionLimits()
        self.limits.check()
        self.session_limits.check()
        self.sb = sandbox or _new_sandbox(backend, task, self.limits, self.session_limits, runner)
        self.reason = ""  # why the session ended, once it has
        self.cpu_used_s = 0.0
        self.n_exec = 0
        self.closed = False
        self._busy = threading.Lock()
        try:
            self.sb.prepare(task)  # the base commit only: the hidden test_patch never enters a session
            self.sb.finalize_workspace()
        except BaseException:
            self.sb.close()
            raise
        self.owner = getattr(self.sb, "uid", None), getattr(self.sb, "gid", None)
        self.opened_at = time.monotonic()
        _open_sessions.add(self)

    # --- state ----------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """False once closed, past a session limit, or when its sandbox died."""
        if self.closed or self.reason:
            return False
        if time.monotonic() - self.opened_at > self.session_limits.wall_s:
            self._end(f"session wall-time limit ({self.session_limits.wall_s:.0f}s) reached")
            return False
        if not self.sb.alive:
            self._end("its sandbox died (killed from outside?)")
            return False
        return True

    def _end(self, reason: str) -> None:
        if not self.reason:
            self.reason = reason
        with contextlib.suppress(Exception):
            self.sb.close()

    def _error(self, why: str) -> ExecResult:
        return ExecResult(exit_code=None, stderr=f"session ended: {why}\n")

    def _ensure(self) -> None:
        if not self.alive:
            raise SessionError(f"session ended: {self.reason or 'closed'}")

    # --- commands -------------------------------------------------------------------------------
    def exec(self, cmd: str | list[str], timeout: float | None = None, env: dict[str, str] | None = None,
             _python: str | None = None) -> ExecResult:
        """Run a command (a string goes to /bin/sh -c) in the workspace; never raises for the
        command's own failures, and never hangs: a dead session answers with an error result."""
        if not self.alive:
            return self._error(self.reason or "closed")
        argv = ["/bin/sh", "-c", cmd] if isinstance(cmd, str) else [str(a) for a in cmd]
        left_wall = self.session_limits.wall_s - (time.monotonic() - self.opened_at)
        left_cpu = self.session_limits.cpu_s - self.cpu_used_s
        timeout = min(float(timeout or self.limits.timeout_s), left_wall)
        cpu_cap = max(1, int(min(self.limits.cpu_time_s or 2 * timeout + 1, left_cpu + 1)))
        from dataclasses import replace

        self.sb.limits = replace(self.limits, cpu_time_s=cpu_cap, disk_mb=self.sb.limits.disk_mb)
        with self._busy:
            try:
                if _python is not None:  # argv[3:] are the code's arguments (see `pytest`)
                    res = self.sb.run_python(_python, argv[3:], timeout_s=max(0.1, timeout), env=env)
                else:
                    res = self.sb.run(argv, timeout_s=max(0.1, timeout), env=env)
            except SandboxError as e:
                self._end(f"sandbox failure: {e}")
                return self._error(self.reason)
        self.n_exec += 1
        self.cpu_used_s += res.cpu_s if res.cpu_s is not None else res.duration_s
        if not self.sb.alive:
            self._end("a timeout killed its sandbox" if res.timed_out else "its sandbox died during the command")
            res.stderr += f"session ended: {self.reason}\n"
        elif self.cpu_used_s > self.session_limits.cpu_s:
            self._end(f"session CPU limit ({self.session_limits.cpu_s:.0f}s) reached")
        elif not getattr(self.sb, "warm", False) and res.disk_exceeded and self._disk_mb() > self.session_limits.disk_mb:
            self._end(f"session disk limit ({self.session_limits.disk_mb} MB) exceeded")
        return res

    def pytest(self, args: list[str] | None = None, timeout: float | None = None) -> ExecResult:
        """Run pytest on the workspace (`args` as on its command line; default: the whole suite).

        On the warm runner this runs in the sandbox's already warm interpreter (pytest imported once
        for all sessions), like `python -I -m pytest ARGS`: the workspace first on sys.path, PYTHON*
        variables not honoured; elsewhere it is `python -m pytest ARGS` through `exec`."""
        args = [str(a) for a in (args or [])]
        if not getattr(self.sb, "warm", False):
            return self.exec(["python3", "-m", "pytest", *args], timeout=timeout)
        return self.exec(["python3", "-m", "pytest", *args], timeout=timeout, _python=_PYTEST_MAIN)

    def _disk_mb(self) -> float:
        from minicoder.sandbox.host import dir_size_mb

        return dir_size_mb(self.sb.workspace, stop_at_mb=self.session_limits.disk_mb + 1)

    # --- files (on the host, never following a symlink) -------------------------------------------
    def read_file(self, path: str, max_bytes: int = 2 * 2**20) -> str:
        """The text of a workspace file (UTF-8; undecodable bytes replaced)."""
        self._ensure()
        try:
            return read_bytes(self.sb.workspace, path, max_bytes).decode("utf-8", errors="replace")
        except (WorkspaceError, OSError) as e:
            raise SessionError(str(e)) from None

    def write_file(self, path: str, text: str | bytes) -> None:
        """Create or replace a workspace file (parent folders created), owned by the sandbox's user."""
        self._ensure()
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        owner = self.owner if self.owner[0] is not None else None
        try:
            write_bytes(self.sb.workspace, path, data, owner=owner, max_bytes=self.limits.file_size_mb * 2**20)
        except (WorkspaceError, OSError) as e:
            raise SessionError(str(e)) from None

    def list_files(self) -> list[str]:
        """Workspace files (and symlinks) as sorted relative paths, without .git and bytecode."""
        self._ensure()
        try:
            return sorted(snapshot(self.sb.workspace, with_data=False))
        except (WorkspaceError, OSError) as e:
            raise SessionError(str(e)) from None

    def diff(self) -> str:
        """The agent's changes as a git-style unified diff against the base commit (computed on the
        host against its own copy of the base; binary files are left out, see `diff_skipped`)."""
        self._ensure()
        try:
            now = snapshot(self.sb.workspace)
        except (WorkspaceError, OSError) as e:
            raise SessionError(str(e)) from None
        text, self.diff_skipped = diff_trees(snapshot(template_for(self.task)), now)
        return text

    # --- the end --------------------------------------------------------------------------------
    def kill(self) -> None:
        """End the sandbox at once (a command running in another thread returns an error result)."""
        self._end("killed")
        if hasattr(self.sb, "kill"):
            self.sb.kill()

    def close(self) -> None:
        """End the session: every process it started is gone afterwards. Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._busy.locked() and hasattr(self.sb, "kill"):
            self.sb.kill()  # a command is running in another thread: do not wait for it
        self._end(self.reason or "closed")
        _open_sessions.discard(self)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "alive" if self.alive else f"ended ({self.reason or 'closed'})"
        return f"Session({self.task.instance_id!r}, backend={self.backend!r}, {state}, {self.n_exec} commands)"


def open_session(task, backend: str = "local", limits: Limits | None = None,
                 session_limits: SessionLimits | None = None, runner: str | None = None,
                 pool: SessionPool | None = None) -> Session:
    """A live sandbox for one rollout of `task` (use it as a context manager). `pool`: take an
    already started sandbox from a `SessionPool` of the same backend and environment."""
    if pool is not None:
        return pool.open(task, session_limits=session_limits)
    return Session(task, backend, limits, session_limits, runner)


class SessionPool:
    """Sandboxes started ahead of need, for a batch of rollouts of tasks sharing one environment.

    A background thread keeps `size` sandboxes ready (namespaces made, or containers started);
    `open(task)` fills one with the task's repository (a copy, ~1 ms) and hands it out as a
    `Session`. A sandbox is used by one session only and never goes back to the pool."""

    def __init__(self, task, backend: str = "local", size: int = 4, limits: Limits | None = None,
                 session_limits: SessionLimits | None = None, runner: str | None = None):
        self.task, self.backend, self.size = task, backend, max(0, size)
        self.limits = limits or Limits(timeout_s=task.environment.timeout_s)
        self.session_limits = session_limits or SessionLimits()
        self.runner = runner
        self.ready: deque[Sandbox] = deque()
        self.lock = threading.Lock()
        self.want = threading.Event()
        self.stopped = False
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._fill, daemon=True, name=f"session-pool-{backend}")
        self.thread.start()
        self.want.set()

    def _env_key(self, task) -> tuple:
        env = task.environment
        return env.image, tuple(sorted(set(env.python_packages)))

    def _fill(self) -> None:
        while not self.stopped:
            self.want.wait(timeout=1.0)
            self.want.clear()
            while not self.stopped and len(self.ready) < self.size:
                try:
                    sb = _new_sandbox(self.backend, self.task, self.limits, self.session_limits, self.runner)
                except (SandboxError, OSError) as e:
                    self.errors.append(str(e))
                    time.sleep(0.5)
                    break
                with self.lock:
                    late = self.stopped
                    if not late:
                        self.ready.append(sb)
                if late:
                    sb.close()

    def wait_ready(self, timeout: float = 60.0) -> bool:
        """Block until the pool holds `size` started sandboxes (or `timeout`)."""
        deadline = time.monotonic() + timeout
        while len(self.ready) < self.size and time.monotonic() < deadline and not self.stopped:
            time.sleep(0.01)
        return len(self.ready) >= self.size

    def open(self, task=None, session_limits: SessionLimits | None = None) -> Session:
        """A session of `task` (default: the pool's task) on a sandbox started ahead of time."""
        if self.stopped:
            raise SessionError("session pool is closed")
        task = task or self.task
        sb = None
        if self._env_key(task) == self._env_key(self.task):
            with self.lock:
                while self.ready and sb is None:
                    cand = self.ready.popleft()
                    if cand.alive:
                        sb = cand
                    else:
                        cand.close()
        self.want.set()
        return Session(task, self.backend, self.limits, session_limits or self.session_limits, self.runner,
                       sandbox=sb)

    def close(self) -> None:
        """Close the sandboxes still waiting in the pool (sessions handed out are their owners')."""
        self.stopped = True
        self.want.set()
        self.thread.join(timeout=30)
        with self.lock:
            idle = list(self.ready)
            self.ready.clear()
        for sb in idle:
            sb.close()

    def __enter__(self) -> SessionPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
