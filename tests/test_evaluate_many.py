"""`evaluate_many` and the warm runner, on both backends: same rewards as one `evaluate` each, and no
candidate can reach another, the zygote, or the host.

The warm runner forks every candidate's sandbox from one warm interpreter (`warm.py`, `zygote.py`).
What must hold: a batch gives exactly the rewards of grading each patch alone; a candidate that
tries to poison the ones after it (start-up hooks, a shared bytecode cache, a daemon, killing what
it can see) changes nothing; the catalogue of hostile patches still gets the rewards it deserves; a
zygote killed mid-batch is started again and its candidates re-run; each child has no capability,
a seccomp filter, no way to make namespaces, and only its own writable places.
"""

from __future__ import annotations

import os
import textwrap

import pytest

from minicoder.gitdiff import make_diff
from minicoder.sandbox import reward as R
from minicoder.sandbox.base import Limits
from minicoder.sandbox.examples import BASE_FILES, OPS, _ops_with, demo_task, hostile_patches
from minicoder.sandbox.host import pids_of_uid
from minicoder.sandbox.reward import evaluate, evaluate_many

BACKENDS = ["local", pytest.param("docker", marks=pytest.mark.docker)]
LIMITS = Limits(memory_mb=256, pids=64, file_size_mb=1, tmp_mb=16, disk_mb=64, timeout_s=20.0)
WARM = os.geteuid() == 0  # the warm runner needs a root host; elsewhere evaluate_many runs cold


@pytest.fixture(scope="module")
def task():
    return demo_task()


def _left_behind(uids: list[int]) -> list[int]:
    return [p for u in uids if u != os.getuid() for p in pids_of_uid(u)]


def _key(r):
    return r.reward, r.status, round(r.fraction, 6), r.tests


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_same_rewards_as_one_evaluate_each(task, backend, used_uids):
    attacks = hostile_patches()
    wrong = make_diff(BASE_FILES, {"calc/ops.py": OPS.replace("sum(xs) // len(xs)", "0")})
    patches = [task.patch, "", wrong, attacks["conftest"].patch, attacks["shadow_pytest"].patch,
               attacks["os_exit_import"].patch, attacks["fork_bomb"].patch, attacks["not_a_diff"].patch]
    batch = evaluate_many(task, patches, backend=backend, workers=2, limits=LIMITS)
    alone = [evaluate(task, p, backend=backend, limits=LIMITS) for p in patches]
    assert [_key(r) for r in batch] == [_key(r) for r in alone]
    assert [r.status for r in batch] == ["resolved", "unresolved", "unresolved", "unresolved", "unresolved",
                                         "report_mismatch", "resolved", "patch_failed"]
    assert _left_behind(used_uids) == []
    assert evaluate_many(task, [], backend=backend) == []


POISON_PRELUDE = textwrap.dedent('''
    import os, py_compile, signal, sys, time
    FIXED = open(__file__).read().replace("return sum(xs) // len(xs)  # poison", "return sum(xs) / len(xs)")
    HOOK = "import calc.ops\\ncalc.ops.mean = lambda xs: sum(xs) / len(xs)\\n"
    def _poison():
        # start-up hooks wherever this candidate can write, and where other candidates might look
        for d in (os.environ.get("HOME", "/tmp"), "/tmp", "/dev/shm", os.getcwd(), "/workspace/..", "/report",
                  "/opt/venv/lib/python3.11/site-packages", "/usr/lib/python3/dist-packages", "/etc"):
            for name in ("sitecustomize.py", "usercustomize.py", "calc_poison.pth"):
                try:
                    with open(os.path.join(d, name), "w") as fh:
                        fh.write(HOOK if name.endswith(".py") else "import sitecustomize\\n")
                except OSError:
                    pass
        # a fixed calc/ops.py in the bytecode cache the test runner reads (/tmp/.pycache): shared, it
        # would make every later empty patch pass
        try:
            src = "/tmp/poison_ops.py"
            open(src, "w").write(FIXED)
            for prefix in ("/tmp/.pycache/workspace/calc", "/dev/shm/.pycache/workspace/calc"):
                os.makedirs(prefix, exist_ok=True)
                py_compile.compile(src, cfile=prefix + "/ops.cpython-%d%d.pyc" % sys.version_info[:2],
                                   invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        except Exception:
            pass
    _poison()
    if os.fork() == 0:  # a daemon that keeps poisoning and kills whatever it can see, for a while
        os.setsid()
        if os.fork() == 0:
            for _ in range(40):
                _poison()
                for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()] + [os.getppid(), 1]:
                    if pid != os.getpid():
                        try:
                            os.kill(pid, signal.SIGKILL)
                        except OSError:
                            pass
                time.sleep(0.25)
            os._exit(0)
        os._exit(0)
''')


