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
# # 02 · Gated DeltaNet: a memory that learns while it reads
#
# Three of every four layers of Qwen3-Coder-Next are not softmax attention but **Gated DeltaNet**
# (Yang, Kautz & Hatamizadeh, ICLR 2025). Instead of keeping every past key and value (a KV cache that
# grows with the context), each head keeps one fixed-size matrix, the **state** $S \in \mathbb{R}^{K\times V}$,
# and updates it once per token:
#
# $$S_t = e^{g_t} S_{t-1}, \qquad S_t \leftarrow S_t + \beta_t\, k_t \big(v_t - S_t^\top k_t\big)^\top, \qquad o_t = S_t^\top (\text{scale}\cdot q_t).$$
#
# This notebook builds the intuition and then the fast algorithm:
#
# 1. the delta rule **is** online regression: one SGD step per token on $\tfrac12\lVert S^\top k - v\rVert^2$;
# 2. it stores, **overwrites** and (with the gate $g$) **forgets** key → value associations;
# 3. the state evolving over a short sequence, as a heatmap;
# 4. the recurrence re-derived in a few lines, checked against `minicoder.ops.gated_delta`;
# 5. the **chunked** form that turns the T sequential updates into matmuls, checked and timed.
#
# All code comes from `minicoder.ops.gated_delta` (the same functions the model's DeltaNet layer calls).

# %%
import minicoder.viz.notebook  # noqa: F401  (figures that also render in static HTML: make site)
import os, platform, time, math
import torch
import torch.nn.functional as F
import plotly
import plotly.graph_objects as go
import minicoder
from minicoder.ops.gated_delta import (
    available_kernels, chunk_gated_delta_rule, gated_delta_rule_step, naive_recurrent_gated_delta_rule, resolve_kernel,
)

CI = os.environ.get("MINICODER_CI") == "1"   # the test suite sets this: the timing sweep stops earlier
torch.set_num_threads(1)   # every tensor here is small: one thread avoids thread spin-up (and a busy CPU's noise)
torch.manual_seed(0)
f64 = torch.float64
print(f"python {platform.python_version()}  torch {torch.__version__}  plotly {plotly.__version__}  "
      f"minicoder {minicoder.__version__}")

# %% [markdown]
# ## 1. The delta rule is one step of online regression
#
# Think of $S$ as a linear map that should send each key to its value: $S^\top k \approx v$. When a new
# pair $(k_t, v_t)$ arrives, take **one gradient step** on the squared error of that pair,
#
# $$\mathcal{L}(S) = \tfrac12 \lVert S^\top k_t - v_t \rVert^2, \qquad \nabla_S \mathcal{L} = k_t\,(S^\top k_t - v_t)^\top,$$
#
# with learning rate $\beta_t$:  $S \leftarrow S - \beta_t k_t (S^\top k_t - v_t)^\top = S + k_t\,\big(\beta_t(v_t - S^\top k_t)\big)^\top$.
# That is the delta rule: write only the **error** $v_t - S^\top k_t$ (what the memory got wrong), not
# $v_t$ itself. Let autograd compute that SGD step and compare it with the library's decoding step
# `gated_delta_rule_step` (inputs `q, k: [B, Hq, K]`, `v: [B, H, V]`, `g, beta: [B, H]`, `state: [B, H, K, V]`),
# with no decay ($g = 0$):

# %%
K, V, beta = 4, 3, 0.7
S = 0.1 * torch.randn(K, V, dtype=f64)
k = F.normalize(torch.randn(K, dtype=f64), dim=0)       # unit key, as the model's L2-normalised keys
v = torch.randn(V, dtype=f64)

S_param = S.clone().requires_grad_(True)
loss = 0.5 * (S_param.T @ k - v).square().sum()
loss.backward()
S_sgd = S - beta * S_param.grad                           # one SGD step, learning rate beta

