"""The warm runner's host side: one zygote per environment, and `WarmSandbox`, a fresh sandbox forked from it.

`zygote.py` (which runs inside the sandbox) explains the process tree and the isolation of each
child. This module starts zygotes, talks to them, and wraps each forked sandbox in the ordinary
`Sandbox` interface, so `reward.run_tests` and sessions use it like any other backend:

  - `local`: the zygote runs in a bubblewrap sandbox built like the cold path's (read-only /usr, the
    task's Python runtime at /opt/venv, no network, its own pid namespace), but as root with its
    capabilities (bubblewrap run by root, no user namespace), so that it can make namespaces and
    switch to the fresh uid of each child. Started from a thread that lives as long as this process
    (`--die-with-parent` follows the thread that started bubblewrap).
  - `docker`: the zygote is the main process of one long-lived container of the task's image
    (network none, read-only root, memory / pids / CPU cgroup limits sized for the children it will
    hold, `no-new-privileges`), root with only the capabilities it needs (SYS_ADMIN, SETUID, SETGID,
    SETPCAP, KILL); children drop all of them. The host reaches it through a unix socket in a
    bind-mounted folder.

Each `WarmSandbox` gets a slot folder on the host (workspace, report, home and its own /etc/passwd
naming its uid) and a fresh host uid (`local.pick_uid`), exactly like a cold `BwrapSandbox`: files
are prepared and patched on the host, the uid owns them, the stray-process check is "processes of
that uid". B, the sandbox's pid 1, tells the host its pid through SCM_CREDENTIALS; killing it ends
the whole pid namespace, which is how a hung sandbox, `close()` and Ctrl-C end everything.

Needs a root host (fresh uids and namespaces); elsewhere `available()` says why and callers use the
cold path. A zygote that dies is started again on the next request (`ZygoteDied` tells callers to
re-run what was in flight).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

from minicoder.sandbox.base import HOME, REPORT_DIR, WORKSPACE, ExecResult, Limits, Sandbox, SandboxError
from minicoder.sandbox.host import (
    TailBuffer,
    chown_tree,
    drain,
    is_root,
    kill_uid,
    new_root,
    remove_tree,
)

ZYGOTE_SOURCE = Path(__file__).with_name("zygote.py")
GRACE_S = 5.0  # how long past a command's timeout the host waits for B before killing the sandbox
START_TIMEOUT_S = 60.0


class ZygoteDied(SandboxError):
    """The zygote (or the sandbox's pid 1) went away while a request was in flight; re-run it."""


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


def _recv(sock: socket.socket, timeout: float | None) -> tuple[dict | None, int | None]:
    """(message or None at EOF/timeout, sender's pid from SCM_CREDENTIALS or None)."""
    if timeout is not None and not select.select([sock], [], [], max(0.0, timeout))[0]:
        raise TimeoutError
    try:
        msg, anc, _f, _a = sock.recvmsg(1 << 20, socket.CMSG_SPACE(struct.calcsize("3i")))
    except OSError:
        return None, None
    pid = None
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("3i", data[:12])[0]
    if not msg:
        return None, pid
    return json.loads(msg), pid


def _send(sock: socket.socket, obj: dict, fds: list[int]) -> None:
    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))] if fds else []
    sock.sendmsg([json.dumps(obj).encode()], anc)


class _Spawner:
    """A thread that lives as long as the process and starts the local zygotes (see the header)."""

    def __init__(self):
        self.jobs: list = []
        self.cv = threading.Condition()
        threading.Thread(target=self._loop, daemon=True, name="minicoder-zygote-spawner").start()

    def _loop(self):
        while True:
            with self.cv:
                while not self.jobs:
                    self.cv.wait()
                fn, box, done = self.jobs.pop(0)
            try:
                box.append(fn())
            except BaseException as e:  # noqa: BLE001 -- handed back to the caller's thread
                box.append(e)
            done.set()

    def run(self, fn):
        box: list = []
        done = threading.Event()
        with self.cv:
            self.jobs.append((fn, box, done))
            self.cv.notify()
        done.wait()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]


_spawner: _Spawner | None = None
_spawner_lock = threading.Lock()


def _spawn(fn):
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = _Spawner()
    return _spawner.run(fn)


