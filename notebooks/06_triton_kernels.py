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
# # 06 · Our own Triton kernels: from ten lines to the chunked delta rule
#
# Notebook 02 turned the gated delta rule into chunks of 64 tokens: a few matmuls per chunk plus one
# small sequential pass over the chunks. Written in PyTorch that is already much faster than the
# token-by-token recurrence, but every intermediate goes through memory as a full tensor. A GPU kernel
# keeps one chunk in on-chip memory and does all of its work there.
#
# This notebook builds `minicoder/ops/gated_delta/triton.py` step by step, each step checked against
# PyTorch:
#
# 1. a ten-line Triton kernel: programs, blocks, masks;
# 2. `tl.dot` and `tl.cumsum`: one chunk's decay matrix and scores;
# 3. the triangular inverse $(I + A)^{-1}$ by forward substitution inside a kernel;
# 4. the library's WY kernel, re-derived in PyTorch;
# 5. the whole forward and the hand-derived backward against autograd through the recurrence;
# 6. the MoE grouped GEMM: tokens sorted by expert, tiles that belong to one expert;
# 7. on a GPU only: ours against flash-linear-attention.
#
# **No GPU?** Triton has an *interpreter*: with `TRITON_INTERPRET=1` set **before triton is imported**,
# every kernel runs on CPU tensors, program by program, through NumPy. Slow, but exact enough to test
# against, and it is how minicoder's CI checks these kernels. The first cell sets it when there is no
# CUDA device.

# %%
import minicoder.viz.notebook  # noqa: F401  (figures that also render in static HTML: make site)
import os
import torch
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"   # must happen before the first `import triton`
import platform
import triton
import triton.language as tl
import torch.nn.functional as F
import plotly.graph_objects as go
import minicoder

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CI = os.environ.get("MINICODER_CI") == "1"
print(f"python {platform.python_version()}  torch {torch.__version__}  triton {triton.__version__}  "
      f"minicoder {minicoder.__version__}  device {DEVICE}  interpreter {os.environ.get('TRITON_INTERPRET') == '1'}")


# %% [markdown]
# ## 1 · Ten lines of Triton
#
# A Triton kernel is a function that one *program* runs on one *block* of data; the launch grid says
# how many programs. Inside, `tl.arange` makes a vector of offsets, `tl.load` / `tl.store` move a block
# between memory and registers, and a *mask* switches off the lanes past the end of the tensor (the
# last block is usually partial). Here: the decay-and-scale step that every gated recurrence starts
# with, $y = x \cdot e^{g}$, for a 1-D tensor of any length.

# %%
@triton.jit
def decay_kernel(x_ptr, g_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)   # this program's block of indices
    mask = offs < n                                         # the last block runs past the end
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    g = tl.load(g_ptr + offs, mask=mask, other=0.0)
    tl.store(y_ptr + offs, x * tl.exp(g), mask=mask)

n = 1000
x, g = torch.randn(n, device=DEVICE), -torch.rand(n, device=DEVICE)
y = torch.empty_like(x)
decay_kernel[(triton.cdiv(n, 256),)](x, g, y, n, BLOCK=256)   # 4 programs, the last one 3/4 masked
assert torch.allclose(y, x * g.exp())
print("max |diff| vs PyTorch:", (y - x * g.exp()).abs().max().item())


# %% [markdown]
# ### Exercise `06.row_sums_tiled`
#
# The loop every kernel above is built on: one program per row walks the columns in tiles of
# `BLOCK`, accumulating in registers, and masks the last partial tile. Write the kernel body (the
# launcher is given). On a CPU this runs in the interpreter (set at the top of the notebook).

# %%
import torch
import triton
import triton.language as tl

from minicoder.course import check


@triton.jit
def row_sums_kernel(x_ptr, out_ptr, N, BLOCK: tl.constexpr):
    # BEGIN SOLUTION
    row = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, N, BLOCK):  # the tile loop
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + row * N + offs, mask=offs < N, other=0.0)
    tl.store(out_ptr + row, tl.sum(acc, 0))
    # END SOLUTION


def row_sums(x, BLOCK):
    x = x.contiguous()
    out = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    row_sums_kernel[(x.shape[0],)](x, out, x.shape[1], BLOCK=BLOCK)
    return out


check("06.row_sums_tiled", row_sums);


