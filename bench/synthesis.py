"""Benchmark: task-synthesis yield and speed, through execution validation in the real sandbox.

Steps (select with --steps; each writes its section of bench/results/synthesis.json):
  humaneval   every HumanEval problem: mutants -> executed -> validated -> QA, local backend,
              2 workers; yield per stage and per mutation operator, sandbox runs, tasks/minute
  package     a real PyPI package's source with its own pytest suite (`inflection`, fetched as an
              sdist with `pip download --no-binary :all: --no-deps`): the same funnel
  throughput  validation only (`validate_file`) of the same N HumanEval tasks with the local and
              the Docker backend, 2 workers: tasks/minute for each
  languages   JavaScript, Go, Rust: the shipped sets' pipeline (npm / Debian sources, tree-sitter
              mutants, validation, QA), one row per language (resumes the shipped ledgers)
  real        real Python projects with their git history (`REAL_PROJECTS`): `synth git` over the
              last 300 first-parent commits (merge PRs, squash PRs, commits), environments built
              from each base commit's package metadata, validation, QA, on the local and the docker
              backend: candidates per kind, environments built, validated tasks, drops per reason,
              tasks/minute. The repositories are never committed: `--repos DIR` names a folder of
              clones or bare snapshots (DIR/<owner>+<name>/repo, as the search tool's `fetch` leaves
              them, or DIR/<name>), else they are cloned from GitHub; each is cloned afresh into
              bench/results/tmp/synthesis/real/ and its commit and licence go into the JSON.
              `--ship` writes the validated tasks to data/tasks/real/<name>.jsonl (naming the
              public repository and its licence): the command that regenerates the shipped tasks.

Runs are resumable (the pipelines' ledgers live in bench/results/tmp/synthesis/), so an interrupted
benchmark continues; tasks/minute always counts only the candidates processed in this invocation.
Each step saves its own section there; the JSON is assembled from all sections present
(`--steps ""` only re-assembles it).
The machine is shared: the load average at the start and end of each step is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minicoder.record import Task, read_tasks  # noqa: E402
from minicoder.tasks.pipeline import machine_info, synth_mutate, validate_file  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "synthesis.json"
WORK = ROOT / "bench" / "results" / "tmp" / "synthesis"
SDISTS = ROOT / ".cache" / "sdists"
PACKAGE = "inflection==0.5.1"


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _section(summary, t_load0) -> dict:
    d = summary.to_dict()
    d["load_average_start"] = t_load0
    d["load_average_end"] = _load()
    d["runs_per_candidate"] = round(summary.sandbox_runs / max(summary.processed, 1), 2)
    return d


def step_humaneval(args) -> dict:
    from minicoder.data.corpus import humaneval_problems
    from minicoder.tasks.mutate import humaneval_subject

    subjects = [humaneval_subject(p) for p in humaneval_problems()]
    if args.limit:
        subjects = subjects[: args.limit]
    load0 = _load()
    s = synth_mutate(subjects, WORK / "humaneval.jsonl", per_subject=args.per_subject, combine=1, seed=0,
                     validate=True, backend="local", workers=args.workers, command="bench humaneval")
    print(s.table())
    return _section(s, load0)


def fetch_sdist(spec: str) -> Path:
    """Download (once) and unpack an sdist; returns the project directory."""
    from minicoder.tasks.cli import unpack_source

    SDISTS.mkdir(parents=True, exist_ok=True)
    name = spec.split("==")[0]
    have = sorted(SDISTS.glob(f"{name}-*.tar.gz"))
    if not have:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps", "-q",
                        "-d", str(SDISTS), spec], check=True)
        have = sorted(SDISTS.glob(f"{name}-*.tar.gz"))
    return unpack_source(str(have[-1]), cache=SDISTS / "unpacked")


def step_package(args) -> dict:
    from minicoder.tasks.mutate import repo_subject

    root = fetch_sdist(PACKAGE)
    subject = repo_subject(root, name=PACKAGE.split("==")[0])
    load0 = _load()
    s = synth_mutate([subject], WORK / "package.jsonl", per_subject=args.package_mutants, combine=1, seed=0,
                     validate=True, backend="local", workers=args.workers, command=f"bench package {PACKAGE}")
    print(s.table())
    out = _section(s, load0)
    out["package"] = PACKAGE
    out["source_files"] = sorted(subject.targets)
    out["test_files"] = sorted(subject.tests)
    return out


def step_throughput(args) -> dict:
    src = WORK / "humaneval.jsonl"
    if src.exists():
        tasks = read_tasks(src)[: args.n_throughput]
    else:  # the humaneval step is still running (or was interrupted): take validated tasks from its ledger
        from minicoder.tasks.pipeline import Ledger

        recs = [r for r in Ledger(str(src) + ".ledger.jsonl").candidates() if r["kept"]]
        tasks = [Task.from_dict(r["task"]) for r in recs[: args.n_throughput]]
    if not tasks:
        raise SystemExit("run the humaneval step first")
    out: dict = {"n_tasks": len(tasks), "workers": args.workers}
    for backend in ("local", "docker"):
        dest = WORK / f"throughput_{backend}.jsonl"
        for p in (dest, Path(str(dest) + ".ledger.jsonl"), Path(str(dest) + ".report.json")):
            p.unlink(missing_ok=True)
        if backend == "docker":
            try:
                import docker

                docker.from_env(timeout=10).ping()
                from minicoder.sandbox import docker as _sandbox_docker  # noqa: F401
            except Exception as e:  # no engine, or the backend is not there
                out[backend] = {"skipped": f"{type(e).__name__}: {e}"}
                continue
        load0 = _load()
        t0 = time.perf_counter()
        s = validate_file(tasks, dest, backend=backend, workers=args.workers, command=f"bench validate {backend}")
        dt = time.perf_counter() - t0
        print(backend, s.table())
        out[backend] = {"seconds": round(dt, 2), "tasks_per_minute": round(len(tasks) / (dt / 60), 2),
                        "validated": s.funnel.get("after validate", 0), "sandbox_runs": s.sandbox_runs,
                        "seconds_per_run": round(dt * args.workers / max(s.sandbox_runs, 1), 3),
                        "load_average_start": load0, "load_average_end": _load(),
                        "rejections": s.rejections}
    return out


def step_languages(args) -> dict:
    """JavaScript, Go and Rust: the shipped sets' pipeline (minicoder.tasks.lang_sets) per language.

    Default: the shipped sets' settings (`lang_sets.PER_SUBJECT` mutants per project), resuming the
    shipped ledger when one is present (tasks/minute then counts only what this invocation ran; the
    shipped report has the full run's rate). `--lang-per-subject N` bounds the run instead: N mutants
    per project, a fresh ledger of its own (its rows say so in "settings")."""
    from minicoder.tasks.lang_sets import DATA, PER_SUBJECT, build_set

    out: dict = {}
    bounded = args.lang_per_subject is not None
    for lang in [x for x in args.lang_languages.split(",") if x]:
        dest = WORK / (f"{lang}-bounded{args.lang_per_subject}.jsonl" if bounded else f"{lang}.jsonl")
        shipped = DATA / f"{lang}_tasks.jsonl.ledger.jsonl"
        if not bounded and shipped.exists() and not Path(str(dest) + ".ledger.jsonl").exists():
            shutil.copy(shipped, str(dest) + ".ledger.jsonl")
        load0 = _load()
        per = args.lang_per_subject if bounded else PER_SUBJECT[lang]
        s = build_set(lang, dest, per_subject=per, workers=args.workers, progress=False)
        print(lang, s.table())
        out[lang] = _section(s, load0)
        out[lang]["settings"] = {"per_subject": per, "bounded": bounded, "workers": args.workers}
        rep = DATA / f"{lang}_tasks.jsonl.report.json"
        if rep.exists():
            out[lang]["shipped_run"] = {k: json.loads(rep.read_text()).get(k)
                                        for k in ("funnel", "rejections", "seconds", "tasks_per_minute", "kept_per_minute")}
    return out


# --- real repositories ---------------------------------------------------------------------------

REAL_PROJECTS = ("more-itertools/more-itertools", "pallets/click", "pytoolz/toolz")
LICENCES = (("MIT", r"Permission is hereby granted, free of charge"), ("Apache-2.0", r"Apache License"),
            ("BSD", r"Redistribution and use in source and binary forms"), ("PSF", r"PYTHON SOFTWARE FOUNDATION"))


def licence_of(clone: Path) -> str:
    """The licence family of a clone's LICENSE file (permissive ones only are recognised), or ''."""
    import re

    for f in sorted(clone.glob("LICEN[CS]E*")) + sorted(clone.glob("COPYING*")):
        text = f.read_text(errors="replace")
        for name, pat in LICENCES:
            if re.search(pat, text, re.I):
                if name == "BSD":
                    return "BSD-3-Clause" if re.search(r"Neither the name|may not be used to endorse", text, re.I) else "BSD-2-Clause"
                return name
    return ""


def real_clone(project: str, repos: Path | None) -> Path:
    """A fresh working clone of `project` under WORK/real (from `repos` when it has it, else GitHub)."""
    owner, name = project.split("/")
    src = None
    if repos is not None:
        for cand in (repos / f"{owner}+{name}" / "repo", repos / name, repos / f"{owner}+{name}"):
            if (cand / "HEAD").exists() or (cand / ".git").exists():
                src = str(cand)
                break
    dest = WORK / "real" / name
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "clone", "-q", src or f"https://github.com/{project}.git", str(dest)], check=True)
    return dest


