"""Our own Triton kernels for the chunked gated delta rule, forward and backward (varlen, GVA, L2 norm).

Same signature, layout and results as :func:`minicoder.ops.gated_delta.chunk.chunk_gated_delta_rule`
(itself flash-linear-attention's API): ``q, k: [B, T, Hq, K]``, ``v: [B, T, H, V]``, ``g`` (log decay)
and ``beta: [B, T, H]``, states ``[N, H, K, V]``. The math, per value head and chunk of C = 64 tokens
(gamma = cumsum of g inside the chunk, S the state entering the chunk, Q already times ``scale``):

    A     = strictly_lower(diag(beta) K K^T * exp(gamma_i - gamma_j))      (C x C)
    T     = (I + A)^{-1}                       (unit lower triangular: forward substitution)
    W     = T (beta * exp(gamma) * K)          U = T (beta * V)             (the WY / UT form)
    V_new = U - W S
    O     = (Q * exp(gamma)) S + tril(Q K^T * exp(gamma_i - gamma_j)) V_new
    S'    = exp(gamma_last) S + (K * exp(gamma_last - gamma))^T V_new

Kernels (each has a docstring with its grid, shapes and math):

    forward   _wy_fwd_kernel      per (chunk, head):      gamma, T, W, U
              _state_fwd_kernel   per (V block, seq, head): the sequential pass over chunks -> S per chunk, V_new
              _output_fwd_kernel  per (V block, chunk, head): O
    backward  _dv_local_kernel    per (V block, chunk, head): dV_new from O's intra-chunk term
              _state_bwd_kernel   per (V block, seq, head): the reverse pass -> dS per chunk, full dV_new, dS_0
              _grad_kernel        per (chunk, head):      dq, dk, dv, dbeta, dg (gradients derived below)
    l2 norm   _l2norm_fwd_kernel / _l2norm_bwd_kernel      per row

Design choices:
- Everything runs on one flattened token axis ``[B * T]``: a plain batch is the packed case with
  ``cu_seqlens = [0, T, 2T, ...]``, so there is one code path. A host-side chunk table lists every
  chunk's first token and its sequence's end; a chunk never straddles two documents, and rows past a
  document's end are masked (loaded as zeros, never stored).
- The forward stores what the backward needs instead of recomputing it: gamma, T, W, V_new and the
  state entering every chunk (``[n_chunks, H, K, V]``, fla's ``h``). Intermediates are float32 (more
  memory than fla's bf16 ones, fewer rounding steps). Dots take float32 operands in full precision
  (``input_precision="ieee"``) for float32 inputs and bf16 operands (float32 accumulation) for bf16
  inputs, like fla. float64 inputs are computed in float32 and the results cast back.
- The triangular inverse works on 16 x 16 blocks: forward substitution inside each diagonal block
  (with T = I + X, row i of X is -A_i - sum_{j<i} A_ij X_j), then the blocks below the diagonal from
  (I + A) T = I with small float32 matmuls. (Notebook 06 shows the plain 64-step version first.)
- Value heads share q/k heads (GVA: head h reads q/k head ``h // (H // Hq)``) by index inside the
  kernels; the backward produces dq, dk per value head and sums each group in PyTorch.
- Under ``TRITON_INTERPRET=1`` (set before triton is imported) the kernels run on CPU tensors through
  Triton's interpreter: that is how the CPU tests check them. ``tl.dot`` there needs every block dim
  >= 16, so K and V are padded to powers of two >= 16 with masks.

The backward, per chunk (dS' = gradient of the state leaving the chunk, L = exp(gamma_i - gamma_j) on
and below the diagonal, E the same strictly below it, e = exp(gamma), eL = exp(gamma_last - gamma)):

    dV_new = scale * (QK^T * L)^T dO + (eL * K) dS'                          (then dU = dV_new)
    dS     = exp(gamma_last) dS' + (scale * e * Q)^T dO - W^T dV_new         (reverse recurrence)
    Ds     = scale * (dO V_new^T) * L
    dq     = scale * e * (dO S^T) + Ds K          dk += Ds^T Q + eL * (V_new dS'^T)
    dW     = -dV_new S^T;   dT = dW Kb^T + dV_new Vb^T   (Kb = beta e K, Vb = beta V)
    dKb    = T^T dW;  dVb = T^T dV_new;  dv = beta dVb;  dA = strictly_lower(-T^T dT T^T)
    dk    += beta e dKb + D K + D^T K  with D = beta_i dA * E
    dbeta  = rowsum(dVb * V) + e rowsum(dKb * K) + rowsum(dA * E * K K^T)
    dgamma = scale e rowsum(Q * dO S^T) + rowsum(Z) - colsum(Z) [Z = Ds * QK^T]
             - r + (sum(r) + exp(gamma_last) <dS', S>) at the last row [r = eL rowsum(K * V_new dS'^T)]
             + beta e rowsum(dKb * K) + rowsum(dA * A) - colsum(dA * A)
    dg     = reverse cumsum of dgamma inside the chunk
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from minicoder.ops.gated_delta.common import L2NORM_EPS, check_inputs
from minicoder.ops.triton_utils import check_device, dot

CHUNK_SIZE = 64


def _next_pow2(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


# ----------------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _inv_unit_lower_16(a, B: tl.constexpr):
    """(I + a)^{-1} for a strictly lower triangular ``[B, B]`` block, by forward substitution.

    With T = I + X: row i of X is -a_i - sum_{j<i} a_ij X_j; rows >= i still hold -a while row i is built.
    """
    rows = tl.arange(0, B)
    x = -a
    for i in range(1, B):
        sel = rows[:, None] == i
        ai = tl.sum(tl.where(sel, x, 0.0), 0)  # -a_i (zero at j >= i)
        x = tl.where(sel, (ai + tl.sum(ai[:, None] * x, 0))[None, :], x)
    return x + tl.where(rows[:, None] == rows[None, :], 1.0, 0.0)


@triton.jit
def _wy_block(k_ptr, g_ptr, beta_ptr, t0, eos, h, IB: tl.constexpr,
              H: tl.constexpr, G: tl.constexpr, K: tl.constexpr, BK: tl.constexpr):
    """Rows ``16 IB .. 16 IB + 15`` of a chunk: (k ``[16, BK]`` float32, beta ``[16]``, gamma ``[16]``,
    row mask). gamma is the cumulative log decay from the chunk start (the sum of the rows before
    the block plus a cumsum inside it)."""
    HQ: tl.constexpr = H // G
    r16 = tl.arange(0, 16)
    ti = t0 + IB * 16 + r16
    mt = ti < eos
    ok = tl.arange(0, BK)
    kk = tl.load(k_ptr + (ti[:, None] * HQ + h // G) * K + ok[None, :], mask=mt[:, None] & (ok[None, :] < K), other=0.0)
    bb = tl.load(beta_ptr + ti * H + h, mask=mt, other=0.0).to(tl.float32)
    r64 = tl.arange(0, 64)
    before = tl.load(g_ptr + (t0 + r64) * H + h, mask=(r64 < IB * 16) & (t0 + r64 < eos), other=0.0).to(tl.float32)
    gg = tl.load(g_ptr + ti * H + h, mask=mt, other=0.0).to(tl.float32)
    gam = tl.sum(before, 0) + tl.cumsum(gg, 0)
    return kk.to(tl.float32), bb, gam, mt


@triton.jit
def _a_offdiag(ki, bi, gi, kj, gj, LOWP: tl.constexpr):
    """Block (I, J), I > J, of A = diag(beta) K K^T * exp(gamma_i - gamma_j) (every entry below the diagonal)."""
    return bi[:, None] * dot(ki, tl.trans(kj), LOWP) * tl.exp(gi[:, None] - gj[None, :])


@triton.jit
def _a_diag(k, b, gm, mt, LOWP: tl.constexpr):
    """Diagonal block of A: strictly lower inside the block."""
    r16 = tl.arange(0, 16)
    strict = (r16[:, None] > r16[None, :]) & mt[:, None]
    diff = tl.where(strict, gm[:, None] - gm[None, :], 0.0)
    return tl.where(strict, b[:, None] * dot(k, tl.trans(k), LOWP) * tl.exp(diff), 0.0)


@triton.jit
def _store_tm_row(tm_ptr, t0, eos, h, IB: tl.constexpr, H: tl.constexpr, C: tl.constexpr, x0, x1, x2, x3):
    """Write block-row IB of T (four ``[16, 16]`` blocks, zeros above the diagonal) to ``tm [TT, H, C]``."""
    r16 = tl.arange(0, 16)
    ti = t0 + IB * 16 + r16
    m = (ti < eos)[:, None]
    base = tm_ptr + (ti[:, None] * H + h) * C + r16[None, :]
    tl.store(base, x0, mask=m)
    tl.store(base + 16, x1, mask=m)
    tl.store(base + 32, x2, mask=m)
    tl.store(base + 48, x3, mask=m)


@triton.jit
def _wy_fwd_kernel(
    k_ptr, v_ptr, g_ptr, beta_ptr, chunk_ptr,  # inputs
    gam_ptr, tm_ptr, w_ptr, u_ptr,  # outputs
    H: tl.constexpr, G: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, LOWP: tl.constexpr,
):
    """The within-chunk part of the forward, for one (chunk, value head). Grid: (n_chunks, H). C = 64.

    Reads k ``[TT, H // G, K]``, v ``[TT, H, V]``, g, beta ``[TT, H]`` and the chunk table
    ``[n_chunks, 2]`` = (first token, end of its sequence). Writes, for the chunk's rows:
    gamma = cumsum(g) ``[TT, H]``; T = (I + A)^{-1} ``[TT, H, C]`` (row t of the chunk's C x C matrix);
    W = T (beta exp(gamma) K) ``[TT, H, K]``; U = T (beta V) ``[TT, H, V]``.

    T is built from 16 x 16 blocks (all in float32): the four diagonal blocks are inverted by forward
    substitution (:func:`_inv_unit_lower_16`), and block (i, j), i > j, follows from
    (I + A) T = I: ``T_ij = -T_ii sum_{j <= m < i} A_im T_mj``. That is 15 short substitution steps
    and a few small matmuls instead of 63 steps over the whole 64 x 64 block.
    """
    c = tl.program_id(0).to(tl.int64)  # chunk index: chunk * H * K * V can pass 2^31
    h = tl.program_id(1)
    t0 = tl.load(chunk_ptr + 2 * c).to(tl.int64)
    eos = tl.load(chunk_ptr + 2 * c + 1).to(tl.int64)
    rows = tl.arange(0, C)
    ti = t0 + rows
    mt = ti < eos
    gg = tl.load(g_ptr + ti * H + h, mask=mt, other=0.0).to(tl.float32)
    tl.store(gam_ptr + ti * H + h, tl.cumsum(gg, 0), mask=mt)

    k0, b0, g0, m0 = _wy_block(k_ptr, g_ptr, beta_ptr, t0, eos, h, 0, H, G, K, BK)
    k1, b1, g1, m1 = _wy_block(k_ptr, g_ptr, beta_ptr, t0, eos, h, 1, H, G, K, BK)
    k2, b2, g2, m2 = _wy_block(k_ptr, g_ptr, beta_ptr, t0, eos, h, 2, H, G, K, BK)
    k3, b3, g3, m3 = _wy_block(k_ptr, g_ptr, beta_ptr, t0, eos, h, 3, H, G, K, BK)
    t00 = _inv_unit_lower_16(_a_diag(k0, b0, g0, m0, LOWP), 16)
    t11 = _inv_unit_lower_16(_a_diag(k1, b1, g1, m1, LOWP), 16)
    t22 = _inv_unit_lower_16(_a_diag(k2, b2, g2, m2, LOWP), 16)
    t33 = _inv_unit_lower_16(_a_diag(k3, b3, g3, m3, LOWP), 16)
    a10 = _a_offdiag(k1, b1, g1, k0, g0, LOWP)
    a20 = _a_offdiag(k2, b2, g2, k0, g0, LOWP)
    a21 = _a_offdiag(k2, b2, g2, k1, g1, LOWP)
    a30 = _a_offdiag(k3, b3, g3, k0, g0, LOWP)
    a31 = _a_offdiag(k3, b3, g3, k1, g1, LOWP)
    a32 = _a_offdiag(k3, b3, g3, k2, g2, LOWP)
    t10 = -dot(t11, dot(a10, t00, False), False)
    t21 = -dot(t22, dot(a21, t11, False), False)
    t20 = -dot(t22, dot(a20, t00, False) + dot(a21, t10, False), False)
    t32 = -dot(t33, dot(a32, t22, False), False)
    t31 = -dot(t33, dot(a31, t11, False) + dot(a32, t21, False), False)
    t30 = -dot(t33, dot(a30, t00, False) + dot(a31, t10, False) + dot(a32, t20, False), False)
    zero = tl.zeros([16, 16], dtype=tl.float32)
    _store_tm_row(tm_ptr, t0, eos, h, 0, H, C, t00, zero, zero, zero)
    _store_tm_row(tm_ptr, t0, eos, h, 1, H, C, t10, t11, zero, zero)
    _store_tm_row(tm_ptr, t0, eos, h, 2, H, C, t20, t21, t22, zero)
    _store_tm_row(tm_ptr, t0, eos, h, 3, H, C, t30, t31, t32, t33)

    # W = T Kb with Kb = beta exp(gamma) K, block-row by block-row.
    r16 = tl.arange(0, 16)
    ok = tl.arange(0, BK)
    mk = ok < K
    kb0 = k0 * (b0 * tl.exp(g0))[:, None]
    kb1 = k1 * (b1 * tl.exp(g1))[:, None]
    kb2 = k2 * (b2 * tl.exp(g2))[:, None]
    kb3 = k3 * (b3 * tl.exp(g3))[:, None]
    w_off = ((t0 + r16)[:, None] * H + h) * K + ok[None, :]
    tl.store(w_ptr + w_off, dot(t00, kb0, LOWP), mask=m0[:, None] & mk[None, :])
    tl.store(w_ptr + w_off + 16 * H * K, dot(t10, kb0, LOWP) + dot(t11, kb1, LOWP), mask=m1[:, None] & mk[None, :])
    tl.store(w_ptr + w_off + 32 * H * K, dot(t20, kb0, LOWP) + dot(t21, kb1, LOWP) + dot(t22, kb2, LOWP),
             mask=m2[:, None] & mk[None, :])
    tl.store(w_ptr + w_off + 48 * H * K,
             dot(t30, kb0, LOWP) + dot(t31, kb1, LOWP) + dot(t32, kb2, LOWP) + dot(t33, kb3, LOWP),
             mask=m3[:, None] & mk[None, :])
    # U = T (beta V), a block of BV value columns at a time.
    for v0 in range(0, V, BV):
        ov = v0 + tl.arange(0, BV)
        mv = ov < V
        v_off = ((t0 + r16)[:, None] * H + h) * V + ov[None, :]
        vb0 = tl.load(v_ptr + v_off, mask=m0[:, None] & mv[None, :], other=0.0).to(tl.float32) * b0[:, None]
        vb1 = tl.load(v_ptr + v_off + 16 * H * V, mask=m1[:, None] & mv[None, :], other=0.0).to(tl.float32) * b1[:, None]
        vb2 = tl.load(v_ptr + v_off + 32 * H * V, mask=m2[:, None] & mv[None, :], other=0.0).to(tl.float32) * b2[:, None]
        vb3 = tl.load(v_ptr + v_off + 48 * H * V, mask=m3[:, None] & mv[None, :], other=0.0).to(tl.float32) * b3[:, None]
        tl.store(u_ptr + v_off, dot(t00, vb0, LOWP), mask=m0[:, None] & mv[None, :])
        tl.store(u_ptr + v_off + 16 * H * V, dot(t10, vb0, LOWP) + dot(t11, vb1, LOWP), mask=m1[:, None] & mv[None, :])
        tl.store(u_ptr + v_off + 32 * H * V, dot(t20, vb0, LOWP) + dot(t21, vb1, LOWP) + dot(t22, vb2, LOWP),
                 mask=m2[:, None] & mv[None, :])
        tl.store(u_ptr + v_off + 48 * H * V,
                 dot(t30, vb0, LOWP) + dot(t31, vb1, LOWP) + dot(t32, vb2, LOWP) + dot(t33, vb3, LOWP),
                 mask=m3[:, None] & mv[None, :])


@triton.jit
def _state_fwd_kernel(
    k_ptr, w_ptr, u_ptr, gam_ptr, h0_ptr, cu_ptr, cuc_ptr,  # inputs
    hs_ptr, vn_ptr, ht_ptr,  # outputs
    H: tl.constexpr, G: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_H0: tl.constexpr, STORE_HT: tl.constexpr, LOWP: tl.constexpr,
):
    """The sequential pass over one sequence's chunks, for a block of BV value columns. Grid: (cdiv(V, BV), N, H).

    State S ``[K, BV]`` starts at ``h0[n, h]`` (or zeros) and, chunk after chunk:
    saves S to ``hs[chunk, h]`` (``[n_chunks, H, K, V]``, the state entering the chunk), computes
    V_new = U - W S (stored to ``vn [TT, H, V]``), then S = exp(gamma_last) S + (K exp(gamma_last - gamma))^T V_new.
    The final S goes to ``ht[n, h]`` when STORE_HT. ``cu`` / ``cuc``: token / chunk offsets ``[N + 1]``.
    """
    iv = tl.program_id(0)
    n = tl.program_id(1)
    h = tl.program_id(2)
    HQ: tl.constexpr = H // G
    bos = tl.load(cu_ptr + n).to(tl.int64)
    eos = tl.load(cu_ptr + n + 1).to(tl.int64)
    c0 = tl.load(cuc_ptr + n).to(tl.int64)
    c1 = tl.load(cuc_ptr + n + 1).to(tl.int64)
    rows = tl.arange(0, C)
    ok = tl.arange(0, BK)
    mk = ok < K
    ov = iv * BV + tl.arange(0, BV)
    mv = ov < V
    mkv = mk[:, None] & mv[None, :]
    kv_off = ok[:, None] * V + ov[None, :]

    s = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_H0:
        s += tl.load(h0_ptr + (n * H + h) * K * V + kv_off, mask=mkv, other=0.0).to(tl.float32)
    for c in range(c0, c1):
        t0 = bos + (c - c0) * C
        ti = t0 + rows
        mt = ti < eos
        tl.store(hs_ptr + (c * H + h) * K * V + kv_off, s, mask=mkv)
        w = tl.load(w_ptr + (ti[:, None] * H + h) * K + ok[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
        u = tl.load(u_ptr + (ti[:, None] * H + h) * V + ov[None, :], mask=mt[:, None] & mv[None, :], other=0.0)
        vn = u - dot(w, s, LOWP)
        tl.store(vn_ptr + (ti[:, None] * H + h) * V + ov[None, :], vn, mask=mt[:, None] & mv[None, :])
        last = tl.minimum(t0 + C, eos) - 1
        gl = tl.load(gam_ptr + last * H + h)
        gm = tl.load(gam_ptr + ti * H + h, mask=mt, other=0.0)
        kk = tl.load(k_ptr + (ti[:, None] * HQ + h // G) * K + ok[None, :], mask=mt[:, None] & mk[None, :], other=0.0)
        kd = kk.to(tl.float32) * tl.where(mt, tl.exp(gl - gm), 0.0)[:, None]
        s = s * tl.exp(gl) + dot(tl.trans(kd), vn, LOWP)
    if STORE_HT:
        tl.store(ht_ptr + (n * H + h) * K * V + kv_off, s, mask=mkv)


@triton.jit
def _output_fwd_kernel(
    q_ptr, k_ptr, gam_ptr, hs_ptr, vn_ptr, chunk_ptr,  # inputs
    o_ptr,  # output
    scale,
    H: tl.constexpr, G: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, LOWP: tl.constexpr,
):
    """Outputs of one chunk for a block of BV value columns. Grid: (cdiv(V, BV), n_chunks, H).

    O = scale * [(Q exp(gamma)) S + tril(Q K^T exp(gamma_i - gamma_j)) V_new], with S = ``hs[chunk, h]``
    the state entering the chunk; written to ``o [TT, H, V]`` in o's dtype.
    """
    iv = tl.program_id(0)
    c = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2)
    HQ: tl.constexpr = H // G
    t0 = tl.load(chunk_ptr + 2 * c).to(tl.int64)
    eos = tl.load(chunk_ptr + 2 * c + 1).to(tl.int64)
    rows = tl.arange(0, C)
    ti = t0 + rows
    mt = ti < eos
    ok = tl.arange(0, BK)
    mk = ok < K
    ov = iv * BV + tl.arange(0, BV)
    mv = ov < V
    mtk = mt[:, None] & mk[None, :]
    mtv = mt[:, None] & mv[None, :]

    qq = tl.load(q_ptr + (ti[:, None] * HQ + h // G) * K + ok[None, :], mask=mtk, other=0.0)
    kk = tl.load(k_ptr + (ti[:, None] * HQ + h // G) * K + ok[None, :], mask=mtk, other=0.0)
    gm = tl.load(gam_ptr + ti * H + h, mask=mt, other=0.0)
    s = tl.load(hs_ptr + (c * H + h) * K * V + ok[:, None] * V + ov[None, :], mask=mk[:, None] & mv[None, :], other=0.0)
    vn = tl.load(vn_ptr + (ti[:, None] * H + h) * V + ov[None, :], mask=mtv, other=0.0)

    o = dot(qq, s, LOWP) * tl.exp(gm)[:, None]
    causal = (rows[:, None] >= rows[None, :]) & mt[:, None]
    p = dot(qq, tl.trans(kk), LOWP)
    p = tl.where(causal, p * tl.exp(tl.where(causal, gm[:, None] - gm[None, :], 0.0)), 0.0)
    o = (o + dot(p, vn, LOWP)) * scale
    tl.store(o_ptr + (ti[:, None] * H + h) * V + ov[None, :], o.to(o_ptr.dtype.element_ty), mask=mtv)


# ----------------------------------------------------------------------------------------------------
# backward
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _dv_local_kernel(
    q_ptr, k_ptr, gam_ptr, do_ptr, chunk_ptr,  # inputs
    dvn_ptr,  # output
    scale,
    H: tl.constexpr, G: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, LOWP: tl.constexpr,
):
    """The part of dV_new that O's intra-chunk term gives. Grid: (cdiv(V, BV), n_chunks, H).

    dV_new_local = scale * tril(Q K^T exp(gamma_i - gamma_j))^T dO, written to ``dvn [TT, H, V]``
    (float32); :func:`_state_bwd_kernel` adds the state's part in place.
    """
    iv = tl.program_id(0)
    c = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2)
    HQ: tl.constexpr = H // G
    t0 = tl.load(chunk_ptr + 2 * c).to(tl.int64)
    eos = tl.load(chunk_ptr + 2 * c + 1).to(tl.int64)
    rows = tl.arange(0, C)
    ti = t0 + rows
    mt = ti < eos
    ok = tl.arange(0, BK)
    mk = ok < K
    ov = iv * BV + tl.arange(0, BV)
    mv = ov < V
    mtk = mt[:, None] & mk[None, :]
    mtv = mt[:, None] & mv[None, :]

    qq = tl.load(q_ptr + (ti[:, None] * HQ + h // G) * K + ok[None, :], mask=mtk, other=0.0)
    kk = tl.load(k_ptr + (ti[:, None] * HQ + h // G) * K + ok[None, :], mask=mtk, other=0.0)
    gm = tl.load(gam_ptr + ti * H + h, mask=mt, other=0.0)
    do = tl.load(do_ptr + (ti[:, None] * H + h) * V + ov[None, :], mask=mtv, other=0.0)
    causal = (rows[:, None] >= rows[None, :]) & mt[:, None]
    p = dot(qq, tl.trans(kk), LOWP)
    p = tl.where(causal, p * tl.exp(tl.where(causal, gm[:, None] - gm[None, :], 0.0)), 0.0) * scale
    dvn = dot(tl.trans(p), do, LOWP)
    tl.store(dvn_ptr + (ti[:, None] * H + h) * V + ov[None, :], dvn, mask=mtv)


@triton.jit
def _state_bwd_kernel(
    q_ptr, k_ptr, w_ptr, gam_ptr, do_ptr, dht_ptr, cu_ptr, cuc_ptr,  # inputs
    dvn_ptr,  # in: the local part of dV_new; out: all of it
    dhs_ptr, dh0_ptr,  # outputs
    scale,
    H: tl.constexpr, G: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    HAS_DHT: tl.constexpr, STORE_DH0: tl.constexpr, LOWP: tl.constexpr,
):
    """The reverse pass over one sequence's chunks for BV value columns. Grid: (cdiv(V, BV), N, H).

    dS ``[K, BV]`` starts at the final state's gradient ``dht[n, h]`` (or zeros); for each chunk from
    the last: saves dS (the gradient of the state leaving the chunk) to ``dhs [n_chunks, H, K, V]``,
    completes dV_new += (K exp(gamma_last - gamma)) dS in ``dvn``, then
    dS = exp(gamma_last) dS + (scale exp(gamma) Q)^T dO - W^T dV_new. The last dS is dh0[n, h].
    """
    iv = tl.program_id(0)
    n = tl.program_id(1)
    h = tl.program_id(2)
    HQ: tl.constexpr = H // G
    bos = tl.load(cu_ptr + n).to(tl.int64)
    eos = tl.load(cu_ptr + n + 1).to(tl.int64)
    c0 = tl.load(cuc_ptr + n).to(tl.int64)
    c1 = tl.load(cuc_ptr + n + 1).to(tl.int64)
    rows = tl.arange(0, C)
    ok = tl.arange(0, BK)
    mk = ok < K
    ov = iv * BV + tl.arange(0, BV)
    mv = ov < V
    mkv = mk[:, None] & mv[None, :]
    kv_off = ok[:, None] * V + ov[None, :]

    ds = tl.zeros([BK, BV], dtype=tl.float32)
    if HAS_DHT:
        ds += tl.load(dht_ptr + (n * H + h) * K * V + kv_off, mask=mkv, other=0.0).to(tl.float32)
    for j in range(0, c1 - c0):
        c = c1 - 1 - j
        t0 = bos + (c - c0) * C
        ti = t0 + rows
        mt = ti < eos
        mtk = mt[:, None] & mk[None, :]
        mtv = mt[:, None] & mv[None, :]
        tl.store(dhs_ptr + (c * H + h) * K * V + kv_off, ds, mask=mkv)
        qq = tl.load(q_ptr + (ti[:, None] * HQ + h // G) * K + ok[None, :], mask=mtk, other=0.0)
        kk = tl.load(k_ptr + (ti[:, None] * HQ + h // G) * K + ok[None, :], mask=mtk, other=0.0)
        w = tl.load(w_ptr + (ti[:, None] * H + h) * K + ok[None, :], mask=mtk, other=0.0)
        do = tl.load(do_ptr + (ti[:, None] * H + h) * V + ov[None, :], mask=mtv, other=0.0)
        dvl = tl.load(dvn_ptr + (ti[:, None] * H + h) * V + ov[None, :], mask=mtv, other=0.0)
        last = tl.minimum(t0 + C, eos) - 1
        gl = tl.load(gam_ptr + last * H + h)
        gm = tl.load(gam_ptr + ti * H + h, mask=mt, other=0.0)
        kd = kk.to(tl.float32) * tl.where(mt, tl.exp(gl - gm), 0.0)[:, None]
        dvn = dvl + dot(kd, ds, LOWP)
        tl.store(dvn_ptr + (ti[:, None] * H + h) * V + ov[None, :], dvn, mask=mtv)
        qg = qq.to(tl.float32) * tl.where(mt, scale * tl.exp(gm), 0.0)[:, None]
        ds = ds * tl.exp(gl) + dot(tl.trans(qg), do, LOWP) - dot(tl.trans(w), dvn, LOWP)
    if STORE_DH0:
        tl.store(dh0_ptr + (n * H + h) * K * V + kv_off, ds, mask=mkv)


@triton.jit
def _grad_kernel(
    q_ptr, k_ptr, v_ptr, beta_ptr, gam_ptr, tm_ptr, hs_ptr, dhs_ptr, vn_ptr, dvn_ptr, do_ptr, chunk_ptr,
    dq_ptr, dk_ptr, dv_ptr, dbeta_ptr, dg_ptr,  # outputs
    scale,
    H: tl.constexpr, G: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
    C: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr, LOWP: tl.constexpr,
):
    """Every input gradient of one (chunk, value head). Grid: (n_chunks, H).

    Reads S = ``hs[chunk, h]`` (state entering), dS' = ``dhs[chunk, h]`` (gradient of the state leaving),
    V_new, dV_new (complete), dO and T from the forward. Writes dq, dk ``[TT, H, K]`` per value head
    (float32; summed over head groups by the caller), dv ``[TT, H, V]``, dbeta, dg ``[TT, H]``
    (float32), following the formulas in the module docstring. V is walked in blocks of BV.
    """
    c = tl.program_id(0).to(tl.int64)  # chunk index: chunk * H * K * V can pass 2^31
    h = tl.program_id(1)
    HQ: tl.constexpr = H // G
    t0 = tl.load(chunk_ptr + 2 * c).to(tl.int64)
    eos = tl.load(chunk_ptr + 2 * c + 1).to(tl.int64)
    rows = tl.arange(0, C)
    ti = t0 + rows
    mt = ti < eos
    ok = tl.arange(0, BK)
    mk = ok < K
    mtk = mt[:, None] & mk[None, :]

    qq = tl.load(q_ptr + (ti[:, None] * HQ + h // G) * K + ok[None, :], mask=mtk, other=0.0).to(tl.float32)
    kk = tl.load(k_ptr + (ti[:, None] * HQ + h // G) * K + ok[None, :], mask=mtk, other=0.0).to(tl.float32)
    bb = tl.load(beta_ptr + ti * H + h, mask=mt, other=0.0).to(tl.float32)
    gm = tl.load(gam_ptr + ti * H + h, mask=mt, other=0.0)
    last = tl.minimum(t0 + C, eos) - 1
    gl = tl.load(gam_ptr + last * H + h)
    tm = tl.load(tm_ptr + (ti[:, None] * H + h) * C + rows[None, :], mask=mt[:, None], other=0.0)
    e = tl.where(mt, tl.exp(gm), 0.0)
    el = tl.where(mt, tl.exp(gl - gm), 0.0)

    acc_dq = tl.zeros([C, BK], dtype=tl.float32)  # dO S^T
    acc_dov = tl.zeros([C, C], dtype=tl.float32)  # dO V_new^T
    acc_dw = tl.zeros([C, BK], dtype=tl.float32)  # dV_new S^T  (= -dW)
    acc_ks = tl.zeros([C, BK], dtype=tl.float32)  # V_new dS'^T
    acc_dt = tl.zeros([C, C], dtype=tl.float32)  # dV_new Vb^T  (U's share of dT)
    dbeta = tl.zeros([C], dtype=tl.float32)
    ss = tl.zeros([BK], dtype=tl.float32)  # partial <dS', S>
    for v0 in range(0, V, BV):
        ov = v0 + tl.arange(0, BV)
        mv = ov < V
        mtv = mt[:, None] & mv[None, :]
        mkv = mk[:, None] & mv[None, :]
        kv_off = ok[:, None] * V + ov[None, :]
        s = tl.load(hs_ptr + (c * H + h) * K * V + kv_off, mask=mkv, other=0.0)
        dsn = tl.load(dhs_ptr + (c * H + h) * K * V + kv_off, mask=mkv, other=0.0)
        vn = tl.load(vn_ptr + (ti[:, None] * H + h) * V + ov[None, :], mask=mtv, other=0.0)
        dvn = tl.load(dvn_ptr + (ti[:, None] * H + h) * V + ov[None, :], mask=mtv, other=0.0)
        do = tl.load(do_ptr + (ti[:, None] * H + h) * V + ov[None, :], mask=mtv, other=0.0).to(tl.float32)
        vv = tl.load(v_ptr + (ti[:, None] * H + h) * V + ov[None, :], mask=mtv, other=0.0).to(tl.float32)

        acc_dq += dot(do, tl.trans(s), LOWP)
        acc_dov += dot(do, tl.trans(vn), LOWP)
        acc_dw += dot(dvn, tl.trans(s), LOWP)
        acc_ks += dot(vn, tl.trans(dsn), LOWP)
        acc_dt += dot(dvn, tl.trans(vv * bb[:, None]), LOWP)
        ss += tl.sum(dsn * s, 1)
        dvb = dot(tl.trans(tm), dvn, LOWP)  # dVb = T^T dU, with dU = dV_new
        dbeta += tl.sum(dvb * vv, 1)
        tl.store(dv_ptr + (ti[:, None] * H + h) * V + ov[None, :], (dvb * bb[:, None]).to(dv_ptr.dtype.element_ty), mask=mtv)

    # O's terms: O = scale [e * (Q S) + (QK^T * L) V_new].
    causal = (rows[:, None] >= rows[None, :]) & mt[:, None]
    strict = (rows[:, None] > rows[None, :]) & mt[:, None]
    diff = gm[:, None] - gm[None, :]
    lmat = tl.where(causal, tl.exp(tl.where(causal, diff, 0.0)), 0.0)
    qk = dot(qq, tl.trans(kk), LOWP)
    ds_ = scale * acc_dov * lmat
    dq = scale * e[:, None] * acc_dq + dot(ds_, kk, LOWP)
    dk = dot(tl.trans(ds_), qq, LOWP)
    z = ds_ * qk
    dgam = scale * e * tl.sum(qq * acc_dq, 1) + tl.sum(z, 1) - tl.sum(z, 0)

    # The state leaving the chunk: S' = exp(gamma_last) S + (eL K)^T V_new.
    dk += el[:, None] * acc_ks
    r = el * tl.sum(kk * acc_ks, 1)
    dgam -= r
    dgam += tl.where(ti == last, tl.sum(r, 0) + tl.exp(gl) * tl.sum(ss, 0), 0.0)

    # The WY form: W = T Kb, U = T Vb, T = (I + A)^{-1}.
    kb = kk * (bb * e)[:, None]
    dw = -acc_dw
    dtm = acc_dt + dot(dw, tl.trans(kb), LOWP)
    dkb = dot(tl.trans(tm), dw, LOWP)
    rk = tl.sum(dkb * kk, 1)
    dk += (bb * e)[:, None] * dkb
    dbeta += e * rk
    dgam += bb * e * rk
    dm = -dot(dot(tl.trans(tm), dtm, LOWP), tl.trans(tm), LOWP)
    emat = tl.where(strict, tl.exp(tl.where(strict, diff, 0.0)), 0.0)
    kkt = dot(kk, tl.trans(kk), LOWP)
    da = tl.where(strict, dm, 0.0)
    dae = da * emat
    d = bb[:, None] * dae
    dk += dot(d, kk, LOWP) + dot(tl.trans(d), kk, LOWP)
    dbeta += tl.sum(dae * kkt, 1)
    daa = d * kkt  # dA * A
    dgam += tl.sum(daa, 1) - tl.sum(daa, 0)

    # gamma = cumsum(g) inside the chunk, so dg is the reverse cumulative sum of dgamma.
    dgam = tl.where(mt, dgam, 0.0)
    dg = tl.sum(dgam, 0) - tl.cumsum(dgam, 0) + dgam
    tl.store(dq_ptr + (ti[:, None] * H + h) * K + ok[None, :], dq, mask=mtk)
    tl.store(dk_ptr + (ti[:, None] * H + h) * K + ok[None, :], dk, mask=mtk)
    tl.store(dbeta_ptr + ti * H + h, dbeta, mask=mt)
    tl.store(dg_ptr + ti * H + h, dg, mask=mt)


# ----------------------------------------------------------------------------------------------------
# L2 norm over the last dim (q and k when use_qk_l2norm_in_kernel)
# ----------------------------------------------------------------------------------------------------


@triton.jit
def _l2norm_fwd_kernel(x_ptr, y_ptr, rstd_ptr, R, eps, D: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    """Rows ``x [R, D]`` -> ``y = x * rstd`` with ``rstd = 1 / sqrt(sum(x^2) + eps)`` ``[R]``. Grid: (cdiv(R, BR),)."""
    rr = tl.program_id(0) * BR + tl.arange(0, BR)
    od = tl.arange(0, BD)
    m = (rr[:, None] < R) & (od[None, :] < D)
    x = tl.load(x_ptr + rr[:, None].to(tl.int64) * D + od[None, :], mask=m, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, 1) + eps)
    tl.store(y_ptr + rr[:, None].to(tl.int64) * D + od[None, :], x * rstd[:, None], mask=m)
    tl.store(rstd_ptr + rr, rstd, mask=rr < R)


@triton.jit
def _l2norm_bwd_kernel(y_ptr, rstd_ptr, dy_ptr, dx_ptr, R, D: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr):
    """``dx = rstd * (dy - y * sum(dy * y))`` for ``y = x * rstd`` (rows ``[R, D]``). Grid: (cdiv(R, BR),)."""
    rr = tl.program_id(0) * BR + tl.arange(0, BR)
    od = tl.arange(0, BD)
    m = (rr[:, None] < R) & (od[None, :] < D)
    off = rr[:, None].to(tl.int64) * D + od[None, :]
    y = tl.load(y_ptr + off, mask=m, other=0.0)
    dy = tl.load(dy_ptr + off, mask=m, other=0.0).to(tl.float32)
    rstd = tl.load(rstd_ptr + rr, mask=rr < R, other=0.0)
    dx = rstd[:, None] * (dy - y * tl.sum(dy * y, 1)[:, None])
    tl.store(dx_ptr + off, dx, mask=m)


def _l2norm_fwd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x ``[..., D]`` -> (float32 ``x / ||x||``, float32 rstd ``[...]``)."""
    D = x.shape[-1]
    x2 = x.reshape(-1, D)
    R = x2.shape[0]
    y = torch.empty(R, D, dtype=torch.float32, device=x.device)
    rstd = torch.empty(R, dtype=torch.float32, device=x.device)
    BR = 16
    if R:
        _l2norm_fwd_kernel[(triton.cdiv(R, BR),)](x2, y, rstd, R, L2NORM_EPS, D=D, BR=BR, BD=_next_pow2(D))
    return y.reshape(x.shape), rstd.reshape(x.shape[:-1])


def _l2norm_bwd(y: torch.Tensor, rstd: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
    D = y.shape[-1]
    R = y.numel() // D if D else 0
    dx = torch.empty(y.shape, dtype=torch.float32, device=y.device)
    BR = 16
    if R:
        _l2norm_bwd_kernel[(triton.cdiv(R, BR),)](y, rstd, dy.contiguous(), dx, R, D=D, BR=BR, BD=_next_pow2(D))
    return dx


# ----------------------------------------------------------------------------------------------------
# host side: chunk tables, launches, autograd
# ----------------------------------------------------------------------------------------------------


def _chunk_tables(cu: torch.Tensor, C: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """From token offsets ``cu [N + 1]``: chunk offsets ``cuc [N + 1]`` (int32), the chunk table
    ``[n_chunks, 2]`` = (first token, end of its sequence) (int32), and n_chunks. One host sync."""
    lens = (cu[1:] - cu[:-1]).long()
    nck = (lens + C - 1) // C
    cuc = torch.zeros_like(cu, dtype=torch.long)
    cuc[1:] = nck.cumsum(0)
    NT = int(cuc[-1].item())
    seq = torch.repeat_interleave(torch.arange(len(lens), device=cu.device), nck)
    idx = torch.arange(NT, device=cu.device) - cuc[:-1][seq]
    table = torch.stack([cu[:-1].long()[seq] + idx * C, cu[1:].long()[seq]], 1)
    return cuc.to(torch.int32), table.to(torch.int32).contiguous(), NT


def _block_v(V: int) -> int:
    return min(64, _next_pow2(V))


def _forward(q, k, v, g, beta, scale, h0, cu, C, lowp, output_final_state):
    """q, k ``[TT, Hq, K]``, v ``[TT, H, V]``, g, beta ``[TT, H]`` contiguous; returns o (q's dtype,
    float32 for float32 input), final state (float32) or None, and the saved intermediates."""
    TT, Hq, K = q.shape
    H, V = v.shape[1], v.shape[2]
    G = H // Hq
    N = cu.numel() - 1
    dev = q.device
    BK, BV = _next_pow2(K), _block_v(V)
    cuc, table, NT = _chunk_tables(cu, C)
    f32 = dict(dtype=torch.float32, device=dev)
    gam = torch.empty(TT, H, **f32)
    tm = torch.empty(TT, H, C, **f32)
    w = torch.empty(TT, H, K, **f32)
    u = torch.empty(TT, H, V, **f32)
    hs = torch.empty(NT, H, K, V, **f32)
    vn = torch.empty(TT, H, V, **f32)
    ht = torch.empty(N, H, K, V, **f32) if output_final_state else None
    o = torch.empty(TT, H, V, dtype=v.dtype, device=dev)
    meta = dict(H=H, G=G, K=K, V=V, C=C, BK=BK, LOWP=lowp)
    if NT:
        _wy_fwd_kernel[(NT, H)](k, v, g, beta, table, gam, tm, w, u, BV=BV, **meta)
    _state_fwd_kernel[(triton.cdiv(V, BV), N, H)](
        k, w, u, gam, h0 if h0 is not None else vn, cu, cuc, hs, vn, ht if ht is not None else vn,
        BV=BV, HAS_H0=h0 is not None, STORE_HT=ht is not None, **meta,
    )
    if NT:
        _output_fwd_kernel[(triton.cdiv(V, BV), NT, H)](q, k, gam, hs, vn, table, o, scale, BV=BV, **meta)
    saved = (gam, tm, w, hs, vn, cuc, table, NT)
    return o, ht, saved


def _backward(q, k, v, beta, scale, cu, C, lowp, saved, do, dht, need_dh0):
    TT, Hq, K = q.shape
    H, V = v.shape[1], v.shape[2]
    G = H // Hq
    N = cu.numel() - 1
    dev = q.device
    gam, tm, w, hs, vn, cuc, table, NT = saved
    BK, BV = _next_pow2(K), _block_v(V)
    f32 = dict(dtype=torch.float32, device=dev)
    dvn = torch.empty(TT, H, V, **f32)
    dhs = torch.empty(NT, H, K, V, **f32)
    dh0 = torch.empty(N, H, K, V, **f32) if need_dh0 else None
    dq = torch.empty(TT, H, K, **f32)
    dk = torch.empty(TT, H, K, **f32)
    dv = torch.empty(TT, H, V, **f32)
    dbeta = torch.empty(TT, H, **f32)
    dg = torch.empty(TT, H, **f32)
    meta = dict(H=H, G=G, K=K, V=V, C=C, BK=BK, BV=BV, LOWP=lowp)
    if NT:
        _dv_local_kernel[(triton.cdiv(V, BV), NT, H)](q, k, gam, do, table, dvn, scale, **meta)
    _state_bwd_kernel[(triton.cdiv(V, BV), N, H)](
        q, k, w, gam, do, dht if dht is not None else dvn, cu, cuc, dvn, dhs, dh0 if dh0 is not None else dvn,
        scale, HAS_DHT=dht is not None, STORE_DH0=need_dh0, **meta,
    )
    if NT:
        # Many [C, K] accumulators live at once here: 8 warps give them registers (fewer spills).
        _grad_kernel[(NT, H)](q, k, v, beta, gam, tm, hs, dhs, vn, dvn, do, table, dq, dk, dv, dbeta, dg, scale,
                              num_warps=8, **meta)
    if G > 1:  # value heads that share a q/k head add their gradients
        dq = dq.view(TT, Hq, G, K).sum(2)
        dk = dk.view(TT, Hq, G, K).sum(2)
    return dq, dk, dv, dg, dbeta, dh0


class ChunkGatedDeltaRuleFunction(torch.autograd.Function):
    """Autograd wrapper: inputs already flattened to the token axis (``[TT, ...]``) and contiguous."""

    @staticmethod
    def forward(ctx, q, k, v, g, beta, scale, h0, cu, C, use_l2norm, output_final_state):
        lowp = q.dtype == torch.bfloat16
        if use_l2norm:
            qn, q_rstd = _l2norm_fwd(q)
            kn, k_rstd = _l2norm_fwd(k)
            if lowp:  # the kernels read q/k in their input dtype, as fla does
                qn, kn = qn.to(q.dtype), kn.to(k.dtype)
        else:
            qn, kn, q_rstd, k_rstd = q, k, None, None
        o, ht, saved = _forward(qn, kn, v, g, beta, scale, h0, cu, C, lowp, output_final_state)
        gam, tm, w, hs, vn, cuc, table, NT = saved
        ctx.save_for_backward(qn, kn, v, beta, cu, gam, tm, w, hs, vn, cuc, table, q_rstd, k_rstd)
        ctx.meta = (scale, C, lowp, use_l2norm, NT, h0 is not None)
        return o, ht

    @staticmethod
    def backward(ctx, do, dht):
        qn, kn, v, beta, cu, gam, tm, w, hs, vn, cuc, table, q_rstd, k_rstd = ctx.saved_tensors
        scale, C, lowp, use_l2norm, NT, has_h0 = ctx.meta
        saved = (gam, tm, w, hs, vn, cuc, table, NT)
        dq, dk, dv, dg, dbeta, dh0 = _backward(
            qn, kn, v, beta, scale, cu, C, lowp, saved, do.contiguous(),
            None if dht is None else dht.contiguous(), has_h0,
        )
        if use_l2norm:
            dq = _l2norm_bwd(qn, q_rstd, dq)
            dk = _l2norm_bwd(kn, k_rstd, dk)
        return dq, dk, dv, dg, dbeta, None, dh0, None, None, None, None


def chunk_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    output_final_state: bool = False,
    cu_seqlens: torch.Tensor | None = None,
    use_qk_l2norm_in_kernel: bool = False,
    chunk_size: int = CHUNK_SIZE,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Chunked gated delta rule with our Triton kernels; differentiable in q, k, v, g, beta, initial_state.

    Args:
        q, k: ``[B, T, Hq, K]``; v: ``[B, T, H, V]``; g (log decay), beta: ``[B, T, H]``.
        scale: query scale (default ``K ** -0.5``); initial_state: ``[N, H, K, V]``.
        cu_seqlens: ``[N + 1]`` document boundaries in one packed row (B = 1).
        use_qk_l2norm_in_kernel: L2-normalise q and k over K first (eps 1e-6), inside the op.
        chunk_size: C; the kernels are written for 64 (kept for signature parity with ``chunk.py``).
    Returns:
        ``(o [B, T, H, V] in q's dtype, final_state [N, H, K, V] (float32; float64 for float64 input) or None)``.
    """
    N, scale = check_inputs(q, k, v, g, beta, scale, initial_state, cu_seqlens, check_values=not q.is_cuda)
    if chunk_size != CHUNK_SIZE:
        raise ValueError(f"chunk_size must be {CHUNK_SIZE} for the Triton kernels (four 16-row blocks), got {chunk_size!r}")
    check_device(q, k, v, g, beta, initial_state)
    B, T, Hq, K = q.shape
    H, V = v.shape[2], v.shape[3]
    out_dtype = q.dtype
    wide = any(x is not None and x.dtype == torch.float64 for x in (q, k, v, g, beta, initial_state))
    # float16 / float64 run in float32; so does bf16 in the interpreter, whose bf16 tl.dot is not
    # numerically meaningful (it multiplies raw bits) -- the bf16 path is for GPUs.
    if q.dtype != torch.float32 and not (q.dtype == torch.bfloat16 and q.is_cuda):
        q, k, v = q.float(), k.float(), v.float()
    k, v = k.to(q.dtype), v.to(q.dtype)
    if cu_seqlens is None:
        cu = torch.arange(0, B + 1, device=q.device, dtype=torch.int32) * T
    else:
        cu = cu_seqlens.to(device=q.device, dtype=torch.int32)
    h0 = None if initial_state is None else initial_state.float().contiguous()
    flat = lambda x: x.reshape(B * T, *x.shape[2:]).contiguous()
    o, ht = ChunkGatedDeltaRuleFunction.apply(
        flat(q), flat(k), flat(v), flat(g.float()), flat(beta.float()), scale, h0, cu, chunk_size,
        use_qk_l2norm_in_kernel, output_final_state,
    )
    o = o.reshape(B, T, H, V).to(out_dtype)
    if ht is not None and wide:
        ht = ht.double()
    return o, (ht if output_final_state else None)
