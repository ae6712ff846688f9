"""`minicoder demo --quick` end to end on the local sandbox: interrupted in pretraining, continued,
then re-run with every stage cached; the report's numbers are present and sane.

One test (the demo takes a few minutes on 2 cores; the three runs share it): the first run gets a
SIGINT (Ctrl-C) once pretraining has written its first checkpoint; the second run must continue
pretraining from that checkpoint (every step logged once, earlier stages skipped) and finish the
job; the third run must skip every stage.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["corpus", "tokenizer", "pack", "model", "pretrain", "tasks", "midtrain", "rl", "rewards", "eval"]


def _cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "minicoder", "demo", "--quick", "--backend", "local", "--out", str(out)]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "PYTHONUNBUFFERED": "1"}


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_demo_quick_interrupted_continued_cached_and_reported(tmp_path):
    out = tmp_path / "demo"
    log1 = open(tmp_path / "run1.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(_cmd(out), cwd=ROOT, env=_env(), stdout=log1, stderr=subprocess.STDOUT)
    deadline = time.time() + 1200  # a loaded 2-core machine can be very slow
    ckpts = out / "pretrain" / "checkpoints"
    while time.time() < deadline and proc.poll() is None and not list(ckpts.glob("step_*.pt")):
        time.sleep(0.5)
    assert proc.poll() is None, (tmp_path / "run1.log").read_text()[-3000:]
    proc.send_signal(signal.SIGINT)
    rc = proc.wait(timeout=120)
    log1.close()
    text1 = (tmp_path / "run1.log").read_text()
    assert rc == 130, text1[-3000:]
    assert "run the same command again to continue" in text1
    stage = json.loads((out / "pretrain" / "stage.json").read_text())
    assert stage["status"] == "running"
    saved = sorted(int(p.stem.split("_")[1]) for p in ckpts.glob("step_*.pt"))
    assert saved and saved[-1] < 30

    t0 = time.time()
    run2 = subprocess.run(_cmd(out), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=1200)
    seconds2 = time.time() - t0
    assert run2.returncode == 0, run2.stdout[-4000:] + run2.stderr[-4000:]
    for name in ("corpus", "tokenizer", "pack", "model"):
        assert f"=== {name}: unchanged, skipped" in run2.stdout
    assert "=== pretrain (continuing an interrupted run)" in run2.stdout
    assert f"continuing from the checkpoint at step {saved[-1]}" in run2.stdout
    steps = [json.loads(line)["step"] for line in (out / "pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 31))  # every step once: the resumed run reads as one run

    # the command prints the report's path and a one-line summary
    lines = run2.stdout.strip().splitlines()
    assert lines[-2] == f"report: {(out / 'report.html').resolve()}"
    assert lines[-1].startswith("minicoder demo (quick): 10 stages, Best-Fit fill ")

    rep = json.loads((out / "report.json").read_text())
    st = rep["stages"]
    assert list(st) == STAGES and rep["profile"] == "quick"
    pack = st["pack"]["result"]["methods"]
    # Best-Fit: at most a row or two over the lower bound, nearly full rows, nothing dropped
    assert pack["bfd"]["n_bins"] >= pack["bfd"]["lower_bound"] and pack["bfd"]["bins_over_lower_bound"] < 1.01
    assert pack["bfd"]["fill"] > 0.98 and pack["bfd"]["tokens_dropped"] == 0
    assert pack["pad"]["tokens_dropped"] > 0 and pack["pad"]["fill"] < pack["bfd"]["fill"]
    pre = st["pretrain"]["result"]
    vocab = st["tokenizer"]["result"]["vocab_size"]
    assert abs(pre["first_loss"] - math.log(vocab)) < 1.0  # an untrained model predicts ~uniformly
    assert pre["last_loss"] < pre["first_loss"] - 0.5 and pre["steps"] == 30
    mid = st["midtrain"]["result"]
    assert mid["trajectories"] >= 4 and mid["last_loss"] < mid["first_loss"]
    tasks = st["tasks"]["result"]
    assert tasks["generated"] >= 1 and tasks["n_train"] > 0 and tasks["n_held_out"] > 0
    rw = st["rewards"]["result"]
    assert rw["gold_reward"] == 1.0 and rw["wrong_reward"] == 0.0 and rw["held_out_tasks"] == 2
    rl, ev = st["rl"]["result"], st["eval"]["result"]
    assert rl["warm_start"]["source"] == "tiny" and rl["steps"] == 1  # quick: a tiny warm start, one GRPO step
    assert len(rl["reward_curve"]["reward"]) == 1 and 0.0 <= rl["reward_curve"]["reward"][0] <= 1.0
    assert ev["n_tasks"] == 3 and ev["init"]["rollouts"] == ev["final"]["rollouts"] == 3 * (1 + 2)  # greedy + k=2
    for key in ("pass_at_1", "pass_at_1_greedy", "pass_at_k"):
        assert 0.0 <= ev[key]["before"] <= 1.0 and 0.0 <= ev[key]["after"] <= 1.0
    assert set(ev["init"]["end_reasons"]) <= {"submitted", "turn_limit", "context_limit", "timeout", "invalid_calls",
                                              "env_error"}
    assert all(s["seconds"] >= 0 for s in st.values())
    assert rep["machine"]["versions"]["torch"] and rep["machine"]["cpu_count"]
    metrics = {(m["stage"], m["metric"]) for m in rep["metrics"]}
    assert ("pretrain", "first loss") in metrics and ("rewards", "gold patch reward (mean)") in metrics
    assert ("rl", "warm start") in metrics and ("eval", "held-out pass@1 after RL") in metrics

    html = (out / "report.html").read_text()
    assert html.count("plotly.js v") == 1  # plotly.js inlined once, no CDN
    assert "<script src=" not in html and 'src="http' not in html  # nothing loaded from the network
    for title in ("packing fill", "training loss", "expert load", "time per stage", "RL: mean reward per step",
                  "held-out pass@1"):
        assert title in html
    assert html.count("Plotly.newPlot(") == 6

    t0 = time.time()
    run3 = subprocess.run(_cmd(out), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert run3.returncode == 0, run3.stderr[-3000:]
    for name in STAGES:
        assert f"=== {name}: unchanged, skipped" in run3.stdout
    rep3 = json.loads((out / "report.json").read_text())
    assert all(s["cached"] for s in rep3["stages"].values())
    assert {n: s["key"] for n, s in rep3["stages"].items()} == {n: s["key"] for n, s in st.items()}
    print(f"\n[demo --quick] continued run {seconds2:.0f}s, cached run {time.time() - t0:.0f}s")
