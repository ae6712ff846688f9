"""The gated delta rule (Gated DeltaNet's token mixer) behind one dispatcher, fla-style.

Public API (flash-linear-attention's signatures and ``[B, T, H, D]`` layout, so every backend is a
drop-in for the others)::

    o, final_state = chunk_gated_delta_rule(q, k, v, g, beta, scale=None, initial_state=None,
                                            output_final_state=False, cu_seqlens=None,
                                            use_qk_l2norm_in_kernel=False, kernel="auto")
    o, final_state = fused_recurrent_gated_delta_rule(...same...)   # token by token (decoding)
    o, new_state = gated_delta_rule_step(q, k, v, g, beta, state, scale)  # one token, q: [B, Hq, K]

Shapes: ``q, k: [B, T, Hq, K]``, ``v: [B, T, H, V]`` (H a multiple of Hq; value head h uses q/k head
``h // (H // Hq)``), ``g`` (log decay, <= 0), ``beta: [B, T, H]``, ``o: [B, T, H, V]``, states
``[N, H, K, V]`` (N = B, or the number of documents when ``cu_seqlens`` packs them into one row).

Backends (``kernel=``):
  ``"fla"``     flash-linear-attention's Triton kernels (CUDA tensors only; imported lazily, never on CPU)
  ``"triton"``  our Triton kernels in ``minicoder/ops/gated_delta/triton.py`` (imported lazily)
  ``"torch"``   ``chunk.py``: chunked PyTorch (the CPU path); for the recurrent entry point, ``naive``
  ``"naive"``   ``naive.py``: the recurrence itself, the test oracle
  ``"auto"``    CUDA: fla if it imports, else our Triton if present, else torch; CPU: torch / naive

Extension point: a backend is a module exposing ``chunk_gated_delta_rule`` (and optionally
``fused_recurrent_gated_delta_rule``) with the signature above minus ``kernel``. ``triton`` is found
by a lazy import of ``minicoder.ops.gated_delta.triton``; others can be added with
:func:`register_backend`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from minicoder.config import KERNELS, register_kernel_name
from minicoder.ops.gated_delta.common import check_inputs, l2norm
from minicoder.ops.gated_delta.naive import gated_delta_rule_step, naive_recurrent_gated_delta_rule

__all__ = [
    "KERNELS",
    "available_kernels",
    "chunk_gated_delta_rule",
    "fused_recurrent_gated_delta_rule",
    "gated_delta_rule_step",
    "l2norm",
    "naive_recurrent_gated_delta_rule",
    "register_backend",
    "resolve_kernel",
]

#: Backends that run only on CUDA tensors (their kernels need a GPU).
_CUDA_ONLY = {"fla"}
#: What ``auto`` tries on CUDA, in order; on CPU it is always torch (chunk) / naive (recurrent).
_AUTO_CUDA_ORDER = ("fla", "triton", "torch")


@dataclass(frozen=True)
class Backend:
    """One implementation: a chunked (whole-sequence) function and, optionally, a recurrent one."""

    chunk: Callable
    recurrent: Callable | None = None


def _load_fla() -> Backend:
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_chunk
    from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule as fla_recurrent

    return Backend(fla_chunk, fla_recurrent)


def _load_module(name: str) -> Callable[[], Backend]:
    def load() -> Backend:
        mod = importlib.import_module(name)
        return Backend(mod.chunk_gated_delta_rule, getattr(mod, "fused_recurrent_gated_delta_rule", None))

    return load


def _load_torch() -> Backend:
    from minicoder.ops.gated_delta import chunk

    return Backend(chunk.chunk_gated_delta_rule, naive_recurrent_gated_delta_rule)


_LOADERS: dict[str, Callable[[], Backend]] = {
    "fla": _load_fla,
    "triton": _load_module("minicoder.ops.gated_delta.triton"),
    "torch": _load_torch,
    "naive": lambda: Backend(naive_recurrent_gated_delta_rule, naive_recurrent_gated_delta_rule),
}
_LOADED: dict[str, Backend | Exception] = {}


def register_backend(name: str, loader: Callable[[], Backend], cuda_only: bool = False) -> None:
    """Add (or replace) a backend: ``loader()`` returns a :class:`Backend`; it is called lazily, once."""
    _LOADERS[name] = loader
    _LOADED.pop(name, None)
    if cuda_only:
        _CUDA_ONLY.add(name)
    register_kernel_name(name)


def _backend(name: str) -> Backend | Exception:
    """Load a backend once; remember the failure (ImportError etc.) instead of raising."""
    if name not in _LOADED:
        try:
            _LOADED[name] = _LOADERS[name]()
        except Exception as e:  # a broken optional backend must not break the others
            _LOADED[name] = e
    return _LOADED[name]


def available_kernels(device: torch.device | str = "cpu") -> list[str]:
    """The backends that load and can run on ``device`` (imports them; never fla on CPU)."""
    is_cuda = torch.device(device).type == "cuda"
    out = []
    for name in _LOADERS:
        if name in _CUDA_ONLY and not is_cuda:
            continue
        if not isinstance(_backend(name), Exception):
            out.append(name)
    return out


def resolve_kernel(kernel: str, device: torch.device | str, recurrent: bool = False) -> str:
    """The backend ``kernel`` means for tensors on ``device`` ("auto" resolved); ValueError if unusable."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    is_cuda = torch.device(device).type == "cuda"
    if kernel == "auto":
        if is_cuda:
            for name in _AUTO_CUDA_ORDER:
                if not isinstance(_backend(name), Exception):
                    return name
        return "naive" if recurrent else "torch"
    if kernel in _CUDA_ONLY and not is_cuda:
        raise ValueError(f"kernel={kernel!r} needs CUDA tensors, but the inputs are on {torch.device(device)}")
    b = _backend(kernel)
    if isinstance(b, Exception):
        raise ValueError(f"kernel={kernel!r} is not available here: {type(b).__name__}: {b}")
    return kernel


