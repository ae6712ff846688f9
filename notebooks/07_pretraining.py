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
# # 07 · Pretraining and agentic mid-training on packed data
#
# The model of notebook 05 has random weights. Here it learns, twice:
#
# 1. **Pretraining** on real code (the Python standard library), Best-Fit packed into rows, with the
#    trainer every stage of minicoder shares (`minicoder.train.Trainer`): AdamW with a warmup + cosine
#    schedule, gradient clipping, the MoE load-balancing loss, metrics to a JSONL file, checkpoints
#    that resume bit-for-bit.
# 2. **Agentic mid-training** on *trajectories*: synthesized tasks turned into short agent episodes in
#    the Qwen3-Coder chat format (read a file, run the tests, apply a patch, run them again, submit),
#    with the loss only on what the assistant says.
#
# A toy model on a CPU for a minute will not write good code. What it *will* do, measurably, is beat
# the best model that ignores context (the unigram entropy), and pick up the agent format.
# Under `MINICODER_CI=1` (the tests) each training run is capped at about a minute.

# %%
import minicoder.viz.notebook  # noqa: F401  (figures that also render in static HTML: make site)
import os, time, math, platform
from pathlib import Path
import numpy as np
import torch
import plotly.graph_objects as go
from IPython.display import HTML, display

import minicoder
from minicoder.data.corpus import iter_corpus
from minicoder.data.tokenizer import train_tokenizer
from minicoder.model import generate
from minicoder.train import (TrainConfig, Trainer, WarmupCosine, build_model, corpus_dataset,
                             target_entropy, trajectory_dataset, unigram_entropy)
from minicoder.train.metrics import plot_metrics, plot_expert_load
from minicoder.agent import chat
from minicoder.agent.chat import AGENT_TOOLS
from minicoder.train import checkpoint as ckpt
from minicoder.train.trajectories import build_trajectories

CI = os.environ.get("MINICODER_CI") == "1"
PRETRAIN_SECONDS = 45 if CI else 600
MIDTRAIN_SECONDS = 15 if CI else 300
# A toy model is hundreds of tiny ops per step: one thread is about as fast as several, and on a
# busy machine extra threads spin against each other and can make a step many times slower.
torch.set_num_threads(1 if CI else min(4, os.cpu_count() or 1))
RUN = Path("../runs/nb07")
print(f"python {platform.python_version()}, torch {torch.__version__}, minicoder {minicoder.__version__}, CI={CI}")

# %% [markdown]
# ## 1. Data: stdlib code, a BPE tokenizer, Best-Fit packed rows
#
# Notebook 01 built these pieces; here they are just used. Each file becomes one document ending in
# `<|endoftext|>`; documents are packed into rows of `L = 256` tokens with Best-Fit Packing, so no
# document is cut unless it is longer than a row. A held-out set of *other* files measures what the
# model learned rather than what it memorised.

# %%
SEQ_LEN = 256
N_FILES = 150 if CI else 600
texts = [d.text for d in iter_corpus("stdlib", max_files=N_FILES + 20, seed=0)]
tok = train_tokenizer(texts[20:], vocab_size=2048)
train_ds = corpus_dataset(tok, SEQ_LEN, max_files=N_FILES, skip_files=20)
held_ds = corpus_dataset(tok, SEQ_LEN, max_files=20)
print(tok)
print(f"train: {len(train_ds)} rows x {SEQ_LEN} = {train_ds.useful_tokens():,} tokens, "
      f"{train_ds.packing.stats.summary()}")
print(f"held out: {len(held_ds)} rows")

# %% [markdown]
# ### The yardstick: unigram entropy
#
# A model that ignores context can at best predict each token with its overall frequency `p_v`; its
# loss is then the entropy `H = -Σ p_v log p_v` of the tokens it is scored on. Re-derived in three
# lines and checked against the library:

# %%
b = train_ds.batch(np.arange(len(train_ds)))
targets = b.labels[b.loss_mask]              # exactly the tokens the loss is computed on
p = np.bincount(targets) / targets.size
H_mine = float(-(p[p > 0] * np.log(p[p > 0])).sum())
H = target_entropy(train_ds)
assert abs(H_mine - H) < 1e-12 and abs(H - unigram_entropy(targets)) < 1e-12
print(f"unigram entropy H = {H:.3f} nats/token;  uniform over {tok.vocab_size} ids would be {math.log(tok.vocab_size):.3f}")

