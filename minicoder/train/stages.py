"""Ready-made runs: datasets for pretraining (a code corpus) and mid-training (agent trajectories),
the unigram-entropy yardstick, building a model for a tokenizer, and the demo stage.

Pretraining data: documents from `minicoder.data.corpus` (stdlib, a git repository, HumanEval),
tokenized with a `CodeTokenizer` (each ending with ``<|endoftext|>``), Best-Fit packed into rows.
Mid-training data: trajectories from tasks (`trajectories.py`), rendered with the Qwen3-Coder chat
template, with loss only on assistant tokens, packed the same way (a trajectory longer than a row is
split into pieces, as Best-Fit Packing does with any long document).

The yardstick: a model that ignored context could at best predict the unigram distribution of
the tokens, whose entropy H = -sum_v p_v log p_v (nats) is then its loss; a loss clearly below H
means the model uses context.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minicoder.train.data import PackedDataset


def unigram_entropy(tokens: np.ndarray | Sequence[int], vocab_size: int | None = None) -> float:
    """Entropy (nats) of the empirical token distribution of `tokens`."""
    t = np.asarray(tokens, dtype=np.int64)
    if t.size == 0:
        raise ValueError("no tokens")
    c = np.bincount(t, minlength=vocab_size or 0).astype(np.float64)
    p = c[c > 0] / c.sum()
    return float(-(p * np.log(p)).sum())


def target_entropy(ds: PackedDataset) -> float:
    """Unigram entropy of exactly the tokens the loss is computed on (the labels of every row)."""
    b = ds.batch(np.arange(len(ds)))
    return unigram_entropy(b.labels[b.loss_mask])


def corpus_dataset(tokenizer, seq_len: int, source: str = "stdlib", path: str | None = None,
                   max_files: int | None = 200, max_bytes: int | None = None, seed: int = 0,
                   method: str = "bfd", skip_files: int = 0) -> PackedDataset:
    """A packed pretraining dataset from a code corpus (see `minicoder.data.corpus.iter_corpus`).

    `skip_files` drops the first files of the seeded order (a held-out split: train on files
    [skip:], evaluate on another call's [:skip]).
    """
    from minicoder.data.corpus import iter_corpus

    n = None if max_files is None else max_files + skip_files
    docs = [d.text for d in iter_corpus(source, path=path, max_files=n, max_bytes=max_bytes, seed=seed)][skip_files:]
    if not docs:
        raise ValueError(f"corpus {source!r} gave no documents")
    rag = tokenizer.encode_documents(docs)
    return PackedDataset.from_token_lists([rag[i] for i in range(len(rag))], seq_len, method=method,
                                          pad_id=tokenizer.pad_id)


def trajectory_dataset(trajectories, tokenizer, seq_len: int, method: str = "bfd") -> PackedDataset:
    """A packed mid-training dataset: chat-rendered trajectories, loss on assistant tokens only."""
    from minicoder.train.trajectories import encode_trajectories

    ids, masks = encode_trajectories(trajectories, tokenizer)
    if not ids:
        raise ValueError("no trajectories to train on")
    eos = tokenizer.eos_id
    ids = [i + [eos] for i in ids]  # documents end with <|endoftext|>, as in pretraining (not trained)
    masks = [m + [0] for m in masks]
    return PackedDataset.from_token_lists(ids, seq_len, trainable=masks, method=method, pad_id=tokenizer.pad_id)


def build_model(config: str | os.PathLike, vocab_size: int | None = None, seed: int = 0, device: str = "cpu",
                **overrides: Any):
    """A fresh HybridLM from a preset name (toy / small / full) or an HF config.json path; the
    vocabulary is resized to the tokenizer's when `vocab_size` is given."""
    from minicoder.config import PRESETS, ModelConfig
    from minicoder.model import HybridLM

    if str(config) in PRESETS:
        cfg = ModelConfig.from_preset(str(config), **overrides)
    else:
        p = Path(config)
        if not p.is_file():
            raise ValueError(f"--config {config!r} is neither a preset ({sorted(PRESETS)}) nor a config.json file")
        cfg = ModelConfig.from_json(p).replace(**overrides) if overrides else ModelConfig.from_json(p)
    if vocab_size is not None and cfg.vocab_size != vocab_size:
        cfg = cfg.replace(vocab_size=vocab_size)
    torch.manual_seed(seed)
    with torch.device(device):
        model = HybridLM(cfg)
    return model, cfg


def demo_stage(out_dir: str | os.PathLike, steps: int = 80, seq_len: int = 256, max_files: int = 120,
               time_limit_s: float | None = 90.0) -> dict[str, Any]:
    """The training stage of ``minicoder demo``: a short toy pretraining run on the packed stdlib corpus.

    Writes ``out_dir/train/`` (checkpoints/, metrics.jsonl, tokenizer.json, loss.html) and returns
    {"checkpoint", "metrics", "tokenizer", "first_loss", "last_loss", "unigram_entropy", "steps"}.
    Reuses ``out_dir/tokenizer.json`` when the data stage wrote one.
    """
    from minicoder.data.tokenizer import CodeTokenizer, train_tokenizer
    from minicoder.train.metrics import plot_metrics
    from minicoder.train.trainer import TrainConfig, Trainer

    out = Path(out_dir)
    run = out / "train"
    run.mkdir(parents=True, exist_ok=True)
    tok_path = out / "tokenizer.json"
    if tok_path.is_file():
        tok = CodeTokenizer.load(tok_path)
    else:
        from minicoder.data.corpus import iter_corpus

        tok = train_tokenizer([d.text for d in iter_corpus("stdlib", max_files=max_files, seed=0)], vocab_size=2048)
    tok.save(run / "tokenizer.json")
    ds = corpus_dataset(tok, seq_len, max_files=max_files)
    H = target_entropy(ds)
    model, mcfg = build_model("toy", vocab_size=tok.vocab_size)
    cfg = TrainConfig(steps=steps, rows=4, lr=3e-3, warmup_steps=max(1, steps // 10), progress=True)
    tr = Trainer(model, ds, cfg, out_dir=run, extra_state={"tokenizer": str(run / "tokenizer.json")})
    print(f"train: toy model, {model.num_parameters() / 1e6:.2f}M parameters, {len(ds)} packed rows of {seq_len}, "
          f"unigram entropy {H:.3f} nats")
    recs = tr.fit(time_limit_s=time_limit_s)
    tr.close()
    plot_metrics(run / "metrics.jsonl", title="toy pretraining").write_html(run / "loss.html", include_plotlyjs="cdn")
    from minicoder.train.checkpoint import latest_checkpoint

    res = {"checkpoint": str(latest_checkpoint(run / "checkpoints")), "metrics": str(run / "metrics.jsonl"),
           "tokenizer": str(run / "tokenizer.json"), "first_loss": recs[0]["loss"], "last_loss": recs[-1]["loss"],
           "unigram_entropy": H, "steps": tr.step}
    print(f"train: loss {res['first_loss']:.3f} -> {res['last_loss']:.3f} in {tr.step} steps "
          f"(unigram entropy {H:.3f}); checkpoint {res['checkpoint']}")
    return res
