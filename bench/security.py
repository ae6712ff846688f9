"""Benchmark: func@1 and func-sec@1 per vulnerability class, without and with the security hint.

For each policy (default: the two scripted bounds, `always-insecure-fix` and `always-secure-fix`;
or any `module:function` mapping a Task to a patch) every task of the shipped security set
(`data/tasks/security_tasks.jsonl`) is attempted once without and once with the hint, graded in the
sandbox with the security reward (functional tests, exploit tests, bandit), and summarised per class
as CWEval / SecCodeBench do: func@1 = share of tasks whose functional tests pass, func-sec@1 = share
whose functional AND exploit tests pass. The scripted policies must be told apart exactly (insecure:
1.00 / 0.00 in every class, secure: 1.00 / 1.00); the JSON records whether they were.

Run: `.venv/bin/python bench/security.py [--per-class N] [--backend local|docker] [--workers 2]
      [--policies always-insecure-fix,always-secure-fix] [--tasks FILE]` -> bench/results/security.json
(or --out). `minicoder eval --predictions ...` grades a model's patches on the same tasks; the
per-class table of its results is `minicoder.sandbox.security.security_report`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minicoder.machine import machine_info  # noqa: E402
from minicoder.record import read_tasks  # noqa: E402
from minicoder.sandbox.security import (
    format_security_table,  # noqa: E402
    security_report,  # noqa: E402
)
from minicoder.tasks.security import classes  # noqa: E402
from minicoder.tasks.security_suite import SCRIPTED, grade, load_policy, one_per_class  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def separated(reports: dict[str, dict]) -> bool:
    """Do the two scripted policies get exactly 1/0 (insecure) and 1/1 (secure) in every class and setting?"""
    want = {"always-insecure-fix": (1.0, 0.0), "always-secure-fix": (1.0, 1.0)}
    if not set(want) <= set(reports):
        return False
    for name, (f, fs) in want.items():
        for per in reports[name]["classes"].values():
            for cell in per.values():
                if (cell["func@1"], cell["func-sec@1"]) != (f, fs):
                    return False
    return True


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default=str(ROOT / "data" / "tasks" / "security_tasks.jsonl"))
    ap.add_argument("--policies", default=",".join(SCRIPTED))
    ap.add_argument("--per-class", type=int, default=None, help="only the first N tasks of each class")
    ap.add_argument("--backend", choices=("local", "docker"), default="local")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS / "security.json"))
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    tasks = read_tasks(args.tasks)
    if args.per_class:
        tasks = one_per_class(tasks, args.per_class)
    cwe = {k: c.cwe for k, c in classes().items()}
    out = {"date": datetime.now(UTC).replace(microsecond=0).isoformat(), "command": " ".join(["bench/security.py",
           *(argv if argv is not None else sys.argv[1:])]), "tasks_file": str(Path(args.tasks).relative_to(ROOT))
           if Path(args.tasks).resolve().is_relative_to(ROOT) else args.tasks, "n_tasks": len(tasks),
           "backend": args.backend, "workers": args.workers, "policies": {}}
    for name in args.policies.split(","):
        t0 = time.perf_counter()
        rows = grade(tasks, load_policy(name), backend=args.backend, workers=args.workers, progress=not args.quiet)
        rep = security_report(rows, tasks)
        secs = time.perf_counter() - t0
        statuses: dict[str, int] = {}
        for r in rows:
            statuses[r["status"]] = statuses.get(r["status"], 0) + 1
        out["policies"][name] = {"report": rep, "seconds": round(secs, 1), "statuses": statuses,
                                 "static_penalised": sum(1 for r in rows if r.get("penalty", 0) > 0)}
        print(f"\n== {name}  ({len(tasks)} tasks x 2 settings, {secs:.0f}s)")
        print(format_security_table(rep, cwe))
    out["separated"] = separated({k: v["report"] for k, v in out["policies"].items()})
    out["machine"] = machine_info(())
    print(f"\nscripted policies told apart exactly: {out['separated']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"results: {args.out}")
    return out


if __name__ == "__main__":
    main()
