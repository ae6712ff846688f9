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
# # 04 · Mixture of experts: routing, the shared expert, load balancing, sorted dispatch
#
# Every layer of Qwen3-Coder-Next replaces the dense feed-forward network with a **mixture of experts**:
# 512 small SwiGLU networks, of which each token uses only 10, chosen by a learned **router**, plus one
# **shared expert** that every token uses. That is how an 80B-parameter model costs about 3B parameters
# of compute per token.
#
# 1. the router: softmax over experts, top-k, renormalise, re-derived and checked against `SparseMoE.route`;
# 2. the experts and the sigmoid-gated shared expert: the whole block by brute force, token by token;
# 3. the load-balancing loss $E\sum_e f_e P_e$: what it measures and its range;
# 4. training a tiny MoE language model with and without the balancing loss: expert load and its
#    coefficient of variation over the steps;
# 5. micro-batch vs **global-batch** balancing (Qiu et al., 2025), exactly and on the trained model;
# 6. computing the experts fast: sorted dispatch (one grouped GEMM) against the naive loop.
#
# Everything is `minicoder.model.moe` and `minicoder.ops.moe`; the notebook re-derives, checks and plots.

# %%
import minicoder.viz.notebook  # noqa: F401  (figures that also render in static HTML: make site)
import os, platform, time
import numpy as np
import torch
import torch.nn.functional as F
import plotly
import plotly.graph_objects as go
import minicoder
from minicoder.config import ModelConfig
from minicoder.model.moe import SparseMoE, ExpertLoadTracker, load_balancing_loss
from minicoder.ops.moe import moe_experts, available_kernels
from minicoder.ops.moe.sorted import sort_by_expert
from minicoder.data.corpus import iter_corpus
from minicoder.data.tokenizer import train_tokenizer
from minicoder.train import Trainer, TrainConfig, build_model, corpus_dataset
from minicoder.viz.model_plots import curves, expert_load_bars

CI = os.environ.get("MINICODER_CI") == "1"   # the test suite sets this: the training runs are shorter
torch.set_num_threads(1)   # tiny tensors: one thread avoids thread start-up cost and a busy CPU's noise
torch.manual_seed(0)
f64 = torch.float64
print(f"python {platform.python_version()}  torch {torch.__version__}  numpy {np.__version__}  "
      f"plotly {plotly.__version__}  minicoder {minicoder.__version__}")

# %% [markdown]
# ## 1. The router: softmax, top-k, renormalise
#
# The router is one linear map from the hidden state to $E$ logits. Qwen3-Next takes a softmax over
# **all** experts (in float32), keeps the $k$ largest probabilities, and, with `norm_topk_prob`,
# rescales those $k$ to sum to 1. The token's output is then the weighted sum of its $k$ experts'
# outputs. Using the toy config's block (16 experts, top-2), with random weights:

# %%
cfg = ModelConfig.from_preset("toy")
E, k = cfg.num_experts, cfg.num_experts_per_tok
moe = SparseMoE(cfg).double().requires_grad_(False)   # inspection only: no autograd graph
with torch.no_grad():
    for p in moe.parameters():
        p.normal_(0, 0.1)
x = torch.randn(32, cfg.hidden_size, dtype=f64)                  # 32 tokens

def route(x, router_weight, k, renormalise=True):
    """x: [N, H] -> (probs [N, E] float32, topk_ids [N, k], topk_weights [N, k])."""
    probs = (x @ router_weight.T).float().softmax(-1)
    weights, ids = probs.topk(k, dim=-1)
    if renormalise:
        weights = weights / weights.sum(-1, keepdim=True)
    return probs, ids, weights

probs, ids, weights = route(x, moe.gate.weight, k)
_, probs_lib, ids_lib, weights_lib = moe.route(x)
assert torch.equal(ids, ids_lib) and torch.allclose(probs, probs_lib) and torch.allclose(weights.to(f64), weights_lib)
assert torch.allclose(weights.sum(-1), torch.ones(32))

