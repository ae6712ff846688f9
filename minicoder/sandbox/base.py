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

import contextlib
import os
import random
import shutil
import signal
import stat
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from pathlib import Path

WORKSPACE = "/workspace"  # where the repository is mounted inside every sandbox
REPORT_DIR = "/report"  # where the test report directory is mounted (outside the workspace)
HOME = "/tmp/home"  # fake HOME inside the sandbox (private tmp)
SANDBOX_UID = 1000  # the uid untrusted code sees inside the sandbox (mapped to a host uid)
ROOT_PREFIX = "minicoder-sb-"  # host temp dirs: minicoder-sb-<owner pid>-<random>
BACKENDS = ("local", "docker")  # the sandbox backends: bubblewrap namespaces, or a Docker engine


class SandboxError(RuntimeError):
    """The sandbox itself could not do its job (tool missing, engine gone, workspace broken)."""


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


class TailBuffer:
    """Keeps the last `cap` bytes written to it and counts all of them (for capped output)."""

    def __init__(self, cap: int):
        self.cap = cap
        self.buf = bytearray()
        self.total = 0

    def write(self, data: bytes) -> None:
        self.total += len(data)
        self.buf += data
        if len(self.buf) > 2 * self.cap:  # trim lazily: amortised O(1) per byte
            del self.buf[: len(self.buf) - self.cap]

    def text(self) -> str:
        return bytes(self.buf[-self.cap:]).decode("utf-8", errors="replace")


def drain(stream, sink: TailBuffer) -> threading.Thread:
    """Read a pipe to EOF on a daemon thread into `sink`."""

    def _run():
        try:
            while True:
                chunk = stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536)
                if not chunk:
                    break
                sink.write(chunk)
        except (OSError, ValueError):
            pass

    t = threading.Thread(target=_run, daemon=True)
    t.start()
    return t


# --- host-side helpers shared by the backends ---------------------------------------------------

def sandbox_base_dir() -> Path:
    """Where sandbox roots live on the host ($MINICODER_SANDBOX_DIR, default /var/tmp/minicoder-sandboxes-UID).

    A folder of our own rather than the shared temp dir: the sandbox's unprivileged uid must be able
    to traverse every parent of its root, so we keep that folder world-traversable (0755) and re-assert
    it here, instead of depending on the mode of a shared /tmp that other software may change.
    """
    env = os.environ.get("MINICODER_SANDBOX_DIR")
    if env:
        d = Path(env)
        d.mkdir(parents=True, exist_ok=True)
        return d
    d = Path("/var/tmp" if os.path.isdir("/var/tmp") else tempfile.gettempdir()) / f"minicoder-sandboxes-{os.getuid()}"
    d.mkdir(parents=True, exist_ok=True)
    if stat.S_IMODE(d.stat().st_mode) != 0o755:
        os.chmod(d, 0o755)
    return d


def new_root(base: Path | None = None) -> Path:
    """A fresh host directory for one sandbox: <base>/minicoder-sb-<pid>-<random>/."""
    base = base or sandbox_base_dir()
    root = Path(tempfile.mkdtemp(prefix=f"{ROOT_PREFIX}{os.getpid()}-", dir=base))
    os.chmod(root, 0o755)  # the sandbox uid must be able to traverse it for bind mounts
    return root


def is_root() -> bool:
    return os.geteuid() == 0


def pick_uid() -> int:
    """A host uid for one sandbox. Root: a random high uid nobody else uses; otherwise our own."""
    if not is_root():
        return os.getuid()
    return random.randrange(1 << 20, 1 << 30)


def chown_tree(path: Path, uid: int, gid: int) -> None:
    if not is_root():
        return
    for dirpath, dirnames, filenames in os.walk(path):
        os.lchown(dirpath, uid, gid)
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)


def pids_of_uid(uid: int) -> list[int]:
    """Host pids whose real uid is `uid` and that are alive (reads /proc; zombies are skipped)."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as fh:
                for line in fh:
                    if line.startswith(b"State:") and b"Z" in line.split()[1]:
                        break  # a zombie (exited, awaiting its parent's wait): nothing to kill
                    if line.startswith(b"Uid:"):
                        if int(line.split()[1]) == uid:
                            out.append(int(entry.name))
                        break
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return out


def kill_uid(uid: int, rounds: int = 20) -> int:
    """SIGKILL every process of host uid `uid` (never our own uid); returns how many were found."""
    if uid in (0, os.getuid()):
        return 0
    seen: set[int] = set()
    for _ in range(rounds):
        pids = pids_of_uid(uid)
        if not pids:
            break
        for pid in pids:
            seen.add(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)
    return len(seen)


def dir_size_mb(path: Path, stop_at_mb: float | None = None) -> float:
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
            except OSError:
                continue
        if stop_at_mb is not None and total > stop_at_mb * 2**20:
            break
    return total / 2**20


def remove_tree(path: Path) -> None:
    """Remove a sandbox root, also when untrusted code left read-only dirs in it."""

    root = os.path.realpath(path)

    def _onerror(func, p, exc):
        if isinstance(exc[1], FileNotFoundError):
            return  # already gone (another process reaped the same stale root)
        # Make the entry and its parent writable, but never touch anything at or above the root:
        # chmod'ing the root's parent would change a shared folder such as /tmp.
        try:
            parent = os.path.realpath(os.path.dirname(p))
            if parent == root or parent.startswith(root + os.sep):
                os.chmod(parent, 0o700)
            if os.path.realpath(p) != root:
                os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    shutil.rmtree(path, onerror=_onerror)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale_roots(base: Path | None = None) -> int:
    """Delete sandbox roots left by processes that died without closing them. Returns the count."""
    base = base or sandbox_base_dir()
    n = 0
    for p in base.glob(f"{ROOT_PREFIX}*"):
        try:
            owner = int(p.name[len(ROOT_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if owner != os.getpid() and not pid_alive(owner):
            remove_tree(p)
            n += 1
    return n


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
