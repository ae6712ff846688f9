"""AST mutation: each operator's exact edit, invariants over all of HumanEval, and real validated tasks.

Operator tests compare against hand-written expected sources (known answers). The HumanEval sweep
checks invariants on every mutation of every canonical solution (parses, differs, leaves the prompt
alone). The end-to-end tests build tasks in the real local sandbox and check them with the
sandbox's own `evaluate` as the independent oracle: gold patch -> reward 1.0, no patch -> 0.0.
"""

from __future__ import annotations

import ast

import pytest

from minicoder.data.corpus import humaneval_problems
from minicoder.gitdiff import apply_to_snapshot
from minicoder.tasks.mutate import (
    OPERATORS,
    MutationError,
    apply_mutations,
    candidates,
    find_mutations,
    humaneval_subject,
    humaneval_tests,
    sample_mutations,
)

SRC = '''def f(xs, n):
    """Doc."""
    total = 0  # keep me
    for i in range(1, n):
        if xs[i] < n and i != 3:
            total += xs[i] * 2
    return max(total, n)
'''


def mutated(op: str) -> set[str]:
    return {m.apply(SRC) for m in find_mutations(SRC, "m.py", operators=(op,))}


def test_each_operator_gives_the_expected_edits():
    assert SRC.replace("xs[i] < n", "xs[i] <= n") in mutated("flip_compare")
    assert SRC.replace("i != 3", "i == 3") in mutated("flip_compare")
    assert SRC.replace("range(1, n)", "range(1, n + 1)") in mutated("off_by_one")
    assert SRC.replace("range(1, n)", "range(2, n)") in mutated("off_by_one")
    assert SRC.replace("if xs[i] < n", "if xs[i + 1] < n") in mutated("off_by_one")
    assert mutated("swap_args") == {SRC.replace("range(1, n)", "range(n, 1)"),
                                    SRC.replace("max(total, n)", "max(n, total)")}
    assert SRC.replace("    total = 0  # keep me\n", "") in mutated("drop_statement")
    assert SRC.replace("total = 0  # keep me", "total = 1  # keep me") in mutated("change_constant")
    assert SRC.replace("if xs[i] < n and i != 3:", "if not (xs[i] < n and i != 3):") in mutated("invert_condition")
    assert SRC.replace("total += xs[i] * 2", "total -= xs[i] * 2") in mutated("wrong_operator")
    assert SRC.replace("xs[i] * 2", "xs[i] + 2") in mutated("wrong_operator")
    assert SRC.replace("xs[i] < n and i != 3", "xs[i] < n or i != 3") in mutated("wrong_operator")
    # the docstring is never touched, comments elsewhere survive every edit
    for m in find_mutations(SRC, "m.py"):
        new = m.apply(SRC)
        assert '"""Doc."""' in new and "# keep me" in new or m.operator == "drop_statement"


def test_precedence_is_preserved_with_parentheses():
    src = "def g(a, b, c):\n    return a * (b - c)\n"
    flips = {m.apply(src) for m in find_mutations(src, "g.py", operators=("wrong_operator",))}
    assert "def g(a, b, c):\n    return a * (b + c)\n" in flips  # not `a * b + c`
    for new in flips:
        ast.parse(new)


def test_humaneval_sweep_invariants():
    total = 0
    for p in humaneval_problems():
        s = humaneval_subject(p)
        src = s.files["solution.py"]
        first, _ = s.targets["solution.py"]
        prompt_part = "".join(src.splitlines(keepends=True)[: first - 1])
        ms = find_mutations(src, "solution.py", s.targets["solution.py"])
        seen = set()
        for m in ms:
            new = m.apply(src)
            assert new != src and new not in seen
            seen.add(new)
            assert ast.dump(ast.parse(new)) != ast.dump(ast.parse(src))
            assert new.startswith(prompt_part), (p["task_id"], m)
        total += len(ms)
    assert total > 2000  # thousands of candidate bugs from 164 problems


def test_sampling_is_deterministic_and_balanced():
    s = humaneval_subject(humaneval_problems()[10])
    a, b = candidates(s, 5, seed=0), candidates(s, 5, seed=0)
    assert [c[0] for c in a] == [c[0] for c in b]
    assert [c[0] for c in candidates(s, 5, seed=1)] != [c[0] for c in a]
    ops = [c[1][0].operator for c in a]
    assert len(set(ops)) == len(ops)  # round-robin over operators first
    ms = find_mutations(s.files["solution.py"], "solution.py", s.targets["solution.py"])
    assert [m.site for m in sample_mutations(ms, 3, "x")] == [m.site for m in sample_mutations(ms, 3, "x")]


def test_overlapping_mutations_cannot_be_combined():
    ms = find_mutations(SRC, "m.py", operators=("flip_compare",))
    same_line = [m for m in ms if m.line == 5][:2]
    with pytest.raises(MutationError, match="overlap"):
        apply_mutations(SRC, same_line)
    with pytest.raises(MutationError, match="unknown mutation operator"):
        find_mutations(SRC, "m.py", operators=("nope",))
    with pytest.raises(MutationError, match="does not parse"):
        find_mutations("def (", "bad.py")


