# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---


# %% [markdown]
# # 12 · Scaling up: from the toy model to Qwen3-Coder-Next
#
# Everything in the course ran the `toy` preset on a CPU. The same code scales by one word:
# `small` (one GPU) and `full` (the released 80B-A3B config). This notebook does the accounting for
# every preset on the meta device (instant anywhere), plans memory per GPU for training and
# inference, and shows the commands for a GPU node and a cluster. **Cells that need a GPU or a
# cluster say so, are skipped on a CPU, and show their expected output.**

# %%
import minicoder.viz.notebook  # noqa: F401  (figures that also render in static HTML: make site)
import importlib.util
import os

import torch

from minicoder.config import ModelConfig
from minicoder.model.accounting import count_parameters, flops_per_token
from minicoder.model.cache import cache_bytes_per_token
from minicoder.train.distributed import format_plan, gpus_needed, memory_plan

GPU = torch.cuda.is_available()
print(f"torch {torch.__version__}, GPU: {torch.cuda.get_device_name(0) if GPU else 'none (GPU cells are skipped)'}")

# %% [markdown]
# ## 1. The accounting table for every preset
#
# Parameters (total, and active per token: what the MoE's top-k actually multiplies), training FLOPs
# per token at 4k context, and the bf16 weights.

# %%
GiB = 2**30
print(f"{'preset':7s} {'layers':>6s} {'hidden':>6s} {'experts':>9s} {'total':>10s} {'active':>9s} "
      f"{'train GFLOP/tok':>16s} {'bf16 weights':>13s}")
for name in ("toy", "small", "full"):
    cfg = ModelConfig.from_preset(name)
    pc = count_parameters(cfg)
    fl = flops_per_token(cfg, seq_len=4096, training=True)["total"]
    print(f"{name:7s} {cfg.num_hidden_layers:6d} {cfg.hidden_size:6d} {cfg.num_experts:5d}/{cfg.num_experts_per_tok:<3d} "
          f"{pc.total / 1e9:9.3f}B {pc.active_without_embeddings / 1e9:8.3f}B {fl / 1e9:16.2f} "
          f"{2 * pc.total / GiB:10.1f} GiB")

# %% [markdown]
# ## 2. Memory plans per GPU
#
# **Training** (FSDP2: bf16 compute, fp32 master weights and AdamW state sharded over the GPUs,
# activation checkpointing): the fewest 80 GB GPUs that fit, and the per-GPU split.

# %%
for name in ("small", "full"):
    cfg = ModelConfig.from_preset(name)
    n = gpus_needed(cfg, gpu_gib=80.0, seq_len=4096)
    print(f"--- {name}: {n} x 80 GiB GPUs")
    print(format_plan(memory_plan(cfg, n, seq_len=4096, gpu_gib=80.0)))

# %% [markdown]
# **Inference**: bf16 weights plus the mixed cache. Only 1 layer in 4 keeps a KV cache that grows with
# the context; the Gated DeltaNet layers keep a constant state.

# %%
for name in ("small", "full"):
    cfg = ModelConfig.from_preset(name)
    w = 2 * count_parameters(cfg).total / GiB
    cb = cache_bytes_per_token(cfg, dtype_bytes=2)
    for ctx in (32_768, 262_144):
        kv = cb["kv_bytes_per_token"] * ctx / GiB
        st = cb["deltanet_state_bytes"] / GiB
        print(f"{name:5s} context {ctx:>7d}: weights {w:7.1f} GiB + KV {kv:6.2f} GiB + DeltaNet state {st:5.3f} GiB "
              f"= {w + kv + st:7.1f} GiB per sequence -> {max(1, int(-(-(w + kv + st) // 80)))} x 80 GiB")

# %% [markdown]
# ## 3. Training `small` on GPUs: torchrun + FSDP2
#
# One node, 8 GPUs (the same trainer as notebook 07; `--set` changes any config field):
#
#     torchrun --nproc-per-node 8 -m minicoder train --config small --steps 2000 --rows 8 --out runs/small
#     torchrun --nproc-per-node 8 -m minicoder train --config small --set num_experts=128 --out runs/small-e128
#     minicoder compare runs/small runs/small-e128 --out compare.html
#
# Expected on a CPU-only machine: nothing to run. The cell below runs a short real job when a GPU is
# present and otherwise prints what it would do.

# %%
if GPU:
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "minicoder", "train", "--config", "small", "--steps", "20",
                    "--out", "runs/small-smoke"], check=True)
else:
    print("skipped (needs a GPU). Expected: a tqdm bar over 20 steps, loss falling from ~10.4 "
          "(= ln 32768) and a final JSON line with the checkpoint path.")

# %% [markdown]
# ## 4. Rollouts on a Ray cluster
#
# The RL stage's rollout -> grading -> post-processing pipeline fans out over Ray workers, one
# sandbox per task (`pip install -e '.[scale]'`):
#
#     ray start --head                                    # on the head node
#     ray start --address HEAD_IP:6379                    # on each worker node
#     RAY_ADDRESS=auto minicoder rl --executor ray ...    # the RL stage (notebook 10)
#
# Without a cluster: skipped; `ray.init()` on one machine runs the same code with local workers.

# %%
if importlib.util.find_spec("ray") is not None and os.environ.get("RAY_ADDRESS"):
    import ray

    ray.init()
    print(ray.cluster_resources())
else:
    print("skipped (needs a Ray cluster: set RAY_ADDRESS). Expected: {'CPU': ..., 'node:...': 1.0, ...}")

# %% [markdown]
# ## 5. The real Qwen3-Coder-Next checkpoint, and a served model
#
# `minicoder.model.hf.load_pretrained(path)` reads a Hugging Face checkpoint folder (its
# `config.json` becomes a `ModelConfig`; safetensors shards map onto our modules). The 80B weights
# need about 150 GiB in bf16: several GPUs, or one large one. Any model served behind an
# OpenAI-compatible endpoint (vLLM, SGLang, `minicoder serve`) can be evaluated on held-out tasks
# with the same sandbox rewards.

# %%
from minicoder.model.hf import load_pretrained  # noqa: F401  (the loader used below)

CKPT = os.environ.get("QWEN3_CODER_NEXT_PATH")
if GPU and CKPT:
    model = load_pretrained(CKPT, device="cuda", dtype=torch.bfloat16)
    print(model.config.num_hidden_layers, "layers loaded")
else:
    print("skipped (needs a GPU node and QWEN3_CODER_NEXT_PATH=<checkpoint folder>). Expected: "
          "'48 layers loaded' and about 150 GiB of bf16 weights across the GPUs.")

# %%
ENDPOINT = os.environ.get("OPENAI_BASE_URL")
if ENDPOINT:
    from openai import OpenAI

    client = OpenAI(base_url=ENDPOINT, api_key=os.environ.get("OPENAI_API_KEY", "none"))
    reply = client.chat.completions.create(model=os.environ.get("MODEL", "qwen3-coder-next"),
                                           messages=[{"role": "user", "content": "def add(a, b):"}], max_tokens=32)
    print(reply.choices[0].message.content)
else:
    print("skipped (needs a served model: OPENAI_BASE_URL=http://host:8000/v1). Expected: a short completion; "
          "the RL stage's evaluation then grades the model's patches in the sandbox (pass@1 on held-out tasks).")

# %% [markdown]
# **Takeaways.** The same `ModelConfig` scales from 4 M to 80 B parameters by its preset name; the
# accounting and memory plans run anywhere on the meta device; only the commands above need the
# hardware.
