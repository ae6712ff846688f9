"""Hostile and broken patches, on both backends: each gets reward 0 (or the honest reward of the fix
it also carries), a clear status, leaves the host untouched, and leaves no container or process.

Several attacks contain the correct fix and sabotage it only when the isolation fails ("return a
wrong mean if the network answers"), so an honest 1.0 is itself evidence the isolation held.
Limits are small (256 MB, 64 pids, 1 MB files, 64 MB disk) so the suite stays quick.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from minicoder.sandbox.base import Limits, pids_of_uid
from minicoder.sandbox.examples import demo_task, hostile_patches
from minicoder.sandbox.reward import evaluate

BACKENDS = ["local", pytest.param("docker", marks=pytest.mark.docker)]
LIMITS = Limits(memory_mb=256, pids=64, file_size_mb=1, tmp_mb=16, disk_mb=64, timeout_s=20.0)
SHORT = {"infinite_loop", "sleep"}  # attacks that can only end by the timeout: keep it short
NAMES = sorted(hostile_patches())


@pytest.fixture(scope="module")
def task():
    return demo_task()


def _left_behind(uids: list[int]) -> list[int]:
    """Live (non-zombie) processes still running as one of `uids`.

    Precondition for this to mean something: a root host, where each local sandbox runs as its own
    fresh uid (CI runs as root). As another user every sandbox runs as our own uid, so leftovers
    cannot be told apart by uid and this finds nothing; there the pid namespace is what ends them,
    which test_sandbox.py checks on every host by argv tokens."""
    assert all(u != os.getuid() for u in uids) or os.geteuid() != 0  # root: never our own uid
    return [p for u in uids if u != os.getuid() for p in pids_of_uid(u)]


def _ours_in_use() -> int:
    """Containers handed out by this process's pools that still exist (after pending removals)."""
    from minicoder.sandbox import docker as D

    D.flush_pools()
    handed = {cid for pool in list(D._pools.values()) for cid in pool.handed_out}
    return len([c for c in D.labelled_containers(role="sandbox") if c.id in handed])


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("name", NAMES)
def test_hostile_patch(task, backend, name, tmp_path: Path, monkeypatch, used_uids):
    canary = tmp_path / "canary.txt"
    canary.write_text("secret")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.chmod(tmp_path, 0o777)
    os.chmod(outside, 0o777)
    monkeypatch.setenv("MINICODER_CANARY", "secret")
    attack = hostile_patches(str(canary), "MINICODER_CANARY", str(outside))[name]

    r = evaluate(task, attack.patch, backend=backend, limits=LIMITS, timeout_s=4.0 if name in SHORT else None)

    assert r.reward == attack.expect_reward, (name, r.status, r.message, r.tests, r.exec and r.exec.stderr[-500:])
    assert r.status in attack.expect_status, (name, r.status, r.message)
    assert r.message or r.status in ("resolved", "unresolved")  # a failure always says why
    # the host is untouched
    assert list(outside.iterdir()) == []
    for p in ("/usr/pwned", "/etc/pwned", "/pwned"):
        assert not os.path.exists(p)
    # nothing left behind
    assert _left_behind(used_uids) == []
    if backend == "docker":
        assert _ours_in_use() == 0


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_hostile_neighbours_do_not_disturb_an_honest_evaluation(task, backend, used_uids):
    """A fork bomb and a memory hog run at the same time as the gold patch: gold still resolves."""
    attacks = hostile_patches()
    results: dict[str, float] = {}

    def go(name, patch):
        results[name] = evaluate(task, patch, backend=backend, limits=LIMITS).reward

    threads = [threading.Thread(target=go, args=(n, p)) for n, p in
               (("gold", task.patch), ("fork_bomb", attacks["fork_bomb"].patch), ("memory", attacks["memory"].patch))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {"gold": 1.0, "fork_bomb": 1.0, "memory": 0.0}
    assert _left_behind(used_uids) == []
    if backend == "docker":
        assert _ours_in_use() == 0
