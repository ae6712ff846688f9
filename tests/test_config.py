"""ModelConfig: presets, HF config.json round trips, validation errors that name the field."""

from __future__ import annotations

import json

import pytest

from minicoder.config import ConfigError, ModelConfig, default_layer_types


def test_full_preset_is_qwen3_coder_next():
    c = ModelConfig.from_preset("full")
    assert (c.num_hidden_layers, c.hidden_size, c.vocab_size, c.max_position_embeddings) == (48, 2048, 151936, 262144)
    # 12 x (3 x DeltaNet -> 1 x attention)
    assert c.layer_types == (["linear_attention"] * 3 + ["full_attention"]) * 12
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.rotary_dim) == (16, 2, 256, 64)
    assert (c.linear_num_key_heads, c.linear_num_value_heads, c.linear_key_head_dim, c.linear_value_head_dim) == (
        16, 32, 128, 128)
    assert (c.num_experts, c.num_experts_per_tok, c.moe_intermediate_size, c.shared_expert_intermediate_size) == (
        512, 10, 512, 512)
    assert c.linear_conv_kernel_dim == 4 and c.rope_theta == 5_000_000 and c.num_nextn_predict_layers == 1
    assert all(c.is_moe_layer(i) for i in range(48))


@pytest.mark.parametrize("name", ["toy", "small", "full"])
def test_presets_roundtrip_through_transformers_config(name, tmp_path):
    from transformers import Qwen3NextConfig

    c = ModelConfig.from_preset(name)
    hf = Qwen3NextConfig(**c.to_hf_dict())
    # transformers' own default for the interval of full-attention layers gives the same pattern
    assert Qwen3NextConfig(num_hidden_layers=c.num_hidden_layers).layer_types == c.layer_types
    assert hf.rope_parameters["rope_theta"] == c.rope_theta
    assert hf.rope_parameters["partial_rotary_factor"] == c.partial_rotary_factor
    # the config.json transformers writes reads back into the same config (it keeps our extra keys)
    hf.save_pretrained(tmp_path)
    assert ModelConfig.from_json(tmp_path / "config.json") == c
    # and our config.json reads back exactly
    c.to_json(tmp_path / "ours.json")
    assert ModelConfig.from_json(tmp_path / "ours.json") == c


def test_released_style_config_dict():
    # released checkpoints: top-level rope_theta / partial_rotary_factor, full_attention_interval,
    # no layer_types, no MTP field
    d = dict(model_type="qwen3_next", num_hidden_layers=8, full_attention_interval=2, rope_theta=1e7,
             partial_rotary_factor=0.5, rope_scaling=None, hidden_size=2048, unknown_key=1)
    c = ModelConfig.from_hf_dict(d)
    assert c.layer_types == ["linear_attention", "full_attention"] * 4
    assert c.rope_theta == 1e7 and c.rotary_dim == 128 and c.num_nextn_predict_layers == 0
    assert default_layer_types(4) == ["linear_attention"] * 3 + ["full_attention"]


def test_preset_overrides_and_replace():
    c = ModelConfig.from_preset("toy", num_hidden_layers=8)
    assert len(c.layer_types) == 8
    assert len(c.replace(num_hidden_layers=12).layer_types) == 12


@pytest.mark.parametrize(
    "change, field",
    [
        (dict(num_key_value_heads=3), "num_key_value_heads"),
        (dict(linear_num_value_heads=5), "linear_num_value_heads"),
        (dict(layer_types=["linear_attention", "mamba", "linear_attention", "full_attention"]), "layer_types"),
        (dict(layer_types=["full_attention"] * 3), "layer_types"),
        (dict(num_experts_per_tok=17), "num_experts_per_tok"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(partial_rotary_factor=0.03), "partial_rotary_factor"),
        (dict(mlp_only_layers=[4]), "mlp_only_layers"),
        (dict(kernel="cuda"), "kernel"),
    ],
)
def test_validation_names_the_field(change, field):
    with pytest.raises(ConfigError, match=rf"ModelConfig\.{field}"):
        ModelConfig.from_preset("toy", **change)


def test_bad_files_and_names(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        ModelConfig.from_preset("huge")
    with pytest.raises(ConfigError, match="rope_type = 'yarn'"):
        ModelConfig.from_hf_dict({"rope_parameters": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ConfigError, match="model_type"):
        ModelConfig.from_hf_dict({"model_type": "llama"})
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.from_json(tmp_path / "c.json")


def test_hf_dict_uses_hf_names():
    d = ModelConfig.from_preset("full").to_hf_dict()
    assert d["model_type"] == "qwen3_next" and d["architectures"] == ["Qwen3NextForCausalLM"]
    from transformers import Qwen3NextConfig

    hf = Qwen3NextConfig(**json.loads(json.dumps(d)))  # serialisable, and transformers reads every value
    for key in ("linear_num_value_heads", "moe_intermediate_size", "shared_expert_intermediate_size",
                "num_experts_per_tok", "norm_topk_prob", "router_aux_loss_coef", "layer_types"):
        assert getattr(hf, key) == d[key], key
    assert hf.rope_parameters["rope_theta"] == d["rope_parameters"]["rope_theta"] == 5_000_000
