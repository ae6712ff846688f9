"""`minicoder synth git|mutate` and `minicoder validate`: the task-synthesis stage on the command line.

    minicoder synth git --repo PATH --out tasks.jsonl [--validate] [--test-scope changed|all]
                        [--max-commits N] [--no-env] [--later-tests] [--find-links DIR]
    minicoder synth mutate --source humaneval|PATH --out tasks.jsonl [--limit N] [--validate]
    minicoder synth security --out tasks.jsonl [--per-class 24] [--classes sql_injection,...]
    minicoder validate --tasks tasks.jsonl --backend local|docker [--out validated.jsonl]

All three are resumable: each finished candidate is one line in `<out>.ledger.jsonl`, and a rerun
with the same --out skips what is there (see pipeline.py). Each writes `<out>.report.json` and
prints the yield table. `validate` exits 1 when any task fails validation.
"""

from __future__ import annotations

import argparse
import json
import tarfile
import tempfile
from pathlib import Path

from minicoder.errors import UserError
from minicoder.sandbox.cli import add_backend_argument


def _common(p: argparse.ArgumentParser, out_required: bool = True) -> None:
    p.add_argument("--out", required=out_required, help="output JSONL of tasks (ledger and report go next to it)")
    add_backend_argument(p)
    p.add_argument("--workers", type=int, default=2, help="parallel sandbox runs (default 2)")
    p.add_argument("--repeats", type=int, default=2, help="runs of the gold and empty patch in validation (default 2)")
    p.add_argument("--no-exploit-checks", action="store_true", help="skip the trivial-patch and stub checks")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_synth_parser(subparsers) -> None:
    p = subparsers.add_parser("synth", help="synthesise verifiable tasks (from git history or by bug injection)",
                              description="Synthesise verifiable SWE tasks; see minicoder/tasks/.")
    sub = p.add_subparsers(dest="synth_command", metavar="SOURCE", required=True)

    g = sub.add_parser("git", help="mine a local git repository's history (pull requests and commits)",
                       description="Mine the first-parent history: merge-commit PRs, squash-merged PRs and plain "
                                   "commits that change source and tests; each base commit gets an environment "
                                   "built from the repository's package metadata (see minicoder/tasks/envbuild.py).")
    g.add_argument("--repo", required=True, help="path of a local git repository")
    g.add_argument("--rev", default="HEAD", help="revision whose first-parent history is mined (default HEAD)")
    g.add_argument("--max-commits", type=int, default=None, help="only the last N commits")
    g.add_argument("--test-scope", choices=("changed", "all"), default="changed",
                   help="run only the commit's test files (default) or the whole suite")
    g.add_argument("--inline", action="store_true", help="store each task's repository inline (self-contained)")
    g.add_argument("--no-env", action="store_true",
                   help="do not build environments from the package metadata (no packages, plain pytest)")
    g.add_argument("--later-tests", action="store_true",
                   help="a change without tests may use the tests of a later commit (marked in metadata; off by default)")
    g.add_argument("--later-window", type=int, default=20,
                   help="how many later first-parent commits --later-tests looks through (default 20)")
    g.add_argument("--find-links", action="append", default=[], metavar="DIR",
                   help="extra folder of wheels for requirements no index has (repeatable)")
    g.add_argument("--validate", action="store_true", help="validate kept tasks (repeats, exploit checks)")
    _common(g)
    g.set_defaults(func=_guard(_synth_git))

    m = sub.add_parser("mutate", help="inject bugs into code with tests (HumanEval or a Python project)")
    m.add_argument("--source", required=True,
                   help="'humaneval', a directory with a Python project and its tests, or a .tar.gz sdist")
    m.add_argument("--limit", type=int, default=None, help="number of subjects (HumanEval problems) to use")
    m.add_argument("--max-tasks", type=int, default=None, help="stop once this many tasks are kept")
    m.add_argument("--per-subject", type=int, default=None,
                   help="mutants tried per subject (default 6 for HumanEval, 60 for a project)")
    m.add_argument("--combine", type=int, default=1, help="two-bug combinations per subject (default 1)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--operators", default=None, help="comma-separated subset of the mutation operators")
    m.add_argument("--validate", action="store_true", help="validate kept tasks (repeats, exploit checks)")
    _common(m)
    m.set_defaults(func=_guard(_synth_mutate))

    from minicoder.tasks.security import add_security_parser

    add_security_parser(sub)


def add_validate_parser(subparsers) -> None:
    p = subparsers.add_parser("validate", help="validate tasks by execution in the sandbox (exit 1 if any fails)",
                              description="Gold passes, empty fails, repeated runs agree, no trivial exploit.")
    p.add_argument("--tasks", required=True, help="JSONL file (or HF dataset folder) of tasks")
    _common(p, out_required=False)
    p.set_defaults(func=_guard(_validate))


def _check_common(args) -> None:
    if args.workers < 1:
        raise UserError("--workers must be at least 1")
    if args.repeats < 1:
        raise UserError("--repeats must be at least 1")
    if args.backend == "docker":  # before any work: not one candidate later, as a sandbox failure
        _need_docker()