# %% [markdown]
# ## 2 · One chunk in registers: `tl.cumsum`, decays and `tl.dot`
#
# Inside a chunk of $C$ tokens the delta rule needs, per head, the cumulative log decay
# $\gamma = \mathrm{cumsum}(g)$, the causal decay matrix $L_{ij} = e^{\gamma_i - \gamma_j}$ ($j \le i$)
# and the scores $Q K^\top \odot L$. In a kernel these are a `tl.cumsum`, an outer difference and one
# `tl.dot` (a tensor-core matmul on a GPU). Two details that matter in every kernel below:
#
# - **mask before `exp`**: above the diagonal $\gamma_i - \gamma_j > 0$ can overflow; we zero the
#   difference there first, then zero the result.
# - **`tl.dot` wants every block dimension ≥ 16** (also in the interpreter), so head dims are padded
#   to a power of two ≥ 16 with masked loads.

# %%
@triton.jit
def chunk_scores_kernel(q_ptr, k_ptr, g_ptr, s_ptr, C: tl.constexpr, D: tl.constexpr):
    r, d = tl.arange(0, C), tl.arange(0, D)
    q = tl.load(q_ptr + r[:, None] * D + d[None, :])
    k = tl.load(k_ptr + r[:, None] * D + d[None, :])
    gam = tl.cumsum(tl.load(g_ptr + r), 0)
    causal = r[:, None] >= r[None, :]
    decay = tl.where(causal, tl.exp(tl.where(causal, gam[:, None] - gam[None, :], 0.0)), 0.0)
    tl.store(s_ptr + r[:, None] * C + r[None, :], tl.dot(q, tl.trans(k), input_precision="ieee") * decay)

C, D = 64, 32
q, k = torch.randn(C, D, device=DEVICE), F.normalize(torch.randn(C, D, device=DEVICE), dim=-1)
g = F.logsigmoid(torch.randn(C, device=DEVICE) + 2)
scores = torch.empty(C, C, device=DEVICE)
chunk_scores_kernel[(1,)](q, k, g, scores, C=C, D=D)
gam = g.cumsum(0)
ref = (q @ k.T) * (gam[:, None] - gam[None, :]).masked_fill(~torch.ones(C, C, dtype=torch.bool, device=DEVICE).tril(), float("-inf")).exp()
assert torch.allclose(scores, ref, atol=1e-5)
fig = go.Figure(go.Heatmap(z=scores.cpu().numpy(), colorscale="RdBu", zmid=0))
fig.update_layout(title="one chunk's decayed causal scores QKᵀ ⊙ L (row = query, column = key)",
                  yaxis_autorange="reversed", width=520, height=480)
fig.show()


# %% [markdown]
# ## 3 · The triangular inverse inside a kernel
#
# The WY / UT form turns the chunk's 64 sequential delta-rule updates into matmuls with
# $T = (I + A)^{-1}$, where $A = \mathrm{strictly\_lower}(\mathrm{diag}(\beta) K K^\top \odot e^{\gamma_i-\gamma_j})$.
# $T$ is unit lower triangular, and with $T = I + X$ its rows follow from the ones above
# (forward substitution):
#
# $$X_i = -A_i - \sum_{j<i} A_{ij} X_j .$$
#
# In the kernel the whole $C \times C$ block stays in registers; step $i$ reads row $i$ (still $-A_i$),
# combines the finished rows above it, and writes row $i$ back: $C - 1$ steps of $C \times C$ work.
# The library's `_wy_fwd_kernel` runs this same loop on the four $16 \times 16$ diagonal blocks only
# (15 short steps each), then fills the blocks below the diagonal with small matmuls, from
# $(I + A)\,T = I$: $T_{ij} = -T_{ii} \sum_{j \le m < i} A_{im} T_{mj}$ — fewer sequential steps on a GPU.

# %%
@triton.jit
def unit_lower_inverse_kernel(a_ptr, t_ptr, C: tl.constexpr):
    rows = tl.arange(0, C)
    x = -tl.load(a_ptr + rows[:, None] * C + rows[None, :])       # A is strictly lower triangular
    for i in range(1, C):
        sel = rows[:, None] == i
        ai = tl.sum(tl.where(sel, x, 0.0), 0)                     # row i: still -A_i
        x = tl.where(sel, (ai + tl.sum(ai[:, None] * x, 0))[None, :], x)
    tl.store(t_ptr + rows[:, None] * C + rows[None, :], x + tl.where(rows[:, None] == rows[None, :], 1.0, 0.0))

