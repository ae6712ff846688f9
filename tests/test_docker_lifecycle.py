"""The Docker backend's lifecycle, against a real engine: `cleanup()` removes what it says, owners whose
pid was reused count as dead, a sandbox killed by a timeout says so, and no container outlives the
process that made it (also one the warm pool was still creating at exit, and sandboxes never closed).

Every container made here carries a per-run label, and the clean-ups are scoped to it: the engine may
be shared with other runs whose containers must not be touched.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from minicoder.sandbox.base import Limits

pytestmark = pytest.mark.docker

RUN = {"minicoder.test": f"lifecycle-{uuid.uuid4().hex[:8]}"}
IMAGE = "minicoder/python:3.11"
LIMITS = Limits(memory_mb=256, pids=64, file_size_mb=1, tmp_mb=16, disk_mb=64, timeout_s=20, output_bytes=4096)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def engine(docker_client):
    yield docker_client
    left = docker_client.containers.list(all=True, filters={"label": f"minicoder.test={RUN['minicoder.test']}"})
    for c in left:
        with contextlib.suppress(Exception):
            c.remove(force=True)
    assert not left, f"containers left behind: {[c.name for c in left]}"


def _container(engine, owner: str, role: str = "sandbox"):
    from minicoder.sandbox import docker as D

    return engine.containers.run(IMAGE, ["sleep", "infinity"], detach=True, network_mode="none",
                                 labels={D.LABEL: "1", D.ROLE_LABEL: role, D.OWNER_LABEL: owner, **RUN})


def _ids(engine) -> set[str]:
    from minicoder.sandbox import docker as D

    return {c.id for c in D.labelled_containers(engine, labels=RUN)}


def test_owners_that_died_or_whose_pid_was_reused_are_reaped(engine):
    from minicoder.sandbox import docker as D

    host = socket.gethostname()
    mine = D.owner_tag()
    start = mine.rsplit(":", 1)[1]
    dead = _container(engine, f"{host}:999999999:1")  # no such process
    reused = _container(engine, f"{host}:{os.getpid()}:{int(start) + 1 if start.isdigit() else 1}")  # our pid, another start
    live = _container(engine, mine)
    elsewhere = _container(engine, "another-host:1:1")  # not ours to judge
    assert D.owner_alive(mine) and not D.owner_alive(f"{host}:{os.getpid()}:0") and D.owner_alive("another-host:1:1")
    assert D.reap_dead_owners(engine, labels=RUN) == 2
    assert _ids(engine) == {live.id, elsewhere.id}
    assert dead.id not in _ids(engine) and reused.id not in _ids(engine)
    assert D.cleanup(engine, dead_only=True, labels=RUN) == 0  # nothing dead is left


def test_cleanup_removes_every_labelled_container(engine):
    from minicoder.sandbox import docker as D

    made = [_container(engine, D.owner_tag()), _container(engine, "x:1:1"), _container(engine, D.owner_tag(), "build")]
    assert _ids(engine) >= {c.id for c in made}
    n = len(_ids(engine))
    assert D.cleanup(engine, labels=RUN) == n >= 3
    assert _ids(engine) == set()


def test_a_sandbox_killed_by_a_timeout_says_so(engine):
    from minicoder.sandbox.docker import DockerSandbox

    sb = DockerSandbox(LIMITS)
    try:
        assert sb.run(["sh", "-c", "echo alive"]).stdout == "alive\n"
        r = sb.run(["sleep", "300"], timeout_s=1.0)
        assert r.timed_out and r.exit_code is None
        sb.container.reload()
        assert sb.container.status != "running"  # the whole container was killed
        after = sb.run(["sh", "-c", "echo alive"])  # spent: answers at once, never runs the command
        assert not after.ok and after.exit_code is None and after.stdout == ""
        assert "killed by an earlier timeout" in after.stderr
    finally:
        sb.close()
    sb.pool.flush()
    with pytest.raises(Exception, match="404|No such container|Not Found"):
        engine.containers.get(sb.container.id)


_EXIT_SCRIPT = """
import sys
from minicoder.sandbox import docker as D
from minicoder.sandbox.base import Limits
print(D.owner_tag(), flush=True)
lim = Limits(memory_mb=256, pids=64, file_size_mb=1, tmp_mb=16, disk_mb=64, timeout_s=20)
if sys.argv[1] == "warm_pool":  # a pool filling up in the background, then exit at once
    D.get_pool("minicoder/python:3.11", lim, size=3)
else:  # a sandbox used and never closed; the pool is topping itself up again while we exit
    D.DockerSandbox(lim).run(["true"])
"""


@pytest.mark.parametrize("mode", ["warm_pool", "never_closed"])
def test_no_container_outlives_its_process(engine, mode):
    from minicoder.sandbox import docker as D

    r = subprocess.run([sys.executable, "-c", _EXIT_SCRIPT, mode], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    tag = r.stdout.split()[0]
    left = D.labelled_containers(engine, labels={D.OWNER_LABEL: tag})
    for c in left:  # (do not leave them to the next run's reaper either)
        with contextlib.suppress(Exception):
            c.remove(force=True)
    assert left == [], f"{len(left)} container(s) of {tag} outlived it"  # checked at once, no grace period
