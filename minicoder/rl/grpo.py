"""GRPO for agent trajectories: group advantages, the clipped token-level loss, one update step.

What this implementation simplifies, up front (compare DeepSWE's "GRPO++", SkyRL, verl, TRL):
  1. No value model and no GAE: the baseline is the group of G rollouts of the same task
     (advantage = reward - group mean, or leave-one-out), one scalar per trajectory, given to every
     policy token of it. No per-turn credit assignment.
  2. Rewards are per trajectory: 1 when the hidden tests pass, else 0. The per-call penalty for
     invalid tool calls is subtracted from that reward (``r - penalty * n_invalid``), not put on the
     tokens of the bad call as Qwen3-Coder-Next does.
  3. One optimizer step per batch (no PPO epochs, no mini-batches): with synchronous rollouts the
     ratio is 1 up to float rounding and the clip never binds. The clipped ratio against the stored
     *behaviour* log-probabilities is kept because pipelined rollouts are one policy version stale.
  4. The ratio is per token (not per sequence, as GSPO would); clip-higher: [1 - 0.2, 1 + 0.28].
  5. No entropy bonus. KL to the initial policy is off by default (coefficient 0) but always
     measured and logged (the k3 estimator exp(ref - new) - (ref - new) - 1, per policy token).
  6. Groups whose rewards are all equal carry no signal: they are dropped (and counted) rather
     than trained on with zero advantage; a batch with nothing left skips the optimizer step.
  7. Unfinished rollouts (stopped by a turn / context / time / invalid-call limit, or by an
     environment error) get reward 0 by default (``unfinished="zero"``), or are removed from their
     group before its statistics are taken (``unfinished="mask"``, rLLM's "compact filtering").
  8. Sampling temperature 1 is assumed by default; the loss divides logits by the same
     temperature as sampling did, so the ratio compares like with like.

Loss, per policy token t of trajectory i with advantage A_i (ratio r = exp(logp - logp_behaviour)):
    l_t = -min(r A_i, clip(r, 1 - eps_low, 1 + eps_high) A_i) + beta * kl_t
aggregated either as a token mean over every policy token of the batch (``loss_agg="token_mean"``)
or as Dr. GRPO's sequence-mean-token-sum with a constant normaliser L (``"seq_mean_token_sum_norm"``:
sum over all tokens / (number of trajectories * L)), so long trajectories are not down-weighted.
Both are a token-weighted sum with a global normaliser, as the trainer's loss (`train.losses`,
whose weighted cross-entropy is this loss's unclipped, ratio-1 special case); the log-probs are
`train.losses.token_logprobs`, and the forward, the optimizer step (clip, schedule, AdamW),
checkpoints and exact resume are the `Trainer`'s: nothing here re-implements them.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from minicoder.train.losses import token_logprobs
from minicoder.train.trainer import Trainer

ADVANTAGES = ("mean", "loo")
LOSS_AGGS = ("token_mean", "seq_mean_token_sum_norm")
UNFINISHED = ("zero", "mask")


@dataclass
class GRPOConfig:
    """The options of the GRPO update (defaults: the small-run recipe of ../shared/RL.md)."""

    advantage: str = "mean"  # "mean": r - group mean; "loo": r - mean of the *other* rollouts
    std_norm: bool = False  # divide advantages by the group's standard deviation (+ std_eps)
    std_eps: float = 1e-6
    loss_agg: str = "seq_mean_token_sum_norm"  # or "token_mean"
    norm_len: int = 512  # Dr. GRPO's constant normaliser L (policy tokens per trajectory budget)
    clip_low: float = 0.2  # ratio clipped to [1 - clip_low, 1 + clip_high] ("clip-higher")
    clip_high: float = 0.28
    kl_coef: float = 0.0  # beta of the KL-to-initial-policy term (always logged when a ref is given)
    unfinished: str = "zero"  # "zero": reward 0; "mask": dropped from their group ("compact filtering")
    invalid_penalty: float = 0.0  # subtracted from the reward per invalid tool call
    drop_zero_variance: bool = True  # drop groups whose (shaped) rewards are all equal
    temperature: float = 1.0  # the sampling temperature (logits are divided by it in the loss)
    micro_tokens: int = 4096  # tokens per forward/backward micro-batch (memory knob; no effect on the loss)

    def __post_init__(self) -> None:
        if self.advantage not in ADVANTAGES:
            raise ValueError(f"GRPOConfig.advantage must be one of {ADVANTAGES}, got {self.advantage!r}")
        if self.loss_agg not in LOSS_AGGS:
            raise ValueError(f"GRPOConfig.loss_agg must be one of {LOSS_AGGS}, got {self.loss_agg!r}")
        if self.unfinished not in UNFINISHED:
            raise ValueError(f"GRPOConfig.unfinished must be one of {UNFINISHED}, got {self.unfinished!r}")
        if not (0 <= self.clip_low < 1 and self.clip_high >= 0):
            raise ValueError("GRPOConfig: need 0 <= clip_low < 1 and clip_high >= 0")
        if self.norm_len < 1 or self.micro_tokens < 1 or self.temperature <= 0:
            raise ValueError("GRPOConfig: norm_len, micro_tokens and temperature must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Sample:
    """One rollout as the update sees it: exact token ids, never re-tokenized.

    tokens: every id of the trajectory (prompt, sampled actions, observations), in order;
    mask: 1 on ids the policy sampled, 0 on prompt / observation / template ids;
    logprobs: the behaviour policy's log-probability of each sampled id (0 where mask is 0).
    """

    group: str  # the task (GRPO group key)
    tokens: list[int]
    mask: list[int]
    logprobs: list[float]
    reward: float  # task reward from the evaluation stage (1 = hidden tests pass)
    finished: bool = True  # ended by `submit` (False: a limit or an environment error ended it)
    invalid_calls: int = 0
    index: int = 0  # sample number within its group (for ordering and seeds)

    def __post_init__(self) -> None:
        if not (len(self.tokens) == len(self.mask) == len(self.logprobs)):
            raise ValueError(f"sample {self.group}/{self.index}: tokens, mask and logprobs differ in length "
                             f"({len(self.tokens)}, {len(self.mask)}, {len(self.logprobs)})")
        if self.mask and self.mask[0]:
            raise ValueError(f"sample {self.group}/{self.index}: the first token cannot be a policy token")


# --- rewards and advantages ---------------------------------------------------------------------

def shaped_reward(s: Sample, cfg: GRPOConfig) -> float:
    """The reward the update uses: 0 for an unfinished rollout (``unfinished="zero"``), minus the
    invalid-call penalty."""
    r = s.reward if (s.finished or cfg.unfinished == "mask") else 0.0
    return r - cfg.invalid_penalty * s.invalid_calls


def group_advantages(rewards: Sequence[float], cfg: GRPOConfig) -> list[float]:
    """Advantages of one group's rewards: r - mean (or leave-one-out), optionally / (std + eps).

    The standard deviation is the sample one (Bessel-corrected, as torch.std / TRL / verl), of the
    rewards themselves; a group of one has advantage 0.
    """
    n = len(rewards)
    if n < 2:
        return [0.0] * n
    mean = sum(rewards) / n
    if cfg.advantage == "mean":
        adv = [r - mean for r in rewards]
    else:  # r_i - (sum_j r_j - r_i) / (n - 1)
        tot = sum(rewards)
        adv = [r - (tot - r) / (n - 1) for r in rewards]
    if cfg.std_norm:
        std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / (n - 1))
        adv = [a / (std + cfg.std_eps) for a in adv]
    return adv


@dataclass
class Prepared:
    """The samples that carry a gradient, their advantages, and what was filtered out."""

    samples: list[Sample]
    advantages: list[float]
    stats: dict[str, float] = field(default_factory=dict)


def prepare(samples: Sequence[Sample], cfg: GRPOConfig) -> Prepared:
    """Shape rewards, mask unfinished rollouts (if asked), drop zero-variance groups, take advantages."""
    groups: OrderedDict[str, list[Sample]] = OrderedDict()
    for s in samples:
        groups.setdefault(s.group, []).append(s)
    kept, advs = [], []
    n_masked = n_zero = 0
    for members in groups.values():
        members = sorted(members, key=lambda s: s.index)
        if cfg.unfinished == "mask":
            n_masked += sum(not s.finished for s in members)
            members = [s for s in members if s.finished]
        rewards = [shaped_reward(s, cfg) for s in members]
        zero = not members or max(rewards) - min(rewards) == 0.0
        n_zero += zero
        if zero and (cfg.drop_zero_variance or not members):
            continue
        kept.extend(members)
        advs.extend(group_advantages(rewards, cfg))
    n_groups = len(groups)
    stats = {"groups": n_groups, "zero_variance_groups": n_zero,  # dropped when cfg.drop_zero_variance
             "zero_variance_frac": n_zero / n_groups if n_groups else 0.0,
             "masked_samples": n_masked, "trained_samples": len(kept)}
    return Prepared(kept, advs, stats)


# --- the token-level loss -----------------------------------------------------------------------

def surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, cfg: GRPOConfig,
              ref_logp: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token loss, clipped flags and KL (all the shape of `logp`).

    loss = -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) + kl_coef * kl, r = exp(logp - old_logp);
    clipped = the clipped branch is the smaller one (no gradient flows through that token);
    kl = exp(ref - logp) - (ref - logp) - 1 (k3; zeros without `ref_logp`).
    """
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * adv
    clipped_val = torch.clamp(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high) * adv
    loss = -torch.minimum(unclipped, clipped_val)
    clipped = clipped_val < unclipped
    if ref_logp is not None:
        d = ref_logp - logp
        kl = torch.exp(d) - d - 1.0
        if cfg.kl_coef:
            loss = loss + cfg.kl_coef * kl
    else:
        kl = torch.zeros_like(logp)
    return loss, clipped, kl


