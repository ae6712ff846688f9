"""The demo's report: one self-contained HTML page (`report.html`) and `report.json`.

Figures (each drawn only when the stage that feeds it has run): packing fill per method, the
pretraining and mid-training loss, the pretraining expert load, the time per stage, and, from the
stages that plug in later, the RL reward curve and held-out pass@1 before and after RL.

What the report reads from a stage's result (the contract for new stages; all keys optional):
- ``metrics``: path (relative to the demo folder) of a metrics.jsonl; records with ``step`` and
  ``loss`` give a loss curve, records with ``reward`` (the mean reward of a step) a reward curve.
- ``reward_curve``: ``{"step": [...], "reward": [...]}`` (instead of, or on top of, ``metrics``).
- ``pass_at_1``: ``{"before": float, "after": float}`` (held-out pass@1 of the policy before and
  after RL), optionally ``pass_at_k`` likewise and ``n_tasks``.
- ``summary``: a dict of numbers shown in the metrics table (``{"name": value}``).
Numbers in the metrics table otherwise come from the known stages' results (see `metrics_rows`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from minicoder.demo.pipeline import StageRecord

PACK_COLORS = {"bfd": "#4C78A8", "concat": "#F58518", "pad": "#54A24B"}


def _records(out: Path, rel: str | None) -> list[dict]:
    from minicoder.train.metrics import read_metrics

    if not rel or not (out / rel).is_file():
        return []
    return read_metrics(out / rel)


def fig_packing(pack: dict):
    import plotly.graph_objects as go

    fig = go.Figure()
    for method, st in pack["methods"].items():
        h = st["fill_histogram"]
        centers = [(i + 0.5) / len(h) for i in range(len(h))]
        fig.add_bar(x=centers, y=h, name=f"{method} (fill {st['fill']:.1%}, {st['n_bins']} rows)",
                    marker_color=PACK_COLORS.get(method))
    fig.update_layout(title=f"packing fill: tokens per row / {pack['seq_len']}", barmode="group",
                      xaxis_title="fraction of the row holding tokens", yaxis_title="rows", height=380)
    return fig


def fig_losses(out: Path, results: dict[str, StageRecord]):
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, label in (("pretrain", "pretraining (all tokens)"), ("midtrain", "mid-training (assistant tokens)")):
        if name not in results:
            continue
        recs = [r for r in _records(out, results[name].result.get("metrics")) if r.get("loss") is not None]
        fig.add_scatter(x=[r["step"] for r in recs], y=[r["loss"] for r in recs], mode="lines", name=label)
    H = results["pretrain"].result.get("unigram_entropy") if "pretrain" in results else None
    if H:
        fig.add_hline(y=H, line_dash="dot", annotation_text=f"unigram entropy {H:.2f}")
    fig.update_layout(title="training loss (nats / token)", xaxis_title="step", yaxis_title="loss", height=380)
    return fig


def fig_expert_load(out: Path, pretrain: dict):
    from minicoder.train.metrics import plot_expert_load

    recs = [r for r in _records(out, pretrain.get("metrics")) if r.get("expert_load")]
    return plot_expert_load(recs, title="pretraining expert load (mean over MoE layers)") if recs else None


def fig_stage_times(results: dict[str, StageRecord]):
    import plotly.graph_objects as go

    names = list(results)
    fig = go.Figure(go.Bar(x=names, y=[results[n].seconds for n in names], marker_color="#4C78A8",
                           text=[f"{results[n].seconds:.0f}s" for n in names], textposition="outside"))
    fig.update_layout(title="time per stage (the run that computed it)", yaxis_title="seconds", height=340)
    return fig


def reward_curve(out: Path, rl: dict) -> tuple[list, list]:
    if rl.get("reward_curve"):
        c = rl["reward_curve"]
        return list(c["step"]), list(c["reward"])
    recs = [r for r in _records(out, rl.get("metrics")) if r.get("reward") is not None]
    return [r["step"] for r in recs], [r["reward"] for r in recs]


def fig_reward(out: Path, rl: dict):
    import plotly.graph_objects as go

    x, y = reward_curve(out, rl)
    if not x:
        return None
    fig = go.Figure(go.Scatter(x=x, y=y, mode="lines+markers", name="mean reward"))
    fig.update_layout(title="RL: mean reward per step (sandboxed tests)", xaxis_title="step", yaxis_title="reward",
                      yaxis_range=[0, 1], height=340)
    return fig


def fig_pass_at_1(ev: dict):
    """Held-out pass@1 before and after RL; with greedy pass@1 and pass@k beside it when the eval has
    them, so a reader can tell sharpening (sampled up, pass@k flat) from broadening (pass@k up too)."""
    import plotly.graph_objects as go

    p = ev.get("pass_at_1")
    if not p:
        return None
    groups = [("pass@1 (sampled)", p)]
    if ev.get("pass_at_1_greedy"):
        groups.append(("pass@1 (greedy)", ev["pass_at_1_greedy"]))
    if ev.get("pass_at_k"):
        groups.append((f"pass@{ev['pass_at_k'].get('k', 'k')}", ev["pass_at_k"]))
    names = [g for g, _ in groups]
    fig = go.Figure([go.Bar(name=when, x=names, y=[v[key] for _, v in groups], marker_color=color,
                            text=[f"{v[key]:.2f}" for _, v in groups], textposition="outside")
                     for when, key, color in (("before RL", "before", "#999"), ("after RL", "after", "#4C78A8"))])
    n = ev.get("n_tasks")
    fig.update_layout(title=f"held-out pass@1{f' ({n} tasks)' if n else ''}", yaxis_range=[0, 1], height=340,
                      barmode="group")
    return fig


def metrics_rows(results: dict[str, StageRecord]) -> list[tuple[str, str, Any]]:
    """(stage, metric, value) rows of the metrics table."""
    rows: list[tuple[str, str, Any]] = []

    def add(stage: str, name: str, value: Any) -> None:
        if value is not None:
            rows.append((stage, name, value))

    r = {k: v.result for k, v in results.items()}
    if "corpus" in r:
        add("corpus", "documents", r["corpus"]["n_documents"])
        add("corpus", "MB", r["corpus"]["bytes"] / 1e6)
    if "tokenizer" in r:
        add("tokenizer", "vocabulary", r["tokenizer"]["vocab_size"])
    if "pack" in r:
        for m, st in r["pack"]["methods"].items():
            add("pack", f"{m} fill", st["fill"])
            add("pack", f"{m} rows", st["n_bins"])
    for name in ("pretrain", "midtrain"):
        if name in r:
            add(name, "steps", r[name].get("steps"))
            add(name, "first loss", r[name].get("first_loss"))
            add(name, "last loss (mean of last 5)", r[name].get("last_loss"))
            add(name, "tokens / s (median)", r[name].get("tokens_per_s"))
    if "pretrain" in r:
        add("pretrain", "unigram entropy", r["pretrain"].get("unigram_entropy"))
        add("pretrain", "parameters", r["pretrain"].get("parameters"))
    if "midtrain" in r:
        add("midtrain", "trajectories", r["midtrain"].get("trajectories"))
    if "tasks" in r:
        for k in ("generated", "seed", "n_train", "n_held_out", "functions_train", "functions_held_out"):
            add("tasks", k, r["tasks"].get(k))
    if "rewards" in r:
        add("rewards", "gold patch reward (mean)", r["rewards"]["gold_reward"])
        add("rewards", "empty / hostile patch reward (mean)", r["rewards"]["wrong_reward"])
        add("rewards", "seconds per evaluation", r["rewards"]["seconds_per_evaluation"])
    if "rl" in r:
        ws = r["rl"].get("warm_start") or {}
        add("rl", "warm start", {"cached": "runs/warm/final (trained here by `minicoder warmstart --out runs/warm`)",
                                 "shipped": "checkpoints/toy-warm (shipped; regenerate: `minicoder warmstart "
                                            "--out runs/warm`)",
                                 "env": f"$MINICODER_WARM ({ws.get('path')})",
                                 "tiny": "a tiny model warm-started in this run"}.get(ws.get("source"), ws.get("source")))
        add("rl", "GRPO steps", r["rl"].get("steps"))
        curve = (r["rl"].get("reward_curve") or {}).get("reward") or []
        add("rl", "mean reward, last step", curve[-1] if curve else None)
    if "eval" in r and r["eval"].get("pass_at_1"):
        add("eval", "held-out pass@1 before RL", r["eval"]["pass_at_1"]["before"])
        add("eval", "held-out pass@1 after RL", r["eval"]["pass_at_1"]["after"])
        for key, label in (("pass_at_1_greedy", "greedy pass@1"), ("pass_at_k", "pass@k")):
            if r["eval"].get(key):
                add("eval", f"held-out {label} before RL", r["eval"][key]["before"])
                add("eval", f"held-out {label} after RL", r["eval"][key]["after"])
    for stage, res in r.items():
        for k, v in (res.get("summary") or {}).items():
            add(stage, k, v)
    return rows


def one_line(results: dict[str, StageRecord], profile: str, seconds: float) -> str:
    r = {k: v.result for k, v in results.items()}
    parts = [f"minicoder demo ({profile}): {len(results)} stages"]
    if "pack" in r:
        parts.append(f"Best-Fit fill {r['pack']['methods']['bfd']['fill']:.1%}")
    for name in ("pretrain", "midtrain"):
        if name in r and r[name].get("first_loss") is not None:
            parts.append(f"{name} loss {r[name]['first_loss']:.2f} -> {r[name]['last_loss']:.2f}")
    if "tasks" in r:
        parts.append(f"{r['tasks']['n_train']} train / {r['tasks']['n_held_out']} held-out tasks")
    if "rewards" in r:
        parts.append(f"held-out rewards gold {r['rewards']['gold_reward']:.1f}, wrong {r['rewards']['wrong_reward']:.1f}")
    if "eval" in r and r["eval"].get("pass_at_1"):
        p = r["eval"]["pass_at_1"]
        parts.append(f"held-out pass@1 {p['before']:.2f} -> {p['after']:.2f}")
    parts.append(f"{seconds:.0f}s this run")
    return ", ".join(parts)


def _clean(x: Any) -> Any:
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def write_report(out: Path, results: dict[str, StageRecord], profile: str, seconds: float,
                 ran: list[str], options: dict | None = None) -> tuple[Path, str]:
    """Write ``report.html`` and ``report.json`` in `out`; returns (html path, one-line summary)."""
    from minicoder.machine import machine_info
    from minicoder.viz.page import Html, table, write_page

    machine = machine_info(("torch", "triton", "numpy", "plotly", "transformers", "tokenizers"))
    summary = one_line(results, profile, seconds)
    rows = metrics_rows(results)
    blocks: list[Any] = [Html(f'<p class="summary">{summary}</p>')]
    blocks.append(Html("<h2>Stages</h2>"))
    blocks.append(table([(n, "cached" if n not in ran else "ran", rec.seconds, rec.key) for n, rec in results.items()],
                        header=["stage", "this run", "seconds", "cache key"]))
    blocks.append(fig_stage_times(results))
    if "pack" in results:
        blocks += [Html("<h2>Data: Best-Fit packing</h2>"), fig_packing(results["pack"].result)]
    if "pretrain" in results or "midtrain" in results:
        blocks += [Html("<h2>Training</h2>"), fig_losses(out, results)]
        if "pretrain" in results:
            f = fig_expert_load(out, results["pretrain"].result)
            if f is not None:
                blocks.append(f)
    if "rl" in results:
        f = fig_reward(out, results["rl"].result)
        if f is not None:
            blocks += [Html("<h2>RL</h2>"), f]
    if "eval" in results:
        f = fig_pass_at_1(results["eval"].result)
        if f is not None:
            blocks += [Html("<h2>Held-out evaluation</h2>"), f]
    if "rewards" in results:
        rr = results["rewards"].result["rows"]
        blocks += [Html("<h2>Sandbox rewards on held-out tasks</h2>"),
                   table([(x["task"], x["attempt"], x["reward"], x["fraction"], x["status"], x["seconds"]) for x in rr],
                         header=["task", "attempt", "reward", "fraction", "status", "seconds"])]
    blocks += [Html("<h2>Metrics</h2>"), table(rows, header=["stage", "metric", "value"])]
    versions = machine.get("versions", {})
    mrows = [(k, str(machine.get(k))) for k in ("date", "platform", "python", "cpu", "cpu_count",
                                                  "load_average_at_start", "torch_threads", "gpu")]
    mrows += [(f"{k} version", str(v)) for k, v in versions.items()]
    blocks += [Html("<h2>Machine and versions</h2>"), table(mrows, header=["", ""])]
    html_path = out / "report.html"
    write_page(html_path, "minicoder demo report", blocks)
    report = {"summary": summary, "profile": profile, "seconds_this_run": seconds, "options": options or {},
              "stages": {n: {"seconds": rec.seconds, "cached": n not in ran, "key": rec.key, "result": rec.result}
                         for n, rec in results.items()},
              "metrics": [{"stage": s, "metric": m, "value": v} for s, m, v in rows], "machine": machine}
    tmp = out / "report.json.tmp"
    tmp.write_text(json.dumps(_clean(report), indent=1, default=str) + "\n")
    tmp.replace(out / "report.json")
    return html_path, summary