def test_humaneval_tests_split_check_into_cases():
    p = humaneval_problems()[0]
    text, snippets = humaneval_tests(p)
    tree = ast.parse(text)
    names = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    n_asserts = sum(isinstance(s, ast.Assert) for s in next(
        n for n in ast.parse(p["test"]).body if isinstance(n, ast.FunctionDef)).body)
    assert names == ["check", "test_check"] + [f"test_case_{k}" for k in range(1, n_asserts + 1)]
    assert snippets["test_solution.py::test_case_1"].startswith("assert candidate(")


def test_gold_patch_restores_the_original():
    s = humaneval_subject(humaneval_problems()[3])
    for _cid, ms in candidates(s, 4, seed=0):
        buggy = {"solution.py": apply_mutations(s.files["solution.py"], ms)}
        task = s.task("x", buggy, ["t"], [], "statement", {})
        assert apply_to_snapshot(buggy, task.patch) == s.files
        assert task.environment.files == buggy and "test_solution.py" not in buggy


@pytest.mark.slow
def test_humaneval_mutation_tasks_validate_in_the_sandbox(tmp_path):
    from minicoder.record import read_tasks
    from minicoder.sandbox.reward import evaluate
    from minicoder.tasks.pipeline import synth_mutate

    subject = humaneval_subject(humaneval_problems()[4])  # two sampled bugs on different lines: combinable
    s = synth_mutate([subject], tmp_path / "t.jsonl", per_subject=2, combine=1, seed=0, validate=True,
                     backend="local", workers=2, progress=False)
    tasks = read_tasks(tmp_path / "t.jsonl")
    assert s.funnel["candidates"] == 3 and len(tasks) == s.funnel["after qa"] >= 2
    assert any(t.metadata["n_bugs"] == 2 for t in tasks)  # a combined, harder task
    for t in tasks:
        assert t.source == "humaneval" and set(t.metadata["operators"]) <= set(OPERATORS)
        assert t.FAIL_TO_PASS and "test_solution.py::test_check" in t.FAIL_TO_PASS
        assert evaluate(t, t.patch).reward == 1.0
        assert evaluate(t, "").reward == 0.0


@pytest.mark.docker
def test_humaneval_tasks_in_docker(docker_client, tmp_path):
    from minicoder.sandbox.reward import evaluate
    from minicoder.tasks.mutate import baseline, build_candidate

    subject = humaneval_subject(humaneval_problems()[2])
    passing = baseline(subject, backend="docker")
    assert "test_solution.py::test_check" in passing
    kept = 0
    for cid, ms in candidates(subject, 3, seed=0):
        oc = build_candidate(subject, cid, ms, passing, backend="docker")
        if oc.kept:
            kept += 1
            assert evaluate(oc.task, oc.task.patch, backend="docker").reward == 1.0
            assert evaluate(oc.task, "", backend="docker").reward == 0.0
    assert kept >= 1


@pytest.mark.slow
def test_python_project_subject(tmp_path):
    from minicoder.tasks.mutate import baseline, build_candidate, repo_subject

    (tmp_path / "pkg").mkdir()
    (tmp_path / "tests").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "stats.py").write_text(
        "def clamp(x, lo, hi):\n    if x < lo:\n        return lo\n    if x > hi:\n        return hi\n    return x\n")
    (tmp_path / "setup.py").write_text("from setuptools import setup\nsetup(name='pkg', version='0.1')\n")
    (tmp_path / "tests" / "test_stats.py").write_text(
        "from pkg.stats import clamp\n\n\ndef test_low():\n    assert clamp(-5, 0, 10) == 0\n\n\n"
        "def test_high():\n    assert clamp(50, 0, 10) == 10\n\n\ndef test_inside():\n    assert clamp(5, 0, 10) == 5\n")
    subject = repo_subject(tmp_path, name="demo/pkg")
    assert list(subject.targets) == ["pkg/__init__.py", "pkg/stats.py"] and list(subject.tests) == ["tests/test_stats.py"]
    passing = baseline(subject)
    assert passing == {f"tests/test_stats.py::test_{n}" for n in ("low", "high", "inside")}
    flips = [(cid, ms) for cid, ms in candidates(subject, 40, seed=0) if ms[0].description == "`<` -> `<=`"]
    assert len(flips) == 1  # `x < lo` -> `x <= lo` only matters at x == lo: no test notices it
    oc = build_candidate(subject, *flips[0], passing)
    assert not oc.kept and oc.reason == "mutant survives: no passing test fails"
    drop = next((cid, ms) for cid, ms in candidates(subject, 40, seed=0)
                if ms[0].operator == "drop_statement" and ms[0].line == 4)  # `if x > hi: return hi` dropped
    oc = build_candidate(subject, *drop, passing)
    assert oc.kept and oc.task.FAIL_TO_PASS == ["tests/test_stats.py::test_high"]
    assert sorted(oc.task.PASS_TO_PASS) == ["tests/test_stats.py::test_inside", "tests/test_stats.py::test_low"]
    assert "tests/test_stats.py" not in oc.task.environment.files and "+def test_high" in oc.task.test_patch
