"""`minicoder demo`: the command line of the end-to-end job (stages in stages.py, runner in pipeline.py)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

EPILOG = """examples:
  minicoder demo                       the default run (~10 minutes on 2 cores), artifacts in runs/demo/
  minicoder demo --quick               a few minutes (what the tests run)
  minicoder demo --full                bench/rl_toy.py's settings (once the RL stage is in)
  minicoder demo --from pretrain       re-run pretraining and everything after it
  minicoder demo --set num_experts=32  a different model: the stages from pretrain on re-run
A re-run skips every stage whose inputs and settings are unchanged; after Ctrl-C the same command
continues where it stopped."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from minicoder.config import add_set_argument
    from minicoder.demo.stages import STAGES
    from minicoder.sandbox.cli import add_backend_argument

    names = [s.name for s in STAGES]
    p = sub.add_parser("demo", help="run the end-to-end job on this machine, with a report",
                       description=("corpus -> tokenizer -> packing -> pretraining -> task synthesis -> agentic "
                                    "mid-training -> sandbox rewards on held-out tasks -> report.html + report.json. "
                                    "Stages: " + ", ".join(names)),
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=None,
                   help="demo folder (default: runs/demo; runs/demo-quick with --quick, runs/demo-full with --full)")
    profile = p.add_mutually_exclusive_group()
    profile.add_argument("--quick", action="store_true", help="the small profile (a few minutes; the tests use it)")
    profile.add_argument("--full", action="store_true",
                         help="reproduce bench/rl_toy.py (needs the RL and eval stages; says so when they are absent)")
    p.add_argument("--from", dest="from_stage", choices=names, metavar="STAGE",
                   help=f"re-run this stage and every later one ({', '.join(names)})")
    p.add_argument("--only", choices=names, metavar="STAGE", help="run just this stage (earlier ones must have run)")
    add_backend_argument(p, auto=True, default="auto")
    p.add_argument("--train-steps", type=int, default=None, help="pretraining steps (default: the profile's)")
    p.add_argument("--list", action="store_true", help="list the stages and whether each is cached, then exit")
    add_set_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from minicoder.config import ConfigError
    from minicoder.demo.pipeline import load_results, read_record, run_stages
    from minicoder.demo.report import write_report
    from minicoder.demo.stages import STAGES, full_profile_problem, model_config
    from minicoder.errors import UserError
    from minicoder.sandbox.cli import resolve_backend

    args.profile = "quick" if args.quick else "full" if getattr(args, "full", False) else "default"
    if args.profile == "full" and (problem := full_profile_problem(STAGES)):
        raise UserError(problem)
    out: Path = args.out or Path({"quick": "runs/demo-quick", "full": "runs/demo-full"}.get(args.profile, "runs/demo"))
    try:
        model_config(args)  # a bad --set fails now, with the config's own message
    except ConfigError as e:
        raise UserError(str(e)) from None
    if args.train_steps is not None and args.train_steps < 1:
        raise UserError("--train-steps must be >= 1")
    if args.list:
        for s in STAGES:
            rec = read_record(out, s.name)
            state = "not run" if rec is None else ("done" if rec.status == "done" else "interrupted")
            print(f"{s.name:10s} {state:12s} {s.help}")
        return 0
    needs_sandbox = args.only in (None, "tasks", "rewards", "midtrain") or args.from_stage is not None
    args.backend_resolved = resolve_backend(args.backend) if needs_sandbox else "local"
    print(f"minicoder demo ({args.profile}): {len(STAGES)} stages, artifacts in {out}/, "
          f"sandbox backend: {args.backend_resolved}")
    t0 = time.perf_counter()
    try:
        ran = run_stages(STAGES, out, args, from_stage=args.from_stage, only=args.only)
    except KeyboardInterrupt:
        print(f"\nminicoder demo: interrupted; run the same command again to continue where it stopped ({out}/)")
        raise
    seconds = time.perf_counter() - t0
    results = load_results(STAGES, out)
    html, summary = write_report(out, results, args.profile, seconds, [r.name for r in ran if not r.cached],
                                 options={"profile": args.profile, "backend": args.backend_resolved,
                                          "overrides": args.overrides, "from": args.from_stage, "only": args.only})
    print(f"\nreport: {html.resolve()}")
    print(summary)
    return 0