one = lambda x: x[None, None]                             # batch 1, head 1
_, S_lib = gated_delta_rule_step(one(k), one(k), one(v), one(torch.tensor(0.0, dtype=f64)),
                                 one(torch.tensor(beta, dtype=f64)), state=one(S))
assert torch.allclose(S_lib[0, 0], S_sgd, atol=1e-14)
err = lambda S: (S.T @ k - v).norm().item()
print(f"error on (k, v): before {err(S):.4f}   after one delta-rule step {err(S_sgd):.4f}"
      f"   ratio {err(S_sgd) / err(S):.3f} = 1 - beta * |k|^2 = {1 - beta:.3f}")

# %% [markdown]
# With a unit key, the error on the pair shrinks by exactly $1-\beta$: $\beta = 1$ writes the
# association perfectly, $\beta \to 0$ ignores the token. In the model $\beta_t = \sigma(b_t)$ is
# computed from the token itself, so the layer decides per token and per head how much to learn.
#
# ## 2. Store, recall, overwrite — and why plain linear attention can't
#
# Plain linear attention updates $S \leftarrow S + k_t v_t^\top$: it **adds** every value. Write three
# associations with orthonormal keys, then write a **new** value for the second key. The delta rule
# replaces it; linear attention returns the sum of old and new. (Reading with `q = k` and `scale=1`,
# the output is exactly $S^\top k$.)

# %%
K, V = 8, 4
keys = torch.linalg.qr(torch.randn(K, K, dtype=f64))[0][:3]      # 3 orthonormal keys
vals = torch.randn(4, V, dtype=f64)                              # v1, v2, v3, then the new v2
seq_k = torch.stack([keys[0], keys[1], keys[2], keys[1]])        # write k1, k2, k3, then k2 again
seq_v = vals
T = len(seq_k)

def recall_after_each_token(query):
    # run the library recurrence; the query at every step is the fixed probe key
    q = query.expand(T, K)[None, :, None]                        # [B=1, T, Hq=1, K]
    o, S = naive_recurrent_gated_delta_rule(q, seq_k[None, :, None], seq_v[None, :, None],
                                            g=torch.zeros(1, T, 1, dtype=f64), beta=torch.ones(1, T, 1, dtype=f64),
                                            scale=1.0, output_final_state=True)
    return o[0, :, 0], S[0, 0]

o, S_delta = recall_after_each_token(keys[1])
S_linear = seq_k.T @ seq_v                                       # linear attention: sum of k v^T
print("recall of k2 after writing k1, k2, k3:", o[2].numpy().round(3), "  (v2 =", vals[1].numpy().round(3), ")")
print("delta rule after re-writing k2       :", (S_delta.T @ keys[1]).numpy().round(3), "  (new v2 =", vals[3].numpy().round(3), ")")
print("linear attention after re-writing k2 :", (S_linear.T @ keys[1]).numpy().round(3), "  (v2 + new v2)")
assert torch.allclose(o[2], vals[1]) and torch.allclose(S_delta.T @ keys[1], vals[3])
assert torch.allclose(S_linear.T @ keys[1], vals[1] + vals[3])

# %% [markdown]
# A $K \times V$ state can hold at most $K$ independent keys. With more associations than that (or
# keys that are not orthogonal) they interfere. Store $n$ random unit-key pairs in a $16 \times 8$
# state with each rule, then try to recall **all** of them: the delta rule's recall error stays
# below linear attention's at every load, because every write first removes what the memory already
# predicted for that key.

# %%
K, V, trials = 16, 8, 8
ns = [2, 4, 8, 12, 16, 24, 32, 48]
gen = torch.Generator().manual_seed(1)

def mean_recall_error(n, rule):
    errs = []
    for _ in range(trials):
        k = F.normalize(torch.randn(n, K, generator=gen, dtype=f64), dim=-1)
        v = torch.randn(n, V, generator=gen, dtype=f64)
        if rule == "delta":
            _, S = naive_recurrent_gated_delta_rule(k[None, :, None], k[None, :, None], v[None, :, None],
                                                    torch.zeros(1, n, 1, dtype=f64), torch.ones(1, n, 1, dtype=f64),
                                                    scale=1.0, output_final_state=True)
            S = S[0, 0]
        else:
            S = k.T @ v
        errs.append(((k @ S - v).norm(dim=1) / v.norm(dim=1)).mean().item())
    return sum(errs) / trials