class Zygote:
    """One running zygote: its outer sandbox, the control socket, and the slots folder it forks from."""

    backend = "?"

    def __init__(self, prelude: str):
        self.prelude = prelude
        self.lock = threading.Lock()
        self.root = new_root()  # <base>/minicoder-sb-<pid>-*: reaped with the others if we die hard
        self.ctl: socket.socket | None = None
        self.generation = 0
        self.stopped = False
        self.started_s = 0.0

    # the backend-specific parts
    def _start(self) -> socket.socket:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def config(self, ctl: str, hide: list[str]) -> str:
        from minicoder.sandbox.reward import RUNNER, WARMUP_ARGS

        return json.dumps({"ctl": ctl, "hide": hide, "workspace": WORKSPACE, "report": REPORT_DIR,
                           "prelude": self.prelude, "code": RUNNER, "warmup": WARMUP_ARGS})

    def ensure(self) -> None:
        """Start the zygote if it is not running (first use, or it died)."""
        if self.stopped:
            raise SandboxError("warm runner was shut down")
        if self.ctl is not None and self.alive():
            return
        if self.ctl is not None:
            with contextlib.suppress(Exception):
                self._stop()
            self.ctl.close()
            self.ctl = None
        t0 = time.perf_counter()
        ctl = self._start()
        msg, _ = _recv(ctl, START_TIMEOUT_S)
        if not msg or not msg.get("ready"):
            self._stop()
            raise SandboxError(f"the {self.backend} warm runner did not start")
        self.ctl = ctl
        self.info = msg
        self.generation += 1
        self.started_s = time.perf_counter() - t0

    def fork(self, request: dict) -> tuple[socket.socket, int, int]:
        """Ask for a new sandbox (uid, gid, sizes, passwd/group text); returns (its channel, B's host
        pid, a pidfd of B)."""
        with self.lock:
            for attempt in range(2):
                self.ensure()
                host_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                host_end.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
                try:
                    _send(self.ctl, {"op": "open", **request}, [child_end.fileno()])
                except OSError:
                    host_end.close()
                    child_end.close()
                    self.ctl.close()
                    self.ctl = None
                    if attempt:
                        raise ZygoteDied(f"the {self.backend} warm runner is not answering") from None
                    continue
                child_end.close()
                break
        try:
            msg, pid = _recv(host_end, START_TIMEOUT_S)
        except TimeoutError:
            host_end.close()
            raise SandboxError("a warm sandbox did not come up in time") from None
        if msg is None or pid is None:
            host_end.close()
            raise ZygoteDied("the warm runner died while forking a sandbox")
        if "error" in msg:
            host_end.close()
            raise SandboxError(f"warm sandbox set-up failed: {msg['error']}")
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            host_end.close()
            raise ZygoteDied("a warm sandbox died right after starting") from None
        return host_end, pid, pidfd

    def shutdown(self) -> None:
        self.stopped = True
        with self.lock:
            if self.ctl is not None:
                self.ctl.close()
                self.ctl = None
            with contextlib.suppress(Exception):
                self._stop()
        remove_tree(self.root)


