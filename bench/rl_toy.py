"""Benchmark: GRPO on a CPU raises the warm-started toy model's held-out pass@1 (the RL issue's key number).

From the warm-started checkpoint (the shipped checkpoints/toy-warm, trained by `minicoder
warmstart`; see minicoder/rl/warmstart.py), for each of 3 seeds: GRPO (`minicoder.rl.pipeline.RLRun`,
pipelined: rollouts one policy version stale) on the toy family's *train* split, then the agent
evaluated on the *held-out* split (other functions, other constants, other mutation tables) with the
real agent loop in sandbox sessions and the hidden tests as the grader. Reported, before and after:

  pass@1 greedy     one temperature-0 rollout per task
  pass@1 sampled    the mean reward of k samples at T = 1
  pass@k            the unbiased estimator over the same k samples

so a reader can tell sharpening (sampled pass@1 up towards pass@k, pass@k flat) from broadening
(pass@k up too). The gain is the mean over the seeds of (after - before) sampled pass@1, with its
spread (min, max, standard deviation).

Also measured: pipelined (max_staleness=1) against synchronous (max_staleness=0) wall time for the
same first steps of seed 0, and each step's time split into generation, tool calls, evaluation
(grading, summed over rollouts: it runs in parallel) and the update; thread counts and the machine's
load average are written with the results, since the machine is shared.

Run (about 30 minutes on an idle 2-core machine at the default 32 steps; nice -n 5 is applied):
    .venv/bin/python bench/rl_toy.py                       # from the shipped checkpoints/toy-warm
    .venv/bin/python bench/rl_toy.py --init runs/warm/final  # from one `minicoder warmstart --out runs/warm` trained
    .venv/bin/python bench/rl_toy.py --quick               # a smoke run: 1 seed, 2 steps, 4 tasks
Writes bench/results/rl_toy.json (learning curves per seed included). Work files go to
runs/bench_rl_toy/ (one folder per run; a re-run resumes finished parts: evaluations skip graded
rollouts, RL runs continue from their last checkpoint).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minicoder.agent.cli import session_opener  # noqa: E402
from minicoder.agent.evaluate import evaluate_agent, summarize  # noqa: E402
from minicoder.agent.loop import AgentLimits  # noqa: E402
from minicoder.agent.policies import LocalPolicy, load_model_folder  # noqa: E402
from minicoder.agent.tools import ToolConfig  # noqa: E402
from minicoder.machine import machine_info  # noqa: E402
from minicoder.rl.cli import PRESETS  # noqa: E402
from minicoder.rl.grpo import GRPOConfig  # noqa: E402
from minicoder.rl.pipeline import RLConfig, RLRun  # noqa: E402
from minicoder.rl.toy_tasks import generate  # noqa: E402
from minicoder.train.metrics import read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
LIMITS = AgentLimits(**PRESETS["toy"]["limits"])
TIME_KEYS = ("gen_s", "tool_s", "eval_s", "update_s", "rollout_s", "wait_s")


def evaluate(model, tok, tasks, k: int, out: Path, seed: int = 0) -> dict:
    """Greedy + k sampled rollouts per task on `tasks`; the summary (rows cached in `out`)."""
    model.eval()
    pol = LocalPolicy(model, tok, temperature=1.0)

    def set_temperature(t: float) -> None:
        pol.temperature = t

    t0, c0 = time.perf_counter(), time.process_time()
    rows = evaluate_agent(pol, tasks, session_opener("local"), k=k, tokenizer=tok, tool_cfg=ToolConfig.toy(),
                          limits=LIMITS, seed=seed, out=out, progress=False, set_temperature=set_temperature,
                          batch_tasks=8, workers=4)
    s = summarize(rows, k=k)
    s.update(wall_s=round(time.perf_counter() - t0, 1), cpu_s=round(time.process_time() - c0, 1))
    return s


def rl_config(args, seed: int, staleness: int, steps: int) -> RLConfig:
    lim = PRESETS["toy"]["limits"]
    return RLConfig(steps=steps, tasks_per_step=args.tasks_per_step, group=args.group, seed=seed, lr=args.lr,
                    warmup_steps=0, max_staleness=staleness, eval_workers=2, gen_threads=args.threads,
                    update_threads=args.threads, session_workers=4,
                    grpo=GRPOConfig(norm_len=lim["max_new_tokens"] * lim["max_turns"] // 2),
                    limits=LIMITS, tools=ToolConfig.toy())


def run_rl(args, init: Path, tasks, seed: int, staleness: int, steps: int, out: Path):
    """A GRPO run (resumed when `out` has a checkpoint); returns (model, tokenizer, records, wall, cpu)."""
    model, tok = load_model_folder(init)
    resume = (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir())
    r = RLRun(rl_config(args, seed, staleness, steps), model, tok, tasks, out, resume=resume, progress=True)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        r.fit()
    finally:
        r.close()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return r.trainer.model, tok, read_metrics(out / "metrics.jsonl"), wall, cpu, resume


def curve(records: list[dict]) -> list[dict]:
    keep = ("step", "reward_mean", "pass_rate", "zero_variance_frac", "entropy", "kl", "clip_frac", "turns_mean",
            "invalid_rate", "submitted_frac", "policy_tokens_mean", "staleness", "elapsed_s", *TIME_KEYS)
    return [{k: r.get(k) for k in keep} for r in records]


def time_split(records: list[dict]) -> dict:
    out = {k: round(sum(r.get(k) or 0.0 for r in records if r.get(k) == r.get(k)), 2) for k in TIME_KEYS}
    out["steps"] = len(records)
    return out


def spread(xs: list[float]) -> dict:
    return {"mean": statistics.fmean(xs), "min": min(xs), "max": max(xs),
            "std": statistics.stdev(xs) if len(xs) > 1 else 0.0, "values": xs}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init", type=Path, default=ROOT / "checkpoints" / "toy-warm",
                   help="warm-started model folder (default: the shipped one; runs/warm/final is a regenerated one)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--tasks-per-step", type=int, default=4)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--heldout", type=int, default=24, help="held-out tasks evaluated")
    p.add_argument("--k", type=int, default=8, help="sampled rollouts per held-out task")
    p.add_argument("--compare-steps", type=int, default=4, help="steps of the pipelined / synchronous comparison")
    p.add_argument("--threads", type=int, default=1, help="torch threads (generation and update)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_rl_toy")
    p.add_argument("--out", type=Path, default=RESULTS / "rl_toy.json")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 2 steps, 4 held-out tasks, k=2")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.heldout, args.k, args.compare_steps = "0", 2, 4, 2, 2
        args.tasks_per_step, args.group = 2, 4
        args.work = args.work.with_name(args.work.name + "_quick")
        args.out = args.out.with_name(args.out.stem + "_quick.json")
    if not (args.init / "config.json").is_file():
        raise SystemExit(f"{args.init}: no warm-started model; train one with `minicoder warmstart --out runs/warm` "
                         "and pass --init runs/warm/final")
    os.nice(5)
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",")]
    args.work.mkdir(parents=True, exist_ok=True)
    train_tasks = generate("train", 2000, seed=2)  # the warm start used seed 1: other train tasks
    held = generate("heldout", args.heldout, seed=0)
    recipe = args.init / "warmstart.json"  # written by `minicoder warmstart` (older folders lack it)
    res: dict = {"machine": machine_info(("torch",)), "init": str(args.init),
                 "init_recipe": json.loads(recipe.read_text()) if recipe.is_file() else None,
                 "config": {"seeds": seeds, "steps": args.steps, "group": args.group,
                            "tasks_per_step": args.tasks_per_step, "lr": args.lr, "heldout_tasks": len(held),
                            "k": args.k, "limits": PRESETS["toy"]["limits"],
                            "rl": rl_config(args, seeds[0], 1, args.steps).to_dict()},
                 "threads": {"torch": torch.get_num_threads(), "gen_threads": args.threads,
                             "update_threads": args.threads, "eval_workers": 2, "session_workers": 4,
                             "cpu_count": os.cpu_count()}}
    t_all, c_all = time.perf_counter(), time.process_time()
    model, tok = load_model_folder(args.init)
    print(f"before: evaluating {len(held)} held-out tasks (greedy + {args.k} samples)", flush=True)
    before = evaluate(model, tok, held, args.k, args.work / "eval_before.jsonl")
    res["before"] = before
    print(json.dumps({k: v for k, v in before.items() if k.startswith("pass@")}), flush=True)

    res["seeds"] = {}
    for seed in seeds:
        out = args.work / f"rl_seed{seed}"
        print(f"seed {seed}: GRPO {args.steps} steps x {args.tasks_per_step} tasks x G={args.group}", flush=True)
        m, tok, recs, wall, cpu, resumed = run_rl(args, args.init, train_tasks, seed, 1, args.steps, out)
        after = evaluate(m, tok, held, args.k, args.work / f"eval_after_seed{seed}.jsonl")
        res["seeds"][str(seed)] = {"after": after, "curve": curve(recs), "time_split": time_split(recs),
                                   "rl_wall_s": round(wall, 1), "rl_cpu_s": round(cpu, 1), "resumed": resumed}
        print(json.dumps({k: v for k, v in after.items() if k.startswith("pass@")}), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1) + "\n")  # partial results survive an interruption

    # pipelined vs synchronous: the same first steps of seed 0, staleness 1 (above) and 0 (here)
    n = min(args.compare_steps, args.steps)
    pipe = res["seeds"][str(seeds[0])]["curve"][:n]
    _, _, sync_recs, _, _, sync_resumed = run_rl(args, args.init, train_tasks, seeds[0], 0, n,
                                                 args.work / f"rl_sync_seed{seeds[0]}")
    res["pipelined_vs_sync"] = {
        "steps": n, "pipelined_wall_s": pipe[-1]["elapsed_s"], "sync_wall_s": sync_recs[n - 1]["elapsed_s"],
        "pipelined_split": time_split(pipe), "sync_split": time_split(sync_recs[:n]),
        "valid": not (res["seeds"][str(seeds[0])]["resumed"] or sync_resumed),  # elapsed restarts on a resume
    }
    gains = [res["seeds"][str(s)]["after"]["pass@1_sampled"] - before["pass@1_sampled"] for s in seeds]
    greedy = [res["seeds"][str(s)]["after"]["pass@1_greedy"] - before["pass@1_greedy"] for s in seeds]
    kk = next(k for k in before if k.startswith("pass@") and k[5:].isdigit())
    passk = [res["seeds"][str(s)]["after"][kk] - before[kk] for s in seeds]
    res["gain"] = {"pass@1_sampled": spread(gains), "pass@1_greedy": spread(greedy), kk: spread(passk),
                   "target": 0.10, "reached": statistics.fmean(gains) >= 0.10}
    res["total_wall_s"] = round(time.perf_counter() - t_all, 1)
    res["total_cpu_s_this_process"] = round(time.process_time() - c_all, 1)
    res["machine"]["load_average_at_end"] = list(os.getloadavg())
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print_table(res, kk)
    return 0


def print_table(res: dict, kk: str) -> None:
    b = res["before"]
    print(f"\nheld-out ({res['config']['heldout_tasks']} tasks, k={res['config']['k']})"
          f"{'':6}pass@1 greedy  pass@1 sampled  {kk:>7}")
    print(f"{'before (warm start)':<32}{b['pass@1_greedy']:>13.3f}{b['pass@1_sampled']:>16.3f}{b[kk]:>9.3f}")
    for s, d in res["seeds"].items():
        a = d["after"]
        print(f"{'after GRPO, seed ' + s:<32}{a['pass@1_greedy']:>13.3f}{a['pass@1_sampled']:>16.3f}{a[kk]:>9.3f}")
    g = res["gain"]
    print(f"{'gain, mean over seeds':<32}{g['pass@1_greedy']['mean']:>+13.3f}{g['pass@1_sampled']['mean']:>+16.3f}"
          f"{g[kk]['mean']:>+9.3f}")
    gs = g["pass@1_sampled"]
    print(f"sampled pass@1 gain: {gs['mean']:+.3f} (min {gs['min']:+.3f}, max {gs['max']:+.3f}, std {gs['std']:.3f}); "
          f"target +0.10: {'reached' if g['reached'] else 'NOT reached'}")
    c = res["pipelined_vs_sync"]
    print(f"\nwall time of the first {c['steps']} steps: pipelined {c['pipelined_wall_s']:.1f}s, synchronous "
          f"{c['sync_wall_s']:.1f}s ({c['sync_wall_s'] / max(c['pipelined_wall_s'], 1e-9):.2f}x)")
    print(f"{'time split (s)':<16}" + "".join(f"{k:>11}" for k in TIME_KEYS))
    for name, sp in (("pipelined", c["pipelined_split"]), ("synchronous", c["sync_split"])):
        print(f"{name:<16}" + "".join(f"{sp[k]:>11.1f}" for k in TIME_KEYS))
    print(f"\nthreads {res['threads']}; load average at start {res['machine'].get('load_average_at_start')}, "
          f"at end {res['machine']['load_average_at_end']}; total wall {res['total_wall_s']:.0f}s")


if __name__ == "__main__":
    raise SystemExit(main())
