"""`minicoder train`: a short run, an exact continuation with --resume, the plan, clean errors."""

from __future__ import annotations

import json

import pytest
import torch

from minicoder.cli import main


@pytest.fixture
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


ARGS = ["--config", "toy", "--data", "stdlib", "--max-files", "30", "--vocab-size", "600", "--seq-len", "64",
        "--rows", "2", "--keep-last", "2"]


@pytest.mark.slow
def test_train_then_resume(tmp_path, capsys, one_thread):
    out = tmp_path / "run"
    assert main(["train", *ARGS, "--steps", "4", "--time-limit", "0", "--out", str(out)]) == 0  # stops after 1 step
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000001.pt"]
    assert (out / "tokenizer.json").exists() and (out / "config.json").exists()
    assert main(["train", *ARGS, "--steps", "4", "--resume", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert "resumed at step 1" in lines
    assert json.loads(lines[-1])["step"] == 4
    recs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_00000001.pt", "step_00000004.pt"]


def test_plan_prints_the_full_config_memory(capsys):
    assert main(["train", "--config", "full", "--plan"]) == 0
    out = capsys.readouterr().out
    assert "81.32 B" in out and "fewest GPUs of 80 GiB that fit:" in out


@pytest.mark.parametrize("argv, msg", [
    (["--data", "nowhere"], "--data 'nowhere'"),
    (["--steps", "0"], "--steps"),
    (["--resume", "--out", "/nonexistent/run"], "no checkpoint"),
    (["--config", "/no/such/config.json", "--tokenizer", "/no/tok.json"], "--tokenizer /no/tok.json"),
])
def test_bad_input_is_one_clean_line(argv, msg, capsys):
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minicoder train: error:") and msg in err and "\n" not in err
