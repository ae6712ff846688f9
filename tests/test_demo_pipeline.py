"""The demo's stage runner: cache keys, skipping, --from, --only, resuming an interrupted stage.

Small real stage functions (they write files and count their calls); the real stages are run by
tests/test_demo.py.
"""

from __future__ import annotations

import argparse
import json

import pytest

from minicoder.demo.pipeline import Stage, insert_stage, read_record, run_stages

CALLS: list[str] = []


def s_numbers(ctx):
    CALLS.append("numbers")
    n = ctx.settings["n"]
    (ctx.dir / "numbers.json").write_text(json.dumps(list(range(n))))
    return {"file": ctx.rel(ctx.dir / "numbers.json"), "n": n}


def s_total(ctx):
    CALLS.append("total")
    nums = json.loads(ctx.path(ctx.inputs["numbers"]["file"]).read_text())
    return {"total": sum(nums) * ctx.settings["scale"]}


def s_slow(ctx):
    """Counts to 5, one file per step; raises KeyboardInterrupt once at step 3 when asked to."""
    CALLS.append("slow" + ("-resumed" if ctx.resumed else ""))
    done = sorted(int(p.stem) for p in ctx.dir.glob("[0-9]*.step"))
    start = (done[-1] + 1) if done else 0
    for i in range(start, 5):
        if ctx.options.interrupt_at == i:
            ctx.options.interrupt_at = None
            raise KeyboardInterrupt
        (ctx.dir / f"{i}.step").write_text("")
    return {"steps": sorted(int(p.stem) for p in ctx.dir.glob("[0-9]*.step")), "started_at": start,
            "total_seen": ctx.inputs["total"]["total"]}


def stages(scale: int = 1) -> list[Stage]:
    return [
        Stage("numbers", s_numbers, settings=lambda o: {"n": o.n}),
        Stage("total", s_total, deps=("numbers",), settings={"scale": scale}),
        Stage("slow", s_slow, deps=("total",)),
    ]


def opts(**kw):
    return argparse.Namespace(**{"n": 4, "interrupt_at": None, **kw})


def run(st, out, o, **kw):
    return {r.name: r for r in run_stages(st, out, o, log=lambda s: None, **kw)}


def test_second_run_skips_every_stage_and_reuses_results(tmp_path):
    CALLS.clear()
    first = run(stages(), tmp_path, opts())
    assert CALLS == ["numbers", "total", "slow"]
    assert first["total"].result == {"total": 6} and first["slow"].result["steps"] == [0, 1, 2, 3, 4]
    second = run(stages(), tmp_path, opts())
    assert CALLS == ["numbers", "total", "slow"]  # nothing ran again
    assert all(r.cached for r in second.values())
    assert {n: r.result for n, r in second.items()} == {n: r.result for n, r in first.items()}
    assert {n: r.key for n, r in second.items()} == {n: r.key for n, r in first.items()}


def test_a_changed_setting_reruns_that_stage_and_those_downstream_only(tmp_path):
    CALLS.clear()
    run(stages(), tmp_path, opts())
    CALLS.clear()
    r = run(stages(scale=10), tmp_path, opts())  # total's settings change; numbers is untouched
    assert CALLS == ["total", "slow"]
    assert r["numbers"].cached and not r["total"].cached and r["total"].result == {"total": 60}
    assert r["slow"].result["total_seen"] == 60
    CALLS.clear()
    r = run(stages(scale=10), tmp_path, opts(n=3))  # an option feeding the first stage: everything
    assert CALLS == ["numbers", "total", "slow"] and r["total"].result == {"total": 30}


def test_from_reruns_that_stage_and_every_later_one(tmp_path):
    CALLS.clear()
    run(stages(), tmp_path, opts())
    (tmp_path / "total" / "marker").write_text("old")
    CALLS.clear()
    r = run(stages(), tmp_path, opts(), from_stage="total")
    assert CALLS == ["total", "slow"] and r["numbers"].cached
    assert not (tmp_path / "total" / "marker").exists()  # the stage's folder was wiped
    with pytest.raises(ValueError, match="no stage 'nope'"):
        run(stages(), tmp_path, opts(), from_stage="nope")


def test_interrupted_stage_continues_on_the_next_run(tmp_path):
    CALLS.clear()
    with pytest.raises(KeyboardInterrupt):
        run(stages(), tmp_path, opts(interrupt_at=3))
    rec = read_record(tmp_path, "slow")
    assert rec.status == "running"  # not recorded as done
    assert sorted(p.name for p in (tmp_path / "slow").glob("*.step")) == ["0.step", "1.step", "2.step"]
    CALLS.clear()
    r = run(stages(), tmp_path, opts())
    assert CALLS == ["slow-resumed"]  # earlier stages cached; the stage saw its partial work
    assert r["slow"].result["started_at"] == 3 and r["slow"].result["steps"] == [0, 1, 2, 3, 4]
    assert read_record(tmp_path, "slow").status == "done"


def test_interrupted_stage_with_changed_settings_starts_over(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run(stages(), tmp_path, opts(interrupt_at=2))
    CALLS.clear()
    r = run(stages(scale=2), tmp_path, opts())  # a different key: the partial work is not reused
    assert CALLS == ["total", "slow"] and r["slow"].result["started_at"] == 0


def test_only_runs_one_stage_and_needs_its_inputs(tmp_path):
    with pytest.raises(RuntimeError, match="needs stage 'numbers'"):
        run(stages(), tmp_path, opts(), only="total")
    run(stages(), tmp_path, opts())
    CALLS.clear()
    r = run(stages(), tmp_path, opts(), only="slow")
    assert CALLS == [] and list(r) == ["slow"] and r["slow"].cached


def test_stage_order_is_checked_and_insert_places_a_stage(tmp_path):
    bad = [Stage("total", s_total, deps=("numbers",)), Stage("numbers", s_numbers, settings={"n": 1})]
    with pytest.raises(ValueError, match="not an earlier stage"):
        run(bad, tmp_path, opts())
    extra = Stage("double", lambda ctx: {"x": 2 * ctx.inputs["total"]["total"]}, deps=("total",))
    st = insert_stage(stages(), extra, after="total")
    assert [s.name for s in st] == ["numbers", "total", "double", "slow"]
    r = run(st, tmp_path, opts())
    assert r["double"].result == {"x": 12}
    with pytest.raises(ValueError, match="no stage 'rl'"):
        insert_stage(stages(), extra, after="rl")


def test_demo_stage_list_is_well_formed_and_names_resolve():
    from minicoder.demo import stages as demo_stages
    from minicoder.demo.pipeline import check_stages

    check_stages(demo_stages.STAGES)
    names = [s.name for s in demo_stages.STAGES]
    assert names == ["corpus", "tokenizer", "pack", "model", "pretrain", "tasks", "midtrain", "rl", "rewards", "eval"]
    by_name = {s.name: s for s in demo_stages.STAGES}
    assert by_name["eval"].deps == ("rl",)
    for name in ("rl", "eval"):  # given by "module:function" (the demo imports nothing from rl): they resolve
        assert callable(by_name[name].resolve())