def step_real(args) -> dict:
    """Mine each project on each backend. Every (backend, project) keeps its own results file
    (`section_real_<backend>__<name>.json`), so backends and projects may run as separate, even
    concurrent, invocations (each project has its own ledger too); a pure resume (nothing left to
    process) keeps the rates of the run that measured them and updates the counts (QA reruns)."""
    from minicoder.tasks.pipeline_git import synth_git

    repos = Path(args.repos) if args.repos else None
    for backend in [b for b in args.real_backends.split(",") if b]:
        for project in [p for p in args.real_projects.split(",") if p]:
            clone = real_clone(project, repos)
            path = WORK / f"section_real_{backend}__{clone.name}.json"
            head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True,
                                  text=True).stdout.strip()
            entry: dict = {"project": project, "commit": head, "licence": licence_of(clone),
                           "source": f"https://github.com/{project}", "max_commits": args.real_commits,
                           "workers": args.workers}
            if backend == "docker":
                try:
                    import docker

                    docker.from_env(timeout=10).ping()
                except Exception as e:
                    entry["skipped"] = f"{type(e).__name__}: {e}"
                    path.write_text(json.dumps(entry, indent=2) + "\n")
                    continue
            load0 = _load()
            s = synth_git(clone, WORK / f"real_{clone.name}_{backend}.jsonl", max_commits=args.real_commits,
                          validate=True, backend=backend, workers=args.workers,
                          command=f"bench real {project} {backend}",
                          time_budget_s=args.real_minutes * 60 if args.real_minutes is not None else None)
            print(project, backend)
            print(s.table())
            entry.update(_section(s, load0))
            entry["entries_done"] = s.funnel.get("candidates", 0)
            entry["validated_per_minute"] = s.kept_per_minute
            if not s.processed and not path.exists():  # the measuring run was stopped before it wrote this
                entry["stopped_run"] = stopped_run(WORK / f"real_{clone.name}_{backend}.jsonl.ledger.jsonl")
            if s.processed or not path.exists():
                path.write_text(json.dumps(entry, indent=2) + "\n")
            else:  # a pure resume: the rates stay the measuring run's, the counts (QA's too) are redone
                old = json.loads(path.read_text())
                old.update({k: entry[k] for k in ("funnel", "rejections", "per_kind", "environments",
                                                  "flaky_dropped", "failed_validation", "entries_done")})
                path.write_text(json.dumps(old, indent=2) + "\n")
            if args.ship and backend == "local":
                n = ship_real_tasks(project, clone, entry["licence"])
                print(f"shipped {n} tasks of {project} to {SHIPPED.relative_to(ROOT)}/{clone.name}.jsonl")
    return real_results()


