"""The zygotes, seen from the host: starting one per environment, and asking it for fresh sandboxes.

`zygote.py` is the program that runs inside the sandbox (its header explains the process tree and
the isolation of each child); `warm.py` wraps each forked sandbox in the `Sandbox` interface. Here:

  - `LocalZygote`: the zygote in a bubblewrap sandbox built like the cold path's (read-only /usr, the
    task's Python runtime at /opt/venv, no network, its own pid namespace), but run by root without
    a user namespace and with its capabilities, so that it can make namespaces and switch each child
    to a fresh uid. Started from a thread that lives as long as this process, because bubblewrap's
    `--die-with-parent` follows the thread that started it.
  - `DockerZygote`: the zygote as the main process of one long-lived container of the task's image
    (network none, read-only root, memory / pids / CPU cgroup limits sized for the children it will
    hold, `no-new-privileges`), root with only SYS_ADMIN, SETUID, SETGID, SETPCAP, KILL and CHOWN,
    all of which its children drop. The host talks to it through a unix socket in a bind-mounted
    folder, and the container is labelled with its owner like the pool's (reaped if we die hard).
  - `get_zygote`: one shared zygote per backend and environment (runtime packages / image); a dead
    one is started again on the next request.

Messages are JSON over SOCK_SEQPACKET unix sockets; descriptors (each sandbox's own channel, a
command's stdout/stderr pipes) travel with SCM_RIGHTS, and each sandbox's pid 1 sends its pid with
SCM_CREDENTIALS, which the kernel translates into the host's pid namespace.
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

from minicoder.sandbox.base import REPORT_DIR, WORKSPACE, Limits, SandboxError
from minicoder.sandbox.host import TailBuffer, drain, new_root, remove_tree

ZYGOTE_SOURCE = Path(__file__).with_name("zygote.py")  # read by the host, run inside the sandbox
GRACE_S = 5.0  # how long past a command's timeout the host waits for B before killing the sandbox
START_TIMEOUT_S = 60.0


class ZygoteDied(SandboxError):
    """The zygote (or the sandbox's pid 1) went away while a request was in flight; re-run it."""


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
        self.generation += 1  # before the new process exists: sandboxes of the old one must see the change
        t0 = time.perf_counter()
        ctl = self._start()
        msg, _ = _recv(ctl, START_TIMEOUT_S)
        if not msg or not msg.get("ready"):
            self._stop()
            raise SandboxError(f"the {self.backend} warm runner did not start")
        self.ctl = ctl
        self.info = msg
        self.started_s = time.perf_counter() - t0

    def fork(self, request: dict) -> tuple[socket.socket, int, int, int]:
        """Ask for a new sandbox (uid, gid, sizes, passwd/group text); returns (its channel, B's host
        pid, a pidfd of B, the zygote generation it was forked from)."""
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
                generation = self.generation
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
        return host_end, pid, pidfd, generation

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

        from minicoder.sandbox.docker import (
            LABEL,
            OWNER_LABEL,
            ROLE_LABEL,
            client,
            owner_tag,
            reap_dead_owners,
        )

        cl = client()
        reap_dead_owners(cl)  # warm containers of owners that died hard
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
        from minicoder.record import DEFAULT_IMAGE
        from minicoder.sandbox.docker import image_for

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

