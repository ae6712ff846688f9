"""The trainer: it learns real code, masks the loss where it must, and its pieces do what they say."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from minicoder.config import ModelConfig
from minicoder.model import HybridLM
from minicoder.train import PackedDataset, TrainConfig, Trainer, WarmupCosine, target_entropy, unigram_entropy
from minicoder.train.data import RowSampler
from minicoder.train.optim import decay_policy, make_optimizer


def tiny_config(vocab: int, **kw) -> ModelConfig:
    base = dict(vocab_size=vocab, hidden_size=64, num_hidden_layers=2,
                layer_types=["linear_attention", "full_attention"], num_experts=4, num_experts_per_tok=2,
                moe_intermediate_size=64, shared_expert_intermediate_size=64, num_nextn_predict_layers=0,
                kernel="torch")
    base.update(kw)
    return ModelConfig.from_preset("toy", **base)


@pytest.fixture(scope="module")
def stdlib_tok():
    from minicoder.data.corpus import iter_corpus
    from minicoder.data.tokenizer import train_tokenizer

    docs = [d.text for d in iter_corpus("stdlib", max_files=80, seed=0, max_bytes=500_000)]
    return train_tokenizer(docs, vocab_size=512), docs


# --- learning ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_loss_falls_clearly_below_unigram_entropy_on_stdlib(stdlib_tok):
    tok, docs = stdlib_tok
    rag = tok.encode_documents(docs)
    ds = PackedDataset.from_token_lists([rag[i] for i in range(len(rag))], 96, pad_id=tok.pad_id)
    H = target_entropy(ds)
    # the yardstick is the entropy of exactly the targets; cross-check it against the raw stream
    assert abs(H - unigram_entropy(rag.tokens)) < 0.05
    torch.manual_seed(0)
    model = HybridLM(tiny_config(tok.vocab_size))
    steps = 120
    assert steps * 4 < len(ds)  # less than one epoch: every batch is unseen when its loss is measured
    tr = Trainer(model, ds, TrainConfig(steps=steps, rows=4, lr=1e-2, warmup_steps=10, progress=False))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: one thread is as fast and does not fight other processes
    try:
        t0 = time.perf_counter()
        recs = tr.fit()
        print(f"{steps} steps in {time.perf_counter() - t0:.1f}s")
    finally:
        torch.set_num_threads(threads)
    first = recs[0]["loss"]
    last = float(np.mean([r["loss"] for r in recs[-15:]]))
    assert abs(first - math.log(tok.vocab_size)) < 0.3  # starts near uniform
    assert last < H - 0.6, (first, last, H)  # clearly below what a context-free model can reach
    assert all(np.isfinite(r["grad_norm"]) for r in recs)
    load = np.array(recs[-1]["expert_load"])  # [layers, E]
    assert load.shape == (2, 4) and np.allclose(load.sum(-1), 1.0)


# --- masks ----------------------------------------------------------------------------------------

def _targets(tr: Trainer, ds: PackedDataset, rows) -> tuple[np.ndarray, np.ndarray]:
    b = ds.batch(np.asarray(rows))
    t = tr._tensors(b)
    tgt = t["targets"][0].numpy()  # what the trainer's loss reads (pre-shifted)
    return tgt, b.input_ids.reshape(-1)


def test_no_loss_across_document_boundaries_or_on_padding():
    rng = np.random.default_rng(0)
    docs = [rng.integers(3, 50, size=n).tolist() for n in (5, 17, 9, 30, 3, 12, 40, 8)]
    ds = PackedDataset.from_token_lists(docs, 32, method="bfd")
    model = HybridLM(tiny_config(64))
    tr = Trainer(model, ds, TrainConfig(steps=1, progress=False))
    rows = np.arange(len(ds))
    tgt, ids = _targets(tr, ds, rows)
    b = ds.batch(rows)
    doc = b.doc_ids.reshape(-1)
    pos = b.position_ids.reshape(-1)
    for t in range(len(tgt)):
        same_piece = t + 1 < len(tgt) and doc[t] >= 0 and doc[t + 1] == doc[t] and pos[t + 1] == pos[t] + 1
        if same_piece:
            assert tgt[t] == ids[t + 1]
        else:
            assert tgt[t] == -100, t
    # every in-document next-token pair is trained: tokens - pieces targets in all
    assert (tgt != -100).sum() == sum(len(d) for d in docs) - ds.packing.stats.n_pieces


def test_mid_training_loss_only_on_assistant_tokens():
    from minicoder.agent.chat import encode_chat
    from minicoder.data.tokenizer import train_tokenizer

    convs = [[{"role": "user", "content": f"question {i}"},
              {"role": "assistant", "content": f"answer {i}", "tool_calls": [{"name": "run", "arguments": {"x": i}}]},
              {"role": "tool", "content": "ok " * i},
              {"role": "assistant", "content": f"done {i}"}] for i in range(6)]
    from minicoder.agent.chat import render_chat

    tok = train_tokenizer([render_chat(c) for c in convs] * 3, vocab_size=300)
    enc = [encode_chat(c, tok) for c in convs]
    ids = [e[0] for e in enc]
    masks = [e[1] for e in enc]
    ds = PackedDataset.from_token_lists(ids, 96, trainable=masks)
    tr = Trainer(HybridLM(tiny_config(tok.vocab_size)), ds, TrainConfig(steps=1, progress=False))
    rows = np.arange(len(ds))
    tgt, flat_ids = _targets(tr, ds, rows)
    # brute force: the trainable flag of the token each position predicts, via the mask gathered by hand
    b = ds.batch(rows)
    flat_doc, flat_pos = b.doc_ids.reshape(-1), b.position_ids.reshape(-1)
    # position of a token inside its document = piece start + position in the piece
    starts = {}
    for d, s, _ in (p for bin_ in ds.packing.bins() for p in bin_):
        starts.setdefault(d, []).append(s)
    n_trained = 0
    for t in range(len(tgt) - 1):
        d = flat_doc[t]
        ok = d >= 0 and flat_doc[t + 1] == d and flat_pos[t + 1] == flat_pos[t] + 1
        if ok:
            # find the piece start: the unique start s with ids[d][s + pos] == token
            k = [s for s in starts[d] if s + flat_pos[t + 1] < len(ids[d])
                 and ids[d][s + flat_pos[t + 1]] == flat_ids[t + 1] and ids[d][s + flat_pos[t]] == flat_ids[t]]
            ok = any(masks[d][s + flat_pos[t + 1]] == 1 for s in k)
        if ok:
            assert tgt[t] == flat_ids[t + 1]
            n_trained += 1
        else:
            assert tgt[t] == -100, t
    # a piece's first token is never a target (nothing before it in the row belongs to its document)
    assert n_trained == sum(sum(masks[d][s + 1:e]) for bin_ in ds.packing.bins() for d, s, e in bin_)
    assert ds.packing.stats.docs_split > 0  # the case above was exercised
    im_start = tok.token_id("<|im_start|>")
    assert im_start not in set(tgt[tgt != -100].tolist())  # role headers never trained


def test_a_loss_on_masked_tokens_does_not_move_the_weights():
    """Zero weight, checked through the gradient: all-masked labels give exactly zero LM gradient."""
    docs = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    ds = PackedDataset.from_token_lists(docs, 16, trainable=[[0] * 6, [0] * 3])
    model = HybridLM(tiny_config(32))
    tr = Trainer(model, ds, TrainConfig(steps=1, aux_loss_coef=0.0, progress=False))
    rec = tr.train_step()
    assert rec["tokens"] == 0 and math.isnan(rec["loss"]) and rec["grad_norm"] == 0.0


# --- pieces ---------------------------------------------------------------------------------------

def test_schedule_known_values():
    s = WarmupCosine(peak_lr=1.0, total_steps=110, warmup_steps=10, min_ratio=0.1)
    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0)
    assert s(10) == pytest.approx(1.0)
    assert s(60) == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert s(110) == pytest.approx(0.1) and s(500) == pytest.approx(0.1)
    assert all(s(i) >= s(i + 1) for i in range(10, 120))
    with pytest.raises(ValueError, match="warmup_steps"):
        WarmupCosine(1.0, 10, 20)


def test_weight_decay_policy():
    model = HybridLM(tiny_config(64))
    pol = decay_policy(model)
    assert pol["model.layers.0.input_layernorm.weight"] is True  # zero-centred: decays toward scale 1
    assert pol["model.norm.weight"] is True
    assert pol["model.layers.0.linear_attn.norm.weight"] is False  # gated norm, scale init 1
    assert pol["model.layers.0.linear_attn.A_log"] is False and pol["model.layers.0.linear_attn.dt_bias"] is False
    assert pol["model.embed_tokens.weight"] is False
    assert pol["lm_head.weight"] is True and pol["model.layers.1.mlp.experts.gate_up_proj"] is True
    assert set(pol) == {n for n, _ in model.named_parameters()}
    # decay of a zero-centred norm weight with no gradient: w shrinks toward 0 by lr * wd per step
    opt = make_optimizer(model, lr=0.1, weight_decay=0.5)
    w = model.model.norm.weight
    with torch.no_grad():
        w.fill_(1.0)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.allclose(w, torch.full_like(w, 1.0 - 0.1 * 0.5))
    emb = model.model.embed_tokens.weight.clone()
    opt.step()
    assert torch.equal(emb, model.model.embed_tokens.weight)


def test_sampler_is_a_permutation_per_epoch_and_resumable():
    s = RowSampler(10, seed=3)
    a = np.concatenate([s.take(4) for _ in range(5)])  # 2 epochs
    assert sorted(a[:10].tolist()) == list(range(10)) and sorted(a[10:].tolist()) == list(range(10))
    s2 = RowSampler(10, seed=3)
    s2.take(7)
    state = s2.state_dict()
    s3 = RowSampler(10, seed=3)
    s3.load_state_dict(state)
    assert np.array_equal(s3.take(13), a[7:20])
    with pytest.raises(ValueError, match="not the same data"):
        RowSampler(11, seed=3).load_state_dict(state)


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="TrainConfig.rows"):
        TrainConfig(rows=0)
    with pytest.raises(ValueError, match="trainable mask of document 1"):
        PackedDataset.from_token_lists([[1, 2], [3, 4, 5]], 8, trainable=[[0, 1], [1]])


@pytest.mark.gpu
def test_bf16_training_on_gpu_learns():
    """On CUDA: bf16 autocast over float32 master weights; loss finite and falling on a repeated batch."""
    docs = [list(range(1, 60)) * 3 for _ in range(8)]
    ds = PackedDataset.from_token_lists(docs, 128)
    torch.manual_seed(0)
    model = HybridLM(tiny_config(64, kernel="auto")).cuda()
    tr = Trainer(model, ds, TrainConfig(steps=30, rows=2, lr=1e-2, warmup_steps=3, progress=False))
    assert tr.autocast
    recs = tr.fit()
    assert all(math.isfinite(r["loss"]) for r in recs)
    assert next(model.parameters()).dtype == torch.float32
    assert recs[-1]["loss"] < 0.5 * recs[0]["loss"]


def test_token_loss_sum_with_weights_is_the_weighted_cross_entropy():
    """The loss the RL stage reuses: per-token weights multiply each position's cross-entropy."""
    from minicoder.train.losses import count_targets, token_logprobs, token_loss_sum

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 7, 11, generator=g)
    targets = torch.tensor([[3, -100, 5, 0, -100, 10, 2]])
    w = torch.tensor([[0.5, 9.0, -1.0, 2.0, 9.0, 1.0, 0.25]])
    logp = torch.log_softmax(logits, -1)[0]
    by_hand = sum(-float(w[0, t]) * float(logp[t, targets[0, t]]) for t in range(7) if targets[0, t] != -100)
    assert abs(float(token_loss_sum(logits, targets, w)) - by_hand) < 1e-5
    plain = sum(-float(logp[t, targets[0, t]]) for t in range(7) if targets[0, t] != -100)
    assert abs(float(token_loss_sum(logits, targets)) - plain) < 1e-5
    assert abs(float(token_loss_sum(logits, targets, torch.ones(1, 7))) - plain) < 1e-5
    lp = token_logprobs(logits, targets)
    assert lp[0, 1] == 0 and abs(float(lp[0, 2]) - float(logp[2, 5])) < 1e-6
    assert count_targets(targets) == 5