def stopped_run(ledger: Path) -> dict:
    """What the last run recorded in `ledger` did before it was stopped (killed: no report of its own):
    its entries and validated tasks, and its wall time from its start (in its run id) to its last record."""
    recs = [json.loads(ln) for ln in ledger.read_text().splitlines() if ln.strip()]
    last = recs[-1]["run_id"]
    mine = [r for r in recs if r.get("run_id") == last and r.get("kind", "candidate") == "candidate"]
    minutes = (ledger.stat().st_mtime - float(last.split("-")[1])) / 60
    return {"run_id": last, "entries": len(mine), "validated": sum(r["kept"] for r in mine),
            "minutes": round(minutes, 1), "entries_per_minute": round(len(mine) / minutes, 2) if minutes > 0 else 0.0,
            "validated_per_minute": round(sum(r["kept"] for r in mine) / minutes, 2) if minutes > 0 else 0.0}


SHIPPED = ROOT / "data" / "tasks" / "real"
PERMISSIVE = ("MIT", "Apache-2.0", "BSD-2-Clause", "BSD-3-Clause", "PSF")


def ship_real_tasks(project: str, clone: Path, licence: str, backend: str = "local") -> int:
    """Write the validated tasks of `project` (its `backend` run) to data/tasks/real/<name>.jsonl, each
    naming the public repository (`repo_path` = its GitHub URL, `repo` = owner/name, SWE-bench style)
    and its licence. Only permissive licences are shipped. Returns the number written."""
    from minicoder.record import read_tasks, write_tasks

    if licence not in PERMISSIVE:
        print(f"{project}: licence {licence or 'unknown'!r} is not one we ship (MIT, Apache-2.0, BSD, PSF)")
        return 0
    src = WORK / f"real_{clone.name}_{backend}.jsonl"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout.strip()
    tasks = read_tasks(src)
    for t in tasks:
        t.repo = project
        t.environment.repo_path = f"https://github.com/{project}.git"
        t.metadata["licence"] = licence
        t.metadata["mined_from"] = {"url": f"https://github.com/{project}", "head": head, "backend": backend,
                                    "command": "python bench/synthesis.py --steps real --ship"}
    SHIPPED.mkdir(parents=True, exist_ok=True)
    return write_tasks(SHIPPED / f"{clone.name}.jsonl", tasks)


