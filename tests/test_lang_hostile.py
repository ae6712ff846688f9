"""Hostile patches against the JavaScript, Go and Rust demo tasks (and the mocha, jest and Rust
unit-test variants), on both backends.

Each attack gets its expected reward (0, or the honest 1.0 of the fix it also carries when the
isolation holds) with its expected status, leaves the host untouched, and leaves no process or
container behind. `test_defences_are_load_bearing` shows two of the JavaScript defences matter:
without them the same attacks earn the full reward; `test_the_cfg_test_check_is_load_bearing` does
the same for the Rust unit-test merge's `cfg(test)` check.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from minicoder.sandbox.base import Limits, pids_of_uid
from minicoder.sandbox.lang_examples import demo_task
from minicoder.sandbox.lang_hostile import hostile_patches
from minicoder.sandbox.reward import evaluate

BACKENDS = ["local", pytest.param("docker", marks=pytest.mark.docker)]
# Compilers need more room than pytest: 1 GiB, 64 MiB files (test binaries), a 64 MiB /tmp; a generous
# time limit, since a Rust build on a loaded 2-core machine can take a minute (attacks that can only
# end by the time limit get 6 s: if the build itself takes longer, the status is the same timeout).
LIMITS = Limits(memory_mb=1024, pids=128, file_size_mb=64, tmp_mb=64, disk_mb=256, timeout_s=180.0)
LOOP_TIMEOUT_S = 6.0
# attacks at a time: the docker backend's runs wait on the engine (each `docker exec`) more than on the CPU
WORKERS = {"local": 2, "docker": 3}
# the demo tasks and their variants: mocha, jest, Rust unit tests inside src/lib.rs
LANGUAGES = ("javascript", "go", "rust", "mocha", "jest", "rust_unit")


def _ours_in_use() -> int:
    from minicoder.sandbox import docker as D

    D.flush_pools()
    handed = {cid for pool in list(D._pools.values()) for cid in pool.handed_out}
    return len([c for c in D.labelled_containers(role="sandbox") if c.id in handed])


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("language", LANGUAGES)
def test_hostile_patches(language, backend, tmp_path: Path, monkeypatch, used_uids):
    """Every attack on one language's demo task, two or three at a time (each in a fresh sandbox of its own, as
    in a GRPO group): each gets its expected reward and status; then the host is untouched and
    nothing is left running."""
    canary = tmp_path / "canary.txt"
    canary.write_text("secret")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.chmod(tmp_path, 0o777)
    os.chmod(outside, 0o777)
    monkeypatch.setenv("MINICODER_CANARY", "secret")
    attacks = hostile_patches(language, str(canary), "MINICODER_CANARY", str(outside))
    task = demo_task(language)

    def attack(name: str):
        timeout = LOOP_TIMEOUT_S if name == "infinite_loop" else None
        return name, evaluate(task, attacks[name].patch, backend=backend, limits=LIMITS, timeout_s=timeout)

    order = sorted(attacks, key=lambda n: (n not in ("infinite_loop", "memory"), n))  # the long ones first
    with ThreadPoolExecutor(max_workers=WORKERS[backend]) as pool:
        results = dict(pool.map(attack, order))

    wrong = {}
    for name, r in results.items():
        a = attacks[name]
        if r.reward != a.expect_reward or r.status not in a.expect_status:
            wrong[name] = (r.reward, r.status, r.message[:300], r.tests)
        elif name in ("edit_tests", "config_hijack", "edit_unit_tests", "cfg_test") and not r.dropped:
            wrong[name] = "the defences undid nothing"
    assert not wrong, wrong
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


def test_the_cfg_test_check_is_load_bearing(monkeypatch):
    """Rust code that answers right only in test builds earns 1.0 unless `rust_tests` refuses it."""
    import minicoder.sandbox.rust_tests as RT

    task = demo_task("rust_unit")
    cheat = hostile_patches("rust_unit")["cfg_test"].patch
    assert evaluate(task, cheat, limits=LIMITS).reward == 0.0
    monkeypatch.setattr(RT, "_cfg_test_outside", lambda source, items: 0)
    assert evaluate(task, cheat, limits=LIMITS).reward == 1.0
