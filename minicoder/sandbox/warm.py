"""Warm sandboxes: fresh sandboxes forked from the warm runner, behind the ordinary `Sandbox` interface.

Starting Python and importing pytest costs ~0.3 s, several times more than running a small task's
tests. The warm runner pays it once: a zygote (`zygote.py`, run inside the backend's outer sandbox
by `zygotes.py`) imports pytest and forks, per request, a child in namespaces of its own. This module
makes each such child a `Sandbox`, so `reward.run_tests`, `evaluate_many` and sessions use it like
any other backend (`backend` stays "local" or "docker": the same outer sandbox and image as the cold
path, only started once).

A `WarmSandbox` is one child sandbox:
  - a fresh host uid (`local.pick_uid`, as for a cold `BwrapSandbox`), so the per-uid process limit
    counts only its processes and "stray processes" are the processes of that uid;
  - its workspace, report folder and $HOME in tmpfs mounts of its own pid 1 (B), sized by
    `Limits.disk_mb` (the kernel refuses writes past it) and freed when the namespace goes; the host
    prepares the workspace in a staging folder on its own tmpfs (git cannot run in another mount
    namespace), applies the patches and defences there, and copies the result in before any
    untrusted code runs; afterwards it reaches the files through /proc/<B>/root;
  - `run(cmd)` execs a command inside; `run_python(code, args)` runs code in the already warm
    interpreter (the test runner); each command's processes are killed when it returns, files stay;
  - killing B ends its pid namespace and everything in it: that is how a command that ignores its
    timeout, `close()`, `kill()` and Ctrl-C end a sandbox.

Needs a root Linux host (fresh uids and namespaces); `available()` says why not, and callers then use
the cold path. A zygote that dies under a sandbox raises `ZygoteDied` so the caller can re-run.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import threading
import time
from pathlib import Path

from minicoder.sandbox.base import (
    HOME,
    REPORT_DIR,
    WORKSPACE,
    DiskLimitError,
    ExecResult,
    Limits,
    Sandbox,
    SandboxError,
)
from minicoder.sandbox.host import (
    TailBuffer,
    chown_tree,
    dir_size_mb,
    drain,
    is_root,
    kill_uid,
    new_root,
    remove_tree,
)
from minicoder.sandbox.zygotes import (  # noqa: F401 -- re-exported: the warm runner's public names
    GRACE_S,
    DockerZygote,
    LocalZygote,
    Zygote,
    ZygoteDied,
    _recv,
    _send,
    get_zygote,
    shutdown_zygotes,
    staging_dir,
)


def available() -> tuple[bool, str]:
    """(True, "") when warm sandboxes can run here, else (False, why)."""
    if not is_root():
        return False, "the warm runner needs a root host (fresh uids and namespaces per child)"
    if not hasattr(os, "pidfd_open"):
        return False, "the warm runner needs pidfd_open (Linux >= 5.3, Python >= 3.9)"
    import platform

    if platform.machine() not in ("x86_64", "aarch64"):
        return False, f"no seccomp table for {platform.machine()}"
    return True, ""


_PASSWD = ("root:x:0:0::/root:/bin/sh\nsandbox:x:{uid}:{gid}::{home}:/bin/sh\n"
           "nobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n")
_GROUP = "root:x:0:\nsandbox:x:{gid}:\nnogroup:x:65534:\n"


class WarmSandbox(Sandbox):
    """A fresh sandbox forked from the warm runner: own namespaces, own uid, own in-memory workspace.

    `run` starts a command in it (execve); `run_python` runs code in the warm interpreter (the test
    runner: pytest is already imported). Each command's processes are gone when it returns. The
    workspace and report are tmpfs mounts of the sandbox's pid 1, reached from the host through
    /proc/<pid>/root; they are sized by `Limits.disk_mb` and vanish with the sandbox."""

    warm = True
    REPORT_MB = 64

    def __init__(self, backend: str, limits: Limits | None = None, task=None):
        super().__init__(limits)
        from minicoder.sandbox import local

        self.backend = backend
        self.zygote = get_zygote(backend, task, self.limits)
        self.uid = local.pick_uid()
        self.gid = self.uid
        self.dead_reason = ""
        request = {"uid": self.uid, "gid": self.gid, "home": HOME, "tmp_bytes": self.limits.tmp_mb * 2**20,
                   "disk_bytes": (self.limits.disk_mb + 1) * 2**20, "report_bytes": self.REPORT_MB * 2**20,
                   "passwd": _PASSWD.format(uid=self.uid, gid=self.gid, home=HOME),
                   "group": _GROUP.format(gid=self.gid)}
        self.chan, self.pid, self.pidfd, self.generation = self.zygote.fork(request)
        self.root = Path(f"/proc/{self.pid}/root")
        self.cmd_lock = threading.Lock()
        self.staging: Path | None = None  # the host folder the workspace is prepared in (git runs there)

    @property
    def live_workspace(self) -> Path:
        """The workspace inside the sandbox, as the host reaches it (valid while the sandbox lives)."""
        return self.root / WORKSPACE.lstrip("/")

    @property
    def workspace(self) -> Path:
        """Before the first command: the host staging folder (patches are applied there, with git,
        which cannot work in another mount namespace); afterwards the live workspace."""
        return self.staging if self.staging is not None else self.live_workspace

    @property
    def report_dir(self) -> Path:
        return self.root / REPORT_DIR.lstrip("/")

    @property
    def alive(self) -> bool:
        if self.closed or self.dead_reason:
            return False
        try:
            return not select.select([self.pidfd], [], [], 0)[0]  # a pidfd turns readable when B exits
        except (OSError, ValueError):
            return False

    def prepare(self, task) -> None:
        """Copy the task's base-commit repository into a fresh host staging folder (see `workspace`)."""
        from minicoder.sandbox.workspace import fill_workspace

        if self.staging is None:
            self.staging = new_root(staging_dir())
        fill_workspace(task, self.staging)

    def finalize_workspace(self) -> None:
        """Move the prepared (patched, protected) staging tree into the sandbox, owned by its uid.
        Runs before any untrusted code, like every host-side edit."""
        if self.staging is not None:
            import shutil

            staging, self.staging = self.staging, None
            try:
                size = dir_size_mb(staging, stop_at_mb=self.limits.disk_mb)
                if size > self.limits.disk_mb:
                    raise DiskLimitError(f"the patched workspace is over its {self.limits.disk_mb} MB disk quota")
                try:
                    shutil.copytree(staging, self.live_workspace, symlinks=True, dirs_exist_ok=True)
                except (shutil.Error, OSError) as e:  # ENOSPC of the sandbox's tmpfs, or the sandbox went away
                    if not self.alive:
                        if self._zygote_died():
                            raise ZygoteDied("the warm runner died while a workspace was copied in") from None
                        raise SandboxError("the sandbox died while its workspace was copied in") from None
                    raise DiskLimitError(f"the patched workspace does not fit its {self.limits.disk_mb} MB disk "
                                         f"quota ({str(e)[:120]})") from None
            finally:
                remove_tree(staging)
        chown_tree(self.live_workspace, self.uid, self.gid)

    def base_env(self) -> dict[str, str]:
        return {**super().base_env(), "USER": "sandbox", "LOGNAME": "sandbox"}

    def _rlimits(self, limits: Limits) -> dict[str, int]:
        cpu = limits.cpu_time_s or int(2 * limits.timeout_s) + 1
        return {"as": limits.memory_mb * 2**20, "fsize": limits.file_size_mb * 2**20, "nproc": limits.pids,
                "cpu": cpu, "nofile": 1024, "core": 0}

    def _dead(self, why: str, duration: float = 0.0) -> ExecResult:
        return ExecResult(exit_code=None, stderr=f"sandbox is gone: {why}\n", duration_s=duration)

    def _zygote_died(self) -> bool:
        """Whether this sandbox went down with its zygote (then the caller re-runs, see ZygoteDied)."""
        return self.zygote.generation != self.generation or not self.zygote.alive()

    def _command(self, msg: dict, limits: Limits) -> ExecResult:
        if self.closed:
            raise SandboxError("sandbox is closed")
        if self.staging is not None and self.alive:
            self.finalize_workspace()
        if not self.alive:
            if not self.dead_reason and self._zygote_died():
                raise ZygoteDied("the warm runner died before the command")
            self.dead_reason = self.dead_reason or "its pid 1 exited (killed from outside?)"
            return self._dead(self.dead_reason)
        out, err = TailBuffer(limits.output_bytes), TailBuffer(limits.output_bytes)
        r_out, w_out = os.pipe()
        r_err, w_err = os.pipe()
        t0 = time.perf_counter()
        oom_before = self.zygote.oom_kills() if isinstance(self.zygote, DockerZygote) else None
        with self.cmd_lock:
            try:
                _send(self.chan, {**msg, "rlimits": self._rlimits(limits), "timeout": limits.timeout_s},
                      [w_out, w_err])
            except OSError:
                self.dead_reason = "its pid 1 is not answering"
                return self._dead(self.dead_reason)
            finally:
                os.close(w_out)
                os.close(w_err)
            threads = [drain(os.fdopen(r_out, "rb", buffering=0), out), drain(os.fdopen(r_err, "rb", buffering=0), err)]
            try:
                reply, _ = _recv(self.chan, limits.timeout_s + GRACE_S)
            except TimeoutError:
                reply = None
                self.dead_reason = f"it did not answer within {limits.timeout_s + GRACE_S:.0f}s; killed"
                self._kill()
        t1 = time.perf_counter()
        for t in threads:
            t.join(timeout=2)
        if reply is None:
            if not self.dead_reason:
                self.dead_reason = "its pid 1 died during the command"
            if self._zygote_died():
                raise ZygoteDied("the warm runner died during a command")
            res = self._dead(self.dead_reason, t1 - t0)
            res.stdout, res.stdout_bytes = out.text(), out.total
            return res
        status = int(reply["status"])
        timed_out = bool(reply["timed_out"])
        rc = None if timed_out else os.waitstatus_to_exitcode(status)
        sig = None
        if rc is not None and rc < 0:
            sig, rc = -rc, 128 - rc
        oom = False
        if sig == signal.SIGKILL and not timed_out and oom_before is not None:
            after = self.zygote.oom_kills()
            oom = after is not None and after > oom_before
        stray = int(reply.get("stray", 0))  # B swept its pid namespace, which no process can leave
        disk = self._disk_used_mb() > limits.disk_mb
        res = ExecResult(exit_code=rc, timed_out=timed_out, oom_killed=oom, stdout=out.text(), stderr=err.text(),
                         stdout_bytes=out.total, stderr_bytes=err.total, duration_s=float(reply["duration"]),
                         signal=sig, stray_killed=stray, disk_exceeded=disk, cpu_s=reply.get("cpu"))
        res.overhead_s = max(0.0, (time.perf_counter() - t0) - res.duration_s)
        return res

    def run(self, cmd: list[str], timeout_s: float | None = None, env: dict[str, str] | None = None) -> ExecResult:
        limits = self.limits.with_timeout(timeout_s)
        return self._command({"op": "exec", "argv": list(cmd), "env": {**self.base_env(), **(env or {})}}, limits)

    def run_python(self, code: str, args: list[str], timeout_s: float | None = None,
                   env: dict[str, str] | None = None) -> ExecResult:
        """Run `code` as `python3 -I -c code args...` would, in the warm interpreter."""
        limits = self.limits.with_timeout(timeout_s)
        return self._command({"op": "exec", "mode": "python", "code": code, "argv": list(args),
                              "env": {**self.base_env(), **(env or {})}}, limits)

    def _disk_used_mb(self) -> float:
        try:
            st = os.statvfs(self.workspace)
        except OSError:
            return 0.0
        return (st.f_blocks - st.f_bfree) * st.f_frsize / 2**20

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, OSError):
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def kill(self) -> None:
        """End the sandbox now from the host (its pid 1 dies, and with it every process inside)."""
        self._kill()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.staging is not None:
            remove_tree(self.staging)
            self.staging = None
        with contextlib.suppress(OSError):
            _send(self.chan, {"op": "close"}, [])
        if not select.select([self.pidfd], [], [], 0.0 if self.cmd_lock.locked() else 2.0)[0]:
            self._kill()  # busy (a command of another thread) or not answering: end it now
            select.select([self.pidfd], [], [], 5.0)
        ended = bool(select.select([self.pidfd], [], [], 0.0)[0])
        if self.cmd_lock.acquire(timeout=GRACE_S):  # let a command thread see the end before the fds go
            self.cmd_lock.release()
        self.chan.close()
        os.close(self.pidfd)
        # B is pid 1 of the sandbox's pid namespace, and the only place its uid runs. When pid 1 exits,
        # the kernel kills every other process of the namespace and waits for them (zap_pid_ns_processes)
        # before B counts as exited, so once its pidfd reads "exited" nothing of the uid is left. The
        # host-wide /proc scan (10-20 ms of CPU per sandbox on a busy host) is only needed when B's end
        # could not be seen.
        if not ended:
            kill_uid(self.uid)
