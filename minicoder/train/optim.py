"""AdamW parameter groups: which parameters get weight decay, and why.

Policy (decided per parameter from the module that owns it, not from its name alone):
  - decay: every weight matrix and tensor of rank >= 2 (linear layers, stacked experts
    ``[E, 2I, H]``, the depthwise conv of Gated DeltaNet, the LM head when untied);
  - decay: the weights of zero-centred RMSNorms (`minicoder.model.norm.RMSNorm`, y = x/rms * (1 + w),
    w init 0). As in Qwen3-Next, decay pulls w toward 0, i.e. the effective scale toward 1: it keeps
    norm scales from drifting to the huge values that plain (1-initialised) norm weights reach;
  - no decay: the plain-scale weight of the gated RMSNorm in Gated DeltaNet (init 1): decay would
    pull its scale toward 0, the opposite of the intent; any other 1-D norm weight likewise;
  - no decay: biases (shifts, not scales);
  - no decay: token embeddings (a row only gets a gradient when its token occurs, but decoupled
    decay would shrink every row every step, so rare tokens would fade);
  - no decay: the Gated DeltaNet dynamics ``A_log`` and ``dt_bias`` (they set the forgetting time
    scales; decay would push all heads toward the same decay rate; fla and HF exempt them too).
"""

from __future__ import annotations

import torch
from torch import nn

NO_DECAY_NAMES = ("A_log", "dt_bias")


def _is_zero_centred_norm(module: nn.Module) -> bool:
    try:
        from minicoder.model.norm import RMSNorm
    except ImportError:  # the model stage is absent: fall back on the naming convention
        return type(module).__name__ == "RMSNorm"
    return isinstance(module, RMSNorm)


def decay_policy(model: nn.Module) -> dict[str, bool]:
    """{parameter name: gets weight decay} for every trainable parameter (shared ones listed once)."""
    out: dict[str, bool] = {}
    seen: set[int] = set()
    for mname, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{mname}.{pname}" if mname else pname
            if pname in NO_DECAY_NAMES or pname == "bias" or isinstance(module, nn.Embedding):
                decay = False
            elif _is_zero_centred_norm(module):
                decay = True
            elif p.ndim < 2:
                decay = False  # other 1-D parameters: plain norm scales and the like
            else:
                decay = True
            out[full] = decay
    return out


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups (decay / no decay) with their parameter names, in a stable order."""
    policy = decay_policy(model)
    params = dict(model.named_parameters())
    groups = []
    for decay in (True, False):
        names = [n for n, d in policy.items() if d == decay]
        if names:
            groups.append({"params": [params[n] for n in names], "names": names,
                           "weight_decay": weight_decay if decay else 0.0})
    return groups


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float] = (0.9, 0.95),
                   eps: float = 1e-8, fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over `param_groups`; ``fused`` AdamW on CUDA when not told otherwise."""
    if fused is None:
        fused = any(p.is_cuda for p in model.parameters())
    groups = param_groups(model, weight_decay)
    for g in groups:
        g.pop("names")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)
