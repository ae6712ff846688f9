"""Mining a real git history: a repository with real fix commits, a refactor and a test-only commit.

The repository is built here with `git` (real commits, real diffs); the candidate commits' tests run
in the real local sandbox. Exactly the two fix commits become tasks, with the exact
FAIL_TO_PASS / PASS_TO_PASS lists that running pytest by hand gives.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from minicoder.gitdiff import patch_files
from minicoder.tasks.mine_git import (
    LANGUAGES,
    MiningError,
    classify,
    iter_commits,
    parse_go_log,
    parse_pytest_log,
    split_commit,
)
from minicoder.tasks.mine_pr import classify_commit, mine
from minicoder.tasks.qa import run_qa

ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@x", "GIT_CONFIG_NOSYSTEM": "1"}


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for rel, text in files.items():
        p = repo / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=ENV)
    subprocess.run(["git", "commit", "-q", "-m", message], cwd=repo, check=True, env=ENV)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, env=ENV,
                          capture_output=True, text=True).stdout.strip()


CALC_BUGGY = '''def add(a, b):
    return a + b


def sub(a, b):
    result = b - a
    return result


def mul(a, b):
    out = 0
    for _ in range(b - 1):
        out += a
    return out
'''
CALC_FIXED = CALC_BUGGY.replace("range(b - 1)", "range(b)")
TEST_CALC_1 = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
TEST_CALC_2 = TEST_CALC_1.replace("from calc import add", "from calc import add, mul") + \
    "\n\ndef test_mul():\n    assert mul(3, 4) == 12\n"


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A small project with a real history; returns (repo, {label: sha})."""
    repo = tmp_path_factory.mktemp("proj")
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True, env=ENV)
    shas = {}
    shas["root"] = commit(repo, {"calc.py": CALC_BUGGY, "tests/test_calc.py": TEST_CALC_1, "README.md": "calc\n"},
                          "Initial calculator")
    shas["fix_mul"] = commit(repo, {"calc.py": CALC_FIXED, "tests/test_calc.py": TEST_CALC_2},
                             "Fix mul: loop ran one time too few\n\nmul(3, 4) returned 9.")
    shas["refactor"] = commit(repo, {"calc.py": CALC_FIXED.replace("out = 0", "out = 0  # accumulator")},
                              "Comment the accumulator")
    shas["tests_only"] = commit(repo, {"tests/test_calc.py": TEST_CALC_2 + "\n\ndef test_add_neg():\n"
                                       "    assert add(-1, 1) == 0\n"}, "More tests for add")
    stats_v1 = "def mean(xs):\n    return sum(xs) / len(xs)\n"
    shas["stats"] = commit(repo, {"stats.py": stats_v1, "tests/test_stats.py":
                                  "from stats import mean\n\n\ndef test_mean():\n    assert mean([1, 2, 3]) == 2\n"},
                           "Add mean")  # new code + its tests: the test passes before? no: stats.py is new
    stats_v2 = "def mean(xs):\n    if not xs:\n        return 0.0\n    return sum(xs) / len(xs)\n"
    shas["fix_mean"] = commit(repo, {"stats.py": stats_v2, "tests/test_stats.py":
                                     "from stats import mean\n\n\ndef test_mean():\n    assert mean([1, 2, 3]) == 2\n"
                                     "\n\ndef test_mean_empty():\n    assert mean([]) == 0.0\n"},
                              "mean() of an empty list raised ZeroDivisionError")
    shas["docs_and_test"] = commit(repo, {"stats.py": stats_v2.replace("def mean(xs):", "def mean(xs):\n    "
                                                                       '"""Arithmetic mean (0.0 when empty)."""'),
                                          "tests/test_stats.py": "from stats import mean\n\n\ndef test_mean():\n"
                                          "    assert mean([1, 2, 3]) == 2\n\n\ndef test_mean_empty():\n"
                                          "    assert mean([]) == 0.0\n\n\ndef test_one():\n    assert mean([4]) == 4\n"},
                                   "Document mean and test one element")  # new test passes before: no task
    # a real fix whose message quotes the fixed line: mining keeps it, QA must drop it as a leak
    shas["fix_sub_leaky"] = commit(
        repo, {"calc.py": (repo / "calc.py").read_text().replace("result = b - a", "result = a - b"),
               "tests/test_calc.py": (repo / "tests/test_calc.py").read_text() + "\n\ndef test_sub():\n"
               "    from calc import sub\n\n    assert sub(5, 3) == 2\n"},
        "sub() had its operands swapped\n\nThe line must read `result = a - b`, not `result = b - a`.")
    return repo, shas


