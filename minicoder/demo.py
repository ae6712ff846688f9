"""`minicoder demo`: the end-to-end toy pipeline on this machine, every stage for real, in minutes.

corpus -> tokenizer -> Best-Fit packed batches -> hybrid MoE model (accounting + toy pretraining)
-> synthesized, validated tasks (HumanEval bug injection) -> sandboxed test rewards.

Each stage is a function of the output folder, prints what it did, and leaves its artifacts there
(tokenizer.json, packed.npz, train/ checkpoints and metrics, tasks.jsonl, rewards.jsonl). The
stages run in order; `--only STAGE` runs one (later stages reuse earlier artifacts when present).
The sandbox backend is Docker when an engine answers, else the bubblewrap namespace sandbox.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

from minicoder.sandbox.cli import add_backend_argument, resolve_backend


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the end-to-end toy pipeline on this machine",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="where artifacts go (default: runs/demo)")
    p.add_argument("--only", choices=[name for name, _ in STAGES], help="run just this stage")
    add_backend_argument(p, auto=True, default="auto")
    p.add_argument("--train-steps", type=int, default=80, help="toy pretraining steps (default: 80)")
    p.set_defaults(func=run)


def stage_data(out: Path, args: argparse.Namespace) -> None:
    from minicoder.data import demo_stage

    demo_stage(out)


def stage_model(out: Path, args: argparse.Namespace) -> None:
    from minicoder.config import ModelConfig
    from minicoder.model.accounting import count_parameters

    print(f"{'preset':8s} {'layers':>6s} {'hidden':>6s} {'experts':>8s} {'total params':>14s} {'active/token':>14s}")
    for name in ("toy", "small", "full"):
        cfg = ModelConfig.from_preset(name)
        c = count_parameters(cfg)
        print(f"{name:8s} {cfg.num_hidden_layers:6d} {cfg.hidden_size:6d} {cfg.num_experts:5d}/{cfg.num_experts_per_tok:<2d} "
              f"{c.total_without_mtp / 1e9:13.3f}B {c.active_without_embeddings / 1e9:13.3f}B")
    print("(total without the MTP head; active per token without embedding and lm_head, the '3B' of 80B-A3B)")


def stage_train(out: Path, args: argparse.Namespace) -> None:
    from minicoder.train import demo_stage

    res = demo_stage(out, steps=args.train_steps)
    if not res["last_loss"] < res["first_loss"]:
        raise RuntimeError(f"toy pretraining did not lower the loss: {res['first_loss']:.3f} -> {res['last_loss']:.3f}")


def stage_tasks(out: Path, args: argparse.Namespace) -> None:
    from minicoder.data.corpus import humaneval_problems
    from minicoder.tasks.mutate import humaneval_subject
    from minicoder.tasks.pipeline import synth_mutate

    subjects = [humaneval_subject(p) for p in humaneval_problems()[:6]]
    summary = synth_mutate(subjects, out / "tasks.jsonl", per_subject=2, backend=args.backend_resolved,
                           workers=2, max_tasks=6)
    print(summary.table())


def stage_rewards(out: Path, args: argparse.Namespace) -> None:
    from minicoder.record import read_tasks
    from minicoder.sandbox import evaluate
    from minicoder.sandbox.examples import demo_task, hostile_patches

    tasks_file = out / "tasks.jsonl"
    task = read_tasks(tasks_file)[0] if tasks_file.exists() and tasks_file.stat().st_size else demo_task()
    attempts: list[tuple[str, str]] = [("gold patch", task.patch), ("empty patch", "")]
    calc = demo_task()
    hostile = hostile_patches()
    picks = [n for n in ("fake_passed", "conftest", "sys_exit_import", "edit_tests", "network") if n in hostile]
    attempts_calc = [("gold patch", calc.patch)] + [(f"hack: {n}", hostile[n].patch) for n in picks[:4]]
    rows = []
    for t, tries in ((task, attempts), (calc, attempts_calc)):
        for label, patch in tries:
            r = evaluate(t, patch, backend=args.backend_resolved)
            rows.append({"task": t.instance_id, "attempt": label, "reward": r.reward, "fraction": r.fraction,
                         "status": r.status, "seconds": round(r.duration_s, 2)})
    print(f"{'task':38s} {'attempt':24s} {'reward':>6s} {'fraction':>8s}  status")
    for r in rows:
        print(f"{r['task'][:38]:38s} {r['attempt'][:24]:24s} {r['reward']:6.1f} {r['fraction']:8.2f}  {r['status']}")
    with open(out / "rewards.jsonl", "w") as fh:
        for r in rows:
            fh.write(json.dumps(r) + "\n")
    gold = [r for r in rows if r["attempt"] == "gold patch"]
    if not all(r["reward"] == 1.0 for r in gold) or rows[1]["reward"] != 0.0:
        raise RuntimeError("rewards stage: a gold patch did not score 1 or the empty patch did not score 0")


STAGES: list[tuple[str, Callable[[Path, argparse.Namespace], None]]] = [
    ("data", stage_data),
    ("model", stage_model),
    ("train", stage_train),
    ("tasks", stage_tasks),
    ("rewards", stage_rewards),
]


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    stages = [(n, f) for n, f in STAGES if args.only in (None, n)]
    args.backend_resolved = resolve_backend(args.backend) if args.only in (None, "tasks", "rewards") else "local"
    print(f"minicoder demo: {len(stages)} stage(s), artifacts in {out}/, sandbox backend: {args.backend_resolved}")
    t_all = time.perf_counter()
    for name, fn in stages:
        t0 = time.perf_counter()
        print(f"\n=== {name}")
        fn(out, args)
        print(f"--- {name}: {time.perf_counter() - t0:.1f}s")
    print(f"\nminicoder demo: done in {time.perf_counter() - t_all:.0f}s; artifacts in {out}/")
    return 0