@pytest.mark.skipif(not WARM, reason="poisoning across candidates is a warm-runner property")
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_a_poisoning_candidate_cannot_change_the_others(task, backend, used_uids):
    from minicoder.sandbox.warm import get_zygote

    poison_ops = _ops_with("", prelude=POISON_PRELUDE).replace("return sum(xs) // len(xs)\n",
                                                               "return sum(xs) // len(xs)  # poison\n")
    poison = make_diff(BASE_FILES, {"calc/ops.py": poison_ops})
    zygote = get_zygote(backend, task, LIMITS)
    zygote.ensure()
    generation = zygote.generation
    #             poison  empty  gold        empty poison  gold        empty gold
    patches = [poison, "", task.patch, "", poison, task.patch, "", task.patch]
    rs = evaluate_many(task, patches, backend=backend, workers=2, limits=LIMITS)
    others = [r.reward for p, r in zip(patches, rs, strict=True) if p is not poison]
    assert others == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0], [(r.status, r.message) for r in rs]
    assert rs[0].reward == 0.0 and rs[4].reward == 0.0  # the poison's own bug stays a bug
    assert zygote.generation == generation and zygote.alive()  # nothing reached the warm runner
    assert _left_behind(used_uids) == []  # the daemons died with their sandboxes
    assert not os.path.exists("/tmp/.pycache/workspace") or not any(
        "poison" in f for f in os.listdir("/tmp"))  # and none of it landed on the host