class LocalZygote(Zygote):
    """The zygote in a privileged bubblewrap sandbox of the task's runtime (see the header)."""

    backend = "local"

    def __init__(self, packages: list[str], prelude: str):
        from minicoder.sandbox.local import bwrap_path, ensure_runtime

        super().__init__(prelude)
        self.bwrap = bwrap_path()
        self.runtime, self.pyinfo = ensure_runtime(packages)
        self.proc: subprocess.Popen | None = None

    def _argv(self, config: str) -> list[str]:
        from minicoder.sandbox.local import ETC_FILES

        a = [self.bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup",
             "--die-with-parent", "--new-session", "--clearenv", "--cap-add", "ALL", "--hostname", "sandbox"]
        made: set[str] = set()

        def parents(dst: str) -> None:  # run by root, bubblewrap would make missing parents 0700
            for parent in reversed(Path(dst).parents[:-1]):
                if str(parent) not in made:
                    made.add(str(parent))
                    a.extend(["--perms", "0755", "--dir", str(parent)])

        def ro(src: str, dst: str) -> None:
            parents(dst)
            a.extend(["--ro-bind", src, dst])

        ro("/usr", "/usr")
        for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(top):
                a.extend(["--symlink", os.readlink(top), top])
            elif os.path.isdir(top):
                ro(top, top)
        for p in ETC_FILES:
            if os.path.exists(p):
                ro(p, p)
        for name in ("passwd", "group"):  # mount points; each child binds its own over them
            ro("/dev/null", f"/etc/{name}")
        (self.root / "hosts").write_text("127.0.0.1 localhost sandbox\n")
        os.chmod(self.root / "hosts", 0o644)
        ro(str(self.root / "hosts"), "/etc/hosts")
        prefix = self.pyinfo["prefix"]
        if not prefix.startswith("/usr/") and prefix != "/usr":
            ro(prefix, prefix)
        ro(str(self.runtime), "/opt/venv")
        a += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--dir", WORKSPACE, "--dir", REPORT_DIR,
              "--remount-ro", "/", "--chdir", "/", "--setenv", "PATH", "/opt/venv/bin:/usr/bin:/bin"]
        return a + ["--", "/opt/venv/bin/python3", "-I", "-c", ZYGOTE_SOURCE.read_text(), config]

    def _start(self) -> socket.socket:
        host_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = self._argv(self.config(f"fd:{child_end.fileno()}", []))

        def start():
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, pass_fds=[child_end.fileno()], start_new_session=True,
                                    env={"PATH": "/usr/bin:/bin"}, umask=0o022)

        try:
            self.proc = _spawn(start)
        except OSError as e:
            raise SandboxError(f"could not start the local warm runner: {e}") from e
        finally:
            child_end.close()
        self.err = TailBuffer(8192)
        drain(self.proc.stderr, self.err)
        return host_end

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def kill_for_test(self) -> None:
        """Kill the zygote's whole outer sandbox from the host (tests of the re-start path)."""
        self._stop()


class DockerZygote(Zygote):
    """The zygote as the main process of one container of the task's image (see the header)."""

    backend = "docker"

    def __init__(self, image: str, limits: Limits, capacity: int, prelude: str):
        super().__init__(prelude)
        self.image, self.limits, self.capacity = image, limits, capacity
        self.ctl_dir = self.root / "ctl"
        self.ctl_dir.mkdir(mode=0o700)
        for name in ("empty-workspace", "empty-report"):  # mount points only; each child binds its own
            (self.root / name).mkdir(mode=0o755)
        self.container = None

    def _start(self) -> socket.socket:
        import docker

        from minicoder.sandbox.docker import LABEL, OWNER_LABEL, ROLE_LABEL, client, owner_tag

        cl = client()
        lim, n = self.limits, self.capacity
        total_mb = lim.memory_mb * n + 512
        try:
            self.container = cl.containers.run(
                self.image, ["python3", "-I", "-c", ZYGOTE_SOURCE.read_text(),
                             self.config("listen:/ctl/zygote.sock", ["/ctl"])],
                detach=True, init=True, user="0:0", working_dir="/", network_mode="none",
                mem_limit=f"{total_mb}m", memswap_limit=f"{total_mb}m", pids_limit=lim.pids * n + 64,
                nano_cpus=int(min(os.cpu_count() or 1, lim.cpus * n) * 1e9), cap_drop=["ALL"],
                cap_add=["SYS_ADMIN", "SETUID", "SETGID", "SETPCAP", "KILL", "CHOWN"], security_opt=["no-new-privileges"],
                read_only=True, tmpfs={"/tmp": "rw,nosuid,nodev,size=16m,mode=1777"},
                ulimits=[docker.types.Ulimit(name="core", soft=0, hard=0)],
                volumes={str(self.ctl_dir): {"bind": "/ctl", "mode": "rw"},
                         str(self.root / "empty-workspace"): {"bind": WORKSPACE, "mode": "ro"},
                         str(self.root / "empty-report"): {"bind": REPORT_DIR, "mode": "ro"}},
                labels={LABEL: "1", ROLE_LABEL: "warm", OWNER_LABEL: owner_tag()},
                environment={"PATH": "/opt/venv/bin:/usr/local/bin:/usr/bin:/bin"}, hostname="sandbox")
        except Exception as e:
            raise SandboxError(f"could not start the docker warm runner from {self.image}: {e}") from e
        sock_path = self.ctl_dir / "zygote.sock"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if sock_path.exists():
                s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                try:
                    s.connect(str(sock_path))
                    return s
                except OSError:
                    s.close()
            if time.monotonic() > deadline or not self.alive():
                logs = ""
                with contextlib.suppress(Exception):
                    logs = self.container.logs(tail=20).decode(errors="replace")
                self._stop()
                raise SandboxError(f"the docker warm runner did not start: {logs.strip()[-600:]}")
            time.sleep(0.02)

    def alive(self) -> bool:
        if self.container is None:
            return False
        try:
            self.container.reload()
        except Exception:
            return False
        return self.container.status == "running"

    def _stop(self) -> None:
        if self.container is not None:
            with contextlib.suppress(Exception):
                self.container.remove(force=True)
            self.container = None

    def kill_for_test(self) -> None:
        if self.container is not None:
            with contextlib.suppress(Exception):
                self.container.kill()

    def oom_kills(self) -> int | None:
        from minicoder.sandbox.docker import _oom_kills

        return None if self.container is None else _oom_kills(self.container.id)