fig = go.Figure()
for rule in ("delta", "linear"):
    fig.add_scatter(x=ns, y=[mean_recall_error(n, rule) for n in ns], mode="lines+markers",
                    name="delta rule (beta = 1)" if rule == "delta" else "linear attention")
fig.add_vline(x=K, line_dash="dot", annotation_text="n = K")
fig.update_layout(title="Recall error of all n stored pairs (K = 16, V = 8, random unit keys)",
                  xaxis_title="associations stored n", yaxis_title="mean |S^T k - v| / |v|", height=380)
fig.show()

# %% [markdown]
# ## 3. The gate: forgetting on purpose
#
# A memory that never forgets fills up. The **gate** $g_t \le 0$ (log space) multiplies the whole state
# by $e^{g_t}$ before the write. In Qwen3-Next it is data-dependent,
# $g_t = -e^{A_{\log}}\,\mathrm{softplus}(a_t + \mathrm{dt\_bias})$, so a head can keep its memory for
# thousands of tokens ($g \approx 0$) or wipe it at a boundary ($g \ll 0$).
#
# Write one association at $t=0$, then read it back at every step while the following tokens write
# nothing ($\beta = 0$): the recalled value shrinks exactly like $e^{t\,g}$.

# %%
K, V, T = 8, 4, 60
k0 = F.normalize(torch.randn(K, dtype=f64), dim=0)
v0 = torch.randn(V, dtype=f64)
fig = go.Figure()
for decay in (0.99, 0.95, 0.8):
    g = torch.full((1, T, 1), math.log(decay), dtype=f64)
    g[0, 0] = 0.0                                                 # nothing to forget before the write
    beta = torch.zeros(1, T, 1, dtype=f64); beta[0, 0] = 1.0      # write at t = 0 only
    kk = torch.zeros(1, T, 1, K, dtype=f64); kk[0, 0, 0] = k0
    vv = torch.zeros(1, T, 1, V, dtype=f64); vv[0, 0, 0] = v0
    o, _ = naive_recurrent_gated_delta_rule(k0.expand(1, T, 1, K), kk, vv, g, beta, scale=1.0)
    strength = (o[0, :, 0].norm(dim=-1) / v0.norm()).numpy()
    t = list(range(T))
    assert abs(strength[-1] - decay ** (T - 1)) < 1e-12
    fig.add_scatter(x=t, y=strength, mode="markers", name=f"measured, exp(g) = {decay}")
    fig.add_scatter(x=t, y=[decay ** i for i in t], mode="lines", line_dash="dot", showlegend=False)
fig.update_layout(title="Recall strength |S_t^T k0| / |v0| after one write (dots: e^(t g))",
                  xaxis_title="tokens since the write", yaxis_title="recall strength", height=380)
fig.show()

# %% [markdown]
# ## 4. Watching the state
#
# A tiny head ($K = V = 6$, one-hot keys so each **row** of $S$ belongs to one key). The 24 tokens
# cycle through three keys with fresh random values, $\beta = 0.8$, $e^{g} = 0.9$. Drag the slider:
# each token rewrites mostly its own row (the delta rule's correction) while every row fades.

# %%
K = V = 6
T = 24
key_ids = torch.tensor([0, 1, 2] * 8)
ks = F.one_hot(key_ids, K).to(f64)
vs = torch.randn(T, V, dtype=f64)
S, states = torch.zeros(1, 1, K, V, dtype=f64), []
for t in range(T):
    _, S = gated_delta_rule_step(ks[t][None, None], ks[t][None, None], vs[t][None, None],
                                 torch.full((1, 1), math.log(0.9), dtype=f64), torch.full((1, 1), 0.8, dtype=f64), S)
    states.append(S[0, 0].clone())
