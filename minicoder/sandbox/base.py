"""The sandbox interface: one protocol, two backends, one structured result.

A `Sandbox` runs untrusted code (a candidate patch and the tests that judge it) in a workspace it
owns. Its life is: `prepare(task)` (a fresh copy of the task's repository at its base commit),
`apply_patch(...)`, `run(cmd)` as many times as needed (each run bounded by `Limits`), read files or
the test report back, `close()` (everything it started is gone afterwards). Backends:

  - `local.BwrapSandbox`: bubblewrap namespaces + rlimits, the embedded default (no engine needed);
  - `docker.DockerSandbox`: a container from a warm pool, run through the Docker engine.

Design choices shared by both backends:
  - The workspace is a host directory bind-mounted at `/workspace`; the test report goes to a
    second host directory mounted at `/report`, outside the workspace, under a random name. The
    host side reads both; nothing is parsed from the program's stdout.
  - Patches are applied on the host with `git apply` *before* any untrusted code runs (git refuses
    paths outside the tree, inside `.git`, or through symlinks). After untrusted code has run, the
    host never runs git in the workspace again (a hostile `.git/config` could name a hook).
  - Every run returns an `ExecResult`; a timeout, an out-of-memory kill or a huge output is a field
    of the result, never an exception. Exceptions are for the sandbox itself failing
    (`SandboxError`), e.g. bubblewrap missing or the engine gone.
  - Each sandbox runs as its own unprivileged uid where the host lets us (root host: a fresh uid per
    sandbox, so per-uid limits such as RLIMIT_NPROC count only that sandbox's processes, and
    "stray processes" are simply the processes still owned by that uid).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path

# The host-side helpers used to live here; they moved to host.py. Re-exported so existing callers
# (`from minicoder.sandbox.base import pids_of_uid`) keep working.
from minicoder.sandbox.host import (  # noqa: F401
    ROOT_PREFIX,
    TailBuffer,
    chown_tree,
    dir_size_mb,
    drain,
    is_root,
    kill_uid,
    new_root,
    pick_uid,
    pid_alive,
    pids_of_uid,
    reap_stale_roots,
    remove_tree,
    sandbox_base_dir,
)

WORKSPACE = "/workspace"  # where the repository is mounted inside every sandbox
REPORT_DIR = "/report"  # where the test report directory is mounted (outside the workspace)
HOME = "/tmp/home"  # fake HOME inside the sandbox (private tmp)
SANDBOX_UID = 1000  # the uid untrusted code sees inside the sandbox (mapped to a host uid)
BACKENDS = ("local", "docker")  # the sandbox backends: bubblewrap namespaces, or a Docker engine


class SandboxError(RuntimeError):
    """The sandbox itself could not do its job (tool missing, engine gone, workspace broken)."""


class DiskLimitError(SandboxError):
    """The prepared (patched) workspace does not fit the sandbox's disk quota (`Limits.disk_mb`)."""


