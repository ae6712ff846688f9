"""Mining pull requests from a history made here: merge commits, squash merges and direct commits.

The repository is built with `git` the way GitHub leaves a project's main branch: pull requests
merged with `--no-ff` merge commits (GitHub's "Merge pull request #N from user/branch" message with
the PR title as its body), one squash-merged PR ("... (#N)"), direct commits, and changes that are
not tasks (docs, CI, packaging, tests only, source without tests). While a PR branch is open, main
moves on, so a merge's diff against its first parent differs from its branch's diff against the
merge base. The kept candidates' tests run in the real local sandbox, in environments built from
the repository's pyproject.toml (`envbuild`). Exactly the three fix PRs/commits become tasks, with
the FAIL_TO_PASS / PASS_TO_PASS lists that running pytest by hand gives; `--later-tests` adds the
fourth, marked as such.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

from minicoder.tasks.mine_git import iter_commits, problem_statement, split_commit
from minicoder.tasks.mine_pr import branch_commits, classify_commit, commit_kind, file_kind

ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@x", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, env=ENV, capture_output=True, text=True).stdout.strip()


def commit(repo: Path, files: dict[str, str], message: str) -> str:
    for rel, text in files.items():
        p = repo / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def merge(repo: Path, branch: str, message: str) -> str:
    git(repo, "checkout", "-q", "main")
    git(repo, "merge", "-q", "--no-ff", branch, "-m", message)
    return git(repo, "rev-parse", "HEAD")


OPS = '''def add(a, b):
    return a + b


def mul(a, b):
    out = 0
    for _ in range(b - 1):
        out += a
    return out


def clamp(x, lo, hi):
    return max(lo, min(x, hi))


def mean(xs):
    return sum(xs) / len(xs)
'''
TESTS = "from calc.ops import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"
PYPROJECT = '[project]\nname = "calc"\nversion = "0.1.0"\n\n[tool.pytest.ini_options]\ntestpaths = ["tests"]\n'


@pytest.fixture(scope="module")
def history(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A project with GitHub-style history; returns (repo, {label: first-parent sha})."""
    repo = tmp_path_factory.mktemp("gh") / "calc"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    sha = {}
    sha["root"] = commit(repo, {"src/calc/__init__.py": "", "src/calc/ops.py": OPS, "tests/test_ops.py": TESTS,
                                "pyproject.toml": PYPROJECT, "README.md": "calc\n"}, "Initial calculator")
    # PR #1: two branch commits (the fix, then its test); main moves on meanwhile (docs)
    git(repo, "checkout", "-q", "-b", "fix-mul")
    commit(repo, {"src/calc/ops.py": OPS.replace("range(b - 1)", "range(b)")}, "Loop b times in mul\n\nIt ran once too few.")
    commit(repo, {"tests/test_ops.py": TESTS.replace("import add", "import add, mul")
                  + "\n\ndef test_mul():\n    assert mul(3, 4) == 12\n"}, "Test mul")
    git(repo, "checkout", "-q", "main")
    sha["docs"] = commit(repo, {"README.md": "calc: small arithmetic\n"}, "Describe the project")
    sha["pr1"] = merge(repo, "fix-mul", "Merge pull request #1 from alice/fix-mul\n\nmul() returns wrong products")
    # PR #2: docs only, merged
    git(repo, "checkout", "-q", "-b", "docs")
    commit(repo, {"docs/index.md": "# calc\n"}, "Add docs")
    sha["pr2_docs"] = merge(repo, "docs", "Merge pull request #2 from bob/docs\n\nDocs")
    # PR #3: tests only, merged
    git(repo, "checkout", "-q", "-b", "more-tests")
    cur = (repo / "tests/test_ops.py").read_text()
    commit(repo, {"tests/test_ops.py": cur + "\n\ndef test_add_zero():\n    assert add(0, 0) == 0\n"}, "More tests")
    sha["pr3_tests"] = merge(repo, "more-tests", "Merge pull request #3 from bob/more-tests\n\nMore tests")
    # a squash-merged PR: fix + test in one commit whose subject ends in (#4)
    ops = (repo / "src/calc/ops.py").read_text()
    sha["squash"] = commit(repo, {"src/calc/ops.py": ops.replace("    return sum(xs) / len(xs)",
                                                                   "    if not xs:\n        return 0.0\n"
                                                                   "    return sum(xs) / len(xs)"),
                                  "tests/test_mean.py": "from calc.ops import mean\n\n\ndef test_mean():\n"
                                  "    assert mean([1, 2]) == 1.5\n\n\ndef test_mean_empty():\n"
                                  "    assert mean([]) == 0.0\n"},
                           "Return 0.0 for the mean of nothing (#4)\n\n* mean([]) raised ZeroDivisionError")
    sha["ci"] = commit(repo, {".github/workflows/ci.yml": "on: push\njobs: {}\n"}, "CI")
    sha["packaging"] = commit(repo, {"pyproject.toml": PYPROJECT.replace('"0.1.0"', '"0.2.0"')}, "Release 0.2.0")
    # a direct commit that fixes add() for strings and tests it
    ops = (repo / "src/calc/ops.py").read_text()
    cur = (repo / "tests/test_ops.py").read_text()
    sha["direct"] = commit(repo, {"src/calc/ops.py": ops.replace("    return a + b", "    if isinstance(a, str):\n"
                                                                  "        return a + str(b)\n    return a + b"),
                                  "tests/test_ops.py": cur + "\n\ndef test_add_str():\n    assert add('a', 1) == 'a1'\n"},
                           "add() joins a string and a number")
    # a fix without tests; a later commit adds the test that exercises it
    ops = (repo / "src/calc/ops.py").read_text()
    sha["no_tests"] = commit(repo, {"src/calc/ops.py": ops.replace("    return max(lo, min(x, hi))",
                                                                    "    lo, hi = min(lo, hi), max(lo, hi)\n"
                                                                    "    return max(lo, min(x, hi))")},
                             "clamp() accepts its bounds in either order")
    cur = (repo / "tests/test_ops.py").read_text()
    sha["later_test"] = commit(repo, {"tests/test_ops.py": cur.replace("import add, mul", "import add, clamp, mul")
                                      + "\n\ndef test_clamp_reversed():\n    assert clamp(0, 3, 1) == 1\n"},
                               "Test clamp with reversed bounds")
    return repo, sha


