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
# # 00 · Tour: the map of the course, and is this machine ready?
#
# minicoder rebuilds, at toy size and for real, the system behind an agentic coding model
# (Qwen3-Coder-Next): the data, the hybrid Gated DeltaNet / attention model with experts, the tasks
# it learns from, the sandboxes that grade it, and the RL loop. Every notebook imports the library
# (`minicoder/`), re-derives the one piece it teaches, checks it against the library, and sets an
# exercise at that key step (`minicoder.course.check`).
#
# | notebook | what it teaches | library |
# |---|---|---|
# | 01 data and packing | a code corpus, a byte-level BPE, Best-Fit Packing | `minicoder.data` |
# | 02 Gated DeltaNet | the delta rule as online regression; chunked form | `minicoder.ops.gated_delta` |
# | 03 gated attention | the per-head output gate; attention sinks | `minicoder.model.attention` |
# | 04 MoE | top-k routing, the shared expert, load balancing | `minicoder.model.moe` |
# | 05 hybrid model | the 3:1 stack, mixed caches, HF checkpoints | `minicoder.model` |
# | 06 Triton kernels | tiles, masks, `tl.dot`; the chunked kernels and grouped GEMM | `minicoder.ops` |
# | 07 pretraining | token-weighted loss over packed rows, exact resume, FSDP2 | `minicoder.train` |
# | 08 task synthesis | mined and mutated bug-fix tasks, validated | `minicoder.tasks` |
# | 09 container rewards | sandboxed hidden tests as rewards, hostile patches | `minicoder.sandbox` |
# | 10 agentic RL | GRPO on sandbox rewards (written with the RL stage) | `minicoder.rl` |
# | 11 secure code | exploit tests, a bandit penalty, func-sec@1 per vulnerability class | `minicoder.sandbox.security` |
# | 12 scaling up | from toy to the full 80B config: accounting, memory, clusters | all |
#
# The whole loop at once: `make demo` (a report in `runs/demo/report.html`).

# %% [markdown]
# ## The environment check
#
# `minicoder doctor` runs the same checks from a shell. Each line is `ok`, `warn` (optional: the
# course still runs, e.g. without a GPU) or `FAIL` (the demo cannot run), with what to do.

# %%
import minicoder.viz.notebook  # noqa: F401  (figures that also render in static HTML: make site)
import os
import platform

import minicoder
from minicoder.doctor import checks, format_checks

print(f"python {platform.python_version()}  minicoder {minicoder.__version__}  ({minicoder.__file__})")
results = checks(run_task=os.environ.get("MINICODER_CI") != "1")  # CI: skip grading a sample task
print(format_checks(results))
status = {c.name: c.status for c in results}
assert status["python"] == "ok" and status["torch"] == "ok" and status["minicoder"] == "ok"

# %% [markdown]
# What each optional piece buys you:
#
# - **GPU** (`cuda`): the `small` preset, bf16 autocast, and the Triton / fla kernels at full speed.
#   Without one every notebook runs at toy size on the CPU (the Triton notebook uses the interpreter).
# - **Docker engine** (`docker`): sandboxes from per-task images; without it the local bubblewrap
#   sandbox grades the same tasks (`make docker` starts an engine and builds the base image).
# - **bubblewrap**: the local sandbox (`apt-get install bubblewrap`); the demo needs it or Docker.
# - **fla**: flash-linear-attention's kernels, used on a GPU when installed (`kernel="auto"`).
# - **Ray**: fans rollouts and rewards out over a cluster (notebook 12); one machine needs none.

# %% [markdown]
# ## Where to go next
#
# Start with `01_data_and_packing`. Run `make lab` for student copies (`labs/`, solutions removed) and
# `make site` for the static pages of the whole course (`site/index.html`).
