"""The gated delta rule: chunked == recurrent, recurrent == transformers' Qwen3-Next reference, the
decode step == the recurrence, packed documents == separate runs, gradients, and the dispatcher.

Errors are relative, ||x - ref|| / ||ref||: float64 must agree to 1e-10 (the two algorithms are exact
rewrites of each other), float32 to 1e-5.
"""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import minicoder.ops.gated_delta as gd
from minicoder.ops.gated_delta import (
    chunk_gated_delta_rule,
    fused_recurrent_gated_delta_rule,
    gated_delta_rule_step,
    naive_recurrent_gated_delta_rule,
)
from minicoder.ops.gated_delta.chunk import chunk_gated_delta_rule as torch_chunk

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Every tensor here is tiny: one thread avoids OpenMP spin-up (and stalls on a busy CI machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def make(B=2, T=65, Hq=2, H=4, K=16, V=8, dtype=torch.float64, seed=0, decay_shift=2.0, requires_grad=False):
    """Random inputs in the model's ranges: unit keys, beta in (0, 1), g = logsigmoid(.) < 0."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)
    q = r(B, T, Hq, K)
    k = F.normalize(r(B, T, Hq, K), dim=-1)
    v = r(B, T, H, V)
    g = F.logsigmoid(r(B, T, H) + decay_shift)
    beta = torch.sigmoid(r(B, T, H))
    xs = [x.to(dtype).requires_grad_(requires_grad) for x in (q, k, v, g, beta)]
    return xs


def state(N, H=4, K=16, V=8, dtype=torch.float64, seed=1, requires_grad=False):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(N, H, K, V, generator=gen, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)


# --- chunked == recurrent ---------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("T", [1, 63, 64, 65, 500])
@pytest.mark.parametrize("with_h0", [False, True])
def test_chunk_equals_recurrence(T, dtype, with_h0):
    q, k, v, g, beta = make(T=T, dtype=dtype, seed=T)
    h0 = state(2, dtype=dtype) if with_h0 else None
    o_ref, s_ref = naive_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    o, s = torch_chunk(q, k, v, g, beta, initial_state=h0, output_final_state=True)
    assert o.shape == (2, T, 4, 8) and o.dtype == dtype and s.shape == (2, 4, 16, 8)
    assert rel(o, o_ref) < TOL[dtype]
    assert rel(s, s_ref) < TOL[dtype]
    # final state is None unless asked for
    assert torch_chunk(q, k, v, g, beta, initial_state=h0)[1] is None


def test_chunk_equals_recurrence_l2norm_custom_scale_and_other_chunk_sizes():
    q, k, v, g, beta = make(T=150, seed=3)
    q, k = 3 * q, 5 * k  # far from unit norm, so the in-kernel normalisation matters
    h0 = state(2)
    kw = dict(scale=0.37, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True)
    o_ref, s_ref = naive_recurrent_gated_delta_rule(q, k, v, g, beta, **kw)
    for C in (64, 16, 7):
        o, s = torch_chunk(q, k, v, g, beta, chunk_size=C, **kw)
        assert rel(o, o_ref) < 1e-10 and rel(s, s_ref) < 1e-10, C
    # the flag equals normalising first with transformers' formula x * rsqrt(sum x^2 + 1e-6)
    n = lambda x: x * torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-6)
    kw["use_qk_l2norm_in_kernel"] = False
    o2, s2 = naive_recurrent_gated_delta_rule(n(q), n(k), v, g, beta, **kw)
    assert rel(o2, o_ref) < 1e-12 and rel(s2, s_ref) < 1e-12


@pytest.mark.parametrize("C", [1, 2, 7, 16, 64])
def test_unit_lower_inverse(C):
    from minicoder.ops.gated_delta.chunk import unit_lower_inverse

    A = (0.3 * torch.randn(3, 2, C, C, dtype=torch.float64, generator=torch.Generator().manual_seed(C))).tril(-1)
    eye = torch.eye(C, dtype=torch.float64)
    T = unit_lower_inverse(A)
    assert T.shape == A.shape
    assert torch.allclose(T, torch.linalg.inv(eye + A), atol=1e-12)
    assert torch.equal(T.triu(1), torch.zeros_like(T))  # lower triangular with a unit diagonal
    assert torch.equal(T.diagonal(dim1=-2, dim2=-1), torch.ones(3, 2, C, dtype=torch.float64))


def test_strong_decay_has_no_nan():
    """g = -40 per token: exp of the unmasked upper triangle would be exp(+2500) = inf; inf * 0 = NaN."""
    q, k, v, g, beta = make(T=130, seed=4, requires_grad=True)
    g_strong = (g * 0 - 40.0).detach().requires_grad_(True)
    o_ref, _ = naive_recurrent_gated_delta_rule(q, k, v, g_strong, beta)
    o, _ = torch_chunk(q, k, v, g_strong, beta)
    assert torch.isfinite(o).all() and rel(o, o_ref) < 1e-10
    o.square().sum().backward()
    for x in (q, k, v, g_strong, beta):
        assert torch.isfinite(x.grad).all()


def test_low_precision_accumulates_in_float32():
    q, k, v, g, beta = make(T=100, dtype=torch.float32, seed=5)
    o32, s32 = torch_chunk(q, k, v, g, beta, output_final_state=True)
    o16, s16 = torch_chunk(*(x.bfloat16() for x in (q, k, v, g, beta)), output_final_state=True)
    assert o16.dtype == torch.bfloat16 and s16.dtype == torch.float32
    assert rel(o16, o32) < 2e-2 and rel(s16, s32) < 2e-2


# --- head sharing ------------------------------------------------------------------------------------

def test_value_head_h_uses_query_key_head_h_div_ratio():
    """Hq = 2, H = 6: value heads 0-2 use q/k head 0, heads 3-5 use q/k head 1 (repeat_interleave)."""
    q, k, v, g, beta = make(T=40, Hq=2, H=6, seed=6)
    o, s = naive_recurrent_gated_delta_rule(q, k, v, g, beta, output_final_state=True)
    for h in range(6):
        sl = slice(h, h + 1)
        o_h, s_h = naive_recurrent_gated_delta_rule(
            q[:, :, h // 3 : h // 3 + 1], k[:, :, h // 3 : h // 3 + 1], v[:, :, sl], g[:, :, sl], beta[:, :, sl],
            output_final_state=True,
        )
        assert torch.equal(o[:, :, sl], o_h) and torch.equal(s[:, sl], s_h)
    o_c, s_c = torch_chunk(q, k, v, g, beta, output_final_state=True)
    assert rel(o_c, o) < 1e-10 and rel(s_c, s) < 1e-10


# --- an independent oracle: transformers' Qwen3-Next PyTorch reference ---------------------------------

def _hf(name: str):
    mod = pytest.importorskip("transformers.models.qwen3_next.modeling_qwen3_next")
    # The decorator may swap in fla's kernel when fla is installed; unwrap to the PyTorch reference.
    return inspect.unwrap(getattr(mod, name))


@pytest.mark.slow  # imports transformers' Qwen3-Next modelling code
@pytest.mark.parametrize("l2", [False, True])
def test_recurrence_matches_transformers_reference(l2):
    hf_recurrent = _hf("torch_recurrent_gated_delta_rule")
    hf_chunk = _hf("torch_chunk_gated_delta_rule")
    q, k, v, g, beta = make(T=100, Hq=2, H=4, K=16, V=8, dtype=torch.float32, seed=7)
    h0 = state(2, dtype=torch.float32)
    # transformers: same [B, T, H, D] layout, fixed scale K**-0.5, returns the state [B, H, K, V]
    o_hf, s_hf = hf_recurrent(q, k, v, g, beta, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=l2)
    o, s = naive_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                            use_qk_l2norm_in_kernel=l2)
    assert rel(o, o_hf) < 1e-5 and rel(s, s_hf) < 1e-5
    o_hc, s_hc = hf_chunk(q, k, v, g, beta, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=l2)
    o_c, s_c = torch_chunk(q, k, v, g, beta, initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=l2)
    assert rel(o_c, o_hc) < 1e-5 and rel(s_c, s_hc) < 1e-5


# --- decoding step ------------------------------------------------------------------------------------

def test_step_equals_recurrence():
    q, k, v, g, beta = make(T=20, Hq=2, H=4, seed=8)
    q = 2 * q
    h0 = state(2)
    o_ref, s_ref = naive_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=h0, output_final_state=True,
                                                    use_qk_l2norm_in_kernel=True)
    S, outs = h0, []
    for t in range(20):
        o_t, S = gated_delta_rule_step(q[:, t], k[:, t], v[:, t], g[:, t], beta[:, t], S, use_qk_l2norm_in_kernel=True)
        assert o_t.shape == (2, 4, 8) and S.shape == (2, 4, 16, 8)
        outs.append(o_t)
    assert rel(torch.stack(outs, 1), o_ref) < 1e-12 and rel(S, s_ref) < 1e-12
    # from an empty state, one step is the rank-one write: S = beta k v^T, o = S^T (q / sqrt(K))
    o1, S1 = gated_delta_rule_step(q[:, 0], k[:, 0], v[:, 0], g[:, 0], beta[:, 0])
    kk = k[:, 0].repeat_interleave(2, 1)
    want = beta[:, 0, :, None, None] * kk[..., :, None] * v[:, 0, :, None, :]
    assert torch.allclose(S1, want, atol=1e-14)
    assert torch.allclose(o1, torch.einsum("bhkv,bhk->bhv", want, q[:, 0].repeat_interleave(2, 1) / 4), atol=1e-14)


def test_recurrent_entry_point_continues_from_a_prefill():
    """Prefill T tokens in chunks, then decode the rest token by token: same as one pass."""
    q, k, v, g, beta = make(T=90, seed=9)
    o_all, s_all = chunk_gated_delta_rule(q, k, v, g, beta, output_final_state=True)
    o_a, s = chunk_gated_delta_rule(*(x[:, :70] for x in (q, k, v, g, beta)), output_final_state=True)
    o_b, s = fused_recurrent_gated_delta_rule(*(x[:, 70:] for x in (q, k, v, g, beta)), initial_state=s,
                                              output_final_state=True)
    assert rel(torch.cat([o_a, o_b], 1), o_all) < 1e-10 and rel(s, s_all) < 1e-10


# --- packed documents (cu_seqlens) --------------------------------------------------------------------

@pytest.mark.parametrize("impl", [torch_chunk, naive_recurrent_gated_delta_rule], ids=["chunk", "naive"])
def test_packed_equals_separate_runs(impl):
    lens = [5, 70, 0, 128, 1, 96]  # an empty document, ones crossing chunk boundaries, an exact chunk multiple
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()])
    q, k, v, g, beta = make(B=1, T=sum(lens), seed=10)
    h0 = state(len(lens))
    o, s = impl(q, k, v, g, beta, initial_state=h0, output_final_state=True, cu_seqlens=cu,
                use_qk_l2norm_in_kernel=True)
    assert o.shape == v.shape and s.shape == (len(lens), 4, 16, 8)
    for n, (a, b) in enumerate(zip(cu[:-1].tolist(), cu[1:].tolist())):
        o_n, s_n = naive_recurrent_gated_delta_rule(*(x[:, a:b] for x in (q, k, v, g, beta)), initial_state=h0[n : n + 1],
                                                    output_final_state=True, use_qk_l2norm_in_kernel=True)
        if b > a:
            assert rel(o[:, a:b], o_n) < 1e-10, n
        assert rel(s[n : n + 1], s_n) < 1e-10, n
    assert torch.equal(s[2], h0[2])  # the empty document keeps its initial state
    # equal lengths take the un-padded fast path; still equal to the batched run
    q2, k2, v2, g2, b2 = make(B=3, T=64, seed=11)
    o_b, s_b = impl(q2, k2, v2, g2, b2, output_final_state=True)
    o_p, s_p = impl(*(x.reshape(1, 192, *x.shape[2:]) for x in (q2, k2, v2, g2, b2)), output_final_state=True,
                    cu_seqlens=torch.tensor([0, 64, 128, 192]))
    assert rel(o_p.reshape(o_b.shape), o_b) < 1e-12 and rel(s_p, s_b) < 1e-12


# --- gradients ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("packed", [False, True])
def test_gradients_match_recurrence(packed):
    B, T = (1, 150) if packed else (2, 70)
    cu = torch.tensor([0, 40, 150]) if packed else None
    grads = []
    for impl in (naive_recurrent_gated_delta_rule, torch_chunk):
        xs = make(B=B, T=T, seed=12, requires_grad=True)
        h0 = state(2, requires_grad=True)
        o, s = impl(*xs, initial_state=h0, output_final_state=True, cu_seqlens=cu, use_qk_l2norm_in_kernel=True)
        gen = torch.Generator().manual_seed(13)
        loss = (o * torch.randn(o.shape, generator=gen, dtype=o.dtype)).sum() + (s * torch.randn(s.shape, generator=gen, dtype=s.dtype)).sum()
        loss.backward()
        grads.append([x.grad for x in (*xs, h0)])
    for name, a, b in zip(("q", "k", "v", "g", "beta", "initial_state"), *grads):
        assert a is not None and b is not None and a.abs().sum() > 0, name
        assert rel(b, a) < 1e-10, name


@pytest.mark.slow
def test_gradcheck_chunk_small():
    xs = make(B=1, T=9, Hq=1, H=2, K=3, V=2, seed=14, requires_grad=True)
    h0 = state(1, H=2, K=3, V=2, requires_grad=True)
    f = lambda q, k, v, g, b, h: torch_chunk(q, k, v, g, b, initial_state=h, output_final_state=True, chunk_size=4)
    assert torch.autograd.gradcheck(f, (*xs, h0))


# --- dispatcher ---------------------------------------------------------------------------------------

def test_dispatcher_backends_agree_and_auto_is_torch_on_cpu():
    assert gd.resolve_kernel("auto", "cpu") == "torch"
    assert gd.resolve_kernel("auto", "cpu", recurrent=True) == "naive"
    assert "torch" in gd.available_kernels("cpu") and "fla" not in gd.available_kernels("cpu")
    q, k, v, g, beta = make(T=80, seed=15)
    ref = naive_recurrent_gated_delta_rule(q, k, v, g, beta, output_final_state=True)
    for fn in (chunk_gated_delta_rule, fused_recurrent_gated_delta_rule):
        for kernel in ("auto", "torch", "naive"):
            o, s = fn(q, k, v, g, beta, output_final_state=True, kernel=kernel)
            assert rel(o, ref[0]) < 1e-10 and rel(s, ref[1]) < 1e-10, (fn.__name__, kernel)


def test_dispatcher_errors():
    q, k, v, g, beta = make(T=10)
    with pytest.raises(ValueError, match="kernel must be one of"):
        chunk_gated_delta_rule(q, k, v, g, beta, kernel="cuda")
    with pytest.raises(ValueError, match="needs CUDA"):
        chunk_gated_delta_rule(q, k, v, g, beta, kernel="fla")
    bad = {
        "k must have q's shape": dict(k=k[:, :5]),
        r"v must be \[B, T, H, V\]": dict(v=v[:, :5]),
        "multiple of the number of query/key heads": dict(v=v[:, :, :3], g=g[:, :, :3], beta=beta[:, :, :3]),
        r"g must be \[B, T, H\]": dict(g=g[..., None]),
        r"beta must be \[B, T, H\]": dict(beta=beta[:, :, :2]),
        r"initial_state must be \[N, H, K, V\]": dict(initial_state=state(3)),
        "B=1": dict(cu_seqlens=torch.tensor([0, 10])),
        "scale must be a positive": dict(scale=-1.0),
    }
    base = dict(q=q, k=k, v=v, g=g, beta=beta)
    for msg, change in bad.items():
        for kernel in ("torch", "naive"):
            with pytest.raises(ValueError, match=msg):
                chunk_gated_delta_rule(**{**base, **change}, kernel=kernel)
    one = dict(q=q[:1], k=k[:1], v=v[:1], g=g[:1], beta=beta[:1])
    with pytest.raises(ValueError, match="end at T=10"):
        chunk_gated_delta_rule(**one, cu_seqlens=torch.tensor([0, 4, 9]))
    with pytest.raises(ValueError, match="never decrease"):
        torch_chunk(**one, cu_seqlens=torch.tensor([0, 6, 4, 10]))
    with pytest.raises(ValueError, match="step: q must be 3-D"):
        gated_delta_rule_step(q, k[:, 0], v[:, 0], g[:, 0], beta[:, 0])


def test_register_backend_is_an_extension_point():
    calls = []

    def mine(*args, **kw):
        calls.append(kw)
        return naive_recurrent_gated_delta_rule(*args, **kw)

    gd.register_backend("mine", lambda: gd.Backend(chunk=mine))
    try:
        from minicoder.config import ModelConfig

        assert ModelConfig.from_preset("toy", kernel="mine").kernel == "mine"  # the one list of names
        q, k, v, g, beta = make(T=12)
        o, _ = chunk_gated_delta_rule(q, k, v, g, beta, kernel="mine", use_qk_l2norm_in_kernel=True)
        assert calls and calls[0]["use_qk_l2norm_in_kernel"] is True
        assert rel(o, naive_recurrent_gated_delta_rule(q, k, v, g, beta, use_qk_l2norm_in_kernel=True)[0]) == 0
    finally:
        gd._LOADERS.pop("mine")
        gd._LOADED.pop("mine", None)
        gd.KERNELS.remove("mine")
    broken = "minicoder_no_such_module_for_test"
    gd.register_backend("broken", gd._load_module(broken))
    try:
        with pytest.raises(ValueError, match="kernel='broken' is not available here: ModuleNotFoundError"):
            chunk_gated_delta_rule(*make(T=3), kernel="broken")
    finally:
        gd._LOADERS.pop("broken")
        gd._LOADED.pop("broken", None)
        gd.KERNELS.remove("broken")


@pytest.mark.slow  # a fresh interpreter
def test_cpu_path_never_imports_fla():
    code = (
        "import sys, torch; import minicoder.ops.gated_delta as gd\n"
        "x = torch.randn(1, 5, 1, 4); g = -torch.rand(1, 5, 1); b = torch.rand(1, 5, 1)\n"
        "gd.chunk_gated_delta_rule(x, x, x, g, b); gd.fused_recurrent_gated_delta_rule(x, x, x, g, b)\n"
        "gd.available_kernels('cpu')\n"
        "assert not any(m == 'fla' or m.startswith('fla.') for m in sys.modules), 'fla was imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


# --- GPU: fla and our Triton kernel against the PyTorch path (skipped without CUDA) ------------------

@pytest.mark.gpu
@pytest.mark.parametrize("kernel", ["fla", "triton", "torch", "auto"])
def test_gpu_backends_match_the_float64_recurrence(kernel):
    """Every CUDA backend (the PyTorch chunk path included) against the naive recurrence in float64 on
    the CPU: an independent oracle, not the torch path compared with itself."""
    if kernel not in gd.available_kernels("cuda") and kernel != "auto":
        pytest.skip(f"{kernel} is not available")
    xs = make(B=1, T=300, Hq=2, H=4, K=64, V=64, seed=16)
    cu = torch.tensor([0, 100, 300])
    h0 = state(2, K=64, V=64)
    kw = dict(initial_state=h0, output_final_state=True, cu_seqlens=cu, use_qk_l2norm_in_kernel=True)
    o_ref, s_ref = naive_recurrent_gated_delta_rule(*xs, **kw)  # float64, CPU
    gpu = [x.float().cuda() for x in xs]
    kw_gpu = dict(kw, initial_state=h0.float().cuda(), cu_seqlens=cu.cuda())
    for fn in (chunk_gated_delta_rule, fused_recurrent_gated_delta_rule):
        o, s = fn(*gpu, kernel=kernel, **kw_gpu)
        assert rel(o.cpu(), o_ref) < 1e-3 and rel(s.cpu(), s_ref) < 1e-3, (fn.__name__, kernel)
