"""The baselines Best-Fit Packing is measured against (concatenate-and-chunk, pad), and `pack`, which
picks a method by name.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from minicoder.data.packing.bfd import pack_bfd
from minicoder.data.packing.layout import (
    METHODS,
    Packing,
    _check_input,
    _make_stats,
    _ranges,
    split_documents,
)


def concat_pack(lengths: Sequence[int] | np.ndarray, seq_len: int) -> Packing:
    """Concatenate all documents and cut every ``seq_len`` tokens; the last row may be short.

    A document crossing a cut becomes two (or more) pieces in consecutive rows.
    """
    arr = _check_input(lengths, seq_len)
    keep = np.nonzero(arr)[0]
    lens = arr[keep]
    total = int(lens.sum())
    end = np.cumsum(lens)
    begin = end - lens
    # Document i spans global positions [begin, end): it touches rows begin//L .. (end-1)//L, one
    # piece per row. O(N), no sort.
    first_row = begin // seq_len
    n_pieces = (end - 1) // seq_len - first_row + 1
    which = np.repeat(np.arange(len(lens), dtype=np.int64), n_pieces)  # index into keep
    row = _ranges(first_row, n_pieces)
    g_start = np.maximum(begin[which], row * seq_len)
    g_stop = np.minimum(end[which], (row + 1) * seq_len)
    doc = keep[which]
    start = g_start - begin[which]
    stop = g_stop - begin[which]
    n_bins = -(-total // seq_len)
    offsets = np.zeros(n_bins + 1, dtype=np.int64)
    np.cumsum(np.bincount(row, minlength=n_bins), out=offsets[1:])
    return Packing(seq_len, offsets, doc, start, stop, _make_stats("concat", arr, seq_len, offsets, doc, start, stop))


def pad_pack(lengths: Sequence[int] | np.ndarray, seq_len: int, overflow: str = "truncate") -> Packing:
    """One document per row, padded to ``seq_len``.

    overflow="truncate": a document longer than L keeps its first L tokens, the rest is dropped
    (counted in ``stats.tokens_dropped``). overflow="split": it is cut into pieces of at most L, one
    row each (nothing dropped).
    """
    if overflow not in ("truncate", "split"):
        raise ValueError(f"overflow must be 'truncate' or 'split', got {overflow!r}")
    arr = _check_input(lengths, seq_len)
    if overflow == "split":
        doc, start, stop = split_documents(arr, seq_len)
    else:
        doc = np.nonzero(arr)[0].astype(np.int64)
        start = np.zeros(len(doc), dtype=np.int64)
        stop = np.minimum(arr[doc], seq_len)
    offsets = np.arange(len(doc) + 1, dtype=np.int64)
    return Packing(seq_len, offsets, doc, start, stop, _make_stats("pad", arr, seq_len, offsets, doc, start, stop))


def pack(lengths: Sequence[int] | np.ndarray, seq_len: int, method: str = "bfd", **kw) -> Packing:
    """Dispatch by name: ``method`` in ("bfd", "concat", "pad")."""
    if method == "bfd":
        return pack_bfd(lengths, seq_len)
    if method == "concat":
        return concat_pack(lengths, seq_len)
    if method == "pad":
        return pad_pack(lengths, seq_len, **kw)
    raise ValueError(f"unknown packing method {method!r}; choose one of {METHODS}")
