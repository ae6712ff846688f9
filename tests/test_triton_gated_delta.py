"""Our Triton gated delta rule (minicoder/ops/gated_delta/triton.py) against the naive recurrence, on CPU.

The kernels run in Triton's interpreter, which must be switched on (TRITON_INTERPRET=1) before triton
is first imported. pytest runs every test module in one process, so this module does not touch the
environment of the others: ``test_kernels_in_interpreter`` re-runs this very file in a fresh
``python -m pytest`` with TRITON_INTERPRET=1, and the kernel tests (marker `interpreter`) only run there
(conftest.py deselects them in the parent process, which checks that every one of them passed). The oracle is the naive recurrence in float64 with autograd; ours
runs in float32 and must match outputs, final states and every input gradient to a relative error
(||ours - ref|| / ||ref||) under 1e-4, over awkward lengths (T = 1, 63, 64, 65, 200), shared q/k heads
(Hq < H), K / V that are not powers of two (masked padding), packed documents (cu_seqlens, including
an empty one) and initial states.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

in_interpreter = pytest.mark.interpreter  # deselected here, run by test_kernels_in_interpreter
TOL = 1e-4


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    b = b.double()
    return ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()


def _inputs(B, T, Hq, H, K, V, N, h0: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(B, T, Hq, K, generator=gen)
    k = F.normalize(torch.randn(B, T, Hq, K, generator=gen), dim=-1)  # as in the model: unit keys
    v = torch.randn(B, T, H, V, generator=gen)
    g = F.logsigmoid(torch.randn(B, T, H, generator=gen) + 2.0)  # log decay in (-inf, 0)
    beta = torch.rand(B, T, H, generator=gen)
    s0 = torch.randn(N, H, K, V, generator=gen) if h0 else None
    return q, k, v, g, beta, s0


def _check_against_naive(B, T, Hq, H, K, V, cu=None, h0=True, l2norm=False, seed=0):
    from minicoder.ops.gated_delta.naive import naive_recurrent_gated_delta_rule
    from minicoder.ops.gated_delta.triton import chunk_gated_delta_rule

    cu_t = None if cu is None else torch.tensor(cu, dtype=torch.long)
    N = B if cu is None else len(cu) - 1
    xs = _inputs(B, T, Hq, H, K, V, N, h0, seed)
    names = ["q", "k", "v", "g", "beta", "initial_state"][: 5 + h0]
    ours = [x.clone().requires_grad_() for x in xs[: 5 + h0]]
    ref = [x.double().requires_grad_() for x in xs[: 5 + h0]]
    kw = dict(output_final_state=True, cu_seqlens=cu_t, use_qk_l2norm_in_kernel=l2norm)
    o, ht = chunk_gated_delta_rule(*ours[:5], initial_state=ours[5] if h0 else None, **kw)
    o_ref, ht_ref = naive_recurrent_gated_delta_rule(*ref[:5], initial_state=ref[5] if h0 else None, **kw)
    assert o.shape == (B, T, H, V) and o.dtype == torch.float32
    assert ht.shape == (N, H, K, V)
    gen = torch.Generator().manual_seed(seed + 1)
    do, dht = torch.randn(o.shape, generator=gen), torch.randn(ht.shape, generator=gen)
    ((o * do).sum() + (ht * dht).sum()).backward()
    ((o_ref * do.double()).sum() + (ht_ref * dht.double()).sum()).backward()
    errs = {"o": _rel(o, o_ref), "final_state": _rel(ht, ht_ref)}
    errs.update({f"d{n}": _rel(a.grad, b.grad) for n, a, b in zip(names, ours, ref)})
    bad = {n: e for n, e in errs.items() if not e < TOL}
    assert not bad, f"relative errors over {TOL}: {bad} (all: {errs})"


@in_interpreter
@pytest.mark.parametrize("T", [1, 63, 64, 65, 200])
@pytest.mark.parametrize("Hq,H", [(2, 2), (1, 2)], ids=["Hq=H", "Hq<H"])
def test_matches_naive(T, Hq, H):
    # Alternate the initial state with T so both settings meet both head layouts.
    _check_against_naive(B=2, T=T, Hq=Hq, H=H, K=16, V=32, h0=T % 2 == 1, seed=T)


@in_interpreter
@pytest.mark.parametrize(
    "cu,h0",
    [([0, 1, 64, 65, 129, 200], True), ([0, 63, 63, 200], False), ([0, 200], True)],
    ids=["ragged_docs", "empty_doc", "one_doc"],
)
def test_packed_documents_match_naive(cu, h0):
    _check_against_naive(B=1, T=200, Hq=1, H=2, K=16, V=16, cu=cu, h0=h0, seed=len(cu))


@in_interpreter
def test_padded_head_dims_and_l2norm_match_naive():
    # K=24, V=20 pad to 32 inside the kernels; q, k are normalised inside the op (and differentiated through).
    _check_against_naive(B=1, T=65, Hq=1, H=3, K=24, V=20, h0=True, l2norm=True, seed=7)


@in_interpreter
def test_dispatcher_runs_ours_on_cpu_in_interpreter():
    from minicoder.ops.gated_delta import chunk_gated_delta_rule
    from minicoder.ops.gated_delta.naive import naive_recurrent_gated_delta_rule

    q, k, v, g, beta, s0 = _inputs(1, 65, 1, 2, 16, 16, 1, True)
    o, ht = chunk_gated_delta_rule(q, k, v, g, beta, initial_state=s0, output_final_state=True, kernel="triton")
    o_ref, ht_ref = naive_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=s0, output_final_state=True)
    assert _rel(o, o_ref) < TOL and _rel(ht, ht_ref) < TOL


@in_interpreter
def test_without_final_state_and_with_bf16_inputs():
    from minicoder.ops.gated_delta.naive import naive_recurrent_gated_delta_rule
    from minicoder.ops.gated_delta.triton import chunk_gated_delta_rule

    xs = _inputs(1, 70, 1, 2, 16, 16, 1, False)[:5]
    ours = [x.clone().requires_grad_() for x in xs]
    ref = [x.double().requires_grad_() for x in xs]
    o, ht = chunk_gated_delta_rule(*ours)  # no final state: backward gets no state gradient
    assert ht is None
    o_ref, _ = naive_recurrent_gated_delta_rule(*ref)
    do = torch.randn(o.shape, generator=torch.Generator().manual_seed(5))
    (o * do).sum().backward()
    (o_ref * do.double()).sum().backward()
    assert all(_rel(a.grad, b.grad) < TOL for a, b in zip(ours, ref))
    # bf16 inputs (computed in float32 here: the interpreter has no meaningful bf16 dot) come back in bf16
    o16, ht16 = chunk_gated_delta_rule(*(x.bfloat16() for x in xs), output_final_state=True)
    assert o16.dtype == torch.bfloat16 and ht16.dtype == torch.float32 and _rel(o16, o_ref) < 2e-2


@in_interpreter
def test_bad_inputs_fail_with_a_clear_error():
    from minicoder.ops.gated_delta.triton import chunk_gated_delta_rule

    q, k, v, g, beta, _ = _inputs(1, 8, 2, 3, 16, 16, 1, False)
    with pytest.raises(ValueError, match="multiple of the number of query/key heads"):
        chunk_gated_delta_rule(q, k, v, g, beta)
    q, k, v, g, beta, _ = _inputs(1, 8, 1, 2, 16, 16, 1, False)
    with pytest.raises(ValueError, match="chunk_size must be 64"):
        chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=32)


@pytest.mark.no_interpreter  # CPU tensors without the interpreter (also on a machine with CUDA)
def test_cpu_without_interpreter_says_how_to_run():
    from minicoder.ops.gated_delta.triton import chunk_gated_delta_rule

    q, k, v, g, beta, _ = _inputs(1, 8, 1, 1, 16, 16, 1, False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        chunk_gated_delta_rule(q, k, v, g, beta)


@pytest.mark.slow
@pytest.mark.no_interpreter
def test_kernels_in_interpreter(run_interpreter_tests):
    """Re-run this file's `interpreter` tests with TRITON_INTERPRET=1 in a fresh interpreter: every one must pass."""
    run_interpreter_tests()
