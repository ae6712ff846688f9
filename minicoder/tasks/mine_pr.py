"""Which entries of a repository's history are candidate tasks: pull requests and commits.

On GitHub-style history most changes arrive as pull requests, and the first-parent chain of the
main branch shows each one in one of three shapes (`KINDS`):

  - `merge_pr`: a merge commit. Its diff against the first parent *is* the pull request's change
    (conflict resolutions included); the base is the first parent; the commits on the second
    parent's side (`git log first..second`) are the PR's branch and carry its messages. GitHub's
    merge message is "Merge pull request #N from user/branch" with the PR title as its body.
  - `squash_pr`: one commit whose subject ends in "(#N)" (GitHub's squash and rebase merges).
  - `commit`: any other commit, pushed directly.

Every first-parent entry is classified by the files it changes: tests (per language, see
`mine_git.LANGUAGES`), source, docs, CI, packaging, type stubs (`.pyi`), other. A candidate changes
source and tests of one runnable language; the rest is dropped with a reason that names what it
changed (`changes tests only`, `changes docs only`, `changes CI only`, `changes packaging only`,
`changes type stubs only`, `changes source without tests`, ...). Docs and packaging files that come
with a source change go with the fix; `setup.py`, `noxfile.py` and `docs/conf.py` are packaging /
CI / docs, not source.

Later tests (off by default; SWE-smith / SWE-rebench style): for a change that carries no tests,
the test files of a later first-parent commit (within `later_window` entries) that touch a test
file naming one of the changed modules are used instead. Running decides whether they exercise the
change (they must fail without it and pass with it); the task's metadata says so (`later_tests`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from minicoder.tasks.mine_git import (
    LANGUAGES,
    Candidate,
    Commit,
    MinedOutcome,
    _git,
    classify,
    execute_candidate,
    instance_id,
    iter_commits,
)

KINDS = ("merge_pr", "squash_pr", "commit")
_SQUASH = re.compile(r"\(#(\d+)\)\s*$")
_MERGE_PR = re.compile(r"^Merge pull request #(\d+)\b")

DOCS_DIRS = ("docs", "doc", "changelog.d", "changes", "news", "newsfragments")
DOCS_SUFFIXES = (".md", ".rst", ".txt", ".adoc", ".png", ".svg", ".jpg", ".gif", ".ipynb")
DOCS_STEMS = ("readme", "changes", "changelog", "history", "authors", "contributors", "license", "licence",
              "notice", "todo", "contributing", "code_of_conduct", "security", "citation")
CI_DIRS = (".github", ".circleci", ".gitlab", ".azure-pipelines", "ci", ".ci")
CI_NAMES = (".travis.yml", ".gitlab-ci.yml", "appveyor.yml", ".appveyor.yml", "azure-pipelines.yml",
            ".pre-commit-config.yaml", ".pre-commit-hooks.yaml", "tox.ini", "noxfile.py", ".readthedocs.yaml",
            ".readthedocs.yml", "codecov.yml", ".codecov.yml", ".coveragerc", ".flake8", ".pylintrc",
            "mypy.ini", ".mypy.ini", "ruff.toml", ".ruff.toml", "Makefile", "codspeed.yml")
PACKAGING_NAMES = ("pyproject.toml", "setup.py", "setup.cfg", "MANIFEST.in", "Pipfile", "Pipfile.lock",
                   "poetry.lock", "uv.lock", "environment.yml", ".bumpversion.cfg", "py.typed", "pdm.lock")


def commit_kind(c: Commit) -> tuple[str, int | None]:
    """(kind, PR number or None) of a first-parent history entry."""
    if len(c.parents) > 1:
        m = _MERGE_PR.match(c.subject)
        return "merge_pr", int(m.group(1)) if m else None
    m = _SQUASH.search(c.subject)
    if m:
        return "squash_pr", int(m.group(1))
    return "commit", None


def branch_commits(repo: str | os.PathLike, merge: Commit) -> list[Commit]:
    """The commits a merge brought in (second parent's side, merges excluded), oldest first."""
    if len(merge.parents) < 2:
        return []
    sep, end = "\x1f", "\x1e"
    out = _git(Path(repo), "log", "--no-merges", "--reverse", f"--format=%H{sep}%P{sep}%aI{sep}%s{sep}%b{end}",
               f"{merge.parents[0]}..{merge.parents[1]}")
    commits = []
    for rec in out.split(end):
        rec = rec.strip("\n")
        if rec:
            sha, parents, date, subject, body = rec.split(sep, 4)
            commits.append(Commit(sha, parents.split(), date, subject, body.strip()))
    return commits


def file_kind(path: str) -> tuple[str, str | None]:
    """(kind, language) of a changed file: test | source | docs | ci | packaging | stubs (.pyi) | other."""
    p = PurePosixPath(path)
    name, top = p.name, p.parts[0] if p.parts else ""
    if top in CI_DIRS or name in CI_NAMES or (name.startswith("noxfile") and name.endswith(".py")):
        return "ci", None
    if name in PACKAGING_NAMES or re.match(r"^(.*[-_])?requirements([-_.].*)?\.(txt|in)$", name) \
            or top == "requirements":
        return "packaging", None
    if top in DOCS_DIRS and len(p.parts) > 1:
        return "docs", None
    if p.suffix == ".pyi":
        return "stubs", None
    lang, is_test = classify(path)
    if lang is not None:
        return ("test" if is_test else "source"), lang
    if p.suffix.lower() in DOCS_SUFFIXES or name.lower().split(".")[0] in DOCS_STEMS:
        return "docs", None
    return "other", None


def _drop_reason(kinds: set[str], has_src: bool, has_tests: bool) -> str:
    if has_tests and not has_src:
        return "changes tests only"
    if has_src:
        return "changes source without tests"
    named = sorted(k for k in kinds if k in ("docs", "ci", "packaging", "stubs"))
    label = {"docs": "docs", "ci": "CI", "packaging": "packaging", "stubs": "type stubs"}
    if not named:
        return "no source or test files of a known language"
    if len(named) == 1:
        return f"changes {label[named[0]]} only"
    return "changes only docs, CI, packaging or type stubs"


def _changes(repo: Path, base: str, sha: str) -> list[tuple[str, str]]:
    return [tuple(ln.split("\t", 1)) for ln in  # type: ignore[misc]
            _git(repo, "diff", "--name-status", "--no-renames", base, sha).splitlines() if ln]


def classify_commit(repo: str | os.PathLike, commit: Commit, *, later: list[Commit] | None = None,
                    later_window: int = 20) -> tuple[Candidate | None, str]:
    """(candidate, "") for a history entry that changes source and tests together, else (None, reason).

    `later`: the first-parent entries after this one, oldest first; given, a change without tests
    takes the tests of a later entry (see the module docstring), else it is dropped.
    """
    repo = Path(repo)
    if not commit.parents:
        return None, "root commit (no parent to start from)"
    kind, pr = commit_kind(commit)
    status = _changes(repo, commit.parents[0], commit.sha)
    if not status:
        return None, "empty change (nothing differs from the first parent)"
    deleted = sorted(p for st, p in status if st.startswith("D"))
    by_lang: dict[str, tuple[list[str], list[str]]] = {}
    other: list[str] = []
    kinds: set[str] = set()
    for _, path in status:
        k, lang = file_kind(path)
        kinds.add(k)
        if lang is None:
            other.append(path)
            continue
        src, tests = by_lang.setdefault(lang, ([], []))
        (tests if k == "test" else src).append(path)
    both = [lang for lang, (s, t) in by_lang.items() if s and t]
    tests_rev = ""
    if not both:
        has_src = any(s for s, _ in by_lang.values())
        has_tests = any(t for _, t in by_lang.values())
        reason = _drop_reason(kinds, has_src, has_tests)
        if not (has_src and not has_tests and later is not None):
            return None, reason
        lang = next(lg for lg, (s, _) in by_lang.items() if s)
        found = later_test_files(repo, by_lang[lang][0], lang, later, later_window)
        if found is None:
            return None, f"{reason} (and no later commit within {later_window} touches its tests)"
        tests_rev, test_files = found
        by_lang[lang] = (by_lang[lang][0], test_files)
        both = [lang]
    lang = both[0]
    if not LANGUAGES[lang].runnable:
        return None, f"language '{lang}' has no test runner in the sandbox yet"
    src, tests = by_lang[lang]
    rest = [p for other_lang, (s, t) in by_lang.items() if other_lang != lang for p in s + t]
    messages = branch_commits(repo, commit) if kind == "merge_pr" else []
    return Candidate(commit, lang, sorted(src), sorted(tests), sorted(other + rest), deleted, kind=kind, pr=pr,
                     messages=messages, tests_rev=tests_rev), ""


def later_test_files(repo: Path, sources: list[str], language: str, later: list[Commit],
                     window: int) -> tuple[str, list[str]] | None:
    """(commit, its changed test files) of the first later entry whose tests name a changed module."""
    stems = {PurePosixPath(s).stem for s in sources} - {"__init__", "__main__"}
    stems |= {PurePosixPath(s).parent.name for s in sources if PurePosixPath(s).name == "__init__.py"}
    stems.discard("")
    for c in later[:window]:
        if not c.parents:
            continue
        tests = [p for st, p in _changes(repo, c.parents[0], c.sha)
                 if not st.startswith("D") and file_kind(p) == ("test", language)]
        for t in tests:
            text = _git(repo, "show", f"{c.sha}:{t}")
            if any(re.search(rf"\b{re.escape(s)}\b", text) for s in stems):
                return c.sha, sorted(tests)
    return None


def mine(repo: str | os.PathLike, *, rev: str = "HEAD", max_commits: int | None = None, backend: Any = "local",
         test_scope: str = "changed", inline: bool = False, skip: set[str] | None = None,
         later_tests: bool = False, later_window: int = 20, env: Any = None) -> Iterator[MinedOutcome]:
    """Mine `repo`'s first-parent history: one outcome per entry (kept with its task, or a reason).

    `skip`: candidate ids already handled (resuming); they are not yielded again. `env`: a callable
    (repo, candidate) -> environment (see envbuild) or None for the default environment. The
    pipeline (`pipeline.synth_git`) adds the ledger, environments, validation and QA.
    """
    repo = Path(repo).resolve()
    skip = skip or set()
    commits = list(iter_commits(repo, rev, max_commits))
    for i, commit in enumerate(commits):
        cid = instance_id(repo, commit.sha)
        if cid in skip:
            continue
        cand, reason = classify_commit(repo, commit, later=commits[i + 1:] if later_tests else None,
                                       later_window=later_window)
        if cand is None:
            yield MinedOutcome(cid, False, reason, None, "filter")
            continue
        yield execute_candidate(repo, cand, backend=backend, test_scope=test_scope, inline=inline,
                                env=env(repo, cand) if env is not None else None)