beta = torch.rand(C, device=DEVICE)
A = ((beta[:, None] * k @ k.T) * (gam[:, None] - gam[None, :]).exp()).tril(-1)
T = torch.empty(C, C, device=DEVICE)
unit_lower_inverse_kernel[(1,)](A.contiguous(), T, C=C)
I = torch.eye(C, device=DEVICE)
print("|| T (I + A) - I ||_max =", (T @ (I + A) - I).abs().max().item())
T_ref = torch.linalg.solve_triangular(I + A, I, upper=False, unitriangular=True)
assert torch.allclose(T, T_ref, atol=1e-5)

# %% [markdown]
# ## 4 · The library's WY kernel, re-derived
#
# `_wy_fwd_kernel` does sections 2 and 3 for one (chunk, value head) and then two more matmuls:
# $W = T(\beta e^{\gamma} K)$ and $U = T(\beta V)$. We launch it on a packed row of three documents
# (lengths 50, 64 and 86, so chunks end early inside documents), and re-derive every output in
# PyTorch, chunk by chunk. The chunk table lists each chunk's first token and its document's end: a
# chunk never crosses a document boundary, and the rows past the end are masked.

# %%
from minicoder.ops.gated_delta import triton as gdt

H, K, V = 2, 16, 32
cu = torch.tensor([0, 50, 114, 200], device=DEVICE, dtype=torch.int32)
TT = int(cu[-1])
kk = F.normalize(torch.randn(TT, 1, K, device=DEVICE), dim=-1)       # one q/k head shared by H=2 value heads
vv, gg, bb = torch.randn(TT, H, V, device=DEVICE), F.logsigmoid(torch.randn(TT, H, device=DEVICE) + 2), torch.rand(TT, H, device=DEVICE)
cuc, table, NT = gdt._chunk_tables(cu, 64)
print("chunk table (first token, end of its document):", table.tolist())
gam_k, tm_k = torch.empty(TT, H, device=DEVICE), torch.empty(TT, H, 64, device=DEVICE)
w_k, u_k = torch.empty(TT, H, K, device=DEVICE), torch.empty(TT, H, V, device=DEVICE)
gdt._wy_fwd_kernel[(NT, H)](kk, vv, gg, bb, table, gam_k, tm_k, w_k, u_k, H=H, G=H, K=K, V=V, C=64, BK=16, BV=32, LOWP=False)

worst = 0.0
for (t0, end) in table.tolist():
    t1 = min(t0 + 64, end)
    for h in range(H):
        kc, vc, gc, bc = kk[t0:t1, 0], vv[t0:t1, h], gg[t0:t1, h], bb[t0:t1, h]
        gm = gc.cumsum(0)
        A = ((bc[:, None] * kc @ kc.T) * (gm[:, None] - gm[None, :]).exp()).tril(-1)
        Tc = torch.linalg.inv(torch.eye(t1 - t0, device=DEVICE) + A)
        W, U = Tc @ (bc[:, None] * gm.exp()[:, None] * kc), Tc @ (bc[:, None] * vc)
        for ours, ref in ((gam_k[t0:t1, h], gm), (tm_k[t0:t1, h, : t1 - t0], Tc), (w_k[t0:t1, h], W), (u_k[t0:t1, h], U)):
            worst = max(worst, ((ours - ref).norm() / ref.norm()).item())
print(f"worst relative error over gamma, T, W, U in all {NT} chunks x {H} heads: {worst:.1e}")
assert worst < 1e-5

# %% [markdown]
# ## 5 · The whole forward and the derived backward
#
# The rest of the forward is two more kernels: a **sequential pass** per (document, head, block of
# value columns) that carries the state $S$ from chunk to chunk
# ($V_{\rm new} = U - WS$, $S \leftarrow e^{\gamma_{\rm last}} S + (K e^{\gamma_{\rm last}-\gamma})^\top V_{\rm new}$,
# saving $S$ at every chunk start), and a **parallel output kernel** per chunk,
# $O = \text{scale}\,[(Q e^{\gamma}) S + (QK^\top\odot L) V_{\rm new}]$.
#
# The backward mirrors it: a reverse pass carries $dS$ from the last chunk to the first, and one kernel
# per chunk turns the saved $S$, $dS$, $V_{\rm new}$, $dV_{\rm new}$ into $dq, dk, dv, d\beta, dg$. The
# gradients are derived by hand (they are written out in the module docstring), so they are the thing
# to check: against autograd through the naive recurrence in float64, with shared q/k heads (GVA),
# packed documents, an initial state and in-kernel L2 norm of q and k.

