"""RL run outputs: the final model folder, and plotly figures of the per-step metrics.

`plot_rl(metrics.jsonl)` draws, against the step: reward and pass rate; the fraction of
zero-variance groups (no learning signal); entropy and KL to the initial policy; the clip fraction;
mean turns and invalid calls per turn; the time split into rollout, evaluation and update.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any


def export_final(model, tokenizer, folder: str | os.PathLike) -> Path:
    """Write a model folder (config.json + model.safetensors + tokenizer.json) for eval-agent / serve."""
    from minicoder.model.hf import save_pretrained

    folder = Path(folder)
    save_pretrained(model, folder)
    tokenizer.save(folder)
    return folder


def _records(src) -> list[dict[str, Any]]:
    from minicoder.train.metrics import read_metrics

    return read_metrics(src) if isinstance(src, (str, os.PathLike)) else list(src)


def plot_rl(src, title: str = "GRPO"):
    """A 3x2 plotly figure of an RL run's metrics (records or a metrics.jsonl path)."""
    from plotly.subplots import make_subplots

    recs = _records(src)
    steps = [r["step"] for r in recs]
    fig = make_subplots(rows=3, cols=2, subplot_titles=(
        "reward / pass rate", "zero-variance groups", "entropy, KL to init", "clip fraction",
        "turns, invalid calls per turn", "seconds per step"))

    def line(key, row, col, name=None):
        ys = [r.get(key) for r in recs]
        ys = [y if isinstance(y, (int, float)) and math.isfinite(y) else None for y in ys]
        if any(y is not None for y in ys):
            fig.add_scatter(x=steps, y=ys, name=name or key, mode="lines+markers", row=row, col=col)

    line("reward_mean", 1, 1, "reward")
    line("pass_rate", 1, 1, "pass rate")
    line("heldout_pass@1", 1, 1, "held-out pass@1")
    line("zero_variance_frac", 1, 2, "zero-variance fraction")
    line("entropy", 2, 1)
    line("kl", 2, 1, "KL to init")
    line("clip_frac", 2, 2, "clip fraction")
    line("turns_mean", 3, 1, "turns")
    line("invalid_rate", 3, 1, "invalid / turn")
    line("rollout_s", 3, 2, "rollout")
    line("eval_s", 3, 2, "evaluation (sum)")
    line("update_s", 3, 2, "update")
    fig.update_layout(title=title, height=800, showlegend=True)
    return fig
