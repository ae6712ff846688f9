"""Sessions on both backends: a live sandbox for one rollout, graded afterwards in a fresh one.

Each test drives a real sandbox (the warm runner on a root host, else the backend's cold sandbox):
a round trip through the host and the sandbox, the hidden tests never reachable from a session, a
session killed mid-command and one killed from outside, session limits, pools, the owner killed /
interrupted, and every hostile patch run inside a session and then graded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from minicoder.sandbox.base import Limits
from minicoder.sandbox.examples import FIXED_MEAN, OPS, TEST_MEAN, demo_task, hostile_patches
from minicoder.sandbox.host import pids_of_uid
from minicoder.sandbox.reward import evaluate
from minicoder.sandbox.session import SessionError, SessionLimits, SessionPool, open_session
from minicoder.sandbox.workspace import snapshot, template_for

BACKENDS = ["local", pytest.param("docker", marks=pytest.mark.docker)]
LIMITS = Limits(memory_mb=256, pids=64, file_size_mb=4, tmp_mb=16, disk_mb=64, timeout_s=20.0)
FIXED_OPS = OPS.replace("    return sum(xs) // len(xs)\n", FIXED_MEAN)
ROOT = Path(__file__).resolve().parents[1]
SHORT = {"infinite_loop", "sleep"}  # attacks that can only end by their timeout: give them a short one


@pytest.fixture(scope="module")
def task():
    return demo_task()


def _uid_gone(uid: int | None, timeout: float = 10.0) -> bool:
    if uid is None or uid == os.getuid():
        return True
    deadline = time.monotonic() + timeout
    while pids_of_uid(uid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not pids_of_uid(uid)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_round_trip_write_exec_read_diff_grade(task, backend):
    with open_session(task, backend=backend, limits=LIMITS) as s:
        assert s.alive
        assert s.read_file("calc/ops.py") == OPS
        s.write_file("calc/ops.py", FIXED_OPS)  # host -> sandbox
        r = s.exec("cat calc/ops.py")
        assert r.exit_code == 0 and r.stdout == FIXED_OPS
        r = s.exec("python -m pytest -q -p no:cacheprovider tests/test_ops.py")
        assert r.exit_code == 0 and "4 passed" in r.stdout, r.stdout + r.stderr
        r = s.exec("mkdir -p notes && printf 'made inside\\n' > notes/todo.txt && echo $HOME && id -un")
        assert r.exit_code == 0 and r.stdout.split() == ["/tmp/home", "sandbox"], r.stdout + r.stderr
        assert s.read_file("notes/todo.txt") == "made inside\n"  # sandbox -> host
        r = s.exec(["sh", "-c", "exit 3"])
        assert r.exit_code == 3 and not r.timed_out
        assert set(s.list_files()) == {"calc/__init__.py", "calc/ops.py", "pytest.ini", "tests/test_ops.py",
                                       "notes/todo.txt"}
        patch = s.diff()
        live = snapshot(s.sb.workspace)
    assert "+    return sum(xs) / len(xs)" in patch and "b/notes/todo.txt" in patch
    # the diff reproduces the session's tree on the base commit ...
    from minicoder.sandbox.patching import apply_patch

    fresh = Path(os.environ.get("TMPDIR", "/tmp")) / f"session-rt-{os.getpid()}-{backend}"
    subprocess.run(["cp", "-a", str(template_for(task)), str(fresh)], check=True)
    try:
        assert apply_patch(fresh, patch).applied
        assert snapshot(fresh) == live
    finally:
        subprocess.run(["rm", "-rf", str(fresh)], check=True)
    # ... and grading it in a fresh sandbox runs the hidden tests and resolves the task
    r = evaluate(task, patch, backend=backend, limits=LIMITS)
    assert r.status == "resolved" and r.reward == 1.0, (r.status, r.message)
    assert not s.alive and s.exec("true").exit_code is None  # closed: an error result, no hang


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_hidden_tests_never_visible_in_a_session(task, backend):
    marker = "test_negative"  # only in the hidden test_patch
    assert marker in TEST_MEAN and marker not in "".join(task.environment.files.values())
    with open_session(task, backend=backend, limits=LIMITS) as s:
        assert not any("test_mean" in f for f in s.list_files())
        with pytest.raises(SessionError):
            s.read_file("tests/test_mean.py")
        r = s.exec(f"grep -rl {marker} /workspace /tmp /report /dev/shm 2>/dev/null; "
                   f"git log --all -p 2>/dev/null | grep -c {marker}; ls tests")
        assert r.stdout.split() == ["0", "test_ops.py"], r.stdout + r.stderr
        r = s.exec("python -m pytest -q -p no:cacheprovider tests/")  # the visible suite only
        assert "4 passed" in r.stdout and "test_mean" not in r.stdout


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_session_killed_mid_command(task, backend):
    s = open_session(task, backend=backend, limits=LIMITS)
    r = s.exec("sleep 30; echo never", timeout=1.0)  # a timeout ends the command, not the session
    assert r.timed_out and "never" not in r.stdout
    if getattr(s.sb, "warm", False):
        assert s.alive and s.exec("echo again").stdout == "again\n"
    uid = getattr(s.sb, "uid", None)
    out = {}

    def long_command():
        out["r"] = s.exec("sleep 60; echo finished", timeout=120)

    th = threading.Thread(target=long_command)
    th.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    s.close()  # from another thread, while the command runs
    th.join(timeout=30)
    assert not th.is_alive() and time.monotonic() - t0 < 20
    r = out["r"]
    assert r.exit_code is None and "finished" not in r.stdout
    assert not s.alive and s.exec("true").exit_code is None
    assert _uid_gone(uid)


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_session_whose_sandbox_was_killed_from_outside(task, backend):
    s = open_session(task, backend=backend, limits=LIMITS)
    assert s.exec("true").exit_code == 0
    if getattr(s.sb, "warm", False):
        os.kill(s.sb.pid, signal.SIGKILL)  # the sandbox's pid 1, by its host pid
    elif backend == "docker":
        s.sb.container.kill()
    else:
        pytest.skip("a cold local session has no process between commands to kill")
    time.sleep(0.2)
    t0 = time.monotonic()
    r = s.exec("echo hello")
    assert time.monotonic() - t0 < 10
    assert r.exit_code is None and "session ended" in r.stderr and not s.alive
    for call in (lambda: s.read_file("calc/ops.py"), lambda: s.write_file("x", "y"), s.list_files, s.diff):
        with pytest.raises(SessionError, match="session ended"):
            call()
    s.close()
    with open_session(task, backend=backend, limits=LIMITS) as s2:  # the next one is fine
        assert s2.exec("echo ok").stdout == "ok\n"


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_session_limits(task, backend):
    with open_session(task, backend=backend, limits=LIMITS, session_limits=SessionLimits(wall_s=1.0)) as s:
        time.sleep(1.1)  # no command before the deadline: the test cannot depend on the machine's load
        r = s.exec("echo late")
        assert r.exit_code is None and "wall-time" in r.stderr and "late" not in r.stdout
    with open_session(task, backend=backend, limits=LIMITS, session_limits=SessionLimits(cpu_s=0.5)) as s:
        r = s.exec(["python3", "-c", "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.0: pass"],
                   timeout=300)  # a long wall timeout: the CPU budget must end it, however loaded the machine
        assert not s.alive and "CPU limit" in s.reason
    if backend == "local" and os.geteuid() == 0:  # warm: the workspace is a tmpfs of disk_mb
        with open_session(task, backend=backend, limits=LIMITS, session_limits=SessionLimits(disk_mb=8)) as s:
            r = s.exec("for i in 1 2 3 4; do head -c 3000000 /dev/zero > big$i || echo full; done; du -sm . | cut -f1")
            assert "full" in r.stdout and int(r.stdout.split()[-1]) <= 9, r.stdout + r.stderr
            assert s.alive and s.exec("rm big*; echo freed").stdout == "freed\n"


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_session_pool_hands_out_started_independent_sandboxes(task, backend):
    with SessionPool(task, backend=backend, size=2, limits=LIMITS) as pool:
        assert pool.wait_ready(60)
        with pool.open() as a, pool.open() as b:
            assert a.sb is not b.sb
            a.write_file("only_in_a.txt", "a")
            assert "only_in_a.txt" not in b.list_files()
            ra, rb = a.exec("id -u"), b.exec("id -u")
            if getattr(a.sb, "warm", False):
                assert ra.stdout != rb.stdout  # each its own fresh uid
            th = threading.Thread(target=a.exec, args=("sleep 3",))
            th.start()  # a sleeps while b looks at every process it can see
            time.sleep(0.5)
            r = b.exec("cat /proc/[0-9]*/comm")
            th.join()
            assert r.exit_code == 0 and "sh" in r.stdout.split() and "sleep" not in r.stdout.split(), r.stdout


_OWNER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    from minicoder.sandbox.base import Limits
    from minicoder.sandbox.examples import demo_task
    from minicoder.sandbox.session import open_session
    with open_session(demo_task(), backend={backend!r}, limits=Limits(timeout_s=120)) as s:
        print(getattr(s.sb, "uid", ""), flush=True)
        s.exec("sleep 100 & sleep 100; echo done", timeout=110)
""")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_everything_gone_after_the_owner_is_killed_or_interrupted(backend, how):
    if os.geteuid() != 0:
        pytest.skip("processes are found by their fresh uid, which needs a root host")
    proc = subprocess.Popen([sys.executable, "-c", _OWNER.format(root=str(ROOT), backend=backend)],
                            stdout=subprocess.PIPE, text=True)
    uid = int(proc.stdout.readline())
    deadline = time.monotonic() + 30
    while len(pids_of_uid(uid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(pids_of_uid(uid)) >= 2  # the two sleeps are running
    proc.send_signal(signal.SIGKILL if how == "SIGKILL" else signal.SIGINT)
    proc.wait(timeout=60)
    if backend == "docker" and how == "SIGKILL":
        from minicoder.sandbox.docker import reap_dead_owners

        assert reap_dead_owners() >= 1  # the warm container of the dead owner
    assert _uid_gone(uid, timeout=20)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_hostile_patches_through_a_session_then_graded(task, backend, tmp_path):
    """Each attack is applied and run inside a session (its code runs there), then the session's diff
    is graded in a fresh sandbox: the reward is the one the attack deserves, the host is untouched."""
    canary = tmp_path / "canary.txt"
    canary.write_text("secret")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.chmod(tmp_path, 0o777)
    os.chmod(outside, 0o777)
    attacks = hostile_patches(str(canary), "MINICODER_CANARY", str(outside))

    def one(name):
        attack = attacks[name]
        data = attack.patch if isinstance(attack.patch, bytes) else attack.patch.encode()
        with open_session(task, backend=backend, limits=LIMITS) as s:
            s.write_file("attack.diff", data)
            s.exec("git apply attack.diff; rm -f attack.diff")
            s.pytest(["-q", "-x", "tests/"], timeout=4)  # the attack's code runs in the session
            uid = getattr(s.sb, "uid", None)
            patch = s.diff() if s.alive else ""
        r = evaluate(task, patch, backend=backend, limits=LIMITS, timeout_s=4 if name in SHORT else None)
        return name, r.reward, r.status, _uid_gone(uid)

    with ThreadPoolExecutor(2) as ex:
        rows = list(ex.map(one, sorted(attacks)))
    wrong = [(n, reward, status) for n, reward, status, _ in rows if reward != attacks[n].expect_reward]
    assert wrong == []
    assert all(gone for *_, gone in rows)
    assert list(outside.iterdir()) == [] and canary.read_text() == "secret"
    for p in ("/usr/pwned", "/etc/pwned", "/pwned"):
        assert not os.path.exists(p)
