"""minicoder: rebuild, piece by piece and for real, the system behind an agentic coding model.

Stages (each a subpackage, each taught by a notebook in ``notebooks/``):
  data      corpus -> BPE tokenizer -> Best-Fit Packing
  ops       the kernels: gated delta rule (naive / chunked PyTorch / Triton / fla), MoE dispatch
  model     the hybrid Gated DeltaNet + gated attention + MoE decoder (Qwen3-Next layout)
  train     pretraining / mid-training loop with exact resume
  tasks     verifiable SWE task synthesis (git mining, mutation) and validation
  sandbox   container / namespace sandboxes and unhackable test-based rewards
  rl        multi-turn agent rollouts and GRPO
"""

__version__ = "0.1.0"
