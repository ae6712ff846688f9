"""Quick experiments: `--set key=value` config overrides, and `minicoder compare` of real runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from minicoder.cli import main
from minicoder.config import ConfigError, ModelConfig, apply_overrides, parse_override


def test_set_values_are_typed_by_the_field():
    assert parse_override("num_experts=32") == ("num_experts", 32)
    assert parse_override("rope_theta=1e6") == ("rope_theta", 1e6)
    assert parse_override("norm_topk_prob=false") == ("norm_topk_prob", False)
    assert parse_override("kernel=torch") == ("kernel", "torch")
    assert parse_override("layer_types=linear,linear,linear,full") == (
        "layer_types", ["linear_attention"] * 3 + ["full_attention"])
    assert parse_override("mlp_only_layers=0,2") == ("mlp_only_layers", [0, 2])
    assert parse_override("mlp_only_layers=") == ("mlp_only_layers", [])
    assert parse_override("pad_token_id=none") == ("pad_token_id", None)
    assert parse_override("eos_token_id=1,2") == ("eos_token_id", [1, 2])
    cfg = apply_overrides(ModelConfig.from_preset("toy"), ["num_experts=32", "layer_types=full,linear,linear,full"])
    assert cfg.num_experts == 32 and cfg.layer_types[0] == "full_attention"
    # more layers without a layout: the 3:1 pattern is re-derived
    assert apply_overrides(ModelConfig.from_preset("toy"), ["num_hidden_layers=8"]).layer_types.count("full_attention") == 2


@pytest.mark.parametrize("item, message", [
    ("num_expert=4", "no field 'num_expert'; did you mean num_experts"),
    ("num_experts=many", "ModelConfig.num_experts: 'many' is not a valid int"),
    ("layer_types=linear,full", "ModelConfig.layer_types: has 2 entries but num_hidden_layers = 4"),
    ("layer_types=linear,linear,linear,mamba", "entry 3 is 'mamba'"),
    ("num_experts_per_tok=17", "top-k = 17 must be in [1, num_experts = 16]"),
    ("hidden_size", "expected key=value"),
])
def test_bad_overrides_fail_with_the_configs_own_message(item, message):
    with pytest.raises(ConfigError) as e:
        apply_overrides(ModelConfig.from_preset("toy"), [item])
    assert message in str(e.value)


def test_commands_reject_a_bad_set_in_one_line_with_exit_2(capsys):
    assert main(["model", "info", "--preset", "toy", "--set", "num_experts=32", "--set",
                 "layer_types=linear,linear,linear,full"]) == 0
    assert "experts 32 top-2" in capsys.readouterr().out
    for argv in (["train", "--set", "num_expert=3", "--steps", "1"], ["model", "info", "--set", "head_dim=x"],
                 ["demo", "--quick", "--set", "layer_types=linear", "--list"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error: " in err[0] and "ModelConfig" in err[0]


def _train_run(folder, overrides, steps=3, seed=0):
    """A real (tiny) training run: toy model with `overrides`, random tokens, metrics.jsonl + config.json."""
    import torch

    from minicoder.model import HybridLM
    from minicoder.train import PackedDataset, TrainConfig, Trainer

    cfg = apply_overrides(ModelConfig.from_preset("toy"), ["vocab_size=128", "num_hidden_layers=2", *overrides])
    rng = np.random.default_rng(seed)
    docs = [rng.integers(1, 128, size=int(n)).tolist() for n in rng.integers(20, 120, size=24)]
    ds = PackedDataset.from_token_lists(docs, 64)
    torch.manual_seed(seed)
    tr = Trainer(HybridLM(cfg), ds, TrainConfig(steps=steps, rows=2, warmup_steps=1, progress=False), out_dir=folder)
    tr.fit()
    tr.close()
    cfg.to_json(folder / "config.json")
    return folder


def test_compare_two_real_runs_lists_the_config_difference_and_plots_both(tmp_path):
    from minicoder.viz.compare import compare

    a = _train_run(tmp_path / "experts16", [])
    b = _train_run(tmp_path / "experts8", ["num_experts=8"], steps=4)
    c = compare([a, b])
    assert c.config_differences() == {"model.num_experts": [16, 8]}
    fig = c.figure()
    traces = {(t.name, t.xaxis): list(t.x) for t in fig.data}
    assert traces[("experts16", "x")] == [1, 2, 3] and traces[("experts8", "x")] == [1, 2, 3, 4]  # loss panel
    assert ("experts8", "x4") in traces  # throughput panel
    losses = [json.loads(line)["loss"] for line in (b / "metrics.jsonl").read_text().splitlines()]
    assert list(fig.data[[t.name for t in fig.data].index("experts8")].y) == losses
    assert any(a.text == "no run has this metric" for a in fig.layout.annotations)  # reward: none yet
    page = c.write_html(tmp_path / "cmp.html").read_text()
    assert "model.num_experts" in page and page.count("plotly.js v") == 1 and "<script src=" not in page
    assert "model.num_experts" in c.text() and "experts8: loss" in c.text()


def test_compare_cli_writes_the_page_and_rejects_bad_folders(tmp_path, capsys):
    a = _train_run(tmp_path / "a", ["num_experts=4", "num_experts_per_tok=1"], steps=2)
    b = _train_run(tmp_path / "b", ["layer_types=full,full"], steps=2)
    assert main(["compare", str(a), str(b), "--names", "four,attn", "--out", str(tmp_path / "c.html")]) == 0
    out = capsys.readouterr().out
    assert "model.layer_types" in out and "model.num_experts_per_tok" in out and (tmp_path / "c.html").is_file()
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "metrics.jsonl").write_text('{"step": 1, "something": 2}\n')
    for bad, why in ((tmp_path / "nope", "no such run folder"), (tmp_path / "empty", "neither a training"),
                     (tmp_path / "junk", "none of loss, reward")):
        assert main(["compare", str(bad)]) == 2
        assert why in capsys.readouterr().err
