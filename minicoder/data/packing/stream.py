"""Streaming packing: documents arrive one by one, bins close when a buffer fills, packed batches come
out as they are ready, for corpora that do not fit in memory.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from minicoder.data.packing.batch import PackedBatch, Ragged, packed_batch
from minicoder.data.packing.bfd import _pack_pieces_bfd
from minicoder.data.packing.layout import Packing, split_documents


@dataclass
class StreamStats:
    docs_seen: int = 0
    empty_dropped: int = 0
    tokens_seen: int = 0
    bins_emitted: int = 0
    tokens_emitted: int = 0
    rounds: int = 0
    max_buffered_pieces: int = 0
    seq_len: int = 0

    @property
    def fill(self) -> float:
        return self.tokens_emitted / (self.bins_emitted * self.seq_len) if self.bins_emitted else 0.0


def stream_pack(
    lengths: Iterable[int],
    seq_len: int,
    buffer_size: int = 100_000,
    min_fill: float = 0.99,
    stats: StreamStats | None = None,
) -> Iterator[list[tuple[int, int, int]]]:
    """Best-Fit Packing of an unbounded stream of document lengths within a bounded buffer.

    Reads up to ``buffer_size`` pieces (carried pieces + new documents, split at L), packs them
    best-fit-decreasing, yields every bin filled to at least ``min_fill * L`` and carries the pieces
    of the other bins into the next round (at most ``buffer_size // 2`` carried pieces: beyond that
    the fullest of the rest are yielded too, so the buffer never grows). At the end everything left
    is packed and yielded. Document indices are positions in the stream. Memory: O(buffer_size).
    Pass a ``StreamStats`` to collect counts (filled in as the stream is consumed).
    """
    if seq_len is None or int(seq_len) <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    if buffer_size < 2:
        raise ValueError(f"buffer_size must be >= 2, got {buffer_size}")
    if not 0.0 <= min_fill <= 1.0:
        raise ValueError(f"min_fill must be in [0, 1], got {min_fill}")
    st = stats if stats is not None else StreamStats()
    st.seq_len = int(seq_len)
    threshold = math.ceil(min_fill * seq_len)
    carry = (np.zeros(0, np.int64),) * 3
    it = iter(lengths)
    next_doc = 0
    exhausted = False
    any_doc = False
    while True:
        # Fill the buffer with new documents until it holds buffer_size pieces.
        new_lens: list[int] = []
        room = buffer_size - len(carry[0])
        new_pieces = 0
        while new_pieces < room and not exhausted:
            try:
                n = next(it)
            except StopIteration:
                exhausted = True
                break
            n = int(n)
            if n < 0:
                raise ValueError(f"document lengths must be >= 0, got {n} at stream position {next_doc + len(new_lens)}")
            new_lens.append(n)
            new_pieces += -(-n // seq_len)
        any_doc = any_doc or bool(new_lens)
        base = next_doc
        next_doc += len(new_lens)
        st.docs_seen += len(new_lens)
        st.empty_dropped += sum(1 for n in new_lens if n == 0)
        st.tokens_seen += sum(new_lens)
        if new_lens:
            d, s, e = split_documents(np.asarray(new_lens, dtype=np.int64), seq_len)
            d = d + base
            doc, start, stop = (np.concatenate([carry[0], d]), np.concatenate([carry[1], s]), np.concatenate([carry[2], e]))
        else:
            doc, start, stop = carry
        if len(doc) == 0:
            if exhausted:
                if not any_doc:
                    raise ValueError("cannot pack an empty stream of documents")
                return
            continue
        st.rounds += 1
        st.max_buffered_pieces = max(st.max_buffered_pieces, len(doc))
        offsets, doc, start, stop = _pack_pieces_bfd(doc, start, stop, seq_len)
        used = np.add.reduceat(stop - start, offsets[:-1])
        if exhausted:
            emit = np.ones(len(used), dtype=bool)
        else:
            emit = used >= threshold
            n_pieces = np.diff(offsets)
            kept = ~emit
            if n_pieces[kept].sum() > buffer_size // 2:
                # Too much would be carried: emit the fullest of the rest until the carry fits.
                cand = np.nonzero(kept)[0]
                cand = cand[np.argsort(-used[cand], kind="stable")]
                carried_from_end = np.cumsum(n_pieces[cand][::-1])[::-1]  # pieces kept if we stop here
                first_keep = int(np.argmax(carried_from_end <= buffer_size // 2)) if np.any(
                    carried_from_end <= buffer_size // 2
                ) else len(cand)
                emit[cand[:first_keep]] = True
        piece_bin = np.repeat(np.arange(len(used)), np.diff(offsets))
        for b in np.nonzero(emit)[0].tolist():
            a, z = int(offsets[b]), int(offsets[b + 1])
            st.bins_emitted += 1
            st.tokens_emitted += int(used[b])
            yield list(zip(doc[a:z].tolist(), start[a:z].tolist(), stop[a:z].tolist()))
        keep_piece = ~emit[piece_bin]
        carry = (doc[keep_piece], start[keep_piece], stop[keep_piece])
        if exhausted:
            return


def stream_packed_batches(
    docs: Iterable[Sequence[int] | np.ndarray],
    seq_len: int,
    batch_size: int,
    buffer_size: int = 10_000,
    min_fill: float = 0.99,
    pad_id: int = 0,
) -> Iterator[PackedBatch]:
    """PackedBatches from a stream of tokenized documents, Best-Fit packed within a bounded buffer.

    Keeps the tokens of a document only until all its pieces are emitted. ``doc_ids`` in the
    batches are positions in the stream.
    """
    pending: dict[int, np.ndarray] = {}
    left: dict[int, int] = {}  # tokens of a document not yet emitted

    def lengths() -> Iterator[int]:
        for i, d in enumerate(docs):
            arr = np.asarray(d, dtype=np.int64)
            if len(arr):
                pending[i] = arr
                left[i] = len(arr)
            yield len(arr)

    rows: list[list[tuple[int, int, int]]] = []

    def flush() -> PackedBatch:
        ids = sorted({p[0] for r in rows for p in r})
        local = {d: j for j, d in enumerate(ids)}
        rag = Ragged.from_list([pending[d] for d in ids])
        offsets = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([len(r) for r in rows], out=offsets[1:])
        flat = [p for r in rows for p in r]
        pk = Packing(
            seq_len,
            offsets,
            np.array([local[p[0]] for p in flat], dtype=np.int64),
            np.array([p[1] for p in flat], dtype=np.int64),
            np.array([p[2] for p in flat], dtype=np.int64),
            stats=None,  # type: ignore[arg-type]
        )
        batch = packed_batch(pk, rag, pad_id=pad_id)
        # Back to stream document indices.
        id_map = np.array(ids, dtype=np.int64)
        batch.doc_ids = np.where(batch.doc_ids >= 0, id_map[np.maximum(batch.doc_ids, 0)], -1)
        batch.meta["bins"] = [list(r) for r in rows]  # (stream doc index, start, stop) per row
        for d, s, e in flat:
            left[d] -= e - s
            if left[d] == 0:
                del left[d], pending[d]
        return batch

    for b in stream_pack(lengths(), seq_len, buffer_size=buffer_size, min_fill=min_fill):
        rows.append(b)
        if len(rows) == batch_size:
            yield flush()
            rows = []
    if rows:
        yield flush()
