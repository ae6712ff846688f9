"""Our Triton grouped GEMM for the routed experts (SwiGLU FFNs), forward and backward.

Layout (vLLM fused_moe / ScatterMoE style): the ``N * k`` (token, slot) pairs are sorted by expert
and each expert's segment is padded to a multiple of the row tile ``BM`` (``sort_by_expert`` in
``sorted.py``), so every tile of BM rows belongs to one expert and a kernel program reads that
expert's weights only. Rows are gathered on load (x by token, dy by pair) and scattered on store
(results by pair), so no permuted copy of x is ever materialised. Padding rows carry pair id -1 and
are masked.

    forward   _gate_up_kernel      h_gate, h_up = x[token] W_gu[e]^T; act = silu(h_gate) * h_up
              _grouped_gemm_kernel y[pair] = act W_down[e]^T                    (unweighted, per pair)
              out = sum over a token's k slots of topk_weights * y               (PyTorch; autograd)
    backward  _grouped_gemm_kernel dact = dy[pair] W_down[e], fused SwiGLU backward -> d h_gate, d h_up
              _grouped_gemm_kernel dx[pair] = dh W_gu[e]            then dx = sum over the k slots
              _grouped_wgrad_kernel dW_down[e] = sum_rows dy^T act,  dW_gu[e] = sum_rows dh^T x[token]

Design choices: the weighted combine is left to PyTorch (a [N, k] x [N, k, H] batched product) so
that the gradient of the routing weights is autograd's and the kernels stay deterministic (each pair
is written exactly once, no atomics). Tile sizes: 64 rows on a GPU, 16 under the interpreter (the
smallest ``tl.dot`` accepts). The padded layout costs one host sync per call (to size the grid).
Dots take float32 operands in full precision for float32 inputs, bf16 operands for bf16.
Experts that get no tokens have no tiles; their weight gradients are written as zeros.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from minicoder.ops.moe.sorted import check_moe_inputs, sort_by_expert
from minicoder.ops.triton_utils import INTERPRETED, check_device, dot


@triton.jit
def _row_index(ids, rr, MODE: tl.constexpr, TOPK: tl.constexpr):
    """Source row of padded row ``rr`` holding pair ``ids``: MODE 0 = rr itself, 1 = the pair, 2 = its token."""
    if MODE == 0:
        r = rr
    elif MODE == 1:
        r = ids
    else:
        r = ids // TOPK
    return tl.where(ids >= 0, r, 0).to(tl.int64)


@triton.jit
def _gate_up_kernel(
    x_ptr, w_ptr, ids_ptr, bexp_ptr, gate_ptr, up_ptr, act_ptr,
    HID: tl.constexpr, I: tl.constexpr, TOPK: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, LOWP: tl.constexpr,
):
    """Gate / up projections and SwiGLU for one tile of rows. Grid: (n_tiles, cdiv(I, BN)).

    x ``[N, HID]``; W_gu ``[E, 2I, HID]``; ids ``[P]`` (pair per padded row, -1 = padding);
    bexp ``[P / BM]`` (expert per tile). For rows r of the tile (expert e, token t = ids[r] // TOPK):
    gate[r] = x[t] W_gu[e, :I]^T, up[r] = x[t] W_gu[e, I:]^T, act[r] = silu(gate[r]) * up[r]; all ``[P, I]``.
    """
    pm = tl.program_id(0)
    pn = tl.program_id(1)
    e = tl.load(bexp_ptr + pm).to(tl.int64)
    rr = pm * BM + tl.arange(0, BM)
    ids = tl.load(ids_ptr + rr)
    mr = ids >= 0
    tok = _row_index(ids, rr, 2, TOPK)
    on = pn * BN + tl.arange(0, BN)
    mn = on < I
    acc_g = tl.zeros([BM, BN], dtype=tl.float32)
    acc_u = tl.zeros([BM, BN], dtype=tl.float32)
    w_base = w_ptr + e * (2 * I * HID)
    for k0 in range(0, HID, BK):
        ok = k0 + tl.arange(0, BK)
        mk = ok < HID
        a = tl.load(x_ptr + tok[:, None] * HID + ok[None, :], mask=mr[:, None] & mk[None, :], other=0.0)
        bg = tl.load(w_base + on[None, :] * HID + ok[:, None], mask=mk[:, None] & mn[None, :], other=0.0)
        bu = tl.load(w_base + (I + on[None, :]) * HID + ok[:, None], mask=mk[:, None] & mn[None, :], other=0.0)
        acc_g += dot(a, bg, LOWP)
        acc_u += dot(a, bu, LOWP)
    act = acc_g * tl.sigmoid(acc_g) * acc_u
    off = rr[:, None].to(tl.int64) * I + on[None, :]
    m = mr[:, None] & mn[None, :]
    tl.store(gate_ptr + off, acc_g.to(gate_ptr.dtype.element_ty), mask=m)
    tl.store(up_ptr + off, acc_u.to(up_ptr.dtype.element_ty), mask=m)
    tl.store(act_ptr + off, act.to(act_ptr.dtype.element_ty), mask=m)


@triton.jit
def _grouped_gemm_kernel(
    a_ptr, b_ptr, c_ptr, ids_ptr, bexp_ptr, gate_ptr, up_ptr,
    stride_be, stride_bk, stride_bn,
    KD: tl.constexpr, ND: tl.constexpr, TOPK: tl.constexpr,
    A_ROW: tl.constexpr, C_ROW: tl.constexpr, SWIGLU_BWD: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, LOWP: tl.constexpr,
):
    """C[c_row(r)] = A[a_row(r)] @ B[e] for one tile of rows (expert e) and BN columns. Grid: (n_tiles, cdiv(ND, BN)).

    A rows have KD columns and are picked by A_ROW (0: padded row r, 1: pair ids[r], 2: token
    ids[r] // TOPK); B[e] is ``[KD, ND]`` addressed by strides (so a transposed weight costs nothing);
    C rows (ND columns) are picked by C_ROW the same way. With SWIGLU_BWD the product is d(act) and the
    kernel writes the SwiGLU backward instead: ``C[r, n] = dact * up * silu'(gate)`` and
    ``C[r, ND + n] = dact * silu(gate)`` (C is ``[P, 2 ND]``; gate, up ``[P, ND]`` from the forward).
    """
    pm = tl.program_id(0)
    pn = tl.program_id(1)
    e = tl.load(bexp_ptr + pm).to(tl.int64)
    rr = pm * BM + tl.arange(0, BM)
    ids = tl.load(ids_ptr + rr)
    mr = ids >= 0
    arow = _row_index(ids, rr, A_ROW, TOPK)
    on = pn * BN + tl.arange(0, BN)
    mn = on < ND
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    b_base = b_ptr + e * stride_be
    for k0 in range(0, KD, BK):
        ok = k0 + tl.arange(0, BK)
        mk = ok < KD
        a = tl.load(a_ptr + arow[:, None] * KD + ok[None, :], mask=mr[:, None] & mk[None, :], other=0.0)
        b = tl.load(b_base + ok[:, None] * stride_bk + on[None, :] * stride_bn, mask=mk[:, None] & mn[None, :], other=0.0)
        acc += dot(a, b, LOWP)
    m = mr[:, None] & mn[None, :]
    crow = _row_index(ids, rr, C_ROW, TOPK)
    if SWIGLU_BWD:
        gu_off = rr[:, None].to(tl.int64) * ND + on[None, :]
        gate = tl.load(gate_ptr + gu_off, mask=m, other=0.0).to(tl.float32)
        up = tl.load(up_ptr + gu_off, mask=m, other=0.0).to(tl.float32)
        sg = tl.sigmoid(gate)
        d_gate = acc * up * sg * (1.0 + gate * (1.0 - sg))
        d_up = acc * gate * sg
        tl.store(c_ptr + crow[:, None] * (2 * ND) + on[None, :], d_gate.to(c_ptr.dtype.element_ty), mask=m)
        tl.store(c_ptr + crow[:, None] * (2 * ND) + ND + on[None, :], d_up.to(c_ptr.dtype.element_ty), mask=m)
    else:
        tl.store(c_ptr + crow[:, None] * ND + on[None, :], acc.to(c_ptr.dtype.element_ty), mask=m)


@triton.jit
def _grouped_wgrad_kernel(
    a_ptr, b_ptr, c_ptr, ids_ptr, eoff_ptr,
    DA: tl.constexpr, DB: tl.constexpr, TOPK: tl.constexpr,
    A_ROW: tl.constexpr, B_ROW: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, LOWP: tl.constexpr,
):
    """Weight gradient of expert e: ``C[e] = sum over its rows r of A[a_row(r)]^T B[b_row(r)]``.

    Grid: (E, cdiv(DA, BM), cdiv(DB, BN)). A rows have DA columns, B rows DB; C is ``[E, DA, DB]``.
    The rows of expert e are the padded rows ``eoff[e] : eoff[e + 1]`` (none: C[e] = 0).
    """
    e = tl.program_id(0)
    pa = tl.program_id(1)
    pb = tl.program_id(2)
    r0 = tl.load(eoff_ptr + e)
    r1 = tl.load(eoff_ptr + e + 1)
    oa = pa * BM + tl.arange(0, BM)
    ma = oa < DA
    ob = pb * BN + tl.arange(0, BN)
    mb = ob < DB
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for s in range(r0, r1, BK):
        rr = s + tl.arange(0, BK)
        ids = tl.load(ids_ptr + rr, mask=rr < r1, other=-1)
        mr = ids >= 0
        arow = _row_index(ids, rr, A_ROW, TOPK)
        brow = _row_index(ids, rr, B_ROW, TOPK)
        at = tl.load(a_ptr + arow[None, :] * DA + oa[:, None], mask=ma[:, None] & mr[None, :], other=0.0)  # [BM, BK]
        b = tl.load(b_ptr + brow[:, None] * DB + ob[None, :], mask=mr[:, None] & mb[None, :], other=0.0)  # [BK, BN]
        acc += dot(at, b, LOWP)
    off = e.to(tl.int64) * DA * DB + oa[:, None] * DB + ob[None, :]
    tl.store(c_ptr + off, acc.to(c_ptr.dtype.element_ty), mask=ma[:, None] & mb[None, :])


def _tiles(dim: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(dim)))


class MoEExpertsFunction(torch.autograd.Function):
    """x ``[N, H]``, gate_up_proj ``[E, 2I, H]``, down_proj ``[E, H, I]``, topk_ids ``[N, k]`` ->
    per-pair expert outputs ``y [N * k, H]`` (unweighted; pair n * k + j is token n's slot j)."""

    @staticmethod
    def forward(ctx, x, gate_up_proj, down_proj, topk_ids):
        N, TOPK = topk_ids.shape
        E, two_i, HID = gate_up_proj.shape
        I = two_i // 2
        BM = 16 if INTERPRETED else 64
        lay = sort_by_expert(topk_ids, E, BM)
        ids, bexp, eoff, P = lay["padded_ids"], lay["block_expert"], lay["padded_offsets"], lay["P"]
        lowp = x.dtype == torch.bfloat16
        buf = dict(dtype=x.dtype, device=x.device)
        gate, up, act = (torch.empty(P, I, **buf) for _ in range(3))
        y = torch.empty(N * TOPK, HID, **buf)
        n_tiles = P // BM
        BK = _tiles(HID, 64)
        BN = _tiles(I, 64)
        if n_tiles:
            _gate_up_kernel[(n_tiles, triton.cdiv(I, BN))](
                x, gate_up_proj, ids, bexp, gate, up, act, HID=HID, I=I, TOPK=TOPK, BM=BM, BN=BN, BK=BK, LOWP=lowp,
            )
            BN2, BK2 = _tiles(HID, 128 if not INTERPRETED else 64), _tiles(I, 64)
            _grouped_gemm_kernel[(n_tiles, triton.cdiv(HID, BN2))](
                act, down_proj, y, ids, bexp, act, act, HID * I, 1, I,  # B[e] = W_down[e]^T: [I, H]
                KD=I, ND=HID, TOPK=TOPK, A_ROW=0, C_ROW=1, SWIGLU_BWD=False, BM=BM, BN=BN2, BK=BK2, LOWP=lowp,
            )
        ctx.save_for_backward(x, gate_up_proj, down_proj, ids, bexp, eoff, gate, up, act)
        ctx.meta = (N, TOPK, E, HID, I, BM, n_tiles, lowp)
        return y

    @staticmethod
    def backward(ctx, dy):
        x, gate_up_proj, down_proj, ids, bexp, eoff, gate, up, act = ctx.saved_tensors
        N, TOPK, E, HID, I, BM, n_tiles, lowp = ctx.meta
        dy = dy.contiguous()
        P = ids.numel()
        f32 = dict(dtype=torch.float32, device=x.device)
        dh = torch.empty(P, 2 * I, **f32)  # [d gate | d up] per padded row
        dx_pairs = torch.empty(N * TOPK, HID, **f32)
        d_down = torch.empty(E, HID, I, **f32)
        d_gate_up = torch.empty(E, 2 * I, HID, **f32)
        if n_tiles:
            BN, BK = _tiles(I, 64), _tiles(HID, 64)
            _grouped_gemm_kernel[(n_tiles, triton.cdiv(I, BN))](
                dy, down_proj, dh, ids, bexp, gate, up, HID * I, I, 1,  # B[e] = W_down[e]: [H, I]
                KD=HID, ND=I, TOPK=TOPK, A_ROW=1, C_ROW=0, SWIGLU_BWD=True, BM=BM, BN=BN, BK=BK, LOWP=lowp,
            )
            BN2, BK2 = _tiles(HID, 128 if not INTERPRETED else 64), _tiles(2 * I, 64)
            _grouped_gemm_kernel[(n_tiles, triton.cdiv(HID, BN2))](
                dh, gate_up_proj, dx_pairs, ids, bexp, gate, up, 2 * I * HID, HID, 1,  # B[e] = W_gu[e]: [2I, H]
                KD=2 * I, ND=HID, TOPK=TOPK, A_ROW=0, C_ROW=1, SWIGLU_BWD=False, BM=BM, BN=BN2, BK=BK2, LOWP=lowp,
            )
        else:
            dx_pairs.zero_()
        BA, BB = _tiles(HID, 64), _tiles(I, 64)
        _grouped_wgrad_kernel[(E, triton.cdiv(HID, BA), triton.cdiv(I, BB))](
            dy, act, d_down, ids, eoff, DA=HID, DB=I, TOPK=TOPK, A_ROW=1, B_ROW=0, BM=BA, BN=BB, BK=BM, LOWP=lowp,
        )
        BA, BB = _tiles(2 * I, 64), _tiles(HID, 64)
        _grouped_wgrad_kernel[(E, triton.cdiv(2 * I, BA), triton.cdiv(HID, BB))](
            dh, x, d_gate_up, ids, eoff, DA=2 * I, DB=HID, TOPK=TOPK, A_ROW=0, B_ROW=2, BM=BA, BN=BB, BK=BM, LOWP=lowp,
        )
        dx = dx_pairs.view(N, TOPK, HID).sum(1)
        return dx, d_gate_up, d_down, None


def moe_experts_triton(
    x: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_weights: torch.Tensor,
    gate_up_proj: torch.Tensor,
    down_proj: torch.Tensor,
) -> torch.Tensor:
    """sum_k topk_weights[n, k] * Expert_{topk_ids[n, k]}(x[n]) with the Triton grouped GEMM.

    x: [N, H]; topk_ids, topk_weights: [N, k]; gate_up_proj: [E, 2I, H]; down_proj: [E, H, I].
    Differentiable in x, gate_up_proj, down_proj and topk_weights. Returns [N, H] in x's dtype.
    CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set before triton was imported.
    """
    check_moe_inputs(x, topk_ids, topk_weights, gate_up_proj, down_proj)
    check_device(x, gate_up_proj, down_proj)
    N, TOPK = topk_ids.shape
    if N == 0:
        return torch.zeros_like(x)
    # bf16 tiles on a GPU; everything else (and bf16 in the interpreter, whose bf16 tl.dot multiplies
    # raw bits) in float32.
    dt = x.dtype if x.dtype == torch.float32 or (x.dtype == torch.bfloat16 and x.is_cuda) else torch.float32
    y = MoEExpertsFunction.apply(
        x.to(dt).contiguous(), gate_up_proj.to(dt).contiguous(), down_proj.to(dt).contiguous(), topk_ids.long()
    )
    w = topk_weights.to(torch.float32 if dt == torch.bfloat16 else dt)
    out = torch.bmm(w[:, None, :], y.view(N, TOPK, -1).to(w.dtype)).squeeze(1)
    return out.to(x.dtype)
