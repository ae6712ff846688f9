"""Training data: packed rows in a seeded order, with a position that checkpoints can save.

`PackedDataset` holds tokenized documents (a `Ragged`), their Best-Fit packing into rows of
``seq_len`` (`minicoder.data.packing`), and optionally a per-token 0/1 *trainable* mask per document
(mid-training: 1 on assistant tokens only). Rows are materialised lazily, a batch at a time, with
`packed_batch`, so a corpus is held once as a flat token array.

Loss masks. `packed_batch` already gives pre-shifted labels (``labels[t]`` = the token position t
predicts, -100 on padding and on the last token of every piece, so nothing is trained across a
document boundary). With a trainable mask, ``labels[t]`` is also -100 unless the token it predicts
(position t + 1) is trainable. The mask is gathered into rows with the same `packed_batch` call as
the tokens (the mask values are treated as a second "token" stream).

`RowSampler` walks the rows in a permutation drawn from (seed, epoch), batch after batch; its state is
just (epoch, cursor): that is the "data position" in a checkpoint. With several ranks, each optimizer
step takes ``world * accum * rows`` rows; rank r's micro-batch j is the slice starting at row
``(r * accum + j) * rows`` of the step's rows: the same global batch, however it is split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from minicoder.data.packing import IGNORE_INDEX, PackedBatch, Packing, Ragged, pack, packed_batch


@dataclass
class PackedDataset:
    docs: Ragged  # token ids of every document
    packing: Packing  # rows of seq_len over those documents
    trainable: Ragged | None = None  # optional 0/1 per token of every document (same offsets)
    pad_id: int = 0

    @classmethod
    def from_token_lists(cls, docs: list, seq_len: int, trainable: list | None = None, method: str = "bfd",
                         pad_id: int = 0) -> PackedDataset:
        """Pack lists of token ids (and optional 0/1 masks of the same lengths) into rows of `seq_len`."""
        rag = Ragged.from_list(docs)
        if len(rag) == 0 or int(rag.lengths.sum()) == 0:
            raise ValueError("no tokens to train on (the documents are empty)")
        mask = None
        if trainable is not None:
            mask = Ragged.from_list(trainable)
            if not np.array_equal(mask.lengths, rag.lengths):
                bad = int(np.argmax(mask.lengths != rag.lengths))
                raise ValueError(f"trainable mask of document {bad} has {int(mask.lengths[bad])} entries, "
                                 f"the document {int(rag.lengths[bad])} tokens")
        return cls(rag, pack(rag.lengths, seq_len, method=method), mask, pad_id)

    @property
    def seq_len(self) -> int:
        return self.packing.seq_len

    def __len__(self) -> int:
        return len(self.packing)

    def batch(self, rows: np.ndarray) -> PackedBatch:
        """The PackedBatch of the given row indices, with the trainable mask applied to the labels."""
        b = packed_batch(self.packing, self.docs, rows, pad_id=self.pad_id)
        if self.trainable is not None:
            m = packed_batch(self.packing, self.trainable, rows, pad_id=0).input_ids  # [B, L] 0/1 per token
            target_ok = np.zeros_like(m, dtype=bool)
            target_ok[:, :-1] = m[:, 1:] > 0  # position t is trained only if token t+1 is trainable
            b.labels = np.where(target_ok, b.labels, IGNORE_INDEX)
            b.loss_mask = b.labels != IGNORE_INDEX
        return b

    def useful_tokens(self) -> int:
        return int(self.packing.bin_lengths().sum())


class RowSampler:
    """Rows in a (seed, epoch)-seeded permutation; state = (epoch, cursor), for exact resume."""

    def __init__(self, n_rows: int, seed: int = 0) -> None:
        if n_rows <= 0:
            raise ValueError("the dataset has no rows")
        self.n_rows, self.seed = n_rows, seed
        self.epoch, self.cursor = 0, 0
        self._order = self._perm(0)

    def _perm(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.n_rows)

    def take(self, n: int) -> np.ndarray:
        """The next `n` row indices (crossing into the next epoch's permutation when needed)."""
        out = []
        while n > 0:
            if self.cursor >= self.n_rows:
                self.epoch += 1
                self.cursor = 0
                self._order = self._perm(self.epoch)
            k = min(n, self.n_rows - self.cursor)
            out.append(self._order[self.cursor:self.cursor + k])
            self.cursor += k
            n -= k
        return np.concatenate(out)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "cursor": self.cursor, "seed": self.seed, "n_rows": self.n_rows}

    def load_state_dict(self, state: dict) -> None:
        if state["n_rows"] != self.n_rows or state["seed"] != self.seed:
            raise ValueError(f"checkpoint data position is for {state['n_rows']} rows / seed {state['seed']}, "
                             f"this dataset has {self.n_rows} rows / seed {self.seed}: not the same data")
        self.epoch, self.cursor = state["epoch"], state["cursor"]
        self._order = self._perm(self.epoch)
