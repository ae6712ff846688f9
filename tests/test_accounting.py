"""Accounting: parameter counts equal transformers' on the meta device; active / FLOP / memory numbers
follow from the counts by the documented rules."""

from __future__ import annotations

import pytest
import torch

from minicoder.config import ModelConfig
from minicoder.model import HybridLM
from minicoder.model.accounting import count_parameters, flops_per_token, memory_plan, summary

try:  # transformers' Qwen3-Next is the oracle of the parameter-count tests only
    from transformers.models.qwen3_next import modeling_qwen3_next as hf

    HF_MISSING = ""
except ImportError as e:
    hf, HF_MISSING = None, f"transformers' qwen3_next cannot be imported ({e})"
needs_hf = pytest.mark.skipif(hf is None, reason=HF_MISSING)


def hf_meta_counts(cfg: ModelConfig) -> tuple[int, int]:
    """(total, routed-expert) parameter counts of transformers' Qwen3NextForCausalLM, on meta."""
    with torch.device("meta"):
        m = hf.Qwen3NextForCausalLM(hf.Qwen3NextConfig(**cfg.to_hf_dict()))
    total = sum(p.numel() for p in m.parameters())
    experts = sum(p.numel() for n, p in m.named_parameters() if ".mlp.experts." in n)
    return total, experts


@needs_hf
@pytest.mark.slow
def test_full_config_matches_transformers_exactly():
    cfg = ModelConfig.from_preset("full")
    pc = count_parameters(cfg)
    hf_total, hf_experts = hf_meta_counts(cfg)
    assert pc.total_without_mtp == hf_total
    assert pc.routed_experts == hf_experts
    active = hf_total - hf_experts + hf_experts * 10 // 512
    assert pc.active == active
    # the published figures: 79.67B total, 3.87B active incl. embeddings + lm_head, 3.25B without
    assert round(pc.total_without_mtp / 1e9, 2) == 79.67
    assert round(pc.active / 1e9, 2) == 3.87
    assert round(pc.active_without_embeddings / 1e9, 2) == 3.25
    assert pc.embedding == pc.lm_head == 151936 * 2048
    assert pc.total == pc.total_without_mtp + pc.mtp and pc.mtp > 1.5e9  # one layer with 512 experts + fc


@needs_hf
@pytest.mark.parametrize("name, tie", [("toy", False), ("toy", True), ("small", False)])
def test_counts_match_transformers_and_a_real_model(name, tie):
    cfg = ModelConfig.from_preset(name, tie_word_embeddings=tie)
    pc = count_parameters(cfg)
    assert pc.total_without_mtp == hf_meta_counts(cfg)[0]
    if name == "toy":  # a materialised model has the same count
        assert HybridLM(cfg).num_parameters() == pc.total
    assert pc.lm_head == (0 if tie else pc.embedding)


def test_presets_are_the_promised_sizes():
    toy, small = count_parameters(ModelConfig.from_preset("toy")), count_parameters(ModelConfig.from_preset("small"))
    assert 1e6 < toy.total < 1e7
    assert 1e8 < small.total < 1e9


def test_flops():
    cfg = ModelConfig.from_preset("full")
    pc = count_parameters(cfg)
    f = flops_per_token(cfg, context=1000)
    assert f["matmul"] == 2 * (pc.active - pc.embedding)
    assert f["attention"] == 12 * 4 * 16 * 256 * 1000
    assert f["deltanet"] == 36 * (7 * 32 * 128 * 128 + 2 * 4 * (2 * 2048 + 4096))
    assert f["total"] == f["matmul"] + f["attention"] + f["deltanet"]
    # the attention term grows linearly with the context, the DeltaNet term not at all
    g = flops_per_token(cfg, context=2000)
    assert g["attention"] == 2 * f["attention"] and g["deltanet"] == f["deltanet"]
    # whole sequence = mean causal context; training = 3x
    assert flops_per_token(cfg, seq_len=3999) == g
    t = flops_per_token(cfg, seq_len=3999, training=True)
    assert t["total"] == pytest.approx(3 * g["total"])
    assert 6e9 < f["total"] < 9e9  # ~2 x 3.56B matmul weights + mixing terms
    with pytest.raises(ValueError, match="exactly one"):
        flops_per_token(cfg)


def test_memory_plan():
    cfg = ModelConfig.from_preset("full")
    n = count_parameters(cfg).total
    plan = memory_plan(cfg)  # bf16 weights + grads, fp32 master + AdamW moments
    assert plan["params"] == 2 * n and plan["grads"] == 2 * n
    assert plan["master"] == 4 * n and plan["optimizer"] == 8 * n
    assert plan["total"] == 16 * n
    assert plan["bytes_by_dtype"] == {"bfloat16": 4 * n, "float32": 12 * n}
    sharded = memory_plan(cfg, shards=64)
    assert sharded["total"] == pytest.approx(plan["total"] / 64)
    fp32 = memory_plan(cfg, param_dtype=torch.float32, include_mtp=False)
    assert fp32["master"] == 0 and fp32["total"] == 16 * count_parameters(cfg).total_without_mtp
    with pytest.raises(ValueError, match="optimizer"):
        memory_plan(cfg, optimizer="lion")


def test_summary_mentions_the_numbers():
    text = summary(ModelConfig.from_preset("full"))
    assert "79.674B" in text and "3.875B" in text and "3.253B" in text


def test_cli_info(capsys, tmp_path):
    from minicoder.cli import main

    assert main(["model", "info", "--preset", "full", "--seq-len", "262144"]) == 0
    out = capsys.readouterr().out
    assert "79.674B" in out and "KV 6.00 GiB" in out  # 12 layers x 2 x 2 heads x 256 x 2 B x 262144
    ModelConfig.from_preset("toy").to_json(tmp_path / "config.json")
    assert main(["model", "info", "--config", str(tmp_path)]) == 0
    (tmp_path / "config.json").write_text('{"num_key_value_heads": 3}')
    assert main(["model", "info", "--config", str(tmp_path)]) == 2
    assert "ModelConfig.num_key_value_heads" in capsys.readouterr().err