def test_classifier_table():
    assert classify("tests/test_calc.py") == ("python", True)
    assert classify("pkg/mod_test.py") == ("python", True)
    assert classify("pkg/conftest.py") == ("python", True)
    assert classify("pkg/mod.py") == ("python", False)
    assert classify("cmd/main_test.go") == ("go", True)
    assert classify("src/app.spec.js") == ("javascript", True)
    assert classify("README.md") == (None, False)
    assert all(LANGUAGES[name].runnable for name in ("python", "javascript", "go", "rust"))


def test_log_parsers_known_answers():
    log = "PASSED tests/test_a.py::test_x\nFAILED tests/test_a.py::test_y - assert 1 == 2\nERROR tests/test_b.py\n"
    assert parse_pytest_log(log) == {"tests/test_a.py::test_x": "passed", "tests/test_a.py::test_y": "failed",
                                     "tests/test_b.py": "error"}
    go = "=== RUN   TestA\n--- PASS: TestA (0.00s)\n=== RUN   TestB\n    --- FAIL: TestB/sub (0.01s)\n"
    assert parse_go_log(go) == {"TestA": "passed", "TestB/sub": "failed"}


def test_static_filter_and_split(history):
    repo, shas = history
    commits = {c.sha: c for c in iter_commits(repo)}
    assert list(commits)[0] == shas["root"] and len(commits) == 8
    reasons = {label: classify_commit(repo, commits[sha])[1] for label, sha in shas.items()}
    assert reasons == {"root": "root commit (no parent to start from)", "fix_mul": "",
                       "refactor": "changes source without tests", "tests_only": "changes tests only",
                       "stats": "", "fix_mean": "", "docs_and_test": "", "fix_sub_leaky": ""}
    cand, _ = classify_commit(repo, commits[shas["fix_mul"]])
    fix, tests = split_commit(repo, cand)
    assert patch_files(fix) == ["calc.py"] and patch_files(tests) == ["tests/test_calc.py"]
    assert "-    for _ in range(b - 1):" in fix and "+    for _ in range(b):" in fix
    assert "+def test_mul():" in tests and "range(b" not in tests


def test_not_a_repository(tmp_path):
    with pytest.raises(MiningError, match="not a git repository"):
        list(iter_commits(tmp_path))


@pytest.mark.slow
def test_mining_yields_exactly_the_fix_commits(history):
    repo, shas = history
    outcomes = {o.candidate_id.rsplit("__", 1)[1]: o for o in mine(repo)}
    short = {label: sha[:12] for label, sha in shas.items()}
    kept = sorted(label for label, sha in short.items() if outcomes[sha].kept)
    assert kept == ["fix_mean", "fix_mul", "fix_sub_leaky", "stats"]
    mul = outcomes[short["fix_mul"]].task
    assert mul.FAIL_TO_PASS == ["tests/test_calc.py::test_mul"]
    assert mul.PASS_TO_PASS == ["tests/test_calc.py::test_add"]
    assert mul.base_commit == shas["root"] and mul.source == "git"
    assert mul.problem_statement.startswith("Fix mul: loop ran one time too few")
    assert "`tests/test_calc.py::test_mul`" in mul.problem_statement
    assert "assert 9 == 12" in mul.problem_statement  # pytest's assertion output, from the failing run
    assert "range(b)" not in mul.problem_statement  # the fix is not in the statement...
    # ...and QA's leak check drops exactly the task whose statement quotes its fixed line
    rep = run_qa([o.task for o in outcomes.values() if o.kept])
    leaks = [(iid.rsplit("__", 1)[1], detail) for iid, reason, detail in rep.rejected if reason == "leak"]
    assert leaks == [(short["fix_sub_leaky"], "statement contains the fix line 'result = a - b'")]
    assert "`result = a - b`" in outcomes[short["fix_sub_leaky"]].task.problem_statement
    mean = outcomes[short["fix_mean"]].task
    assert mean.FAIL_TO_PASS == ["tests/test_stats.py::test_mean_empty"]
    assert mean.PASS_TO_PASS == ["tests/test_stats.py::test_mean"]
    # a brand-new module: its tests cannot even import before the commit
    assert outcomes[short["stats"]].task.FAIL_TO_PASS == ["tests/test_stats.py::test_mean"]
    assert outcomes[short["docs_and_test"]].reason == "no FAIL_TO_PASS test: the tests already pass before the fix"
    assert outcomes[short["refactor"]].stage == "filter"