# %% [markdown]
# ### Exercise `07.loss_labels`
#
# The packed-batch loss mask, by hand: given one packed row's `input_ids` and `doc_ids` (-1 on
# padding), return the pre-shifted labels (`input_ids[t + 1]` when t and t + 1 are in the same
# piece, else -100). The trainer's loss is computed exactly on the positions you keep.

# %%
import numpy as np

from minicoder.course import check


def labels(input_ids, doc_ids):
    # BEGIN SOLUTION
    out = np.full_like(input_ids, -100)
    same = (doc_ids[1:] == doc_ids[:-1]) & (doc_ids[:-1] >= 0)
    out[:-1][same] = input_ids[1:][same]
    return out
    # END SOLUTION


check("07.loss_labels", labels);


# %% [markdown]
# ## 2. The schedule and the optimizer
#
# Linear warmup, then cosine decay to 10% of the peak. The rate is a pure function of the step, so
# resuming needs only the step counter. AdamW's weight decay applies to weight matrices *and* to the
# zero-centred norm weights (`y = x/rms(x) * (1 + w)`: decay pulls `w` to 0, the scale to 1, as in
# Qwen3-Next), not to embeddings, biases, the gated norm's plain scale or DeltaNet's `A_log`/`dt_bias`.

# %%
STEPS = 120 if CI else 1500
sched = WarmupCosine(peak_lr=3e-3, total_steps=STEPS, warmup_steps=STEPS // 10, min_ratio=0.1)
# one value by hand: at step s after warmup, floor + (peak - floor) * (1 + cos(pi * progress)) / 2
w, s = STEPS // 10, STEPS // 2
assert abs(sched(s) - (0.3e-3 + 2.7e-3 * 0.5 * (1 + math.cos(math.pi * (s - w) / (STEPS - w))))) < 1e-15
go.Figure(go.Scatter(y=[sched(s) for s in range(STEPS)], mode="lines")).update_layout(
    title="learning rate", xaxis_title="step", height=300)

# %% [markdown]
# ## 3. The toy model, before training
#
# The `toy` preset (hybrid Gated DeltaNet + gated attention, 16-expert MoE, MTP head), with its
# vocabulary sized to the tokenizer. Sampling from it now gives noise:

# %%
model, mcfg = build_model("toy", vocab_size=tok.vocab_size, seed=0)
print(f"{model.num_parameters() / 1e6:.2f}M parameters; layers {mcfg.layer_types}")
PROMPT = "def fibonacci(n):\n    "

def sample(prompt, n=60):
    model.eval()
    out = generate(model, [tok.encode(prompt)], max_new_tokens=n, temperature=0.0)
    model.train()
    return prompt + tok.decode(out.tokens[0])

before = sample(PROMPT)
print(before)

# %% [markdown]
# ## 4. Pretraining
#
# `Trainer.fit` runs optimizer steps of a few packed rows (512 token slots in CI), logs every step to
# `metrics.jsonl` and writes a checkpoint at the end (model, optimizer, step, RNG states and data
# position, written atomically). The progress bar shows loss, learning rate and tokens per second.

# %%
import shutil
shutil.rmtree(RUN, ignore_errors=True)
cfg = TrainConfig(steps=STEPS, rows=2 if CI else 4, lr=5e-3 if CI else 3e-3, warmup_steps=STEPS // 10, keep_last=2)
trainer = Trainer(model, train_ds, cfg, out_dir=RUN / "pretrain")
t0 = time.perf_counter()
recs = trainer.fit(time_limit_s=PRETRAIN_SECONDS)
trainer.close()
held = trainer.evaluate(held_ds, max_rows=16 if CI else 128)
print(f"{trainer.step} steps in {time.perf_counter() - t0:.0f}s; train loss {recs[0]['loss']:.3f} -> {recs[-1]['loss']:.3f}; "
      f"held-out loss {held:.3f} vs unigram entropy {H:.3f}")
print("checkpoints:", [p.name for p in ckpt.list_checkpoints(RUN / "pretrain" / "checkpoints")])

# %%
fig = plot_metrics(RUN / "pretrain" / "metrics.jsonl", title="toy pretraining on stdlib code")
fig.add_hline(y=H, line_dash="dash", annotation_text="unigram entropy", row=1, col=1)
fig

# %% [markdown]
# ### Expert load
#
# Each MoE layer routes every token to 2 of 16 experts. The heatmap shows, per step, the share of
# routing slots each expert received (averaged over layers); uniform is 1/16. The load-balancing loss
# (with expert frequencies counted over the whole batch) keeps any expert from starving.

# %%
plot_expert_load(RUN / "pretrain" / "metrics.jsonl")

# %% [markdown]
# ### After training
#
# The same prompt, greedy decoding:

# %%
after = sample(PROMPT)
print("BEFORE:\n" + before + "\n\nAFTER:\n" + after)

# %% [markdown]
# ## 5. Agent trajectories for mid-training
#
# A synthesized task has a problem statement, a repository snapshot, a gold patch and hidden tests
# (notebook 08). `build_trajectories` turns each into a successful episode with four tools. The test
# observations are **real**: the tests run in the sandbox (`minicoder.sandbox`), failing before the
# patch and passing after. The seed tasks ship in `data/tasks/seed_tasks.jsonl`; if that file is
# missing, three HumanEval-style tasks are made here by breaking a function.

# %%
from minicoder.record import Environment, Task, read_tasks
from minicoder.gitdiff import file_diff

seed_path = Path("../data/tasks/seed_tasks.jsonl")
if seed_path.exists():
    tasks = read_tasks(seed_path)
else:
    def mk(i, name, good, bad, test):
        src = f"def {name}(a, b):\n    return {bad}\n"
        fix = f"def {name}(a, b):\n    return {good}\n"
        t = f"from mod_{i} import {name}\n\n\ndef test_{name}():\n    {test}\n"
        return Task(instance_id=f"local_{i}", repo="minicoder/local", base_commit="", patch=file_diff(f"mod_{i}.py", src, fix),
                    test_patch=file_diff(f"test_mod_{i}.py", None, t), problem_statement=f"{name}() returns the wrong value.",
                    FAIL_TO_PASS=[f"test_mod_{i}.py::test_{name}"], PASS_TO_PASS=[], environment=Environment(files={f"mod_{i}.py": src}))
    tasks = [mk(0, "add", "a + b", "a - b", "assert add(2, 3) == 5"),
             mk(1, "maximum", "a if a > b else b", "a if a < b else b", "assert maximum(2, 7) == 7"),
             mk(2, "product", "a * b", "a + b", "assert product(3, 4) == 12")]
N_TASKS = 3 if CI else 40
t0 = time.perf_counter()
trajs, skipped = build_trajectories(tasks[:N_TASKS], runner="sandbox")
print(f"{len(trajs)} trajectories from {min(N_TASKS, len(tasks))} tasks in {time.perf_counter() - t0:.0f}s "
      f"(observations from: {sorted({t.observed for t in trajs})}); skipped: {skipped}")

# %% [markdown]
# ### One trajectory, as the model sees it
#
# Rendered with the Qwen3-Coder chat template: tool calls as
# `<tool_call>\n<function=NAME>\n<parameter=ARG>\nvalue\n</parameter>\n</function>\n</tool_call>`, tool
# results as a user turn wrapped in `<tool_response>`. Highlighted tokens carry loss (assistant output,
# each turn's `<|im_end|>` included); the rest (system prompt, issue, tool output) is context only.

# %%
import html
ids, mask = chat.encode_chat(trajs[0].messages, tok, tools=trajs[0].tools)
start = ids.index(tok.token_id("<|im_start|>"), 1)  # skip the long system prompt with the tool list
spans = []
for i, m in zip(ids[start:], mask[start:]):
    s = html.escape(tok.decode([i]))
    spans.append(f'<span style="background:#c6f6c6">{s}</span>' if m else s)
display(HTML('<pre style="white-space:pre-wrap;font-size:11px">' + "".join(spans) + "</pre>"))
print(f"{sum(mask)} of {len(mask)} tokens carry loss ({100 * sum(mask) / len(mask):.0f}%)")

# %% [markdown]
# The parser the RL stage uses reads each assistant turn back into a tool call (and reports malformed
# ones instead of raising). Every turn of the trajectory round-trips:

# %%
bodies = [t[: -len("<|im_end|>")] for t, f in chat.chat_segments(trajs[0].messages, tools=AGENT_TOOLS) if f]
for b in bodies:
    p = chat.parse_assistant(b, tools=AGENT_TOOLS)
    assert p.valid, p.errors
    print(f"{p.tool_calls[0].name:<12} args={list(p.tool_calls[0].arguments)}  text={p.content!r}")

# %% [markdown]
# ## 6. Mid-training
#
# The pretrained model continues on the trajectories (rows of 512 tokens, a fresh optimizer and
# schedule; a trajectory longer than a row is split, as Best-Fit Packing splits any long document). Loss only on assistant tokens: the model learns *when* to call which tool and *how* a
# call is written, not to predict file contents or test logs.

# %%
mid_ds = trajectory_dataset(trajs, tok, seq_len=512)
print(f"mid-training data: {len(mid_ds)} rows, {int(mid_ds.batch(np.arange(len(mid_ds))).loss_mask.sum())} trained targets")
MID_STEPS = 40 if CI else 300
mid = Trainer(model, mid_ds, TrainConfig(steps=MID_STEPS, rows=1, lr=2e-3, warmup_steps=4), out_dir=RUN / "midtrain")
mrecs = mid.fit(time_limit_s=MIDTRAIN_SECONDS)
mid.close()
scored = [r for r in mrecs if r["tokens"] > 0]  # a row of only system prompt has no assistant token
print(f"{mid.step} steps: assistant-token loss {scored[0]['loss']:.3f} -> {scored[-1]['loss']:.3f}")
plot_metrics(RUN / "midtrain" / "metrics.jsonl", title="mid-training on agent trajectories")

# %% [markdown]
# ### A sample conversation
#
# The prompt is a task's system turn (with the tools), its issue, and the generation prompt
# `<|im_start|>assistant\n`. Greedy decoding until `<|im_end|>`, then the parser judges the output:
# the text, the tool calls it could read, and what was malformed. Seconds of training on a handful of
# trajectories are not enough for well-formed calls; this is the measuring stick, not a claim. The
# RL stage uses exactly this parse, and penalises its errors.

# %%
msgs = trajs[0].messages[:2]
prompt = chat.render_chat(msgs, tools=AGENT_TOOLS, add_generation_prompt=True)
model.eval()
out = generate(model, [tok.encode(prompt, allow_special=True)], max_new_tokens=80, temperature=0.0,
               stop_tokens=[tok.token_id("<|im_end|>")])
reply = tok.decode(out.tokens[0])
print("ASSISTANT:\n" + reply)
parsed = chat.parse_assistant(reply, tools=AGENT_TOOLS)
print("\nparsed:", [(c.name, c.arguments) for c in parsed.tool_calls], "errors:", parsed.errors)


# %% [markdown]
# ## 7. Resume, exactly
#
# A checkpoint holds everything the next step depends on. Training 4 more steps from the saved
# mid-training checkpoint, twice, in two fresh trainers, gives identical weights: on a CPU in float32
# the computation is deterministic, so a stopped-and-resumed run equals an uninterrupted one (the
# tests check that against an uninterrupted run, on every weight and optimizer state).

# %%
def continue_from_checkpoint(out):
    m, _ = build_model("toy", vocab_size=tok.vocab_size, seed=123)   # different init: overwritten
    t = Trainer(m, mid_ds, TrainConfig(steps=MID_STEPS, rows=1, lr=2e-3, warmup_steps=4, progress=False), out_dir=out)
    t.resume(RUN / "midtrain" / "checkpoints")
    t.fit(steps=t.step + 4)
    t.close()
    return m.state_dict()

a = continue_from_checkpoint(RUN / "resume_a")
b = continue_from_checkpoint(RUN / "resume_b")
assert all(torch.equal(a[k], b[k]) for k in a)
print(f"identical after resuming: {len(a)} tensors")

# %% [markdown]
# ## Where this goes next
#
# - `minicoder train --config toy --steps 2000 --out runs/pretrain` runs the same loop from the shell;
#   `--resume` continues it; `torchrun --nproc-per-node N -m minicoder train --config small` shards it
#   with FSDP2.
# - `minicoder train --config full --plan` prints the memory plan of the 80B configuration (how many
#   80 GB GPUs its parameters, gradients, AdamW state and activations need).
# - The RL stage (notebook 10) reuses this trainer's pieces and the tool-call parser above.
