"""The flat packing layout every packer returns, its statistics, and the input checks they share.

A packing is pieces (doc, start, stop) ordered by bin plus bin offsets (`Packing`), so that gathering
tokens into [B, L] rows is one vectorised index; `PackStats` counts what each method keeps and drops.
"""

from __future__ import annotations

import gc
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

IGNORE_INDEX = -100
METHODS = ("bfd", "concat", "pad")

# --------------------------------------------------------------------------------------------------
# statistics and the flat packing layout
# --------------------------------------------------------------------------------------------------


@dataclass
class PackStats:
    """What a packing did. ``fill`` = tokens packed / (bins * L); ``lower_bound`` = ceil(total tokens / L),
    the fewest rows that could hold every input token (a truncating packer can go below it)."""

    method: str
    seq_len: int
    n_docs: int  # documents given, including empty ones
    empty_dropped: int  # zero-length documents dropped
    n_pieces: int  # pieces placed (a document split in k pieces counts k times)
    n_bins: int
    total_tokens: int  # tokens in the input documents
    tokens_packed: int
    tokens_dropped: int  # truncated away (only pad_pack with overflow="truncate")
    docs_split: int  # documents whose tokens ended up in more than one piece

    @property
    def lower_bound(self) -> int:
        return math.ceil(self.total_tokens / self.seq_len) if self.total_tokens else 0

    @property
    def fill(self) -> float:
        return self.tokens_packed / (self.n_bins * self.seq_len) if self.n_bins else 0.0

    @property
    def bins_over_lower_bound(self) -> float:
        return self.n_bins / self.lower_bound if self.lower_bound else 1.0

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d.update(lower_bound=self.lower_bound, fill=self.fill, bins_over_lower_bound=self.bins_over_lower_bound)
        return d

    def summary(self) -> str:
        return (
            f"{self.method}: {self.n_bins} bins of {self.seq_len} (lower bound {self.lower_bound}, "
            f"x{self.bins_over_lower_bound:.4f}), fill {self.fill:.2%}, {self.tokens_dropped} tokens dropped, "
            f"{self.docs_split} docs split, {self.empty_dropped} empty docs dropped"
        )


@dataclass
class Packing:
    """A packing as flat arrays. Pieces are ordered by bin; bin b holds pieces
    ``bin_offsets[b]:bin_offsets[b+1]``. Piece p is tokens ``piece_start[p]:piece_stop[p]`` of document
    ``piece_doc[p]``.

    bin_offsets: [n_bins + 1] int64; piece_doc, piece_start, piece_stop: [n_pieces] int64.
    """

    seq_len: int
    bin_offsets: np.ndarray
    piece_doc: np.ndarray
    piece_start: np.ndarray
    piece_stop: np.ndarray
    stats: PackStats

    def __len__(self) -> int:
        return len(self.bin_offsets) - 1

    def bin_lengths(self) -> np.ndarray:
        """Tokens used in each bin: [n_bins] int64."""
        used = np.add.reduceat(self.piece_stop - self.piece_start, self.bin_offsets[:-1]) if len(self) else np.zeros(0)
        return used.astype(np.int64)

    def bins(self) -> list[list[tuple[int, int, int]]]:
        """The packing as a list of bins, each a list of ``(doc_index, start, stop)`` pieces."""
        # Building ~10^6 small containers triggers the cyclic GC over and over for nothing (none of
        # them can form a cycle): pausing it halves the time.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            pieces = list(zip(self.piece_doc.tolist(), self.piece_start.tolist(), self.piece_stop.tolist()))
            o = self.bin_offsets.tolist()
            return list(map(pieces.__getitem__, map(slice, o[:-1], o[1:])))
        finally:
            if was_enabled:
                gc.enable()

    def select(self, bins: np.ndarray | Sequence[int] | slice) -> Packing:
        """A packing of a subset of the bins (e.g. one batch), same stats object."""
        idx = np.arange(len(self))[bins] if isinstance(bins, slice) else np.asarray(bins, dtype=np.int64)
        counts = np.diff(self.bin_offsets)[idx]
        take = _ranges(self.bin_offsets[idx], counts)
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return Packing(
            self.seq_len, offsets, self.piece_doc[take], self.piece_start[take], self.piece_stop[take], self.stats
        )


def _ranges(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + c)`` for each (s, c), vectorised: [sum(counts)] int64."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(counts)
    # Position within its range = global position - first global position of that range.
    within = np.arange(total, dtype=np.int64) - np.repeat(ends - counts, counts)
    return np.repeat(np.asarray(starts, dtype=np.int64), counts) + within


def _check_input(lengths: Iterable[int] | np.ndarray, seq_len: int) -> np.ndarray:
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)):
        raise ValueError(f"seq_len must be an integer, got {seq_len!r}")
    if seq_len <= 0:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    arr = np.asarray(lengths if isinstance(lengths, np.ndarray) else list(lengths))
    if arr.ndim != 1:
        raise ValueError(f"lengths must be a 1-D sequence of integers, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("cannot pack an empty list of documents")
    if not np.issubdtype(arr.dtype, np.integer):
        if np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
            arr = arr.astype(np.int64)
        else:
            raise ValueError(f"lengths must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.min() < 0:
        bad = int(np.argmax(arr < 0))
        raise ValueError(f"document lengths must be >= 0, got {int(arr[bad])} at index {bad}")
    return arr


def split_documents(lengths: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut each document into consecutive pieces of at most ``seq_len`` tokens (empty ones vanish).

    lengths: [N] int64 -> (piece_doc, piece_start, piece_stop), each [P] int64, in document order.
    """
    n_pieces = -(-lengths // seq_len)  # ceil; 0 for empty documents
    doc = np.repeat(np.arange(len(lengths), dtype=np.int64), n_pieces)
    k = _ranges(np.zeros(len(lengths), dtype=np.int64), n_pieces)  # piece number within its document
    start = k * seq_len
    stop = np.minimum(start + seq_len, lengths[doc])
    return doc, start, stop




def _layout_from_assignment(
    doc: np.ndarray, start: np.ndarray, stop: np.ndarray, order: np.ndarray, bin_of_sorted: np.ndarray, n_bins: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Order pieces by bin (stable: inside a bin, in insertion order = decreasing length)."""
    by_bin = np.argsort(bin_of_sorted, kind="stable")
    perm = order[by_bin]
    offsets = np.zeros(n_bins + 1, dtype=np.int64)
    np.cumsum(np.bincount(bin_of_sorted, minlength=n_bins), out=offsets[1:])
    return offsets, doc[perm], start[perm], stop[perm]



def _make_stats(method: str, arr: np.ndarray, seq_len: int, offsets, doc, start, stop) -> PackStats:
    n_pieces = len(doc)
    packed = int((stop - start).sum())
    total = int(arr.sum())
    per_doc = np.bincount(doc, minlength=len(arr))
    return PackStats(
        method=method,
        seq_len=int(seq_len),
        n_docs=len(arr),
        empty_dropped=int((arr == 0).sum()),
        n_pieces=n_pieces,
        n_bins=len(offsets) - 1,
        total_tokens=total,
        tokens_packed=packed,
        tokens_dropped=total - packed,
        docs_split=int((per_doc > 1).sum()),
    )
