"""Benchmark: Best-Fit Packing vs TRL's BFD packer vs concatenation vs padding.

Document lengths come from a real corpus: the toy tokenizer (byte-level BPE, 4096 ids, trained on
a stdlib sample) tokenizes a seeded sample of standard-library files (an ``<|endoftext|>`` appended
to each), and 1,000,000 lengths are drawn from that empirical distribution with a fixed seed.
For L = 8192 and 32768 it reports, per method: documents per second on one core, bins against the
lower bound ceil(tokens / L), tokens dropped, documents split.

- ``minicoder bfd (arrays)``: ``pack_bfd``, the packing as flat numpy arrays (what training uses).
- ``minicoder bfd (list API)``: ``best_fit_pack``, the same plus building the Python list of bins.
- ``minicoder bfd reference``: the item-at-a-time segment-tree version (pure Python), on a subsample.
- ``trl bfd``: ``trl.data_utils.pack_dataset(ds, L, strategy="bfd")`` on a ``datasets.Dataset`` with
  an ``input_ids`` column, as a user calls it (``map`` batches of 1000 documents, each packed on its
  own; documents longer than L truncated) and with one global batch (``map_kwargs={"batch_size": n}``);
  also ``strategy="bfd_split"``. TRL needs the token arrays in memory, so it runs on a subsample
  (``--trl-docs``, default 50,000 documents, uint8 dummy ids of the sampled lengths); its docs/s is
  from that subsample, and ours is measured on the same subsample too for a like-for-like ratio.
- ``concat``, ``pad`` (truncate): the baselines, on all 1M.

Timings are the best of ``--repeats`` runs (single process; numpy here is single-threaded).
Run: ``.venv/bin/python bench/packing.py`` (about 2-4 minutes). Writes bench/results/packing.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minicoder.data.corpus import iter_corpus  # noqa: E402
from minicoder.data.packing import best_fit_pack, best_fit_pack_reference, concat_pack, pack_bfd, pad_pack  # noqa: E402
from minicoder.data.tokenizer import toy_tokenizer  # noqa: E402
from minicoder.machine import machine_info as _machine_info  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def machine_info() -> dict:
    return _machine_info(("numpy", "torch", "trl", "datasets", "pyarrow", "tokenizers"))

def timed(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def row(name: str, n_docs: int, seconds: float, stats: dict, note: str = "") -> dict:
    return {
        "method": name,
        "docs": n_docs,
        "seconds": seconds,
        "docs_per_s": n_docs / seconds if seconds > 0 else float("inf"),
        "bins": stats["n_bins"],
        "lower_bound": stats["lower_bound"],
        "bins_over_lower_bound": stats["n_bins"] / stats["lower_bound"],
        "tokens_dropped": stats["tokens_dropped"],
        "docs_split": stats["docs_split"],
        "note": note,
    }


def trl_pack(lengths: np.ndarray, L: int, strategy: str, global_batch: bool):
    """Run TRL's packer on a Dataset whose input_ids have the given lengths; returns (seconds, stats)."""
    import pyarrow as pa
    from datasets import Dataset
    from trl.data_utils import pack_dataset

    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    values = pa.array(np.ones(int(offsets[-1]), dtype=np.uint8))
    col = pa.LargeListArray.from_arrays(pa.array(offsets), values)
    ds = Dataset(pa.table({"input_ids": col}))
    kw = {"map_kwargs": {"batch_size": len(lengths)}} if global_batch else {}
    t0 = time.perf_counter()
    packed = pack_dataset(ds, L, strategy=strategy, **kw)
    secs = time.perf_counter() - t0
    tbl = packed.data.table
    seq_lengths = tbl.column("seq_lengths").combine_chunks()
    n_bins = len(tbl)
    tokens = int(pa.compute.sum(pa.compute.list_value_length(tbl.column("input_ids"))).as_py())
    total = int(lengths.sum())
    # pieces per original document: for bfd (truncate) one piece each; bfd_split cuts long docs
    n_pieces = len(seq_lengths.flatten())
    stats = {
        "n_bins": n_bins,
        "lower_bound": -(-total // L),
        "tokens_dropped": total - tokens,
        "docs_split": int((lengths > L).sum()) if strategy == "bfd_split" else 0,
        "pieces": n_pieces,
    }
    return secs, stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=1_000_000)
    ap.add_argument("--seq-lens", type=int, nargs="+", default=[8192, 32768])
    ap.add_argument("--corpus-files", type=int, default=1000, help="stdlib files tokenized for the length distribution")
    ap.add_argument("--trl-docs", type=int, default=50_000)
    ap.add_argument("--ref-docs", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "packing.json")
    args = ap.parse_args()

    t0 = time.perf_counter()
    tok = toy_tokenizer()
    texts = [d.text for d in iter_corpus("stdlib", max_files=args.corpus_files, seed=1)]
    emp = tok.encode_documents(texts).lengths
    print(f"length distribution: {len(emp)} stdlib files tokenized by {tok!r} in {time.perf_counter() - t0:.1f}s; "
          f"median {int(np.median(emp))}, mean {emp.mean():.0f}, p99 {int(np.percentile(emp, 99))}, max {emp.max()} tokens")
    rng = np.random.default_rng(args.seed)
    lengths = rng.choice(emp, size=args.docs, replace=True).astype(np.int64)
    sub_trl = lengths[: args.trl_docs]
    sub_ref = lengths[: args.ref_docs]
    # A continuous length distribution (many distinct lengths) to show the speed does not rely on
    # the empirical sample having few distinct values.
    lognormal = (np.exp(rng.normal(np.log(np.median(emp)), 1.2, size=args.docs)).astype(np.int64) + 1)

    results = {"machine": machine_info(), "config": vars(args) | {"out": str(args.out)},
               "length_distribution": {"files": len(emp), "median": float(np.median(emp)), "mean": float(emp.mean()),
                                       "p99": float(np.percentile(emp, 99)), "max": int(emp.max()),
                                       "distinct_lengths": int(len(np.unique(emp)))},
               "runs": {}}
    for L in args.seq_lens:
        rows: list[dict] = []
        print(f"\n=== L = {L}: {args.docs} documents, {int(lengths.sum())} tokens, "
              f"{int((lengths > L).sum())} longer than L")
        s, p = timed(lambda L=L: pack_bfd(lengths, L), args.repeats)
        rows.append(row("minicoder bfd (arrays)", args.docs, s, p.stats.as_dict()))
        s, (_, st) = timed(lambda L=L: best_fit_pack(lengths, L, return_stats=True), args.repeats)
        rows.append(row("minicoder bfd (list API)", args.docs, s, st.as_dict(), "returns list of bins of (doc, start, stop)"))
        s, p = timed(lambda L=L: pack_bfd(lognormal, L), args.repeats)
        rows.append(row("minicoder bfd (arrays), lognormal lengths", args.docs, s, p.stats.as_dict(),
                        f"continuous distribution, {len(np.unique(np.minimum(lognormal, L)))} distinct piece lengths"))
        s, ref = timed(lambda L=L: best_fit_pack_reference(sub_ref, L), 1)
        ref_stats = pack_bfd(sub_ref, L).stats.as_dict()
        assert len(ref) == ref_stats["n_bins"], "reference and fast BFD disagree"
        rows.append(row("minicoder bfd reference (per item)", len(sub_ref), s, ref_stats,
                        f"pure-Python segment tree, first {len(sub_ref)} docs"))
        s, p = timed(lambda L=L: pack_bfd(sub_trl, L), args.repeats)
        ours_sub = row("minicoder bfd (arrays), TRL subsample", len(sub_trl), s, p.stats.as_dict(),
                       f"first {len(sub_trl)} docs")
        rows.append(ours_sub)
        for strategy, global_batch in (("bfd", False), ("bfd", True), ("bfd_split", False), ("bfd_split", True)):
            secs, st = trl_pack(sub_trl, L, strategy, global_batch)
            note = (f"first {len(sub_trl)} docs; " + ("one global map batch" if global_batch
                                                       else "default map batches of 1000 docs"))
            rows.append(row(f"trl {strategy}" + (" (global)" if global_batch else ""), len(sub_trl), secs, st, note))
        s, p = timed(lambda L=L: concat_pack(lengths, L), args.repeats)
        rows.append(row("concat", args.docs, s, p.stats.as_dict()))
        s, p = timed(lambda L=L: pad_pack(lengths, L), args.repeats)
        rows.append(row("pad (truncate)", args.docs, s, p.stats.as_dict()))

        trl_default = next(r for r in rows if r["method"] == "trl bfd")
        speedup = ours_sub["docs_per_s"] / trl_default["docs_per_s"]
        results["runs"][str(L)] = {"rows": rows, "speedup_vs_trl_bfd_same_docs": speedup}
        print(f"{'method':<44}{'docs':>9}{'docs/s':>13}{'bins':>9}{'/LB':>8}{'dropped':>12}{'split':>8}")
        for r in rows:
            print(f"{r['method']:<44}{r['docs']:>9}{r['docs_per_s']:>13,.0f}{r['bins']:>9}"
                  f"{r['bins_over_lower_bound']:>8.4f}{r['tokens_dropped']:>12}{r['docs_split']:>8}")
        print(f"speed-up of ours over TRL bfd on the same {len(sub_trl)} docs: {speedup:.1f}x")

    results["machine"]["load_average_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=float))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
