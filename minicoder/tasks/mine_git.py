"""Tasks from real git history: a change that fixes source and adds tests, verified by running.

The SWE-bench recipe, applied to any local repository (which history entries are candidates -
pull requests merged with a merge commit, squash-merged PRs, plain commits - is decided in
`mine_pr.py`; this module turns one candidate into a task):
  1. split the candidate's diff against its base (the first parent): test files -> `test_patch`
     (the hidden tests), everything else -> `patch` (the gold fix); the environment is the
     repository at the base commit (its packages and test command come from `envbuild.py`);
  2. run the tests in the sandbox twice, both times with the test patch: without the fix (before)
     and with it (after). FAIL_TO_PASS = tests that pass after and not before (a test missing from
     a report counts as failed); PASS_TO_PASS = tests that pass both times. A candidate with no
     FAIL_TO_PASS test is dropped with its reason;
  3. the problem statement is the PR's title and messages (merge message, its branch's commit
     messages) plus the failing tests and their assertion output (the `E ...` lines of pytest) -
     never the diff.

By default only the test files the candidate touches are run (as SWE-bench does);
`test_scope="all"` runs the whole suite, for complete PASS_TO_PASS lists on small repositories.

Languages are a table (`LANGUAGES`, in `sandbox/languages.py` with the graders that use it): which
files are sources, which are tests, the test command and image. Python, JavaScript (node:test or
tape), Go and Rust are wired end to end; the failure messages of the run before the fix go into the
problem statement for every language.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections import Counter
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


def is_test_module(path: str) -> bool:
    """A file pytest collects by default (`test_*.py`, `*_test.py`): what a candidate's tests run."""
    name = PurePosixPath(path).name
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))


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
    """A history entry (PR or commit) that changes source and tests of one language.

    The change is `diff(base, commit.sha)`: for a merge commit `base` is its first parent, so the
    diff is the pull request's whole change. `tests_rev` is the commit whose test files are used
    (the candidate itself, or a later commit under the later-tests option of `mine_pr`).
    """

    commit: Commit
    language: str
    source_files: list[str]
    test_files: list[str]
    other_files: list[str] = field(default_factory=list)  # docs, config: go with the fix
    deleted: list[str] = field(default_factory=list)  # files the change deletes
    kind: str = "commit"  # merge_pr | squash_pr | commit (see mine_pr.KINDS)
    pr: int | None = None  # the pull request number when the history names it
    messages: list[Commit] = field(default_factory=list)  # a merged PR's branch commits, oldest first
    tests_rev: str = ""  # commit the test files come from ("" = the candidate itself)

    @property
    def base(self) -> str:
        return self.commit.parents[0]


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


def split_commit(repo: str | os.PathLike, cand: Candidate) -> tuple[str, str]:
    """(fix patch, test patch) of a candidate, both against its base (the first parent)."""
    repo = Path(repo)
    diff = ["diff", "--no-color", "--no-renames", "--no-ext-diff", "--binary", cand.base]
    fix_paths = cand.source_files + cand.other_files
    fix = _git(repo, *diff, cand.commit.sha, "--", *fix_paths) if fix_paths else ""
    tests = _git(repo, *diff, cand.tests_rev or cand.commit.sha, "--", *cand.test_files)
    return fix, tests


# --- statements -------------------------------------------------------------------------------

def failure_excerpt(log: str, max_lines: int = 15) -> str:
    """The assertion lines (`E   ...`) of a pytest log, first `max_lines` of them."""
    lines = [ln for ln in log.splitlines() if ln.startswith("E ")]
    return "\n".join(lines[:max_lines])


_PR_SUBJECT = re.compile(r"^Merge (pull request #\d+ from \S+|branch '[^']*'( into \S+)?|remote-tracking branch .*)$")


def title_and_body(c: Commit) -> tuple[str, str]:
    """(title, body) of a history entry: a GitHub merge's title is the first line of its body."""
    subject, body = c.subject.strip(), c.body.strip()
    if _PR_SUBJECT.match(subject):
        first, _, rest = body.partition("\n")
        return first.strip(), rest.strip()
    return subject, body


def problem_statement(cand: Candidate | Commit, failing: list[str], log: str = "",
                      messages: dict[str, str] | None = None) -> str:
    """What the agent is told: the PR's messages and the failing tests' output, never the diff."""
    commit = cand.commit if isinstance(cand, Candidate) else cand
    branch = cand.messages if isinstance(cand, Candidate) else []
    title, body = title_and_body(commit)
    if not title and branch:  # "Merge branch 'x'" with no text of its own: the branch's first commit
        title, body = branch[0].subject.strip(), branch[0].body.strip()
        branch = branch[1:]
    parts = [title]
    if body:
        parts += ["", body]
    seen = {title}
    lines = []
    for c in branch:
        if c.subject.strip() in seen:
            continue
        seen.add(c.subject.strip())
        lines.append(f"- {c.subject.strip()}")
        lines += [f"  {ln}".rstrip() for ln in c.body.strip().splitlines()]
    if lines:
        parts += ["", "Commits in this change:", *lines]
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
    stage: str = "filter"  # filter (static, no execution) | environment | execute
    seconds: float = 0.0
    prior: dict[str, list] = field(default_factory=dict)  # {"empty": [Run], "gold": [Run]}: reusable as repeats


def repo_name(repo: str | os.PathLike) -> str:
    return Path(repo).resolve().name


def instance_id(repo: str | os.PathLike, sha: str) -> str:
    return f"{repo_name(repo)}__{sha[:12]}"


