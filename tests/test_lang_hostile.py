"""Hostile patches against the JavaScript, Go and Rust demo tasks, on both backends.

Each attack gets its expected reward (0, or the honest 1.0 of the fix it also carries when the
isolation holds) with its expected status, leaves the host untouched, and leaves no process or
container behind. `test_defences_are_load_bearing` shows two of the JavaScript defences matter:
without them the same attacks earn the full reward.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from minicoder.sandbox.base import Limits, pids_of_uid
from minicoder.sandbox.lang_examples import demo_task
from minicoder.sandbox.lang_hostile import hostile_patches
from minicoder.sandbox.reward import evaluate

BACKENDS = ["local", pytest.param("docker", marks=pytest.mark.docker)]
# Compilers need more room than pytest: 1 GiB, 64 MiB files (test binaries), a 64 MiB /tmp; a generous
# time limit, since a Rust build on a loaded 2-core machine can take a minute (attacks that can only
# end by the time limit get 12 s).
LIMITS = Limits(memory_mb=1024, pids=128, file_size_mb=64, tmp_mb=64, disk_mb=256, timeout_s=180.0)
CASES = [(lang, name) for lang in ("javascript", "go", "rust") for name in sorted(hostile_patches(lang))]


def _ours_in_use() -> int:
    from minicoder.sandbox import docker as D

    D.flush_pools()
    handed = {cid for pool in list(D._pools.values()) for cid in pool.handed_out}
    return len([c for c in D.labelled_containers(role="sandbox") if c.id in handed])


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("language,name", CASES, ids=[f"{a}-{b}" for a, b in CASES])
def test_hostile_patch(language, name, backend, tmp_path: Path, monkeypatch, used_uids):
    canary = tmp_path / "canary.txt"
    canary.write_text("secret")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.chmod(tmp_path, 0o777)
    os.chmod(outside, 0o777)
    monkeypatch.setenv("MINICODER_CANARY", "secret")
    attack = hostile_patches(language, str(canary), "MINICODER_CANARY", str(outside))[name]

    r = evaluate(demo_task(language), attack.patch, backend=backend, limits=LIMITS,
                 timeout_s=12.0 if name == "infinite_loop" else None)

    assert r.reward == attack.expect_reward, (name, r.status, r.message, r.tests, r.exec and r.exec.stderr[-500:])
    assert r.status in attack.expect_status, (name, r.status, r.message)
    if name in ("edit_tests", "config_hijack"):
        assert r.dropped, "the defences undid nothing"
    assert list(outside.iterdir()) == []
    for p in ("/usr/pwned", "/etc/pwned", "/pwned"):
        assert not os.path.exists(p)
    assert [p for u in used_uids if u != os.getuid() for p in pids_of_uid(u)] == []
    if backend == "docker":
        assert _ours_in_use() == 0


def test_defences_are_load_bearing(monkeypatch):
    """Without the frozen assert module and the locked test files, two attacks earn 1.0."""
    import minicoder.sandbox.lang_runners as LR

    task = demo_task("javascript")
    attacks = hostile_patches("javascript")
    defended = {n: evaluate(task, attacks[n].patch, limits=LIMITS).reward for n in ("neuter_assert", "rewrite_tests")}
    monkeypatch.setattr(LR, "JS_FREEZE", "'use strict';\n")
    monkeypatch.setattr(LR, "lock_guarded", lambda ws, lang: 0)
    undefended = {n: evaluate(task, attacks[n].patch, limits=LIMITS).reward for n in ("neuter_assert", "rewrite_tests")}
    assert defended == {"neuter_assert": 0.0, "rewrite_tests": 0.0}
    assert undefended == {"neuter_assert": 1.0, "rewrite_tests": 1.0}