colors = ["crimson" if e in ids[0].tolist() else "#4C78A8" for e in range(E)]
fig = go.Figure(go.Bar(x=list(range(E)), y=probs[0].numpy(), marker_color=colors))
fig.update_layout(title=f"token 0: router probabilities over {E} experts; top-{k} in red "
                        f"(renormalised weights {[round(w, 3) for w in weights[0].tolist()]})",
                  xaxis_title="expert", yaxis_title="softmax probability", width=800, height=350)
fig.show()
print(f"token 0 goes to experts {ids[0].tolist()} with probabilities {[round(p, 3) for p in probs[0, ids[0]].tolist()]} "
      f"-> weights {[round(w, 3) for w in weights[0].tolist()]}")


# %% [markdown]
# ### Exercise `04.topk_routing`
#
# Route tokens to experts: softmax over **all** experts (in a numerically safe way), keep the `k`
# largest probabilities, and renormalise them to sum to 1 when `norm_topk_prob`. Return
# `(ids [N, k], weights [N, k])`. The checker compares with `SparseMoE.route`.

# %%
import torch

from minicoder.course import check


def topk_route(logits, k, norm_topk_prob):
    # BEGIN SOLUTION
    probs = torch.softmax(logits.double(), dim=-1)
    weights, ids = torch.topk(probs, k, dim=-1)
    if norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return ids, weights
    # END SOLUTION


check("04.topk_routing", topk_route);


# %% [markdown]
# ## 2. Experts and the gated shared expert, token by token
#
# Each expert is a SwiGLU: $\mathrm{down}\big(\mathrm{silu}(\mathrm{gate}\,x) \odot \mathrm{up}\,x\big)$. The
# library stores all experts in two stacked tensors, `gate_up_proj: [E, 2I, H]` (the $I$ gate rows, then
# the $I$ up rows) and `down_proj: [E, H, I]`. The shared expert is one more (wider) SwiGLU that every
# token uses, scaled per token by $\sigma(w_s^\top x)$, a learned scalar gate:
#
# $$y = \sum_{j=1}^{k} w_j\, \mathrm{Expert}_{e_j}(x) \;+\; \sigma(w_s^\top x)\,\mathrm{Shared}(x).$$
#
# The most literal implementation, one token and one expert at a time, equals the library's block:

# %%
def swiglu(x, w_gate, w_up, w_down):
    return (F.silu(x @ w_gate.T) * (x @ w_up.T)) @ w_down.T

def moe_block_brute_force(moe, x):
    """x: [N, H] -> [N, H], one token at a time."""
    _, ids, weights = route(x, moe.gate.weight, moe.top_k)
    I = moe.experts.down_proj.shape[-1]
    se = moe.shared_expert
    out = torch.zeros_like(x)
    for n in range(len(x)):
        for e, w in zip(ids[n].tolist(), weights[n].tolist()):
            gu = moe.experts.gate_up_proj[e]
            out[n] += w * swiglu(x[n], gu[:I], gu[I:], moe.experts.down_proj[e])
        shared_gate = torch.sigmoid(x[n] @ moe.shared_expert_gate.weight[0])
        out[n] += shared_gate * swiglu(x[n], se.gate_proj.weight, se.up_proj.weight, se.down_proj.weight)
    return out

with torch.no_grad():
    y_lib, stats = moe(x[None])                     # the block takes [B, T, H]
    y_ref = moe_block_brute_force(moe, x)
assert torch.allclose(y_lib[0], y_ref, atol=1e-12)
print(f"brute force == SparseMoE (max |diff| {(y_lib[0] - y_ref).abs().max():.1e})")

n_routed = moe.experts.gate_up_proj.numel() + moe.experts.down_proj.numel()
n_other = sum(p.numel() for p in moe.parameters()) - n_routed
print(f"this block: {n_routed + n_other:,} parameters, of which a token uses {n_other + n_routed * k // E:,} "
      f"(router + shared expert + {k} of {E} experts)")
full = ModelConfig.from_preset("full")
print(f"full config: {full.num_experts} experts, top-{full.num_experts_per_tok} + 1 shared -> a token uses "
      f"{full.num_experts_per_tok / full.num_experts:.1%} of the routed expert weights")


