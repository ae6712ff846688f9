"""Host-side helpers the sandbox backends share: sandbox roots, uids, killing, trees, output capture.

Everything here runs on the host, outside any sandbox, and knows nothing of tasks or tests:
  - where sandbox roots live (`sandbox_base_dir`, `new_root`) and how stale ones are reaped after
    their owner died (`reap_stale_roots`);
  - the unprivileged host uid a sandbox runs as (`pick_uid`), re-owning its files (`chown_tree`),
    finding and killing what still runs as that uid (`pids_of_uid`, `kill_uid`);
  - measuring and removing trees that untrusted code wrote (`dir_size_mb`, `remove_tree`);
  - keeping only the tail of a command's output (`TailBuffer`, `drain`).

The interface and the result types (`Sandbox`, `Limits`, `ExecResult`, ...) are in `base.py`.
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
from pathlib import Path

ROOT_PREFIX = "minicoder-sb-"  # host temp dirs: minicoder-sb-<owner pid>-<random>


# --- output capture --------------------------------------------------------------------------------

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


# --- sandbox roots, uids, processes, trees ---------------------------------------------------------

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
