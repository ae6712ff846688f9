"""`minicoder rl` (GRPO in sandboxes) and `minicoder warmstart` (mid-training on scripted episodes).

    minicoder warmstart --tasks toy:train:1500 --steps 300 --out runs/warm       # -> runs/warm/final
    minicoder rl --config toy --init runs/warm/final --tasks toy:train:2000 --steps 30 --group 8 --out runs/rl
    minicoder rl ... --executor ray --rollout-workers 2 --eval-workers 2
    minicoder rl ... --resume            # after Ctrl-C: continue from the last checkpoint, nothing lost

--tasks: a task JSONL / HF dataset folder, or ``toy:SPLIT[:N[:SEED]]`` (the toy family, generated).
--init: a model folder (config.json + safetensors + tokenizer.json) as `warmstart` and `rl` write
them in ``OUT/final``. The run folder gets checkpoints/, metrics.jsonl, rl.html (the curves) and,
at the end, final/ (the trained model, for `eval-agent --policy local:OUT/final` or `serve`).
--config picks the recipe: ``toy`` (toy tools, short contexts) or ``swe`` (all tools, bash, longer).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PRESETS = {
    "toy": {"limits": {"max_turns": 8, "max_context_tokens": 1400, "max_new_tokens": 96}, "tools": "toy"},
    "swe": {"limits": {"max_turns": 20, "max_context_tokens": 8192, "max_new_tokens": 512}, "tools": "swe"},
}


def load_tasks(spec: str):
    """Tasks from a file, or the toy family from ``toy:SPLIT[:N[:SEED]]``."""
    if spec.startswith("toy:"):
        from minicoder.rl.toy_tasks import generate

        parts = spec.split(":")[1:]
        split = parts[0] if parts else "train"
        n = int(parts[1]) if len(parts) > 1 else 1000
        seed = int(parts[2]) if len(parts) > 2 else 0
        return generate(split, n, seed)
    from minicoder.record import read_tasks

    return read_tasks(spec)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rl", help="GRPO on tasks in sandboxes: rollout -> evaluation -> update (local or Ray)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="toy", choices=sorted(PRESETS), help="recipe preset (default toy)")
    p.add_argument("--init", type=Path, help="model folder to start from (required unless --resume)")
    p.add_argument("--tasks", default="toy:train:2000", help="task file or toy:SPLIT[:N[:SEED]]")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--group", type=int, default=8, help="rollouts per task (G)")
    p.add_argument("--tasks-per-step", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--staleness", type=int, default=1, choices=(0, 1), help="0 synchronous, 1 pipelined (default)")
    p.add_argument("--executor", default="local", choices=("local", "ray"))
    p.add_argument("--rollout-workers", type=int, default=1)
    p.add_argument("--eval-workers", type=int, default=2)
    p.add_argument("--gen-threads", type=int, default=1, help="torch threads for generation (default 1)")
    p.add_argument("--update-threads", type=int, default=1, help="torch threads for the update (ray driver)")
    p.add_argument("--backend", default="local", choices=("local", "docker"))
    p.add_argument("--loss-agg", default="seq_mean_token_sum_norm", choices=("seq_mean_token_sum_norm", "token_mean"))
    p.add_argument("--advantage", default="mean", choices=("mean", "loo"))
    p.add_argument("--std-norm", action="store_true")
    p.add_argument("--kl-coef", type=float, default=0.0)
    p.add_argument("--unfinished", default="zero", choices=("zero", "mask"))
    p.add_argument("--invalid-penalty", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--out", type=Path, default=Path("runs/rl"))
    p.set_defaults(func=run)


def add_warmstart_parser(sub: argparse._SubParsersAction) -> None:
    w = sub.add_parser("warmstart", help="mid-train a model on scripted toy-family episodes (the RL warm start)",
                       description="Record scripted episodes with the agent loop in real sessions, then mid-train.")
    w.add_argument("--tasks", default="toy:train:3000:1", help="toy-family tasks (toy:SPLIT[:N[:SEED]])")
    w.add_argument("--steps", type=int, default=800)
    w.add_argument("--lr", type=float, default=3e-3)
    w.add_argument("--model", default="toy", help="model preset (default toy)")
    w.add_argument("--backend", default="local", choices=("local", "docker"))
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--loss-on", default="episode", choices=("episode", "assistant"),
                   help="train on every token after the system turn (default) or on the scripted turns only")
    w.add_argument("--code-docs", type=int, default=20000,
                   help="also train on the correct code of this many other train tasks (copy practice; "
                        "default 20000, 0 for episodes only)")
    w.add_argument("--out", type=Path, default=Path("runs/warm"))
    w.add_argument("--resume", action="store_true")
    from minicoder.config import add_set_argument

    add_set_argument(w)
    w.set_defaults(func=run_warmstart)


def _user_error(msg: str):
    from minicoder.errors import UserError

    return UserError(msg)


def run(args: argparse.Namespace) -> int:
    import torch

    from minicoder.agent.loop import AgentLimits
    from minicoder.agent.policies import load_model_folder
    from minicoder.agent.tools import ToolConfig
    from minicoder.rl.grpo import GRPOConfig
    from minicoder.rl.pipeline import RLConfig, RLRun

    if args.steps < 1 or args.group < 2 or args.tasks_per_step < 1:
        raise _user_error("--steps and --tasks-per-step must be >= 1 and --group >= 2 (GRPO compares within a group)")
    preset = PRESETS[args.config]
    init = args.init
    if args.resume:
        init = args.out / "init"
    if init is None:
        raise _user_error("--init MODEL_FOLDER is required (or --resume)")
    try:
        model, tok = load_model_folder(init)
    except (FileNotFoundError, ValueError) as e:
        raise _user_error(f"--init {init}: {e}") from None
    try:
        tasks = load_tasks(args.tasks)
    except (ValueError, OSError) as e:
        raise _user_error(f"--tasks {args.tasks}: {e}") from None
    if not tasks:
        raise _user_error(f"--tasks {args.tasks}: no tasks")
    tools = ToolConfig.toy() if preset["tools"] == "toy" else ToolConfig.swe()
    cfg = RLConfig(steps=args.steps, tasks_per_step=args.tasks_per_step, group=args.group, seed=args.seed,
                   lr=args.lr, max_staleness=args.staleness, executor=args.executor, backend=args.backend,
                   rollout_workers=args.rollout_workers, eval_workers=args.eval_workers,
                   gen_threads=args.gen_threads, update_threads=args.update_threads,
                   grpo=GRPOConfig(loss_agg=args.loss_agg, advantage=args.advantage, std_norm=args.std_norm,
                                   kl_coef=args.kl_coef, unfinished=args.unfinished,
                                   invalid_penalty=args.invalid_penalty,
                                   norm_len=preset["limits"]["max_new_tokens"] * preset["limits"]["max_turns"] // 2),
                   limits=AgentLimits(**preset["limits"]), tools=tools)
    torch.set_num_threads(args.gen_threads)
    if not args.resume:
        from minicoder.model.hf import save_pretrained

        save_pretrained(model, args.out / "init")
        tok.save(args.out / "init")
    try:
        r = RLRun(cfg, model, tok, tasks, args.out, resume=args.resume)
    except FileNotFoundError as e:
        raise _user_error(str(e)) from None
    except RuntimeError as e:
        raise _user_error(str(e)) from None
    print(f"rl: {len(tasks)} tasks, {cfg.steps} steps x {cfg.tasks_per_step} tasks x G={cfg.group}, "
          f"{cfg.executor} executor, staleness {cfg.max_staleness}, threads gen {cfg.gen_threads} / "
          f"update {cfg.update_threads}, {cfg.eval_workers} graders; starting at step {r.trainer.step}")
    try:
        r.fit()
    finally:
        r.close()
    from minicoder.rl.report import export_final, plot_rl

    export_final(r.trainer.model, tok, args.out / "final")
    plot_rl(args.out / "metrics.jsonl").write_html(args.out / "rl.html", include_plotlyjs="cdn")
    last = r.records[-1] if r.records else {}
    print(json.dumps({"step": r.trainer.step, "reward_mean": last.get("reward_mean"), "final": str(args.out / "final")}))
    return 0


def run_warmstart(args: argparse.Namespace) -> int:
    from minicoder.config import parse_overrides
    from minicoder.rl.warmstart import warm_start

    if not args.tasks.startswith("toy:"):
        raise _user_error("--tasks must be toy:SPLIT[:N[:SEED]]: scripted episodes exist for the toy family only")
    tasks = load_tasks(args.tasks)
    res = warm_start(tasks, args.out, steps=args.steps, lr=args.lr, model_preset=args.model, backend=args.backend,
                     seed=args.seed, resume=args.resume, loss_on=args.loss_on, code_docs=args.code_docs,
                     **parse_overrides(getattr(args, "overrides", None)))
    print(json.dumps(res))
    return 0
