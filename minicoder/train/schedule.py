"""Learning-rate schedule: linear warmup, then cosine decay to a floor.

    lr(s) = peak * (s + 1) / warmup                                  for s < warmup
    lr(s) = floor + (peak - floor) * (1 + cos(pi * p)) / 2           p = (s - warmup) / (total - warmup)

`s` is the 0-based index of the optimizer step about to be taken, so the first step already uses a
non-zero rate (peak / warmup) and step `total - 1` ends just above the floor. After `total` steps
the rate stays at the floor (a run extended past its plan keeps training, slowly).

The schedule is a pure function of the step: nothing in it needs saving beyond the step counter,
which is what makes a resumed run use exactly the rates of an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class WarmupCosine:
    """Warmup + cosine schedule; `min_ratio` is the floor as a fraction of the peak."""

    peak_lr: float
    total_steps: int
    warmup_steps: int = 0
    min_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.peak_lr <= 0:
            raise ValueError(f"peak_lr must be positive, got {self.peak_lr}")
        if self.total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {self.total_steps}")
        if not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"warmup_steps must be in [0, total_steps={self.total_steps}], got {self.warmup_steps}")
        if not 0.0 <= self.min_ratio <= 1.0:
            raise ValueError(f"min_ratio must be in [0, 1], got {self.min_ratio}")

    def __call__(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        floor = self.peak_lr * self.min_ratio
        decay = self.total_steps - self.warmup_steps
        if decay <= 0 or step >= self.total_steps:
            return floor if decay > 0 else self.peak_lr
        p = (step - self.warmup_steps) / decay
        return floor + (self.peak_lr - floor) * 0.5 * (1.0 + math.cos(math.pi * p))


def set_lr(optimizer, lr: float) -> None:
    """Write `lr` into every parameter group (groups may scale it with an `lr_scale` key)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
