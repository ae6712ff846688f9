"""The data stage: real code corpora -> byte-level BPE tokenizer -> Best-Fit Packing.

  corpus.py     Document streams from the stdlib, git repositories (HEAD) and HumanEval; dedup
  tokenizer.py  CodeTokenizer: train a byte-level BPE with Qwen's special tokens, or load Qwen's
  packing.py    best_fit_pack (fast, exact BFD), concat_pack, pad_pack, PackedBatch, streaming
  cli.py        `minicoder pack`, and demo_stage(out_dir) for `minicoder demo`
"""

from __future__ import annotations


def demo_stage(out_dir, **kw) -> dict:
    """The data stage of the end-to-end demo (see ``minicoder.data.cli.demo_stage``)."""
    from .cli import demo_stage as _demo_stage

    return _demo_stage(out_dir, **kw)
