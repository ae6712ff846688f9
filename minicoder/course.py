"""Classroom labs: checkers that compare a student's function with the library's, with a specific hint.

    from minicoder.course import check
    check("02.delta_rule_step", my_step)     # prints "passed 7 cases" or what is wrong, and where

Each exercise sits at the key step of a notebook; its checker runs the student's function and the
library's on random and edge-case inputs and reports the first case that fails with the most specific
hint it can: a shape or dtype mismatch, the first mismatching element (index, got, expected), or a
known mistake recognised by its output (e.g. a missing decay, an unnormalised top-k). `check`
returns a `CheckResult` (truthy when passed) and prints its message.

`minicoder lab` / `make lab` writes student copies of the notebooks to ``labs/``: in every code
cell, the lines between ``# BEGIN SOLUTION`` and ``# END SOLUTION`` become ``raise
NotImplementedError("exercise ...")`` (the checker call after them stays).
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


class Mismatch(AssertionError):
    """A case where the student's answer differs from the library's; the message is the hint."""


@dataclass
class CheckResult:
    name: str
    passed: bool
    message: str
    cases: int = 0

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'} {self.name}: {self.message}"


@dataclass
class Exercise:
    name: str  # "NN.slug"
    title: str
    signature: str  # what the student writes
    checker: Callable[[Callable], Iterator[str]]  # yields one case label per case passed; raises Mismatch


EXERCISES: dict[str, Exercise] = {}


def exercise(name: str, title: str, signature: str):
    def deco(fn):
        EXERCISES[name] = Exercise(name, title, signature, fn)
        return fn
    return deco


# --- comparing answers ------------------------------------------------------------------------------

def _np(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        return x.detach().cpu().double().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def compare_arrays(what: str, got: Any, want: Any, case: str, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """Raise Mismatch naming the case, the shape difference or the first mismatching element."""
    if got is None:
        raise Mismatch(f"{case}: {what} is None (did you forget to return it?)")
    g, w = _np(got), _np(want)
    if g.shape != w.shape:
        hint = ""
        if sorted(g.shape) == sorted(w.shape):
            hint = " (same sizes in another order: a transpose or a wrong einsum index?)"
        raise Mismatch(f"{case}: {what} has shape {tuple(g.shape)}, expected {tuple(w.shape)}{hint}")
    if g.dtype.kind == "f" or w.dtype.kind == "f":
        bad = ~np.isclose(g.astype(np.float64), w.astype(np.float64), rtol=rtol, atol=atol, equal_nan=False)
    else:
        bad = g != w
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        n = int(bad.sum())
        extra = " (got NaN/inf: an overflow?)" if not np.isfinite(g[idx]) else ""
        raise Mismatch(f"{case}: {what} differs at {n} of {bad.size} elements; first at index {list(idx)}: "
                       f"got {g[idx]!r}, expected {w[idx]!r}{extra}")


def check(name: str, fn: Callable, verbose: bool = True) -> CheckResult:
    """Run exercise `name`'s checker on the student's `fn`; print and return the result."""
    if name not in EXERCISES:
        raise KeyError(f"no exercise {name!r}; exercises: {', '.join(sorted(EXERCISES))}")
    ex = EXERCISES[name]
    n = 0
    try:
        for _ in ex.checker(fn):
            n += 1
        res = CheckResult(name, True, f"passed {n} cases (random and edge cases) against the library", n)
    except Mismatch as e:
        res = CheckResult(name, False, str(e), n)
    except NotImplementedError:
        res = CheckResult(name, False, f"not implemented yet: write `{ex.signature}`", n)
    except ImportError as e:
        res = CheckResult(name, False, f"this checker needs a part of minicoder that is not installed: {e}", n)
    except Exception as e:  # the student's code crashed: say where and on what
        res = CheckResult(name, False, f"your function raised {type(e).__name__}: {e} (after {n} passing cases)", n)
    if verbose:
        print(("✓ " if res.passed else "✗ ") + f"{name}: {res.message}")
    return res


def _call(fn: Callable, case: str, *args: Any, **kw: Any) -> Any:
    try:
        return fn(*args, **kw)
    except (NotImplementedError, Mismatch):
        raise
    except Exception as e:
        raise Mismatch(f"{case}: your function raised {type(e).__name__}: {e}") from e


# --- 01 · the best-fit search ---------------------------------------------------------------------

@exercise("01.best_fit_pack", "Best-Fit Decreasing packing",
          "best_fit_pack(lengths: list[int], seq_len: int) -> list[list[tuple[int, int, int]]]")
def _check_best_fit(fn):
    from minicoder.data.packing import best_fit_pack_reference

    rng = np.random.default_rng(0)
    cases = [("one document that fits", [5], 8), ("a document longer than a row", [20], 8),
             ("exact fits", [4, 4, 4, 4], 8), ("lengths 1", [1] * 9, 4),
             ("best fit is not first fit", [5, 1, 10, 4, 6], 12), ("best fit is not first fit #2", [9, 1, 5, 9, 6], 12)]
    cases += [(f"random #{i}", rng.integers(1, 60, size=int(rng.integers(5, 40))).tolist(), 32) for i in range(6)]
    for label, lengths, L in cases:
        case = f"case '{label}' (lengths={lengths}, seq_len={L})"
        bins = _call(fn, case, list(lengths), L)
        seen = [np.zeros(n, dtype=int) for n in lengths]
        for b, pieces in enumerate(bins):
            used = sum(e - s for _, s, e in pieces)
            if used > L:
                raise Mismatch(f"{case}: bin {b} holds {used} tokens > seq_len {L}: {pieces}")
            for d, s, e in pieces:
                if not (0 <= d < len(lengths) and 0 <= s < e <= lengths[d]):
                    raise Mismatch(f"{case}: bin {b} has a bad piece {(d, s, e)} (doc {d} has {lengths[d]} tokens)")
                seen[d][s:e] += 1
        for d, cover in enumerate(seen):
            if (cover != 1).any():
                t = int(np.argmax(cover != 1))
                raise Mismatch(f"{case}: token {t} of document {d} is placed {int(cover[t])} times (must be once)")
        ref = best_fit_pack_reference(lengths, L)
        # ties between equally full bins do not change the bins' loads, so the sorted loads must match
        loads = sorted(sum(e - s for _, s, e in b) for b in bins)
        ref_loads = sorted(sum(e - s for _, s, e in b) for b in ref)
        if loads != ref_loads:
            raise Mismatch(f"{case}: your bins hold {loads} tokens, Best-Fit Decreasing gives {ref_loads} "
                           f"({len(ref)} bins): sort pieces longest first and put each in the bin with the LEAST "
                           "room that still fits it")
        yield label


# --- 02 · the delta-rule step -----------------------------------------------------------------------

@exercise("02.delta_rule_step", "one step of the gated delta rule",
          "delta_rule_step(S[B,H,K,V], q[B,H,K], k[B,H,K], v[B,H,V], g[B,H], beta[B,H]) -> (o[B,H,V], S_new)")
def _check_delta_step(fn):
    import torch

    from minicoder.ops.gated_delta.naive import gated_delta_rule_step

    gen = torch.Generator().manual_seed(0)

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    cases = []
    for label, B, H, K, V in (("B=2 H=3 K=4 V=5", 2, 3, 4, 5), ("B=1 H=1 K=3 V=7", 1, 1, 3, 7),
                              ("B=3 H=2 K=8 V=8", 3, 2, 8, 8)):
        k = torch.nn.functional.normalize(rnd(B, H, K), dim=-1)
        cases.append((label, rnd(B, H, K, V), rnd(B, H, K), k, rnd(B, H, V), -rnd(B, H).abs(),
                      torch.rand(B, H, generator=gen, dtype=torch.float64)))
    S, q, k, v, g, beta = cases[0][1:]
    cases.append(("zero state", torch.zeros_like(S), q, k, v, g, beta))
    cases.append(("g = 0 (no decay)", S, q, k, v, torch.zeros_like(g), beta))
    cases.append(("beta = 0 (no write)", S, q, k, v, g, torch.zeros_like(beta)))
    cases.append(("g = -30 (forget everything)", S, q, k, v, torch.full_like(g, -30.0), torch.ones_like(beta)))
    for label, S, q, k, v, g, beta in cases:
        case = f"case '{label}'"
        o_ref, S_ref = gated_delta_rule_step(q, k, v, g, beta, state=S, scale=1.0)
        out = _call(fn, case, S.clone(), q.clone(), k.clone(), v.clone(), g.clone(), beta.clone())
        if not isinstance(out, tuple) or len(out) != 2:
            raise Mismatch(f"{case}: return a tuple (o, S_new), got {type(out).__name__}")
        o, S_new = out
        if S_new is not None and hasattr(S_new, "shape") and tuple(S_new.shape) == tuple(S_ref.shape):
            no_decay, _ = gated_delta_rule_step(q, k, v, torch.zeros_like(g), beta, state=S, scale=1.0)
            if not torch.allclose(no_decay, o_ref, atol=1e-4) and torch.allclose(o, no_decay.to(o.dtype), atol=1e-6):
                raise Mismatch(f"{case}: your output equals the one without decay: multiply S by exp(g) first")
        compare_arrays("S_new", S_new, S_ref, case)
        compare_arrays("o", o, o_ref, case + " (o is read from the UPDATED state: o = S_new^T q)")
        yield label


# --- 03 · the output gate -----------------------------------------------------------------------------

@exercise("03.output_gate", "the per-head output gate of gated attention",
          "output_gate(qg[B,T,H*2*D], attn[B,T,H*D], num_heads) -> gated[B,T,H*D]  (before o_proj)")
def _check_output_gate(fn):
    import torch

    from minicoder.config import ModelConfig
    from minicoder.model.attention import GatedAttention
    from minicoder.model.rope import rope_cos_sin

    for label, heads, kv, d, t in (("4 heads of 8", 4, 2, 8, 5), ("1 head of 16", 1, 1, 16, 3),
                                   ("8 heads of 4", 8, 4, 4, 6)):
        cfg = ModelConfig.from_preset("toy", hidden_size=32, num_attention_heads=heads, num_key_value_heads=kv,
                                      head_dim=d, partial_rotary_factor=0.5)
        torch.manual_seed(0)
        attn = GatedAttention(cfg).double()
        x = torch.randn(2, t, 32, dtype=torch.float64)
        pos = torch.arange(t)[None].expand(2, t)
        cos, sin = rope_cos_sin(pos, cfg.rotary_dim, cfg.rope_theta, torch.float64)
        seen: dict[str, torch.Tensor] = {}
        h1 = attn.q_proj.register_forward_hook(lambda m, i, o, seen=seen: seen.__setitem__("qg", o.detach()))
        h2 = attn.o_proj.register_forward_pre_hook(lambda m, i, seen=seen: seen.__setitem__("gated", i[0].detach()))
        with torch.no_grad():
            attn(x, cos, sin)
            # the same layer with its gate rows zeroed: sigmoid(0) = 1/2, so 2 * o_proj's input = attention
            w = attn.q_proj.weight.view(heads, 2 * d, -1)
            qg, gated = seen["qg"], seen["gated"]
            w[:, d:] = 0
            attn(x, cos, sin)
            plain = 2 * seen["gated"]
        h1.remove()
        h2.remove()
        case = f"case '{label}'"
        got = _call(fn, case, qg.clone(), plain.clone(), heads)
        if hasattr(got, "shape") and tuple(got.shape) == tuple(gated.shape):
            q_all, g_all = qg.chunk(2, dim=-1)  # the classic mistake: halves of the whole projection
            if torch.allclose(got, plain * torch.sigmoid(g_all), atol=1e-8) and heads > 1:
                raise Mismatch(f"{case}: you split the whole projection in two halves; the layout is per head: "
                               "view qg as [B, T, H, 2*D] and split the LAST dim ([query | gate] of each head)")
        compare_arrays("gated output", got, gated, case)
        yield label


# --- 04 · top-k routing ---------------------------------------------------------------------------------

@exercise("04.topk_routing", "top-k routing of a mixture of experts",
          "route(logits[N,E], k, norm_topk_prob) -> (ids[N,k], weights[N,k])")
def _check_topk(fn):
    import torch

    from minicoder.config import ModelConfig
    from minicoder.model.moe import SparseMoE

    gen = torch.Generator().manual_seed(0)
    cases = [("E=8 k=2 normalised", 8, 2, True, 1.0), ("E=16 k=4 raw probabilities", 16, 4, False, 1.0),
             ("k=1", 8, 1, True, 1.0), ("k=E", 4, 4, True, 1.0), ("large logits (~1000)", 8, 2, True, 1000.0)]
    for label, E, k, norm, scale in cases:
        cfg = ModelConfig.from_preset("toy", hidden_size=E, num_experts=E, num_experts_per_tok=k, norm_topk_prob=norm)
        moe = SparseMoE(cfg).double()
        with torch.no_grad():
            moe.gate.weight.copy_(torch.eye(E, dtype=torch.float64))  # logits = x: the library routes our logits
        logits = torch.randn(6, E, generator=gen, dtype=torch.float64) * 2 + (scale if scale > 1 else 0.0)
        _, _, ids_ref, w_ref = moe.route(logits)
        case = f"case '{label}'"
        out = _call(fn, case, logits.clone(), k, norm)
        if not isinstance(out, tuple) or len(out) != 2:
            raise Mismatch(f"{case}: return (ids, weights), got {type(out).__name__}")
        ids, w = out
        if not torch.isfinite(torch.as_tensor(w, dtype=torch.float64)).all():
            raise Mismatch(f"{case}: your weights contain NaN/inf: subtract the max logit before exp "
                           "(a naive softmax overflows)")
        compare_arrays("ids (sorted per token)", torch.sort(torch.as_tensor(ids), -1).values,
                       torch.sort(ids_ref, -1).values, case + ": pick the k experts with the largest probabilities")
        order = torch.argsort(torch.as_tensor(ids), -1)
        w_sorted = torch.gather(torch.as_tensor(w, dtype=torch.float64), -1, order)
        w_ref_sorted = torch.gather(w_ref, -1, torch.argsort(ids_ref, -1))
        if norm and not torch.isnan(w_sorted).any():
            sums = w_sorted.sum(-1)
            if not torch.allclose(sums, torch.ones_like(sums), atol=1e-6):
                raise Mismatch(f"{case}: with norm_topk_prob the k weights of a token must sum to 1 "
                               f"(yours sum to {sums[0].item():.4f}): divide by their sum")
        if not norm and torch.allclose(w_sorted.sum(-1), torch.ones(6, dtype=torch.float64)) and k < E:
            raise Mismatch(f"{case}: with norm_topk_prob=False keep the softmax probabilities as they are")
        compare_arrays("weights (in expert order)", w_sorted, w_ref_sorted,
                       case + (": subtract the max logit before exp (softmax overflows)" if scale > 1 else
                               ": weights are softmax over ALL experts, then top-k"))
        yield label


# --- 05 · the hybrid layout ---------------------------------------------------------------------------

@exercise("05.layer_layout", "the hybrid layer layout (3 Gated DeltaNet : 1 gated attention)",
          "layer_types(num_layers: int, interval: int) -> list[str]")
def _check_layout(fn):
    from minicoder.config import default_layer_types

    for n, every in ((4, 4), (48, 4), (12, 3), (5, 4), (3, 4), (8, 1), (1, 2)):
        case = f"case num_layers={n}, interval={every}"
        got = _call(fn, case, n, every)
        want = default_layer_types(n, every)
        if isinstance(got, list) and len(got) == n and got != want:
            shifted = ["full_attention" if i % every == 0 else "linear_attention" for i in range(n)]
            if got == shifted:
                raise Mismatch(f"{case}: your attention layers come first in each group; the pattern ends each "
                               "group with attention: layer i is full attention when (i + 1) % interval == 0")
        if got != want:
            first = next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            raise Mismatch(f"{case}: got {len(got)} layers, first difference at layer {first}: "
                           f"{got[first] if first < len(got) else None!r} vs expected {want[first] if first < len(want) else None!r}")
        yield case


# --- 06 · a Triton tile loop ------------------------------------------------------------------------------

@exercise("06.row_sums_tiled", "a tile loop: row sums over column blocks (with a masked tail)",
          "row_sums(x[M,N] float32 tensor, BLOCK: int) -> [M]  (a Triton kernel looping over column tiles)")
def _check_tile_loop(fn):
    import torch

    gen = torch.Generator().manual_seed(0)
    # a compiled Triton kernel needs GPU tensors; in the interpreter (no GPU) CPU tensors
    device = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
    for label, M, N, block in (("N a multiple of BLOCK", 3, 64, 16), ("a partial last tile", 4, 37, 16),
                               ("N < BLOCK", 2, 5, 16), ("one row", 1, 100, 32)):
        x = torch.randn(M, N, generator=gen, dtype=torch.float32).to(device)
        case = f"case '{label}' (M={M}, N={N}, BLOCK={block})"
        got = _call(fn, case, x.clone(), block)
        want = x.double().sum(1)
        full = (N // block) * block
        if (hasattr(got, "shape") and tuple(got.shape) == (M,) and full < N
                and torch.allclose(torch.as_tensor(got).double(), x[:, :full].double().sum(1), atol=1e-4)):
            raise Mismatch(f"{case}: the last partial tile is missing: loop over cdiv(N, BLOCK) tiles and "
                           "load with mask=offs < N, other=0.0")
        compare_arrays("row sums", got, want, case, rtol=1e-4, atol=1e-4)
        yield label


# --- 07 · the packed-batch loss mask -----------------------------------------------------------------------

@exercise("07.loss_labels", "pre-shifted labels of a packed row (the loss mask)",
          "labels(input_ids[L], doc_ids[L]) -> labels[L]  (-100 where there is no target)")
def _check_loss_labels(fn):
    from minicoder.data.packing import pack, packed_batch

    rng = np.random.default_rng(0)
    for label, lengths, L in (("three documents", [5, 3, 7], 16), ("a split document", [20, 4], 12),
                              ("one-token documents", [1, 1, 1, 2], 8), ("random", rng.integers(1, 30, 12).tolist(), 24)):
        docs = [rng.integers(1, 100, size=n).tolist() for n in lengths]
        b = packed_batch(pack(lengths, L, method="bfd"), docs, pad_id=0)
        for r in range(b.input_ids.shape[0]):
            case = f"case '{label}', row {r} (doc_ids={b.doc_ids[r].tolist()})"
            got = _call(fn, case, b.input_ids[r].copy(), b.doc_ids[r].copy())
            want = b.labels[r]
            g = np.asarray(got)
            if g.shape == want.shape and (g[b.doc_ids[r] < 0] != -100).any():
                raise Mismatch(f"{case}: padding (doc_id -1) must have label -100")
            if g.shape == want.shape and np.array_equal(g[:-1], b.input_ids[r][1:]) and not np.array_equal(g, want):
                raise Mismatch(f"{case}: you shifted the ids but trained across document boundaries: the last "
                               "token of each piece has no target (-100)")
            compare_arrays("labels", got, want, case)
        yield label


# --- 08 · a mutation operator ---------------------------------------------------------------------------------

SAMPLES_08 = [
    "def f(xs):\n    out = []\n    for x in xs:\n        if x > 0:\n            out.append(x)\n    return out\n",
    "def g(n):\n    while n > 1 and n % 2 == 0:\n        n //= 2\n    return n if n else -1\n",
    "def h(xs):\n    return [x for x in xs if not x] + [y for y in xs if y % 3]\n",
    "def k(a, b):\n    if a:\n        return 1\n    elif not b:\n        return 2\n    return 3\n",
]


@exercise("08.invert_condition", "the invert_condition mutation operator",
          "invert_condition(source: str) -> list[str]  (one mutant per if / while / ternary / comprehension condition)")
def _check_invert_condition(fn):
    import ast

    from minicoder.tasks.mutate import apply_mutations, find_mutations

    def norm(src: str) -> str:
        return ast.unparse(ast.parse(src))

    for i, src in enumerate(SAMPLES_08):
        case = f"sample {i}:\n{src}"
        want = {norm(apply_mutations(src, [m])) for m in find_mutations(src, "s.py", operators=("invert_condition",))}
        got_list = _call(fn, case, src)
        try:
            got = {norm(s) for s in got_list}
        except SyntaxError as e:
            raise Mismatch(f"{case}\none of your mutants does not parse: {e}") from None
        if norm(src) in got:
            raise Mismatch(f"{case}\none of your mutants is the original program")
        missing, extra = sorted(want - got), sorted(got - want)
        if missing:
            raise Mismatch(f"{case}\nmissing mutant ({len(missing)} of {len(want)}):\n{missing[0]}\n"
                           "(negate each condition once: `not (c)`, or drop a leading `not`)")
        if extra:
            raise Mismatch(f"{case}\na mutant the operator does not make:\n{extra[0]}")
        yield f"sample {i}"


# --- 09 · a reward cross-check -----------------------------------------------------------------------------------

def _junit(cases: dict[str, str]) -> bytes:
    body = []
    for nodeid, outcome in cases.items():
        file, _, name = nodeid.partition("::")
        inner = {"failed": '<failure message="assert 0">assert 0</failure>', "error": '<error message="boom"/>',
                 "skipped": '<skipped message="skip"/>', "xfailed": '<skipped type="pytest.xfail" message="xfail"/>'}
        body.append(f'<testcase classname="{file[:-3].replace("/", ".")}" name="{name}" file="{file}">'
                    f'<properties><property name="nodeid" value="{nodeid}"/></properties>'
                    f'{inner.get(outcome, "")}</testcase>')
    return (f'<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest" tests="{len(cases)}">'
            f'{"".join(body)}</testsuite></testsuites>').encode()


@exercise("09.reward", "the reward from a JUnit report (cross-check of the sandbox's grading)",
          "reward(junit_xml: bytes, fail_to_pass: list[str], pass_to_pass: list[str]) -> float")
def _check_reward(fn):
    from minicoder.record import PASSING
    from minicoder.sandbox.junit import parse_junit

    t = "test_a.py::"
    cases = [
        ("all passing", {t + "x": "passed", t + "y": "passed"}, [t + "x"], [t + "y"]),
        ("a FAIL_TO_PASS test failing", {t + "x": "failed", t + "y": "passed"}, [t + "x"], [t + "y"]),
        ("a PASS_TO_PASS test broken", {t + "x": "passed", t + "y": "error"}, [t + "x"], [t + "y"]),
        ("a listed test missing from the report", {t + "x": "passed"}, [t + "x"], [t + "y"]),
        ("a skipped test", {t + "x": "skipped"}, [t + "x"], []),
        ("an expected failure (xfail)", {t + "x": "xfailed", t + "y": "passed"}, [t + "x"], [t + "y"]),
        ("unlisted tests failing do not count", {t + "x": "passed", t + "z": "failed"}, [t + "x"], []),
    ]
    for label, outcomes, f2p, p2p in cases:
        xml = _junit(outcomes)
        parsed = {k: v.outcome for k, v in parse_junit(xml).items()}
        ids = list(dict.fromkeys(f2p + p2p))
        want = 1.0 if all(parsed.get(i) in PASSING for i in ids) else 0.0
        case = f"case '{label}' (outcomes {outcomes}, FAIL_TO_PASS {f2p}, PASS_TO_PASS {p2p})"
        got = _call(fn, case, xml, list(f2p), list(p2p))
        if not isinstance(got, (int, float)) or float(got) != want:
            raise Mismatch(f"{case}: reward {got!r}, expected {want} (1.0 only if EVERY listed test is in "
                           f"{PASSING}; a missing test counts as failed)")
        yield label


# --- 10 · the GRPO advantage (needs the RL stage) ---------------------------------------------------------------

@exercise("10.grpo_advantage", "group-relative advantages (r - mean, optional std normalisation)",
          "advantages(rewards: list[float], std_norm: bool) -> list[float]")
def _check_grpo_advantage(fn):
    from minicoder.rl.grpo import GRPOConfig, group_advantages

    for label, rewards, std in (("mixed group", [1, 0, 0, 1, 1, 0, 0, 0], False), ("all equal", [1, 1, 1, 1], False),
                                ("one sample", [1], False), ("std-normalised", [1, 0, 0, 0], True),
                                ("fractional rewards", [0.5, 0.25, 1.0, 0.0], True)):
        want = group_advantages([float(r) for r in rewards], GRPOConfig(std_norm=std))
        case = f"case '{label}' (rewards {rewards}, std_norm={std})"
        got = _call(fn, case, list(rewards), std)
        if std and got is not None and len(got) == len(want) and len(rewards) > 1:
            pop = np.std(rewards)
            if pop > 0 and np.allclose(got, (np.array(rewards) - np.mean(rewards)) / (pop + 1e-6), atol=1e-6):
                raise Mismatch(f"{case}: use the sample standard deviation (divide by n - 1), as torch.std does")
        compare_arrays("advantages", np.asarray(got, dtype=float), np.asarray(want, dtype=float), case)
        yield label


# --- 11 · an exploit test --------------------------------------------------------------------------------------

# Implementations of `visits_of` (notebook 11's SQL-injection task) the student's exploit test runs
# against, with whether each is exploitable. Two come from the shipped task itself (its insecure
# functional fix and its gold fix); the others are the variants a one-payload test misses.
VARIANTS_11: list[tuple[str, bool, str | None]] = [
    ("the task's insecure functional fix", True, None),
    ("the task's secure gold fix", False, None),
    ("a query quoted with double quotes", True,
     'def visits_of(conn, patient):\n'
     '    query = \'SELECT name FROM visits WHERE patient = "%s" ORDER BY name\' % patient\n'
     '    return [name for (name,) in conn.execute(query)]\n'),
    ("a blacklist that deletes ' OR '", True,
     'def visits_of(conn, patient):\n'
     '    patient = patient.replace(" OR ", " ")\n'
     '    query = "SELECT name FROM visits WHERE patient = \'%s\' ORDER BY name" % patient\n'
     '    return [name for (name,) in conn.execute(query)]\n'),
    ("quotes escaped by doubling them (safe in SQLite)", False,
     'def visits_of(conn, patient):\n'
     '    query = "SELECT name FROM visits WHERE patient = \'%s\' ORDER BY name" % patient.replace("\'", "\'\'")\n'
     '    return [name for (name,) in conn.execute(query)]\n'),
    ("a parameterised query that also refuses quotes (raises ValueError)", False,
     'def visits_of(conn, patient):\n'
     '    if "\'" in patient or \'"\' in patient:\n'
     '        raise ValueError("quotes are not allowed in a patient name")\n'
     '    return [name for (name,) in conn.execute("SELECT name FROM visits WHERE patient = ? ORDER BY name", (patient,))]\n'),
]


def _variants_11() -> list[tuple[str, bool, Any, str]]:
    """(label, exploitable, db namespace with connect/add_visit/visits_of, visits_of's source) per variant."""
    from types import SimpleNamespace

    from minicoder.gitdiff import apply_to_snapshot
    from minicoder.record import read_tasks
    from minicoder.sandbox.security import security_meta

    tasks = read_tasks(ROOT / "data" / "tasks" / "security_tasks.jsonl")
    task = next(t for t in tasks if security_meta(t)["template"] == "sorted_rows" and "clinic/db.py" in t.environment.files)
    base = dict(task.environment.files)
    out = []
    for label, exploitable, override in VARIANTS_11:
        if override is None:
            patch = security_meta(task)["insecure_patch"] if exploitable else task.patch
            source = apply_to_snapshot(base, patch)["clinic/db.py"]
        else:
            source = base["clinic/db.py"] + "\n\n" + override
        ns: dict[str, Any] = {"__name__": "clinic.db"}
        exec(compile(source, "clinic/db.py", "exec"), ns)
        shown = override or source[source.index("def visits_of"):]  # the function is the module's last
        db = SimpleNamespace(connect=ns["connect"], add_visit=ns["add_visit"], visits_of=ns["visits_of"])
        out.append((label, exploitable, db, shown))
    return out


@exercise("11.exploit_test", "an exploit test for SQL injection (CWE-89)",
          "test_injection(db) -> None  (db.connect(), db.add_visit(conn, name, patient), db.visits_of(conn, patient); "
          "an assert fails when the attack works)")
def _check_exploit_test(fn):
    for label, exploitable, db, shown in _variants_11():
        case = f"against {label}:\n{shown.rstrip()}\n"
        try:
            fn(db)
            caught = False
        except AssertionError:
            caught = True
        except NotImplementedError:
            raise
        except Exception as e:
            raise Mismatch(f"{case}your test raised {type(e).__name__}: {e}. An exploit test fails only with an "
                           "assert; catch what visits_of raises (refusing the input is a fine defence)") from e
        if exploitable and not caught:
            raise Mismatch(f"{case}this visits_of is injectable, but your test passed: try the attack with each "
                           "quote character (' and \"), with a payload the blacklist keeps (lower-case `or`, "
                           "`UNION SELECT`), and assert that no other patient's rows (or other tables) come back")
        if not exploitable and caught:
            raise Mismatch(f"{case}this visits_of is safe, but your test failed: assert only what an attack "
                           "would change (rows that are not the patient's, data from other tables); an exception "
                           "or an empty result is not an attack that worked")
        yield label


# --- make lab ------------------------------------------------------------------------------------------------------

SOLUTION = re.compile(r"^(?P<indent>[ \t]*)# BEGIN SOLUTION[^\n]*\n.*?^[ \t]*# END SOLUTION[^\n]*\n?", re.M | re.S)


def strip_solutions(source: str, name: str = "this exercise") -> str:
    """Replace each BEGIN/END SOLUTION block by a NotImplementedError at the block's indentation."""
    return SOLUTION.sub(lambda m: f'{m.group("indent")}raise NotImplementedError("exercise: {name}")\n', source)


def exercise_name(cell_source: str) -> str | None:
    m = re.search(r'check\(\s*"([0-9]{2}\.[a-z0-9_]+)"', cell_source)
    return m.group(1) if m else None


def write_lab(notebooks: Path, out: Path) -> list[Path]:
    """Student copies of every notebook (solutions removed, outputs cleared) in `out`."""
    import nbformat

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(notebooks.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                if "# BEGIN SOLUTION" in cell.source:
                    cell.source = strip_solutions(cell.source, exercise_name(cell.source) or path.stem)
                cell.outputs, cell.execution_count = [], None
        target = out / path.name
        nbformat.write(nb, target)
        written.append(target)
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m minicoder.course", description="write the student copies (labs/)")
    p.add_argument("--notebooks", type=Path, default=ROOT / "notebooks")
    p.add_argument("--out", type=Path, default=ROOT / "labs")
    args = p.parse_args(argv)
    paths = write_lab(args.notebooks, args.out)
    n = sum(1 for _ in paths)
    print(f"lab: {n} notebooks with their solutions removed -> {args.out}/ (exercises: {len(EXERCISES)}; "
          f"checkers stay: `from minicoder.course import check`)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

