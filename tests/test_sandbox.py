"""The two sandbox backends, directly: a clean environment, limits, timeouts that kill the whole
tree, capped output, no network, a read-only system, hidden host files, and the clean-up of
leftovers (labelled containers of dead owners, stale local folders)."""

from __future__ import annotations

import json
import os
import secrets
import time

import pytest

from minicoder.sandbox.base import Limits, new_root, pids_of_uid, reap_stale_roots

BACKENDS = ["local", pytest.param("docker", marks=pytest.mark.docker)]
LIMITS = Limits(memory_mb=256, pids=64, file_size_mb=1, tmp_mb=16, disk_mb=64, timeout_s=20, output_bytes=4096)


@pytest.fixture
def make_sandbox(request):
    made = []

    def make(backend, limits=LIMITS):
        if backend == "docker":
            request.getfixturevalue("docker_client")
            from minicoder.sandbox.docker import DockerSandbox

            sb = DockerSandbox(limits)
        else:
            from minicoder.sandbox.local import BwrapSandbox

            sb = BwrapSandbox(limits)
        made.append(sb)
        return sb

    yield make
    for sb in made:
        sb.close()


def py(code: str) -> list[str]:
    return ["python3", "-c", code]


@pytest.mark.parametrize("backend", BACKENDS)
def test_clean_environment_and_identity(make_sandbox, backend, monkeypatch):
    monkeypatch.setenv("MINICODER_CANARY", "secret")
    sb = make_sandbox(backend)
    r = sb.run(py("import os, json; print(json.dumps({'uid': os.getuid(), 'cwd': os.getcwd(), 'env': dict(os.environ)}))"))
    assert r.exit_code == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["uid"] == 1000 and got["cwd"] == "/workspace"
    assert "MINICODER_CANARY" not in got["env"] and got["env"]["HOME"].startswith("/tmp")
    assert not any(v.startswith("/root") for v in got["env"].values())


def _procs_with(token: str) -> list[int]:
    """Live host pids whose command line contains `token` (sandbox processes are host processes)."""
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as fh:
                    if token.encode() in fh.read():
                        out.append(int(entry.name))
            except OSError:
                continue
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_timeout_kills_the_whole_tree(make_sandbox, backend):
    """Three sleepers (one in the background, one double-forked into its own session) seen alive on
    the host, then a timeout: all three gone, on root and non-root hosts alike (found by a unique
    duration in their argv, not by uid)."""
    import threading

    sb = make_sandbox(backend)
    token = f"{300 + secrets.randbelow(10**6) / 10**6:.6f}"  # `sleep 300.123456`: unique to this test
    seen: list[int] = []
    result: list = []
    t = threading.Thread(target=lambda: result.append(sb.run(
        ["sh", "-c", f"sleep {token} & (setsid sleep {token} &) ; sleep {token}"], timeout_s=5.0)))
    t0 = time.perf_counter()
    t.start()
    while t.is_alive() and len(seen) < 3:
        seen = _procs_with(f"sleep\0{token}")
        time.sleep(0.02)
    t.join()
    r = result[0]
    assert len(seen) == 3, "the sleepers never all ran"
    assert r.timed_out and r.exit_code is None and r.summary().startswith("timed out")
    assert r.duration_s >= 5.0  # it waited for the timeout...
    # ...and not for the sleepers (300 s); each backend waits at most ~10 s for the killed stream
    assert time.perf_counter() - t0 < 100
    assert _procs_with(f"sleep\0{token}") == []
    if backend == "docker":
        sb.container.reload()
        assert sb.container.status != "running"  # a timeout kills the container


@pytest.mark.parametrize("backend", BACKENDS)
def test_output_is_capped_but_counted(make_sandbox, backend):
    sb = make_sandbox(backend)
    r = sb.run(py("import sys\nfor i in range(5000): sys.stdout.write('x' * 999 + '\\n')\nprint('END')"))
    assert r.exit_code == 0
    assert r.stdout_bytes == 5000 * 1000 + 4 and len(r.stdout) <= 4096 and r.stdout.endswith("END\n")
    assert r.truncated


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_network(make_sandbox, backend):
    sb = make_sandbox(backend)
    r = sb.run(py("import socket\n"
                  "try:\n    socket.create_connection(('1.1.1.1', 53), timeout=2); print('CONNECTED')\n"
                  "except OSError as e:\n    print('blocked', e.errno)\n"
                  "print(sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]))"))
    assert "CONNECTED" not in r.stdout and "blocked" in r.stdout
    assert r.stdout.strip().splitlines()[-1] == "['lo']"


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_only_system_writable_workspace_file_size_limit(make_sandbox, backend):
    sb = make_sandbox(backend)
    r = sb.run(py("import os\n"
                  "for p in ('/usr/x', '/etc/x', '/x'):\n"
                  "    try:\n        open(p, 'w'); print('WROTE', p)\n    except OSError as e:\n        print('denied', p)\n"
                  "open('/workspace/ok.txt', 'w').write('hi')\n"
                  "try:\n    open('big', 'wb').write(b'x' * 2 * 2**20); print('BIG')\n"
                  "except OSError as e:\n    print('fsize', e.errno)\n"))
    assert r.exit_code == 0, r.stderr
    assert "WROTE" not in r.stdout and r.stdout.count("denied") == 3
    assert "fsize 27" in r.stdout  # EFBIG: RLIMIT_FSIZE at 1 MiB
    assert (sb.workspace / "ok.txt").read_text() == "hi"


