"""The warm runner ("zygote"): a program that runs INSIDE a sandbox and forks one fresh sandbox per request.

Starting Python and importing pytest costs ~0.3 s, several times more than running a small task's
tests, so a sandbox that starts a fresh interpreter per evaluation is capped near 5 evaluations/s on
two cores. This program pays that once: it starts (as root, inside the backend's outer sandbox: a
bubblewrap sandbox for `local`, a container for `docker`), imports pytest and the test runner's
modules, and then serves requests from the host, forking for each a child that enters namespaces of
its own (the zygote pattern of Android and Chromium). It never imports minicoder (the sandbox's Python
has only the standard library and the task's packages): the host reads this file's source and runs it
with `python3 -I -c SOURCE CONFIG`; `zygotes.py` and `warm.py` are its host side.

Per sandbox ("open" request), three processes:
    zygote --fork--> A: unshare(mount, pid, net, ipc, uts, cgroup namespaces); fork; exit
                     B: pid 1 of the new pid namespace, root, never runs untrusted code. Mounts
                        fresh tmpfs at /tmp, /dev/shm, /workspace (sized by the disk limit) and
                        /report, an /etc/passwd naming the sandbox's uid, a fresh /proc (with what
                        Docker masks of it masked); detaches the control folder; tells the host its
                        pid with SCM_CREDENTIALS (translated by the kernel), so the host reaches the
                        files through /proc/<B>/root and can end the whole namespace by killing B;
                        then serves the host's commands on a socket of its own
    B --fork per command--> C: the command's process (pid 2, like bubblewrap's): stdio from the
                        host's pipes, every other descriptor closed, rlimits, a new session, all
                        capabilities dropped (bounding, ambient, inheritable), groups cleared,
                        setresgid/setresuid to the sandbox's own fresh host uid, no_new_privs, a
                        seccomp filter refusing new namespaces, mounts, keyrings, bpf and the like;
                        then either execve(command) or, in "python" mode, the test runner's code in
                        this already warm interpreter.
After each command B kills every process left in the namespace (`kill(-1)` from pid 1) and reports
how many it found and the CPU time they used, so nothing a command started outlives it; closing the
sandbox ends B, and with it the namespace and its tmpfs.

What a child cannot do to the zygote or to other children: see them (own pid namespace), signal or
ptrace them (other uid, no capabilities; the zygote and B are root and not dumpable), write files
they read (its own tmpfs mounts; the root is read-only), reach them over the network or abstract
sockets (own network namespace), or share SysV IPC (own ipc namespace). The zygote reads nothing a
child wrote. If the zygote dies anyway, the host starts a new one and re-runs what was in flight.

Start-up (`main`): run the prelude (pytest and the runner's modules), then a warm-up run of the test
runner in a throw-away child that reports which modules a run imports lazily (`warm_up`); import
those, `gc.freeze()` (children's garbage collections then skip, and so never copy, the inherited
heap), and serve.
"""

import contextlib
import ctypes
import gc
import json
import os
import platform
import resource
import select
import signal
import socket
import struct
import sys
import time
import types

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x02000000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWTIME = 0x10000000, 0x20000000, 0x40000000, 0x00000080
NS_FLAGS = (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID
            | CLONE_NEWNET | CLONE_NEWTIME)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PROC_MASKED = ("/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
               "/proc/sched_debug", "/proc/scsi", "/proc/acpi")
PROC_READONLY = ("/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs")
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 47, 4, 22, 2

# syscall numbers: (unshare, clone, clone3, [refused with EPERM])
_REFUSED = ("setns", "mount", "umount2", "pivot_root", "open_tree", "move_mount", "fsopen", "fsconfig",
            "fsmount", "fspick", "keyctl", "add_key", "request_key", "bpf", "perf_event_open", "userfaultfd",
            "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
            "swapon", "swapoff", "acct", "quotactl", "open_by_handle_at", "mount_setattr", "lookup_dcookie")
SYSCALLS = {
    "x86_64": dict(audit_arch=0xC000003E, unshare=272, clone=56, clone3=435, setns=308, mount=165, umount2=166,
                   pivot_root=155, open_tree=428, move_mount=429, fsopen=430, fsconfig=431, fsmount=432,
                   fspick=433, keyctl=250, add_key=248, request_key=249, bpf=321, perf_event_open=298,
                   userfaultfd=323, kexec_load=246, kexec_file_load=320, init_module=175, finit_module=313,
                   delete_module=176, reboot=169, swapon=167, swapoff=168, acct=163, quotactl=179,
                   open_by_handle_at=304, mount_setattr=442, lookup_dcookie=212, capset=126),
    "aarch64": dict(audit_arch=0xC00000B7, unshare=97, clone=220, clone3=435, setns=268, mount=40, umount2=39,
                    pivot_root=41, open_tree=428, move_mount=429, fsopen=430, fsconfig=431, fsmount=432,
                    fspick=433, keyctl=219, add_key=217, request_key=218, bpf=280, perf_event_open=241,
                    userfaultfd=282, kexec_load=104, kexec_file_load=294, init_module=105, finit_module=273,
                    delete_module=106, reboot=142, swapon=224, swapoff=225, acct=89, quotactl=60,
                    open_by_handle_at=265, mount_setattr=442, lookup_dcookie=18, capset=91),
}
RLIMITS = {"as": 9, "fsize": 1, "nproc": 6, "cpu": 0, "nofile": 7, "core": 4}


