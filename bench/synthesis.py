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
    The shipped set's ledger, when present, is copied in first, so the step resumes it (tasks/minute
    then counts only what this invocation ran; the shipped report has the full run's rate)."""
    from minicoder.tasks.lang_sets import DATA, build_set

    out: dict = {}
    for lang in ("javascript", "go", "rust"):
        dest = WORK / f"{lang}.jsonl"
        shipped = DATA / f"{lang}_tasks.jsonl.ledger.jsonl"
        if shipped.exists() and not Path(str(dest) + ".ledger.jsonl").exists():
            shutil.copy(shipped, str(dest) + ".ledger.jsonl")
        load0 = _load()
        s = build_set(lang, dest, workers=args.workers, progress=False)
        print(lang, s.table())
        out[lang] = _section(s, load0)
        rep = DATA / f"{lang}_tasks.jsonl.report.json"
        if rep.exists():
            out[lang]["shipped_run"] = {k: json.loads(rep.read_text()).get(k)
                                        for k in ("funnel", "rejections", "seconds", "tasks_per_minute", "kept_per_minute")}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", default="humaneval,package,throughput,languages")
    ap.add_argument("--per-subject", type=int, default=3, help="mutants per HumanEval problem")
    ap.add_argument("--limit", type=int, default=None, help="HumanEval problems (default all 164)")
    ap.add_argument("--package-mutants", type=int, default=20)
    ap.add_argument("--n-throughput", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--fresh", action="store_true", help="delete the ledgers first (no resume)")
    args = ap.parse_args()
    if args.fresh and WORK.exists():
        shutil.rmtree(WORK)
    WORK.mkdir(parents=True, exist_ok=True)
    steps = {"humaneval": step_humaneval, "package": step_package, "throughput": step_throughput,
             "languages": step_languages}
    for name in [s for s in args.steps.split(",") if s]:
        section = steps[name](args)
        section["finished"] = datetime.now(UTC).replace(microsecond=0).isoformat()
        section.setdefault("settings", {"workers": args.workers, "per_subject": args.per_subject,
                                        "package_mutants": args.package_mutants})
        # each step keeps its own file, so steps can run as separate (even concurrent) invocations
        (WORK / f"section_{name}.json").write_text(json.dumps(section, indent=2) + "\n")
    results = {name: json.loads((WORK / f"section_{name}.json").read_text())
               for name in steps if (WORK / f"section_{name}.json").exists()}
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
    for lang, r in (results.get("languages") or {}).items():
        run = r.get("shipped_run") or {}
        f = run.get("funnel") or r["funnel"]
        print(f"{lang:<12}{f.get('candidates', 0):>12}{f.get('after execute', 0):>13}{f.get('after validate', 0):>11}"
              f"{f.get('after qa', 0):>10}{r['runs_per_candidate']:>11}{run.get('tasks_per_minute', r['tasks_per_minute']):>11}")
    t = results.get("throughput")
    if t:
        for b in ("local", "docker"):
            v = t.get(b, {})
            print(f"validate {b:<8}: " + (f"{v['tasks_per_minute']} tasks/min, {v['seconds_per_run']} s/run"
                                          if "tasks_per_minute" in v else v.get("skipped", "-")))


if __name__ == "__main__":
    raise SystemExit(main())
