"""Token-level losses on packed rows, shared by pretraining, mid-training and RL.

Targets are *pre-shifted* (the data stage's convention, `PackedBatch.labels`): `targets[t]` is the
token position t is trained to predict, -100 where nothing is (the last token of a document piece,
padding, non-assistant tokens). The trainer never rebuilds labels from a mask.

  - `token_loss_sum(logits, targets, weights=None)`: sum over loss-bearing positions of
    `weights[t] * CE(logits[t], targets[t])`. Without weights it is the plain summed cross-entropy
    (the pretraining / mid-training loss before the global token normaliser); with per-token
    weights it is the policy-gradient surrogate (weights = advantages, `-A_t log p(a_t)`), so the RL
    stage calls the same function with its own weights and normaliser.
  - `token_logprobs(logits, targets)`: log p(targets[t]) per position (0 where ignored), what the
    RL stage stores as behaviour log-probabilities and uses in the PPO ratio.
  - `count_targets(targets)`: the loss-bearing positions (the normaliser's building block).

Logits are upcast to float32 before the softmax. Only positions that bear loss are gathered for the
weighted path, so the full-vocabulary log-softmax is not kept for prompt or tool tokens there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def count_targets(targets: torch.Tensor) -> int:
    """Number of loss-bearing positions (targets != -100)."""
    return int((targets != IGNORE_INDEX).sum())


def token_loss_sum(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """sum_t w_t * CE(logits[t], targets[t]) over positions with targets[t] != -100 (w_t = 1 by default).

    logits: [..., T, V]; targets: [..., T] (long); weights: [..., T] or None. Returns a float32 scalar.
    """
    V = logits.shape[-1]
    flat_t = targets.reshape(-1)
    if weights is None:
        return F.cross_entropy(logits.float().reshape(-1, V), flat_t, ignore_index=IGNORE_INDEX, reduction="sum")
    if weights.shape != targets.shape:
        raise ValueError(f"weights {tuple(weights.shape)} must have the shape of targets {tuple(targets.shape)}")
    keep = flat_t != IGNORE_INDEX
    ce = F.cross_entropy(logits.reshape(-1, V)[keep].float(), flat_t[keep], reduction="none")
    return (weights.reshape(-1)[keep].to(ce.dtype) * ce).sum()


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(targets[t] | logits[t]) per position, [..., T] float32; 0 where targets[t] == -100."""
    keep = targets != IGNORE_INDEX
    safe = torch.where(keep, targets, torch.zeros_like(targets))
    lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return torch.where(keep, lp, torch.zeros_like(lp))
