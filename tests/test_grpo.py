"""GRPO: every option of the advantages and the loss against values computed by hand, and the
update step against a re-derivation from per-sample forwards (no packing, plain Python sums)."""

from __future__ import annotations

import math

import pytest
import torch

from minicoder.config import ModelConfig
from minicoder.model import HybridLM
from minicoder.rl.grpo import (
    GRPOConfig,
    Sample,
    frozen_copy,
    group_advantages,
    grpo_step,
    loss_denominator,
    micro_batches,
    prepare,
    shaped_reward,
    surrogate,
)
from minicoder.train.trainer import TrainConfig, Trainer


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny ops: one intra-op thread (several oversubscribe a shared CPU and crawl)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


SQRT_THIRD = math.sqrt(1 / 3)


# --- advantages ----------------------------------------------------------------------------------

@pytest.mark.parametrize("adv, std, rewards, expect", [
    ("mean", False, [1, 0, 0, 1], [0.5, -0.5, -0.5, 0.5]),
    ("loo", False, [1, 0, 0, 1], [2 / 3, -2 / 3, -2 / 3, 2 / 3]),  # 1 - (1+0+0)/3 ; 0 - (1+0+1)/3
    ("mean", True, [1, 0, 0, 1], [0.5 / SQRT_THIRD, -0.5 / SQRT_THIRD, -0.5 / SQRT_THIRD, 0.5 / SQRT_THIRD]),
    ("loo", True, [1, 0, 0, 1], [(2 / 3) / SQRT_THIRD, -(2 / 3) / SQRT_THIRD, -(2 / 3) / SQRT_THIRD,
                                 (2 / 3) / SQRT_THIRD]),
    ("mean", False, [1, 0, 0], [2 / 3, -1 / 3, -1 / 3]),
    ("loo", False, [1, 0, 0], [1.0, -0.5, -0.5]),
    # sample std of [1, 0, 0]: sqrt(((2/3)^2 + 2 (1/3)^2) / 2) = sqrt(1/3)
    ("mean", True, [1, 0, 0], [(2 / 3) / SQRT_THIRD, -(1 / 3) / SQRT_THIRD, -(1 / 3) / SQRT_THIRD]),
    ("mean", False, [0.5, 0.5], [0.0, 0.0]),
    ("loo", True, [1], [0.0]),
])
def test_group_advantages_by_hand(adv, std, rewards, expect):
    cfg = GRPOConfig(advantage=adv, std_norm=std, std_eps=0.0)
    assert group_advantages(rewards, cfg) == pytest.approx(expect, abs=1e-12)


def test_std_eps_is_added_to_the_std():
    got = group_advantages([1, 0], GRPOConfig(std_norm=True, std_eps=0.5))
    std = math.sqrt(0.5)  # sample std of [1, 0]
    assert got == pytest.approx([0.5 / (std + 0.5), -0.5 / (std + 0.5)])


def _s(group, i, reward, finished=True, invalid=0, n=6, policy=(3, 4)):
    mask = [1 if j in policy else 0 for j in range(n)]
    return Sample(group, list(range(10 + i, 10 + i + n)), mask, [-0.5 * m for m in mask], reward, finished, invalid, i)


def test_shaped_reward_unfinished_and_invalid_penalty():
    cfg = GRPOConfig(invalid_penalty=0.1)
    assert shaped_reward(_s("a", 0, 1.0), cfg) == 1.0
    assert shaped_reward(_s("a", 0, 1.0, invalid=2), cfg) == pytest.approx(0.8)
    assert shaped_reward(_s("a", 0, 1.0, finished=False, invalid=2), cfg) == pytest.approx(-0.2)  # forced to 0
    # compact filtering keeps the reward of whatever is left (unfinished ones never reach the loss)
    assert shaped_reward(_s("a", 0, 1.0, finished=False), GRPOConfig(unfinished="mask")) == 1.0


