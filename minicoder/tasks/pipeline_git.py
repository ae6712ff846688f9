"""`synth git`: a repository's history -> candidates -> environments -> execution -> validation -> QA.

One ledger line per first-parent entry (`pipeline.Ledger`, resumable), with the stage it ended at:
  filter       static: not a candidate (see `mine_pr`: root, tests/docs/CI/packaging only, no tests;
               its test files are no test modules, `mine_git.candidate_test_ids`) - no environment
               is built and nothing runs for it;
  environment  the environment for its base commit cannot be built or its tests do not run there
               (`envbuild`: the exact reason - needs compiling, no wheel for a requirement, an
               import error at the base commit, ...);
  execute      the tests before / after the fix give no FAIL_TO_PASS test (`mine_git`);
  validate     repeats, trivial patches, exercised tests (`validate`).
Each record names the entry's kind (`change`: merge_pr / squash_pr / commit) and its own sandbox
runs (counted on its worker thread, so with several workers no record counts another's runs).
Environments are ledger lines too (`kind: environment`, one per requirement set): a resumed run
neither re-resolves nor re-checks them, and the report counts them (`environments`).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from minicoder.tasks.pipeline import (
    Ledger,
    Summary,
    _finish,
    _progress,
    _run_units,
    _validated_record,
    record,
)
from minicoder.tasks.qa import QAConfig
from minicoder.tasks.runner import COUNTER, count_runs


def _check_ids(repo: Path, cand) -> list[str] | None:
    """Test files to check an environment with: the candidate's test modules that exist at its base;
    `[]` (the whole suite) when it only adds new ones; None when the base has no test module at all."""
    from minicoder.tasks.mine_git import _git, is_test_module

    have = [p for p in _git(repo, "ls-tree", "-r", "--name-only", cand.base).splitlines() if is_test_module(p)]
    if not have:
        return None
    return [p for p in cand.test_files if p in set(have)]


def synth_git(repo: str | os.PathLike, out: str | os.PathLike, *, rev: str = "HEAD", max_commits: int | None = None,
              test_scope: str = "changed", inline: bool = False, validate: bool = True, backend: Any = "local",
              repeats: int = 2, exploit_checks: bool = True, workers: int = 2, qa: QAConfig | None = None,
              progress: bool = True, command: str = "synth git", build_env: bool = True,
              later_tests: bool = False, later_window: int = 20, find_links: list[str] | None = None,
              model: Any = None, time_budget_s: float | None = None) -> Summary:
    """Tasks mined from `repo`'s first-parent history, resumable through `<out>.ledger.jsonl`.

    `build_env`: infer and build each base commit's environment (packages, test command) from the
    repository's metadata (`envbuild`); off, every task gets the default environment (no packages).
    `later_tests`: a change without tests may take a later commit's tests (marked in metadata).
    `find_links`: extra folders of wheels for requirements no index has. `model`: an
    `envbuild.ModelHook` for what the rules cannot decide (default: `$MINICODER_ENVBUILD_BASE_URL`).
    `time_budget_s`: start no new entry after this many seconds (the rest stays for a resumed run;
    the report covers the entries finished so far).
    """
    from minicoder.tasks.envbuild import (
        BoundEnv,
        EnvBuilder,
        EnvResult,
        ModelHook,
        check_environment,
        infer_for_change,
    )
    from minicoder.tasks.mine_git import (
        build_task,
        candidate_test_ids,
        execute_candidate,
        instance_id,
        iter_commits,
    )
    from minicoder.tasks.mine_pr import classify_commit, commit_kind

    repo = Path(repo).resolve()
    out = Path(out)
    ledger = Ledger(str(out) + ".ledger.jsonl")
    commits = list(iter_commits(repo, rev, max_commits))
    order = {c.sha: i for i, c in enumerate(commits)}
    todo = [c for c in commits if instance_id(repo, c.sha) not in ledger]
    planned = {instance_id(repo, c.sha) for c in commits}
    model = model if model is not None else ModelHook.from_env()
    builder = EnvBuilder(backend if isinstance(backend, str) else "local", find_links)
    for r in list(ledger.records.values()):
        if r.get("kind") == "environment" and r.get("backend") == builder.backend:
            builder.known(r["requirements_key"], EnvResult(**r["result"]))
    t_start = time.perf_counter()
    runs0 = COUNTER.n
    processed = [0]
    bar = _progress(len(todo), f"{command}: commits", progress)

    def environment(cand, cid: str) -> tuple[Any, dict | None]:
        """(BoundEnv, None) or (None, the rejection record)."""
        spec = infer_for_change(repo, cand.base, cand.commit.sha, cand.other_files + cand.test_files, model=model)

        def check(res) -> tuple[bool, str, dict]:
            ids = _check_ids(repo, cand)
            if ids is None:  # nothing to run yet (the change brings the first tests): the next base checks it
                return True, "", {"skipped": "no test module at the base commit", "commit": cand.base}
            probe = build_task(repo, cand, inline=False, env=BoundEnv(spec, res))
            return check_environment(probe, ids, backend)

        with count_runs() as counted:
            res = builder.build(spec, check=check)
        if spec.ok and (res.built or counted.n):  # a new environment, or a new check of one
            rk = spec.requirements_key()
            ledger.add({"id": f"env__{repo.name}__{rk}", "kind": "environment", "requirements_key": rk,
                        "backend": builder.backend, "result": builder.cached(rk).to_dict(),
                        "spec": spec.to_dict(), "runs": counted.n, "for": cid,
                        "last_check": {"ok": res.ok, "reason": res.reason, **res.check}})
        if not res.ok:
            return None, record(cid, kept=False, stage="environment", reason=res.reason,
                                extra={"environment": spec.to_dict()})
        return BoundEnv(spec, res), None

    def work(commit, stop: threading.Event) -> None:
        if stop.is_set() or (time_budget_s is not None and time.perf_counter() - t_start > time_budget_s):
            return
        cid = instance_id(repo, commit.sha)
        t0 = time.perf_counter()
        later = commits[order[commit.sha] + 1:] if later_tests else None
        with count_runs() as counted:
            cand, reason = classify_commit(repo, commit, later=later, later_window=later_window)
            ids, why = candidate_test_ids(cand, test_scope) if cand is not None else ([], "")
            if ids is None:  # static too: dropped before an environment is built for it
                cand, reason = None, why
            if cand is None:
                rec = record(cid, kept=False, stage="filter", reason=reason)
            else:
                env, rec = environment(cand, cid) if build_env else (None, None)
                if rec is None:
                    oc = execute_candidate(repo, cand, backend=backend, test_scope=test_scope, inline=inline, env=env)
                    if not oc.kept:
                        rec = record(cid, kept=False, stage="execute", reason=oc.reason, seconds=oc.seconds)
                    else:
                        rec = _validated_record(cid, oc.task, "", t0, oc.prior, validate=validate, backend=backend,
                                                repeats=repeats, exploit_checks=exploit_checks)
        rec["runs"] = counted.n
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        rec["change"] = cand.kind if cand is not None else commit_kind(commit)[0]
        ledger.add(rec)
        processed[0] += 1
        bar.update(1)

    try:
        _run_units(todo, work, workers)
    finally:
        bar.close()
    stages = ["filter", "environment", "execute"] + (["validate"] if validate else [])
    envs = [r for r in ledger.records.values() if r.get("kind") == "environment"
            and r.get("backend") == builder.backend and r["id"].startswith(f"env__{repo.name}__")]
    planned = {i for i in planned if i in ledger}  # a time budget may leave entries for later
    recs = [r for r in ledger.candidates() if r["id"] in planned]
    environments = {"built": len(envs), "failed": sum(1 for r in envs if not r["result"]["ok"]),
                    "distinct_pins": len({r["result"]["key"] for r in envs if r["result"]["key"]}),
                    "seconds": round(sum(r["result"]["seconds"] for r in envs), 2),
                    "tasks_sharing": sum(1 for r in recs if r["stage"] not in ("filter", "environment"))}
    return _finish(command, out, ledger, processed[0], time.perf_counter() - t_start, COUNTER.n - runs0, qa, True,
                   stages, only=planned, environments=environments)
