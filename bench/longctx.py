"""Long-context benchmark on CPU: the chunked delta rule, and what the 3:1 hybrid buys at long context.

(a) kernels: our chunked PyTorch gated delta rule (``minicoder.ops.gated_delta.chunk``) against
    transformers' own PyTorch fallback ``torch_chunk_gated_delta_rule`` (Qwen3-Next), same inputs at
    T = 4096, for two head layouts (the ``small`` preset's and Qwen3-Next's 16 q/k x 32 v heads of
    128). Outputs and final states must agree; times are medians of interleaved runs.
(a') the same kernel alone at the context lengths of (b): its CPU time per token should stay flat.
(b) model: prefill time and inference-cache memory against context length (up to 32k) for the hybrid
    3:1 layout (3 Gated DeltaNet : 1 gated attention) vs an all-attention stack of the same width,
    plus an all-DeltaNet stack to show the delta rule's own scaling. The model is the toy preset's
    width with dense MLPs (no MoE: routing is per-token work that would only add the same linear
    cost to every layout). Cache bytes are read from the real ``HybridCache`` after the prefill, and
    checked against the analytic formula; the full Qwen3-Coder-Next config is added analytically.

Writes ``bench/results/longctx.json`` (machine, date, every number) and prints tables.
Timings are single-threaded by default (``--threads``): on a shared machine multi-threaded BLAS /
OpenMP timings swing by 10x with other processes' load; one thread each for both sides is fair.
Run: ``.venv/bin/python bench/longctx.py`` (a few minutes; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from minicoder.machine import machine_info as _machine_info  # noqa: E402
from minicoder.ops.gated_delta.chunk import chunk_gated_delta_rule  # noqa: E402


def machine_info() -> dict:
    return _machine_info(("torch", "transformers"))

def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref.double()).norm() / ref.double().norm()).item()


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process). With one thread the CPU time is the work done,
    nearly independent of other processes' load; the wall time is what a user waits."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


# --- (a) our chunked kernel vs transformers' PyTorch fallback -----------------------------------------

def hf_torch_chunk():
    """transformers' PyTorch fallback itself: its decorator swaps in fla's kernel when fla imports, so
    unwrap to the function defined in modeling_qwen3_next."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformers.models.qwen3_next import modeling_qwen3_next as m
    fn = inspect.unwrap(m.torch_chunk_gated_delta_rule)
    assert fn.__module__ == m.__name__, fn
    return fn


def bench_kernels(T: int, layouts: dict[str, tuple[int, int, int, int]], repeats: int) -> list[dict]:
    hf = hf_torch_chunk()
    rows = []
    for name, (Hq, H, K, V) in layouts.items():
        gen = torch.Generator().manual_seed(0)
        q = torch.randn(1, T, Hq, K, generator=gen)
        k = torch.randn(1, T, Hq, K, generator=gen)
        v = torch.randn(1, T, H, V, generator=gen)
        g = F.logsigmoid(torch.randn(1, T, H, generator=gen) + 3)  # per-token decay ~ 0.95
        beta = torch.rand(1, T, H, generator=gen)
        h0 = torch.randn(1, H, K, V, generator=gen) * 0.1
        # the model's call: q, k L2-normalised in the kernel, default scale K^-0.5, prefill from a state
        kw = dict(initial_state=h0, output_final_state=True, use_qk_l2norm_in_kernel=True)
        ours = functools.partial(chunk_gated_delta_rule, q, k, v, g, beta, **kw)
        theirs = functools.partial(hf, q, k, v, g, beta, **kw)
        with torch.no_grad():
            (o1, s1), (o2, s2) = ours(), theirs()  # also the warm-up
            t_ours, t_hf = [], []
            for _ in range(repeats):  # interleaved, so load from other processes hits both alike
                t_ours.append(timed(ours))
                t_hf.append(timed(theirs))
        med = lambda ts, i: statistics.median(t[i] for t in ts)
        row = {
            "layout": name, "T": T, "Hq": Hq, "H": H, "K": K, "V": V, "repeats": repeats,
            "ours_median_wall_s": med(t_ours, 0), "hf_median_wall_s": med(t_hf, 0),
            "ours_median_cpu_s": med(t_ours, 1), "hf_median_cpu_s": med(t_hf, 1),
            "rel_err_o": rel(o1, o2), "rel_err_state": rel(s1, s2),
        }
        row["speedup_vs_hf_wall"] = row["hf_median_wall_s"] / row["ours_median_wall_s"]
        row["speedup_vs_hf_cpu"] = row["hf_median_cpu_s"] / row["ours_median_cpu_s"]
        rows.append(row)
        print(f"  {name:<20} T={T}  ours {row['ours_median_cpu_s']:.3f}s  transformers {row['hf_median_cpu_s']:.3f}s"
              f" (CPU time)  x{row['speedup_vs_hf_cpu']:.2f}   [wall {row['ours_median_wall_s']:.3f}s vs "
              f"{row['hf_median_wall_s']:.3f}s x{row['speedup_vs_hf_wall']:.2f}]  rel err o {row['rel_err_o']:.1e} "
              f"state {row['rel_err_state']:.1e}", flush=True)
    return rows