def test_prepare_drops_zero_variance_groups_and_masks_unfinished():
    batch = [_s("A", 0, 1.0), _s("A", 1, 1.0, finished=False), _s("A", 2, 1.0),
             _s("B", 0, 0.0), _s("B", 1, 0.0), _s("C", 0, 1.0), _s("C", 1, 1.0),
             _s("D", 0, 1.0), _s("D", 1, 0.0)]
    p = prepare(batch, GRPOConfig())  # unfinished -> reward 0: A = [1, 0, 1]
    assert [(s.group, s.index) for s in p.samples] == [("A", 0), ("A", 1), ("A", 2), ("D", 0), ("D", 1)]
    assert p.advantages == pytest.approx([1 / 3, -2 / 3, 1 / 3, 0.5, -0.5])
    assert p.stats["zero_variance_groups"] == 2 and p.stats["zero_variance_frac"] == 0.5
    q = prepare(batch, GRPOConfig(unfinished="mask"))  # A = [1, 1] after masking: no signal left
    assert [(s.group, s.index) for s in q.samples] == [("D", 0), ("D", 1)]
    assert q.stats["masked_samples"] == 1 and q.stats["zero_variance_groups"] == 3
    keep = prepare(batch, GRPOConfig(drop_zero_variance=False))
    assert len(keep.samples) == 9 and keep.stats["zero_variance_groups"] == 2
    assert keep.advantages[3:7] == [0.0, 0.0, 0.0, 0.0]
    # the group order of the input is kept; within a group, samples go by index whatever the input order
    r = prepare([_s("D", 1, 0.0), _s("D", 0, 1.0)], GRPOConfig())
    assert [s.index for s in r.samples] == [0, 1] and r.advantages == [0.5, -0.5]


def test_invalid_call_penalty_creates_signal_in_an_all_fail_group():
    p = prepare([_s("A", 0, 0.0, invalid=0), _s("A", 1, 0.0, invalid=3)], GRPOConfig(invalid_penalty=0.1))
    assert p.advantages == pytest.approx([0.15, -0.15])


# --- the per-token surrogate ---------------------------------------------------------------------

def test_surrogate_clip_higher_by_hand():
    old = torch.tensor([-1.0, -1.0, -1.0, -1.0, -1.0])
    ratio = torch.tensor([1.5, 0.5, 0.5, 1.5, 1.1])
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0, 2.0])
    logp = old + ratio.log()
    loss, clipped, kl = surrogate(logp, old, adv, GRPOConfig())  # clip to [0.8, 1.28]
    # r=1.5, A=+1: min(1.5, 1.28) ; r=0.5, A=+1: min(0.5, 0.8) ; r=0.5, A=-1: min(-0.5, -0.8) ;
    # r=1.5, A=-1: min(-1.5, -1.28) ; r=1.1, A=2: inside the range
    assert loss.tolist() == pytest.approx([-1.28, -0.5, 0.8, 1.5, -2.2], abs=1e-6)
    assert clipped.tolist() == [True, False, True, False, False]
    assert kl.tolist() == [0.0] * 5
    sym, _, _ = surrogate(logp, old, adv, GRPOConfig(clip_low=0.2, clip_high=0.2))
    assert sym.tolist()[0] == pytest.approx(-1.2, abs=1e-6)


def test_surrogate_kl_k3_by_hand():
    logp = torch.tensor([-2.0, -1.0])
    ref = torch.tensor([-2.0 + math.log(2.0), -1.0])  # ref - logp = log 2, 0
    adv = torch.tensor([0.0, 0.0])
    loss0, _, kl = surrogate(logp, logp.clone(), adv, GRPOConfig(), ref)
    assert kl.tolist() == pytest.approx([2 - math.log(2) - 1, 0.0], abs=1e-6)
    assert loss0.abs().max() == 0  # logged, not in the loss, with kl_coef 0
    loss1, _, _ = surrogate(logp, logp.clone(), adv, GRPOConfig(kl_coef=0.5), ref)
    assert loss1.tolist() == pytest.approx([0.5 * (1 - math.log(2)), 0.0], abs=1e-6)


