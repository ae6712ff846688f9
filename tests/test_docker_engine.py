"""The Docker engine, the base task image and the image helpers (minicoder/sandbox/images.py).

The first tests need no engine (content hashes, build contexts, the apt-mirror parser). The
`docker`-marked ones use a real engine: in CI (or with MINICODER_DOCKER_TESTS=1) a missing engine
fails them, elsewhere they skip. Every container they start carries a per-run label and is removed
by a finalizer, which also checks that none is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tarfile
import threading
import uuid
from pathlib import Path

import pytest

from minicoder.record import DEFAULT_IMAGE
from minicoder.sandbox import images
from minicoder.sandbox.images import (
    ENGINE_SCRIPT,
    ImageBuildError,
    build_context,
    content_hash,
    debian_mirror,
    hashed_tag,
)

RUN_LABEL = {"minicoder.test": f"docker-engine-{uuid.uuid4().hex[:8]}"}


# ------------------------------------------------------------------------------ no engine needed
def _tree(root: Path) -> Path:
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "a.py").write_text("x = 1\n")
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    return root


def test_content_hash_follows_content_not_location(tmp_path):
    a = _tree(tmp_path / "a")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    h = content_hash(a)
    assert len(h) == 12 and h == content_hash(b)  # same tree elsewhere: same hash
    assert content_hash(a, length=64).startswith(h)

    (b / "pkg" / "a.py").write_text("x = 2\n")  # one byte
    assert content_hash(b) != h
    shutil.copytree(a, b, dirs_exist_ok=True)
    assert content_hash(b) == h
    (b / "run.sh").chmod(0o644)  # executable bit
    assert content_hash(b) != h
    (b / "run.sh").chmod(0o755)
    (b / "pkg" / "a.py").rename(b / "pkg" / "b.py")  # a file name
    assert content_hash(b) != h

    # strings are framed: ("ab", "c") and ("a", "bc") differ; a path differs from its text
    assert content_hash("ab", "c") != content_hash("a", "bc")
    assert content_hash(a) != content_hash(str(a))
    with pytest.raises(TypeError, match="cannot hash a int"):
        content_hash(3)
    with pytest.raises(FileNotFoundError):
        content_hash(tmp_path / "missing")


def test_hashed_tag(tmp_path):
    tree = _tree(tmp_path / "t")
    tag = hashed_tag("minicoder/task-demo", tree, "FROM x")
    repo, _, h = tag.partition(":")
    assert repo == "minicoder/task-demo" and h == content_hash(tree, "FROM x")
    for bad in ("Minicoder/Task", "repo:tag", "a//b", "-x"):
        with pytest.raises(ValueError, match="not a valid image repository"):
            hashed_tag(bad, "x")


def test_build_context_contents(tmp_path):
    tree = _tree(tmp_path / "ctx")
    extra = tmp_path / "extra.txt"
    extra.write_text("from a file\n")
    ctx = build_context(tree, files={"data/x.txt": "text", "/y.bin": b"\x00\x01", "z.txt": extra},
                        dockerfile_text="FROM scratch\n")
    with tarfile.open(fileobj=ctx) as tar:
        members = {m.name: m for m in tar.getmembers()}
        read = lambda n: tar.extractfile(n).read()
        assert set(members) == {"pkg/a.py", "run.sh", "data/x.txt", "y.bin", "z.txt", "Dockerfile"}
        assert read("Dockerfile") == b"FROM scratch\n" and read("y.bin") == b"\x00\x01"
        assert read("z.txt") == b"from a file\n" and read("pkg/a.py") == b"x = 1\n"
        assert members["run.sh"].mode & 0o111  # executable bits survive
    with pytest.raises(ImageBuildError, match="no Dockerfile"):
        build_context(tree)
    with pytest.raises(ImageBuildError, match="relative path inside the context"):
        build_context(files={"../escape": "x"}, dockerfile_text="FROM scratch\n")
    with pytest.raises(ImageBuildError, match="not a directory"):
        build_context(tmp_path / "nope", dockerfile_text="FROM scratch\n")


def test_debian_mirror_from_apt_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("MINICODER_DEBIAN_MIRROR", raising=False)
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n"
        "Enabled: no\nTypes: deb\nURIs: http://off.example/debian\nSuites: bookworm\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
    )
    assert debian_mirror([deb822]) == "http://mirror.example/debian"
    one_line = tmp_path / "sources.list"
    one_line.write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb https://packages.example.com/apt cloud-sdk main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://old.example/debian bookworm main\n"
    )
    assert debian_mirror([one_line, deb822]) == "http://old.example/debian"
    assert debian_mirror([tmp_path / "missing.list"]) == images.DEFAULT_MIRROR
    monkeypatch.setenv("MINICODER_DEBIAN_MIRROR", "http://override.example/debian/")
    assert debian_mirror([deb822]) == "http://override.example/debian"


# ----------------------------------------------------------------------------- with a real engine
@pytest.fixture(scope="module")
def client(docker_client):
    """A client with long per-call time-outs (creating a container copies the rootfs under the vfs
    storage driver); at the end, removes this run's containers and checks none was left."""
    import docker

    client = docker.from_env(timeout=images.API_TIMEOUT)
    yield client
    leftover = client.containers.list(all=True, filters={"label": f"minicoder.test={RUN_LABEL['minicoder.test']}"})
    for c in leftover:
        c.remove(force=True)
    assert not leftover, f"containers left behind: {[c.name for c in leftover]}"