# %%
from minicoder.ops.gated_delta.naive import naive_recurrent_gated_delta_rule
from minicoder.ops.gated_delta.triton import chunk_gated_delta_rule as triton_gdr

def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()

T, Hq, H, K, V = 130, 1, 2, 16, 32
cu = torch.tensor([0, 7, 130], device=DEVICE)
gen = torch.Generator().manual_seed(0)
xs = [torch.randn(1, T, Hq, K, generator=gen), torch.randn(1, T, Hq, K, generator=gen), torch.randn(1, T, H, V, generator=gen),
      F.logsigmoid(torch.randn(1, T, H, generator=gen) + 2), torch.rand(1, T, H, generator=gen), torch.randn(2, H, K, V, generator=gen)]
names = ["q", "k", "v", "g", "beta", "initial_state"]
do, dht = torch.randn(1, T, H, V, generator=gen).to(DEVICE), torch.randn(2, H, K, V, generator=gen).to(DEVICE)

grads = {}
for name, fn, dtype in (("triton", triton_gdr, torch.float32), ("naive", naive_recurrent_gated_delta_rule, torch.float64)):
    leaves = [x.detach().to(DEVICE, dtype).clone().requires_grad_() for x in xs]
    o, ht = fn(*leaves[:5], initial_state=leaves[5], output_final_state=True, cu_seqlens=cu, use_qk_l2norm_in_kernel=True)
    ((o * do.to(dtype)).sum() + (ht * dht.to(dtype)).sum()).backward()
    grads[name] = {"o": o.detach(), "final_state": ht.detach(), **{"d" + n: x.grad for n, x in zip(names, leaves)}}
errors = {key: rel(grads["triton"][key], grads["naive"][key]) for key in grads["naive"]}
for key, e in errors.items():
    print(f"{key:>16}: relative error {e:.1e}")
assert max(errors.values()) < 1e-4
fig = go.Figure(go.Bar(x=list(errors), y=list(errors.values())))
fig.update_layout(title="our Triton kernels (float32) vs autograd through the recurrence (float64)",
                  yaxis_type="log", yaxis_title="‖ours − ref‖ / ‖ref‖", height=380)
fig.show()

# %% [markdown]
# The same call is behind the dispatcher: `minicoder.ops.gated_delta.chunk_gated_delta_rule(...,
# kernel="triton")`; `kernel="auto"` picks flash-linear-attention on a GPU when it is installed, else
# ours, and the PyTorch chunked version on a CPU. Asking for `"triton"` on a CPU without the interpreter
# is an error that says how to run it.

# %% [markdown]
# ## 6 · The MoE grouped GEMM
#
# Each token picks $k$ of $E$ experts (Qwen3-Coder-Next: 10 of 512). A loop over experts launches
# $2E$ small matmuls; the grouped GEMM launches one kernel per projection. The (token, slot) pairs are
# sorted by expert and every expert's segment is padded to the row tile (64 rows on a GPU, 16 in the
# interpreter), so each tile of rows belongs to exactly one expert and its program reads that expert's
# weights only. Rows are gathered on load (x by token) and scattered on store (by pair), so no permuted
# copy of $x$ is made. The layout, for 40 tokens, top-2 of 8 experts (expert 6 gets nothing):

# %%
from minicoder.ops.moe.naive import moe_experts_naive
from minicoder.ops.moe.sorted import sort_by_expert
from minicoder.ops.moe.triton import moe_experts_triton

N, Hd, Iff, E, topk = 40, 32, 16, 8, 2
gen = torch.Generator().manual_seed(1)
logits = torch.randn(N, E, generator=gen)
logits[:, 6] = -1e9                                            # an idle expert
w, ids = logits.softmax(-1).topk(topk, dim=-1)
w = w / w.sum(-1, keepdim=True)
lay = sort_by_expert(ids, E, block=16)
print("pairs per expert:", lay["counts"].tolist(), " padded rows:", lay["P"], " tiles -> expert:", lay["block_expert"].tolist())
rows = lay["padded_ids"].reshape(-1, 16)
fig = go.Figure(go.Heatmap(z=(rows >= 0).int().numpy(), colorscale=[[0, "#eeeeee"], [1, "#4c78a8"]], showscale=False,
                           y=[f"tile {i} (expert {e})" for i, e in enumerate(lay["block_expert"].tolist())]))
