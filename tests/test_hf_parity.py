"""Parity with HF transformers' Qwen3NextForCausalLM, through checkpoints in both directions.

Weights saved by transformers load into minicoder (`load_pretrained`) and give the same logits
(max abs diff <= 1e-4 in float32), and weights saved by minicoder (`save_pretrained`) load into
transformers with the same match, over several random tiny configs (head counts, layer orders,
experts / top-k, norm_topk_prob, mlp_only_layers / decoder_sparse_step, tied / untied). Bad
checkpoints raise errors naming the tensor.

transformers dispatches the gated delta rule to flash-linear-attention when it is installed, and
fla's Triton kernels need a GPU: the fixture swaps the module-level functions for their PyTorch
fallbacks (the undecorated originals).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from minicoder.config import ModelConfig
from minicoder.model import HybridLM
from minicoder.model.hf import CheckpointError, load_pretrained, save_pretrained

hf_mod = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")
from transformers import Qwen3NextConfig, Qwen3NextForCausalLM  # noqa: E402


@pytest.fixture(autouse=True)
def torch_path_in_transformers(monkeypatch):
    for name in (
        "torch_chunk_gated_delta_rule",
        "torch_recurrent_gated_delta_rule",
        "causal_conv1d_fn",
        "causal_conv1d_update",
    ):
        fn = getattr(hf_mod, name)
        monkeypatch.setattr(hf_mod, name, getattr(fn, "__wrapped__", fn))


BASE = dict(
    vocab_size=97, hidden_size=64, max_position_embeddings=512, rope_theta=10_000.0,
    linear_key_head_dim=16, linear_value_head_dim=8, moe_intermediate_size=24,
    shared_expert_intermediate_size=40, intermediate_size=48, num_nextn_predict_layers=0,
    bos_token_id=None, eos_token_id=None,
)
CONFIGS = {
    "3to1_gqa_top2": dict(num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                          linear_num_key_heads=2, linear_num_value_heads=4, num_experts=8, num_experts_per_tok=2),
    "attn_first_mha_untied_nonorm": dict(
        num_hidden_layers=3, layer_types=["full_attention", "linear_attention", "full_attention"],
        num_attention_heads=2, num_key_value_heads=2, head_dim=32, partial_rotary_factor=0.5,
        linear_num_key_heads=1, linear_num_value_heads=3, num_experts=5, num_experts_per_tok=3,
        norm_topk_prob=False),
    "tied_dense_layers": dict(
        num_hidden_layers=4, layer_types=["linear_attention", "full_attention", "linear_attention", "linear_attention"],
        num_attention_heads=6, num_key_value_heads=1, head_dim=8, linear_num_key_heads=3, linear_num_value_heads=3,
        num_experts=4, num_experts_per_tok=1, mlp_only_layers=[2], decoder_sparse_step=2, tie_word_embeddings=True),
}


def make_config(name: str) -> ModelConfig:
    return ModelConfig(**{**BASE, **CONFIGS[name]}, kernel="torch")


def randomize_(model: torch.nn.Module, seed: int) -> None:
    """Move every norm weight / gate bias off its init so a wrong (1 + w) or missing weight shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn(p.shape, generator=g))


def hf_model(cfg: ModelConfig, seed: int = 0) -> Qwen3NextForCausalLM:
    torch.manual_seed(seed)
    model = Qwen3NextForCausalLM(Qwen3NextConfig(**cfg.to_hf_dict())).eval()
    randomize_(model, seed)
    return model


def batch(cfg: ModelConfig, b: int = 2, t: int = 45, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, cfg.vocab_size, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_transformers_checkpoint_loads_into_minicoder(tmp_path, name):
    cfg = make_config(name)
    ref = hf_model(cfg)
    ref.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path, config_overrides={"kernel": "torch"})
    assert ours.config.layer_types == cfg.layer_types
    assert ours.config.tie_word_embeddings == cfg.tie_word_embeddings
    ids = batch(cfg)
    with torch.no_grad():
        want = ref(ids).logits
        got = ours(ids).logits
    assert want.abs().max() > 0.1  # a real signal, not all zeros
    assert (got - want).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_minicoder_checkpoint_loads_into_transformers(tmp_path, name):
    cfg = make_config(name)
    torch.manual_seed(3)
    ours = HybridLM(cfg).eval()
    randomize_(ours, 3)
    save_pretrained(ours, tmp_path)
    ref = Qwen3NextForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    ids = batch(cfg, seed=4)
    with torch.no_grad():
        want = ref(ids).logits
        got = ours(ids).logits
    assert (got - want).abs().max().item() <= 1e-4