def real_results() -> dict:
    """The real-repository results of all backends: {"projects": {project: {commit, licence, backend: ...}}}.

    Where the docker run covers fewer entries than the local one (a subset: docker costs more per run
    on a small shared machine), the docker row gets `same_entries_on_local`: the local run's verdicts
    on exactly those entries, and how many the two backends decided alike."""
    out: dict = {"projects": {}}
    for path in sorted(WORK.glob("section_real_*__*.json")):
        backend = path.stem.removeprefix("section_real_").split("__")[0]
        e = json.loads(path.read_text())
        head = {k: e[k] for k in ("commit", "licence", "source") if k in e}
        out["projects"].setdefault(e["project"], head)[backend] = {
            k: v for k, v in e.items() if k not in ("project", "commit", "licence", "source")}
    for project, e in out["projects"].items():
        local, docker = e.get("local"), e.get("docker")
        if local and docker and "funnel" in docker and docker.get("max_commits", 0) < local.get("max_commits", 0):
            name = project.split("/")[1]
            done = docker.get("entries_done", docker["funnel"].get("candidates", 0))
            docker["subset"] = (f"{done} of the last {docker['max_commits']} first-parent commits (oldest first), "
                                f"of the {local['max_commits']} the local backend mined: docker costs more per "
                                "run on this shared 2-core machine")
            docker["same_entries_on_local"] = compare_backends(WORK / f"real_{name}_local.jsonl.ledger.jsonl",
                                                               WORK / f"real_{name}_docker.jsonl.ledger.jsonl")
    return out


def compare_backends(local_ledger: Path, docker_ledger: Path) -> dict:
    """The two backends' verdicts on the entries both have finished: counts and the entries that differ."""
    def verdicts(path: Path) -> dict[str, tuple[str, bool, str]]:
        if not path.exists():
            return {}
        recs = (json.loads(ln) for ln in path.read_text().splitlines() if ln.strip())
        return {r["id"]: (r["stage"], r["kept"], r["reason"]) for r in recs if r.get("kind", "candidate") == "candidate"}

    loc, dock = verdicts(local_ledger), verdicts(docker_ledger)
    both = sorted(set(loc) & set(dock))
    differ = [{"id": i, "local": f"{loc[i][0]}: {loc[i][2][:120] or 'kept'}",
               "docker": f"{dock[i][0]}: {dock[i][2][:120] or 'kept'}"}
              for i in both if loc[i][:2] != dock[i][:2]]
    return {"entries": len(both), "validated_local": sum(loc[i][1] for i in both),
            "validated_docker": sum(dock[i][1] for i in both), "same_verdict": len(both) - len(differ),
            "differ": differ}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="humaneval,package,throughput,languages")
    ap.add_argument("--per-subject", type=int, default=3, help="mutants per HumanEval problem")
    ap.add_argument("--limit", type=int, default=None, help="HumanEval problems (default all 164)")
    ap.add_argument("--package-mutants", type=int, default=20)
    ap.add_argument("--n-throughput", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repos", default=os.environ.get("MINICODER_REAL_REPOS"),
                    help="folder of clones / bare snapshots of the real projects (default: clone from GitHub)")
    ap.add_argument("--real-projects", default=",".join(REAL_PROJECTS), help="owner/name,... for the real step")
    ap.add_argument("--real-commits", type=int, default=300, help="last N first-parent commits per project")
    ap.add_argument("--real-backends", default="local,docker")
    ap.add_argument("--real-minutes", type=float, default=None,
                    help="real step: start no new commit after this many minutes per project (resumable; 0: only report and ship)")
    ap.add_argument("--ship", action="store_true",
                    help="real step: write the validated local-backend tasks to data/tasks/real/ (permissive licences)")
    ap.add_argument("--fresh", action="store_true", help="delete the ledgers first (no resume)")
    ap.add_argument("--lang-per-subject", type=int, default=None,
                    help="languages step: mutants per project (a bounded run; default: the shipped sets' settings)")
    ap.add_argument("--lang-languages", default="javascript,go,rust", help="languages step: which languages")
    args = ap.parse_args()
    if args.fresh and WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True, exist_ok=True)
    steps = {"humaneval": step_humaneval, "package": step_package, "throughput": step_throughput,
             "languages": step_languages, "real": step_real}
    for name in [s for s in args.steps.split(",") if s]:
        section = steps[name](args)
        section["finished"] = datetime.now(UTC).replace(microsecond=0).isoformat()
        section.setdefault("settings", {"workers": args.workers, "per_subject": args.per_subject,
                                        "package_mutants": args.package_mutants})
        # each step keeps its own file, so steps can run as separate (even concurrent) invocations
        (WORK / f"section_{name}.json").write_text(json.dumps(section, indent=2) + "\n")
    # sections not run here keep their committed results (each step may run on another day or machine)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.update({name: json.loads((WORK / f"section_{name}.json").read_text())
                    for name in steps if name != "real" and (WORK / f"section_{name}.json").exists()})
    if list(WORK.glob("section_real_*__*.json")):
        results["real"] = real_results()
    results["date"] = datetime.now(UTC).replace(microsecond=0).isoformat()
    results["machine"] = machine_info()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"wrote {RESULTS}")
    return 0


def print_table(results: dict) -> None:
    print(f"\n{'run':<12}{'candidates':>12}{'executed ok':>13}{'validated':>11}{'after QA':>10}"
          f"{'runs/cand':>11}{'tasks/min':>11}")
    for name in ("humaneval", "package"):
        r = results.get(name)
        if not r:
            continue
        f = r["funnel"]
        print(f"{name:<12}{f.get('candidates', 0):>12}{f.get('after execute', 0):>13}{f.get('after validate', 0):>11}"
              f"{f.get('after qa', 0):>10}{r['runs_per_candidate']:>11}{r['tasks_per_minute']:>11}")
    for lang, r in (results.get("languages") or {}).items():  # this run's row, then the shipped set's
        if not isinstance(r, dict) or "funnel" not in r:
            continue  # the section's "finished" / "settings"
        for label, row in ((lang, r), ("  (shipped)", r.get("shipped_run"))):
            if not row:
                continue
            f = row["funnel"]
            per_run = f"{r['runs_per_candidate']:>11}" if row is r else f"{'':>11}"
            print(f"{label:<12}{f.get('candidates', 0):>12}{f.get('after execute', 0):>13}"
                  f"{f.get('after validate', 0):>11}{f.get('after qa', 0):>10}{per_run}{row['tasks_per_minute']:>11}")
        drops = {reason: n for stage in (r.get("rejections") or {}).values() for reason, n in stage.items()}
        if drops:
            print(f"{'':<12}dropped: " + ", ".join(f"{n} {reason}" for reason, n in sorted(drops.items())))
    print_real(results.get("real"))
    t = results.get("throughput")
    if t:
        for b in ("local", "docker"):
            v = t.get(b, {})
            print(f"validate {b:<8}: " + (f"{v['tasks_per_minute']} tasks/min, {v['seconds_per_run']} s/run"
                                          if "tasks_per_minute" in v else v.get("skipped", "-")))



def print_real(real: dict | None) -> None:
    """The real-repository table: one row per project and backend."""
    if not real:
        return
    print(f"\n{'project':<40}{'backend':<8}{'entries':>8}{'merge/squash/commit cand.':>27}{'envs':>6}"
          f"{'validated':>10}{'after QA':>9}{'runs/cand':>10}{'cand/min':>9}{'tasks/min':>10}")
    for project, e in real["projects"].items():
        for b in ("local", "docker"):
            r = e.get(b)
            if not r or "funnel" not in r:
                continue
            k = r.get("per_kind", {})
            kinds = "/".join(str(k.get(x, {}).get("candidates", 0)) for x in ("merge_pr", "squash_pr", "commit"))
            f = r["funnel"]
            print(f"{project + ' @' + e['commit'][:8]:<40}{b:<8}{f.get('candidates', 0):>8}{kinds:>27}"
                  f"{r.get('environments', {}).get('built', 0):>6}{f.get('after validate', 0):>10}"
                  f"{f.get('after qa', 0):>9}{r['runs_per_candidate']:>10}{r['tasks_per_minute']:>9}"
                  f"{r['validated_per_minute']:>10}")


if __name__ == "__main__":
    raise SystemExit(main())
