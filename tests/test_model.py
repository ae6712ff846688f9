"""The hybrid model's pieces and invariants: layers vs transformers' modules, MoE experts vs a brute
force, packed == separate documents, incremental decoding == full forward, losses, MTP, balancing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from minicoder.config import ModelConfig
from minicoder.model import HybridCache, HybridLM
from minicoder.model.cache import cache_bytes_per_token
from minicoder.model.deltanet import causal_short_conv
from minicoder.model.moe import ExpertLoadTracker, load_balancing_loss
from minicoder.model.norm import GatedRMSNorm, RMSNorm
from minicoder.model.rope import apply_rope, rope_cos_sin
from minicoder.ops.moe import moe_experts, moe_experts_naive

try:  # transformers' Qwen3-Next is the oracle of the parity tests only; the other tests need none of it
    from transformers.models.qwen3_next import modeling_qwen3_next as hf

    HF_MISSING = ""
except ImportError as e:
    hf, HF_MISSING = None, f"transformers' qwen3_next cannot be imported ({e})"
needs_hf = pytest.mark.skipif(hf is None, reason=HF_MISSING)


def tiny(**kw) -> ModelConfig:
    base = dict(
        vocab_size=64, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, rope_theta=10_000.0, max_position_embeddings=256, linear_num_key_heads=2,
        linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8, num_experts=6,
        num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=24,
        num_nextn_predict_layers=1, bos_token_id=None, eos_token_id=None, kernel="torch",
    )
    base.update(kw)
    return ModelConfig(**base)


def make_model(cfg: ModelConfig, seed: int = 0) -> HybridLM:
    torch.manual_seed(seed)
    model = HybridLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))
    return model


# ---------------------------------------------------------------- layers vs transformers' modules
@needs_hf
def test_norms_match_transformers():
    x, z = torch.randn(3, 5, 24), torch.randn(3, 5, 24)
    ours, ref = RMSNorm(24, 1e-6), hf.Qwen3NextRMSNorm(24, eps=1e-6)
    assert torch.count_nonzero(ours.weight) == 0  # zero-centred init
    w = torch.randn(24)
    ours.weight.data.copy_(w)
    ref.weight.data.copy_(w)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-6)
    # (1 + w) scale: with w = 0 the output has unit RMS
    unit = RMSNorm(24)(x)
    torch.testing.assert_close(unit.pow(2).mean(-1), torch.ones(3, 5), atol=1e-4, rtol=0)
    g_ours, g_ref = GatedRMSNorm(24), hf.Qwen3NextRMSNormGated(24, eps=1e-6)
    g_ours.weight.data.copy_(w)
    g_ref.weight.data.copy_(w)
    torch.testing.assert_close(g_ours(x, z), g_ref(x, z), rtol=0, atol=1e-6)
    # bf16 input: computed in float32, cast back
    assert ours(x.bfloat16()).dtype == torch.bfloat16


@needs_hf
def test_partial_rope_matches_transformers():
    b, t, h, d, r = 2, 7, 3, 32, 8
    q, k = torch.randn(b, t, h, d), torch.randn(b, t, h, d)
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6], [5, 6, 7, 0, 1, 2, 3]])
    cos, sin = rope_cos_sin(pos, r, 10_000.0)
    want_q, want_k = hf.apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    torch.testing.assert_close(apply_rope(q, cos, sin), want_q.transpose(1, 2), rtol=0, atol=1e-6)
    torch.testing.assert_close(apply_rope(k, cos, sin), want_k.transpose(1, 2), rtol=0, atol=1e-6)
    out = apply_rope(q, cos, sin)
    assert torch.equal(out[..., r:], q[..., r:])  # only the first r dims rotate
    # relative: <R(m) q, R(n) k> depends only on m - n
    c1, s1 = rope_cos_sin(torch.tensor([[3, 1]]), r, 10_000.0)
    c2, s2 = rope_cos_sin(torch.tensor([[10, 8]]), r, 10_000.0)
    qq, kk = torch.randn(1, 1, 1, r), torch.randn(1, 1, 1, r)
    dot1 = (apply_rope(qq, c1[:, :1], s1[:, :1]) * apply_rope(kk, c1[:, 1:], s1[:, 1:])).sum()
    dot2 = (apply_rope(qq, c2[:, :1], s2[:, :1]) * apply_rope(kk, c2[:, 1:], s2[:, 1:])).sum()
    torch.testing.assert_close(dot1, dot2, atol=1e-5, rtol=0)


def test_short_conv_matches_conv1d_and_respects_documents():
    x, w = torch.randn(2, 11, 6), torch.randn(6, 4)
    want = F.conv1d(x.transpose(1, 2), w[:, None, :], padding=3, groups=6)[..., :11].transpose(1, 2)
    torch.testing.assert_close(causal_short_conv(x, w), want, atol=1e-6, rtol=0)
    # with a history, the output equals the conv over [history, x]
    hist = torch.randn(2, 3, 6)
    full = F.conv1d(torch.cat([hist, x], 1).transpose(1, 2), w[:, None, :], groups=6).transpose(1, 2)
    torch.testing.assert_close(causal_short_conv(x, w, history=hist), full, atol=1e-6, rtol=0)
    # packed: each document convolved alone
    cu = torch.tensor([0, 4, 5, 11])
    doc_pos = torch.tensor([0, 1, 2, 3, 0, 0, 1, 2, 3, 4, 5])
    got = causal_short_conv(x[:1], w, doc_pos=doc_pos)
    parts = [causal_short_conv(x[:1, s:e], w) for s, e in zip(cu[:-1], cu[1:])]
    torch.testing.assert_close(got, torch.cat(parts, 1), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- MoE
@needs_hf
def test_moe_experts_match_transformers_experts_including_idle_ones():
    cfg = hf.Qwen3NextConfig(hidden_size=16, moe_intermediate_size=8, num_experts=6)
    ref = hf.Qwen3NextExperts(cfg)
    torch.manual_seed(0)
    torch.nn.init.normal_(ref.gate_up_proj, std=0.3)
    torch.nn.init.normal_(ref.down_proj, std=0.3)
    x = torch.randn(9, 16)
    ids = torch.tensor([[0, 2]] * 5 + [[2, 5]] * 4)  # experts 1, 3, 4 receive nothing
    w = torch.rand(9, 2)
    got = moe_experts(x, ids, w, ref.gate_up_proj, ref.down_proj)
    torch.testing.assert_close(got, ref(x, ids, w), atol=1e-6, rtol=0)
    # brute force: every (token, slot) through its expert
    brute = torch.zeros_like(x)
    for n in range(9):
        for j in range(2):
            e = ids[n, j]
            gate, up = (ref.gate_up_proj[e] @ x[n]).chunk(2)
            brute[n] += w[n, j] * (ref.down_proj[e] @ (F.silu(gate) * up))
    torch.testing.assert_close(got, brute, atol=1e-5, rtol=0)
    # gradients reach only the experts that got tokens
    gu = ref.gate_up_proj.detach().clone().requires_grad_()
    moe_experts_naive(x, ids, w, gu, ref.down_proj.detach()).sum().backward()
    assert gu.grad[[1, 3, 4]].abs().sum() == 0 and gu.grad[[0, 2, 5]].abs().sum() > 0


def test_moe_experts_bad_shapes_are_named():
    with pytest.raises(ValueError, match="gate_up_proj"):
        moe_experts(torch.randn(3, 8), torch.zeros(3, 2, dtype=torch.long), torch.ones(3, 2),
                    torch.randn(4, 10, 7), torch.randn(4, 8, 5))
    with pytest.raises(ValueError, match="kernel"):
        moe_experts(torch.randn(3, 8), torch.zeros(3, 2, dtype=torch.long), torch.ones(3, 2),
                    torch.randn(4, 10, 8), torch.randn(4, 8, 5), kernel="cuda-magic")


@needs_hf
@pytest.mark.parametrize("norm_topk", [True, False])
def test_sparse_moe_block_matches_transformers(norm_topk):
    cfg = tiny(norm_topk_prob=norm_topk)
    model = make_model(cfg)
    block = model.model.layers[0].mlp
    hcfg = hf.Qwen3NextConfig(**cfg.to_hf_dict())
    ref = hf.Qwen3NextSparseMoeBlock(hcfg)
    ref.load_state_dict(block.state_dict())
    x = torch.randn(2, 5, cfg.hidden_size)
    out, stats = block(x)
    torch.testing.assert_close(out, ref(x), atol=1e-6, rtol=0)
    assert stats.counts.sum().item() == 10 * cfg.num_experts_per_tok
    torch.testing.assert_close(stats.prob_sum.sum(), torch.tensor(10.0))


def router_logits(model: HybridLM, *args, **kw):
    """(model output, [router logits [N, E] of each MoE layer of the main stack]) taken from the gates."""
    from minicoder.model.moe import SparseMoE

    got: list[torch.Tensor] = []
    hooks = [layer.mlp.gate.register_forward_hook(lambda mod, inp, out: got.append(out.detach().double()))
             for layer in model.model.layers if isinstance(layer.mlp, SparseMoE)]
    try:
        out = model(*args, **kw)
    finally:
        for h in hooks:
            h.remove()
    return out, got


def balancing_by_hand(logits: list[torch.Tensor], k: int, f_from: list[torch.Tensor] | None = None) -> float:
    """Switch-style balancing written out, in float64: per layer E * sum_e f_e * P_e with f_e = the share
    of the N * k routing slots that chose expert e (from `f_from`'s tokens when given) and P_e = the
    mean router probability of e; then the mean over layers."""
    losses = []
    for i, lg in enumerate(logits):
        probs = lg.softmax(-1)
        E = probs.shape[-1]
        src = (f_from[i] if f_from is not None else lg).softmax(-1)
        chosen = src.topk(k, dim=-1).indices.reshape(-1)
        f = torch.tensor([(chosen == e).sum().item() for e in range(E)], dtype=torch.float64) / src.shape[0]
        losses.append(E * (f * probs.mean(0)).sum().item())
    return sum(losses) / len(losses)


def test_balancing_loss_equals_the_formula_by_hand_over_several_moe_layers():
    model = make_model(tiny())
    ids = torch.randint(0, 64, (3, 11), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, logits = router_logits(model, ids)
    assert len(logits) == 4 and all(lg.shape == (33, 6) for lg in logits)
    want = balancing_by_hand(logits, k=2)
    assert abs(out.aux_loss.item() - want) < 1e-6 * want
    # the layers differ, so a pooled formula (transformers' form, right only for one layer) does not give it
    pooled = balancing_by_hand([torch.cat(logits)], k=2)
    assert abs(pooled - want) > 1e-4


def test_padding_is_left_out_of_the_balancing_loss():
    """Left-padded rows (batched generation): only real tokens count in f_e and P_e."""
    model = make_model(tiny(), seed=3)
    a, b = torch.randint(1, 64, (1, 10)), torch.randint(1, 64, (1, 6))
    ids = torch.cat([a, torch.cat([torch.zeros(1, 4, dtype=torch.long), b], 1)])
    mask = torch.tensor([[1] * 10, [0] * 4 + [1] * 6])
    with torch.no_grad():
        out, logits = router_logits(model, ids, attention_mask=mask)
    real = mask.reshape(-1).bool()
    want = balancing_by_hand([lg[real] for lg in logits], k=2)
    assert abs(out.aux_loss.item() - want) < 1e-6 * want
    with_padding = balancing_by_hand(logits, k=2)  # what counting the 4 padding tokens would give
    assert abs(with_padding - want) > 1e-4
    assert all(s.tokens.item() == 16 for s in out.router_stats)


def test_global_batch_balancing_equals_balancing_on_the_concatenated_batch():
    model = make_model(tiny())
    a, b = torch.randint(0, 64, (2, 9)), torch.randint(0, 64, (3, 9))
    tracker = ExpertLoadTracker()
    with torch.no_grad():
        _, logits_a = router_logits(model, a, load_tracker=tracker)
        out_b, logits_b = router_logits(model, b, load_tracker=tracker)
        both = model(torch.cat([a, b]))
    # after both micro-batches, f_e is the concatenated batch's
    assert torch.allclose(tracker.load(), both.expert_counts / (5 * 9))
    # the second micro-batch's loss: f_e from both micro-batches' routing, P_e from its own probabilities
    f_from = [torch.cat([la, lb]) for la, lb in zip(logits_a, logits_b)]
    want = balancing_by_hand(logits_b, k=2, f_from=f_from)
    assert abs(out_b.aux_loss.item() - want) < 1e-6 * want
    assert abs(balancing_by_hand(logits_b, k=2) - want) > 1e-5  # the local f_e would give another number
    tracker.reset()
    assert tracker.load() is None
    # a perfectly uniform router gives aux = k (f_e = k/E, P_e = 1/E for every e)
    s = out_b.router_stats[0]
    uniform = type(s)(prob_sum=torch.full((6,), 10 / 6), counts=torch.full((6,), 20 / 6),
                      tokens=torch.tensor(10.0), logits=s.logits)
    torch.testing.assert_close(load_balancing_loss([uniform], 6), torch.tensor(2.0))


# ---------------------------------------------------------------- the whole model
def test_forward_loss_and_backward():
    cfg = tiny()
    model = make_model(cfg).train()
    ids = torch.randint(0, 64, (2, 12))
    labels = ids.clone()
    labels[0, 5] = -100
    out = model(ids, labels=labels)
    assert out.logits.shape == (2, 12, 64) and out.mtp_logits.shape == (2, 12, 64)
    want = F.cross_entropy(out.logits[:, :-1].reshape(-1, 64), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.ce_loss, want)
    want_mtp = F.cross_entropy(out.mtp_logits[:, :-2].reshape(-1, 64), labels[:, 2:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.mtp_loss, want_mtp)
    total = out.ce_loss + cfg.router_aux_loss_coef * out.aux_loss + cfg.mtp_loss_weight * out.mtp_loss
    assert out.loss.item() > total.item()  # plus the MTP layer's own balancing term
    assert out.expert_counts.shape == (4, 6)
    out.loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, no_grad
    # pre-shifted targets give the same loss as HF-convention labels
    shifted = torch.full_like(labels, -100)
    shifted[:, :-1] = labels[:, 1:]
    with torch.no_grad():
        torch.testing.assert_close(model(ids, targets=shifted).loss, model(ids, labels=labels).loss)


def test_mtp_uses_embedding_then_hidden():
    # fc([embed | hidden]): zeroing the second half of fc's input columns removes the hidden path
    model = make_model(tiny())
    ids = torch.randint(0, 64, (1, 8))
    with torch.no_grad():
        base = model(ids, compute_mtp=True).mtp_logits
        model.mtp.fc.weight[:, 32:] = 0  # hidden half
        no_hidden = model(ids, compute_mtp=True).mtp_logits
        # without the hidden path, MTP at t depends only on token t + 1 (and earlier t + 1 tokens)
        ids2 = ids.clone()
        ids2[0, 0] = (ids[0, 0] + 1) % 64  # changes hidden states everywhere, not the t+1 embeddings
        other = model(ids2, compute_mtp=True).mtp_logits
    assert not torch.allclose(base, no_hidden)
    torch.testing.assert_close(no_hidden, other)


@pytest.mark.slow
@pytest.mark.parametrize("layer_types", [None, ["full_attention", "linear_attention", "linear_attention", "full_attention"]])
def test_packed_documents_equal_separate_forwards(layer_types):
    cfg = tiny(**({"layer_types": layer_types} if layer_types else {}))
    model = make_model(cfg, seed=1)
    lengths = [5, 1, 13, 9]
    docs = [torch.randint(0, 64, (1, n), generator=torch.Generator().manual_seed(n)) for n in lengths]
    packed = torch.cat(docs, 1)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()])
    with torch.no_grad():
        out = model(packed, cu_seqlens=cu, labels=packed)
        sep = [model(d, labels=d) for d in docs]
    torch.testing.assert_close(out.logits, torch.cat([s.logits for s in sep], 1), atol=1e-5, rtol=0)
    # MTP at a document's last token sees the next document's first token (it has no target there)
    last = (cu[1:] - 1).tolist()
    keep = [i for i in range(packed.shape[1]) if i not in last]
    sep_mtp = torch.cat([s.mtp_logits for s in sep], 1)
    torch.testing.assert_close(out.mtp_logits[:, keep], sep_mtp[:, keep], atol=1e-5, rtol=0)
    # the loss counts only within-document targets: token-weighted mean of the separate losses
    n_targets = [n - 1 for n in lengths]
    want = sum(s.ce_loss * k for s, k in zip(sep, n_targets) if k > 0) / sum(n_targets)
    torch.testing.assert_close(out.ce_loss, want, atol=1e-5, rtol=0)
    # the data stage's layout: [B, L] rows with cu_seqlens over the flattened tokens
    rows = packed.reshape(2, 14)
    with torch.no_grad():
        out2 = model(rows, cu_seqlens=cu, labels=rows)
    torch.testing.assert_close(out2.logits.reshape(1, 28, -1), out.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(out2.ce_loss, out.ce_loss)


@pytest.mark.slow
def test_incremental_decoding_reproduces_full_forward():
    cfg = tiny(num_hidden_layers=5, layer_types=["linear_attention", "full_attention", "linear_attention",
                                                 "linear_attention", "full_attention"])
    model = make_model(cfg, seed=2)
    ids = torch.randint(0, 64, (2, 20))
    with torch.no_grad():
        full = model(ids).logits
        cache = HybridCache(cfg, batch_size=2)  # grows by doubling (no max_len)
        steps = [model(ids[:, :7], cache=cache).logits]  # prefill a prompt, then one token at a time
        for t in range(7, 20):
            steps.append(model(ids[:, t : t + 1], cache=cache).logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)
    assert cache.seen == 20
    mem = cache.memory_bytes()
    assert mem["total"] == mem["full_attention"] + mem["linear_attention"]
    analytic = cache_bytes_per_token(cfg, dtype_bytes=4)
    kv_capacity = cache[1].k.shape[2]
    assert mem["full_attention"] == analytic["kv_bytes_per_token"] * kv_capacity * 2
    assert mem["linear_attention"] == analytic["deltanet_state_bytes"] * 2


def test_left_padded_rows_equal_unpadded_rows():
    model = make_model(tiny(), seed=3)
    a = torch.randint(1, 64, (1, 10))
    ids = torch.cat([torch.zeros(1, 4, dtype=torch.long), a[:, :6]], 1)  # 4 pads then 6 tokens
    mask = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        alone = model(a[:, :6]).logits
        padded = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(padded[:, 4:], alone, atol=1e-5, rtol=0)


def test_bad_inputs_are_reported():
    model = make_model(tiny())
    ids = torch.randint(0, 64, (1, 6))
    with pytest.raises(ValueError, match="cu_seqlens must rise from 0 to T"):
        model(ids, cu_seqlens=torch.tensor([0, 4]))
    with pytest.raises(ValueError, match="labels must match"):
        model(ids, labels=ids[:, :3])
    with pytest.raises(ValueError, match="input_ids must be"):
        model(ids[0])
    with pytest.raises(ValueError, match="labels .* or targets"):
        model(ids, labels=ids, targets=ids)
    with pytest.raises(ValueError, match="no MTP head"):
        make_model(tiny(num_nextn_predict_layers=0))(ids, compute_mtp=True)


def test_bf16_forward_runs():
    model = make_model(tiny()).to(torch.bfloat16)
    out = model(torch.randint(0, 64, (2, 9)), labels=torch.randint(0, 64, (2, 9)))
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.loss)


@pytest.mark.gpu
def test_gpu_forward_matches_cpu():
    cfg = tiny(kernel="auto")
    model = make_model(cfg)
    ids = torch.randint(0, 64, (2, 70))
    cu = torch.tensor([0, 30, 140])
    with torch.no_grad():
        cpu = model(ids.reshape(1, 140), cu_seqlens=cu).logits
        gpu = model.cuda()(ids.reshape(1, 140).cuda(), cu_seqlens=cu.cuda()).logits.cpu()
    torch.testing.assert_close(gpu, cpu, atol=2e-3, rtol=0)


@pytest.mark.slow
def test_data_stage_packed_batch_equals_separate_documents():
    # The data stage's PackedBatch ([B, L] rows, cu_seqlens over the flattened tokens, pre-shifted
    # labels, padding tails as their own segments) gives the per-document losses.
    from minicoder.data import packing
    model = make_model(tiny(), seed=4)
    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(1, 64, (n,), generator=g).tolist() for n in (7, 3, 11, 5, 2)]
    pb = packing.packed_batch(packing.pack([len(d) for d in docs], 12, method="bfd"), docs)
    t = pb.to_torch()
    with torch.no_grad():
        out = model(t["input_ids"], position_ids=t["position_ids"], cu_seqlens=t["cu_seqlens"], targets=t["labels"])
        sep = [model(torch.tensor([d]), labels=torch.tensor([d])) for d in docs]
    n_targets = [len(d) - 1 for d in docs]
    want = sum(s.ce_loss * k for s, k in zip(sep, n_targets) if k > 0) / sum(n_targets)
    torch.testing.assert_close(out.ce_loss, want, atol=1e-5, rtol=0)
    # each document's logits sit where the packing put it
    doc_ids = torch.as_tensor(pb.doc_ids)
    for i, s in enumerate(sep):
        torch.testing.assert_close(out.logits[doc_ids == i], s.logits[0], atol=1e-5, rtol=0)
