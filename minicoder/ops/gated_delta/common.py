"""Pieces every gated-delta-rule implementation shares: input checks, L2 norm, head sharing, varlen.

Layout (flash-linear-attention's): time before heads, ``q, k: [B, T, Hq, K]``, ``v: [B, T, H, V]``,
``g, beta: [B, T, H]``, states ``[N, H, K, V]``. ``H`` is a multiple of ``Hq``; value head ``h``
reads query/key head ``h // (H // Hq)`` (exactly ``repeat_interleave`` on the head dim, as in
transformers' Qwen3-Next). With ``cu_seqlens`` the batch is one packed row (``B == 1``) holding
``N = len(cu_seqlens) - 1`` documents, and each document has its own initial / final state.

Every backend (naive, chunk, Triton, fla via the dispatcher) calls :func:`check_inputs` first so that
bad shapes fail with one ``ValueError`` naming the argument, never deep inside a kernel.
"""

from __future__ import annotations

import torch

#: eps of transformers' / fla's ``l2norm``: x * rsqrt(sum(x^2) + eps).
L2NORM_EPS = 1e-6


def _shape(x: torch.Tensor | None) -> str:
    return "None" if x is None else str(tuple(x.shape))


def check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    scale: float | None = None,
    initial_state: torch.Tensor | None = None,
    cu_seqlens: torch.Tensor | None = None,
    check_values: bool = True,
) -> tuple[int, float]:
    """Validate shapes for a whole-sequence call; return ``(N, scale)`` (number of states, scale).

    ``check_values`` also reads ``cu_seqlens`` (a host sync on GPU) to check it starts at 0, never
    decreases and ends at ``T``.
    """
    for name, x in (("q", q), ("k", k), ("v", v), ("g", g), ("beta", beta)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if q.dim() != 4:
        raise ValueError(f"q must be [B, T, Hq, K], got shape {_shape(q)}")
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape [B, T, Hq, K] = {_shape(q)}, got {_shape(k)}")
    B, T, Hq, K = q.shape
    if v.dim() != 4 or v.shape[:2] != (B, T):
        raise ValueError(f"v must be [B, T, H, V] with B={B}, T={T} (from q {_shape(q)}), got {_shape(v)}")
    H, V = v.shape[2], v.shape[3]
    if Hq == 0 or H % Hq != 0:
        raise ValueError(
            f"the number of value heads H={H} (v {_shape(v)}) must be a multiple of the number of "
            f"query/key heads Hq={Hq} (q {_shape(q)})"
        )
    for name, x in (("g", g), ("beta", beta)):
        if x.shape != (B, T, H):
            raise ValueError(f"{name} must be [B, T, H] = {(B, T, H)}, got {_shape(x)}")
    if scale is None:
        scale = K**-0.5
    elif not isinstance(scale, (int, float)) or not scale > 0:
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    if cu_seqlens is None:
        N = B
    else:
        if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
            raise ValueError(f"cu_seqlens must be a 1-D tensor [N + 1], got {_shape(cu_seqlens)}")
        if cu_seqlens.is_floating_point():
            raise ValueError(f"cu_seqlens must be an integer tensor, got dtype {cu_seqlens.dtype}")
        if B != 1:
            raise ValueError(f"with cu_seqlens the batch must be one packed row (B=1), got q {_shape(q)}")
        N = cu_seqlens.numel() - 1
        if check_values:
            cu = cu_seqlens.tolist()
            if cu[0] != 0 or cu[-1] != T or any(b < a for a, b in zip(cu, cu[1:])):
                raise ValueError(f"cu_seqlens must start at 0, never decrease and end at T={T}, got {cu}")
    if initial_state is not None and initial_state.shape != (N, H, K, V):
        raise ValueError(
            f"initial_state must be [N, H, K, V] = {(N, H, K, V)} (N = "
            f"{'len(cu_seqlens) - 1' if cu_seqlens is not None else 'B'}), got {_shape(initial_state)}"
        )
    return N, float(scale)


def compute_dtype(*xs: torch.Tensor | None) -> torch.dtype:
    """float64 when any input is float64, else float32 (bf16/fp16 inputs accumulate in float32)."""
    return torch.float64 if any(x is not None and x.dtype == torch.float64 for x in xs) else torch.float32


def l2norm(x: torch.Tensor, eps: float = L2NORM_EPS) -> torch.Tensor:
    """Normalise over the last dim: ``x * rsqrt(sum(x^2) + eps)`` (transformers' / fla's form)."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def share_heads(x: torch.Tensor, n_heads: int, dim: int) -> torch.Tensor:
    """Repeat each of the ``Hq`` heads on ``dim`` ``n_heads // Hq`` times, consecutively (head h uses h // r)."""
    r = n_heads // x.shape[dim]
    return x if r == 1 else x.repeat_interleave(r, dim=dim)


def seq_bounds(B: int, T: int, cu_seqlens: torch.Tensor | None) -> list[tuple[int, int]]:
    """(start, end) of each sequence in the flattened ``[B * T]`` token axis."""
    if cu_seqlens is None:
        return [(b * T, (b + 1) * T) for b in range(B)]
    cu = cu_seqlens.tolist()
    return list(zip(cu[:-1], cu[1:]))