@pytest.fixture(scope="module")
def base(client):
    """The base task image (a no-op when `make docker` built it; builds it otherwise)."""
    return images.base_image(client)


def run(client, image, command, **kw):
    return images.run_probe(client, image, command, labels=RUN_LABEL, **kw)


@pytest.mark.docker
def test_engine_answers(client):
    assert client.ping() is True
    info = client.info()
    assert info["Driver"] in {"overlay2", "vfs", "btrfs", "zfs", "fuse-overlayfs", "overlay"}
    assert int(client.version()["ApiVersion"].split(".")[1]) >= 41


@pytest.mark.docker
def test_engine_script_is_idempotent(client):
    pid_before = Path("/var/run/docker.pid").read_text().strip() if Path("/var/run/docker.pid").exists() else None
    proc = subprocess.run(["bash", str(ENGINE_SCRIPT)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # what makes it quick is that it does nothing: no start, no install, no wait (no wall-clock bound)
    assert proc.stdout.startswith("[docker] engine already answers") and len(proc.stdout.splitlines()) == 1
    assert "starting dockerd" not in proc.stdout + proc.stderr and "installing" not in proc.stdout
    if pid_before is not None:
        assert Path("/var/run/docker.pid").read_text().strip() == pid_before  # no second daemon


@pytest.mark.docker
def test_base_image_labels_and_recipe(client, base):
    assert base == DEFAULT_IMAGE
    labels = images.image_labels(client, base)
    assert labels[images.LABEL] == "1"
    assert labels[images.RECIPE_LABEL] == images.base_recipe_hash()
    assert labels["minicoder.base-source"] in {"registry", "offline"}
    image_id = client.images.get(base).id
    lines: list[str] = []
    assert images.base_image(client, log=lines.append) == base  # up to date: nothing to do
    assert client.images.get(base).id == image_id and not any("Step" in line for line in lines)  # not rebuilt


@pytest.mark.docker
def test_base_image_tools(client, base):
    code, out = run(client, base, ["python3", "-c", "import sys; print(sys.version)"])
    assert code == 0 and out.startswith("3.11."), out
    code, out = run(client, base, ["python3", "-m", "pytest", "--version"])
    assert code == 0 and out.startswith("pytest "), out
    code, out = run(client, base, ["git", "--version"])
    assert code == 0 and out.startswith("git version "), out
    code, out = run(client, base, ["sh", "-c", "id -un; id -u; pwd"])
    assert out.split() == ["sandbox", "1000", "/workspace"], out
    found = images.verify_image(client, base)
    assert found["python"].startswith("3.11.") and found["cwd_writable"]


@pytest.mark.docker
def test_pytest_runs_as_sandbox_user(client, base):
    """A real test run as uid 1000 in /workspace: one pass, one fail, and pytest's exit code says so."""
    script = (
        "printf 'def test_ok():\\n    assert 1 + 1 == 2\\n\\ndef test_bad():\\n    assert 1 + 1 == 3\\n'"
        " > test_t.py && git init -q . && python3 -m pytest -q -p no:cacheprovider test_t.py"
    )
    code, out = run(client, base, ["sh", "-c", script])
    assert code == 1, out
    assert "1 failed, 1 passed" in out


class _HostServer:
    """A TCP server on this machine (all addresses) that counts the connections it accepts."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self):
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def host_server():
    srv = _HostServer()
    yield srv
    srv.close()


def _host_addresses(client) -> dict[str, str]:
    """This machine's addresses as a container would see them: the bridge gateway (if the engine
    has a bridge) and the address of the default route's interface. Finding the latter with a UDP
    connect() sends no packet."""
    out = {}
    try:
        gw = client.networks.get("bridge").attrs["IPAM"]["Config"][0]["Gateway"]
        out["bridge_gateway"] = gw
    except Exception:
        pass
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("1.1.1.1", 53))
            out["host"] = s.getsockname()[0]
        except OSError:
            pass
    return out


# Runs inside the container: interfaces, a loopback control, DNS, and TCP connects to targets.
_NET_PROBE = r"""
import json, socket, sys
res = {"ifaces": sorted(l.split(":")[0].strip() for l in open("/proc/net/dev").read().splitlines()[2:])}
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(1)
socket.create_connection(srv.getsockname(), timeout=2).close()
res["loopback"] = "connected"
try:
    socket.getaddrinfo("deb.debian.org", 80); res["dns"] = "resolved"
except OSError as e:
    res["dns"] = type(e).__name__
for name, host, port in json.loads(sys.argv[1]):
    try:
        socket.create_connection((host, port), timeout=3).close(); res[name] = "connected"
    except OSError as e:
        res[name] = f"{type(e).__name__}: {e}"
print(json.dumps(res))
"""


def _net_probe(client, image, targets, network_mode):
    code, out = run(client, image, ["python3", "-c", _NET_PROBE, json.dumps(targets)], network_mode=network_mode)
    assert code == 0, out
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.docker
def test_network_none_reaches_nothing(client, base, host_server):
    addrs = _host_addresses(client)
    targets = [["public_dns", "1.1.1.1", 53]] + [[k, v, host_server.port] for k, v in addrs.items()]
    res = _net_probe(client, base, targets, network_mode="none")
    assert res["ifaces"] == ["lo"], res
    assert res["loopback"] == "connected"  # the probe's sockets work...
    assert res["dns"] != "resolved"
    for name, _, _ in targets:  # ...yet nothing outside the container answers
        assert res[name] != "connected", (name, res)
    assert host_server.accepted == 0


@pytest.mark.docker
def test_network_probe_detects_reachability(client, base, host_server):
    """Control for the test above: with a network, the same probe reaches the host's server. The host
    network exists on every engine (also one started with --bridge=none); the bridge is tried too
    when the engine has one."""
    addrs = _host_addresses(client)
    targets = [["loopback_of_host", "127.0.0.1", host_server.port]]
    if "host" in addrs:
        targets.append(["host", addrs["host"], host_server.port])
    res = _net_probe(client, base, targets, network_mode="host")
    for name, _, _ in targets:
        assert res[name] == "connected", (name, res)
    assert "lo" in res["ifaces"] and len(res["ifaces"]) > 1 and host_server.accepted >= len(targets)
    gw = addrs.get("bridge_gateway")
    if gw is not None:  # dockerd with its default bridge network
        seen = host_server.accepted
        res = _net_probe(client, base, [["bridge_gateway", gw, host_server.port]], network_mode="bridge")
        assert res["bridge_gateway"] == "connected", res
        assert "eth0" in res["ifaces"] and host_server.accepted > seen


@pytest.mark.docker
def test_build_from_dockerfile_with_hashed_tag(client, base, tmp_path):
    (tmp_path / "hello.py").write_text("print('hello from', __name__)\n")
    dockerfile = f"FROM {base}\nCOPY hello.py /opt/hello.py\nRUN python3 /opt/hello.py > /opt/out.txt\n"
    tag = hashed_tag("minicoder/test-hello", tmp_path, dockerfile, RUN_LABEL["minicoder.test"])
    lines: list[str] = []
    try:
        assert images.build_from_dockerfile(client, tag, context=tmp_path, dockerfile_text=dockerfile,
                                            network_mode="none", labels=RUN_LABEL, log=lines.append) == tag
        assert any("COPY hello.py" in line for line in lines)
        code, out = run(client, tag, ["cat", "/opt/out.txt"])
        assert (code, out) == (0, "hello from __main__\n")
        labels = images.image_labels(client, tag)
        assert labels["minicoder"] == "1" and labels["minicoder.test"] == RUN_LABEL["minicoder.test"]

        image_id = client.images.get(tag).id
        again: list[str] = []
        images.build_from_dockerfile(client, tag, context=tmp_path, dockerfile_text=dockerfile, log=again.append)
        assert again == [] and client.images.get(tag).id == image_id  # exists: not rebuilt

        with pytest.raises(ImageBuildError, match="non-zero code: 3"):
            images.build_from_dockerfile(client, tag + "-bad", dockerfile_text=f"FROM {base}\nRUN exit 3\n",
                                         network_mode="none", labels=RUN_LABEL)
    finally:
        for t in (tag,):
            if images.image_exists(client, t):
                client.images.remove(t, force=True)


@pytest.mark.docker
def test_containers_are_removed(client, base):
    """Also when the container cannot start (the SDK's containers.run would leave it behind)."""
    import docker

    mine = {"label": f"minicoder.test={RUN_LABEL['minicoder.test']}"}
    assert run(client, base, ["sh", "-c", "exit 7"]) == (7, "")
    with pytest.raises(docker.errors.APIError, match="no such file|not found"):
        run(client, base, ["/no/such/program"])
    assert client.containers.list(all=True, filters=mine) == []


def test_engine_script_as_non_root_explains(tmp_path):
    """Without root (and with no engine it may use), the script explains instead of failing deep inside.

    As root it runs as `nobody`, who may not use the root-owned engine socket even when one answers;
    as another user it runs as that user, with DOCKER_HOST pointing at no engine."""
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"} | {"HOME": "/nonexistent"}
    if os.geteuid() == 0:
        kw = {"user": 65534, "group": 65534, "extra_groups": []}
    else:
        kw = {}
        env["DOCKER_HOST"] = f"unix://{tmp_path}/no-engine.sock"
    # The script goes in on stdin: `nobody` may not be able to read the checkout.
    proc = subprocess.run(["bash", "-s"], input=ENGINE_SCRIPT.read_text(), capture_output=True, text=True,
                          timeout=60, env=env, cwd="/", **kw)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "starting one needs root" in proc.stderr and "sudo bash envs/docker_engine.sh" in proc.stderr
