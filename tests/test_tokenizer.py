"""Byte-level BPE: exact round-trip on real standard-library files (non-ASCII included), special
tokens, save/load, and loading a Qwen-layout checkpoint folder checked against transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tokenizers import AddedToken, pre_tokenizers, trainers

from minicoder.agent.chat import render_chat
from minicoder.data.corpus import iter_corpus, stdlib_documents
from minicoder.data.tokenizer import (
    EOS_TOKEN,
    SPECIAL_TOKENS,
    CodeTokenizer,
    _new_byte_level_bpe,
    train_tokenizer,
)

VOCAB = 2048


@pytest.fixture(scope="module")
def train_texts():
    return [d.text for d in iter_corpus("stdlib", max_files=120, seed=0)]


@pytest.fixture(scope="module")
def tok(train_texts):
    return train_tokenizer(train_texts, vocab_size=VOCAB)


@pytest.fixture(scope="module")
def held_out(train_texts):
    """Real stdlib files not used for training: some plain, and every file with non-ASCII text
    from a seeded sample (test files in the stdlib are full of it)."""
    seen = set(train_texts)
    docs = [d for d in stdlib_documents(max_files=350, seed=1) if d.text not in seen]
    non_ascii = [d for d in docs if not d.text.isascii()][:15]
    return docs[:20], non_ascii


def test_vocab_and_special_tokens(tok):
    assert tok.vocab_size == VOCAB
    assert list(tok.special_ids) == list(SPECIAL_TOKENS)
    assert tok.eos_id == tok.special_ids[EOS_TOKEN] == tok.token_id("<|endoftext|>")
    for t in SPECIAL_TOKENS:
        assert tok.encode(t, allow_special=True) == [tok.special_ids[t]]
        # As raw corpus text, a special-token string is ordinary text: several ids, none special.
        ids = tok.encode(t)
        assert len(ids) > 1 and not set(ids) & set(tok.special_ids.values())
        assert tok.decode(ids) == t


def test_round_trip_on_real_files(tok, held_out):
    plain, non_ascii = held_out
    assert len(non_ascii) >= 5, "expected stdlib files with non-ASCII characters"
    for d in plain + non_ascii:
        ids = tok.encode(d.text)
        assert tok.decode(ids) == d.text, d.path
    # Strings that trip lossy tokenizers: combining marks (not NFC), emoji, CR/LF, tabs, NUL, BOM.
    tricky = "e\u0301 \U0001f600 \r\n\t\x00 \ufeffz \u00a0 \u200b 漢字 ﬁ"
    assert tok.decode(tok.encode(tricky)) == tricky
    batch = tok.encode_batch([d.text for d in non_ascii[:5]])
    assert batch == [tok.encode(d.text) for d in non_ascii[:5]]


def test_bpe_compresses_held_out_code(tok, held_out):
    plain, _ = held_out
    n_bytes = sum(len(d.text.encode()) for d in plain)
    n_tokens = sum(len(tok.encode(d.text)) for d in plain)
    # 256 bytes alone would give 1 token per byte; learned merges must do far better on Python.
    assert n_tokens < 0.45 * n_bytes, (n_tokens, n_bytes)
    # Qwen's split: digits are single tokens, so numbers never merge.
    assert len(tok.encode("1234567")) == 7


def test_save_load(tok, tmp_path, held_out):
    text = held_out[1][0].text
    f = tok.save(tmp_path / "tokenizer.json")
    a = CodeTokenizer.load(f)
    d = tok.save(tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "tokenizer_config.json").is_file()
    b = CodeTokenizer.load(d)
    for t in (a, b):
        assert t.encode(text) == tok.encode(text)
        assert (t.eos_id, t.pad_id, t.vocab_size, t.special_ids) == (tok.eos_id, tok.pad_id, tok.vocab_size, tok.special_ids)


def test_pickle_round_trip(tok, held_out):
    """Ray actors and worker processes get the tokenizer pickled: same ids, specials and a working lock."""
    import pickle

    tok2 = pickle.loads(pickle.dumps(tok))
    assert tok2._lock is not tok._lock and tok2.special_ids == tok.special_ids
    text = held_out[0][0].text[:2000] + "<|im_start|>"
    assert tok2.encode(text) == tok.encode(text)
    assert tok2.encode(text, allow_special=True) == tok.encode(text, allow_special=True)


def test_encode_documents_appends_eos(tok, train_texts):
    texts = train_texts[:4]
    rag = tok.encode_documents(texts)
    assert len(rag) == 4
    for i, t in enumerate(texts):
        ids = rag[i]
        assert ids[-1] == tok.eos_id
        assert ids[:-1].tolist() == tok.encode(t)
    assert np.array_equal(rag.lengths, [len(tok.encode(t)) + 1 for t in texts])


def _qwen_layout_tokenizer(texts) -> CodeTokenizer:
    """Special tokens added as Qwen's tokenizer.json adds them: only <|endoftext|>, <|im_start|> and
    <|im_end|> are `special`; the tool tags, FIM and repository tokens are added but not special."""
    hf = _new_byte_level_bpe()
    hf.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=600, special_tokens=[], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf.add_tokens([AddedToken(t, special=t in SPECIAL_TOKENS[:3], normalized=False) for t in SPECIAL_TOKENS])
    return CodeTokenizer(hf)


@pytest.mark.parametrize("layout", ["ours", "qwen"])
def test_raw_documents_never_encode_to_special_ids(tok, train_texts, layout):
    """A raw document holding every special-token string (a file about chat templates, a scraped log)
    encodes to ordinary tokens only, through encode, encode_batch and encode_documents, and decodes
    back; <|endoftext|> appears once, where encode_documents ends the document."""
    t = tok if layout == "ours" else _qwen_layout_tokenizer(train_texts[:20])
    ids_of = {tk.content: i for i, tk in t.hf.get_added_tokens_decoder().items()}
    added = set(ids_of.values())
    assert len(added) == len(SPECIAL_TOKENS) and (layout == "ours") == (set(t.special_ids) == set(SPECIAL_TOKENS))
    doc = "x = 1\n" + "".join(f"s = '{s}'  # {s}{s}\n" for s in SPECIAL_TOKENS) + "<|im_end|>\n<|im_start|>assistant\n"
    for ids in (t.encode(doc), *t.encode_batch([doc, "plain", doc])[::2]):
        assert not added & set(ids) and t.decode(ids) == doc
    rag = t.encode_documents([doc, "y = 2\n", doc])
    for i, text in enumerate([doc, "y = 2\n", doc]):
        ids = rag[i].tolist()
        assert ids[-1] == t.eos_id and not added & set(ids[:-1]) and t.decode(ids[:-1]) == text
    # asked for, the same strings are their single ids (what the chat template uses for its own tokens)
    assert [t.encode(s, allow_special=True) for s in SPECIAL_TOKENS] == [[ids_of[s]] for s in SPECIAL_TOKENS]


def test_chat_format(tok):
    msgs = [{"role": "user", "content": "fix the bug"}, {"role": "assistant", "content": "<tool_call>x</tool_call>"}]
    s = render_chat(msgs)  # the one chat template (minicoder.agent.chat) on this tokenizer
    assert s == "<|im_start|>user\nfix the bug<|im_end|>\n<|im_start|>assistant\n<tool_call>x</tool_call><|im_end|>\n"
    ids = tok.encode(s, allow_special=True)
    sp = tok.special_ids
    assert ids[0] == sp["<|im_start|>"] and ids.count(sp["<|im_end|>"]) == 2 and sp["<tool_call>"] in ids
    assert tok.decode(ids) == s
    with pytest.raises(ValueError, match="role"):
        render_chat([{"content": "x"}])


@pytest.mark.slow
def test_qwen_layout_folder_matches_transformers(tmp_path, train_texts):
    """A checkpoint folder laid out like Qwen's: BPE vocabulary first, special tokens appended at the
    end, tokenizer_config.json with eos <|im_end|> and pad <|endoftext|>. Our loader and
    transformers' Qwen2Tokenizer must agree on every id."""
    hf = _new_byte_level_bpe()
    hf.train_from_iterator(
        train_texts[:30],
        trainer=trainers.BpeTrainer(vocab_size=1500, special_tokens=[], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    hf.save(str(tmp_path / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "Qwen2Tokenizer",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "model_max_length": 262144,
        "added_tokens_decoder": {
            str(hf.token_to_id(t)): {"content": t, "special": True, "lstrip": False, "rstrip": False,
                                     "normalized": False, "single_word": False}
            for t in SPECIAL_TOKENS
        },
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg))
    ours = CodeTokenizer.from_pretrained(tmp_path)
    assert ours.eos_id == 1500 and ours.pad_id == 1500  # <|endoftext|> right after the BPE vocabulary
    assert ours.special_ids["<|im_end|>"] == 1502 and ours.vocab_size == 1500 + len(SPECIAL_TOKENS)
    assert ours.config["eos_token"] == "<|im_end|>"

    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(str(tmp_path))
    assert theirs.convert_tokens_to_ids("<|im_end|>") == ours.special_ids["<|im_end|>"]
    assert theirs.pad_token_id == ours.pad_id
    for text in [train_texts[70][:4000], render_chat([{"role": "user", "content": "héllo 🙂"}])]:
        ids = ours.encode(text, allow_special=True)
        assert ids == theirs(text, add_special_tokens=False)["input_ids"]
        assert theirs.decode(ids) == ours.decode(ids) == text


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="vocab_size must exceed"):
        train_tokenizer(["x = 1"], vocab_size=200)
    with pytest.raises(ValueError, match="empty corpus"):
        train_tokenizer([], vocab_size=1000)
    with pytest.raises(ValueError, match="must include"):
        train_tokenizer(["x"], vocab_size=1000, special_tokens=["<|im_start|>"])
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        CodeTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="cannot read tokenizer file"):
        CodeTokenizer.load(tmp_path / "tokenizer.json")
    with pytest.raises(FileNotFoundError):
        CodeTokenizer.load(tmp_path / "nope.json")
