"""Best-Fit Packing, its baselines, packed batches and streaming: invariants checked by hypothesis,
bin counts checked against a brute-force best-fit-decreasing, known answers on small cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicoder.data.packing import (
    IGNORE_INDEX,
    Ragged,
    StreamStats,
    best_fit_pack,
    best_fit_pack_reference,
    concat_pack,
    pack,
    pack_bfd,
    packed_batch,
    pad_pack,
    stream_pack,
    stream_packed_batches,
)
from minicoder.data.packing.bfd import _CapacityBits, _CapacityTree


def brute_force_bfd(lengths, L):
    """Plain best-fit decreasing, O(N * bins): split at L, sort pieces decreasing, put each in the
    fullest bin that still fits. Returns the sorted list of bin loads."""
    pieces = []
    for n in lengths:
        while n > L:
            pieces.append(L)
            n -= L
        if n:
            pieces.append(n)
    loads: list[int] = []
    for s in sorted(pieces, reverse=True):
        best = -1
        for i, u in enumerate(loads):
            if u + s <= L and (best < 0 or u > loads[best]):
                best = i
        if best < 0:
            loads.append(s)
        else:
            loads[best] += s
    return sorted(loads)


def check_partition(bins, lengths, L, splits_only_long=True):
    """Every token of every document is in exactly one bin, no bin exceeds L, pieces are sane."""
    covered = [np.zeros(n, dtype=np.int64) for n in lengths]
    pieces_of = [0] * len(lengths)
    for b in bins:
        assert b, "empty bin"
        assert sum(e - s for _, s, e in b) <= L
        for d, s, e in b:
            assert 0 <= s < e <= lengths[d]
            covered[d][s:e] += 1
            pieces_of[d] += 1
    for d, n in enumerate(lengths):
        assert np.all(covered[d] == 1), f"doc {d} not covered exactly once"
        if splits_only_long and n <= L:
            assert pieces_of[d] == (1 if n else 0), f"doc {d} of length {n} <= L was split"
    return pieces_of


lengths_and_L = st.integers(1, 48).flatmap(
    lambda L: st.tuples(st.lists(st.integers(0, 3 * L), min_size=1, max_size=60), st.just(L))
)


@settings(max_examples=300, deadline=None)
@given(lengths_and_L)
def test_bfd_properties_and_brute_force(case):
    lengths, L = case
    bins, stats = best_fit_pack(lengths, L, return_stats=True)
    pieces_of = check_partition(bins, lengths, L)
    for d, n in enumerate(lengths):  # long documents: exactly ceil(n / L) pieces
        assert pieces_of[d] == math.ceil(n / L)
    loads = sorted(sum(e - s for _, s, e in b) for b in bins)
    assert loads == brute_force_bfd(lengths, L)
    total = sum(lengths)
    assert len(bins) >= math.ceil(total / L)
    assert stats.n_bins == len(bins) and stats.tokens_dropped == 0
    assert stats.empty_dropped == sum(1 for n in lengths if n == 0)
    assert stats.docs_split == sum(1 for n in lengths if n > L)


@settings(max_examples=100, deadline=None)
@given(lengths_and_L)
def test_reference_segment_tree_matches_brute_force(case):
    lengths, L = case
    ref = best_fit_pack_reference(lengths, L)
    check_partition(ref, lengths, L)
    assert sorted(sum(e - s for _, s, e in b) for b in ref) == brute_force_bfd(lengths, L)


@pytest.mark.parametrize(
    "dist,L",
    [("lognormal", 512), ("uniform", 300), ("few", 1000), ("tiny", 7), ("long", 64)],
)
def test_fast_matches_reference_on_larger_instances(dist, L):
    # a fixed seed per case (hash() of a str changes per process: a failure could not be reproduced)
    rng = np.random.default_rng({"lognormal": 1, "uniform": 2, "few": 3, "tiny": 4, "long": 5}[dist])
    n = 4000
    lengths = {
        "lognormal": lambda: np.exp(rng.normal(4.5, 1.3, n)).astype(int),
        "uniform": lambda: rng.integers(0, L + 1, n),
        "few": lambda: rng.choice([17, 250, 333, 999, 1000, 1001], n),
        "tiny": lambda: rng.integers(1, 4, n),
        "long": lambda: rng.integers(L, 5 * L, n),
    }[dist]()
    fast = pack_bfd(lengths, L)
    ref = best_fit_pack_reference(lengths, L)
    assert len(fast) == len(ref)
    assert sorted(fast.bin_lengths().tolist()) == sorted(sum(e - s for _, s, e in b) for b in ref)
    check_partition(fast.bins(), lengths.tolist(), L)


@pytest.mark.parametrize("L", [1, 2, 63, 64, 65, 4096, 4097, 262_144, 300_000])
def test_capacity_indexes_match_a_sorted_set(L):
    """Both capacity indexes (binary max tree; fanout-64 bit tree) answer "smallest capacity >= s"
    exactly like a brute-force set under random adds and removes."""
    rng = np.random.default_rng(L)
    tree, bits, present = _CapacityTree(L), _CapacityBits(L), set()
    for _ in range(3000):
        c = int(rng.integers(1, L + 1))
        if c in present and rng.random() < 0.5:
            present.discard(c)
            tree.remove(c)
            bits.remove(c)
        elif c not in present:
            present.add(c)
            tree.add(c)
            bits.add(c)
        s = int(rng.integers(1, L + 1))
        want = min((x for x in present if x >= s), default=0)
        assert tree.smallest_at_least(s) == want and bits.smallest_at_least(s) == want
    for c in sorted(present):
        assert bits.smallest_at_least(c) == c


def test_known_answer():
    # 5,4,3,3,2,1 into L=6: 5 opens A (1 left), 4 opens B (2), 3 opens C (3), 3 fills C,
    # 2 fills B (tightest fit: B has 2, A has 1), 1 fills A.
    bins = best_fit_pack([5, 4, 3, 3, 2, 1], 6)
    assert bins == [[(0, 0, 5), (5, 0, 1)], [(1, 0, 4), (4, 0, 2)], [(2, 0, 3), (3, 0, 3)]]
    # A document of 13 with L=5 becomes pieces 5, 5, 3; the 3 shares a bin with the 2.
    bins = best_fit_pack([13, 2], 5)
    assert sorted(map(sorted, bins)) == [[(0, 0, 5)], [(0, 5, 10)], [(0, 10, 13), (1, 0, 2)]]


def test_best_fit_is_not_first_fit():
    # 7, 5, 4, 1 into L=10: 7 opens A (room 3), 5 opens B (room 5), 4 joins B (room 1). First fit
    # would put the 1 into A (the first bin with room); best fit puts it where it fits tightest, B.
    bins = best_fit_pack([5, 7, 4, 1], 10)
    assert sorted(map(sorted, bins)) == [[(0, 0, 5), (2, 0, 4), (3, 0, 1)], [(1, 0, 7)]]
    assert brute_force_bfd([5, 7, 4, 1], 10) == [7, 10]


def test_bfd_near_lower_bound_on_realistic_lengths():
    rng = np.random.default_rng(0)
    lengths = np.exp(rng.normal(6.5, 1.2, 20_000)).astype(int) + 1
    p = pack_bfd(lengths, 2048)
    assert p.stats.tokens_dropped == 0
    assert p.stats.n_bins <= 1.005 * p.stats.lower_bound
    assert p.stats.docs_split == int((lengths > 2048).sum())


@settings(max_examples=150, deadline=None)
@given(lengths_and_L)
def test_concat_pack(case):
    lengths, L = case
    p = concat_pack(lengths, L)
    total = sum(lengths)
    assert len(p) == math.ceil(total / L)
    used = p.bin_lengths()
    assert np.all(used[:-1] == L) and (len(used) == 0 or 0 < used[-1] <= L)
    check_partition(p.bins(), lengths, L, splits_only_long=False)
    # pieces appear in document order, each document contiguous across consecutive rows
    flat = [pc for b in p.bins() for pc in b]
    assert [d for d, _, _ in flat] == sorted(d for d, _, _ in flat)


@settings(max_examples=150, deadline=None)
@given(lengths_and_L)
def test_pad_pack(case):
    lengths, L = case
    p = pad_pack(lengths, L, overflow="truncate")
    assert len(p) == sum(1 for n in lengths if n)
    assert p.stats.tokens_dropped == sum(max(0, n - L) for n in lengths)
    assert all(len(b) == 1 and b[0][1] == 0 and b[0][2] == min(lengths[b[0][0]], L) for b in p.bins())
    s = pad_pack(lengths, L, overflow="split")
    assert s.stats.tokens_dropped == 0 and len(s) == sum(math.ceil(n / L) for n in lengths)
    check_partition(s.bins(), lengths, L)


@pytest.mark.parametrize(
    "args,match",
    [
        (([], 8), "empty"),
        (([3, 4], 0), "positive"),
        (([3, 4], -5), "positive"),
        (([3, -1], 8), "at index 1"),
        (([1.5, 2], 8), "integers"),
        (([[1, 2]], 8), "1-D"),
        (([1, 2], 8.0), "integer"),
    ],
)
def test_bad_input_errors(args, match):
    for fn in (best_fit_pack, concat_pack, pad_pack, best_fit_pack_reference):
        with pytest.raises(ValueError, match=match):
            fn(*args)
    with pytest.raises(ValueError, match="unknown packing method"):
        pack([1, 2], 4, method="first_fit")
    with pytest.raises(ValueError, match="overflow"):
        pad_pack([1, 2], 4, overflow="wrap")


def test_zero_length_docs_dropped_and_counted():
    bins, stats = best_fit_pack([0, 3, 0, 0, 2], 4, return_stats=True)
    assert stats.empty_dropped == 3 and stats.n_docs == 5
    assert {d for b in bins for d, _, _ in b} == {1, 4}
    assert best_fit_pack([0, 0], 4, return_stats=True)[0] == []


# ---------------------------------------------------------------------------------- packed batches


def check_batch(batch, packing, docs, pad_id):
    B, L = batch.input_ids.shape
    assert len(packing) == B
    for arr in (batch.labels, batch.position_ids, batch.doc_ids, batch.loss_mask):
        assert arr.shape == (B, L)
    bins = packing.bins()
    want_mask = np.zeros((B, L), dtype=bool)  # built from the pieces: every token but a piece's last
    for b, pieces in enumerate(bins):
        col = 0
        for _, s, e in pieces:
            want_mask[b, col : col + e - s - 1] = True
            col += e - s
    assert np.array_equal(batch.loss_mask, want_mask)
    seg_bounds = [0]
    n_loss = 0
    for b, pieces in enumerate(bins):
        col = 0
        for d, s, e in pieces:
            n = e - s
            src = docs[d][s:e]
            assert np.array_equal(batch.input_ids[b, col : col + n], src)
            assert np.array_equal(batch.position_ids[b, col : col + n], np.arange(n))
            assert np.all(batch.doc_ids[b, col : col + n] == d)
            # Each position predicts the next token of the same piece; the piece's last token
            # predicts nothing (it must not be trained on the next document's first token).
            assert np.array_equal(batch.labels[b, col : col + n - 1], src[1:])
            assert batch.labels[b, col + n - 1] == IGNORE_INDEX
            n_loss += n - 1
            col += n
            seg_bounds.append(b * L + col)
        assert np.all(batch.input_ids[b, col:] == pad_id)
        assert np.all(batch.doc_ids[b, col:] == -1)
        assert np.all(batch.labels[b, col:] == IGNORE_INDEX)
        assert np.array_equal(batch.position_ids[b, col:], np.arange(L - col))
        if col < L:
            seg_bounds.append((b + 1) * L)
    assert int(batch.loss_mask.sum()) == n_loss
    assert batch.cu_seqlens.dtype == np.int32
    assert batch.cu_seqlens.tolist() == seg_bounds
    assert batch.max_seqlen == max(np.diff(batch.cu_seqlens).tolist(), default=0)
    # No label anywhere crosses a document (or row) boundary.
    flat_doc = batch.doc_ids.reshape(-1)
    flat_lab = batch.labels.reshape(-1)
    has = np.nonzero(flat_lab[:-1] != IGNORE_INDEX)[0]
    assert np.all(flat_doc[has] == flat_doc[has + 1]) and np.all((has + 1) % L != 0)
    assert np.array_equal(flat_lab[has], batch.input_ids.reshape(-1)[has + 1])
    # HF convention: the same targets, unshifted.
    hf = batch.hf_labels()
    assert np.array_equal(hf[:, 1:], batch.labels[:, :-1])
    assert np.all(hf[:, 0] == IGNORE_INDEX)


@settings(max_examples=80, deadline=None)
@given(lengths_and_L, st.sampled_from(["bfd", "concat", "pad"]), st.integers(0, 2**31 - 1))
def test_packed_batch_masks(case, method, seed):
    lengths, L = case
    rng = np.random.default_rng(seed)
    docs = [rng.integers(1, 1000, n) for n in lengths]
    packing = pack(lengths, L, method=method)  # (pad: truncated rows still index the full documents)
    batch = packed_batch(packing, docs, pad_id=0)
    check_batch(batch, packing, docs, pad_id=0)
    # A sub-batch of some bins is the same rows.
    if len(packing) >= 2:
        sub = packed_batch(packing, Ragged.from_list(docs), bins=[1, 0], pad_id=0)
        assert np.array_equal(sub.input_ids, batch.input_ids[[1, 0]])
        assert np.array_equal(sub.labels, batch.labels[[1, 0]])


def test_packed_batch_to_torch_and_mismatch_errors():
    import torch
    docs = [np.arange(1, 6), np.arange(10, 13)]
    p = pack_bfd([5, 3], 8)
    t = packed_batch(p, docs).to_torch()
    assert t["cu_seqlens"].dtype == torch.int32 and t["input_ids"].dtype == torch.int64
    assert t["cu_seqlens"].tolist() == [0, 5, 8]
    assert t["labels"].tolist() == [[2, 3, 4, 5, -100, 11, 12, -100]]
    with pytest.raises(ValueError, match="beyond the end"):
        packed_batch(p, [np.arange(5), np.arange(2)])
    with pytest.raises(ValueError, match="only 1 were given"):
        packed_batch(p, [np.arange(5)])


# ---------------------------------------------------------------------------------- streaming


@settings(max_examples=120, deadline=None)
@given(lengths_and_L, st.integers(2, 30), st.sampled_from([0.0, 0.8, 1.0]))
def test_stream_pack_covers_every_token_once(case, buffer_size, min_fill):
    lengths, L = case
    if sum(lengths) == 0:
        return
    stats = StreamStats()
    bins = list(stream_pack(iter(lengths), L, buffer_size=buffer_size, min_fill=min_fill, stats=stats))
    check_partition(bins, lengths, L)
    assert len(bins) >= math.ceil(sum(lengths) / L)
    assert stats.tokens_emitted == sum(lengths) and stats.bins_emitted == len(bins)
    assert stats.docs_seen == len(lengths)
    # The buffer stays bounded: at most buffer_size pieces plus the overshoot of one document.
    assert stats.max_buffered_pieces <= buffer_size + max(math.ceil(n / L) for n in lengths)


def test_stream_with_big_buffer_equals_offline():
    rng = np.random.default_rng(3)
    lengths = (np.exp(rng.normal(4, 1.0, 3000)).astype(int) + 1).tolist()
    offline = pack_bfd(lengths, 256)
    streamed = list(stream_pack(lengths, 256, buffer_size=10**6))
    assert len(streamed) == len(offline)
    small = list(stream_pack(lengths, 256, buffer_size=500, min_fill=0.98))
    check_partition(small, lengths, 256)
    assert len(small) <= 1.03 * offline.stats.lower_bound


def test_stream_packed_batches_tokens():
    rng = np.random.default_rng(5)
    lengths = rng.integers(0, 150, 400)
    docs = [rng.integers(1, 500, n) for n in lengths]
    seen = [np.zeros(n, dtype=int) for n in lengths]
    n_rows = 0
    for batch in stream_packed_batches(iter(docs), 64, batch_size=7, buffer_size=50):
        assert batch.input_ids.shape[1] == 64 and batch.input_ids.shape[0] <= 7
        rows = batch.meta["bins"]
        assert len(rows) == batch.input_ids.shape[0]
        for b, pieces in enumerate(rows):
            col = 0
            for d, s, e in pieces:
                assert np.array_equal(batch.input_ids[b, col : col + e - s], docs[d][s:e])
                assert np.all(batch.doc_ids[b, col : col + e - s] == d)
                assert np.array_equal(batch.labels[b, col : col + e - s - 1], docs[d][s + 1 : e])
                assert batch.labels[b, col + e - s - 1] == IGNORE_INDEX
                seen[d][s:e] += 1
                col += e - s
            assert np.all(batch.doc_ids[b, col:] == -1)
        n_rows += len(rows)
    assert all(np.all(c == 1) for c in seen)
    assert n_rows >= math.ceil(int(lengths.sum()) / 64)


def test_stream_errors():
    with pytest.raises(ValueError, match="empty stream"):
        list(stream_pack(iter([]), 8))
    with pytest.raises(ValueError, match="positive"):
        list(stream_pack([1], 0))
    with pytest.raises(ValueError, match=">= 0"):
        list(stream_pack([3, -2], 8))


# ---------------------------------------------------------------------------------- CLI and demo


@pytest.mark.slow
def test_cli_pack_npz_and_stream(tmp_path, capsys):
    from minicoder.cli import main
    from minicoder.data.corpus import load_corpus
    from minicoder.data.tokenizer import CodeTokenizer

    out = tmp_path / "p"
    rc = main(["pack", "--source", "humaneval", "--max-files", "40", "--vocab-size", "600", "--seq-len", "256",
               "--out", str(out)])
    assert rc == 0
    assert "bfd packing into L=256" in capsys.readouterr().out
    tok = CodeTokenizer.load(out / "tokenizer.json")
    z = np.load(out / "packed.npz")
    stats = json.loads((out / "stats.json").read_text())
    docs = [json.loads(line) for line in (out / "docs.jsonl").read_text().splitlines()]
    assert len(docs) == 40 and stats["n_bins"] == z["input_ids"].shape[0] and stats["tokens_dropped"] == 0
    texts = [d.text for d in load_corpus("humaneval", max_files=40)]
    rag = tok.encode_documents(texts)
    assert [d["tokens"] for d in docs] == rag.lengths.tolist()
    # every row is the pieces it claims
    offs = z["bin_offsets"]
    for b in range(len(offs) - 1):
        col = 0
        for p in range(offs[b], offs[b + 1]):
            d, s, e = int(z["piece_doc"][p]), int(z["piece_start"][p]), int(z["piece_stop"][p])
            assert np.array_equal(z["input_ids"][b, col : col + e - s], rag[d][s:e])
            col += e - s
    assert tok.decode(rag[0][:-1]) == texts[0]  # without the appended <|endoftext|>

    out2 = tmp_path / "s"
    rc = main(["pack", "--source", "humaneval", "--max-files", "40", "--tokenizer", str(out / "tokenizer.json"),
               "--seq-len", "256", "--stream", "--buffer", "30", "--format", "jsonl", "--out", str(out2)])
    assert rc == 0
    rows = [json.loads(line) for line in (out2 / "packed.jsonl").read_text().splitlines()]
    seen = [np.zeros(n, int) for n in rag.lengths]
    for r in rows:
        assert len(r["input_ids"]) <= 256
        assert r["input_ids"] == np.concatenate([rag[d][s:e] for d, s, e in r["pieces"]]).tolist()
        for d, s, e in r["pieces"]:
            seen[d][s:e] += 1
    assert all(np.all(c == 1) for c in seen)


def test_cli_pack_user_errors(tmp_path, capsys):
    from minicoder.cli import main

    assert main(["pack", "--source", "git", "--out", str(tmp_path)]) == 2
    assert "--source git needs --path" in capsys.readouterr().err
    assert main(["pack", "--seq-len", "0", "--out", str(tmp_path)]) == 2
    assert main(["pack", "--source", "git", "--path", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a git repository" in capsys.readouterr().err
    assert main(["pack", "--stream", "--out", str(tmp_path)]) == 2


@pytest.mark.slow
def test_demo_stage(tmp_path, capsys):
    from minicoder.data import demo_stage

    res = demo_stage(tmp_path, max_files=30, vocab_size=800, seq_len=256)
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "packed.npz").is_file()
    b, c, p = res["bfd"], res["concat"], res["pad"]
    assert b["tokens_dropped"] == 0 and c["tokens_dropped"] == 0 and p["tokens_dropped"] > 0
    assert c["n_bins"] == c["lower_bound"] == b["lower_bound"] <= b["n_bins"] <= 1.01 * b["lower_bound"]
    assert p["n_bins"] == res["documents"] == 30  # one row per document, truncated at L
    assert b["docs_split"] <= c["docs_split"]
    assert "bfd" in capsys.readouterr().out
