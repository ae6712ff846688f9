"""`minicoder model`: inspect model configs and checkpoints without loading weights.

    minicoder model info --preset full --seq-len 32768      parameters, FLOPs, training memory, cache size
    minicoder model info --config path/to/config.json
    minicoder model info --preset toy --set num_experts=32 --set layer_types=linear,linear,linear,full
    minicoder model check path/to/checkpoint/               every tensor present, no extra, right shapes

Everything runs on the meta device (safetensors headers only for `check`), so the 80B config is
instant on a laptop.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="parameter / FLOP / memory accounting; validate a checkpoint")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = actions.add_parser("info", help="accounting for a preset or a config.json")
    src = info.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=["toy", "small", "full"], default="full")
    src.add_argument("--config", type=Path, help="an HF-format config.json (or a checkpoint folder)")
    from minicoder.config import add_set_argument

    add_set_argument(info)
    info.add_argument("--seq-len", type=int, default=4096, help="sequence length for FLOPs / cache (default 4096)")
    info.add_argument("--shards", type=int, default=1, help="divide training memory over this many GPUs (FSDP)")
    info.set_defaults(func=run_info)
    check = actions.add_parser("check", help="validate a checkpoint folder against its config.json")
    check.add_argument("path", type=Path)
    check.set_defaults(func=run_check)


def _gib(n: float) -> str:
    return f"{n / 2**30:,.2f} GiB"


def run_info(args: argparse.Namespace) -> int:
    from minicoder.config import ConfigError, ModelConfig, apply_overrides
    from minicoder.errors import UserError
    from minicoder.model.accounting import count_parameters, flops_per_token, memory_plan, summary
    from minicoder.model.cache import cache_bytes_per_token

    try:
        if args.config is not None:
            path = args.config / "config.json" if args.config.is_dir() else args.config
            if not path.exists():
                raise UserError(f"{path}: no such file")
            cfg = ModelConfig.from_json(path)
        else:
            cfg = ModelConfig.from_preset(args.preset)
        cfg = apply_overrides(cfg, args.overrides)
    except ConfigError as e:
        raise UserError(str(e)) from e
    if args.seq_len < 1 or args.shards < 1:
        raise UserError("--seq-len and --shards must be positive")
    pc = count_parameters(cfg)
    n_attn = cfg.layer_types.count("full_attention")
    print(f"layers: {cfg.num_hidden_layers} ({cfg.num_hidden_layers - n_attn} Gated DeltaNet, {n_attn} gated attention), "
          f"hidden {cfg.hidden_size}, experts {cfg.num_experts} top-{cfg.num_experts_per_tok}, MTP {cfg.num_nextn_predict_layers}")
    print(summary(cfg, seq_len=args.seq_len))
    train = flops_per_token(cfg, seq_len=args.seq_len, training=True)
    print(f"training FLOPs per token (3x forward)     {train['total']:.3e}")
    plan = memory_plan(cfg, shards=args.shards)
    print(f"training state, bf16 + fp32 master + AdamW{' per shard' if args.shards > 1 else ''}: {_gib(plan['total'])} "
          f"(params {_gib(plan['params'])}, grads {_gib(plan['grads'])}, master {_gib(plan['master'])}, "
          f"Adam {_gib(plan['optimizer'])})")
    cb = cache_bytes_per_token(cfg, dtype_bytes=2)
    kv = cb["kv_bytes_per_token"] * args.seq_len
    print(f"inference cache at {args.seq_len} tokens (bf16, batch 1): KV {_gib(kv)} + DeltaNet state "
          f"{_gib(cb['deltanet_state_bytes'])} (constant)")
    print(f"weights in bf16: {_gib(2 * pc.total)}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from minicoder.config import ConfigError
    from minicoder.errors import UserError
    from minicoder.model.hf import CheckpointError, check_checkpoint

    try:
        cfg, files, _ = check_checkpoint(args.path)
    except (CheckpointError, ConfigError) as e:
        raise UserError(str(e)) from e
    print(f"{args.path}: OK — {len(files)} tensors in {len(set(files.values()))} file(s), "
          f"{cfg.num_hidden_layers} layers, {cfg.num_experts} experts, MTP depth {cfg.num_nextn_predict_layers}")
    return 0