def _call(recurrent: bool, q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens,
          use_qk_l2norm_in_kernel, kernel):
    name = resolve_kernel(kernel, q.device, recurrent=recurrent)
    # Shapes are checked here for every backend (values of cu_seqlens only where it costs no GPU sync).
    check_inputs(q, k, v, g, beta, scale, initial_state, cu_seqlens, check_values=not q.is_cuda)
    b = _backend(name)
    fn = (b.recurrent or naive_recurrent_gated_delta_rule) if recurrent else b.chunk
    return fn(q, k, v, g, beta, scale=scale, initial_state=initial_state, output_final_state=output_final_state,
              cu_seqlens=cu_seqlens, use_qk_l2norm_in_kernel=use_qk_l2norm_in_kernel)


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
    kernel: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gated delta rule over whole sequences (training / prefill), by the chosen backend.

    Args:
        q, k: ``[B, T, Hq, K]``; v: ``[B, T, H, V]``; g (log decay), beta: ``[B, T, H]``.
        scale: query scale (default ``K ** -0.5``).
        initial_state: ``[N, H, K, V]``; output_final_state: also return the last state.
        cu_seqlens: ``[N + 1]`` document boundaries in one packed row (B = 1); the state resets at each.
        use_qk_l2norm_in_kernel: L2-normalise q and k over K first (eps 1e-6).
        kernel: "auto", "fla", "triton", "torch" or "naive" (see the module docstring).
    Returns:
        ``(o [B, T, H, V], final_state [N, H, K, V] or None)``.
    """
    return _call(False, q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens,
                 use_qk_l2norm_in_kernel, kernel)


def fused_recurrent_gated_delta_rule(
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
    kernel: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The same computation token by token (decoding, short T); same arguments as
    :func:`chunk_gated_delta_rule`. "torch" and "naive" both run the PyTorch recurrence; a backend
    without a recurrent kernel falls back to it too."""
    return _call(True, q, k, v, g, beta, scale, initial_state, output_final_state, cu_seqlens,
                 use_qk_l2norm_in_kernel, kernel)
