"""The local backend: bubblewrap (`bwrap`) namespaces + rlimits, the embedded default with no engine.

What one `run` looks like (all of it re-created per command; nothing survives between runs except
the workspace and the fake HOME):

    prlimit --as --fsize --nproc --cpu --nofile --core  (limits, inherited by the whole tree)
      bwrap --unshare-all (user, pid, net, ipc, uts, cgroup) --die-with-parent --new-session
            --clearenv  (+ a minimal env)   --uid 1000 --disable-userns
            /usr, /lib*, /bin, a few /etc files     read-only
            the sandbox's Python runtime            read-only at /opt/venv
            /tmp                                    private tmpfs of `Limits.tmp_mb`
            the workspace / the report dir          read-write at /workspace, /report
            /proc (its own pid namespace), /dev (minimal); the root itself remounted read-only

Choices and their reasons:
  - On a root host each sandbox runs as a fresh random host uid (through `Popen(user=...)` before
    bwrap, so the kernel, not the sandbox, enforces it). RLIMIT_NPROC is per uid, so a fork bomb
    hits its own ceiling and nobody else's; the stray-process check is "anything still owned by that
    uid", and the clean-up kills exactly those. On a non-root host we run as ourselves and set
    RLIMIT_NPROC to (our current process count + `Limits.pids`).
  - No network: a new network namespace has only a downed loopback.
  - Process tree: `--unshare-pid` makes bwrap the init of a pid namespace; when the command exits or
    we SIGKILL bwrap's process group on timeout, the kernel kills every process left inside it
    (daemons that double-forked and called setsid included).
  - Memory is RLIMIT_AS (address space) per process: honest but coarse (no cgroup here). An
    allocation past it raises MemoryError instead of waking an OOM killer, so `oom_killed` is never
    set by this backend; the reward code recognises MemoryError in the report.
  - Disk: RLIMIT_FSIZE bounds each file; the workspace's total size is checked after each run.

What it does not protect against: kernel exploits (bubblewrap shares the host kernel), CPU-time
stealing below the timeout (no CPU quota), timing side channels.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from minicoder.sandbox.base import (
    HOME,
    REPORT_DIR,
    SANDBOX_UID,
    WORKSPACE,
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
    pick_uid,
    remove_tree,
)
from minicoder.sandbox.workspace import fill_workspace

ETC_FILES = ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime", "/etc/nsswitch.conf",
             "/etc/alternatives", "/etc/mime.types", "/etc/ssl/certs")


def bwrap_path() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxError("bubblewrap (`bwrap`) is not installed; the local sandbox needs it "
                           "(`apt-get install bubblewrap`, or run `make setup` as root)")
    return path


def _world_readable(path: str) -> bool:
    """Whether an unprivileged uid can reach and run `path` (every parent o+x, the file o+rx)."""
    p = Path(path).resolve()
    try:
        for parent in p.parents:
            if not os.stat(parent).st_mode & 0o001:
                return False
        return bool(os.stat(p).st_mode & 0o005 == 0o005)
    except OSError:
        return False


def sandbox_python() -> str:
    """The interpreter the sandbox runs: $MINICODER_SANDBOX_PYTHON, else a system python3.11 that an
    unprivileged uid can read (a root host's /root/.pyenv is not), else our own base interpreter."""
    env = os.environ.get("MINICODER_SANDBOX_PYTHON")
    if env:
        return env
    ours = os.path.join(sys.base_prefix, "bin", f"python{sys.version_info[0]}.{sys.version_info[1]}")
    for cand in (f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}", "/usr/bin/python3", ours):
        if os.path.exists(cand) and (not is_root() or _world_readable(cand)):
            return cand
    raise SandboxError("no Python interpreter the sandbox user can run was found; "
                       "set MINICODER_SANDBOX_PYTHON to one")


def _python_info(python: str) -> dict:
    out = subprocess.run([python, "-c", "import sys, json; print(json.dumps({'prefix': sys.base_prefix, "
                          "'version': '%d.%d' % sys.version_info[:2]}))"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def _runtime_cache() -> Path:
    # world-traversable so the sandbox uid can read the runtime (not under /root on a root host)
    d = Path(os.environ.get("MINICODER_RUNTIME_DIR") or "/var/tmp/minicoder-runtimes")
    d.mkdir(parents=True, exist_ok=True)
    if is_root():
        os.chmod(d, 0o755)
    return d


def wheelhouse() -> Path:
    """Host folder of downloaded wheels, shared by the local runtimes and the docker image builds."""
    d = Path(os.environ.get("MINICODER_WHEELHOUSE") or Path.home() / ".cache" / "minicoder" / "wheels")
    d.mkdir(parents=True, exist_ok=True)
    return d


def runner_requirements(packages: list[str]) -> list[str]:
    """pytest (the host's version, so both ends agree on report formats, unless the task pins its
    own, as mined tasks do) + the task's packages."""
    import re

    import pytest

    own = any(re.match(r"^pytest\s*(==|$|\[|;)", p.strip().lower()) for p in packages)
    return [*([] if own else [f"pytest=={pytest.__version__}"]), *sorted(set(packages))]


def download_wheels(reqs: list[str], python_version: str) -> None:
    """`pip download` on the host (the only place with a network); no-op when already present."""
    cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "-d", str(wheelhouse()),
           "--only-binary=:all:", "--python-version", python_version, "--find-links", str(wheelhouse()), *reqs]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SandboxError(f"could not download wheels for {reqs}: {proc.stderr.strip()[-400:]}")


@functools.lru_cache(maxsize=64)
def _ensure_runtime_cached(packages: tuple[str, ...], python: str) -> tuple[Path, dict]:
    return _ensure_runtime(list(packages), python)


def ensure_runtime(packages: list[str] | None = None, python: str | None = None) -> tuple[Path, dict]:
    """A read-only Python environment for the sandbox: a venv of `python` with pytest + `packages`,
    installed offline from the wheelhouse. Cached by content on disk (built once, under a file
    lock) and in memory for this process."""
    return _ensure_runtime_cached(tuple(sorted(set(packages or []))), python or sandbox_python())


def _ensure_runtime(packages: list[str], python: str) -> tuple[Path, dict]:
    info = _python_info(python)
    reqs = runner_requirements(list(packages or []))
    key = hashlib.sha256(json.dumps([python, info, reqs]).encode()).hexdigest()[:16]
    dest = _runtime_cache() / key
    if (dest / ".ready").exists():
        return dest, info
    with open(_runtime_cache() / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / ".ready").exists():
            return dest, info
        tmp = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=_runtime_cache()))
        try:
            subprocess.run([python, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True,
                           capture_output=True)
            site = tmp / "venv" / "lib" / f"python{info['version']}" / "site-packages"
            install = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-index",
                       "--find-links", str(wheelhouse()), "--target", str(site), "--no-compile", *reqs]
            if subprocess.run(install, capture_output=True).returncode != 0:
                download_wheels(reqs, info["version"])
                proc = subprocess.run(install, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SandboxError(f"could not install {reqs} for the sandbox: {proc.stderr.strip()[-400:]}")
            for dirpath, _dirnames, filenames in os.walk(tmp):
                os.chmod(dirpath, 0o755)
                for n in filenames:
                    p = os.path.join(dirpath, n)
                    if not os.path.islink(p):
                        os.chmod(p, os.stat(p).st_mode | 0o444)
            (tmp / "venv" / ".ready").write_text(json.dumps({"python": python, "requirements": reqs}))
            if dest.exists():
                shutil.rmtree(dest)
            os.rename(tmp / "venv", dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest, info


class BwrapSandbox(Sandbox):
    """A bubblewrap sandbox around one workspace. See the module docstring for the isolation."""

    backend = "local"

    def __init__(self, limits: Limits | None = None, packages: list[str] | None = None):
        super().__init__(limits)
        self.bwrap = bwrap_path()
        self.runtime, self.pyinfo = ensure_runtime(packages)
        self.root = new_root()
        self.uid = pick_uid()
        self.gid = self.uid if is_root() else os.getgid()
        for name in ("workspace", "report", "home", "etc"):
            (self.root / name).mkdir()
        etc = self.root / "etc"
        (etc / "passwd").write_text(f"root:x:0:0::/root:/bin/sh\nsandbox:x:{SANDBOX_UID}:{SANDBOX_UID}::{HOME}:/bin/sh\n"
                                    "nobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n")
        (etc / "group").write_text(f"root:x:0:\nsandbox:x:{SANDBOX_UID}:\nnogroup:x:65534:\n")
        (etc / "hosts").write_text("127.0.0.1 localhost sandbox\n")
        for p in etc.iterdir():
            os.chmod(p, 0o644)
        chown_tree(self.root / "workspace", self.uid, self.gid)
        chown_tree(self.root / "report", self.uid, self.gid)
        chown_tree(self.root / "home", self.uid, self.gid)

    @property
    def workspace(self) -> Path:
        return self.root / "workspace"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    def prepare(self, task) -> None:
        fill_workspace(task, self.workspace)
        chown_tree(self.workspace, self.uid, self.gid)

    def finalize_workspace(self) -> None:
        """Re-own the workspace after host-side edits (patches) so the sandbox user may write it."""
        chown_tree(self.workspace, self.uid, self.gid)

    # --- the command line ---------------------------------------------------------------------
    def _bwrap_argv(self, cmd: list[str], env: dict[str, str]) -> list[str]:
        a = [self.bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
             "--new-session", "--clearenv", "--hostname", "sandbox", "--uid", str(SANDBOX_UID),
             "--gid", str(SANDBOX_UID), "--ro-bind", "/usr", "/usr"]
        for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(top):
                a += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                a += ["--ro-bind", top, top]
        for p in ETC_FILES:
            if os.path.exists(p):
                a += ["--ro-bind", p, p]
        for name in ("passwd", "group", "hosts"):
            a += ["--ro-bind", str(self.root / "etc" / name), f"/etc/{name}"]
        prefix = self.pyinfo["prefix"]
        if not prefix.startswith("/usr/") and prefix != "/usr":
            a += ["--ro-bind", prefix, prefix]
        a += ["--ro-bind", str(self.runtime), "/opt/venv",
              "--proc", "/proc", "--dev", "/dev",
              "--size", str(self.limits.tmp_mb * 2**20), "--perms", "1777", "--tmpfs", "/tmp",
              "--bind", str(self.root / "home"), HOME,
              "--bind", str(self.workspace), WORKSPACE,
              "--bind", str(self.report_dir), REPORT_DIR,
              "--remount-ro", "/", "--chdir", WORKSPACE]
        for k, v in env.items():
            a += ["--setenv", k, v]
        return a + ["--", *cmd]

    def _prlimit_argv(self, limits: Limits) -> list[str]:
        nproc = limits.pids
        if not is_root():  # RLIMIT_NPROC counts all our processes: allow ours plus the budget
            from minicoder.sandbox.host import pids_of_uid

            nproc += len(pids_of_uid(os.getuid())) + 8
        cpu = limits.cpu_time_s or int(2 * limits.timeout_s) + 1
        return ["prlimit", f"--as={limits.memory_mb * 2**20}", f"--fsize={limits.file_size_mb * 2**20}",
                f"--nproc={nproc}", f"--cpu={cpu}", "--nofile=1024", "--core=0", "--"]

    def run(self, cmd: list[str], timeout_s: float | None = None, env: dict[str, str] | None = None) -> ExecResult:
        if self.closed:
            raise SandboxError("sandbox is closed")
        limits = self.limits.with_timeout(timeout_s)
        t0 = time.perf_counter()
        full_env = {**self.base_env(), **(env or {})}
        argv = self._prlimit_argv(limits) + self._bwrap_argv(list(cmd), full_env)
        kw: dict = {}
        if is_root():
            kw = {"user": self.uid, "group": self.gid, "extra_groups": []}
        out, err = TailBuffer(limits.output_bytes), TailBuffer(limits.output_bytes)
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True, env={"PATH": "/usr/bin:/bin"}, **kw)
        except OSError as e:
            raise SandboxError(f"could not start bubblewrap: {e}") from e
        threads = [drain(proc.stdout, out), drain(proc.stderr, err)]
        t1 = time.perf_counter()
        timed_out = False
        try:
            rc = proc.wait(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        t2 = time.perf_counter()
        stray = kill_uid(self.uid) if is_root() else 0
        for t in threads:
            t.join(timeout=2)
        sig = -rc if rc < 0 else (rc - 128 if rc > 128 and rc - 128 < 65 else None)
        disk = dir_size_mb(self.workspace, stop_at_mb=limits.disk_mb) > limits.disk_mb
        res = ExecResult(
            exit_code=None if timed_out else rc, timed_out=timed_out, stdout=out.text(), stderr=err.text(),
            stdout_bytes=out.total, stderr_bytes=err.total, duration_s=t2 - t1, signal=None if timed_out else sig,
            stray_killed=stray, disk_exceeded=disk)
        res.overhead_s = (time.perf_counter() - t0) - res.duration_s
        return res

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if is_root():
            kill_uid(self.uid)
        remove_tree(self.root)