def test_micro_batches_keep_the_exact_ids_and_align_targets():
    a = Sample("g", [5, 6, 7, 8, 9], [0, 0, 1, 1, 0], [0, 0, -0.1, -0.2, 0], 1.0)
    b = Sample("g", [3, 4, 2], [0, 1, 1], [0, -0.3, -0.4], 0.0, index=1)
    mbs = micro_batches([a, b], [0.5, -0.5], micro_tokens=100)
    assert len(mbs) == 1
    mb = mbs[0]
    assert mb.input_ids[0].tolist() == [5, 6, 7, 8, 9, 3, 4, 2]
    assert mb.cu_seqlens.tolist() == [0, 5, 8]
    assert mb.position_ids[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    # position t predicts token t + 1: a policy token of the same sample, never across the boundary
    assert mb.targets[0].tolist() == [-100, 7, 8, -100, -100, 4, 2, -100]
    assert mb.old_logp[0].tolist() == pytest.approx([0, -0.1, -0.2, 0, 0, -0.3, -0.4, 0])
    assert mb.adv[0].tolist() == [0.5] * 5 + [-0.5] * 3
    assert len(micro_batches([a, b], [0.5, -0.5], micro_tokens=6)) == 2
    assert loss_denominator([a, b], GRPOConfig(loss_agg="token_mean")) == 4.0
    assert loss_denominator([a, b], GRPOConfig(loss_agg="seq_mean_token_sum_norm", norm_len=10)) == 20.0


def test_sample_rejects_misaligned_fields():
    with pytest.raises(ValueError, match="differ in length"):
        Sample("g", [1, 2], [0, 1], [0.0], 1.0)
    with pytest.raises(ValueError, match="first token"):
        Sample("g", [1, 2], [1, 1], [0.0, 0.0], 1.0)
    with pytest.raises(ValueError, match="advantage"):
        GRPOConfig(advantage="gae")


# --- the update step against a re-derivation -----------------------------------------------------

def tiny_model(seed=0, vocab=48):
    torch.manual_seed(seed)
    cfg = ModelConfig.from_preset("toy", vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                                  layer_types=["linear_attention", "full_attention"], num_attention_heads=2,
                                  num_key_value_heads=1, head_dim=16, linear_num_key_heads=1,
                                  linear_num_value_heads=2, linear_key_head_dim=16, linear_value_head_dim=16,
                                  num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                                  shared_expert_intermediate_size=16, num_nextn_predict_layers=0, kernel="torch")
    return HybridLM(cfg)


def per_sample_logprobs(model, s: Sample) -> list[float]:
    """log p(token j) for every j >= 1 from an unpacked forward of the sample alone (index j-1 -> j)."""
    with torch.no_grad():
        logits = model(torch.tensor([s.tokens])).logits[0]
    lp = torch.log_softmax(logits.double(), -1)
    return [0.0] + [float(lp[j - 1, s.tokens[j]]) for j in range(1, len(s.tokens))]


def make_batch(model, gen=None):
    g = torch.Generator().manual_seed(1) if gen is None else gen
    specs = [("A", 0, 1.0, 7, (3, 4, 5)), ("A", 1, 0.0, 9, (4, 5, 6, 7, 8)), ("A", 2, 0.0, 6, (5,)),
             ("B", 0, 1.0, 8, (2, 3, 6, 7)), ("B", 1, 1.0, 5, (3, 4))]  # B: zero variance
    out = []
    for grp, i, r, n, pol in specs:
        toks = torch.randint(0, 48, (n,), generator=g).tolist()
        mask = [int(j in pol) for j in range(n)]
        s = Sample(grp, toks, mask, [0.0] * n, r, index=i)
        lp = per_sample_logprobs(model, s)
        s.logprobs = [lp[j] if mask[j] else 0.0 for j in range(n)]  # behaviour = current policy
        out.append(s)
    return out


def hand_loss(model, batch, cfg, ref=None, old_shift=0.0):
    """The GRPO loss in plain Python: group stats, ratios, clipping, aggregation."""
    groups: dict[str, list[Sample]] = {}
    for s in batch:
        groups.setdefault(s.group, []).append(s)
    terms, n_seq, n_tok = [], 0, 0
    for members in groups.values():
        rs = [s.reward for s in members]
        if max(rs) == min(rs):
            continue
        mean = sum(rs) / len(rs)
        for s, r in zip(members, rs):
            a = r - mean if cfg.advantage == "mean" else r - (sum(rs) - r) / (len(rs) - 1)
            lp = per_sample_logprobs(model, s)
            rlp = per_sample_logprobs(ref, s) if ref is not None else None
            n_seq += 1
            for j in range(1, len(s.tokens)):
                if not s.mask[j]:
                    continue
                n_tok += 1
                ratio = math.exp(lp[j] - (s.logprobs[j] + old_shift))
                t = -min(ratio * a, min(max(ratio, 1 - cfg.clip_low), 1 + cfg.clip_high) * a)
                if rlp is not None and cfg.kl_coef:
                    d = rlp[j] - lp[j]
                    t += cfg.kl_coef * (math.exp(d) - d - 1)
                terms.append(t)
    denom = n_tok if cfg.loss_agg == "token_mean" else n_seq * cfg.norm_len
    return sum(terms) / denom


def trainer_for(model, lr=1e-2):
    return Trainer(model, None, TrainConfig(steps=10, lr=lr, warmup_steps=0, progress=False, aux_loss_coef=0.0),
                   model_config=model.config)


@pytest.mark.parametrize("cfg", [
    GRPOConfig(loss_agg="token_mean"),
    GRPOConfig(loss_agg="seq_mean_token_sum_norm", norm_len=10),
    GRPOConfig(loss_agg="token_mean", advantage="loo", micro_tokens=8),
])
def test_loss_equals_the_hand_derivation(cfg):
    model = tiny_model()
    batch = make_batch(model)
    m = grpo_step(trainer_for(model), batch, cfg, backward=False)
    want = hand_loss(model, batch, cfg)
    assert m["loss"] == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert m["zero_variance_groups"] == 1 and m["trained_samples"] == 3
    assert m["policy_tokens"] == 3 + 5 + 1 and m["clip_frac"] == 0.0
    assert m["max_ratio_dev"] < 1e-4  # on-policy: behaviour log-probs == the packed forward's
    # closed form at ratio 1: loss = -sum_i A_i n_i / denom, A = r - mean = (2/3, -1/3, -1/3), n = (3, 5, 1)
    if cfg.advantage == "mean":
        num = -(2 / 3 * 3 - 1 / 3 * 5 - 1 / 3 * 1)
        assert m["loss"] == pytest.approx(num / (9 if cfg.loss_agg == "token_mean" else 3 * 10), abs=1e-5)


def test_stale_behaviour_logprobs_are_clipped_like_the_hand_derivation():
    model = tiny_model()
    batch = make_batch(model)
    for s in batch:  # behaviour policy 0.4 nats less likely on every sampled token: ratio e^0.4 = 1.49
        s.logprobs = [lp - 0.4 if m else 0.0 for lp, m in zip(s.logprobs, s.mask)]
    cfg = GRPOConfig(loss_agg="token_mean")
    m = grpo_step(trainer_for(model), batch, cfg, backward=False)
    assert m["loss"] == pytest.approx(hand_loss(model, batch, cfg), rel=1e-4)
    # clipped where A > 0 (ratio above 1.28): the 3 tokens of sample A/0; A < 0 tokens are not clipped
    assert m["clip_frac"] == pytest.approx(3 / 9)


def test_kl_to_the_reference_logged_and_optionally_in_the_loss():
    model = tiny_model()
    ref = frozen_copy(model)
    batch = make_batch(model)
    tr = trainer_for(model, lr=5e-2)
    m0 = grpo_step(tr, batch, GRPOConfig(), ref_model=ref)
    assert m0["kl"] == pytest.approx(0.0, abs=1e-6)  # the first step starts at the reference
    m1 = grpo_step(tr, batch, GRPOConfig(), ref_model=ref, backward=False)
    assert m1["kl"] > 1e-5  # logged although kl_coef = 0
    cfg = GRPOConfig(kl_coef=0.7, loss_agg="token_mean")
    m2 = grpo_step(tr, batch, cfg, ref_model=ref, backward=False)
    assert m2["loss"] == pytest.approx(hand_loss(model, batch, cfg, ref=ref), rel=1e-4)


def test_a_step_raises_the_logprob_of_rewarded_samples_and_skips_empty_batches():
    model = tiny_model()
    batch = make_batch(model)
    tr = trainer_for(model, lr=3e-2)
    before = [sum(per_sample_logprobs(model, s)[j] for j in range(len(s.tokens)) if s.mask[j]) for s in batch[:3]]
    m = grpo_step(tr, batch, GRPOConfig())
    assert m["skipped_update"] == 0 and tr.step == 1 and math.isfinite(m["grad_norm"])
    after = [sum(per_sample_logprobs(model, s)[j] for j in range(len(s.tokens)) if s.mask[j]) for s in batch[:3]]
    assert after[0] > before[0]  # the rewarded sample
    assert after[1] < before[1]  # a failed one
    w = {k: v.clone() for k, v in model.state_dict().items()}
    m = grpo_step(tr, batch[3:], GRPOConfig())  # only the zero-variance group: nothing to learn
    assert m["skipped_update"] == 1 and m["trained_samples"] == 0 and tr.step == 2
    assert all(torch.equal(w[k], v) for k, v in model.state_dict().items())
