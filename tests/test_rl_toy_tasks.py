"""The toy task family: deterministic, splits that differ in functions and mutation parameters, every
bug kind present, scripted fixes that apply, and tasks the real validator accepts in the sandbox."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from minicoder.gitdiff import apply_to_snapshot as apply_patch
from minicoder.rl.toy_tasks import KINDS, generate
from minicoder.rl.warmstart import SCRIPTS, script_steps


def _ops(task):
    """(gold line, buggy line) of the task's patch."""
    minus = [ln[1:] for ln in task.patch.splitlines() if ln.startswith("-") and not ln.startswith("---")]
    plus = [ln[1:] for ln in task.patch.splitlines() if ln.startswith("+") and not ln.startswith("+++")]
    assert len(minus) == len(plus) == 1  # one injected bug: a one-line fix
    return plus[0], minus[0]


@pytest.fixture(scope="module")
def splits():
    return generate("train", 200, seed=0), generate("heldout", 200, seed=0)


def test_deterministic_and_every_kind_present(splits):
    train, held = splits
    again = generate("train", 200, seed=0)
    assert [t.instance_id for t in train] == [t.instance_id for t in again]
    assert [t.patch for t in train] == [t.patch for t in again]
    assert generate("train", 20, seed=1)[0].patch != train[0].patch
    for ts in (train, held):
        kinds = Counter(t.metadata["kind"] for t in ts)
        assert set(kinds) == set(KINDS) and min(kinds.values()) >= 30


def test_splits_differ_in_functions_and_mutation_parameters(splits):
    train, held = splits
    base = lambda t: t.metadata["function"].rsplit("_", 1)[0]
    assert not {base(t) for t in train} & {base(t) for t in held}  # disjoint function names
    # no held-out bug is a train bug: the buggy lines (the code around the bug is shared vocabulary);
    # an argument swap is a swap in both splits, of the calls to different helpers
    bugs = lambda ts: {(t.metadata["buggy_line"], t.metadata["fixed_line"]) for t in ts if t.metadata["kind"] != "swap_args"}
    assert not bugs(train) & bugs(held)
    helper = lambda ts: {t.environment.files["solution.py"].split("\n")[1] for t in ts if t.metadata["kind"] == "swap_args"}
    assert all("x * " in h for h in helper(train)) and all("x - " in h for h in helper(held))
    # the wrong variable returned: the intermediate or the first argument in train, the second in heldout
    assert {t.metadata["buggy_line"].strip() for t in train if t.metadata["kind"] == "return_var"} == {"return s", "return a"}
    assert {t.metadata["buggy_line"].strip() for t in held if t.metadata["kind"] == "return_var"} == {"return b"}
    # constants are off by one, either way, in train; by two in heldout
    for ts, offsets in ((train, {-1, +1}), (held, {-2, +2})):
        seen = set()
        for t in ts:
            if t.metadata["kind"] == "constant":
                gold, bug = _ops(t)
                g = [int(x) for x in re.findall(r"-?\d+", gold)]
                b = [int(x) for x in re.findall(r"-?\d+", bug)]
                d = [y - x for x, y in zip(g, b) if x != y]
                assert len(d) == 1 and d[0] in offsets
                seen |= set(d)
        assert seen == offsets
    # operator swaps and flipped comparisons are different pairs
    def pairs(ts, kind):
        out = set()
        for t in ts:
            if t.metadata["kind"] == kind:
                gold, bug = _ops(t)
                tg = re.findall(r" ([-+*%]|//|[<>]=?) ", gold)
                tb = re.findall(r" ([-+*%]|//|[<>]=?) ", bug)
                out |= {(a, b) for a, b in zip(tg, tb) if a != b}
        return out
    for kind in ("operator", "compare"):
        assert pairs(train, kind) and pairs(held, kind) and not pairs(train, kind) & pairs(held, kind), kind
    # in train every bug needs the docstring: each operator becomes both others, both comparison
    # directions and both helper argument orders occur in correct code
    assert pairs(train, "operator") == {(a, b) for a in "+-*" for b in "+-*" if a != b}
    gold_lines = {line.strip() for t in train for line in apply_patch(t.environment.files, t.patch)["solution.py"].splitlines()}
    assert {"if a > b:", "if a < b:", "s = _h(a, b)", "s = _h(b, a)"} <= gold_lines


def test_scripted_fixes_apply_and_hidden_tests_stay_hidden(splits):
    train, _ = splits
    for t in train[:25]:
        files = dict(t.environment.files)
        assert "test_hidden.py" not in files and "test_hidden.py" in t.test_patch
        fixed = apply_patch(files, t.patch)
        for script in SCRIPTS:
            src = files[t.metadata["path"]]
            for step in script_steps(t, script):
                c = step["tool_calls"][0]
                if c["name"] == "str_replace":
                    a = c["arguments"]
                    assert src.count(a["old_str"]) == 1
                    src = src.replace(a["old_str"], a["new_str"])
            assert src == fixed[t.metadata["path"]], (t.instance_id, script)


@pytest.mark.slow
@pytest.mark.parametrize("split", ["train", "heldout"])
def test_the_validator_accepts_toy_tasks_in_the_sandbox(splits, split):
    from minicoder.tasks.validate import validate_task

    ts = splits[0] if split == "train" else splits[1]
    task = next(t for t in ts if t.metadata["kind"] == ("swap_args" if split == "train" else "constant"))
    v = validate_task(task, backend="local", repeats=1)
    assert v.ok, v.reason
    assert v.checks["exploits"].startswith("none of")


@pytest.mark.slow
def test_visible_checks_run_in_the_sandbox_and_fail_only_before_the_fix(splits):
    from minicoder.sandbox.base import Limits
    from minicoder.sandbox.reward import open_sandbox

    task = splits[0][2]
    out = {}
    for name, patch in (("buggy", ""), ("fixed", task.patch)):
        with open_sandbox("local", task, Limits(timeout_s=30)) as sb:
            sb.prepare(task)
            assert sb.apply_patch(patch).applied
            sb.finalize_workspace()
            out[name] = sb.run(["python3", "test_visible.py"], timeout_s=30)
    assert out["buggy"].exit_code == 1 and "FAILED" in out["buggy"].stdout
    assert out["fixed"].exit_code == 0 and "3 passed, 0 failed" in out["fixed"].stdout
