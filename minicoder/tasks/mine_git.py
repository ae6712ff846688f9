"""Tasks from real git history: commits that change source and tests together, verified by running.

The SWE-bench recipe, applied to any local repository:
  1. walk the first-parent history; keep non-merge commits that touch both source and test files
     of a language we can run (a refactor with no test change, or a test-only change, is no task);
  2. split the commit's diff: test files -> `test_patch` (the hidden tests), everything else ->
     `patch` (the gold fix); the environment is the repository at the parent commit;
  3. run the tests in the sandbox twice, both times with the test patch: without the fix (before)
     and with it (after). FAIL_TO_PASS = tests that pass after and not before (a test missing from
     a report counts as failed); PASS_TO_PASS = tests that pass both times. A commit with no
     FAIL_TO_PASS test is dropped with its reason;
  4. the problem statement is the commit message plus the failing tests and their assertion output
     (the `E ...` lines of pytest) - never the diff.

By default only the test files the commit touches are run (as SWE-bench does); `test_scope="all"`
runs the whole suite, for complete PASS_TO_PASS lists on small repositories.

Languages are a table (`LANGUAGES`, in `sandbox/languages.py` with the graders that use it): which
files are sources, which are tests, the test command and image. Python, JavaScript (node:test or
tape), Go and Rust are wired end to end; the failure messages of the run before the fix go into the
problem statement for every language.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from minicoder.gitdiff import GitError, git, materialize_repo, run_git, snapshot_files
from minicoder.record import Environment, Task
from minicoder.sandbox.languages import (  # noqa: F401 (re-exported: the table's old home)
    LANGUAGES,
    Language,
    classify,
    parse_go_log,
    parse_pytest_log,
    test_cmd_for,
)
from minicoder.tasks.runner import run_tests


class MiningError(ValueError):
    """The repository cannot be mined (not a git repository, bad revision, ...)."""


# --- git ----------------------------------------------------------------------------------------

def _git(repo: Path, *args: str) -> str:
    try:
        return git(repo, *args).decode("utf-8", errors="replace")
    except GitError as e:
        raise MiningError(str(e)) from None


@dataclass
class Commit:
    sha: str
    parents: list[str]
    date: str
    subject: str
    body: str


@dataclass
class Candidate:
    """A commit that changes source and tests of one language, split into fix and tests."""

    commit: Commit
    language: str
    source_files: list[str]
    test_files: list[str]
    other_files: list[str] = field(default_factory=list)  # docs, config: go with the fix
    deleted: list[str] = field(default_factory=list)  # files the commit deletes


def iter_commits(repo: str | os.PathLike, rev: str = "HEAD", max_commits: int | None = None) -> Iterator[Commit]:
    """Commits reachable from `rev` along first parents, oldest first."""
    repo = Path(repo)
    if not (repo / ".git").exists() and _git_dir(repo) is None:
        raise MiningError(f"{repo}: not a git repository")
    sep, end = "\x1f", "\x1e"
    fmt = f"%H{sep}%P{sep}%aI{sep}%s{sep}%b{end}"
    args = ["log", "--first-parent", "--reverse", f"--format={fmt}", rev]
    out = _git(repo, *args)
    commits = []
    for rec in out.split(end):
        rec = rec.strip("\n")
        if not rec:
            continue
        sha, parents, date, subject, body = rec.split(sep, 4)
        commits.append(Commit(sha, parents.split(), date, subject, body.strip()))
    if max_commits is not None:
        commits = commits[-max_commits:]
    yield from commits


def _git_dir(repo: Path) -> str | None:
    if not repo.is_dir():
        return None
    proc = run_git(repo, "rev-parse", "--git-dir")
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def classify_commit(repo: str | os.PathLike, commit: Commit) -> tuple[Candidate | None, str]:
    """(candidate, "") for a commit that changes source and tests together, else (None, reason)."""
    repo = Path(repo)
    if not commit.parents:
        return None, "root commit (no parent to start from)"
    if len(commit.parents) > 1:
        return None, "merge commit"
    status = [ln.split("\t", 1) for ln in
              _git(repo, "diff", "--name-status", "--no-renames", commit.parents[0], commit.sha).splitlines()]
    names = [p for _, p in status]
    deleted = sorted(p for st, p in status if st.startswith("D"))
    by_lang: dict[str, tuple[list[str], list[str]]] = {}
    other: list[str] = []
    for p in names:
        lang, is_test = classify(p)
        if lang is None:
            other.append(p)
            continue
        src, tests = by_lang.setdefault(lang, ([], []))
        (tests if is_test else src).append(p)
    both = [lang for lang, (s, t) in by_lang.items() if s and t]
    if not both:
        if any(t for _, t in by_lang.values()) and not any(s for s, _ in by_lang.values()):
            return None, "changes tests only"
        if any(s for s, _ in by_lang.values()):
            return None, "changes source without tests"
        return None, "no source or test files of a known language"
    lang = both[0]
    if not LANGUAGES[lang].runnable:
        return None, f"language '{lang}' has no test runner in the sandbox yet"
    src, tests = by_lang[lang]
    rest = [p for other_lang, (s, t) in by_lang.items() if other_lang != lang for p in s + t]
    return Candidate(commit, lang, sorted(src), sorted(tests), sorted(other + rest), deleted), ""


def split_commit(repo: str | os.PathLike, cand: Candidate) -> tuple[str, str]:
    """(fix patch, test patch) of a candidate commit, both against its parent."""
    repo = Path(repo)
    parent, sha = cand.commit.parents[0], cand.commit.sha
    fix_paths = cand.source_files + cand.other_files
    base = ["diff", "--no-color", "--no-renames", "--no-ext-diff", "--binary", parent, sha, "--"]
    fix = _git(repo, *base, *fix_paths) if fix_paths else ""
    tests = _git(repo, *base, *cand.test_files)
    return fix, tests


# --- statements -------------------------------------------------------------------------------

def failure_excerpt(log: str, max_lines: int = 15) -> str:
    """The assertion lines (`E   ...`) of a pytest log, first `max_lines` of them."""
    lines = [ln for ln in log.splitlines() if ln.startswith("E ")]
    return "\n".join(lines[:max_lines])


def problem_statement(commit: Commit, failing: list[str], log: str = "",
                      messages: dict[str, str] | None = None) -> str:
    parts = [commit.subject.strip()]
    if commit.body:
        parts += ["", commit.body.strip()]
    parts += ["", "These tests fail now and should pass once the problem is fixed:"]
    parts += [f"- `{t}`" for t in failing[:10]]
    if len(failing) > 10:
        parts.append(f"- ... and {len(failing) - 10} more")
    excerpt = failure_excerpt(log) or "\n".join(
        f"{t}: {messages[t].strip()[:300]}" for t in failing[:5] if (messages or {}).get(t))
    if excerpt:
        parts += ["", "Failure output:", "```", excerpt, "```"]
    return "\n".join(parts)


# --- mining -------------------------------------------------------------------------------------

@dataclass
class MinedOutcome:
    """What happened to one commit."""

    candidate_id: str
    kept: bool
    reason: str = ""
    task: Task | None = None
    stage: str = "filter"  # filter (static, no execution) | execute
    seconds: float = 0.0


def repo_name(repo: str | os.PathLike) -> str:
    return Path(repo).resolve().name


def instance_id(repo: str | os.PathLike, sha: str) -> str:
    return f"{repo_name(repo)}__{sha[:12]}"


def build_task(repo: str | os.PathLike, cand: Candidate, *, inline: bool = False) -> Task:
    """The unverified task of a candidate commit (FAIL_TO_PASS still to be found by running)."""
    repo = Path(repo).resolve()
    fix, tests = split_commit(repo, cand)
    lang = LANGUAGES[cand.language]
    parent = cand.commit.parents[0]
    pkg = run_git(repo, "show", f"{parent}:package.json") if lang.name == "javascript" else None
    test_cmd = test_cmd_for(lang.name, pkg.stdout.decode(errors="replace") if pkg and pkg.returncode == 0 else None)
    if inline:
        probe = Task(instance_id="probe", repo=repo.name, base_commit=parent, patch="", test_patch="",
                     problem_statement="", FAIL_TO_PASS=["probe"], PASS_TO_PASS=[],
                     environment=Environment(repo_path=str(repo)))
        with tempfile.TemporaryDirectory(prefix="minicoder-mine-") as tmp:
            materialize_repo(probe, Path(tmp) / "r")
            env = Environment(image=lang.image, files=snapshot_files(Path(tmp) / "r"), test_cmd=test_cmd)
        base_commit = parent
    else:
        env = Environment(image=lang.image, repo_path=str(repo), test_cmd=test_cmd)
        base_commit = parent
    created = cand.commit.date
    with contextlib.suppress(ValueError):
        created = datetime.fromisoformat(created).astimezone(UTC).replace(microsecond=0).isoformat()
    return Task(
        instance_id=instance_id(repo, cand.commit.sha), repo=repo.name, base_commit=base_commit,
        patch=fix, test_patch=tests, problem_statement="", FAIL_TO_PASS=["<pending>"], PASS_TO_PASS=[],
        environment=env, language=cand.language, source="git", created_at=created,
        metadata={"commit": cand.commit.sha, "parent": parent, "subject": cand.commit.subject,
                  "source_files": cand.source_files, "test_files": cand.test_files},
    )


def execute_candidate(repo: str | os.PathLike, cand: Candidate, *, backend: Any = "local",
                      test_scope: str = "changed", inline: bool = False) -> MinedOutcome:
    """Run the commit's tests before and after the fix; keep it iff some test goes fail -> pass."""
    t0 = time.perf_counter()
    task = build_task(repo, cand, inline=inline)

    def done(kept: bool, reason: str = "", t: Task | None = None) -> MinedOutcome:
        return MinedOutcome(task.instance_id, kept, reason, t, "execute", time.perf_counter() - t0)

    if test_scope not in ("changed", "all"):
        raise MiningError(f"test_scope must be 'changed' or 'all', got {test_scope!r}")
    ids: list[str] = []  # [] = the whole suite (None would mean only the test_patch's files)
    if test_scope == "changed":
        ids = [p for p in cand.test_files if PurePosixPath(p).name != "conftest.py" and p not in cand.deleted]
        if not ids:
            return done(False, "the commit only deletes test files")
    before = run_tests(task, "", test_ids=ids, backend=backend)
    after = run_tests(task, task.patch, test_ids=ids, backend=backend)
    if not after.patch_applied:
        return done(False, "the fix does not apply to the parent commit")
    if not after.outcomes:
        return done(False, f"no test results after the fix (status {after.status})")
    f2p = sorted(t for t, o in after.outcomes.items() if o == "passed" and before.outcomes.get(t) != "passed")
    p2p = sorted(t for t, o in after.outcomes.items() if o == "passed" and before.outcomes.get(t) == "passed")
    broken = sorted(t for t, o in before.outcomes.items() if o == "passed" and after.outcomes.get(t) != "passed")
    if not f2p:
        if not after.passed:
            return done(False, "no test passes after the fix")
        return done(False, "no FAIL_TO_PASS test: the tests already pass before the fix")
    task.FAIL_TO_PASS, task.PASS_TO_PASS = f2p, p2p
    task.problem_statement = problem_statement(cand.commit, f2p, before.log, before.messages)
    task.metadata["pass_to_fail"] = broken
    return done(True, "", task)


def mine(repo: str | os.PathLike, *, rev: str = "HEAD", max_commits: int | None = None, backend: Any = "local",
         test_scope: str = "changed", inline: bool = False, skip: set[str] | None = None) -> Iterator[MinedOutcome]:
    """Mine `repo`'s history: one outcome per commit (kept with its task, or rejected with a reason).

    `skip`: candidate ids already handled (resuming); they are not yielded again.
    """
    repo = Path(repo).resolve()
    skip = skip or set()
    for commit in iter_commits(repo, rev, max_commits):
        cid = instance_id(repo, commit.sha)
        if cid in skip:
            continue
        cand, reason = classify_commit(repo, commit)
        if cand is None:
            yield MinedOutcome(cid, False, reason, None, "filter")
            continue
        yield execute_candidate(repo, cand, backend=backend, test_scope=test_scope, inline=inline)
