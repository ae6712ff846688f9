"""MoE expert kernels against the per-expert loop (minicoder/ops/moe/naive.py).

The sorted-dispatch PyTorch path runs in this process. The Triton grouped GEMM runs in Triton's
interpreter, which needs TRITON_INTERPRET=1 before triton is first imported: as in
test_triton_gated_delta.py, ``test_triton_in_interpreter`` re-runs this file in a fresh
``python -m pytest`` with the variable set, and the Triton tests (marker `interpreter`) only run
there; every one must pass. Every check compares the output and the gradients of x, both weight
tensors and the routing weights, with experts that get no tokens among them (their weight gradients
must be exactly zero).
"""

from __future__ import annotations

import pytest
import torch

from minicoder.ops.moe import moe_experts
from minicoder.ops.moe.naive import moe_experts_naive
from minicoder.ops.moe.sorted import grouped_mm_supported, moe_experts_sorted, sort_by_expert

in_interpreter = pytest.mark.interpreter  # deselected here, run by test_triton_in_interpreter


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _problem(N, H, I, E, k, idle=(), seed=0):
    """Random routing over the experts not in ``idle`` (distinct experts per token), softmax weights."""
    gen = torch.Generator().manual_seed(seed)
    used = torch.tensor([e for e in range(E) if e not in idle])
    ids = torch.stack([used[torch.randperm(len(used), generator=gen)[:k]] for _ in range(N)]) if N else torch.zeros(0, k, dtype=torch.long)
    w = torch.softmax(torch.randn(N, k, generator=gen), -1)
    x = torch.randn(N, H, generator=gen)
    gu = torch.randn(E, 2 * I, H, generator=gen) / H**0.5
    d = torch.randn(E, H, I, generator=gen) / I**0.5
    return x, ids, w, gu, d


def _compare(fn, N, H, I, E, k, idle=(), seed=0, tol=1e-5):
    x, ids, w, gu, d = _problem(N, H, I, E, k, idle, seed)
    results = []
    for f in (fn, moe_experts_naive):
        leaves = [t.clone().requires_grad_() for t in (x, w, gu, d)]
        y = f(leaves[0], ids, leaves[1], leaves[2], leaves[3])
        dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1))
        (y * dy).sum().backward()
        results.append([y.detach(), *(t.grad for t in leaves)])
    names = ["y", "dx", "dtopk_weights", "dgate_up_proj", "ddown_proj"]
    errs = {n: _rel(a, b) for n, a, b in zip(names, *results)}
    assert all(e < tol for e in errs.values()), errs
    for e in idle:  # experts that got no tokens: exact zero gradients, still present
        assert results[0][3][e].abs().max() == 0 and results[0][4][e].abs().max() == 0
    return results


# --- sorted dispatch (PyTorch) --------------------------------------------------------------------


@pytest.mark.parametrize("grouped", [False, True], ids=["segment_loop", "grouped_mm"])
@pytest.mark.parametrize("N,H,I,E,k,idle", [(37, 24, 12, 8, 3, (0, 5)), (1, 16, 8, 4, 1, (1, 2, 3)), (50, 8, 4, 16, 2, (7,))])
def test_sorted_matches_loop(grouped, N, H, I, E, k, idle):
    if grouped and not hasattr(torch, "_grouped_mm"):
        pytest.skip("this torch has no _grouped_mm")
    _compare(lambda *a: moe_experts_sorted(*a, use_grouped_mm=grouped), N, H, I, E, k, idle)


def test_sort_by_expert_layout():
    ids = torch.tensor([[3, 0], [3, 1], [0, 3], [3, 2]])
    lay = sort_by_expert(ids, n_experts=5, block=4)
    flat = ids.flatten()
    assert flat[lay["order"]].tolist() == sorted(flat.tolist())
    assert lay["counts"].tolist() == [2, 1, 1, 4, 0]
    # segments padded to 4 rows: e0 [0, 4), e1 [4, 8), e2 [8, 12), e3 [12, 16), e4 empty
    assert lay["padded_offsets"].tolist() == [0, 4, 8, 12, 16, 16] and lay["P"] == 16
    assert lay["block_expert"].tolist() == [0, 1, 2, 3]
    pid = lay["padded_ids"]
    for e in range(5):
        seg = pid[lay["padded_offsets"][e] : lay["padded_offsets"][e + 1]]
        real = seg[seg >= 0]
        assert (flat[real.long()] == e).all() and len(real) == lay["counts"][e]
    assert sorted(pid[pid >= 0].tolist()) == list(range(8))


def test_dispatcher_choices_on_cpu():
    x, ids, w, gu, d = _problem(20, 16, 8, 6, 2, idle=(4,))
    ref = moe_experts_naive(x, ids, w, gu, d)
    for kernel in ("auto", "torch", "naive", "fla"):
        assert _rel(moe_experts(x, ids, w, gu, d, kernel=kernel), ref) < 1e-6, kernel
    with pytest.raises(ValueError, match="kernel must be one of"):
        moe_experts(x, ids, w, gu, d, kernel="cuda-magic")


def test_bad_expert_ids_are_named():
    x, ids, w, gu, d = _problem(4, 8, 4, 3, 2)
    with pytest.raises(ValueError, match=r"topk_ids must lie in \[0, E=3\)"):
        moe_experts_sorted(x, ids + 2, w, gu, d)
    with pytest.raises(ValueError, match="integer"):
        moe_experts_sorted(x, ids.float(), w, gu, d)


def test_grouped_mm_support_is_reported_for_cpu_float32():
    assert grouped_mm_supported(torch.zeros(1)) == hasattr(torch, "_grouped_mm")


@pytest.mark.no_interpreter  # CPU tensors without the interpreter (also on a machine with CUDA)
def test_triton_on_cpu_without_interpreter_says_how_to_run():
    x, ids, w, gu, d = _problem(4, 16, 8, 3, 2)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        moe_experts(x, ids, w, gu, d, kernel="triton")


# --- the Triton grouped GEMM, in the interpreter --------------------------------------------------


@in_interpreter
@pytest.mark.parametrize(
    "N,H,I,E,k,idle",
    [(37, 48, 24, 6, 3, (5,)), (70, 32, 16, 4, 1, (0, 2)), (5, 20, 12, 9, 2, (1, 3, 4, 6, 8)), (1, 16, 16, 2, 2, ())],
    ids=["k3_idle", "k1_tiles", "odd_dims_many_idle", "one_token"],
)
def test_triton_matches_loop(N, H, I, E, k, idle):
    from minicoder.ops.moe.triton import moe_experts_triton

    _compare(moe_experts_triton, N, H, I, E, k, idle, tol=1e-5)


@in_interpreter
def test_triton_through_dispatcher():
    x, ids, w, gu, d = _problem(19, 16, 16, 5, 2, idle=(2,))
    assert _rel(moe_experts(x, ids, w, gu, d, kernel="triton"), moe_experts_naive(x, ids, w, gu, d)) < 1e-5


@pytest.mark.slow
@pytest.mark.no_interpreter
def test_triton_in_interpreter(run_interpreter_tests):
    """Re-run this file's `interpreter` tests with TRITON_INTERPRET=1 in a fresh interpreter: every one must pass."""
    run_interpreter_tests()
