"""Norms of the Qwen3-Next block: zero-centred RMSNorm and the gated RMSNorm of Gated DeltaNet.

Design choices (each matches HF transformers' Qwen3-Next bit for bit in float32):
- `RMSNorm` is zero-centred: output = norm(x) * (1 + w), with w initialised to zeros. Weight decay
  on w then pulls the effective scale toward 1 instead of toward 0.
- Both norms compute the statistics in float32 and cast back to the input dtype at the end
  ((x * w).to(dtype), not x.to(dtype) * w).
- `GatedRMSNorm` normalises, scales by a plain weight (init ones) and multiplies by silu(z): the
  output gate of Gated DeltaNet, applied per value head over the head's dv channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def rms_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) over the last dim, in float32."""
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


class RMSNorm(nn.Module):
    """Zero-centred RMSNorm: y = x / rms(x) * (1 + weight), weight init 0. x: [..., dim]."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (rms_normalize(x, self.eps) * (1.0 + self.weight.float())).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, zero-centred"


class GatedRMSNorm(nn.Module):
    """y = (x / rms(x)) * weight * silu(z), weight init 1. x, z: [..., dim]."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        y = self.weight * rms_normalize(x, self.eps).to(dtype)
        return (y * F.silu(z.float())).to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, gate=silu"