@dataclass(frozen=True)
class Limits:
    """Resource limits for one command run in a sandbox.

    memory_mb:   address space (local, RLIMIT_AS) / memory + swap (docker, cgroup) in MiB
    pids:        processes+threads (local: RLIMIT_NPROC of the sandbox uid; docker: pids cgroup)
    file_size_mb: largest file the code may write (RLIMIT_FSIZE on both backends)
    tmp_mb:      size of the private /tmp (tmpfs)
    disk_mb:     the workspace may not grow beyond this (checked after each run)
    cpus:        CPU quota (docker only; bubblewrap has no cgroup of its own)
    cpu_time_s:  CPU seconds per process (RLIMIT_CPU); None = 2 x the timeout
    timeout_s:   wall-clock limit of one run; the whole process tree (or container) is killed
    output_bytes: how much of stdout and of stderr is kept (the tail); the rest is counted, dropped
    """

    memory_mb: int = 2048
    pids: int = 256
    file_size_mb: int = 64
    tmp_mb: int = 256
    disk_mb: int = 512
    cpus: float = 1.0
    cpu_time_s: int | None = None
    timeout_s: float = 60.0
    output_bytes: int = 64 * 1024

    def with_timeout(self, timeout_s: float | None) -> Limits:
        return self if timeout_s is None else replace(self, timeout_s=float(timeout_s))

    def check(self) -> None:
        for name in ("memory_mb", "pids", "file_size_mb", "tmp_mb", "disk_mb", "output_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"Limits.{name} must be positive, got {getattr(self, name)}")
        if self.timeout_s <= 0 or self.cpus <= 0:
            raise ValueError("Limits.timeout_s and Limits.cpus must be positive")


@dataclass
class ExecResult:
    """What one command did. `stdout`/`stderr` are the last `Limits.output_bytes` of each."""

    exit_code: int | None  # None when killed before it could exit (timeout)
    timed_out: bool = False
    oom_killed: bool = False
    stdout: str = ""
    stderr: str = ""
    stdout_bytes: int = 0  # total produced (may exceed what is kept)
    stderr_bytes: int = 0
    duration_s: float = 0.0  # wall time of the command itself
    overhead_s: float = 0.0  # time the sandbox spent around it (set-up, collection, tear-down)
    signal: int | None = None  # the signal that ended it, when one did
    stray_killed: int = 0  # processes still alive after the command that the sandbox had to kill
    disk_exceeded: bool = False
    cpu_s: float | None = None  # CPU seconds of the command and everything it started (warm runner only)

    @property
    def truncated(self) -> bool:
        return len(self.stdout.encode()) < self.stdout_bytes or len(self.stderr.encode()) < self.stderr_bytes

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.oom_killed

    def summary(self) -> str:
        if self.timed_out:
            return f"timed out after {self.duration_s:.1f}s"
        if self.oom_killed:
            return "killed: out of memory"
        if self.signal:
            return f"killed by signal {self.signal}"
        return f"exit {self.exit_code} in {self.duration_s:.2f}s"


@dataclass
class PatchResult:
    applied: bool
    message: str = ""
    changed: list[str] = field(default_factory=list)  # repo-relative paths the patch touched


# --- the interface ------------------------------------------------------------------------------

class Sandbox(ABC):
    """One isolated workspace plus a way to run commands in it. Use as a context manager."""

    backend: str = "?"

    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits()
        self.limits.check()
        self.closed = False

    # the host paths of the workspace and the report directory (valid between prepare and close)
    @property
    @abstractmethod
    def workspace(self) -> Path: ...

    @property
    @abstractmethod
    def report_dir(self) -> Path: ...

    @abstractmethod
    def prepare(self, task) -> None:
        """Fill the workspace with the task's repository at its base commit (fresh, history-free)."""

    @abstractmethod
    def run(self, cmd: list[str], timeout_s: float | None = None, env: dict[str, str] | None = None) -> ExecResult:
        """Run `cmd` (argv, cwd = the workspace) under the sandbox's limits."""

    @abstractmethod
    def close(self) -> None:
        """Kill everything the sandbox started and delete its files. Idempotent."""

    @property
    def alive(self) -> bool:
        """Whether commands can still run (False once closed, or once the sandbox died under us)."""
        return not self.closed and not getattr(self, "dead", False)

    def base_env(self) -> dict[str, str]:
        """The whole environment untrusted code sees: nothing of the host's leaks in."""
        return {
            "PATH": "/opt/venv/bin:/usr/local/bin:/usr/bin:/bin",
            "HOME": HOME,
            "TMPDIR": "/tmp",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONNOUSERSITE": "1",
            "PYTHONHASHSEED": "0",
            "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
            "MALLOC_ARENA_MAX": "2",  # keep virtual memory small under RLIMIT_AS
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
        }

    def finalize_workspace(self) -> None:
        """Called after host-side edits (patches) and before untrusted code runs; backends re-own files."""
        return None  # noqa: B027 -- optional hook, a no-op by default

    def apply_patch(self, patch: str | bytes) -> PatchResult:
        """Apply a unified diff to the workspace (host-side `git apply`, before untrusted code runs)."""
        from minicoder.sandbox.patching import apply_patch

        return apply_patch(self.workspace, patch)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