# %% [markdown]
# ## 3. The load-balancing loss
#
# Nothing in the language-model loss asks the router to spread tokens. Left alone it tends to
# **collapse**: experts that get tokens early get better, so they get more tokens, and the rest idle,
# wasting parameters (and, across GPUs, one device does all the work). The Switch-Transformer-style loss
# that Qwen uses pushes back:
#
# $$\mathcal{L}_{\text{aux}} = E \sum_{e=1}^{E} f_e\,P_e, \qquad
# f_e = \frac{\#\{\text{routing slots that went to } e\}}{N}, \quad P_e = \frac{1}{N}\sum_{n} p_{n,e}.$$
#
# $f_e$ counts tokens (it sums to $k$ and has no gradient); $P_e$ is the mean router probability (it
# sums to 1 and carries the gradient). The product is smallest when the experts that get the most slots
# get lower probability. Its range: perfectly uniform routing gives $E\cdot E\cdot\frac{k}{E}\cdot\frac1E = k$;
# all tokens on the same $k$ experts (each with probability $1/k$) gives $E$. The model adds
# `router_aux_loss_coef` times it to the loss (0.001 in Qwen3-Coder-Next, 0.01 in our toy preset).

# %%
def aux_loss(probs, ids, E):
    f = torch.bincount(ids.flatten(), minlength=E).double() / len(ids)     # sums to k
    P = probs.double().mean(0)                                              # sums to 1
    return E * (f * P).sum()

assert torch.allclose(aux_loss(probs, ids, E), load_balancing_loss([stats], E).double())
print(f"random router on 32 tokens: aux = {aux_loss(probs, ids, E):.3f}  (library {load_balancing_loss([stats], E):.3f})")

N = 4096
uniform_logits = torch.zeros(N, E)
uniform_ids = torch.stack([torch.arange(N) % E, (torch.arange(N) + 1) % E], 1)       # every expert k*N/E slots
collapsed_logits = torch.full((N, E), -30.0)
collapsed_logits[:, :k] = 0.0                                                       # only experts 0..k-1
print(f"uniform routing: aux = {aux_loss(uniform_logits.softmax(-1), uniform_ids, E):.3f} (= k = {k});  "
      f"collapsed onto {k} experts: aux = {aux_loss(collapsed_logits.softmax(-1), collapsed_logits.topk(k).indices, E):.3f} (= E = {E})")

# %% [markdown]
# ## 4. Training a tiny MoE language model with and without the balancing loss
#
# Three copies of a small MoE language model (the toy preset cut to 2 attention layers, each with a
# 16-expert top-2 MoE) on packed standard-library code, identical seed, data and schedule, differing
# only in the balancing coefficient: 0 (no balancing), 0.01 (the toy preset's) and 0.1. The trainer
# (`minicoder.train.Trainer`) records, every step, each layer's share of routing slots per expert over
# the step's batch. One number summarises a load vector: its **coefficient of variation**
# $\mathrm{CV} = \mathrm{std}_e(\text{load}_e)/\mathrm{mean}_e(\text{load}_e)$, 0 when perfectly balanced,
# $\sqrt{E/k - 1} = \sqrt{7} \approx 2.65$ when every token goes to the same 2 experts.

# %%
STEPS = 80 if CI else 300
t0 = time.perf_counter()
tok = train_tokenizer([d.text for d in iter_corpus("stdlib", max_files=120, seed=0)], vocab_size=2048)
ds = corpus_dataset(tok, seq_len=256, max_files=40)
print(f"tokenizer + data in {time.perf_counter() - t0:.1f}s: {len(ds)} packed rows of 256 tokens; {STEPS} steps x 4 rows per run")

