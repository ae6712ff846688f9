"""Benchmark: training throughput. Packing vs padding on a CPU (toy config); tokens/s and MFU on a GPU.

CPU, toy config: the same stdlib documents (a seeded sample, toy BPE tokenizer) are laid into rows of
L = 1024 tokens two ways, Best-Fit Packing (``bfd``) and one document per row padded (``pad``,
documents longer than L split into rows of their own, so nothing is dropped). Each layout trains for
the same number of steps of the same batch shape (rows x L). Reported: wall time per step, total
tokens/s (row slots, padding included) and *useful* tokens/s (loss-bearing tokens only). Same batch
shape means the same compute per step, so the ratio of useful tokens/s is what packing buys.

GPU (when CUDA is there): the ``small`` config, bf16 autocast, fused AdamW, packed rows of
L = 4096, tokens/s and MFU = model FLOPs per second / peak bf16 FLOPs. Model FLOPs per token are
``minicoder.model.accounting.flops_per_token(cfg, seq_len=L, training=True)`` (6 x active weights +
attention + DeltaNet state terms, MTP head included); peak is 989.4 TFLOP/s dense bf16 for an H100
SXM (``--peak-tflops`` to change). Without CUDA the GPU rows say "not measured"; nothing is estimated.

Run: ``.venv/bin/python bench/train.py`` (CPU part: 1-3 minutes). Writes bench/results/train.json
(or train_gpu.json with --gpu-only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minicoder.data.corpus import iter_corpus  # noqa: E402
from minicoder.data.packing import pack_bfd, pad_pack  # noqa: E402
from minicoder.data.tokenizer import train_tokenizer  # noqa: E402
from minicoder.machine import machine_info as _machine_info  # noqa: E402
from minicoder.train import PackedDataset, TrainConfig, Trainer, build_model  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def machine_info() -> dict:
    return _machine_info(("torch",))

def time_run(ds: PackedDataset, vocab: int, rows: int, steps: int, warmup: int, device: str = "cpu",
             config: str = "toy", **over) -> dict:
    model, mcfg = build_model(config, vocab_size=vocab, seed=0, device=device, **over)
    tr = Trainer(model, ds, TrainConfig(steps=steps + warmup, rows=rows, lr=1e-3, warmup_steps=1, progress=False),
                 model_config=mcfg)
    for _ in range(warmup):
        tr.train_step()
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    useful = 0
    for _ in range(steps):
        useful += tr.train_step()["tokens"]
    if device == "cuda":
        torch.cuda.synchronize()
    dt_s = time.perf_counter() - t0
    slots = steps * rows * ds.seq_len
    return {"steps": steps, "rows": rows, "seq_len": ds.seq_len, "seconds": dt_s, "s_per_step": dt_s / steps,
            "tokens_per_s": slots / dt_s, "useful_tokens_per_s": useful / dt_s, "useful_fraction": useful / slots,
            "params": sum(p.numel() for p in model.parameters()), "config": mcfg}


def cpu_bench(args) -> dict:
    docs = [d.text for d in iter_corpus("stdlib", max_files=args.files, seed=0)]
    tok = train_tokenizer(docs, vocab_size=4096)
    rag = tok.encode_documents(docs)
    out = {}
    layouts = {"bfd": pack_bfd(rag.lengths, args.seq_len), "pad": pad_pack(rag.lengths, args.seq_len, overflow="split")}
    for method, packing in layouts.items():
        ds = PackedDataset(rag, packing, pad_id=tok.pad_id)
        r = time_run(ds, tok.vocab_size, args.rows, args.steps, 2)
        r.pop("config")
        r["rows_in_dataset"] = len(ds)
        r["fill"] = ds.packing.stats.fill
        out[method] = r
    out["useful_tokens_per_s_ratio_bfd_over_pad"] = out["bfd"]["useful_tokens_per_s"] / out["pad"]["useful_tokens_per_s"]
    return out


def gpu_bench(args) -> dict:
    from minicoder.model.accounting import flops_per_token

    docs = [d.text for d in iter_corpus("stdlib", max_files=None, seed=0)]
    tok = train_tokenizer(docs[:400], vocab_size=32768)
    rag = tok.encode_documents(docs)
    ds = PackedDataset.from_token_lists([rag[i] for i in range(len(rag))], args.gpu_seq_len, pad_id=tok.pad_id)
    r = time_run(ds, tok.vocab_size, args.gpu_rows, args.gpu_steps, 3, device="cuda", config="small")
    cfg = r.pop("config")
    fpt = flops_per_token(cfg, seq_len=args.gpu_seq_len, training=True, include_mtp=True)["total"]
    r["model_flops_per_token"] = fpt
    r["mfu"] = r["tokens_per_s"] * fpt / (args.peak_tflops * 1e12)
    r["peak_tflops"] = args.peak_tflops
    r["max_memory_GiB"] = torch.cuda.max_memory_allocated() / 2**30
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=150, help="stdlib files in the CPU corpus")
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a shared machine)")
    ap.add_argument("--gpu-seq-len", type=int, default=4096)
    ap.add_argument("--gpu-rows", type=int, default=4)
    ap.add_argument("--gpu-steps", type=int, default=10)
    ap.add_argument("--peak-tflops", type=float, default=989.4, help="dense bf16 peak of the GPU (H100 SXM)")
    ap.add_argument("--gpu-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    res: dict = {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine_info(),
                 "args": vars(args)}
    if not args.gpu_only:
        res["cpu_toy"] = cpu_bench(args)
        c = res["cpu_toy"]
        print(f"CPU, toy config ({c['bfd']['params'] / 1e6:.2f}M params), rows of {args.seq_len}, {args.rows} rows/step, "
              f"{args.threads} thread(s)")
        print(f"{'layout':<8}{'s/step':>9}{'tokens/s':>11}{'useful/s':>11}{'useful %':>10}{'rows':>7}")
        for m in ("bfd", "pad"):
            r = c[m]
            print(f"{m:<8}{r['s_per_step']:>9.3f}{r['tokens_per_s']:>11.0f}{r['useful_tokens_per_s']:>11.0f}"
                  f"{100 * r['useful_fraction']:>9.1f}%{r['rows_in_dataset']:>7}")
        print(f"packing buys x{c['useful_tokens_per_s_ratio_bfd_over_pad']:.2f} useful tokens/s "
              f"(and {c['pad']['rows_in_dataset'] / c['bfd']['rows_in_dataset']:.2f}x fewer rows per epoch)")
    if torch.cuda.is_available():
        res["gpu_small"] = g = gpu_bench(args)
        print(f"GPU {res['machine']['gpu']}, small config, bf16, rows of {args.gpu_seq_len}: "
              f"{g['tokens_per_s']:.0f} tokens/s, MFU {100 * g['mfu']:.1f}% (peak {args.peak_tflops} TFLOP/s), "
              f"max memory {g['max_memory_GiB']:.1f} GiB")
    else:
        res["gpu_small"] = {"measured": False, "why": "no CUDA device on this machine"}
        print("GPU (small config, tokens/s, MFU): not measured, no CUDA device on this machine")
    res["machine"]["load_average_1m_at_end"] = os.getloadavg()[0]
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("train_gpu.json" if args.gpu_only else "train.json")
    path.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