def test_kinds_and_file_kinds():
    assert file_kind("src/calc/ops.py") == ("source", "python")
    assert file_kind("tests/test_ops.py") == ("test", "python")
    assert file_kind("setup.py") == ("packaging", None) and file_kind("requirements/tests.txt") == ("packaging", None)
    assert file_kind("noxfile.py") == ("ci", None) and file_kind(".github/workflows/ci.yml") == ("ci", None)
    assert file_kind("docs/conf.py") == ("docs", None) and file_kind("CHANGES.rst") == ("docs", None)
    assert file_kind("pkg/history.py") == ("source", "python")  # a module named like a docs file is code
    assert file_kind("more_itertools/more.pyi") == ("stubs", None)


def test_which_tests_a_candidate_runs_is_decided_statically():
    """Only test modules run; a change whose tests are helpers or typing checks is dropped before any
    environment is built for it (click's `tests/typing/typing_*.py` are such files)."""
    from minicoder.tasks.mine_git import Candidate, Commit, candidate_test_ids

    def cand(tests, deleted=()):
        return Candidate(Commit("c" * 40, ["b" * 40], "", "s", ""), "python", ["src/p.py"], tests,
                         deleted=list(deleted))

    assert candidate_test_ids(cand(["tests/conftest.py", "tests/test_p.py", "tests/data.py"])) == (["tests/test_p.py"], "")
    ids, why = candidate_test_ids(cand(["tests/typing/typing_options.py", "tests/conftest.py"]))
    assert ids is None and why.startswith("the change's test files are not test modules")
    assert candidate_test_ids(cand(["tests/test_p.py"], deleted=["tests/test_p.py"]))[0] is None
    assert candidate_test_ids(cand(["tests/conftest.py"]), "all") == ([], "")  # the whole suite runs


