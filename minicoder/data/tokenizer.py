"""Byte-level BPE tokenizer: train one on a code corpus, or load a real Qwen ``tokenizer.json``.

Design choices:
- Byte-level (GPT-2 / Qwen style): text is UTF-8 bytes mapped to 256 printable symbols, and BPE
  merges those, so every string round-trips exactly, whatever its script or encoding quirks.
  There is deliberately no Unicode normaliser (Qwen's tokenizer.json has NFC, which would change
  non-NFC text): for code, exact bytes matter more than canonical forms.
- Pre-tokenisation uses Qwen2/Qwen3's split pattern (contractions, letters, single digits, runs of
  punctuation, newlines, whitespace), so a toy tokenizer cuts text the way the real one does.
- Special tokens follow Qwen's conventions so the format the real model is trained on can be taught
  at toy size: ``<|endoftext|>`` ends a document, ``<|im_start|>``/``<|im_end|>`` delimit chat turns,
  ``<tool_call>``/``<tool_response>`` wrap agent tool calls and observations, plus the
  fill-in-the-middle and repository tokens of Qwen coder models.
- ``CodeTokenizer`` is a thin wrapper over ``tokenizers.Tokenizer`` (the Rust library; fast batch
  encoding on all cores). By default the strings of special and added tokens in text are *not*
  parsed as those tokens when encoding raw corpus text (``allow_special=False``), so a source file
  that happens to contain ``<|im_end|>`` cannot inject a turn boundary. That covers added tokens that
  a tokenizer.json does not mark special, too (Qwen's ``<tool_call>``, ``<|fim_prefix|>``, ...), which
  the Rust library would otherwise still match: such an occurrence is cut after its first character
  (`split_at_tokens`) and the pieces encoded one by one. Chat templates ask for the special ids of
  the tokens they emit themselves (``allow_special=True`` on the template's own text only).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

from minicoder.data.packing.batch import Ragged

# Qwen2 / Qwen3 pre-tokenisation regex (as in their tokenizer.json "Split" pre-tokenizer).
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

EOS_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)
N_BYTES = 256


def split_at_tokens(text: str, tokens: Iterable[str]) -> list[str]:
    """`text` cut into pieces none of which contains any of `tokens` (each occurrence is cut after
    its first character). Encoding the pieces one by one can then never produce those tokens' ids,
    and joining them gives `text` back. One piece, the text itself, when no token occurs in it."""
    toks = sorted({t for t in tokens if len(t) > 1}, key=len, reverse=True)
    if not any(t in text for t in toks):
        return [text]
    pattern = re.compile("|".join(re.escape(t) for t in toks))
    pieces, start = [], 0
    while (m := pattern.search(text, start)) is not None:
        # the leftmost occurrence at or after `start`: no occurrence fits inside text[start : m.start() + 1]
        pieces.append(text[start:m.start() + 1])
        start = m.start() + 1
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def _new_byte_level_bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


class CodeTokenizer:
    """Wrapper with the few things the project needs: encode / decode / encode_batch, ``eos_id``
    (the document separator ``<|endoftext|>``), ``pad_id``, ``vocab_size``, ``special_ids``."""

    def __init__(self, tokenizer: Tokenizer, eos_token: str = EOS_TOKEN, pad_token: str | None = None,
                 config: dict | None = None):
        self.hf = tokenizer
        self.config = dict(config or {})
        added = tokenizer.get_added_tokens_decoder()
        specials = {t.content: i for i, t in added.items() if t.special}
        self.special_ids: dict[str, int] = dict(sorted(specials.items(), key=lambda kv: kv[1]))
        # added tokens the library matches in text even with encode_special_tokens on (Qwen's tool tags)
        self._not_special = tuple(t.content for t in added.values() if not t.special)
        self.added_ids: dict[str, int] = {t.content: i for i, t in sorted(added.items())}
        eos = tokenizer.token_to_id(eos_token)
        if eos is None:
            raise ValueError(f"the tokenizer has no end-of-document token {eos_token!r}")
        self.eos_token = eos_token
        self.eos_id: int = eos
        self.pad_token = pad_token or eos_token
        pad = tokenizer.token_to_id(self.pad_token)
        if pad is None:
            raise ValueError(f"the tokenizer has no padding token {self.pad_token!r}")
        self.pad_id: int = pad
        self._lock = threading.Lock()  # encode_special_tokens is a switch on the shared Rust object

    def __getstate__(self) -> dict:  # pickling (Ray actors, worker processes): a lock is per process
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # ---- properties
    @property
    def vocab_size(self) -> int:
        """Number of ids, added/special tokens included (the embedding table needs this many rows)."""
        return self.hf.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int:
        i = self.hf.token_to_id(token)
        if i is None:
            raise KeyError(f"unknown token {token!r}")
        return i

    # ---- encode / decode
    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Token ids of ``text``; special-token strings are parsed as specials only if
        ``allow_special`` (for chat templates), else encoded as ordinary text."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        return self.encode_batch([text], allow_special=allow_special)[0]

    def encode_batch(self, texts: Sequence[str], allow_special: bool = False) -> list[list[int]]:
        """``encode`` over many texts, in parallel in Rust."""
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("encode_batch expects a sequence of str")
        pieces = [[t] if allow_special else split_at_tokens(t, self._not_special) for t in texts]
        flat = [p for ps in pieces for p in ps]
        with self._lock:
            self.hf.encode_special_tokens = not allow_special
            enc = self.hf.encode_batch(flat, add_special_tokens=False) if len(flat) > 1 else \
                [self.hf.encode(flat[0], add_special_tokens=False)] if flat else []
        out, i = [], 0
        for ps in pieces:
            ids: list[int] = []
            for e in enc[i:i + len(ps)]:
                ids.extend(e.ids)
            out.append(ids)
            i += len(ps)
        return out

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special)

    def encode_documents(self, texts: Iterable[str], append_eos: bool = True, batch_size: int = 256,
                         progress: bool = False):
        """Tokenize documents into a ``Ragged`` array (flat ids + offsets), each ending with
        ``<|endoftext|>`` when ``append_eos`` (so the model learns where documents end)."""
        chunks: list[np.ndarray] = []
        lengths: list[int] = []
        batch: list[str] = []
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(desc="tokenizing", unit="doc")

        def flush():
            for ids in self.encode_batch(batch):
                if append_eos:
                    ids.append(self.eos_id)
                chunks.append(np.asarray(ids, dtype=np.int64))
                lengths.append(len(ids))
            if bar is not None:
                bar.update(len(batch))
            batch.clear()

        for t in texts:
            batch.append(t)
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
        if bar is not None:
            bar.close()
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
        return Ragged(flat, offsets)

    # ---- persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` (a file path, or a folder to put it in) and, in a folder,
        a ``tokenizer_config.json`` naming the eos / pad tokens."""
        p = Path(path)
        if p.suffix != ".json":
            p.mkdir(parents=True, exist_ok=True)
            cfg = {"eos_token": self.eos_token, "pad_token": self.pad_token, **{
                k: v for k, v in self.config.items() if k not in ("eos_token", "pad_token")}}
            (p / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
            p = p / "tokenizer.json"
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(p))
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> CodeTokenizer:
        """Load a ``tokenizer.json`` file, or a checkpoint folder (see ``from_pretrained``)."""
        p = Path(path)
        if p.is_dir():
            return cls.from_pretrained(p)
        if not p.is_file():
            raise FileNotFoundError(f"no tokenizer at {p}")
        return cls(_read_tokenizer_json(p))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> CodeTokenizer:
        """Load a checkpoint folder (e.g. a Qwen3-Coder-Next download): ``tokenizer.json`` plus, if
        present, ``tokenizer_config.json``. The document separator is ``<|endoftext|>`` when the
        vocabulary has it (Qwen's pretraining convention), else the config's ``eos_token``; padding
        is the config's ``pad_token`` (Qwen: ``<|endoftext|>``) or eos."""
        folder = Path(folder)
        tj = folder / "tokenizer.json"
        if not tj.is_file():
            raise FileNotFoundError(f"{folder} has no tokenizer.json")
        tok = _read_tokenizer_json(tj)
        cfg: dict = {}
        cj = folder / "tokenizer_config.json"
        if cj.is_file():
            try:
                cfg = json.loads(cj.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{cj} is not valid JSON: {e}") from e

        def tok_name(v):
            return v.get("content") if isinstance(v, dict) else v

        eos = EOS_TOKEN if tok.token_to_id(EOS_TOKEN) is not None else tok_name(cfg.get("eos_token"))
        if eos is None:
            raise ValueError(f"cannot tell the end-of-document token of {folder}: no {EOS_TOKEN} and no eos_token")
        pad = tok_name(cfg.get("pad_token")) or eos
        return cls(tok, eos_token=eos, pad_token=pad, config=cfg)

    def __repr__(self) -> str:
        return f"CodeTokenizer(vocab_size={self.vocab_size}, eos={self.eos_token!r}:{self.eos_id}, specials={len(self.special_ids)})"


def _read_tokenizer_json(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises a bare Exception with its parse error
        raise ValueError(f"cannot read tokenizer file {path}: {e}") from e


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 4096,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
    min_frequency: int = 2,
    length: int | None = None,
    show_progress: bool = False,
) -> CodeTokenizer:
    """Train a byte-level BPE on ``texts`` (strings or ``Document``s) with HF ``tokenizers``.

    vocab_size counts everything: the special tokens (ids 0..k-1), the 256 byte symbols, and the
    learned merges. It may come out smaller if the corpus has too few repeated pairs.
    """
    special_tokens = list(special_tokens)
    if EOS_TOKEN not in special_tokens:
        raise ValueError(f"special_tokens must include the document separator {EOS_TOKEN!r}")
    if len(set(special_tokens)) != len(special_tokens):
        raise ValueError("special_tokens has duplicates")
    floor = N_BYTES + len(special_tokens)
    if vocab_size <= floor:
        raise ValueError(f"vocab_size must exceed {floor} (256 byte symbols + {len(special_tokens)} special tokens), got {vocab_size}")
    tok = _new_byte_level_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    n_seen = 0

    def as_text(it):
        nonlocal n_seen
        for t in it:
            n_seen += 1
            yield t if isinstance(t, str) else t.text

    tok.train_from_iterator(as_text(texts), trainer=trainer, length=length)
    if n_seen == 0:
        raise ValueError("cannot train a tokenizer on an empty corpus")
    return CodeTokenizer(tok)


def toy_tokenizer(vocab_size: int = 4096, max_files: int = 400, seed: int = 0) -> CodeTokenizer:
    """The toy config's tokenizer: BPE trained on a seeded sample of the standard library."""
    from .corpus import iter_corpus

    return train_tokenizer((d.text for d in iter_corpus("stdlib", max_files=max_files, seed=seed)), vocab_size=vocab_size)