@pytest.mark.skipif(not WARM, reason="needs the warm runner")
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_zygote_killed_mid_batch_is_restarted_and_reruns(task, backend, monkeypatch):
    from minicoder.sandbox.warm import get_zygote

    zygote = get_zygote(backend, task, LIMITS)
    zygote.ensure()
    generation = zygote.generation
    calls = []
    real = R.evaluate

    def evaluate_and_kill(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            zygote.kill_for_test()  # as if a child had killed it: every sandbox in flight dies too
        return real(*a, **k)

    monkeypatch.setattr(R, "evaluate", evaluate_and_kill)
    rs = evaluate_many(task, [task.patch] * 6 + [""] * 2, backend=backend, workers=2, limits=LIMITS)
    assert [r.reward for r in rs] == [1.0] * 6 + [0.0] * 2, [(r.status, r.message) for r in rs]
    assert zygote.generation > generation and zygote.alive()


WARM_PROBE = textwrap.dedent('''
    import ctypes, errno, json, os, socket, subprocess
    libc = ctypes.CDLL(None, use_errno=True)
    status = dict(l.split(":", 1) for l in open("/proc/self/status").read().splitlines() if ":" in l)
    def err(rc):
        return 0 if rc == 0 else ctypes.get_errno()
    out = {k: status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp")}
    out["unshare_user"] = err(libc.unshare(0x10000000))
    out["unshare_mount"] = err(libc.unshare(0x00020000))
    out["mount"] = err(libc.mount(b"none", b"/mnt", b"tmpfs", 0, None))
    out["kill_parent"] = err(libc.kill(os.getppid(), 9))
    out["subprocess"] = subprocess.run(["true"]).returncode  # clone3 refused with ENOSYS, libc falls back
    out["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    writable, rw_mounts = [], []
    for line in open("/proc/self/mountinfo"):
        fields = line.split()
        point, opts = fields[4], fields[5].split(",")
        if "rw" in opts and not point.startswith(("/proc", "/sys")):
            rw_mounts.append(point)
    own = ("/workspace", "/report", "/tmp", "/dev/shm", "/dev/mqueue")  # each sandbox's own mounts
    for point in rw_mounts:
        if point in own or point.startswith("/tmp/"):
            continue
        for dirpath, dirnames, filenames in os.walk(point):
            for n in dirnames + filenames:
                p = os.path.join(dirpath, n)
                if os.access(p, os.W_OK) and not os.path.islink(p):
                    writable.append(p)
    for p in ("/proc/sys/kernel/hostname", "/proc/sysrq-trigger", "/", "/etc", "/opt", "/usr"):
        if os.access(p, os.W_OK):
            writable.append(p)
    out["rw_mounts"] = sorted(rw_mounts)
    out["writable"] = sorted(writable)
    print(json.dumps(out))
''')


@pytest.mark.skipif(not WARM, reason="needs the warm runner")
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_warm_children_have_no_privilege_and_nothing_shared(task, backend):
    import json

    from minicoder.sandbox.warm import WarmSandbox

    with WarmSandbox(backend, LIMITS, task=task) as sb:
        sb.prepare(task)
        r = sb.run(["python3", "-c", WARM_PROBE])
    assert r.exit_code == 0, r.stderr
    out = json.loads(r.stdout)
    assert {out[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")} == {"0000000000000000"}
    assert out["NoNewPrivs"] == "1" and out["Seccomp"] == "2"
    assert out["unshare_user"] != 0 and out["unshare_mount"] != 0 and out["mount"] != 0
    assert out["kill_parent"] != 0 and out["subprocess"] == 0
    assert out["pids"][0] == 1 and len(out["pids"]) <= 3  # its own pid namespace: B, the probe, maybe a zombie
    devices = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/ptmx",
               "/dev/shm", "/dev/mqueue", "/dev/pts/ptmx", "/dev/console"}
    assert [p for p in out["writable"] if p not in devices and not p.startswith("/dev/shm/")] == []


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_hostile_catalogue_through_evaluate_many(task, backend, tmp_path, monkeypatch, used_uids):
    canary = tmp_path / "canary.txt"
    canary.write_text("secret")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.chmod(tmp_path, 0o777)
    os.chmod(outside, 0o777)
    monkeypatch.setenv("MINICODER_CANARY", "secret")
    attacks = hostile_patches(str(canary), "MINICODER_CANARY", str(outside))
    names = sorted(attacks)
    # the soak in miniature: each attack followed by an honest candidate; the attacks that can only
    # end by the timeout run in a batch of their own with a short one
    short = sorted({"infinite_loop", "sleep"})
    longer = [n for n in names if n not in short]
    rs = evaluate_many(task, [attacks[n].patch for n in short], backend=backend, workers=2, limits=LIMITS,
                       timeout_s=4.0)
    mixed = evaluate_many(task, [p for n in longer for p in (attacks[n].patch, task.patch)], backend=backend,
                          workers=2, limits=LIMITS)
    rs += mixed[0::2]
    for n, r in zip(short + longer, rs, strict=True):
        assert r.reward == attacks[n].expect_reward and r.status in attacks[n].expect_status, (n, r.status, r.message)
    assert [r.reward for r in mixed[1::2]] == [1.0] * len(longer)
    assert list(outside.iterdir()) == [] and canary.read_text() == "secret"
    for p in ("/usr/pwned", "/etc/pwned", "/pwned"):
        assert not os.path.exists(p)
    assert _left_behind(used_uids) == []
    if backend == "docker":
        from minicoder.sandbox import docker as D

        D.flush_pools()
        handed = {cid for pool in list(D._pools.values()) for cid in pool.handed_out}
        assert [c for c in D.labelled_containers(role="sandbox") if c.id in handed] == []