def test_static_classification(history):
    repo, sha = history
    commits = {c.sha: c for c in iter_commits(repo)}
    assert set(commits) == set(sha.values())  # the first-parent chain: branch commits are not on it
    got = {label: (commit_kind(commits[s]), classify_commit(repo, commits[s])[1]) for label, s in sha.items()}
    assert got == {
        "root": (("commit", None), "root commit (no parent to start from)"),
        "docs": (("commit", None), "changes docs only"),
        "pr1": (("merge_pr", 1), ""),
        "pr2_docs": (("merge_pr", 2), "changes docs only"),
        "pr3_tests": (("merge_pr", 3), "changes tests only"),
        "squash": (("squash_pr", 4), ""),
        "ci": (("commit", None), "changes CI only"),
        "packaging": (("commit", None), "changes packaging only"),
        "direct": (("commit", None), ""),
        "no_tests": (("commit", None), "changes source without tests"),
        "later_test": (("commit", None), "changes tests only"),
    }
    pr1, _ = classify_commit(repo, commits[sha["pr1"]])
    assert pr1.kind == "merge_pr" and pr1.pr == 1 and pr1.base == commits[sha["pr1"]].parents[0] == sha["docs"]
    assert [c.subject for c in pr1.messages] == ["Loop b times in mul", "Test mul"]
    fix, tests = split_commit(repo, pr1)
    # the PR's change against the first parent: the main-side README edit is not in it
    assert "range(b)" in fix and "README" not in fix and "+def test_mul" in tests and "range(" not in tests
    assert [c.subject for c in branch_commits(repo, commits[sha["pr1"]])] == ["Loop b times in mul", "Test mul"]
    # later tests: the test-less fix takes the next commit's test file
    chain = list(iter_commits(repo))
    at = [c.sha for c in chain].index(sha["no_tests"])
    cand, why = classify_commit(repo, chain[at], later=chain[at + 1:])
    assert why == "" and cand.tests_rev == sha["later_test"] and cand.test_files == ["tests/test_ops.py"]


def test_statement_from_messages_and_failures_never_the_diff(history):
    repo, sha = history
    pr1, _ = classify_commit(repo, next(c for c in iter_commits(repo) if c.sha == sha["pr1"]))
    text = problem_statement(pr1, ["tests/test_ops.py::test_mul"], "E   assert 9 == 12\n")
    assert text.startswith("mul() returns wrong products\n")  # the PR title, not "Merge pull request ..."
    assert "Merge pull request" not in text
    assert "- Loop b times in mul\n  It ran once too few." in text and "- Test mul" in text
    assert "`tests/test_ops.py::test_mul`" in text and "assert 9 == 12" in text
    assert "range(b)" not in text


