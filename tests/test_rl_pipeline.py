"""The RL pipeline end to end on a CPU: `minicoder rl` runs GRPO steps in real sandboxes and writes
the metrics the issue lists; the Ray executor gives the same metrics as the local one for the same
seed; a run killed with SIGKILL after a checkpoint resumes bit-exactly (weights and metrics); a
hung environment costs one sample (env_error) while the step completes.

The policy is a tiny model that has half-learned one toy task (`rl_fixtures.taught_model`), so a
group of rollouts mixes passes and failures and each step makes a real update."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from rl_fixtures import taught_model, toy_tasks
from safetensors.torch import load_file

from minicoder.cli import main
from minicoder.rl.report import export_final

pytestmark = pytest.mark.slow  # a few GRPO steps in sandboxes

TIMING = {"rollout_s", "wait_s", "elapsed_s", "update_s", "gen_s", "tool_s", "eval_s", "time"}
STEPS = 2
ARGS = ["--tasks", "toy:train:1:0", "--steps", str(STEPS), "--group", "4", "--tasks-per-step", "1", "--lr", "3e-3",
        "--seed", "7", "--eval-workers", "2"]
FIELDS = {"reward_mean", "pass_rate", "zero_variance_frac", "entropy", "kl", "clip_frac", "turns_mean",
          "invalid_rate", "rollout_s", "eval_s", "update_s", "staleness", "policy_version", "end_reasons"}


def untimed(recs):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in recs]


def metrics(out: Path):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def init(tmp_path_factory):
    model, tok, _, _ = taught_model()
    return export_final(model, tok, tmp_path_factory.mktemp("taught") / "model")


@pytest.fixture(scope="module")
def straight(init, tmp_path_factory):
    """`minicoder rl` for STEPS steps without interruption (local executor, pipelined)."""
    out = tmp_path_factory.mktemp("straight")
    assert main(["rl", "--init", str(init), "--out", str(out), *ARGS]) == 0
    return out


def test_rl_cli_writes_the_metrics_and_a_model(straight, capsys):
    recs = metrics(straight)
    assert [r["step"] for r in recs] == list(range(1, STEPS + 1))
    for r in recs:
        assert FIELDS <= set(r), FIELDS - set(r)
        assert sum(r["end_reasons"].values()) == 4
        assert 0.0 < r["pass_rate"] < 1.0  # a mixed group: the update had something to learn from
        assert r["reward_mean"] == r["pass_rate"] and r["zero_variance_frac"] == 0.0
        assert r["skipped_update"] == 0 and r["trained_samples"] == 4 and r["grad_norm"] > 0
        assert r["policy_version"] == r["step"] - 2 if r["step"] > 1 else r["policy_version"] == 0
    assert recs[1]["staleness"] == 1 and recs[1]["max_ratio_dev"] > 0  # stale rollouts: ratio != 1
    assert recs[0]["max_ratio_dev"] < 1e-4  # on-policy: the ratio is 1 (the stored log-probs are right)
    assert (straight / "final" / "model.safetensors").is_file() and (straight / "rl.html").is_file()
    w0, w1 = (load_file(straight / d / "model.safetensors") for d in ("init", "final"))
    assert any(not torch.equal(w0[k], w1[k]) for k in w0)  # the policy moved


def test_ray_and_local_executors_give_identical_metrics(init, straight, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}})
    try:
        out = tmp_path / "ray"
        assert main(["rl", "--init", str(init), "--out", str(out), "--executor", "ray", *ARGS]) == 0
    finally:
        ray.shutdown()
    assert untimed(metrics(out)) == untimed(metrics(straight))
    a, b = (load_file(d / "final" / "model.safetensors") for d in (out, straight))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_killed_run_resumes_bit_exactly(init, straight, tmp_path):
    """SIGKILL the CLI as soon as step 1's checkpoint is on disk, then --resume: the final weights
    and every metric (timings aside) equal the uninterrupted run's."""
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen([sys.executable, "-m", "minicoder", "rl", "--init", str(init), "--out", str(out), *ARGS],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    ck = out / "checkpoints"
    t0 = time.time()
    try:
        while not (ck.is_dir() and any(f.name.startswith("step_") and f.name.endswith(".pt") for f in ck.iterdir())):
            assert p.poll() is None, p.stderr.read().decode()[-3000:]
            assert time.time() - t0 < 300, "no checkpoint after 300 s"
            time.sleep(0.05)
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert not (out / "final").exists()  # it died mid-run
    assert len(metrics(out)) == 1
    assert main(["rl", "--resume", "--out", str(out), *ARGS]) == 0
    assert untimed(metrics(out)) == untimed(metrics(straight))
    a, b = (load_file(d / "final" / "model.safetensors") for d in (out, straight))
    assert all(torch.equal(a[k], b[k]) for k in a)


class HungSession:
    """A real session that stops answering (a stuck sandbox): every call blocks until released."""

    def __init__(self, session, release: threading.Event) -> None:
        self.s, self.release = session, release

    def __getattr__(self, name):
        attr = getattr(self.s, name)
        if name in ("exec", "read_file", "write_file", "list_files", "diff"):
            def blocked(*a, **kw):
                self.release.wait()
                return attr(*a, **kw)
            return blocked
        return attr


def test_hung_environment_costs_one_sample_and_the_step_completes(tmp_path):
    import contextlib

    from minicoder.agent.cli import session_opener
    from minicoder.agent.loop import AgentLimits
    from minicoder.agent.tools import ToolConfig
    from minicoder.rl.grpo import GRPOConfig
    from minicoder.rl.pipeline import RLConfig, RLRun

    model, tok, _, _ = taught_model()
    real, release, lock = session_opener("local"), threading.Event(), threading.Lock()
    opened = []

    @contextlib.contextmanager
    def opener(task):
        with lock:
            opened.append(task.instance_id)
            first = len(opened) == 1
        with real(task) as s:
            yield HungSession(s, release) if first else s

    cfg = RLConfig(steps=1, tasks_per_step=1, group=4, seed=7, lr=3e-3, max_staleness=0,
                   limits=AgentLimits(max_turns=8, max_context_tokens=1400, max_new_tokens=96, tool_grace_s=1.0),
                   tools=ToolConfig.toy(exec_timeout_s=2.0), grpo=GRPOConfig(norm_len=384))
    run = RLRun(cfg, copy.deepcopy(model), tok, toy_tasks(1), tmp_path, open_env=opener, progress=False)
    t0 = time.perf_counter()
    try:
        recs = run.fit()
    finally:
        release.set()
        run.close()
    assert time.perf_counter() - t0 < 120
    assert len(recs) == 1 and recs[0]["step"] == 1
    assert recs[0]["env_errors"] == 1 and recs[0]["end_reasons"]["env_error"] == 1
    assert sum(recs[0]["end_reasons"].values()) == 4