runs = {}
for coef in (0.0, 0.01, 0.1):
    model, mcfg = build_model("toy", vocab_size=tok.vocab_size, seed=0, num_hidden_layers=2,
                              layer_types=["full_attention"] * 2, num_nextn_predict_layers=0)
    trainer = Trainer(model, ds, TrainConfig(steps=STEPS, rows=4, lr=3e-3, warmup_steps=10, seed=0,
                                             aux_loss_coef=coef, progress=False))
    c0 = time.process_time()
    recs = trainer.fit()
    load = torch.tensor([r["expert_load"] for r in recs])             # [steps, layers, E], rows sum to 1
    runs[coef] = dict(model=model, loss=[r["loss"] for r in recs], aux=[r["aux_loss"] for r in recs], load=load)
    cv = load.std(-1) / load.mean(-1)
    print(f"coef {coef:<5}: {time.process_time() - c0:4.1f} CPU-s  loss {recs[0]['loss']:.2f} -> {recs[-1]['loss']:.3f}  "
          f"CV (last 10 steps, per layer) {[round(c, 2) for c in cv[-10:].mean(0).tolist()]}  "
          f"busiest expert's share {[round(m, 3) for m in load[-10:].mean(0).max(-1).values.tolist()]} (balanced: {1 / E:.4f})")

# %%
cv_curves = {f"coef {c}, layer {i}": (r["load"].std(-1) / r["load"].mean(-1))[:, i] for c, r in runs.items() for i in range(2)}
curves(cv_curves, "coefficient of variation of the expert load, per step", yaxis="CV (0 = balanced)").show()
expert_load_bars({f"coef {c}": r["load"][-10:, 1].mean(0) for c, r in runs.items()},
                 "layer 1: share of routing slots per expert, last 10 steps", top_k=k).show()
curves({f"coef {c}": r["loss"] for c, r in runs.items()}, "training loss", yaxis="cross-entropy (nats/token)").show()

# %% [markdown]
# Without the balancing loss the load drifts away from uniform as training goes on: a few experts take
# a large share and some get almost nothing. The balancing loss holds the CV down, more with a larger
# coefficient, at a small cost in language-model loss over this short run (compare the curves;
# at a large coefficient the router eventually trades prediction quality for balance, which is why
# production values are small).
#
# ## 5. Micro-batch vs global-batch balancing
#
# $f_e$ and $P_e$ are averages over *some* set of tokens. The usual implementation computes them per
# **micro-batch** (what one device sees in one forward pass). But a micro-batch is small and often
# homogeneous (one long file, one language, one task), and *specialised* experts are the point of an
# MoE: a micro-batch of SQL should use the SQL experts. Micro-batch balancing penalises that, pushing
# every micro-batch toward uniform routing. **Global-batch balancing** (Qiu et al., 2025) computes $f_e$
# over the whole global batch (all micro-batches of the step, all-reduced over the data-parallel ranks)
# and only asks that to be uniform; $P_e$ stays local, so the gradient is the same local computation.
#
# The library does this with `ExpertLoadTracker`: each micro-batch's slot counts are added up (and
# all-reduced under `torch.distributed`), and `load_balancing_loss(stats, E, global_counts=f)` uses them.
# The trainer passes a tracker to the model, so training above already balanced over its step's batch.
#
# An exact example first: two "domains" whose tokens the router sends to disjoint halves of the experts
# (domain A to experts 0-7, B to 8-15), one micro-batch of each. Each micro-batch alone looks badly
# imbalanced; together they are perfectly balanced:

# %%
H = cfg.hidden_size
u = F.normalize(torch.randn(H, dtype=f64), dim=0)
block = SparseMoE(cfg).double().requires_grad_(False)
with torch.no_grad():
    block.gate.weight.copy_(torch.cat([20 * u.expand(E // 2, H), -20 * u.expand(E // 2, H)]) + 0.05 * torch.randn(E, H, dtype=f64))
noise = torch.randn(2, 512, H, dtype=f64)
domain_a = noise[0] - (noise[0] @ u)[:, None] * u + 3 * u        # +u component: experts 0..7
domain_b = noise[1] - (noise[1] @ u)[:, None] * u - 3 * u        # -u component: experts 8..15
tracker = ExpertLoadTracker()
micro_stats = []
with torch.no_grad():
    for xb in (domain_a, domain_b):
        _, s = block(xb[None])
        micro_stats.append(s)
        tracker.update([s])
f_global = tracker.load()[0]
local = [load_balancing_loss([s], E).item() for s in micro_stats]
glob = [load_balancing_loss([s], E, global_counts=[f_global]).item() for s in micro_stats]
print("micro-batch A uses experts", sorted(set(torch.nonzero(micro_stats[0].counts).flatten().tolist())),
      " B uses", sorted(set(torch.nonzero(micro_stats[1].counts).flatten().tolist())))
print(f"micro-batch balancing:  aux per micro-batch {np.round(local, 3).tolist()}  (minimum possible {k})")
print(f"global-batch balancing: aux per micro-batch {np.round(glob, 3).tolist()}  -> the union is balanced: about the minimum")
expert_load_bars({"micro-batch A": micro_stats[0].counts / 512 / k, "micro-batch B": micro_stats[1].counts / 512 / k,
                  "global batch (A + B)": f_global / k}, "share of routing slots per expert", top_k=k).show()

# %% [markdown]
# And on the model trained above with coefficient 0.01: eight micro-batches of one packed row each
# (256 tokens, mostly one or two source files). Compare the load of a single row with the load of the
# eight rows together, and the balancing loss computed both ways:

# %%
model = runs[0.01]["model"].eval()
tracker = ExpertLoadTracker()
per_row = []
with torch.no_grad():
    for r in range(8):
        b = ds.batch(np.array([r])).to_torch()                    # one packed row: ids, positions, cu_seqlens
        out = model(b["input_ids"], position_ids=b["position_ids"], cu_seqlens=b["cu_seqlens"])
        per_row.append(out.router_stats)
        tracker.update(out.router_stats)
f_all = tracker.load()                                            # [layers, E], rows sum to k
local = np.mean([load_balancing_loss(s, E).item() for s in per_row])
glob = np.mean([load_balancing_loss(s, E, global_counts=list(f_all)).item() for s in per_row])
cv_row = np.mean([((s[1].counts / s[1].counts.mean()).std()).item() for s in per_row])
cv_all = (f_all[1].std() / f_all[1].mean()).item()
print(f"layer 1 load CV: single row (mean of 8) {cv_row:.2f}   all 8 rows together {cv_all:.2f}")
print(f"aux loss, mean over the 8 micro-batches: micro-batch f_e {local:.3f}   global-batch f_e {glob:.3f}   (minimum {k})")

# %% [markdown]
# The difference of the two losses, averaged over micro-batches, is $E\sum_e \mathrm{Cov}_{\text{micro-batches}}(f_e, P_e)$:
# positive whenever a micro-batch that sends more tokens to an expert also gives it more probability,
# which routing by top-$k$ of the probabilities makes the usual case. On this toy model the gap is small: its experts have
# had 80 steps to specialise and every row is Python from the same library, so rows differ little in
# which experts they need. The gap grows with the diversity of a global batch (languages, tasks, chat
# vs code) and with how specialised the experts become; the exact example above shows the mechanism.

# %% [markdown]
# ## 6. Computing the experts: the naive loop vs sorted dispatch
#
# After routing, $N$ tokens make $N k$ (token, expert) pairs. The **naive** implementation loops over
# experts, gathers each one's tokens and runs its FFN: $E$ small matmuls launched from Python. **Sorted
# dispatch** (vLLM's fused MoE, ScatterMoE, `torch._grouped_mm`) argsorts the pairs by expert once, so
# each expert's rows become one contiguous segment of a single gathered matrix; one **grouped GEMM**
# then multiplies segment $s$ by expert $s$'s weights, and one weighted `index_add` scatters the results
# back. Here is the layout for 6 tokens, top-2 of 4 experts:

# %%
tiny_ids = torch.tensor([[0, 2], [1, 2], [2, 3], [0, 1], [2, 0], [3, 2]])
lay = sort_by_expert(tiny_ids, 4)
pairs = lay["order"]
print("pairs (token, expert) in sorted order:", [(int(p) // 2, int(tiny_ids.flatten()[p])) for p in pairs])
print("rows per expert:", lay["counts"].tolist(), "  segment ends (grouped-GEMM offsets):", lay["offsets"].tolist())

# %% [markdown]
# Both kernels behind the library's dispatcher (`kernel="naive"` and `kernel="torch"`; on a GPU `"triton"`
# is our grouped-GEMM kernel, notebook 06) must give the same outputs **and** gradients, including awkward
# sizes and experts that receive no token at all (they must still get an exact zero gradient):

# %%
print("available kernels:", available_kernels())
g = torch.Generator().manual_seed(1)
N, H, I, E_big, k_big = 37, 24, 40, 12, 3
xt = torch.randn(N, H, generator=g, dtype=f64)
logits = torch.randn(N, E_big, generator=g, dtype=f64)
logits[:, [4, 9]] = -1e9                                             # experts 4 and 9 get no token
w_t, ids_t = logits.softmax(-1).topk(k_big, dim=-1)
gate_up = (0.1 * torch.randn(E_big, 2 * I, H, generator=g, dtype=f64)).requires_grad_()
down = (0.1 * torch.randn(E_big, H, I, generator=g, dtype=f64)).requires_grad_()
results = {}
for kern in ("naive", "torch"):
    x_ = xt.clone().requires_grad_()
    y = moe_experts(x_, ids_t, w_t, gate_up, down, kernel=kern)
    grads = torch.autograd.grad((y * torch.linspace(-1, 1, H, dtype=f64)).sum(), (x_, gate_up, down))
    results[kern] = (y, *grads)
for name, a, b in zip(("output", "d x", "d gate_up_proj", "d down_proj"), results["naive"], results["torch"]):
    assert torch.allclose(a, b, atol=1e-12), name
    print(f"{name:15} naive vs sorted: max |diff| {(a - b).abs().max():.1e}")
d_gate_up = results["torch"][2]
assert d_gate_up[[4, 9]].abs().max() == 0 and d_gate_up[[0, 1]].abs().max() > 0
print("idle experts 4 and 9: exact zero gradient, and still in the graph")


# %% [markdown]
# Speed on this CPU (float32, one thread) at the toy width with many tokens: the loop's cost is $E$
# Python-level launches per projection; the sorted version does one gather, one grouped GEMM per
# projection (`torch._grouped_mm` where this PyTorch supports it on CPU) and one scatter. The numbers
# are this machine's, not a benchmark (see `bench/kernels.py` for that):

# %%
def best_time(fn, repeat=3):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)

rows_timing = []
for E_t in (16, 64):
    Nt, Ht, It, kt = 2048, 128, 64, 2
    xs = torch.randn(Nt, Ht)
    w_, ids_ = torch.randn(Nt, E_t).softmax(-1).topk(kt, dim=-1)
    gu, dn = 0.05 * torch.randn(E_t, 2 * It, Ht), 0.05 * torch.randn(E_t, Ht, It)
    with torch.no_grad():
        assert torch.allclose(moe_experts(xs, ids_, w_, gu, dn, kernel="naive"), moe_experts(xs, ids_, w_, gu, dn, kernel="torch"), atol=1e-5)
        t_naive = best_time(lambda: moe_experts(xs, ids_, w_, gu, dn, kernel="naive"))
        t_sorted = best_time(lambda: moe_experts(xs, ids_, w_, gu, dn, kernel="torch"))
    rows_timing.append((E_t, t_naive, t_sorted))
    print(f"N={Nt} tokens, E={E_t:3} experts, top-{kt}: naive loop {t_naive * 1e3:6.1f} ms   sorted dispatch {t_sorted * 1e3:6.1f} ms")

# %% [markdown]
# ## Summary
#
# * Routing is a softmax over all experts, top-$k$, renormalised; the block output adds a sigmoid-gated
#   shared expert. Both re-derived here and equal to `minicoder.model.moe.SparseMoE`.
# * The balancing loss $E\sum_e f_eP_e$ lies between $k$ (uniform) and $E$ (collapsed); without it the
#   toy model's expert load drifted away from uniform within the run, with it the load stayed flatter.
# * Global-batch balancing measures $f_e$ over everything in the optimizer step, so micro-batches may
#   specialise; the library's `ExpertLoadTracker` implements it (all-reducing across ranks), and the
#   trainer uses it.
# * Sorted dispatch and the naive loop agree in outputs and gradients; notebook 06 writes the grouped
#   GEMM as a Triton kernel.