fig.update_layout(title="padded rows per tile: blue = a (token, slot) pair, grey = padding", height=360,
                  yaxis_autorange="reversed", xaxis_title="row in tile")
fig.show()

# %%
x = torch.randn(N, Hd, generator=gen)
gu, dn = torch.randn(E, 2 * Iff, Hd, generator=gen) / Hd**0.5, torch.randn(E, Hd, Iff, generator=gen) / Iff**0.5
dy = torch.randn(N, Hd, generator=gen)
out = {}
for name, fn in (("triton", moe_experts_triton), ("loop", moe_experts_naive)):
    leaves = [t.clone().to(DEVICE).requires_grad_() for t in (x, w, gu, dn)]
    y = fn(leaves[0], ids.to(DEVICE), leaves[1], leaves[2], leaves[3])
    (y * dy.to(DEVICE)).sum().backward()
    out[name] = [y.detach(), *(t.grad for t in leaves)]
for label, a, b in zip(["y", "dx", "d topk_weights", "d gate_up_proj", "d down_proj"], *out.values()):
    print(f"{label:>15}: relative error {rel(a, b):.1e}")
    assert rel(a, b) < 1e-5
print("idle expert 6 gets exact zero weight gradients:", out["triton"][3][6].abs().max().item() == 0)

# %% [markdown]
# ## 7 · On a GPU: ours against flash-linear-attention
#
# The cell below times forward + backward of our kernels and of fla's `chunk_gated_delta_rule` at the
# full model's DeltaNet shapes (16 q/k heads, 32 value heads, dim 128, bf16). On a CPU it only says
# so: the interpreter measures NumPy, not a GPU. `bench/kernels.py` runs the full sweep (2k to 64k
# tokens, plus causal attention and the MoE grouped GEMM) and writes `bench/results/kernels_gpu.json`.

# %%
if DEVICE != "cuda":
    print("No CUDA device: skipping the timing (see bench/kernels.py and bench/results/ for measured numbers).")
else:
    from triton.testing import do_bench
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_gdr
    times = {"ours": [], "fla": []}
    lengths = [2048, 8192] if CI else [2048, 8192, 32768]
    for T in lengths:
        leaves = [torch.randn(1, T, 16, 128), F.normalize(torch.randn(1, T, 16, 128), dim=-1), torch.randn(1, T, 32, 128),
                  F.logsigmoid(torch.randn(1, T, 32) + 2), torch.rand(1, T, 32)]
        leaves = [t.to("cuda", torch.bfloat16).requires_grad_() for t in leaves]
        for name, fn in (("ours", triton_gdr), ("fla", fla_gdr)):
            times[name].append(do_bench(lambda fn=fn: fn(*leaves)[0].sum().backward(), grad_to_none=leaves))
    for T, a, b in zip(lengths, times["ours"], times["fla"]):
        print(f"T={T:>6}: ours {a:7.2f} ms   fla {b:7.2f} ms   ours/fla {a / b:.2f}")
    fig = go.Figure([go.Scatter(x=lengths, y=v, name=k, mode="lines+markers") for k, v in times.items()])
    fig.update_layout(title="gated delta rule, forward + backward (bf16)", xaxis_type="log", yaxis_type="log",
                      xaxis_title="tokens", yaxis_title="ms")
    fig.show()

# %% [markdown]
# ## What to take away
#
# - A Triton kernel is a program over blocks, with masks for ragged edges; the interpreter runs the
#   same code on a CPU, which is how these kernels are tested in CI.
# - The chunked delta rule is three forward kernels (the within-chunk WY transform, the sequential
#   state pass, the parallel output) and three backward ones; the state entering every chunk is saved
#   so the backward needs only one reverse pass.
# - The MoE grouped GEMM wins by sorting tokens by expert and padding segments to the tile, so one
#   launch serves every expert — including the ones that got no tokens (they just have no tiles).