def _guard(fn):
    """Turn a sandbox failure or a damaged ledger into one clean line (exit 2); the ledger keeps what finished."""

    def wrapped(args) -> int:
        from minicoder.record import TaskFormatError
        from minicoder.tasks.runner import SandboxFailure

        try:
            return fn(args)
        except SandboxFailure as e:
            raise UserError(f"the sandbox failed, stopping (rerun the same command to resume): {e}") from None
        except TaskFormatError as e:  # e.g. a damaged line in the middle of the ledger (it names the line)
            raise UserError(str(e)) from None

    return wrapped


def _print(summary) -> None:
    print(summary.table())
    print(f"tasks: {summary.out}   report: {summary.out}.report.json")


def _synth_git(args) -> int:
    from minicoder.tasks.mine_git import MiningError
    from minicoder.tasks.pipeline_git import synth_git

    _check_common(args)
    repo = Path(args.repo)
    if not repo.is_dir():
        raise UserError(f"--repo {repo}: no such directory")
    if args.max_commits is not None and args.max_commits < 1:
        raise UserError("--max-commits must be at least 1")
    if args.later_window < 1:
        raise UserError("--later-window must be at least 1")
    for d in args.find_links:
        if not Path(d).is_dir():
            raise UserError(f"--find-links {d}: no such directory")
    if args.backend == "docker":
        _need_docker()
    try:
        s = synth_git(repo, args.out, rev=args.rev, max_commits=args.max_commits, test_scope=args.test_scope,
                      inline=args.inline, validate=args.validate, backend=args.backend, repeats=args.repeats,
                      exploit_checks=not args.no_exploit_checks, workers=args.workers,
                      progress=not args.no_progress, build_env=not args.no_env, later_tests=args.later_tests,
                      later_window=args.later_window, find_links=[str(Path(d).resolve()) for d in args.find_links])
    except MiningError as e:
        raise UserError(str(e)) from None
    _print(s)
    return 0


def unpack_source(source: str, cache: Path | None = None) -> Path:
    """A project directory from a directory or an sdist archive (unpacked into a cache dir)."""
    p = Path(source)
    if p.is_dir():
        return p
    if p.is_file() and p.name.endswith((".tar.gz", ".tgz")):
        dest = (cache or Path(tempfile.gettempdir()) / "minicoder-sdists") / p.name.removesuffix(".tar.gz")
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            with tarfile.open(p) as tf:
                tf.extractall(dest, filter="data")
        subdirs = [d for d in dest.iterdir() if d.is_dir()]
        return subdirs[0] if len(subdirs) == 1 else dest
    raise UserError(f"--source {source!r}: expected 'humaneval', a project directory or a .tar.gz sdist")


def _synth_mutate(args) -> int:
    from minicoder.data.corpus import humaneval_problems
    from minicoder.tasks.mutate import (
        OPERATORS,
        MutationError,
        humaneval_subject,
        repo_subject,
    )
    from minicoder.tasks.pipeline import synth_mutate

    _check_common(args)
    ops = tuple(o.strip() for o in args.operators.split(",")) if args.operators else OPERATORS
    bad = sorted(set(ops) - set(OPERATORS))
    if bad:
        raise UserError(f"--operators: unknown {bad}; choose from {', '.join(OPERATORS)}")
    try:
        if args.source == "humaneval":
            problems = humaneval_problems()
            if args.limit is not None:
                problems = problems[: args.limit]
            subjects = [humaneval_subject(p) for p in problems]
            per = args.per_subject or 6
        else:
            root = unpack_source(args.source)
            subjects = [repo_subject(root)]
            per = args.per_subject or 60
    except MutationError as e:
        raise UserError(str(e)) from None
    s = synth_mutate(subjects, args.out, per_subject=per, combine=args.combine, seed=args.seed, operators=ops,
                     validate=args.validate, backend=args.backend, repeats=args.repeats,
                     exploit_checks=not args.no_exploit_checks, workers=args.workers,
                     progress=not args.no_progress, max_tasks=args.max_tasks,
                     command=f"synth mutate --source {args.source}")
    _print(s)
    return 0


def _validate(args) -> int:
    from minicoder.record import TaskFormatError, read_tasks
    from minicoder.tasks.pipeline import validate_file

    _check_common(args)
    try:
        tasks = read_tasks(args.tasks)
    except TaskFormatError as e:
        raise UserError(str(e)) from None
    if not tasks:
        raise UserError(f"{args.tasks}: no tasks")
    out = args.out or str(Path(args.tasks).with_suffix("")) + ".validated.jsonl"
    s = validate_file(tasks, out, backend=args.backend, repeats=args.repeats,
                      exploit_checks=not args.no_exploit_checks, workers=args.workers,
                      progress=not args.no_progress)
    _print(s)
    ledger = Path(out + ".ledger.jsonl")
    failed = [json.loads(line) for line in ledger.read_text().splitlines() if line.strip()]
    failed = [r for r in failed if not r.get("kept")]
    for r in failed[:20]:
        print(f"FAILED {r['id']}: {r['reason']}")
    return 1 if failed else 0


def _need_docker() -> None:
    """A clear error (exit 2) before any work when --backend docker has no engine to talk to."""
    from minicoder.sandbox.base import SandboxError
    from minicoder.sandbox.docker import client

    try:
        client()
    except SandboxError as e:
        raise UserError(f"--backend docker: {e}") from None