def _check(rc, what):
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src, target, fstype, flags, data=None):
    _check(libc.mount(src.encode(), target.encode(), fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                      data.encode() if data else None), f"mount {target}")


# --- the seccomp filter (classic BPF, written out by hand: the sandbox has no libseccomp) -------------

def seccomp_program(arch):
    """BPF: another architecture or the x32 ABI -> kill; clone/unshare with a namespace flag and the
    _REFUSED calls -> EPERM; clone3 -> ENOSYS (its flags sit behind a pointer the filter cannot read;
    libc then falls back to clone); everything else allowed. Jumps are written as labels."""
    t = SYSCALLS[arch]
    LD, JEQ, JGE, JSET, RET = 0x20, 0x15, 0x35, 0x45, 0x06
    ins, labels = [], {}

    def op(code, k=0, jt=None, jf=None):
        ins.append((code, jt, jf, k))

    op(LD, 4)  # seccomp_data.arch
    op(JEQ, t["audit_arch"], jf="kill")
    op(LD, 0)  # seccomp_data.nr
    if arch == "x86_64":
        op(JGE, 0x40000000, jt="kill")
    op(JEQ, t["unshare"], jt="ns_flags")
    op(JEQ, t["clone"], jt="ns_flags")
    op(JEQ, t["clone3"], jt="enosys")
    for name in _REFUSED:
        op(JEQ, t[name], jt="eperm")
    op(RET, 0x7FFF0000)  # allow
    labels["ns_flags"] = len(ins)
    op(LD, 16)  # low word of seccomp_data.args[0] (little-endian): the clone / unshare flags
    op(JSET, NS_FLAGS, jt="eperm")
    op(RET, 0x7FFF0000)
    labels["eperm"] = len(ins)
    op(RET, 0x00050000 | 1)
    labels["enosys"] = len(ins)
    op(RET, 0x00050000 | 38)
    labels["kill"] = len(ins)
    op(RET, 0x80000000)  # SECCOMP_RET_KILL_PROCESS
    out = b""
    for i, (code, jt, jf, k) in enumerate(ins):
        rel = [0 if j is None else labels[j] - i - 1 for j in (jt, jf)]
        out += struct.pack("HBBI", code, rel[0], rel[1], k & 0xFFFFFFFF)
    return out


def install_seccomp(arch):
    prog = seccomp_program(arch)
    buf = ctypes.create_string_buffer(prog, len(prog))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(prog) // 8, ctypes.addressof(buf))
    _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "seccomp")


# --- dropping privileges ------------------------------------------------------------------------------

