"""Training metrics: one JSON object per logged step in ``metrics.jsonl``, and plotly figures of them.

Each record has ``step`` plus whatever the trainer measured: ``loss`` (language-model cross-entropy,
nats per token), ``aux_loss`` (MoE load balancing), ``lr``, ``grad_norm`` (before clipping),
``tokens`` (loss-bearing tokens in the step; with none, ``loss`` is NaN, stored as null),
``tokens_per_s``, ``elapsed_s`` and ``expert_load``
(per MoE layer, the fraction of routed token slots each expert received).

A resumed run reopens the file and first drops records past the checkpoint it resumed from (they
were logged by the interrupted run after its last save and will be logged again), so the file reads
as one uninterrupted run. Lines are flushed as they are written: a crash loses at most one record.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Append-only JSONL log; `truncate_after` keeps only records with ``step <= truncate_after``."""

    def __init__(self, path: str | os.PathLike, truncate_after: int | None = None, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled
        if not enabled:
            self._fh = None
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after is not None and self.path.exists():
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= truncate_after]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
            os.replace(tmp, self.path)
        elif truncate_after is None and self.path.exists():
            self.path.unlink()  # a fresh run starts a fresh log
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open across log calls)

    def log(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            return
        self._fh.write(json.dumps(_jsonable(record)) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _jsonable(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None  # JSON has no NaN / inf: null
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if hasattr(x, "tolist"):  # tensors, numpy arrays and scalars
        return _jsonable(x.tolist())
    return x


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All records of a metrics file (a truncated last line, from a crash, is skipped)."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _records(src) -> list[dict[str, Any]]:
    return read_metrics(src) if isinstance(src, (str, os.PathLike)) else list(src)


def plot_metrics(src, title: str = "training"):
    """A 2x2 plotly figure: loss (+ aux), learning rate, gradient norm, tokens/s, against step."""
    from plotly.subplots import make_subplots

    recs = _records(src)
    steps = [r["step"] for r in recs]
    fig = make_subplots(rows=2, cols=2, subplot_titles=("loss (nats/token)", "learning rate",
                                                        "grad norm (before clipping)", "tokens / s"))

    def line(key, row, col, name=None):
        ys = [r.get(key) for r in recs]
        ys = [y if isinstance(y, (int, float)) and math.isfinite(y) else None for y in ys]  # gaps
        if any(y is not None for y in ys):
            fig.add_scatter(x=steps, y=ys, name=name or key, mode="lines", row=row, col=col)

    line("loss", 1, 1)
    line("eval_loss", 1, 1, "eval loss")
    line("lr", 1, 2)
    line("grad_norm", 2, 1)
    line("tokens_per_s", 2, 2)
    fig.update_layout(title=title, height=600, showlegend=True)
    return fig


def plot_expert_load(src, title: str = "expert load"):
    """Heatmap per MoE layer-averaged expert: fraction of routed slots, over steps (uniform = 1/E)."""
    import plotly.graph_objects as go

    recs = [r for r in _records(src) if r.get("expert_load")]
    if not recs:
        raise ValueError("no record has 'expert_load' (is the model an MoE, and was it logged?)")
    steps = [r["step"] for r in recs]
    # [steps, E]: average the per-layer load vectors of each step
    z = []
    for r in recs:
        layers = r["expert_load"]
        E = len(layers[0])
        z.append([sum(layer[e] for layer in layers) / len(layers) for e in range(E)])
    zt = [list(col) for col in zip(*z)]  # [E, steps]
    fig = go.Figure(go.Heatmap(x=steps, y=list(range(len(zt))), z=zt, colorscale="Viridis",
                               colorbar={"title": "fraction"}))
    fig.update_layout(title=f"{title} (uniform = {1 / len(zt):.3f})", xaxis_title="step",
                      yaxis_title="expert", height=400)
    return fig
