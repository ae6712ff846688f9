"""The gated delta rule, token by token: the readable reference and the test oracle.

Per value head, with state ``S in R^{K x V}`` (a fast-weight linear map from keys to values):

    S_t  = exp(g_t) * S_{t-1}                  # forget: decay the whole map
    v'_t = beta_t * (v_t - S_t^T k_t)          # delta rule: the error of the map's prediction for k_t
    S_t  = S_t + k_t v'_t^T                    # one SGD step on 0.5 * ||S^T k_t - v_t||^2, lr beta_t
    o_t  = S_t^T (scale * q_t)                 # read with the updated state

Design choices: one small step function (:func:`gated_delta_rule_step`, also the decoding path) and a
loop over time that calls it, so the reference is the recurrence and nothing else. Everything is
computed in float32 (float64 if any input is float64) with out-of-place ops, so autograd flows to every
input; states come back in that compute dtype, outputs in ``q``'s dtype. O(T) sequential steps: slow,
use :mod:`minicoder.ops.gated_delta.chunk` for long sequences.
"""

from __future__ import annotations

import torch

from minicoder.ops.gated_delta.common import check_inputs, compute_dtype, l2norm, seq_bounds, share_heads


def _step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, S: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The update on prepared tensors: q (already scaled), k ``[B, H, K]``; v ``[B, H, V]``; g, beta ``[B, H]``."""
    S = S * g.exp()[..., None, None]
    pred = torch.einsum("bhkv,bhk->bhv", S, k)  # S^T k: what the map currently recalls for k
    delta = beta[..., None] * (v - pred)
    S = S + k[..., :, None] * delta[..., None, :]
    o = torch.einsum("bhkv,bhk->bhv", S, q)
    return o, S


def _scan(q, k, v, g, beta, S):
    """Step through time (dim 1) of prepared ``[n, L, H, ...]`` tensors from state S ``[n, H, K, V]``."""
    outs = []
    for t in range(q.shape[1]):
        o_t, S = _step(q[:, t], k[:, t], v[:, t], g[:, t], beta[:, t], S)
        outs.append(o_t)
    o = torch.stack(outs, 1) if outs else v.new_zeros(v.shape)
    return o, S


def _prepare(q, k, v, g, beta, H, scale, use_qk_l2norm_in_kernel, dt, head_dim):
    q, k, v, g, beta = (x.to(dt) for x in (q, k, v, g, beta))
    if use_qk_l2norm_in_kernel:
        q, k = l2norm(q), l2norm(k)
    return share_heads(q, H, head_dim) * scale, share_heads(k, H, head_dim), v, g, beta


def gated_delta_rule_step(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    state: torch.Tensor | None = None,
    scale: float | None = None,
    use_qk_l2norm_in_kernel: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of the recurrence (the decoding update).

    Args:
        q, k: ``[B, Hq, K]``; v: ``[B, H, V]`` (H a multiple of Hq); g (log decay), beta: ``[B, H]``.
        state: ``[B, H, K, V]`` or None (zeros).
        scale: query scale, default ``K ** -0.5``.
    Returns:
        ``(o [B, H, V] in q's dtype, new_state [B, H, K, V] in float32 / float64)``.
    """
    for name, x, want in (("q", q, 3), ("k", k, 3), ("v", v, 3), ("g", g, 2), ("beta", beta, 2)):
        if not isinstance(x, torch.Tensor) or x.dim() != want:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(
                f"gated_delta_rule_step: {name} must be {want}-D (q, k [B, Hq, K]; v [B, H, V]; g, beta [B, H]), got {shape}"
            )
    # The sequence checks with T = 1 give the same messages as the whole-sequence functions.
    _, scale = check_inputs(q[:, None], k[:, None], v[:, None], g[:, None], beta[:, None], scale, state, None)
    B, H, K, V = q.shape[0], v.shape[1], q.shape[2], v.shape[2]
    dt = compute_dtype(q, k, v, g, beta, state)
    q_, k_, v_, g_, b_ = _prepare(q, k, v, g, beta, H, scale, use_qk_l2norm_in_kernel, dt, head_dim=1)
    S = torch.zeros(B, H, K, V, dtype=dt, device=v.device) if state is None else state.to(dt)
    o, S = _step(q_, k_, v_, g_, b_, S)
    return o.to(q.dtype), S


def naive_recurrent_gated_delta_rule(
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
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run the recurrence over whole sequences.

    Args:
        q, k: ``[B, T, Hq, K]``; v: ``[B, T, H, V]``; g, beta: ``[B, T, H]``.
        initial_state: ``[N, H, K, V]`` (N = B, or the number of documents with ``cu_seqlens``).
        cu_seqlens: ``[N + 1]`` document boundaries in the packed row (B must be 1); the state
            restarts from ``initial_state[n]`` at each document.
    Returns:
        ``(o [B, T, H, V], final_state [N, H, K, V] or None)``.
    """
    N, scale = check_inputs(q, k, v, g, beta, scale, initial_state, cu_seqlens)
    B, T, Hq, K = q.shape
    H, V = v.shape[2], v.shape[3]
    dt, out_dtype = compute_dtype(q, k, v, g, beta, initial_state), q.dtype
    q, k, v, g, beta = _prepare(q, k, v, g, beta, H, scale, use_qk_l2norm_in_kernel, dt, head_dim=2)
    S0 = torch.zeros(N, H, K, V, dtype=dt, device=v.device) if initial_state is None else initial_state.to(dt)
    if cu_seqlens is None:  # B independent sequences: step them together
        o, S = _scan(q, k, v, g, beta, S0)
        finals = [S]
    else:  # one packed row: each document starts again from its own initial state
        outs, finals = [], []
        for n, (start, end) in enumerate(seq_bounds(B, T, cu_seqlens)):
            o_n, S = _scan(*(x[:, start:end] for x in (q, k, v, g, beta)), S0[n : n + 1])
            outs.append(o_n)
            finals.append(S)
        o = torch.cat(outs, 1)
    o = o.to(out_dtype)
    return o, (torch.cat(finals, 0) if output_final_state else None)
