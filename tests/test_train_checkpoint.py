"""Checkpoints: atomic writes that survive a crash mid-save, keep-last-N, and bit-exact resume."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from minicoder.config import ModelConfig
from minicoder.model import HybridLM
from minicoder.train import PackedDataset, TrainConfig, Trainer
from minicoder.train import checkpoint as ckpt


def small_model(seed: int = 0) -> HybridLM:
    torch.manual_seed(seed)
    cfg = ModelConfig.from_preset(
        "toy", vocab_size=64, hidden_size=32, num_hidden_layers=2, layer_types=["linear_attention", "full_attention"],
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, linear_num_key_heads=1, linear_num_value_heads=2,
        linear_key_head_dim=16, linear_value_head_dim=16, num_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=16, shared_expert_intermediate_size=16, num_nextn_predict_layers=1, kernel="torch")
    return HybridLM(cfg)


def dataset() -> PackedDataset:
    rng = np.random.default_rng(1)
    docs = [rng.integers(1, 64, size=int(n)).tolist() for n in rng.integers(3, 60, size=40)]
    return PackedDataset.from_token_lists(docs, 32)


def test_rng_capture_restore_roundtrip():
    state = ckpt.capture_rng()
    a = (random.random(), np.random.rand(), torch.rand(3))
    ckpt.restore_rng(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_keep_last_and_latest(tmp_path):
    for s in (1, 2, 3, 4, 5):
        ckpt.save_checkpoint(tmp_path, s, {"x": torch.tensor([s])}, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_00000004.pt", "step_00000005.pt"]
    assert ckpt.load_checkpoint(tmp_path)["x"].item() == 5
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ckpt.CheckpointError, match="no checkpoint"):
        ckpt.load_checkpoint(tmp_path / "empty")


def test_exception_mid_save_leaves_previous_checkpoint(tmp_path):
    ckpt.save_checkpoint(tmp_path, 1, {"w": torch.arange(10)}, keep_last=1)

    def crashing_write(obj, fh):
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, 2, {"w": torch.zeros(10)}, keep_last=1, _write=crashing_write)
    assert [p.name for p in tmp_path.iterdir()] == ["step_00000001.pt"]  # no temp left, old one kept
    assert torch.equal(ckpt.load_checkpoint(tmp_path)["w"], torch.arange(10))


def test_killed_process_mid_save_leaves_previous_checkpoint(tmp_path):
    """A real SIGKILL in the middle of writing: no cleanup code runs at all."""
    script = textwrap.dedent(f"""
        import os, signal, torch
        from minicoder.train import checkpoint as ckpt
        ckpt.save_checkpoint({str(tmp_path)!r}, 1, {{"w": torch.arange(5)}})
        def write_then_die(obj, fh):
            torch.save(obj, fh)
            fh.flush()
            fh.truncate(fh.tell() // 2)  # half the bytes are on disk
            os.kill(os.getpid(), signal.SIGKILL)
        ckpt.save_checkpoint({str(tmp_path)!r}, 2, {{"w": torch.ones(1000)}}, _write=write_then_die)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr.decode()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [".step_00000002.pt.tmp", "step_00000001.pt"]
    assert torch.equal(ckpt.load_checkpoint(tmp_path)["w"], torch.arange(5))
    # the next save cleans the stale temporary
    ckpt.save_checkpoint(tmp_path, 3, {"w": torch.ones(2)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_00000001.pt", "step_00000003.pt"]


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    p = ckpt.save_checkpoint(tmp_path, 1, {"w": torch.arange(100)})
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match="step_00000001.pt is unreadable"):
        ckpt.load_checkpoint(p)


def _state_equal(a: Trainer, b: Trainer) -> None:
    for (n1, p1), (n2, p2) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert sa["state"].keys() == sb["state"].keys()
    for k in sa["state"]:
        for name, v in sa["state"][k].items():
            assert torch.equal(v, sb["state"][k][name]), (k, name)


@pytest.fixture
def one_thread():
    """Tiny ops run faster on one thread on a shared machine (exactness holds with any count)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_resume_is_bit_exact_on_cpu(tmp_path, one_thread):
    cfg = TrainConfig(steps=8, rows=2, grad_accum=2, lr=5e-3, warmup_steps=3, progress=False, keep_last=2)
    straight = Trainer(small_model(), dataset(), cfg, out_dir=tmp_path / "a")
    rec_a = straight.fit()

    first = Trainer(small_model(), dataset(), cfg, out_dir=tmp_path / "b")
    first.fit(steps=4)  # "killed" after 4 steps: a new process would only have the files
    first.close()
    del first
    torch.manual_seed(1234)  # a fresh process has other RNG states; the checkpoint restores them
    random.seed(99)
    second = Trainer(small_model(seed=7), dataset(), cfg, out_dir=tmp_path / "b")  # different init: overwritten
    assert second.resume()
    assert second.step == 4
    rec_b = second.fit()
    _state_equal(straight, second)
    assert [r["loss"] for r in rec_a[4:]] == [r["loss"] for r in rec_b]
    # the metrics file reads as one run
    from minicoder.train.metrics import read_metrics

    steps = [r["step"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl")]
    assert steps == list(range(1, 9))
    assert os.path.exists(tmp_path / "b" / "checkpoints" / "step_00000008.pt")