def test_local_host_files_are_invisible(make_sandbox, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("x")
    sb = make_sandbox("local")
    here = os.path.dirname(os.path.abspath(__file__))
    r = sb.run(py(f"import os; print([os.path.exists(p) for p in ({str(secret)!r}, '/root', '/home', '/work', {here!r})])"))
    assert r.stdout.strip() == "[False, False, False, False, False]"


def test_local_fork_bomb_is_bounded(make_sandbox):
    sb = make_sandbox("local")
    token = secrets.token_hex(6)
    r = sb.run(py(f"# fork-bomb-{token}\n" "import os, time\nn = 0\ntry:\n    while True:\n        if os.fork() == 0:\n"
                  "            time.sleep(60); os._exit(0)\n        n += 1\nexcept OSError:\n    print('refused after', n)\n"))
    n = int(r.stdout.split()[-1])
    assert 0 < n <= LIMITS.pids
    # the pid namespace took the sleeping children along (found by the token in their argv, any host uid)
    assert _procs_with("fork-bomb-" + token) == []
    if sb.uid != os.getuid():  # root host: the sandbox's own uid has nothing left either
        assert pids_of_uid(sb.uid) == []


def test_stale_local_roots_are_reaped(tmp_path, monkeypatch):
    monkeypatch.setenv("MINICODER_SANDBOX_DIR", str(tmp_path))
    live = new_root()
    dead = tmp_path / "minicoder-sb-999999999-abc"
    dead.mkdir()
    (dead / "f").write_text("x")
    assert reap_stale_roots() == 1
    assert live.exists() and not dead.exists()


@pytest.mark.docker
def test_docker_pool_hands_out_each_container_once_and_shuts_down(docker_client):
    from minicoder.sandbox import docker as D

    pool = D.ContainerPool("minicoder/python:3.11", LIMITS, size=2)
    try:
        a, b = pool.acquire(), pool.acquire()
        assert a.container.id != b.container.id
        attrs = docker_client.api.inspect_container(a.container.id)
        host = attrs["HostConfig"]
        assert host["NetworkMode"] == "none" and host["CapDrop"] == ["ALL"] and host["ReadonlyRootfs"]
        assert host["Memory"] == LIMITS.memory_mb * 2**20 and host["PidsLimit"] == LIMITS.pids
        assert attrs["Config"]["User"] == "1000:1000" and "no-new-privileges" in host["SecurityOpt"]
        pool.release(a)
        pool.flush()
        assert a.container.id not in {x.id for x in D.labelled_containers(docker_client)}
    finally:
        pool.shutdown()
    mine = [x for x in D.labelled_containers(docker_client, role="sandbox")
            if x.id in set(pool.handed_out) or x.id == b.container.id]
    assert mine == []


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
def test_task_with_python_packages(backend, request):
    """A task whose tests need a package the base image lacks: wheels downloaded on the host, a
    per-repository image (docker, content-hash tag, built with no network) or runtime (local)."""
    from minicoder.gitdiff import make_diff
    from minicoder.sandbox.examples import BASE_FILES, TEST_MEAN, demo_task
    from minicoder.sandbox.reward import evaluate

    t = demo_task()
    t.environment.python_packages = ["six==1.16.0"]
    t.test_patch = make_diff(BASE_FILES, {"tests/test_mean.py": "import six\n" + TEST_MEAN})
    if backend == "docker":
        client = request.getfixturevalue("docker_client")
        from minicoder.sandbox.repo_image import ensure_repo_image

        tag = ensure_repo_image(t)
        assert tag.startswith("minicoder/env-minicoder-calc:") and ensure_repo_image(t) == tag  # reused
        assert client.images.get(tag).labels.get("minicoder.repo") == "minicoder/calc"
    assert evaluate(t, t.patch, backend=backend).status == "resolved"
    t.environment.python_packages = []  # without it the hidden tests cannot import six
    assert evaluate(t, t.patch, backend=backend).status == "unresolved"
