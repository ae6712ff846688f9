"""The Docker backend: containers from a warm pool, commands run with `docker exec`, no network.

Every container is created with:
  network_mode=none; memory = memory+swap = `Limits.memory_mb` (no swap); pids cgroup limit; CPU
  quota (`nano_cpus`); user 1000:1000 (the image's `sandbox`); cap_drop=ALL; no-new-privileges;
  a read-only root filesystem with a private size-limited tmpfs /tmp; RLIMIT_FSIZE / NOFILE /
  CORE ulimits; docker-init as PID 1 (reaps zombies) running `sleep infinity`; the host workspace
  and report directories bind-mounted at /workspace and /report; the label `minicoder=1` plus
  `minicoder.owner=<host>:<pid>:<process start time>`.

The warm pool (`ContainerPool`, one per image and limits): containers are created and started
ahead of need (up to one creation per core at a time; `ensure_size` lets a batch ask for one per
worker), handed out once, and removed after use by two background threads (a container that ran
untrusted code is never reused). Handing one out costs a dict pop, so the per-evaluation overhead
is the `docker exec` itself plus filling the bind-mounted workspace on the host. (The faster path
for batches is the warm runner, `warm.py`, which forks sandboxes inside one container instead.)

Timeout: a run that passes `timeout_s` kills the whole container (everything in it dies; the
sandbox is then spent). Output: the exec stream is drained on a thread that keeps only the last
`Limits.output_bytes` of each stream. OOM: an exec that dies of SIGKILL without a timeout is
checked against the container's memory cgroup OOM counter (cgroup v1 or v2 on the host), falling
back to "SIGKILL without timeout = OOM" where the counter is not readable.

Leftovers: pools remove their containers at exit (atexit, so also after Ctrl-C), including one the
background filler is still creating (shutdown waits for it) and sandboxes never closed. A process that
dies harder (SIGKILL, crash) leaves labelled containers whose owner is dead; `reap_dead_owners`
removes them, and every new pool calls it first. `cleanup()` (the `minicoder cleanup` command)
removes every container carrying the label.

Bind mounts assume the engine runs on this host (true for `make docker`); a remote engine would
need the workspace streamed in instead.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import glob
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from minicoder.sandbox.base import REPORT_DIR, WORKSPACE, ExecResult, Limits, Sandbox, SandboxError
from minicoder.sandbox.host import TailBuffer, chown_tree, dir_size_mb, new_root, pid_alive, remove_tree
from minicoder.sandbox.workspace import fill_workspace

LABEL = "minicoder"  # the same label images.py puts on everything minicoder makes
OWNER_LABEL = "minicoder.owner"
ROLE_LABEL = "minicoder.role"
POOL_LABEL = "minicoder.pool"  # which pool of this process started a container (its shutdown sweeps them)
CONTAINER_UID = 1000  # `sandbox` in the base image
REMOVERS = 2  # threads removing used containers (removal is slower than a small test run)


def _proc_start_time(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return "?"


def owner_tag(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{_proc_start_time(pid)}"


def owner_alive(tag: str) -> bool:
    """Whether the process named by an owner tag still runs (pid reuse is caught by start time)."""
    try:
        host, pid_s, start = tag.rsplit(":", 2)
        pid = int(pid_s)
    except ValueError:
        return False
    if host != socket.gethostname():
        return True  # not ours to judge
    return pid_alive(pid) and _proc_start_time(pid) == start


_client = None
_client_lock = threading.Lock()


def client():
    """The shared Docker SDK client; `SandboxError` if no engine answers."""
    global _client
    with _client_lock:
        if _client is None:
            try:
                import docker

                c = docker.from_env(timeout=120)
                c.ping()
            except Exception as e:  # the SDK raises several unrelated types for "no engine"
                raise SandboxError(f"no Docker engine answers ({type(e).__name__}: {e}); run `make docker`") from e
            _client = c
        return _client


def labelled_containers(cl=None, role: str | None = None, labels: dict[str, str] | None = None) -> list:
    """Containers labelled minicoder=1 (and `role`, and every extra label in `labels`)."""
    cl = cl or client()
    extra = [f"{k}={v}" for k, v in (labels or {}).items()]
    filters = {"label": [f"{LABEL}=1"] + ([f"{ROLE_LABEL}={role}"] if role else []) + extra}
    # List ids first, then inspect each: a container removed in between (by a pool's background
    # removal, or another process's cleanup) is skipped instead of failing the whole listing, as
    # the SDK's containers.list(all=True) does.
    import docker.errors

    out = []
    for row in cl.api.containers(all=True, filters=filters):
        try:
            out.append(cl.containers.get(row["Id"]))
        except docker.errors.NotFound:
            continue
    return out


def _remove(container) -> None:
    with contextlib.suppress(Exception):
        container.remove(force=True)


def reap_dead_owners(cl=None, labels: dict[str, str] | None = None) -> int:
    """Remove labelled sandbox and warm-runner containers whose owning process is gone (`labels`: only
    those that also carry these labels). Returns how many."""
    n = 0
    for role in ("sandbox", "warm"):
        for c in labelled_containers(cl, role=role, labels=labels):
            tag = (c.labels or {}).get(OWNER_LABEL, "")
            if not owner_alive(tag):
                _remove(c)
                n += 1
    return n


def cleanup(cl=None, dead_only: bool = False, labels: dict[str, str] | None = None) -> int:
    """Remove every container labelled minicoder=1 (or only those of dead owners; `labels`: only those
    that also carry these labels, e.g. one test run's). Returns how many."""
    if dead_only:
        return reap_dead_owners(cl, labels)
    cs = labelled_containers(cl, labels=labels)
    for c in cs:
        _remove(c)
    return len(cs)


def _oom_kills(container_id: str) -> int | None:
    """The memory cgroup's OOM-kill counter for a container, read on the host; None if not found."""
    pats = [f"/sys/fs/cgroup/memory/docker/{container_id}*/memory.oom_control",
            f"/sys/fs/cgroup/memory/*/docker-{container_id}*.scope/memory.oom_control",
            f"/sys/fs/cgroup/system.slice/docker-{container_id}*.scope/memory.events",
            f"/sys/fs/cgroup/docker/{container_id}*/memory.events"]
    for pat in pats:
        for path in glob.glob(pat):
            try:
                for line in Path(path).read_text().splitlines():
                    if line.startswith("oom_kill "):
                        return int(line.split()[1])
            except OSError:
                continue
    return None


@dataclass
class _Slot:
    container: object
    root: Path


class ContainerPool:
    """Started-ahead containers of one image and one set of limits; each handed out once."""

    def __init__(self, image: str, limits: Limits, size: int = 2):
        self.image, self.limits, self.size = image, limits, max(0, size)
        self.cl = client()
        try:
            self.cl.images.get(image)
        except Exception as e:
            raise SandboxError(f"image {image} is not available to the engine ({e}); run `make docker` "
                               "(base image) or build the task's image first") from e
        reap_dead_owners(self.cl)
        self.ready: collections.deque[_Slot] = collections.deque()
        self.live: dict[str, _Slot] = {}
        self.lock = threading.Lock()
        self.want = threading.Event()
        self.stopped = False
        self.created = 0
        self.handed_out: list[str] = []  # ids of every container given to a sandbox (for audits)
        self.trash: queue.Queue = queue.Queue()
        self.creating = 0  # containers being created by the filler right now
        self.collected = False  # shutdown has taken `live` (a creation finishing later removes its own)
        self.pool_id = f"{os.getpid()}-{id(self):x}-{time.monotonic_ns():x}"
        self.thread = threading.Thread(target=self._fill, daemon=True, name=f"pool-{image}")
        self.thread.start()
        for i in range(REMOVERS):
            threading.Thread(target=self._remover, daemon=True, name=f"pool-remover-{i}-{image}").start()
        self.want.set()
        atexit.register(self.shutdown)

    def ensure_size(self, n: int) -> None:
        """Keep at least `n` containers started ahead (e.g. one per worker of a batch)."""
        if n > self.size:
            self.size = n
            self.want.set()

    def _create(self) -> _Slot:
        import docker

        lim = self.limits
        root = new_root()
        for name in ("workspace", "report"):
            (root / name).mkdir()
            os.chmod(root / name, 0o755)
        chown_tree(root / "workspace", CONTAINER_UID, CONTAINER_UID)
        chown_tree(root / "report", CONTAINER_UID, CONTAINER_UID)
        try:
            c = self.cl.containers.run(
                self.image, ["sleep", "infinity"], detach=True, init=True,
                user=f"{CONTAINER_UID}:{CONTAINER_UID}", working_dir=WORKSPACE, network_mode="none",
                mem_limit=f"{lim.memory_mb}m", memswap_limit=f"{lim.memory_mb}m", pids_limit=lim.pids,
                nano_cpus=int(lim.cpus * 1e9), cap_drop=["ALL"], security_opt=["no-new-privileges"],
                read_only=True, tmpfs={"/tmp": f"rw,nosuid,nodev,size={lim.tmp_mb}m,mode=1777"},
                ulimits=[docker.types.Ulimit(name="fsize", soft=lim.file_size_mb * 2**20, hard=lim.file_size_mb * 2**20),
                         docker.types.Ulimit(name="nofile", soft=1024, hard=1024),
                         docker.types.Ulimit(name="core", soft=0, hard=0)],
                volumes={str(root / "workspace"): {"bind": WORKSPACE, "mode": "rw"},
                         str(root / "report"): {"bind": REPORT_DIR, "mode": "rw"}},
                labels={LABEL: "1", ROLE_LABEL: "sandbox", OWNER_LABEL: owner_tag(), POOL_LABEL: self.pool_id},
                environment={"HOME": "/tmp"}, hostname="sandbox")
        except Exception as e:
            remove_tree(root)
            raise SandboxError(f"could not start a container of {self.image}: {e}") from e
        slot = _Slot(c, root)
        with self.lock:
            self.live[c.id] = slot
            self.created += 1
        return slot

    def _fill(self) -> None:
        """Top the pool up, creating up to one container per core at a time: one after the other,
        a batch with more workers than the pool has ready containers waits on creation (the flat
        throughput of the first measurements)."""
        while not self.stopped:
            self.want.wait(timeout=1.0)
            self.want.clear()
            with self.lock:
                deficit = self.size - len(self.ready) - self.creating
                n = max(0, min(deficit, (os.cpu_count() or 1) - self.creating))
                self.creating += n
            for _ in range(n):
                threading.Thread(target=self._create_one, daemon=True).start()

    def _create_one(self) -> None:
        try:
            slot = self._create()
        except SandboxError:
            time.sleep(1.0)
            slot = None
        with self.lock:
            self.creating -= 1
            if slot is not None and not self.stopped:
                self.ready.append(slot)
            # shut down while this one was being created: it is in `live`, which shutdown removes once
            # no creation is in flight; only if shutdown already gave up waiting is it ours to remove
            orphan = slot is not None and self.collected
        if orphan:
            _remove(slot.container)
            remove_tree(slot.root)
        self.want.set()

    def acquire(self) -> _Slot:
        if self.stopped:
            raise SandboxError("container pool is shut down")
        with self.lock:
            slot = self.ready.popleft() if self.ready else None
        self.want.set()  # top the pool back up in the background
        slot = slot if slot is not None else self._create()
        with self.lock:
            self.handed_out.append(slot.container.id)
        return slot

    def release(self, slot: _Slot) -> None:
        """Schedule a used container (never reused) and its host files for removal, off the caller's
        path: removing a container takes longer than running a small test suite in it."""
        self.trash.put(slot)

    def _remover(self) -> None:
        while True:
            slot = self.trash.get()
            try:
                if slot is None:
                    return
                _remove(slot.container)
                remove_tree(slot.root)
                with self.lock:
                    self.live.pop(slot.container.id, None)
            finally:
                self.trash.task_done()

    def flush(self) -> None:
        """Wait until every released container is removed."""
        self.trash.join()

    def shutdown(self) -> None:
        """Remove every container this pool started (idle or in use)."""
        if self.stopped and not self.live:
            return
        self.stopped = True
        self.want.set()
        # A container the filler is creating right now must be in `live` before we collect it (at
        # interpreter exit a daemon thread is frozen mid-call, and the engine would keep that container).
        if self.thread is not threading.current_thread():
            self.thread.join(timeout=2 * 60)
        # ... and so must every container the filler's creator threads are starting (daemon threads too)
        deadline = time.monotonic() + 2 * 60
        while time.monotonic() < deadline:
            with self.lock:
                if self.creating == 0:
                    break
            time.sleep(0.05)
        self.flush()
        with self.lock:
            slots = list(self.live.values())
            self.live.clear()
            self.ready.clear()
            self.collected = True
        for s in slots:
            _remove(s.container)
            remove_tree(s.root)
        # and whatever the engine still lists as this pool's: a removal the engine refused under load, or
        # a container it created for a call that failed on our side (a client timeout) and so never
        # reached `live`
        with contextlib.suppress(Exception):
            for c in labelled_containers(self.cl, role="sandbox", labels={POOL_LABEL: self.pool_id}):
                _remove(c)


_pools: dict[tuple, ContainerPool] = {}
_pools_lock = threading.Lock()


def get_pool(image: str, limits: Limits, size: int | None = None) -> ContainerPool:
    """The shared pool for (image, container-level limits); created on first use."""
    key = (image, limits.memory_mb, limits.pids, limits.cpus, limits.file_size_mb, limits.tmp_mb)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None or pool.stopped:
            n = int(os.environ.get("MINICODER_DOCKER_POOL", "2")) if size is None else size
            pool = _pools[key] = ContainerPool(image, limits, size=n)
        return pool


def flush_pools() -> None:
    """Wait until every container released by any pool is removed (idle warm ones stay)."""
    with _pools_lock:
        pools = list(_pools.values())
    for p in pools:
        p.flush()


def shutdown_pools() -> None:
    """Remove every container of every pool of this process."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for p in pools:
        p.shutdown()


class DockerSandbox(Sandbox):
    """One container from a pool, used for one task evaluation (or one agent episode)."""

    backend = "docker"

    def __init__(self, limits: Limits | None = None, image: str | None = None, pool: ContainerPool | None = None):
        super().__init__(limits)
        from minicoder.record import DEFAULT_IMAGE

        self.pool = pool or get_pool(image or DEFAULT_IMAGE, self.limits)
        self.slot = self.pool.acquire()
        self.dead = False

    @property
    def container(self):
        return self.slot.container

    @property
    def workspace(self) -> Path:
        return self.slot.root / "workspace"

    @property
    def report_dir(self) -> Path:
        return self.slot.root / "report"

    def prepare(self, task) -> None:
        fill_workspace(task, self.workspace)
        self.finalize_workspace()

    def finalize_workspace(self) -> None:
        chown_tree(self.workspace, CONTAINER_UID, CONTAINER_UID)

    def base_env(self) -> dict[str, str]:
        return {**super().base_env(), "HOME": "/tmp"}

    def run(self, cmd: list[str], timeout_s: float | None = None, env: dict[str, str] | None = None) -> ExecResult:
        if self.closed:
            raise SandboxError("sandbox is closed")
        limits = self.limits.with_timeout(timeout_s)
        if self.dead:
            return ExecResult(exit_code=None, stderr="container was killed by an earlier timeout")
        t0 = time.perf_counter()
        api = self.pool.cl.api
        full_env = {**self.base_env(), **(env or {})}
        try:
            ex = api.exec_create(self.container.id, list(cmd), user=f"{CONTAINER_UID}:{CONTAINER_UID}",
                                 workdir=WORKSPACE, environment=full_env)
        except Exception as e:
            raise SandboxError(f"docker exec failed: {e}") from e
        out, err = TailBuffer(limits.output_bytes), TailBuffer(limits.output_bytes)
        done = threading.Event()

        def _pump():
            try:
                for o, e in api.exec_start(ex["Id"], stream=True, demux=True):
                    if o:
                        out.write(o)
                    if e:
                        err.write(e)
            except Exception:  # the stream breaks when a timed-out container is killed: the exit
                pass  # status and timed_out flag, not this pump, report what happened
            finally:
                done.set()

        t1 = time.perf_counter()
        threading.Thread(target=_pump, daemon=True).start()
        timed_out = not done.wait(timeout=limits.timeout_s)
        t2 = time.perf_counter()
        if timed_out:
            self.dead = True
            with contextlib.suppress(Exception):
                self.container.kill()
            done.wait(timeout=10)
            rc = None
        else:
            rc = api.exec_inspect(ex["Id"]).get("ExitCode")
        oom = False
        if not timed_out and rc == 137:
            kills = _oom_kills(self.container.id)
            oom = True if kills is None else kills > 0
        disk = dir_size_mb(self.workspace, stop_at_mb=limits.disk_mb) > limits.disk_mb
        res = ExecResult(exit_code=rc, timed_out=timed_out, oom_killed=oom, stdout=out.text(), stderr=err.text(),
                         stdout_bytes=out.total, stderr_bytes=err.total, duration_s=t2 - t1,
                         signal=(rc - 128) if (rc is not None and 128 < rc < 193) else None, disk_exceeded=disk)
        res.overhead_s = (time.perf_counter() - t0) - res.duration_s
        return res

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.pool.release(self.slot)


def image_for(task) -> str:
    """The image a task's tests run in: its image with its packages added when it needs packages (one
    image per dependency set, shared by all tasks that need the same packages), else its image."""
    if task.environment.python_packages:
        from minicoder.sandbox.repo_image import ensure_deps_image

        return ensure_deps_image(task.environment.python_packages, task.environment.image)
    if getattr(task, "language", "python") != "python":  # JavaScript, Go, Rust: built on first use
        from minicoder.sandbox.lang_images import ensure_for_task

        return ensure_for_task(task)
    return task.environment.image


def acquire(task, limits: Limits) -> DockerSandbox:
    return DockerSandbox(limits, image=image_for(task))
