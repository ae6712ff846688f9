"""`minicoder compare RUN RUN...`: runs' metrics side by side, with what differs in their configs.

A RUN is a folder written by `minicoder train` (metrics.jsonl + config.json), by the RL stage (its
metrics.jsonl has ``reward``), or by `minicoder demo` (report.json; its pretrain/, midtrain/, rl/
and eval/ stage folders are read). Four panels against the step: loss (nats/token), reward,
pass@1 and throughput (tokens/s); one colour per run. Below them, every ModelConfig (and training)
field whose value differs between the runs, and a table of final numbers.

In a notebook:

    from minicoder.viz.compare import compare
    c = compare(["runs/a", "runs/b"])
    c.figure().show(); c.config_differences()

From the shell: ``minicoder compare runs/a runs/b --out compare.html``.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PANELS = [("loss", "loss (nats / token)"), ("reward", "mean reward"), ("pass_at_1", "pass@1"),
          ("tokens_per_s", "throughput (tokens / s)")]
ALIASES = {"pass@1": "pass_at_1", "eval_pass_at_1": "pass_at_1", "mean_reward": "reward"}
COLORS = ["#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D"]


class CompareError(ValueError):
    """A run folder that cannot be compared (missing, or no metrics in it)."""


def _read_jsonl(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a truncated last line from a crash
    return out


@dataclass
class Run:
    name: str
    path: Path
    series: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)  # metric -> (steps, values)
    config: dict[str, Any] = field(default_factory=dict)  # flattened: "model.num_experts", "train.lr", ...

    def final(self, metric: str) -> float | None:
        s = self.series.get(metric)
        return s[1][-1] if s and s[1] else None


def _add_records(run: Run, recs: list[dict], prefix: str = "") -> None:
    for r in recs:
        step = r.get("step")
        if step is None:
            continue
        for k, v in r.items():
            k = ALIASES.get(k, k)
            if k not in {p for p, _ in PANELS} or not isinstance(v, (int, float)) or not math.isfinite(v):
                continue
            xs, ys = run.series.setdefault(prefix + k, ([], []))
            xs.append(step)
            ys.append(float(v))


def _flat(d: dict, prefix: str) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("rope_parameters",):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _config_of(folder: Path) -> dict[str, Any]:
    cfg = {}
    if (folder / "config.json").is_file():
        d = json.loads((folder / "config.json").read_text())
        skip = {"architectures", "model_type", "hidden_act", "attention_dropout", "use_cache", "rope_parameters",
                "mtp_num_hidden_layers"}
        cfg.update(_flat({k: v for k, v in d.items() if k not in skip}, "model."))
    return cfg


def load_run(path: str | Path, name: str | None = None) -> Run:
    """Read one run folder (see the module docstring)."""
    p = Path(path)
    if not p.is_dir():
        raise CompareError(f"{p}: no such run folder")
    run = Run(name or p.name, p)
    if (p / "report.json").is_file() or (p / "pretrain" / "stage.json").is_file():  # a demo folder
        for stage, prefix in (("pretrain", ""), ("midtrain", "midtrain "), ("rl", ""), ("eval", "")):
            if (p / stage / "metrics.jsonl").is_file():
                _add_records(run, _read_jsonl(p / stage / "metrics.jsonl"), prefix)
        run.config = _config_of(p / "pretrain")
        if (p / "report.json").is_file():
            opts = json.loads((p / "report.json").read_text()).get("options") or {}
            run.config.update({f"demo.{k}": v for k, v in opts.items() if k in ("profile", "backend")})
    elif (p / "metrics.jsonl").is_file():
        _add_records(run, _read_jsonl(p / "metrics.jsonl"))
        run.config = _config_of(p)
    else:
        raise CompareError(f"{p}: neither a training / RL run (metrics.jsonl) nor a demo folder (report.json)")
    if not run.series:
        raise CompareError(f"{p}: its metrics have none of loss, reward, pass@1, tokens_per_s")
    return run


@dataclass
class Comparison:
    runs: list[Run]

    def config_differences(self) -> dict[str, list[Any]]:
        """{field: [value in run 1, value in run 2, ...]} for every field that is not the same in all."""
        keys = sorted({k for r in self.runs for k in r.config})
        out = {}
        for k in keys:
            vals = [r.config.get(k, "-") for r in self.runs]
            if any(json.dumps(v, sort_keys=True) != json.dumps(vals[0], sort_keys=True) for v in vals[1:]):
                out[k] = vals
        return out

    def finals(self) -> list[dict[str, Any]]:
        rows = []
        for r in self.runs:
            row: dict[str, Any] = {"run": r.name}
            for metric in sorted(r.series):
                xs, ys = r.series[metric]
                row[metric] = (sum(ys) / len(ys)) if metric.endswith("tokens_per_s") else ys[-1]
                row[f"{metric} steps"] = xs[-1]
            rows.append(row)
        return rows

    def figure(self):
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=2, cols=2, subplot_titles=[t for _, t in PANELS], horizontal_spacing=0.09,
                            vertical_spacing=0.14)
        for i, r in enumerate(self.runs):
            color = COLORS[i % len(COLORS)]
            shown = False  # one legend entry per run (and one for its mid-training curve)
            for j, (metric, _) in enumerate(PANELS):
                for name, (xs, ys) in r.series.items():
                    if name.split(" ")[-1] != metric:
                        continue
                    mid = name.startswith("midtrain ")
                    fig.add_scatter(x=xs, y=ys, mode="lines" if len(xs) > 1 else "markers",
                                    name=r.name + (" (mid-training)" if mid else ""), legendgroup=r.name,
                                    showlegend=mid or not shown, line={"color": color, "dash": "dot" if mid else None},
                                    row=j // 2 + 1, col=j % 2 + 1)
                    shown = shown or not mid
        for j, (metric, _) in enumerate(PANELS):
            if not any(n.split(" ")[-1] == metric for r in self.runs for n in r.series):
                fig.add_annotation(text="no run has this metric", showarrow=False, row=j // 2 + 1, col=j % 2 + 1,
                                   x=0.5, y=0.5, xref="x domain" if j == 0 else f"x{j + 1} domain",
                                   yref="y domain" if j == 0 else f"y{j + 1} domain")
        fig.update_xaxes(title_text="step")
        fig.update_layout(title="runs compared: " + ", ".join(r.name for r in self.runs), height=720)
        return fig

    def write_html(self, path: str | Path) -> Path:
        from minicoder.viz.page import Html, table, write_page

        diff = self.config_differences()
        rows = [(k, *[json.dumps(v) if not isinstance(v, str) else v for v in vals]) for k, vals in diff.items()]
        finals = self.finals()
        metrics = sorted({k for f in finals for k in f if k != "run" and not k.endswith(" steps")})
        blocks = [self.figure(), Html("<h2>Config differences</h2>")]
        blocks.append(table(rows, header=["field", *[r.name for r in self.runs]]) if rows
                      else Html("<p>The runs' configs are the same.</p>"))
        blocks += [Html("<h2>Final values</h2>"),
                   table([(f["run"], *[f.get(m) for m in metrics]) for f in finals], header=["run", *metrics])]
        write_page(path, "minicoder compare", blocks)
        return Path(path)

    def text(self) -> str:
        lines = []
        diff = self.config_differences()
        if diff:
            lines.append("config differences:")
            w = max(len(k) for k in diff)
            for k, vals in diff.items():
                lines.append(f"  {k:<{w}}  " + "  |  ".join(str(v) for v in vals))
        else:
            lines.append("config differences: none")
        for f in self.finals():
            parts = [f"{k} {v:.4g}" for k, v in f.items() if k != "run" and not k.endswith(" steps")]
            lines.append(f"{f['run']}: " + ", ".join(parts))
        return "\n".join(lines)


def compare(paths: list[str | Path], names: list[str] | None = None) -> Comparison:
    """Load the runs (see `load_run`); names default to the folder names (made unique)."""
    if len(paths) < 1:
        raise CompareError("give at least one run folder")
    names = list(names) if names else []
    runs = []
    for i, p in enumerate(paths):
        n = names[i] if i < len(names) else Path(p).name
        while n in {r.name for r in runs}:
            n = f"{n}'"
        runs.append(load_run(p, n))
    return Comparison(runs)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="plot runs' metrics side by side with their config differences",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (train, RL or demo)")
    p.add_argument("--names", help="comma-separated labels (default: the folder names)")
    p.add_argument("--out", type=Path, default=Path("compare.html"), help="the HTML page (default compare.html)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from minicoder.errors import UserError

    try:
        c = compare(args.runs, args.names.split(",") if args.names else None)
    except CompareError as e:
        raise UserError(str(e)) from None
    print(c.text())
    path = c.write_html(args.out)
    print(f"compare: {path.resolve()}")
    return 0