assert torch.allclose(states[-1][key_ids[-1]], 0.2 * 0.9 * states[-2][key_ids[-1]] + 0.8 * vs[-1])  # the delta write

zmax = max(s.abs().max().item() for s in states)
heat = lambda s: go.Heatmap(z=s.numpy(), zmin=-zmax, zmax=zmax, colorscale="RdBu", reversescale=True)
fig = go.Figure(data=[heat(states[0])],
                frames=[go.Frame(data=[heat(s)], name=str(t)) for t, s in enumerate(states)])
fig.update_layout(
    title="State S_t (rows: key dims, columns: value dims)", height=420, width=520,
    xaxis_title="value dim", yaxis_title="key dim", yaxis_autorange="reversed",
    sliders=[dict(steps=[dict(method="animate", label=f"{t}: k{key_ids[t].item()}",
                              args=[[str(t)], dict(mode="immediate", frame=dict(duration=0, redraw=True))])
                         for t in range(T)], currentvalue=dict(prefix="token "))],
)
fig.show()


# %% [markdown]
# ## 5. The recurrence, re-derived and checked
#
# The whole recurrence for one head fits in a few lines. Real layers have many heads, and Qwen3-Next
# shares each query/key head across several value heads (16 q/k heads, 32 v heads): value head $h$
# uses q/k head $h \,/\!/\, (H / H_q)$. Check the few lines against the library's reference
# (`naive_recurrent_gated_delta_rule`, layout `q, k: [B, T, Hq, K]`, `v: [B, T, H, V]`, `g, beta: [B, T, H]`):

# %%
def my_recurrence(q, k, v, g, beta, scale):
    # one head: q, k [T, K]; v [T, V]; g, beta [T]
    S, out = torch.zeros(q.shape[1], v.shape[1], dtype=q.dtype), []
    for t in range(len(q)):
        S = torch.exp(g[t]) * S                                   # forget
        S = S + torch.outer(k[t], beta[t] * (v[t] - S.T @ k[t]))   # delta-rule write
        out.append(S.T @ (scale * q[t]))                          # read with the updated state
    return torch.stack(out), S

