"""The gated delta rule in chunks of C = 64 tokens, in plain PyTorch: the CPU path (and a GPU fallback).

Inside a chunk, with gamma = cumsum(g) (log decay since the chunk start), the C sequential delta-rule
updates collapse into matmuls (the WY / UT form of DeltaNet):

    A    = strictly_lower(diag(beta) K K^T * exp(gamma_i - gamma_j))
    W    = (I + A)^{-1} (beta * exp(gamma) * K)        U = (I + A)^{-1} (beta * V)
    then, chunk after chunk, from the state S entering the chunk:
    V_new = U - W S
    O     = (Q * exp(gamma)) S + tril(Q K^T * exp(gamma_i - gamma_j)) V_new     (Q already scaled)
    S     = exp(gamma_last) S + (K * exp(gamma_last - gamma))^T V_new

Design choices:
- Everything that does not need the state (A, the triangular solve, W, U, the decayed Q / K, the
  intra-chunk scores) is computed for all chunks of all sequences and heads at once; only the state
  pass loops, once per chunk position. (I + A)^{-1} comes from a blocked forward substitution
  (:func:`unit_lower_inverse`): log2(C) levels of batched matmuls.
- Decay differences are masked to -inf above the diagonal BEFORE exp, so exp never overflows and no
  inf * 0 = NaN appears (also in the backward pass).
- Ragged lengths (T not a multiple of C, and ``cu_seqlens`` documents) are handled by one gather that
  lays each sequence out on whole chunks, padding with q = k = v = g = beta = 0: a padded token leaves
  the state untouched (decay exp(0) = 1, beta = 0, k = 0), so it changes neither outputs nor final
  states. Sequences with fewer chunks than the longest run their missing steps on an identity chunk.
- float32 accumulation for bf16 / fp16 inputs (float64 stays float64); outputs return in q's dtype,
  states in the compute dtype. Only differentiable out-of-place ops, so autograd gives every gradient.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from minicoder.ops.gated_delta.common import check_inputs, compute_dtype, l2norm, seq_bounds, share_heads

CHUNK_SIZE = 64


def _layout(bounds: list[tuple[int, int]], C: int, device: torch.device):
    """Token -> padded slot maps for laying each sequence out on whole chunks of C slots.

    Returns ``(n_chunks per sequence, src [n_slots] (token index, or -1 for padding), dst [n_tokens])``.
    """
    n_chunks = [math.ceil((e - s) / C) for s, e in bounds]
    src, dst, offset = [], [], 0
    for (s, e), nc in zip(bounds, n_chunks):
        src.append(torch.arange(s, e, device=device))
        src.append(torch.full((nc * C - (e - s),), -1, dtype=torch.long, device=device))
        dst.append(torch.arange(offset, offset + e - s, device=device))
        offset += nc * C
    empty = torch.zeros(0, dtype=torch.long, device=device)
    return n_chunks, torch.cat(src) if src else empty, torch.cat(dst) if dst else empty


def unit_lower_inverse(A: torch.Tensor) -> torch.Tensor:
    """``(I + A)^{-1}`` for strictly lower-triangular ``A: [..., C, C]``, by blocked forward substitution.

    Start from the 1 x 1 diagonal blocks (the identity) and double the block size log2(C) times; the
    inverse of ``[[L11, 0], [L21, L22]]`` is ``[[T11, 0], [-T22 L21 T11, T22]]``, done for every diagonal
    block of every chunk and head in one batched matmul per level. Much faster on CPU than a batched
    ``torch.linalg.solve_triangular`` (measured 20x at 2048 chunk-heads of 64 x 64), and differentiable.
    C is padded to a power of two with zeros (padded rows / columns of the inverse are the identity).
    """
    C = A.shape[-1]
    P = 1 << max(C - 1, 0).bit_length()
    if P != C:
        A = F.pad(A, (0, P - C, 0, P - C))
    T = torch.ones(*A.shape[:-2], P, 1, 1, dtype=A.dtype, device=A.device)  # P diagonal blocks of size 1
    b = 1
    while b < P:
        n = P // (2 * b)
        # the n diagonal blocks of size 2b of A: [..., n, 2b, 2b]; their lower-left b x b corners
        blocks = torch.diagonal(A.unflatten(-1, (n, 2 * b)).unflatten(-3, (n, 2 * b)), dim1=-4, dim2=-2)
        A21 = blocks.movedim(-1, -3)[..., b:, :b]
        T = T.unflatten(-3, (n, 2))
        T11, T22 = T[..., 0, :, :], T[..., 1, :, :]
        T21 = -(T22 @ A21 @ T11)
        T = torch.cat([torch.cat([T11, torch.zeros_like(T11)], -1), torch.cat([T21, T22], -1)], -2)
        b *= 2
    return T.squeeze(-3)[..., :C, :C]


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
    """Chunked gated delta rule; same results as :func:`~minicoder.ops.gated_delta.naive.naive_recurrent_gated_delta_rule`.

    Args:
        q, k: ``[B, T, Hq, K]``; v: ``[B, T, H, V]``; g (log decay), beta: ``[B, T, H]``.
        scale: query scale (default ``K ** -0.5``); initial_state: ``[N, H, K, V]``.
        cu_seqlens: ``[N + 1]`` document boundaries in one packed row (B = 1).
        chunk_size: C, tokens per chunk.
    Returns:
        ``(o [B, T, H, V], final_state [N, H, K, V] or None)``.
    """
    N, scale = check_inputs(q, k, v, g, beta, scale, initial_state, cu_seqlens)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    B, T, Hq, K = q.shape
    H, V, C = v.shape[2], v.shape[3], chunk_size
    dt, out_dtype, dev = compute_dtype(q, k, v, g, beta, initial_state), q.dtype, v.device

    q, k, v, g, beta = (x.to(dt) for x in (q, k, v, g, beta))
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
    q, k = share_heads(q, H, 2) * scale, share_heads(k, H, 2)
    S = torch.zeros(N, H, K, V, dtype=dt, device=dev) if initial_state is None else initial_state.to(dt)

    # --- lay the tokens out on chunks: [n_chunks_total, H, C, D] -------------------------------------
    n_chunks, src, dst = _layout(seq_bounds(B, T, cu_seqlens), C, dev)
    NC, J = sum(n_chunks), max(n_chunks, default=0)
    if J == 0:  # no tokens at all
        return v.new_zeros(B, T, H, V, dtype=out_dtype), (S if output_final_state else None)
    padded = NC * C != B * T

    def to_chunks(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(B * T, *x.shape[2:])
        if padded:  # row B*T of the padded source is the zero padding token
            x = torch.cat([x, x.new_zeros(1, *x.shape[1:])]).index_select(0, torch.where(src < 0, B * T, src))
        return x.reshape(NC, C, *x.shape[1:]).transpose(1, 2).contiguous()

    q, k, v = to_chunks(q), to_chunks(k), to_chunks(v)  # [NC, H, C, K|V]
    g, beta = to_chunks(g), to_chunks(beta)  # [NC, H, C]

    # --- everything that does not depend on the state, for all chunks at once -----------------------
    gamma = g.cumsum(-1)
    causal = torch.ones(C, C, dtype=torch.bool, device=dev).tril()
    decay = (gamma[..., :, None] - gamma[..., None, :]).masked_fill(~causal, float("-inf")).exp()
    k_beta = k * beta[..., None]
    strictly_lower = torch.ones(C, C, dtype=torch.bool, device=dev).tril(-1)
    A = ((k_beta @ k.transpose(-1, -2)) * decay).masked_fill(~strictly_lower, 0.0)
    T_inv = unit_lower_inverse(A)
    W = T_inv @ (k_beta * gamma.exp()[..., None])
    U = T_inv @ (v * beta[..., None])
    q_decayed = q * gamma.exp()[..., None]
    k_decayed = k * (gamma[..., -1:] - gamma).exp()[..., None]
    scores = (q @ k.transpose(-1, -2)) * decay  # causal, diagonal included
    chunk_decay = gamma[..., -1].exp()[..., None, None]  # [NC, H, 1, 1]

    # --- the state pass: one step per chunk position, all sequences and heads together --------------
    uniform = all(n == J for n in n_chunks)  # then sequence n's chunk j is row n * J + j
    if uniform:
        take = lambda x, j: x.unflatten(0, (N, J))[:, j]
    else:  # sequences that have run out of chunks step through an identity chunk (row NC)
        table = torch.full((N, J), NC, dtype=torch.long, device=dev)
        starts = [0, *torch.tensor(n_chunks).cumsum(0).tolist()]
        for n, nc in enumerate(n_chunks):
            table[n, :nc] = torch.arange(starts[n], starts[n] + nc, device=dev)
        W, U, q_decayed, k_decayed, scores = (torch.cat([x, x.new_zeros(1, *x.shape[1:])]) for x in (W, U, q_decayed, k_decayed, scores))
        chunk_decay = torch.cat([chunk_decay, chunk_decay.new_ones(1, *chunk_decay.shape[1:])])
        take = lambda x, j: x.index_select(0, table[:, j])
    outs = []
    for j in range(J):
        v_new = take(U, j) - take(W, j) @ S
        outs.append(take(q_decayed, j) @ S + take(scores, j) @ v_new)
        S = take(chunk_decay, j) * S + take(k_decayed, j).transpose(-1, -2) @ v_new

    # --- back to [B, T, H, V] ---------------------------------------------------------------------
    if uniform:
        o = torch.stack(outs, 1).flatten(0, 1)  # [NC, H, C, V]
    else:  # outs[j][n] is chunk table[n, j]; invert the table for the real chunks
        real = table < NC
        stacked_at = torch.arange(J, device=dev)[None, :] * N + torch.arange(N, device=dev)[:, None]
        inverse = torch.empty(NC, dtype=torch.long, device=dev)
        inverse[table[real]] = stacked_at[real]
        o = torch.stack(outs, 0).flatten(0, 1).index_select(0, inverse)
    o = o.transpose(1, 2).reshape(NC * C, H, V)
    if padded:
        o = o.index_select(0, dst)
    return o.reshape(B, T, H, V).to(out_dtype), (S if output_final_state else None)