def test_aux_loss_matches_transformers_with_one_moe_layer(tmp_path):
    # With a single MoE layer our per-layer balancing loss and HF's pooled one are the same number.
    cfg = make_config("3to1_gqa_top2").replace(mlp_only_layers=[0, 1, 2])
    ref = hf_model(cfg, seed=5)
    ref.save_pretrained(tmp_path)
    ours = load_pretrained(tmp_path, config_overrides={"kernel": "torch"})
    ids = batch(cfg, seed=6)
    with torch.no_grad():
        want = ref(ids, output_router_logits=True, labels=ids)
        got = ours(ids, labels=ids)
    assert abs(got.aux_loss.item() - want.aux_loss.item()) < 1e-5
    assert abs(got.ce_loss.item() - (want.loss - cfg.router_aux_loss_coef * want.aux_loss).item()) < 1e-5


def test_sharded_checkpoint_with_mtp_roundtrip(tmp_path):
    cfg = make_config("3to1_gqa_top2").replace(num_nextn_predict_layers=1)
    torch.manual_seed(7)
    ours = HybridLM(cfg).eval()
    randomize_(ours, 7)
    files = save_pretrained(ours, tmp_path, max_shard_size="100KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len([f for f in files if f.suffix == ".safetensors"]) > 2
    names = set(index["weight_map"])
    # the released per-expert format and the released MTP names
    assert "model.layers.0.mlp.experts.7.gate_proj.weight" in names
    for n in ("mtp.fc.weight", "mtp.pre_fc_norm_embedding.weight", "mtp.pre_fc_norm_hidden.weight",
              "mtp.norm.weight", "mtp.layers.0.self_attn.q_proj.weight", "mtp.layers.0.mlp.experts.0.up_proj.weight"):
        assert n in names
    # the MTP depth is inferred from the tensors when config.json does not declare it (released configs)
    raw = json.loads((tmp_path / "config.json").read_text())
    raw.pop("num_nextn_predict_layers")
    raw.pop("mtp_num_hidden_layers")
    (tmp_path / "config.json").write_text(json.dumps(raw))
    back = load_pretrained(tmp_path)
    assert back.config.num_nextn_predict_layers == 1
    for (n1, p1), (n2, p2) in zip(ours.state_dict().items(), back.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1
    ids = batch(cfg, seed=8)
    with torch.no_grad():
        a, b = ours(ids, labels=ids), back(ids, labels=ids)
    assert a.mtp_logits.shape == (2, ids.shape[1], cfg.vocab_size)
    assert torch.equal(a.mtp_logits, b.mtp_logits)
    # transformers ignores mtp.* and reads the rest
    ref = Qwen3NextForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        assert (ref(ids).logits - a.logits).abs().max().item() <= 1e-4


def test_stacked_expert_checkpoint_loads(tmp_path):
    # transformers' in-memory names (experts.gate_up_proj [E, 2I, H]) are accepted too
    cfg = make_config("3to1_gqa_top2")
    torch.manual_seed(9)
    ours = HybridLM(cfg).eval()
    sd = {k: v.contiguous() for k, v in ours.state_dict().items()}
    save_file(sd, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    cfg.to_json(tmp_path / "config.json")
    back = load_pretrained(tmp_path)
    assert torch.equal(back.model.layers[0].mlp.experts.gate_up_proj, ours.model.layers[0].mlp.experts.gate_up_proj)


@pytest.fixture
def saved(tmp_path):
    cfg = make_config("3to1_gqa_top2")
    save_pretrained(HybridLM(cfg), tmp_path)
    return tmp_path, load_file(str(tmp_path / "model.safetensors"))


def test_missing_tensor_is_named(saved):
    path, sd = saved
    sd.pop("model.layers.1.linear_attn.A_log")
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing 1 tensor.*model\.layers\.1\.linear_attn\.A_log"):
        load_pretrained(path)


def test_unexpected_tensor_is_named(saved):
    path, sd = saved
    sd["model.layers.0.linear_attn.extra_bias"] = torch.zeros(3)
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"unexpected.*model\.layers\.0\.linear_attn\.extra_bias"):
        load_pretrained(path)


def test_wrong_shape_is_named(saved):
    path, sd = saved
    sd["model.layers.3.self_attn.k_proj.weight"] = torch.zeros(5, 64)
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"model\.layers\.3\.self_attn\.k_proj\.weight.*\[5, 64\].*\[32, 64\]"):
        load_pretrained(path)


def test_missing_files_are_reported(tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        load_pretrained(tmp_path)
    make_config("3to1_gqa_top2").to_json(tmp_path / "config.json")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_pretrained(tmp_path)


def test_cli_check(saved, capsys):
    from minicoder.cli import main

    path, sd = saved
    assert main(["model", "check", str(path)]) == 0
    assert "OK" in capsys.readouterr().out
    sd.pop("model.norm.weight")
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    assert main(["model", "check", str(path)]) == 2
    assert "model.norm.weight" in capsys.readouterr().err
