"""Plotly figures for the model notebooks (03 gated attention, 04 MoE, 05 hybrid model).

Design choices:
- Each function takes plain arrays / lists (numpy or torch, converted here) and returns a
  `plotly.graph_objects.Figure`; nothing is computed here that the notebook should show the reader,
  so every number on a plot is one the notebook computed in a visible cell.
- Side-by-side panels share one colour scale (`head_heatmaps`) or one y axis (`expert_load_bars`),
  so two models can be compared by eye without reading the colour bar twice.
- Layer layouts use one fixed colour per layer kind, the same in every notebook.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

LAYER_COLORS = {"linear_attention": "#4C78A8", "full_attention": "#F58518"}
LAYER_NAMES = {"linear_attention": "Gated DeltaNet", "full_attention": "gated attention"}


def _np(x) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor (any device, detached) or nested lists."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


def head_heatmaps(
    panels: Mapping[str, object], title: str, colorbar_title: str = "", zmin: float = 0.0, zmax: float | None = None,
    text_format: str = ".3f",
) -> go.Figure:
    """One heatmap per panel, each [layers, heads], sharing a colour scale; values written in the cells.

    panels: {name: [L, H] array}. zmax: top of the colour scale (default: the largest value).
    """
    mats = {k: _np(v) for k, v in panels.items()}
    if not mats:
        raise ValueError("head_heatmaps needs at least one panel")
    for k, m in mats.items():
        if m.ndim != 2:
            raise ValueError(f"panel {k!r} must be [layers, heads], got shape {m.shape}")
    top = zmax if zmax is not None else max(float(m.max()) for m in mats.values())
    fig = make_subplots(rows=1, cols=len(mats), subplot_titles=list(mats), horizontal_spacing=0.08)
    for j, m in enumerate(mats.values(), start=1):
        fig.add_trace(
            go.Heatmap(
                z=m, x=[f"head {h}" for h in range(m.shape[1])], y=[f"layer {i}" for i in range(m.shape[0])],
                zmin=zmin, zmax=top, colorscale="Viridis", showscale=j == len(mats),
                colorbar=dict(title=colorbar_title), text=m, texttemplate=f"%{{text:{text_format}}}",
            ),
            row=1, col=j,
        )
        fig.update_yaxes(autorange="reversed", row=1, col=j)
    fig.update_layout(title=title, height=120 + 60 * max(m.shape[0] for m in mats.values()), width=900)
    return fig


def mask_heatmap(mask, boundaries: Sequence[int] | None = None, title: str = "") -> go.Figure:
    """A boolean [T, T] attention mask (rows = queries, columns = keys), optionally with document
    boundaries (cu_seqlens) drawn as lines."""
    m = _np(mask).astype(float)
    fig = go.Figure(go.Heatmap(z=m, colorscale=[[0, "#f0f0f0"], [1, "#1f77b4"]], showscale=False, xgap=1, ygap=1))
    for b in (boundaries or [])[1:-1]:
        for kw in (dict(x0=b - 0.5, x1=b - 0.5, y0=-0.5, y1=len(m) - 0.5), dict(y0=b - 0.5, y1=b - 0.5, x0=-0.5, x1=len(m) - 0.5)):
            fig.add_shape(type="line", line=dict(color="crimson", width=2), **kw)
    fig.update_yaxes(autorange="reversed", title="query position", scaleanchor="x")
    fig.update_xaxes(title="key position")
    fig.update_layout(title=title, width=520, height=520)
    return fig


def curves(series: Mapping[str, Sequence[float]], title: str, xaxis: str = "step", yaxis: str = "",
           x: Sequence[float] | None = None, log_y: bool = False) -> go.Figure:
    """Line plot of named series over a shared x (default 1, 2, ...)."""
    fig = go.Figure()
    for name, ys in series.items():
        ys = _np(ys)
        xs = np.arange(1, len(ys) + 1) if x is None else _np(x)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", name=name))
    fig.update_layout(title=title, xaxis_title=xaxis, yaxis_title=yaxis, width=800, height=400)
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def expert_load_bars(loads: Mapping[str, object], title: str, top_k: int | None = None) -> go.Figure:
    """Bar chart of the share of routing slots per expert, one panel per entry, one shared y axis.

    loads: {name: [E] shares}. A dashed line marks the balanced share 1/E.
    """
    vals = {k: _np(v).reshape(-1) for k, v in loads.items()}
    fig = make_subplots(rows=1, cols=len(vals), subplot_titles=list(vals), shared_yaxes=True)
    for j, v in enumerate(vals.values(), start=1):
        fig.add_trace(go.Bar(x=np.arange(len(v)), y=v, showlegend=False, marker_color="#4C78A8"), row=1, col=j)
        fig.add_hline(y=1.0 / len(v), line_dash="dash", line_color="crimson", row=1, col=j)
        fig.update_xaxes(title="expert", row=1, col=j)
    fig.update_yaxes(title="share of routing slots", row=1, col=1)
    note = f" (top-{top_k}: each token fills {top_k} slots)" if top_k else ""
    fig.update_layout(title=title + note, width=min(1200, 420 * len(vals)), height=380)
    return fig


def layer_strip(layer_types: Sequence[str], title: str, moe: Sequence[bool] | None = None) -> go.Figure:
    """One coloured box per layer: Gated DeltaNet vs gated attention (and whether its FFN is MoE)."""
    fig = go.Figure()
    for kind, color in LAYER_COLORS.items():
        idx = [i for i, t in enumerate(layer_types) if t == kind]
        if not idx:
            continue
        text = None if moe is None else ["MoE" if moe[i] else "MLP" for i in idx]
        fig.add_trace(go.Bar(x=idx, y=[1] * len(idx), marker_color=color, name=LAYER_NAMES[kind], text=text,
                             textposition="inside", hovertemplate="layer %{x}<extra>" + LAYER_NAMES[kind] + "</extra>"))
    fig.update_layout(title=title, barmode="overlay", bargap=0.1, height=230, width=900,
                      yaxis=dict(visible=False), xaxis=dict(title="layer", dtick=4 if len(layer_types) > 16 else 1))
    return fig


def stacked_bars(rows: Mapping[str, Mapping[str, float]], title: str, yaxis: str = "", log_y: bool = False) -> go.Figure:
    """Grouped-by-x stacked bars: rows = {x label: {part: value}} (e.g. cache bytes by layer kind)."""
    parts: list[str] = []
    for r in rows.values():
        parts += [p for p in r if p not in parts]
    fig = go.Figure()
    for p in parts:
        fig.add_trace(go.Bar(x=list(rows), y=[r.get(p, 0.0) for r in rows.values()], name=LAYER_NAMES.get(p, p),
                             marker_color=LAYER_COLORS.get(p)))
    fig.update_layout(title=title, barmode="stack", yaxis_title=yaxis, width=800, height=400)
    if log_y:
        fig.update_yaxes(type="log")
    return fig
