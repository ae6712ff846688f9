"""Subjects: code plus the tests that judge it, ready to mutate (a HumanEval problem, or a Python
project with its own tests).
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minicoder.gitdiff import diff_snapshots
from minicoder.record import DEFAULT_IMAGE, Environment, Task
from minicoder.tasks.mutate.operators import MutationError


@dataclass
class Subject:
    """Something to mutate: a correct snapshot, its hidden tests, and where bugs may go."""

    name: str  # unique, used in instance ids, e.g. "humaneval__HumanEval_12"
    repo: str  # Task.repo, e.g. "openai/human-eval"
    files: dict[str, str]  # the visible, correct source snapshot
    tests: dict[str, str]  # hidden test files (become the task's test_patch)
    targets: dict[str, tuple[int, int] | None]  # path -> mutable line range (None: whole file)
    source: str = "mutation"  # Task.source
    what: str = ""  # how the statement names the code, e.g. "`has_close_elements` in `solution.py`"
    test_snippets: dict[str, str] = field(default_factory=dict)  # test id -> its assert (for statements)
    test_cmd: str = "python -m pytest"
    python_packages: list[str] = field(default_factory=list)
    timeout_s: float = 60.0
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def test_patch(self) -> str:
        return diff_snapshots({}, self.tests)

    def task(self, instance_id: str, buggy: dict[str, str], fail: list[str], keep: list[str],
             statement: str, metadata: dict[str, Any]) -> Task:
        return Task(
            instance_id=instance_id, repo=self.repo, base_commit="",
            patch=diff_snapshots(buggy, self.files), test_patch=self.test_patch,
            problem_statement=statement, FAIL_TO_PASS=sorted(fail), PASS_TO_PASS=sorted(keep),
            environment=Environment(image=DEFAULT_IMAGE, files=buggy, test_cmd=self.test_cmd,
                                    python_packages=list(self.python_packages), timeout_s=self.timeout_s),
            source=self.source, metadata={"subject": self.name, **self.metadata, **metadata},
        )


HUMANEVAL_TEST_FILE = "test_solution.py"


def humaneval_tests(problem: dict[str, str]) -> tuple[str, dict[str, str]]:
    """A pytest file for one problem and {test id: assert source} of its per-case tests.

    `test_check` runs the problem's whole `check(candidate)`; `test_case_<k>` runs its k-th
    assertion (with the statements before it that set up state), so a bug that breaks some cases
    and not others gives FAIL_TO_PASS and PASS_TO_PASS tests. Assertions that are constant
    (`assert True`) are skipped. Module-level code of the test (imports) is kept.
    """
    test_src = problem["test"]
    entry = problem["entry_point"]
    tree = ast.parse(test_src)
    lines = test_src.splitlines()
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None:
        raise MutationError(f"{problem['task_id']}: test has no check(candidate) function")
    param = check.args.args[0].arg if check.args.args else "candidate"

    def seg(node: ast.AST) -> str:
        return textwrap.dedent("\n".join(lines[node.lineno - 1:node.end_lineno]))

    header = [f'"""Hidden tests for {problem["task_id"]}, generated from its check() function."""',
              "from solution import *  # noqa: F401,F403",
              f"from solution import {entry} as _entry", ""]
    module_level = [seg(n) for n in tree.body if n is not check
                    and not (isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "METADATA" for t in n.targets))]
    out = header + module_level + ["", seg(check), "", "", "def test_check():", "    check(_entry)", ""]
    snippets: dict[str, str] = {}
    setup: list[ast.stmt] = []
    k = 0
    for stmt in check.body:
        has_assert = any(isinstance(n, ast.Assert) for n in ast.walk(stmt))
        if isinstance(stmt, ast.Assert) and isinstance(stmt.test, ast.Constant):
            continue  # `assert True, "..."`: checks nothing
        if not has_assert:
            setup.append(stmt)
            continue
        k += 1
        body = [f"    {param} = _entry"] + [textwrap.indent(seg(s), "    ") for s in (*setup, stmt)]
        out += ["", f"def test_case_{k}():", *body, ""]
        snippets[f"{HUMANEVAL_TEST_FILE}::test_case_{k}"] = seg(stmt)
    text = "\n".join(out) + "\n"
    try:
        ast.parse(text)
    except SyntaxError:  # an unusual check() layout: fall back to the whole check only
        text = "\n".join(header + module_level + ["", seg(check), "", "", "def test_check():",
                                                  "    check(_entry)", ""]) + "\n"
        snippets = {}
    return text, snippets


def humaneval_subject(problem: dict[str, str]) -> Subject:
    """One HumanEval problem as a tiny repository: solution.py (prompt + canonical solution)."""
    prompt, solution = problem["prompt"], problem["canonical_solution"]
    src = prompt + solution
    if not src.endswith("\n"):
        src += "\n"
    first = prompt.count("\n") + 1
    last = src.count("\n")
    test_text, snippets = humaneval_tests(problem)
    tid = problem["task_id"].replace("/", "_")
    return Subject(
        name=f"humaneval__{tid}", repo="openai/human-eval", files={"solution.py": src},
        tests={HUMANEVAL_TEST_FILE: test_text}, targets={"solution.py": (first, last)},
        source="humaneval", what=f"`{problem['entry_point']}` in `solution.py`", test_snippets=snippets,
        timeout_s=10.0, metadata={"humaneval_id": problem["task_id"], "entry_point": problem["entry_point"]},
    )


def repo_subject(root: str | Path, name: str | None = None, is_test: Callable[[str], bool] | None = None,
                 test_cmd: str = "python -m pytest", timeout_s: float = 120.0) -> Subject:
    """A Python project on disk (e.g. an unpacked sdist) with a pytest suite.

    Source files (non-test `.py` files outside docs/, setup.py and conftest.py) may be mutated;
    test files are hidden in the test_patch.
    """
    from minicoder.gitdiff import snapshot_files
    from minicoder.tasks.mine_git import LANGUAGES

    root = Path(root)
    if not root.is_dir():
        raise MutationError(f"{root}: not a directory")
    is_test = is_test or LANGUAGES["python"].is_test
    snap = snapshot_files(root, exclude=(".git", ".tox", ".venv", "build", "dist", ".pytest_cache"))
    snap = {p: t for p, t in snap.items() if ".egg-info" not in p and not p.endswith((".pyc", ".pyo"))}
    tests = {p: t for p, t in snap.items() if p.endswith(".py") and is_test(p)}
    if not tests:
        raise MutationError(f"{root}: no test files found (test_*.py, *_test.py or tests/)")
    files = {p: t for p, t in snap.items() if p not in tests}
    skip = ("setup.py", "conftest.py", "noxfile.py")
    targets: dict[str, tuple[int, int] | None] = {
        p: None for p in files if p.endswith(".py") and not p.startswith(("docs/", "doc/", "examples/"))
        and Path(p).name not in skip}
    if not targets:
        raise MutationError(f"{root}: no Python source files to mutate")
    name = name or root.name
    return Subject(name=name.replace("/", "_"), repo=name, files=files, tests=tests, targets=targets,
                   source="mutation", what="the package", test_cmd=test_cmd, timeout_s=timeout_s,
                   metadata={"package": name})
