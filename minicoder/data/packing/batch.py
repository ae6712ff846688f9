"""Packed training batches: token rows with per-document positions, `cu_seqlens` and pre-shifted labels,
and `Ragged`, the flat token store they are gathered from.

Labels are *pre-shifted*: ``labels[b, t]`` is the token position t is trained to predict, or -100
at the last token of a piece and on padding, so nothing is trained across a document boundary.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from minicoder.data.packing.layout import IGNORE_INDEX, Packing, _ranges


@dataclass
class PackedBatch:
    """Rows of packed token ids with everything attention and the loss need to respect boundaries.

    input_ids:    [B, L] int64, padding = ``pad_id``
    labels:       [B, L] int64, PRE-SHIFTED: the token position t must predict, -100 where no loss
                  (the last token of every piece, and padding)
    position_ids: [B, L] int64, 0, 1, 2, ... restarting at every piece (padding counts 0.. too)
    doc_ids:      [B, L] int64, document index per token, -1 on padding
    loss_mask:    [B, L] bool, labels != -100
    cu_seqlens:   [S + 1] int32, FlashAttention varlen boundaries over the flattened B*L tokens; each
                  piece is a segment and each row's padding tail is one more segment
    max_seqlen:   longest segment
    """

    input_ids: np.ndarray
    labels: np.ndarray
    position_ids: np.ndarray
    doc_ids: np.ndarray
    loss_mask: np.ndarray
    cu_seqlens: np.ndarray
    max_seqlen: int
    pad_id: int = 0
    meta: dict = field(default_factory=dict)

    def hf_labels(self) -> np.ndarray:
        """Labels in the Hugging Face convention (the model shifts them): input ids, with -100 on
        padding and on the first token of every piece (so no piece predicts its neighbour's start)."""
        out = np.where(self.doc_ids >= 0, self.input_ids, IGNORE_INDEX)
        out[self.position_ids == 0] = IGNORE_INDEX
        return out

    def to_torch(self, device=None) -> dict:
        """The arrays as torch tensors (int64 ids, bool mask, int32 cu_seqlens) plus max_seqlen."""
        import torch

        t = {
            k: torch.from_numpy(np.ascontiguousarray(getattr(self, k))).to(device)
            for k in ("input_ids", "labels", "position_ids", "doc_ids", "loss_mask", "cu_seqlens")
        }
        t["max_seqlen"] = self.max_seqlen
        return t


@dataclass
class Ragged:
    """Token ids of many documents as one flat array: doc i is ``tokens[offsets[i]:offsets[i+1]]``."""

    tokens: np.ndarray  # [T] int
    offsets: np.ndarray  # [N + 1] int64

    @classmethod
    def from_list(cls, docs: Sequence[Sequence[int] | np.ndarray]) -> Ragged:
        lens = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        offsets = np.zeros(len(docs) + 1, dtype=np.int64)
        np.cumsum(lens, out=offsets[1:])
        flat = np.concatenate([np.asarray(d, dtype=np.int64) for d in docs]) if int(offsets[-1]) else np.zeros(0, np.int64)
        return cls(flat.astype(np.int64, copy=False), offsets)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> np.ndarray:
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]


def packed_batch(
    packing: Packing, docs: Ragged | Sequence[Sequence[int] | np.ndarray], bins=None, pad_id: int = 0
) -> PackedBatch:
    """Gather the tokens of ``bins`` (default: all) of ``packing`` into a PackedBatch. Vectorised.

    docs: the token ids of every document the packing indexes (a ``Ragged`` or a list of arrays).
    """
    if not isinstance(docs, Ragged):
        docs = Ragged.from_list(docs)
    sub = packing if bins is None else packing.select(bins)
    L = sub.seq_len
    B = len(sub)
    piece_len = sub.piece_stop - sub.piece_start
    if len(piece_len) and int(sub.piece_doc.max()) >= len(docs):
        raise ValueError(f"packing refers to document {int(sub.piece_doc.max())} but only {len(docs)} were given")
    if len(piece_len) and np.any(sub.piece_stop > docs.lengths[sub.piece_doc]):
        raise ValueError("packing refers to tokens beyond the end of a document (lengths don't match the docs)")
    used = np.add.reduceat(piece_len, sub.bin_offsets[:-1]) if B else np.zeros(0, np.int64)
    if np.any(used > L):
        raise ValueError(f"a bin holds more than seq_len={L} tokens")
    piece_bin = np.repeat(np.arange(B, dtype=np.int64), np.diff(sub.bin_offsets))
    # Where each piece begins inside its row: running sum of the lengths before it in the same bin.
    csum = np.cumsum(piece_len) - piece_len
    col0 = csum - np.repeat(csum[sub.bin_offsets[:-1]] if B else csum[:0], np.diff(sub.bin_offsets))
    # One flat index per packed token.
    tok_piece = np.repeat(np.arange(len(piece_len), dtype=np.int64), piece_len)
    pos = _ranges(np.zeros(len(piece_len), np.int64), piece_len)
    flat_dst = piece_bin[tok_piece] * L + col0[tok_piece] + pos
    flat_src = docs.offsets[sub.piece_doc[tok_piece]] + sub.piece_start[tok_piece] + pos

    input_ids = np.full(B * L, pad_id, dtype=np.int64)
    input_ids[flat_dst] = docs.tokens[flat_src]
    doc_ids = np.full(B * L, -1, dtype=np.int64)
    doc_ids[flat_dst] = sub.piece_doc[tok_piece]
    seg = np.full(B * L, -1, dtype=np.int64)  # piece id per token, to find boundaries
    seg[flat_dst] = tok_piece
    # Padding: positions 0.. inside each row's tail.
    pad_len = L - used
    pad_start = np.arange(B, dtype=np.int64) * L + used
    position_ids = np.zeros(B * L, dtype=np.int64)
    position_ids[flat_dst] = pos
    position_ids[_ranges(pad_start, pad_len)] = _ranges(np.zeros(B, np.int64), pad_len)

    labels = np.full(B * L, IGNORE_INDEX, dtype=np.int64)
    nxt = np.arange(B * L - 1)
    same = (seg[:-1] == seg[1:]) & (seg[:-1] >= 0)
    labels[nxt[same]] = input_ids[1:][same]

    # cu_seqlens: piece segments and padding tails, in flat order.
    seg_starts = np.concatenate([piece_bin * L + col0, pad_start[pad_len > 0]])
    seg_lens = np.concatenate([piece_len, pad_len[pad_len > 0]])
    o = np.argsort(seg_starts, kind="stable")
    cu = np.zeros(len(o) + 1, dtype=np.int32)
    np.cumsum(seg_lens[o], out=cu[1:])
    shape = (B, L)
    return PackedBatch(
        input_ids=input_ids.reshape(shape),
        labels=labels.reshape(shape),
        position_ids=position_ids.reshape(shape),
        doc_ids=doc_ids.reshape(shape),
        loss_mask=(labels != IGNORE_INDEX).reshape(shape),
        cu_seqlens=cu,
        max_seqlen=int(seg_lens.max()) if len(seg_lens) else 0,
        pad_id=pad_id,
    )


def iter_batches(packing: Packing, docs: Ragged, batch_size: int, pad_id: int = 0) -> Iterator[PackedBatch]:
    """PackedBatches of ``batch_size`` consecutive bins (the last may be smaller)."""
    for b0 in range(0, len(packing), batch_size):
        yield packed_batch(packing, docs, slice(b0, b0 + batch_size), pad_id=pad_id)
