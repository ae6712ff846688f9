"""Pretraining and agentic mid-training: one trainer for the notebooks, the CLI and the RL stage.

    from minicoder.train import Trainer, TrainConfig, PackedDataset, corpus_dataset, build_model
    ds = corpus_dataset(tokenizer, seq_len=256)                 # packed stdlib code
    model, cfg = build_model("toy", vocab_size=tokenizer.vocab_size)
    Trainer(model, ds, TrainConfig(steps=200), out_dir="runs/x").fit()

Files: schedule.py (warmup + cosine), optim.py (AdamW decay groups), data.py (packed rows, sampler),
trainer.py (the loop), checkpoint.py (atomic, keep-last-N, RNG), metrics.py (JSONL + plotly),
chat.py (Qwen3-Coder chat template, tool-call parser), trajectories.py (tasks -> agent episodes),
distributed.py (torchrun, FSDP2, memory plan), stages.py (datasets, demo stage), cli.py.
"""

from minicoder.train.data import PackedDataset, RowSampler
from minicoder.train.schedule import WarmupCosine
from minicoder.train.stages import (
    build_model,
    corpus_dataset,
    demo_stage,
    target_entropy,
    trajectory_dataset,
    unigram_entropy,
)
from minicoder.train.trainer import TrainConfig, Trainer

__all__ = ["PackedDataset", "RowSampler", "TrainConfig", "Trainer", "WarmupCosine", "build_model",
           "corpus_dataset", "demo_stage", "target_entropy", "trajectory_dataset", "unigram_entropy"]
