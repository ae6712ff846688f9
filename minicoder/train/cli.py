"""`minicoder train`: pretrain or mid-train a model on packed data, with exact resume.

    minicoder train --config toy --data stdlib --steps 200 --out runs/pretrain
    minicoder train --config toy --data tasks:data/tasks/seed_tasks.jsonl --init runs/pretrain --steps 100 --out runs/mid
    minicoder train --config toy --steps 400 --out runs/pretrain --resume        # continue where it stopped
    torchrun --nproc-per-node 8 -m minicoder train --config small --steps 2000 --out runs/small   # FSDP2
    minicoder train --config full --plan                                          # memory plan, GPUs needed

--data: stdlib | humaneval | git:PATH | tasks:FILE (a task JSONL / HF dataset folder, turned into
agent trajectories; a path ending in .jsonl means the same). The tokenizer is --tokenizer, else the
run folder's tokenizer.json (on --resume / --init), else a byte-level BPE trained on the stdlib and
saved in the run folder. The model's vocabulary is set to the tokenizer's. The learning-rate schedule
spans --steps: resume with the same --steps (and data options) for a continuation identical to an
uninterrupted run (checked on CPU, one process and two-process FSDP2 alike).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    from minicoder.config import add_set_argument

    p = sub.add_parser("train", help="pretrain / mid-train on packed data (exact resume, torchrun + FSDP2)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="toy", help="toy | small | full | path to an HF config.json (default toy)")
    add_set_argument(p)
    p.add_argument("--data", default="stdlib", help="stdlib | humaneval | git:PATH | tasks:FILE (default stdlib)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps of the run (default 200)")
    p.add_argument("--out", type=Path, default=Path("runs/train"), help="run folder (default runs/train)")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--init", type=Path, help="start from these weights (checkpoint file or run folder); "
                   "fresh optimizer and schedule, e.g. mid-training after pretraining")
    p.add_argument("--plan", action="store_true", help="print the memory plan of --config and exit")
    p.add_argument("--gpus", type=int, help="GPU count for --plan (default: the fewest that fit)")
    p.add_argument("--gpu-gib", type=float, default=80.0, help="memory per GPU for --plan (default 80)")
    d = p.add_argument_group("data")
    d.add_argument("--seq-len", type=int, default=None, help="tokens per packed row (default 256; 4096 for --plan)")
    d.add_argument("--max-files", type=int, default=300, help="corpus documents (default 300; 0 = all)")
    d.add_argument("--tokenizer", type=Path, help="tokenizer.json or folder (default: see above)")
    d.add_argument("--vocab-size", type=int, default=4096, help="vocabulary when a BPE is trained (default 4096)")
    d.add_argument("--runner", default="sandbox", choices=("sandbox", "local", "formatted"),
                   help="how trajectory test observations are produced (default sandbox; local runs task code unisolated)")
    o = p.add_argument_group("optimisation")
    o.add_argument("--rows", type=int, default=4, help="packed rows per micro-batch per process (default 4)")
    o.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (default 1)")
    o.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    o.add_argument("--warmup", type=int, default=None, help="warmup steps (default: 10%% of --steps)")
    o.add_argument("--weight-decay", type=float, default=0.1)
    o.add_argument("--grad-clip", type=float, default=1.0)
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--ckpt-every", type=int, default=0, help="checkpoint every N steps (default: at the end)")
    o.add_argument("--keep-last", type=int, default=3, help="checkpoints kept (default 3)")
    o.add_argument("--compile", action="store_true", help="torch.compile the model")
    o.add_argument("--parallel", default="fsdp2", choices=("fsdp2", "ddp"), help="under torchrun (default fsdp2)")
    o.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    o.add_argument("--time-limit", type=float, default=None, help="stop (and checkpoint) after this many seconds")
    p.set_defaults(func=run)


def _err(msg: str):
    from minicoder.errors import UserError

    return UserError(msg)


def _plan(args) -> int:
    from minicoder.config import PRESETS, ModelConfig
    from minicoder.train.distributed import format_plan, gpus_needed, memory_plan

    cfg = ModelConfig.from_preset(args.config) if args.config in PRESETS else ModelConfig.from_json(args.config)
    cfg = cfg.replace(**args.model_overrides) if args.model_overrides else cfg
    n = args.gpus or gpus_needed(cfg, gpu_gib=args.gpu_gib, seq_len=args.seq_len)
    plan = memory_plan(cfg, n, seq_len=args.seq_len, gpu_gib=args.gpu_gib)
    print(f"memory plan for --config {args.config} (FSDP2, bf16 compute, fp32 AdamW, activation checkpointing):")
    print(format_plan(plan))
    if not args.gpus:
        print(f"fewest GPUs of {args.gpu_gib:.0f} GiB that fit: {n}")
    return 0


def _tokenizer(args, dist_rank: int):
    from minicoder.data.tokenizer import CodeTokenizer, train_tokenizer

    candidates = [args.tokenizer] if args.tokenizer else []
    if args.resume:
        candidates.append(args.out / "tokenizer.json")
    if args.init:
        base = args.init if args.init.is_dir() else args.init.parent.parent
        candidates.append(base / "tokenizer.json")
    for c in candidates:
        if c is not None and Path(c).exists():
            try:
                return CodeTokenizer.load(c)
            except (OSError, ValueError) as e:
                raise _err(f"cannot load tokenizer {c}: {e}") from None
    if args.tokenizer:
        raise _err(f"--tokenizer {args.tokenizer}: no such file or folder")
    from minicoder.data.corpus import iter_corpus

    n = max(50, min(400, args.max_files or 400))
    print(f"training a byte-level BPE tokenizer ({args.vocab_size} ids) on {n} stdlib files ...")
    return train_tokenizer([d.text for d in iter_corpus("stdlib", max_files=n, seed=0)], vocab_size=args.vocab_size)


def _dataset(args, tok):
    from minicoder.train.stages import corpus_dataset, trajectory_dataset

    data = args.data
    max_files = args.max_files or None
    if data.startswith("tasks:") or data.endswith(".jsonl"):
        from minicoder.record import TaskFormatError, read_tasks
        from minicoder.train.trajectories import build_trajectories

        path = data.split(":", 1)[1] if data.startswith("tasks:") else data
        try:
            tasks = read_tasks(path)
        except TaskFormatError as e:
            raise _err(f"--data {data}: {e}") from None
        if max_files:
            tasks = tasks[:max_files]
        trajs, skipped = build_trajectories(tasks, runner=args.runner, progress=True)
        print(f"trajectories: {len(trajs)} from {len(tasks)} tasks ({len(skipped)} skipped)")
        if not trajs:
            raise _err(f"--data {data}: no task gave a trajectory ({skipped[:1]})")
        return trajectory_dataset(trajs, tok, args.seq_len)
    if data in ("stdlib", "humaneval"):
        return corpus_dataset(tok, args.seq_len, source=data, max_files=max_files)
    if data.startswith("git:"):
        repo = data[4:]
        if not Path(repo).is_dir():
            raise _err(f"--data {data}: {repo} is not a folder")
        return corpus_dataset(tok, args.seq_len, source="git", path=repo, max_files=max_files)
    raise _err(f"--data {data!r}: expected stdlib, humaneval, git:PATH or tasks:FILE")


def run(args: argparse.Namespace) -> int:
    import torch

    from minicoder.config import PRESETS, ConfigError, ModelConfig, parse_overrides
    from minicoder.train import checkpoint as ckpt
    from minicoder.train.distributed import init_distributed, shard_model
    from minicoder.train.stages import build_model
    from minicoder.train.trainer import TrainConfig, Trainer

    try:  # bad --set values fail here, before any tokenizer is trained
        args.model_overrides = parse_overrides(getattr(args, "overrides", None))
        if args.config in PRESETS:
            ModelConfig.from_preset(args.config, **args.model_overrides)
        if args.plan:
            args.seq_len = args.seq_len or 4096
            return _plan(args)
    except ConfigError as e:
        raise _err(str(e)) from None
    args.seq_len = args.seq_len or 256
    if not (args.data in ("stdlib", "humaneval") or args.data.startswith(("git:", "tasks:"))
            or args.data.endswith(".jsonl")):
        raise _err(f"--data {args.data!r}: expected stdlib, humaneval, git:PATH or tasks:FILE")
    if args.steps < 1 or args.seq_len < 8 or args.rows < 1 or args.grad_accum < 1:
        raise _err("--steps, --rows and --grad-accum must be >= 1 and --seq-len >= 8")
    if args.resume and args.init:
        raise _err("--resume and --init exclude each other (resume continues a run, init starts a new one)")
    if args.resume and ckpt.latest_checkpoint(args.out / "checkpoints") is None:
        raise _err(f"--resume: no checkpoint in {args.out / 'checkpoints'}")
    info, device = init_distributed(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    if info.enabled and info.rank != 0:  # rank 0 trains or loads the tokenizer; the others read its copy
        torch.distributed.barrier()
        tok = _tokenizer(argparse.Namespace(**{**vars(args), "tokenizer": args.out / "tokenizer.json"}), info.rank)
    else:
        tok = _tokenizer(args, info.rank)
        tok.save(args.out / "tokenizer.json")
        if info.enabled:
            torch.distributed.barrier()
    ds = _dataset(args, tok)
    try:
        model, mcfg = build_model(args.config, vocab_size=tok.vocab_size, seed=args.seed, device=str(device),
                                  **args.model_overrides)
    except (ConfigError, ValueError) as e:
        raise _err(str(e)) from None
    if args.init:
        try:
            state = ckpt.load_checkpoint(args.init)
        except ckpt.CheckpointError as e:
            raise _err(str(e)) from None
        missing = model.load_state_dict(state["model"], strict=False)
        if missing.missing_keys or missing.unexpected_keys:
            raise _err(f"--init {args.init}: weights do not match --config {args.config} "
                       f"(missing {missing.missing_keys[:3]}, unexpected {missing.unexpected_keys[:3]})")
    model = shard_model(model, info, args.parallel)
    warmup = args.warmup if args.warmup is not None else max(1, args.steps // 10)
    cfg = TrainConfig(steps=args.steps, rows=args.rows, grad_accum=args.grad_accum, lr=args.lr, warmup_steps=warmup,
                      weight_decay=args.weight_decay, grad_clip=args.grad_clip, seed=args.seed, compile=args.compile,
                      ckpt_every=args.ckpt_every, keep_last=args.keep_last)
    if info.rank == 0:
        mcfg.to_json(args.out / "config.json")
    tr = Trainer(model, ds, cfg, out_dir=args.out, dist=info, model_config=mcfg,
                 extra_state={"tokenizer": str(args.out / "tokenizer.json"), "data": args.data})
    if args.resume:
        try:
            tr.resume()
        except (ckpt.CheckpointError, ValueError) as e:
            raise _err(f"--resume: {e}") from None
        if info.rank == 0:
            print(f"resumed at step {tr.step}")
    if info.rank == 0:
        n = sum(p.numel() for p in model.parameters())  # DTensor.numel() is the global size
        print(f"train: {args.config} model (~{n / 1e6:.1f}M parameters) on {device}, {len(ds)} rows of "
              f"{args.seq_len} tokens, {info.world_size} process(es), global batch "
              f"{info.world_size * cfg.grad_accum * cfg.rows} rows")
    recs = tr.fit(time_limit_s=args.time_limit)
    tr.close()
    if info.rank == 0 and recs:
        summary = {"step": tr.step, "loss": recs[-1]["loss"], "checkpoint": str(ckpt.latest_checkpoint(tr.ckpt_dir))}
        print(json.dumps(summary))
    if info.enabled:
        torch.distributed.destroy_process_group()
    return 0

