"""Multi-process training: torchrun set-up, FSDP2 / DDP wrapping, full-state checkpoints, memory plans.

`torchrun --nproc-per-node N -m minicoder train ...` starts N copies of the same trainer. Each reads
RANK / WORLD_SIZE / LOCAL_RANK from the environment (`init_distributed`), takes its slice of every
global batch (`data.py`), and the wrapper averages gradients:
  - FSDP2 (`torch.distributed.fsdp.fully_shard`, the default): every decoder layer (and the MTP head)
    is its own shard group, then the root. Parameters, gradients and AdamW state are sharded over
    ranks (1/N each); a layer's full parameters exist only while it computes. On CUDA the
    all-gathered parameters are bf16 and gradients are reduced in float32 (MixedPrecisionPolicy).
    FSDP2 runs on CPU with the gloo backend too, which is how the tests check it.
  - DDP: full replicas, gradients all-reduced; the fallback where FSDP2 is unavailable.
Backends: NCCL on CUDA, gloo on CPU.

Checkpoints stay single-file and topology-free: `full_state_dicts` gathers full (unsharded) model
and optimizer state dicts (`torch.distributed.checkpoint.state_dict` with full_state_dict=True, CPU
offload), rank 0 writes them, and `load_full_state_dicts` scatters them back into whatever sharding
the resumed run uses (a run saved on 2 GPUs can resume on 1 or 4).

Memory plan (`memory_plan`, `gpus_needed`): bytes per GPU for a config under FSDP2 = sharded
parameters + gradients + AdamW moments (float32: 4 + 4 + 8 bytes per parameter, divided by N) +
the largest layer gathered unsharded in bf16 (two at a time: FSDP prefetches the next) + activations
of one micro-batch (with activation checkpointing: each layer's bf16 input kept for the backward, plus
one layer's working set recomputed at a time) + logits. The training-state bytes come from
`minicoder.model.accounting.memory_plan`, layer sizes from the model built on the meta device (no
memory is allocated). It is an estimate to plan with, not a measurement.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # None: not distributed

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> tuple[DistInfo, torch.device]:
    """Join the process group torchrun describes in the environment (or run alone if it doesn't).

    Returns (info, device): cuda:LOCAL_RANK with NCCL when CUDA is there (and `device` isn't "cpu"),
    else CPU with gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    dev = torch.device(f"cuda:{local}") if use_cuda else torch.device(device or "cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world <= 1:
        return DistInfo(), dev
    backend = "nccl" if use_cuda else "gloo"
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend=backend, device_id=dev if use_cuda else None)
    return DistInfo(rank, world, local, backend), dev


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of `t` over ranks (a copy; `t` unchanged). Gloo and NCCL both: moved to the right device."""
    if not info.enabled:
        return t.clone()
    dev = torch.device(f"cuda:{info.local_rank}") if info.backend == "nccl" else torch.device("cpu")
    x = t.detach().to(dev, torch.float64 if info.backend == "gloo" else torch.float32).clone()
    torch.distributed.all_reduce(x)
    return x.to(t.dtype).cpu()


def shard_model(model: nn.Module, info: DistInfo, mode: str = "fsdp2") -> nn.Module:
    """Wrap for data parallel training: "fsdp2" (in place; returns the same module), "ddp", or "none"."""
    if not info.enabled or mode == "none":
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        dev = next(model.parameters()).device
        return DDP(model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if mode != "fsdp2":
        raise ValueError(f"unknown parallel mode {mode!r}; choose fsdp2, ddp or none")
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    dev = next(model.parameters()).device
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if dev.type == "cuda" \
        else MixedPrecisionPolicy()
    inner = getattr(model, "model", model)
    for layer in getattr(inner, "layers", []):
        fully_shard(layer, mp_policy=mp)
    if getattr(model, "mtp", None) is not None:
        fully_shard(model.mtp, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model


def _is_sharded(model: nn.Module) -> bool:
    return any(hasattr(p, "full_tensor") for p in model.parameters())


def full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo
                     ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model, optimizer) state dicts with full tensors on CPU, the same on every topology."""
    inner = model.module if hasattr(model, "module") else model
    if not info.enabled or not _is_sharded(inner):
        return ({k: v.detach().cpu().clone() for k, v in inner.state_dict().items()},
                _cpu(optimizer.state_dict()))
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd, osd = get_state_dict(inner, optimizer, options=opts)
    return msd, osd


def load_full_state_dicts(model: nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict[str, Any],
                          optim_sd: dict[str, Any], info: DistInfo) -> None:
    inner = model.module if hasattr(model, "module") else model
    if not info.enabled or not _is_sharded(inner):
        inner.load_state_dict(model_sd)
        optimizer.load_state_dict(optim_sd)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(inner, optimizer, model_state_dict=model_sd, optim_state_dict=optim_sd,
                   options=StateDictOptions(full_state_dict=True))


def _cpu(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().clone()
    if isinstance(x, dict):
        return {k: _cpu(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_cpu(v) for v in x]
    return x


# --- memory plan ------------------------------------------------------------------------------------

GIB = 1024 ** 3


_COUNTS: dict[str, dict[str, Any]] = {}


def _param_counts(cfg) -> dict[str, Any]:
    """Total parameters, the largest decoder layer, and the unsharded fp32 AdamW training-state bytes
    (`minicoder.model.accounting.memory_plan`), from meta-device models; cached per config."""
    key = repr(cfg)
    if key not in _COUNTS:
        _COUNTS[key] = _count(cfg)
    return _COUNTS[key]


def _count(cfg) -> dict[str, Any]:
    from minicoder.model import HybridLM
    from minicoder.model.accounting import memory_plan as state_bytes

    with torch.device("meta"):
        m = HybridLM(cfg)
    total = sum(p.numel() for p in m.parameters())
    embed = m.model.embed_tokens.weight.numel() + (0 if cfg.tie_word_embeddings else m.lm_head.weight.numel())
    layers = [sum(p.numel() for p in layer.parameters()) for layer in m.model.layers]
    if m.mtp is not None:
        layers.append(sum(p.numel() for p in m.mtp.parameters()))
    # FSDP2 keeps float32 parameters (no separate master copy), float32 grads and AdamW's two float32
    # moments: 16 bytes per parameter before sharding
    state = state_bytes(cfg, param_dtype=torch.float32, optimizer="adamw", shards=1)["total"]
    return {"total": total, "embed_and_head": embed, "largest_layer": max(layers) if layers else 0,
            "num_layers": len(m.model.layers), "state_bytes": state}


def memory_plan(cfg, n_gpus: int, seq_len: int = 4096, micro_batch: int = 1, activation_checkpointing: bool = True,
                gpu_gib: float = 80.0) -> dict[str, Any]:
    """Estimated bytes per GPU for training `cfg` (a ModelConfig) with FSDP2 over `n_gpus` GPUs.

    micro_batch x seq_len tokens per GPU per micro-batch; bf16 compute, float32 master weights,
    gradients and AdamW moments, all sharded. Returns a dict of GiB figures and whether it fits
    (under 90% of `gpu_gib`, leaving room for the allocator and communication buffers).
    """
    if n_gpus < 1:
        raise ValueError(f"n_gpus must be >= 1, got {n_gpus}")
    pc = _param_counts(cfg)
    P = pc["total"]
    tokens = seq_len * micro_batch
    H = cfg.hidden_size
    sharded = pc["state_bytes"] / n_gpus  # params + grads + AdamW moments, fp32, sharded N ways
    gathered = 2 * pc["largest_layer"] * 2  # two layers unsharded in bf16 (current + prefetched)
    # Working set of one layer during its (re)computation, bf16, per token: the mixer's projections
    # (q, k, v, gate, DeltaNet qkvz/ba ~ 4x hidden-ish), the MoE dispatch (top_k expert inputs and
    # SwiGLU intermediates) and the shared expert; a coarse upper bound of 34 * H bytes per token plus
    # the routed intermediates.
    moe_inter = cfg.num_experts_per_tok * cfg.moe_intermediate_size * 3 * 2 if cfg.num_experts else 0
    layer_work = tokens * (34 * H + moe_inter + cfg.shared_expert_intermediate_size * 3 * 2)
    if activation_checkpointing:
        acts = pc["num_layers"] * tokens * H * 2 + layer_work
    else:
        acts = pc["num_layers"] * layer_work
    logits = tokens * cfg.vocab_size * (2 + 4 + 4)  # bf16 logits, fp32 upcast for the loss, its grad
    total = sharded + gathered + acts + logits
    return {
        "n_gpus": n_gpus, "params_B": P / 1e9, "seq_len": seq_len, "micro_batch": micro_batch,
        "activation_checkpointing": activation_checkpointing,
        "params_grads_optim_GiB": sharded / GIB, "gathered_layers_GiB": gathered / GIB,
        "activations_GiB": acts / GIB, "logits_GiB": logits / GIB, "total_GiB": total / GIB,
        "gpu_GiB": gpu_gib, "fits": total <= 0.9 * gpu_gib * GIB,
    }


def gpus_needed(cfg, gpu_gib: float = 80.0, max_gpus: int = 4096, **kw: Any) -> int:
    """Smallest GPU count (a power of two, as FSDP jobs are laid out) at which `memory_plan` fits."""
    n = 1
    while n <= max_gpus:
        if memory_plan(cfg, n, gpu_gib=gpu_gib, **kw)["fits"]:
            return n
        n *= 2
    raise ValueError(f"does not fit on {max_gpus} GPUs of {gpu_gib} GiB (the non-sharded part is too big: "
                     "lower seq_len / micro_batch or turn on activation checkpointing)")


def format_plan(plan: dict[str, Any]) -> str:
    rows = [("parameters", f"{plan['params_B']:.2f} B"),
            ("params + grads + AdamW (fp32, sharded)", f"{plan['params_grads_optim_GiB']:.1f} GiB"),
            ("two layers gathered (bf16)", f"{plan['gathered_layers_GiB']:.2f} GiB"),
            (f"activations ({plan['micro_batch']} x {plan['seq_len']} tokens, "
             f"ckpt={'on' if plan['activation_checkpointing'] else 'off'})", f"{plan['activations_GiB']:.1f} GiB"),
            ("logits + loss", f"{plan['logits_GiB']:.1f} GiB"),
            (f"total per GPU ({plan['n_gpus']} GPUs)", f"{plan['total_GiB']:.1f} GiB"),
            (f"fits in 90% of {plan['gpu_GiB']:.0f} GiB", "yes" if plan["fits"] else "no")]
    w = max(len(a) for a, _ in rows)
    return "\n".join(f"  {a:<{w}}  {b:>12}" for a, b in rows)