B, T, Hq, H, K, V = 2, 50, 2, 4, 8, 5
q, k = torch.randn(B, T, Hq, K, dtype=f64), F.normalize(torch.randn(B, T, Hq, K, dtype=f64), dim=-1)
v = torch.randn(B, T, H, V, dtype=f64)
g, beta = F.logsigmoid(torch.randn(B, T, H, dtype=f64) + 2), torch.rand(B, T, H, dtype=f64)
o_lib, S_lib = naive_recurrent_gated_delta_rule(q, k, v, g, beta, output_final_state=True)
for b in range(B):
    for h in range(H):
        o, S = my_recurrence(q[b, :, h // (H // Hq)], k[b, :, h // (H // Hq)], v[b, :, h], g[b, :, h], beta[b, :, h], K ** -0.5)
        assert torch.allclose(o, o_lib[b, :, h], atol=1e-12) and torch.allclose(S, S_lib[b, h], atol=1e-12)
print("my_recurrence == minicoder.ops.gated_delta.naive for every batch row and head")

# %% [markdown]
# ### Exercise `02.delta_rule_step`
#
# One token of the gated delta rule, per batch and head: decay the state by `exp(g)`, compute the
# error of its prediction for `k`, write `beta * error` along `k`, then read the **updated** state
# with `q` (no query scaling here). Shapes: `S [B, H, K, V]`, `q, k [B, H, K]`, `v [B, H, V]`,
# `g, beta [B, H]`; return `(o [B, H, V], S_new)`.

# %%
import torch

from minicoder.course import check


def delta_rule_step(S, q, k, v, g, beta):
    # BEGIN SOLUTION
    S = S * g.exp()[..., None, None]
    pred = torch.einsum("bhkv,bhk->bhv", S, k)
    S = S + k[..., :, None] * (beta[..., None] * (v - pred))[..., None, :]
    return torch.einsum("bhkv,bhk->bhv", S, q), S
    # END SOLUTION


check("02.delta_rule_step", delta_rule_step);


# %% [markdown]
# ## 6. The chunked form: the same answer with matmuls
#
# The recurrence is $T$ dependent steps of small matrix-vector work: hopeless for a GPU (or a CPU's
# vector units) at 262k tokens. The chunked algorithm (Yang et al.; the "WY" trick of DeltaNet) cuts
# the sequence into chunks of $C = 64$ and, inside a chunk, solves all $C$ delta-rule writes at once.
# With $\gamma$ the cumulative sum of $g$ inside the chunk and $Q$ already scaled:
#
# $$A = \mathrm{strictly\_lower}\big(\mathrm{diag}(\beta) K K^\top \odot e^{\gamma_i - \gamma_j}\big), \quad
# W = (I + A)^{-1}(\beta\, e^{\gamma} K), \quad U = (I + A)^{-1}(\beta V)$$
#
# and then, chunk after chunk, from the state $S$ entering the chunk:
#
# $$V_{\text{new}} = U - W S, \quad O = (Q e^{\gamma}) S + \mathrm{tril}(Q K^\top \odot e^{\gamma_i - \gamma_j}) V_{\text{new}}, \quad
# S \leftarrow e^{\gamma_C} S + (K e^{\gamma_C - \gamma})^\top V_{\text{new}}.$$
#
# Why it works: the writes inside a chunk depend on each other only through $S^\top k$, and that
# dependency is a triangular linear system, $(I + A)$. Everything except the last line is computed for
# all chunks in parallel; only $T / C$ state updates stay sequential. `minicoder.ops.gated_delta.chunk`
# implements exactly this (with the upper triangle of $\gamma_i - \gamma_j$ masked to $-\infty$ **before**
# the exp, so no $\infty \cdot 0 = $ NaN, and $(I+A)^{-1}$ by blocked forward substitution).
# The dispatcher `chunk_gated_delta_rule(..., kernel="torch")` selects it; on CPU `"auto"` picks it too:

# %%
print("auto on CPU ->", resolve_kernel("auto", "cpu"), " | recurrent entry point ->", resolve_kernel("auto", "cpu", recurrent=True))
print("kernels usable here:", available_kernels("cpu"))
rel = lambda x, ref: ((x - ref).norm() / ref.norm()).item()
for dtype in (torch.float64, torch.float32):
    B, T, Hq, H, K, V = 2, 300, 2, 4, 32, 32        # 300 = 4 chunks of 64 + a ragged 44
    q, k = torch.randn(B, T, Hq, K, dtype=dtype), torch.randn(B, T, Hq, K, dtype=dtype)
    v = torch.randn(B, T, H, V, dtype=dtype)
    g, beta = F.logsigmoid(torch.randn(B, T, H, dtype=dtype) + 3), torch.rand(B, T, H, dtype=dtype)
    h0 = torch.randn(B, H, K, V, dtype=dtype)
    kw = dict(initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True)
    o_rec, S_rec = naive_recurrent_gated_delta_rule(q, k, v, g, beta, **kw)
    o_chk, S_chk = chunk_gated_delta_rule(q, k, v, g, beta, kernel="torch", **kw)
    print(f"{str(dtype):14} chunked vs recurrent: rel err output {rel(o_chk, o_rec):.1e}, final state {rel(S_chk, S_rec):.1e}")
    assert rel(o_chk, o_rec) < (1e-10 if dtype == torch.float64 else 1e-5)

# %% [markdown]
# **Packed documents.** Training rows hold several documents back to back (notebook 01's Best-Fit
# Packing). The state must restart at each boundary, exactly as if each document ran alone:
# `cu_seqlens` (FlashAttention's convention) marks the boundaries, and each document gets its own
# initial and final state.

# %%
lens = [40, 130, 7]
cu = torch.tensor([0, 40, 170, 177])
T = sum(lens)
q, k = torch.randn(1, T, 1, 16, dtype=f64), torch.randn(1, T, 1, 16, dtype=f64)
v, g, beta = torch.randn(1, T, 2, 8, dtype=f64), -torch.rand(1, T, 2, dtype=f64), torch.rand(1, T, 2, dtype=f64)
o, S = chunk_gated_delta_rule(q, k, v, g, beta, cu_seqlens=cu, output_final_state=True, use_qk_l2norm_in_kernel=True)
for n, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
    o_n, S_n = naive_recurrent_gated_delta_rule(q[:, a:b], k[:, a:b], v[:, a:b], g[:, a:b], beta[:, a:b],
                                                output_final_state=True, use_qk_l2norm_in_kernel=True)
    assert rel(o[:, a:b], o_n) < 1e-10 and rel(S[n], S_n[0]) < 1e-10
print(f"{len(lens)} packed documents == {len(lens)} separate runs; final states: {tuple(S.shape)}")


# %% [markdown]
# **Timing.** Same inputs, the recurrence vs the chunked form on this CPU, for a layer-sized head
# group ($H = 4$ value heads of $32 \times 32$). Both grow linearly in $T$ (no $T^2$ anywhere: that is
# the point of a linear-attention layer), but the chunked form does its work in matmuls.

# %%
def best_of(fn, n=3):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); ts.append(time.perf_counter() - t0)
    return min(ts)

Ts = [64, 256, 1024] if CI else [64, 256, 1024, 4096, 8192]
H, K = 4, 32
rows = []
with torch.no_grad():
    for T in Ts:
        q, k, v = (torch.randn(1, T, H, K) for _ in range(3))
        g, beta = F.logsigmoid(torch.randn(1, T, H) + 3), torch.rand(1, T, H)
        args = (q, k, v, g, beta)
        t_rec = best_of(lambda: naive_recurrent_gated_delta_rule(*args, use_qk_l2norm_in_kernel=True), n=1 if T > 1000 else 3)
        t_chk = best_of(lambda: chunk_gated_delta_rule(*args, use_qk_l2norm_in_kernel=True, kernel="torch"))
        rows.append((T, t_rec, t_chk))
        print(f"T={T:>5}  recurrent {t_rec * 1e3:8.1f} ms   chunked {t_chk * 1e3:7.1f} ms   x{t_rec / t_chk:5.1f}")
fig = go.Figure()
fig.add_scatter(x=Ts, y=[r[1] * 1e3 for r in rows], mode="lines+markers", name="recurrent (naive.py)")
fig.add_scatter(x=Ts, y=[r[2] * 1e3 for r in rows], mode="lines+markers", name="chunked, C = 64 (chunk.py)")
fig.update_layout(title="Gated delta rule on CPU: H = 4 heads, K = V = 32, float32", xaxis_type="log",
                  yaxis_type="log", xaxis_title="sequence length T", yaxis_title="ms", height=380)
fig.show()

# %% [markdown]
# **Takeaways.**
# - The delta rule is online least squares: each token takes one SGD step (learning rate $\beta_t$) to
#   map its key to its value; it overwrites rather than accumulates, and the gate $e^{g_t}$ forgets.
# - The state has a fixed size ($H \cdot K \cdot V$ numbers per layer, whatever the context), which is
#   why the 3:1 hybrid's cache at long context is about a quarter of an all-attention model's
#   (`bench/longctx.py` measures it).
# - The chunked form computes the same outputs and states (to float64 round-off) with matmuls;
#   on GPU the same algorithm runs as Triton kernels (fla's, or ours in notebook 06) behind the same
#   `chunk_gated_delta_rule(..., kernel=...)` call.
#
# Next: `03_gated_attention`, the one layer in four that keeps a KV cache.