def build_task(repo: str | os.PathLike, cand: Candidate, *, inline: bool = False, env: Any = None) -> Task:
    """The unverified task of a candidate (FAIL_TO_PASS still to be found by running).

    `env`: what `envbuild` inferred for the base commit (anything with `apply(task)`); without it
    the task gets the default environment (no packages, `python -m pytest`).
    """
    repo = Path(repo).resolve()
    fix, tests = split_commit(repo, cand)
    lang = LANGUAGES[cand.language]
    parent = cand.base
    pkg = run_git(repo, "show", f"{parent}:package.json") if lang.name == "javascript" else None
    test_cmd = test_cmd_for(lang.name, pkg.stdout.decode(errors="replace") if pkg and pkg.returncode == 0 else None)
    if inline:
        probe = Task(instance_id="probe", repo=repo.name, base_commit=cand.base, patch="", test_patch="",
                     problem_statement="", FAIL_TO_PASS=["probe"], PASS_TO_PASS=[],
                     environment=Environment(repo_path=str(repo)))
        with tempfile.TemporaryDirectory(prefix="minicoder-mine-") as tmp:
            materialize_repo(probe, Path(tmp) / "r")
            environment = Environment(image=lang.image, files=snapshot_files(Path(tmp) / "r"), test_cmd=test_cmd)
    else:
        environment = Environment(image=lang.image, repo_path=str(repo), test_cmd=test_cmd)
    created = cand.commit.date
    with contextlib.suppress(ValueError):
        created = datetime.fromisoformat(created).astimezone(UTC).replace(microsecond=0).isoformat()
    meta: dict[str, Any] = {"commit": cand.commit.sha, "parent": cand.base, "subject": cand.commit.subject,
                            "kind": cand.kind, "source_files": cand.source_files, "test_files": cand.test_files}
    if cand.pr is not None:
        meta["pr"] = cand.pr
    if cand.messages:
        meta["branch_commits"] = [c.sha for c in cand.messages]
    if cand.tests_rev and cand.tests_rev != cand.commit.sha:
        meta["later_tests"] = {"from_commit": cand.tests_rev,
                               "note": "the change carries no tests; its tests come from this later commit"}
    task = Task(
        instance_id=instance_id(repo, cand.commit.sha), repo=repo.name, base_commit=cand.base,
        patch=fix, test_patch=tests, problem_statement="", FAIL_TO_PASS=["<pending>"], PASS_TO_PASS=[],
        environment=environment, language=cand.language, source="git", created_at=created, metadata=meta,
    )
    if env is not None:
        env.apply(task)
    return task


def _why_nothing_passes(run) -> str:
    """A short cause for a run in which no test passed (an import error, the sandbox's message)."""
    text = f"{run.log}\n{run.message}"
    for pat in (r"^E\s+((?:Module|Import)\w*Error: .*)$", r"^E\s+(\w+(?:Error|Exception): .*)$"):
        m = re.search(pat, text, re.M)
        if m:
            return m.group(1).strip()[:160]
    if run.outcomes:
        counts = Counter(run.outcomes.values())
        return f"{len(run.outcomes)} tests, none passed ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))})"
    return (run.message or run.status)[:160]


def candidate_test_ids(cand: Candidate, test_scope: str = "changed") -> tuple[list[str] | None, str]:
    """(the test ids a candidate runs, "") - `[]` being the whole suite - or (None, why it has none).

    Static (no execution), so a pipeline can drop such a candidate before building its environment."""
    if test_scope not in ("changed", "all"):
        raise MiningError(f"test_scope must be 'changed' or 'all', got {test_scope!r}")
    if test_scope == "all":
        return [], ""
    kept = [p for p in cand.test_files if p not in cand.deleted]
    if not kept:
        return None, "the change only deletes test files"
    # Python: only test modules run (helpers, data and conftest.py go in the test patch only)
    ids = [p for p in kept if is_test_module(p)] if cand.language == "python" else kept
    if not ids:
        return None, "the change's test files are not test modules (test_*.py / *_test.py)"
    return ids, ""


def execute_candidate(repo: str | os.PathLike, cand: Candidate, *, backend: Any = "local",
                      test_scope: str = "changed", inline: bool = False, env: Any = None) -> MinedOutcome:
    """Run the candidate's tests before and after the fix; keep it iff some test goes fail -> pass."""
    t0 = time.perf_counter()
    task = build_task(repo, cand, inline=inline, env=env)

    def done(kept: bool, reason: str = "", t: Task | None = None) -> MinedOutcome:
        return MinedOutcome(task.instance_id, kept, reason, t, "execute", time.perf_counter() - t0)

    ids, why = candidate_test_ids(cand, test_scope)
    if ids is None:
        return done(False, why)
    before = run_tests(task, "", test_ids=ids, backend=backend)
    after = run_tests(task, task.patch, test_ids=ids, backend=backend)
    if not after.patch_applied:
        return done(False, "the fix does not apply to the base commit")
    if not after.outcomes:
        return done(False, f"no test results after the fix (status {after.status}): {_why_nothing_passes(after)}")
    f2p = sorted(t for t, o in after.outcomes.items() if o == "passed" and before.outcomes.get(t) != "passed")
    p2p = sorted(t for t, o in after.outcomes.items() if o == "passed" and before.outcomes.get(t) == "passed")
    broken = sorted(t for t, o in before.outcomes.items() if o == "passed" and after.outcomes.get(t) != "passed")
    if not f2p:
        if not after.passed:
            return done(False, f"no test passes after the fix: {_why_nothing_passes(after)}")
        return done(False, "no FAIL_TO_PASS test: the tests already pass before the fix")
    task.FAIL_TO_PASS, task.PASS_TO_PASS = f2p, p2p
    task.problem_statement = problem_statement(cand, f2p, before.log, before.messages)
    task.metadata["pass_to_fail"] = broken
    out = done(True, "", task)
    out.prior = {"empty": [before], "gold": [after]}
    return out
