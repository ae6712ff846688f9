"""`minicoder pack`: corpus -> tokenizer -> packed sequences on disk, with statistics.

    minicoder pack --source stdlib --max-files 300 --seq-len 2048 --method bfd --out runs/pack
    minicoder pack --source git --path ~/src/myrepo --tokenizer runs/pack/tokenizer.json --format jsonl
    minicoder pack --source humaneval --seq-len 1024 --method concat
    minicoder pack --source stdlib --stream --buffer 2000 --format jsonl   # bounded memory

Writes into ``--out``: ``tokenizer.json`` (+ config) when one was trained, ``packed.npz`` (arrays
``input_ids``/``labels``/``position_ids``/``doc_ids`` [B, L], ``cu_seqlens`` over the flattened rows,
``bin_offsets``/``piece_doc``/``piece_start``/``piece_stop``) or ``packed.jsonl`` (one row per
line: ``input_ids`` and its ``pieces`` as [doc, start, stop]), ``docs.jsonl`` (doc index -> source,
path, language, tokens) and ``stats.json``. Labels are pre-shifted (see ``packing.PackedBatch``).

``demo_stage(out_dir)`` is the data stage of ``minicoder demo``: a small stdlib corpus, the toy
tokenizer, the three packings side by side, the Best-Fit one saved for training.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pack", help="build a corpus, tokenize it and pack it into fixed-length sequences",
                       description=__doc__.split("\n\n")[0])
    src = p.add_argument_group("corpus")
    src.add_argument("--source", choices=("stdlib", "git", "humaneval"), default="stdlib",
                     help="stdlib: the Python standard library; git: files at HEAD of --path; humaneval: 164 problems")
    src.add_argument("--path", type=Path, help="git repository (for --source git)")
    src.add_argument("--max-files", type=int, default=300, help="document limit (default 300; 0 = no limit)")
    src.add_argument("--max-bytes", type=int, default=0, help="total byte limit (0 = none)")
    src.add_argument("--seed", type=int, default=0, help="shuffle seed for the stdlib sample (default 0)")
    src.add_argument("--no-dedup", action="store_true", help="keep exact duplicates")
    tk = p.add_argument_group("tokenizer")
    tk.add_argument("--tokenizer", type=Path, help="tokenizer.json or a checkpoint folder (default: train a toy BPE)")
    tk.add_argument("--vocab-size", type=int, default=4096, help="vocabulary of the trained toy BPE (default 4096)")
    pk = p.add_argument_group("packing")
    pk.add_argument("--seq-len", type=int, default=2048, help="tokens per packed sequence L (default 2048)")
    pk.add_argument("--method", choices=("bfd", "concat", "pad"), default="bfd",
                    help="bfd: Best-Fit Packing; concat: concatenate then chunk; pad: one document per row")
    pk.add_argument("--overflow", choices=("truncate", "split"), default="truncate",
                    help="for --method pad: what happens to documents longer than L")
    pk.add_argument("--stream", action="store_true", help="Best-Fit pack within a bounded buffer (JSONL output)")
    pk.add_argument("--buffer", type=int, default=10_000, help="documents' pieces held at once with --stream")
    out = p.add_argument_group("output")
    out.add_argument("--out", type=Path, default=Path("runs/pack"), help="output folder (default runs/pack)")
    out.add_argument("--format", choices=("npz", "jsonl"), default="npz", help="packed sequences format")
    p.set_defaults(func=run)


def _user_error(e: Exception):
    from minicoder.errors import UserError

    return UserError(str(e))


def _load_or_train_tokenizer(args, texts: list[str], out: Path):
    from .tokenizer import CodeTokenizer, train_tokenizer

    if args.tokenizer is not None:
        if not args.tokenizer.exists():
            raise _user_error(FileNotFoundError(f"--tokenizer {args.tokenizer} does not exist"))
        tok = CodeTokenizer.load(args.tokenizer)
        print(f"loaded {tok}")
        return tok
    t0 = time.perf_counter()
    tok = train_tokenizer(texts, vocab_size=args.vocab_size)
    tok.save(out)
    print(f"trained byte-level BPE ({tok.vocab_size} ids) in {time.perf_counter() - t0:.1f}s -> {out / 'tokenizer.json'}")
    return tok


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from .corpus import CorpusStats, iter_corpus
    from .packing import Packing, Ragged, pack, packed_batch, stream_pack

    if args.seq_len <= 0:
        raise _user_error(ValueError(f"--seq-len must be positive, got {args.seq_len}"))
    if args.source == "git" and args.path is None:
        raise _user_error(ValueError("--source git needs --path REPO"))
    if args.stream and args.method != "bfd":
        raise _user_error(ValueError("--stream packs with Best-Fit only (use --method bfd)"))
    if args.stream and args.format != "jsonl":
        raise _user_error(ValueError("--stream writes rows as they come: use --format jsonl"))
    if args.max_files < 0 or args.max_bytes < 0 or args.buffer < 2:
        raise _user_error(ValueError("--max-files/--max-bytes must be >= 0 and --buffer >= 2"))
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    cstats = CorpusStats()
    try:
        it = iter_corpus(args.source, path=args.path, max_files=args.max_files or None,
                         max_bytes=args.max_bytes or None, dedup=not args.no_dedup,
                         seed=args.seed if args.source == "stdlib" else None, stats=cstats)
        docs = list(tqdm(it, desc=f"reading {args.source}", unit="file", total=args.max_files or None))
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise _user_error(e) from e
    if not docs:
        raise _user_error(ValueError(f"the {args.source} corpus is empty with these limits"))
    print(f"corpus: {len(docs)} documents, {sum(d.n_bytes for d in docs) / 1e6:.2f} MB "
          f"({cstats.duplicates} duplicates, {cstats.skipped_binary} binary, {cstats.skipped_large} too large skipped)")
    texts = [d.text for d in docs]
    try:
        tok = _load_or_train_tokenizer(args, texts, out)
    except (ValueError, FileNotFoundError) as e:
        raise _user_error(e) from e
    rag: Ragged = tok.encode_documents(texts, progress=True)
    with open(out / "docs.jsonl", "w") as f:
        for i, (d, n) in enumerate(zip(docs, rag.lengths.tolist())):
            f.write(json.dumps({"doc": i, "source": d.source, "path": d.path, "language": d.language, "tokens": n}) + "\n")

    t0 = time.perf_counter()
    if args.stream:
        stats = _stream_to_jsonl(rag, args, out, stream_pack, tqdm)
    else:
        packing: Packing = pack(rag.lengths, args.seq_len, method=args.method,
                                **({"overflow": args.overflow} if args.method == "pad" else {}))
        stats = packing.stats.as_dict()
        batch = packed_batch(packing, rag, pad_id=tok.pad_id)
        if args.format == "npz":
            save_npz(out / "packed.npz", batch, packing)
        else:
            bins = packing.bins()
            with open(out / "packed.jsonl", "w") as f:
                for b in tqdm(range(len(packing)), desc="writing", unit="row"):
                    f.write(json.dumps({"input_ids": batch.input_ids[b].tolist(),
                                        "pieces": [list(pc) for pc in bins[b]]}) + "\n")
    stats["pack_seconds"] = time.perf_counter() - t0
    stats.update(source=args.source, documents=len(docs), vocab_size=tok.vocab_size, eos_id=tok.eos_id,
                 pad_id=tok.pad_id, format=args.format)
    (out / "stats.json").write_text(json.dumps(stats, indent=2))
    _print_stats(stats)
    print(f"wrote {out / ('packed.' + args.format)}, {out / 'docs.jsonl'}, {out / 'stats.json'}")
    return 0


def save_npz(path: Path, batch, packing) -> None:
    """The packed rows ([B, L] int32 arrays, cu_seqlens) and the packing layout, in one .npz."""
    np.savez_compressed(
        path, input_ids=batch.input_ids.astype(np.int32), labels=batch.labels.astype(np.int32),
        position_ids=batch.position_ids.astype(np.int32), doc_ids=batch.doc_ids.astype(np.int32),
        cu_seqlens=batch.cu_seqlens, bin_offsets=packing.bin_offsets, piece_doc=packing.piece_doc,
        piece_start=packing.piece_start, piece_stop=packing.piece_stop)


def _stream_to_jsonl(rag, args, out: Path, stream_pack, tqdm) -> dict:
    from .packing import StreamStats

    st = StreamStats()
    L = args.seq_len
    with open(out / "packed.jsonl", "w") as f:
        for pieces in tqdm(stream_pack(iter(rag.lengths.tolist()), L, buffer_size=args.buffer, stats=st),
                           desc="packing (stream)", unit="row"):
            ids = np.concatenate([rag[d][s:e] for d, s, e in pieces]).tolist()
            f.write(json.dumps({"input_ids": ids, "pieces": [list(p) for p in pieces]}) + "\n")
    total = int(rag.lengths.sum())
    n_split = int((rag.lengths > L).sum())
    return {"method": "bfd-stream", "seq_len": L, "n_docs": st.docs_seen, "empty_dropped": st.empty_dropped,
            "n_bins": st.bins_emitted, "total_tokens": total, "tokens_packed": st.tokens_emitted,
            "tokens_dropped": total - st.tokens_emitted, "docs_split": n_split,
            "lower_bound": -(-total // L), "fill": st.fill,
            "bins_over_lower_bound": st.bins_emitted / max(1, -(-total // L)), "buffer": args.buffer}


def _print_stats(s: dict) -> None:
    print(f"\n{s['method']} packing into L={s['seq_len']}:")
    print(f"  bins (sequences)   {s['n_bins']}   (lower bound ceil(tokens/L) = {s['lower_bound']}, "
          f"ratio {s['bins_over_lower_bound']:.4f})")
    print(f"  fill ratio         {s['fill']:.2%}")
    print(f"  tokens             {s['total_tokens']} in, {s['tokens_dropped']} dropped")
    print(f"  documents split    {s['docs_split']}   (empty dropped: {s['empty_dropped']})")


def demo_stage(out_dir: str | Path, max_files: int = 200, vocab_size: int = 4096, seq_len: int = 512) -> dict:
    """The data stage of ``minicoder demo``: build a small stdlib corpus, train the toy tokenizer
    (saved to ``out_dir/tokenizer.json``), pack the documents three ways and save the Best-Fit
    packing to ``out_dir/packed.npz`` (same arrays as ``minicoder pack``). Prints and returns the
    stats of each method: {"bfd": {...}, "concat": {...}, "pad": {...}, "tokenizer": path, ...}."""
    from .corpus import CorpusStats, iter_corpus
    from .packing import pack, packed_batch
    from .tokenizer import train_tokenizer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cstats = CorpusStats()
    docs = list(iter_corpus("stdlib", max_files=max_files, seed=0, stats=cstats))
    print(f"corpus: {len(docs)} stdlib files, {cstats.bytes / 1e6:.2f} MB, {cstats.duplicates} exact duplicates removed")
    t0 = time.perf_counter()
    tok = train_tokenizer([d.text for d in docs], vocab_size=vocab_size)
    tok_path = tok.save(out)
    rag = tok.encode_documents([d.text for d in docs])
    print(f"tokenizer: byte-level BPE, {tok.vocab_size} ids, trained in {time.perf_counter() - t0:.1f}s -> {tok_path}; "
          f"{int(rag.lengths.sum())} tokens ({cstats.bytes / max(1, int(rag.lengths.sum())):.2f} bytes/token)")
    result: dict = {"tokenizer": str(tok_path), "seq_len": seq_len, "documents": len(docs)}
    print(f"{'method':<8}{'bins':>8}{'lower bd':>10}{'fill':>9}{'dropped':>9}{'split':>7}")
    for method in ("bfd", "concat", "pad"):
        p = pack(rag.lengths, seq_len, method=method)
        s = p.stats
        print(f"{method:<8}{s.n_bins:>8}{s.lower_bound:>10}{s.fill:>9.2%}{s.tokens_dropped:>9}{s.docs_split:>7}")
        result[method] = s.as_dict()
        if method == "bfd":
            b = packed_batch(p, rag, pad_id=tok.pad_id)
            save_npz(out / "packed.npz", b, p)
    result["packed"] = str(out / "packed.npz")
    print(f"saved Best-Fit packed sequences -> {result['packed']}")
    return result