def staging_dir() -> Path:
    """Host folder for workspaces being prepared: a tmpfs (/dev/shm) where there is one, since the
    disk's mkdir/rmdir can cost milliseconds each; stale folders of dead owners are reaped."""
    from minicoder.sandbox.host import reap_stale_roots, sandbox_base_dir

    global _staging
    if _staging is None:
        shm = Path("/dev/shm")
        if shm.is_dir() and os.access(shm, os.W_OK):
            d = shm / f"minicoder-staging-{os.getuid()}"
            d.mkdir(mode=0o700, exist_ok=True)
        else:
            d = sandbox_base_dir()
        reap_stale_roots(d)
        _staging = d
    return _staging


_staging: Path | None = None
_zygotes: dict[tuple, Zygote] = {}
_zygotes_lock = threading.Lock()


def _prelude() -> str:
    from minicoder.sandbox.reward import RUNNER_PRELUDE

    return RUNNER_PRELUDE


def get_zygote(backend: str, task=None, limits: Limits | None = None) -> Zygote:
    """The shared zygote for a backend and the task's environment (runtime packages / image)."""
    limits = limits or Limits()
    if backend == "local":
        packages = tuple(sorted(set(task.environment.python_packages))) if task is not None else ()
        key: tuple = ("local", packages)
    elif backend == "docker":
        from minicoder.sandbox.docker import image_for
        from minicoder.tasks.schema import DEFAULT_IMAGE

        image = image_for(task) if task is not None else DEFAULT_IMAGE
        capacity = int(os.environ.get("MINICODER_WARM_CAPACITY", "16"))
        key = ("docker", image, limits.memory_mb, limits.pids, limits.cpus, capacity)
    else:
        raise ValueError(f"no warm runner for backend {backend!r}")
    with _zygotes_lock:
        z = _zygotes.get(key)
        if z is None or z.stopped:
            z = LocalZygote(list(key[1]), _prelude()) if backend == "local" else DockerZygote(key[1], limits, key[5],
                                                                                              _prelude())
            _zygotes[key] = z
        return z


def shutdown_zygotes() -> None:
    """Stop every zygote of this process (their sandboxes die with them)."""
    with _zygotes_lock:
        zs = list(_zygotes.values())
        _zygotes.clear()
    for z in zs:
        z.shutdown()


atexit.register(shutdown_zygotes)

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
        self.generation = self.zygote.generation
        request = {"uid": self.uid, "gid": self.gid, "home": HOME, "tmp_bytes": self.limits.tmp_mb * 2**20,
                   "disk_bytes": (self.limits.disk_mb + 1) * 2**20, "report_bytes": self.REPORT_MB * 2**20,
                   "passwd": _PASSWD.format(uid=self.uid, gid=self.gid, home=HOME),
                   "group": _GROUP.format(gid=self.gid)}
        self.chan, self.pid, self.pidfd = self.zygote.fork(request)
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
            shutil.copytree(staging, self.live_workspace, symlinks=True, dirs_exist_ok=True)
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

    def _command(self, msg: dict, limits: Limits) -> ExecResult:
        if self.closed:
            raise SandboxError("sandbox is closed")
        if self.staging is not None and self.alive:
            self.finalize_workspace()
        if not self.alive:
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
            if self.zygote.generation != self.generation or not self.zygote.alive():
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
        if self.cmd_lock.acquire(timeout=GRACE_S):  # let a command thread see the end before the fds go
            self.cmd_lock.release()
        self.chan.close()
        os.close(self.pidfd)
        kill_uid(self.uid)