def drop_privileges(uid, gid, arch):
    """Root -> the sandbox's uid with no capability left anywhere; checked, never assumed."""
    with open("/proc/sys/kernel/cap_last_cap") as fh:
        last_cap = int(fh.read())
    for cap in range(last_cap + 1):
        _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), "capbset drop")
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)  # from root to non-root: the kernel clears permitted and effective caps
    header = struct.pack("Ii", 0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
    data = bytes(24)  # two {effective, permitted, inheritable} words, all zero
    _check(libc.syscall(SYSCALLS[arch]["capset"], header, data), "capset")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    with open("/proc/self/status") as fh:
        status = fh.read()
    for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        if int(status.split(key + ":")[1].split()[0], 16) != 0:
            raise RuntimeError(f"{key} is not empty after dropping privileges")
    if os.getuid() != uid or os.geteuid() != uid or os.getgroups():
        raise RuntimeError("uid or groups not dropped")
    install_seccomp(arch)


# --- messages ---------------------------------------------------------------------------------------

def recv(sock, nfds=4):
    """One message: (dict or None at EOF, [received fds])."""
    fds = []
    try:
        msg, anc, _flags, _addr = sock.recvmsg(1 << 20, socket.CMSG_SPACE(nfds * 4))
    except (ConnectionResetError, OSError):
        return None, []
    for level, kind, data in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds += list(struct.unpack(f"{len(data) // 4}i", data[: len(data) - len(data) % 4]))
    if not msg:
        for fd in fds:
            os.close(fd)
        return None, []
    return json.loads(msg), fds


def send(sock, obj, creds=False):
    anc = []
    if creds:  # the kernel translates this pid into the receiver's pid namespace
        anc = [(socket.SOL_SOCKET, socket.SCM_CREDENTIALS, struct.pack("3i", os.getpid(), os.getuid(), os.getgid()))]
    with contextlib.suppress(OSError):
        sock.sendmsg([json.dumps(obj).encode()], anc)


# --- B: pid 1 of one sandbox ---------------------------------------------------------------------------

def setup_mounts(cfg, req):
    """B's view: the outer sandbox's read-only root plus fresh tmpfs mounts of this sandbox's own."""
    uid, gid = req["uid"], req["gid"]
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    _mount("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"size={int(req['tmp_bytes'])},mode=1777")
    if os.path.isdir("/dev/shm"):
        _mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=1777")
    if os.path.isdir("/dev/mqueue"):  # POSIX queues of this sandbox's own ipc namespace, not the container's
        _mount("mqueue", "/dev/mqueue", "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    # the workspace and report live in memory, capped by the kernel (ENOSPC past disk_mb), and vanish
    # with the namespace; the host fills and reads them through /proc/<B>/root
    _mount("tmpfs", cfg["workspace"], "tmpfs", MS_NOSUID | MS_NODEV,
           f"size={int(req['disk_bytes'])},mode=0755,uid={uid},gid={gid}")
    _mount("tmpfs", cfg["report"], "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
           f"size={int(req['report_bytes'])},mode=0755,uid={uid},gid={gid}")
    home = req["home"]
    os.makedirs(home, mode=0o700)
    os.chown(home, uid, gid)
    # an /etc/passwd and /etc/group naming this sandbox's uid (like bubblewrap's --uid view)
    os.makedirs("/tmp/.etc", mode=0o700)
    _mount("tmpfs", "/tmp/.etc", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=0755")
    for name in ("passwd", "group"):
        path = f"/tmp/.etc/{name}"
        with open(path, "w") as fh:
            fh.write(req[name])
        os.chmod(path, 0o644)
        _mount(path, f"/etc/{name}", None, MS_BIND)
        _mount("none", f"/etc/{name}", None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    _check(libc.umount2(b"/tmp/.etc", MNT_DETACH), "detach /tmp/.etc")
    os.rmdir("/tmp/.etc")
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for path in PROC_MASKED:  # what Docker hides of a fresh /proc (host-wide information)
        if os.path.isdir(path):
            _mount("tmpfs", path, "tmpfs", MS_RDONLY)
        elif os.path.exists(path):
            _mount("/dev/null", path, None, MS_BIND)
    for path in PROC_READONLY:
        if os.path.exists(path):
            _mount(path, path, None, MS_BIND | MS_REC)
            _mount("none", path, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for hidden in cfg["hide"]:
        _check(libc.umount2(hidden.encode(), MNT_DETACH), f"detach {hidden}")
    with contextlib.suppress(OSError):
        socket.sethostname("sandbox")


def others_in_namespace():
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != 1]


def sweep():
    """Kill every process in this pid namespace except ourselves (pid 1); reap them; return how many."""
    found = set(others_in_namespace())
    for _ in range(50):
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.002)
        left = others_in_namespace()
        if not left:
            break
        found |= set(left)
    return len(found)


def child(cfg, req, cmd, fds):
    """C: becomes the command. Never returns."""
    try:
        out_fd, err_fd = fds
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_fd, 1)
        os.dup2(err_fd, 2)
        os.closerange(3, 1 << 16)
        os.setsid()
        for name, value in cmd["rlimits"].items():
            resource.setrlimit(RLIMITS[name], (int(value), int(value)))
        try:
            with open("/proc/self/oom_score_adj", "w") as fh:
                fh.write("1000")  # under memory pressure, candidates die before the zygote or B
        except OSError:
            pass
        drop_privileges(req["uid"], req["gid"], cfg["arch"])
        os.chdir(cfg["workspace"])
        env = {str(k): str(v) for k, v in cmd["env"].items()}
        if cmd.get("mode") == "python":
            os.environ.clear()
            os.environ.update(env)
            sys.argv = ["-c", *cmd["argv"]]
            main = types.ModuleType("__main__")
            sys.modules["__main__"] = main
            exec(compile(cmd["code"], "<string>", "exec"), main.__dict__)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        argv = cmd["argv"]
        os.execvpe(argv[0], argv, env)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        os._exit(code)
    except BaseException as e:  # noqa: BLE001 -- report anything, then exit: this is a forked child
        with contextlib.suppress(OSError):
            os.write(2, f"sandbox: could not start {cmd.get('argv', ['?'])[:1]}: {type(e).__name__}: {e}\n".encode())
        os._exit(127 if isinstance(e, FileNotFoundError) else 126)


def serve(cfg, req, chan):
    """B's loop: one command at a time; nothing survives a command; EOF or "close" ends the sandbox."""
    while True:
        cmd, fds = recv(chan, nfds=2)
        if cmd is None or cmd.get("op") == "close":
            sweep()
            os._exit(0)
        t0 = time.monotonic()
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        pid = os.fork()
        if pid == 0:
            child(cfg, req, cmd, fds)
        for fd in fds:
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        timeout = float(cmd["timeout"])
        timed_out = not select.select([pidfd], [], [], timeout)[0]
        if timed_out:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(pidfd)
        duration = time.monotonic() - t0
        stray = sweep()
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command and every process it left to us
        cpu = (ru.ru_utime - ru0.ru_utime) + (ru.ru_stime - ru0.ru_stime)
        send(chan, {"status": status, "timed_out": timed_out, "duration": duration, "stray": stray, "cpu": cpu})


def open_sandbox(cfg, req, chan):
    """A: new namespaces, then B (pid 1 in them) which sets up and serves. A exits at once."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    try:
        _check(libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
                            | CLONE_NEWCGROUP), "unshare")
    except OSError as e:
        send(chan, {"error": str(e)})
        os._exit(1)
    if os.fork() != 0:
        os._exit(0)
    try:
        setup_mounts(cfg, req)
    except Exception as e:  # noqa: BLE001 -- reported to the host, which gives up on this sandbox
        send(chan, {"error": f"{type(e).__name__}: {e}"}, creds=True)
        os._exit(1)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    send(chan, {"ready": True}, creds=True)
    serve(cfg, req, chan)


def warm_up(cfg):
    """Run the test runner once, in a throw-away child, on a trivial test in a private folder; the
    child reports which modules that run imported (pytest imports many lazily), and we import them
    here, so a real run imports none of them again. The zygote itself never runs pytest. Returns
    {"warmup_rc": the child's pytest exit status, "warm_modules": how many were pre-imported}."""
    before = set(sys.modules)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        real_exit = os._exit
        try:
            d = "/tmp/.minicoder-warmup"
            os.makedirs(d, exist_ok=True)
            os.chdir(d)
            with open("test_warmup.py", "w") as fh:
                fh.write("import pytest\n\n\n@pytest.mark.parametrize('x', [1, 2])\ndef test_ok(x):\n    assert x\n")

            def report_and_exit(code):
                names = [n for n in set(sys.modules) - before if not n.startswith("test_warmup")]
                os.write(w, json.dumps(names).encode())
                real_exit(code)

            os._exit = report_and_exit
            devnull = os.open("/dev/null", os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            sys.argv = ["-c", d + "/report.xml", *cfg["warmup"], "test_warmup.py"]
            exec(compile(cfg["code"], "<string>", "exec"), types.ModuleType("__main__").__dict__)
        finally:
            real_exit(99)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 1 << 16)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    names = json.loads(b"".join(chunks) or b"[]")
    n = 0
    for name in sorted(names):
        try:
            __import__(name)
            n += 1
        except Exception:  # noqa: BLE001 -- a module that only imports inside a run is simply not warmed
            pass
    return {"warmup_rc": os.waitstatus_to_exitcode(status), "warm_modules": n}


def main():
    cfg = json.loads(sys.argv[1])
    cfg["arch"] = platform.machine()
    if cfg["arch"] not in SYSCALLS:
        raise SystemExit(f"zygote: no seccomp table for {cfg['arch']}")
    exec(compile(cfg.get("prelude", ""), "<prelude>", "exec"), {"__name__": "__prelude__"})
    warm = warm_up(cfg) if cfg.get("warmup") else {}
    gc.freeze()  # children's collections skip (and so never copy) everything imported up to here
    ctl_spec = cfg["ctl"]
    if ctl_spec.startswith("fd:"):
        ctl = socket.socket(fileno=int(ctl_spec[3:]))
    else:  # listen:PATH (docker: the host connects through a bind-mounted folder)
        path = ctl_spec[len("listen:"):]
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        if os.path.exists(path):
            os.unlink(path)
        srv.bind(path)
        os.chmod(path, 0o600)
        srv.listen(1)
        ctl, _ = srv.accept()
        srv.close()
        os.unlink(path)
    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    send(ctl, {"ready": True, "python": sys.version.split()[0], "pid": os.getpid(), **warm})
    while True:
        req, fds = recv(ctl, nfds=1)
        if req is None:
            os._exit(0)
        if not fds:
            continue
        chan_fd = fds[0]
        pid = os.fork()
        if pid == 0:
            ctl.close()
            open_sandbox(cfg, req, socket.socket(fileno=chan_fd))
        os.close(chan_fd)
        os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