@pytest.mark.slow
def test_mining_yields_exactly_the_fix_prs(history, tmp_path):
    from minicoder.record import read_tasks
    from minicoder.tasks.pipeline_git import synth_git

    repo, sha = history
    out = tmp_path / "tasks.jsonl"
    s = synth_git(repo, out, validate=False, workers=2, progress=False)
    tasks = {t.metadata["commit"]: t for t in read_tasks(out)}
    assert set(tasks) == {sha["pr1"], sha["squash"], sha["direct"]}
    pr1, sq, direct = tasks[sha["pr1"]], tasks[sha["squash"]], tasks[sha["direct"]]
    assert (pr1.FAIL_TO_PASS, pr1.PASS_TO_PASS) == (["tests/test_ops.py::test_mul"], ["tests/test_ops.py::test_add"])
    assert (sq.FAIL_TO_PASS, sq.PASS_TO_PASS) == (["tests/test_mean.py::test_mean_empty"],
                                                  ["tests/test_mean.py::test_mean"])
    assert direct.FAIL_TO_PASS == ["tests/test_ops.py::test_add_str"]
    assert direct.PASS_TO_PASS == ["tests/test_ops.py::test_add", "tests/test_ops.py::test_add_zero",
                                   "tests/test_ops.py::test_mul"]
    assert pr1.base_commit == sha["docs"] and pr1.metadata["kind"] == "merge_pr" and pr1.metadata["pr"] == 1
    assert sq.metadata["kind"] == "squash_pr" and direct.metadata["kind"] == "commit"
    assert "ZeroDivisionError" in sq.problem_statement and "if not xs" not in sq.problem_statement
    # the environment was inferred from pyproject.toml and recorded: src layout, pinned pytest
    env = pr1.environment
    assert "pythonpath=src" in env.test_cmd and any(p.startswith("pytest==") for p in env.python_packages)
    assert pr1.metadata["environment"]["pythonpath"] == ["src"]
    # one environment for all of them: the same dependency set at every base commit
    assert s.environments["built"] == 1 and s.environments["failed"] == 0
    assert s.per_kind["merge_pr"] == {"entries": 3, "candidates": 1, "executed": 1, "validated": 1, "after_qa": 1}
    assert s.per_kind["squash_pr"]["validated"] == 1 and s.per_kind["commit"]["entries"] == 7
    assert s.rejections["filter"] == {"root commit": 1, "changes docs only": 2, "changes tests only": 2,
                                      "changes CI only": 1, "changes packaging only": 1,
                                      "changes source without tests": 1}
    # every candidate's runs are its own: 2 (before/after) + 1 for the environment check on the first
    recs = [json.loads(line) for line in Path(str(out) + ".ledger.jsonl").read_text().splitlines()]
    runs = sorted(r["runs"] for r in recs if r.get("kind") == "candidate" and r["stage"] != "filter")
    assert runs == [2, 2, 3] and s.sandbox_runs == 7

    # the later-tests option: the test-less clamp fix becomes a task too, marked as such
    out2 = tmp_path / "later.jsonl"
    synth_git(repo, out2, max_commits=2, validate=False, workers=1, progress=False, later_tests=True)
    later = {t.metadata["commit"]: t for t in read_tasks(out2)}
    assert set(later) == {sha["no_tests"]}  # the last two entries: the test-less fix and its later test
    clamp = later[sha["no_tests"]]
    assert clamp.FAIL_TO_PASS == ["tests/test_ops.py::test_clamp_reversed"]
    assert clamp.metadata["later_tests"]["from_commit"] == sha["later_test"]
    assert "lo, hi = min(lo, hi)" in clamp.patch and "test_clamp_reversed" in clamp.test_patch


def test_each_thread_counts_only_its_own_runs():
    """Two threads run the sandbox at the same time; each block's count is its own runs (a global
    counter read before and after, as the pipeline once did, would see the other thread's too)."""
    from minicoder.sandbox.examples import demo_task
    from minicoder.tasks.runner import COUNTER, count_runs, run_tests

    task = demo_task()
    start, one_done = threading.Barrier(2), threading.Event()
    got: dict[str, tuple[int, int]] = {}

    def worker(name: str, n: int) -> None:
        with count_runs() as mine:
            before = COUNTER.n
            start.wait()
            for _ in range(n):
                run_tests(task, "", test_ids=["tests/test_ops.py::test_add"])
            if name == "one":
                one_done.set()
            else:
                one_done.wait(timeout=300)  # "two"'s block surely spans "one"'s run
            got[name] = (mine.n, COUNTER.n - before)

    threads = [threading.Thread(target=worker, args=(name, n)) for name, n in (("one", 1), ("two", 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got["one"][0] == 1 and got["two"][0] == 2
    assert got["two"][1] == 3  # the global difference over the longer block includes the other thread's run


def test_shipped_real_tasks_are_well_formed():
    """The tasks shipped from real projects: readable records naming a public repository, a
    permissive licence, a PR kind, pinned packages, and nothing QA would drop."""
    from minicoder.record import read_tasks
    from minicoder.tasks.mine_pr import KINDS
    from minicoder.tasks.qa import run_qa

    files = sorted((Path(__file__).resolve().parents[1] / "data" / "tasks" / "real").glob("*.jsonl"))
    assert len(files) >= 3
    for f in files:
        tasks = read_tasks(f)
        assert tasks, f.name
        for t in tasks:
            assert t.environment.repo_path == f"https://github.com/{t.repo}.git" and len(t.base_commit) == 40
            assert t.metadata["licence"] in ("MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "PSF")
            assert t.metadata["kind"] in KINDS and t.metadata["validation"]["checks"]["gold"] == "pass"
            assert any(p.startswith("pytest==") for p in t.environment.python_packages)
        assert [t.instance_id for t in run_qa(tasks).kept] == [t.instance_id for t in tasks]