def loglog_slope(points: list[tuple[float, float]]) -> float:
    """Least-squares p in y ~ x^p."""
    pts = [(math.log(x), math.log(y)) for x, y in points]
    mx, my = statistics.fmean(x for x, _ in pts), statistics.fmean(y for _, y in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def bench_kernel_scaling(Ts: list[int], layout: tuple[int, int, int, int], repeats: int = 3) -> dict:
    """Our chunked kernel alone against T: CPU time per token should stay flat (linear total)."""
    Hq, H, K, V = layout
    rows = []
    for T in Ts:
        gen = torch.Generator().manual_seed(T)
        q, k = torch.randn(1, T, Hq, K, generator=gen), torch.randn(1, T, Hq, K, generator=gen)
        v = torch.randn(1, T, H, V, generator=gen)
        g, beta = F.logsigmoid(torch.randn(1, T, H, generator=gen) + 3), torch.rand(1, T, H, generator=gen)
        fn = functools.partial(chunk_gated_delta_rule, q, k, v, g, beta, use_qk_l2norm_in_kernel=True)
        with torch.no_grad():
            fn()
            cpu = statistics.median(timed(fn)[1] for _ in range(repeats))
        rows.append({"T": T, "cpu_s": cpu, "cpu_us_per_token": 1e6 * cpu / T})
        print(f"  T={T:>6}  CPU {cpu:7.3f}s  {1e6 * cpu / T:6.1f} us/token", flush=True)
    p = loglog_slope([(r["T"], r["cpu_s"]) for r in rows])
    print(f"  CPU time ~ T^{p:.2f}")
    return {"layout_Hq_H_K_V": list(layout), "rows": rows, "cpu_time_scaling_exponent": p}


# --- (b) hybrid vs all-attention: prefill time and cache memory ---------------------------------------

def model_configs():
    from minicoder.config import ModelConfig

    base = ModelConfig.from_preset("toy", num_experts=0, intermediate_size=256, num_nextn_predict_layers=0,
                                   max_position_embeddings=1 << 20, kernel="torch")
    n = base.num_hidden_layers
    hybrid = base.replace(layer_types=["linear_attention"] * 3 + ["full_attention"])
    assert n == 4 and hybrid.layer_types.count("full_attention") == 1
    return {
        "hybrid_3to1": hybrid,
        "all_attention": base.replace(layer_types=["full_attention"] * n),
        "all_deltanet": base.replace(layer_types=["linear_attention"] * n),
    }


def bench_model(contexts: list[int], repeats: int) -> dict:
    from minicoder.model import HybridCache, HybridLM
    from minicoder.model.cache import cache_bytes_per_token

    rows = []
    cfgs = model_configs()
    for name, cfg in cfgs.items():
        torch.manual_seed(0)
        model = HybridLM(cfg).eval()
        with torch.no_grad():  # warm-up (first-call allocations, lazy imports)
            model(torch.zeros(1, 128, dtype=torch.long), cache=HybridCache(cfg, batch_size=1), logits_to_keep=1)
        for T in contexts:
            ids = torch.randint(0, cfg.vocab_size, (1, T), generator=torch.Generator().manual_seed(T))
            times, cache = [], None
            with torch.no_grad():
                for _ in range(repeats):
                    cache = HybridCache(cfg, batch_size=1)
                    times.append(timed(functools.partial(model, ids, cache=cache, logits_to_keep=1)))
            mem = cache.memory_bytes()
            analytic = cache_bytes_per_token(cfg, dtype_bytes=4)  # float32 model on CPU
            want = analytic["kv_bytes_per_token"] * T + analytic["deltanet_state_bytes"]
            row = {
                "model": name, "T": T, "repeats": repeats,
                "prefill_median_wall_s": statistics.median(t[0] for t in times),
                "prefill_median_cpu_s": statistics.median(t[1] for t in times),
                "cache_bytes": mem["total"], "kv_bytes": mem["full_attention"],
                "deltanet_state_bytes": mem["linear_attention"], "cache_bytes_analytic": want,
            }
            row["cpu_us_per_token"] = 1e6 * row["prefill_median_cpu_s"] / T
            rows.append(row)
            print(f"  {name:<14} T={T:>6}  prefill CPU {row['prefill_median_cpu_s']:8.3f}s ({row['cpu_us_per_token']:6.1f} "
                  f"us/tok, wall {row['prefill_median_wall_s']:8.3f}s)  cache {mem['total'] / 2**20:8.3f} MiB "
                  f"(analytic {want / 2**20:.3f})", flush=True)
    # scaling exponent p in CPU time ~ T^p: least-squares slope of log(time) on log(T), all contexts
    fits = {name: loglog_slope([(r["T"], r["prefill_median_cpu_s"]) for r in rows if r["model"] == name])
            for name in cfgs}
    by = {(r["model"], r["T"]): r for r in rows}
    ratios = {T: by[("hybrid_3to1", T)]["cache_bytes"] / by[("all_attention", T)]["cache_bytes"] for T in contexts}
    return {
        "config": {k: {"layer_types": c.layer_types, "hidden_size": c.hidden_size,
                       "num_key_value_heads": c.num_key_value_heads, "head_dim": c.head_dim,
                       "linear_heads_qk_v": [c.linear_num_key_heads, c.linear_num_value_heads],
                       "linear_head_dims_k_v": [c.linear_key_head_dim, c.linear_value_head_dim],
                       "dtype": "float32", "mlp": f"dense, intermediate {c.intermediate_size}"}
                   for k, c in cfgs.items()},
        "rows": rows,
        "cache_ratio_hybrid_over_all_attention": ratios,
        "cpu_time_scaling_exponent": fits,
    }


def full_config_analytic(contexts: list[int]) -> list[dict]:
    """Qwen3-Coder-Next's cache (bf16 KV, float32 delta-rule states) vs the same stack all attention."""
    from minicoder.config import ModelConfig
    from minicoder.model.cache import cache_bytes_per_token

    full = ModelConfig.from_preset("full")
    attn = full.replace(layer_types=["full_attention"] * full.num_hidden_layers)
    hy, aa = cache_bytes_per_token(full, 2), cache_bytes_per_token(attn, 2)
    out = []
    for T in contexts:
        h = hy["kv_bytes_per_token"] * T + hy["deltanet_state_bytes"]
        a = aa["kv_bytes_per_token"] * T
        out.append({"T": T, "hybrid_GiB": h / 2**30, "all_attention_GiB": a / 2**30, "ratio": h / a})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--T", type=int, default=4096, help="sequence length for part (a)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per kernel in part (a)")
    p.add_argument("--contexts", default="1024,2048,4096,8192,16384,32768", help="context lengths for part (b)")
    p.add_argument("--model-repeats", type=int, default=1, help="timed prefills per (model, context) in (b)")
    p.add_argument("--skip-model", action="store_true", help="only part (a)")
    p.add_argument("--full-heads", action="store_true",
                   help="also time Qwen3-Next's full 16 x 32 heads of 128 in (a) (slow on a laptop)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: reproducible on a shared machine; 0 = torch's default)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not a measurement")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "longctx.json"))
    args = p.parse_args(argv)
    contexts = [int(x) for x in args.contexts.split(",")]
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    layouts = {"small(4x8x128)": (4, 8, 128, 128)}
    if args.full_heads:
        layouts["qwen3next(16x32x128)"] = (16, 32, 128, 128)
    if args.quick:
        args.T, args.repeats, contexts, layouts = 256, 2, [256, 512], {"tiny(2x4x32)": (2, 4, 32, 32)}

    result = {"benchmark": "longctx", "machine": machine_info(), "args": vars(args)}
    print(f"(a) chunked gated delta rule vs transformers' torch_chunk_gated_delta_rule, T={args.T}")
    result["kernels"] = bench_kernels(args.T, layouts, args.repeats)
    print(f"(a') our chunked kernel alone vs T, layout {next(iter(layouts))} (Hq, H, K, V)")
    result["kernel_scaling"] = bench_kernel_scaling(contexts, next(iter(layouts.values())))
    if not args.skip_model:
        print("(b) prefill time and cache memory vs context (toy width, dense MLP, float32)")
        result["model"] = bench_model(contexts, args.model_repeats)
        result["full_config_analytic"] = full_config_analytic([32768, 262144])
        print("    cache ratio hybrid / all-attention:",
              {T: round(r, 4) for T, r in result["model"]["cache_ratio_hybrid_over_all_attention"].items()})
        print("    prefill CPU time ~ T^p, fitted over all contexts:",
              {k: round(v, 2) for k, v in result["model"]["cpu_time_scaling_exponent"].items()})
        for r in result["full_config_analytic"]:
            print(f"    Qwen3-Coder-Next (analytic) T={r['T']}: hybrid {r['hybrid_GiB']:.2f} GiB vs all-attention "
                  f"{r['all_attention_GiB']:.2f} GiB (x{r['ratio']:.3f})")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