@dataclass
class MicroBatch:
    """Samples packed into one row: input_ids/targets/old_logp/adv: [1, T]; cu_seqlens: [N + 1].

    targets[t] = tokens[t + 1] when that token is a policy token, else -100 (per sample, never
    across a sample boundary); old_logp[t] / adv[t] belong to the same target token.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    cu_seqlens: torch.Tensor
    targets: torch.Tensor
    old_logp: torch.Tensor
    adv: torch.Tensor
    n_samples: int


def micro_batches(samples: Sequence[Sample], advantages: Sequence[float], micro_tokens: int,
                  device: torch.device | str = "cpu") -> list[MicroBatch]:
    """Pack samples, in order, into rows of at most `micro_tokens` (a longer sample gets a row alone)."""
    out: list[MicroBatch] = []
    cur: list[tuple[Sample, float]] = []
    width = 0

    def flush() -> None:
        if not cur:
            return
        ids, pos, tgt, old, adv, cu = [], [], [], [], [], [0]
        for s, a in cur:
            n = len(s.tokens)
            ids += s.tokens
            pos += list(range(n))
            tgt += [s.tokens[j + 1] if s.mask[j + 1] else -100 for j in range(n - 1)] + [-100]
            old += [float(s.logprobs[j + 1]) for j in range(n - 1)] + [0.0]
            adv += [a] * n
            cu.append(cu[-1] + n)
        t = lambda x, dt: torch.tensor([x], dtype=dt, device=device)
        out.append(MicroBatch(t(ids, torch.long), t(pos, torch.long), torch.tensor(cu, dtype=torch.long, device=device),
                              t(tgt, torch.long), t(old, torch.float32), t(adv, torch.float32), len(cur)))
        cur.clear()

    for s, a in zip(samples, advantages):
        if cur and width + len(s.tokens) > micro_tokens:
            flush()
            width = 0
        cur.append((s, a))
        width += len(s.tokens)
    flush()
    return out


def loss_denominator(samples: Sequence[Sample], cfg: GRPOConfig) -> float:
    """The global normaliser: policy tokens of the batch (token mean) or N * L (Dr. GRPO)."""
    if cfg.loss_agg == "token_mean":
        return float(max(sum(sum(s.mask) for s in samples), 1))
    return float(max(len(samples), 1) * cfg.norm_len)


def _unwrap(model):
    for attr in ("module", "_orig_mod"):
        while hasattr(model, attr):
            model = getattr(model, attr)
    return model


@torch.no_grad()
def _ref_logprobs(ref_model, mb: MicroBatch, temperature: float) -> torch.Tensor:
    out = ref_model(input_ids=mb.input_ids, position_ids=mb.position_ids, cu_seqlens=mb.cu_seqlens, compute_mtp=False)
    return token_logprobs(out.logits.float() / temperature, mb.targets)


def grpo_step(trainer: Trainer, samples: Sequence[Sample], cfg: GRPOConfig, ref_model=None,
              backward: bool = True) -> dict[str, Any]:
    """One GRPO update of `trainer.model` on a batch of rollouts; returns its metrics.

    With ``backward=False`` nothing changes: the loss is only computed (``metrics["loss"]``), for
    checking it against a re-derivation. The MoE balancing loss of the trainer's config is added as
    in pre-training (MTP is not trained here).
    """
    from minicoder.model.moe import ExpertLoadTracker

    t0 = time.perf_counter()
    prep = prepare(samples, cfg)
    rewards = [s.reward for s in samples]
    m: dict[str, Any] = {**prep.stats,
                         "reward_mean": sum(rewards) / len(rewards) if rewards else 0.0,
                         "shaped_reward_mean": (sum(shaped_reward(s, cfg) for s in samples) / len(samples)
                                                if samples else 0.0)}
    if not prep.samples:
        if backward:
            trainer.step += 1  # the schedule moves on; the weights do not
        m.update(loss=0.0, policy_tokens=0, clip_frac=0.0, entropy=float("nan"), kl=float("nan"),
                 grad_norm=0.0, lr=trainer.schedule(max(trainer.step - 1, 0)), skipped_update=1,
                 update_s=time.perf_counter() - t0)
        return m
    model = trainer.model
    model.train()
    mbs = micro_batches(prep.samples, prep.advantages, cfg.micro_tokens, trainer.device)
    denom = loss_denominator(prep.samples, cfg)
    tracker = ExpertLoadTracker()
    loss_tot = 0.0
    n_tok = clipped_tot = 0
    ent_tot = kl_tot = 0.0
    ratio_max = 0.0
    for mb in mbs:
        with torch.set_grad_enabled(backward):
            out = trainer.forward_packed({"input_ids": mb.input_ids, "position_ids": mb.position_ids,
                                          "cu_seqlens": mb.cu_seqlens}, tracker, compute_mtp=False)
            logp = token_logprobs(out.logits.float() / cfg.temperature, mb.targets)
            ref = _ref_logprobs(ref_model, mb, cfg.temperature) if ref_model is not None else None
            per_tok, clipped, kl = surrogate(logp, mb.old_logp, mb.adv, cfg, ref)
            valid = mb.targets != -100
            loss = (per_tok * valid).sum() / denom  # token-weighted, global normaliser (see the docstring)
            if out.aux_loss is not None and trainer.aux_coef:
                loss = loss + trainer.aux_coef * out.aux_loss.to(loss.device) / len(mbs)
        if backward:
            loss.backward()
        with torch.no_grad():
            loss_tot += float(loss)
            n_tok += int(valid.sum())
            clipped_tot += int((clipped & valid).sum())
            kl_tot += float((kl * valid).sum())
            lp_all = torch.log_softmax(out.logits.detach().float() / cfg.temperature, dim=-1)
            ent = -(lp_all.exp() * lp_all).sum(-1)
            ent_tot += float((ent * valid).sum())
            dev = (torch.exp(logp.detach() - mb.old_logp) - 1.0).abs()
            ratio_max = max(ratio_max, float(dev[valid].max()) if bool(valid.any()) else 0.0)
    m.update(loss=loss_tot, policy_tokens=n_tok, clip_frac=clipped_tot / max(n_tok, 1),
             entropy=ent_tot / max(n_tok, 1), kl=(kl_tot / max(n_tok, 1)) if ref_model is not None else float("nan"),
             max_ratio_dev=ratio_max, micro_batches=len(mbs), skipped_update=0)
    if backward:
        grad_norm, lr = trainer.apply_gradients()
        m.update(grad_norm=grad_norm, lr=lr)
    m["update_s"] = time.perf_counter() - t0
    return m


def frozen_copy(model):
    """A detached, frozen copy of `model` (the KL reference, or the rollout policy's weights)."""
    import copy

    ref = copy.deepcopy(_unwrap(model))
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref
