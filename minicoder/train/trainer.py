"""The training loop shared by the notebooks, `minicoder train` and (later) the RL stage.

One optimizer step:
    rows   <- the sampler's next world * accum * rows_per_micro packed rows (a global batch)
    N      <- loss-bearing targets in the whole global batch (all-reduced over ranks)
    for each of this rank's `accum` micro-batches (rows flattened into one packed row + cu_seqlens):
        out   = model(ids, position_ids, cu_seqlens, load_tracker)      # bf16 autocast on GPU
        loss  = (CE_sum + w_mtp * MTP_sum) / N * world + coef * aux / accum
        loss.backward()                                                  # DDP / FSDP2 average over ranks
    clip the global grad norm; lr <- schedule(step); AdamW step; zero grads

Design choices:
- Token-weighted loss over the *global* batch: every loss-bearing token weighs the same whatever
  micro-batch or rank it lands in, so 1 process x accum 2 == 2 processes x accum 1 to float rounding
  (tested), and padding / masked tokens cost nothing. The cross-entropies are summed here from the
  model's logits and the batch's pre-shifted targets (`losses.token_loss_sum`, which the RL stage
  calls with per-token weights), not taken as the model's per-micro-batch means.
- MoE balancing: the model's balancing loss with an `ExpertLoadTracker`, i.e. expert frequencies f_e
  accumulated over the micro-batches of the step and all-reduced over ranks (global-batch balancing).
  The MTP head's own router is not in the aux loss (its stats are not in `ModelOutput`).
- Precision: float32 on CPU (and bit-exact resume there); on CUDA, float32 master weights with bf16
  autocast (FSDP2 additionally all-gathers bf16 parameters and reduces gradients in float32).
- The learning rate is a pure function of the step (`schedule.WarmupCosine`), so the scheduler state
  is the step counter; weight decay groups are in `optim.py`.
- Exact resume: a checkpoint holds model, optimizer, step, RNG states and the sampler position; a
  resumed run redoes exactly the same computation (CPU: bit-identical weights, tested).
- `torch.compile` is optional (`compile=True`); a tqdm bar shows loss / lr / tokens per second.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from minicoder.train import checkpoint as ckpt
from minicoder.train.data import PackedDataset, RowSampler
from minicoder.train.distributed import DistInfo, all_reduce_sum, full_state_dicts, load_full_state_dicts
from minicoder.train.losses import count_targets, token_loss_sum
from minicoder.train.metrics import MetricsLogger
from minicoder.train.optim import make_optimizer
from minicoder.train.schedule import WarmupCosine, set_lr


@dataclass
class TrainConfig:
    """Hyperparameters of a run. Batch = world * grad_accum * rows rows of seq_len tokens."""

    steps: int = 200  # optimizer steps of the whole run (the schedule's length)
    rows: int = 4  # packed rows per micro-batch per rank
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 3e-3  # peak learning rate
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of the peak
    warmup_steps: int = 20
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm (0 = no clipping)
    aux_loss_coef: float | None = None  # MoE balancing weight (None: the model config's)
    mtp_loss_weight: float | None = None  # MTP weight (None: the model config's; 0 skips the MTP head)
    seed: int = 0  # data order (and the RNGs at start)
    compile: bool = False  # torch.compile the model
    ckpt_every: int = 0  # save every this many steps (0: only at the end of fit)
    keep_last: int = 3  # checkpoints kept
    log_every: int = 1  # metrics records every this many steps
    progress: bool = True  # tqdm bar (rank 0 only)

    def __post_init__(self) -> None:
        for name in ("steps", "rows", "grad_accum"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {v!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"TrainConfig.lr must be positive, got {self.lr}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError("TrainConfig.grad_clip and weight_decay must be >= 0")
        self.betas = tuple(self.betas)  # type: ignore[assignment]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class Trainer:
    """Train `model` (a `minicoder.model.HybridLM`, possibly wrapped by FSDP2 / DDP) on a PackedDataset.

    out_dir: where ``checkpoints/`` and ``metrics.jsonl`` go (None: nothing is written).
    dist: `DistInfo` from `distributed.init_distributed()` (None: one process).
    dataset None (the RL stage): no sampler, no `train_step` / `fit`; the caller builds packed
    micro-batches, runs `forward_packed`, backpropagates its own token-level loss and calls
    `apply_gradients`; checkpoints and exact resume work as usual (`extra_state` carries its state).
    """

    def __init__(self, model: nn.Module, dataset: PackedDataset | None, cfg: TrainConfig, out_dir: str | Path | None = None,
                 dist: DistInfo | None = None, model_config=None, extra_state: dict | None = None) -> None:
        self.model, self.data, self.cfg = model, dataset, cfg
        self.dist = dist or DistInfo()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.model_config = model_config if model_config is not None else getattr(_unwrap(model), "config", None)
        self.extra_state = dict(extra_state or {})  # saved with every checkpoint (e.g. the tokenizer path)
        self.device = model_device(model)
        self.optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay, cfg.betas, cfg.eps)
        self.schedule = WarmupCosine(cfg.lr, cfg.steps, min(cfg.warmup_steps, cfg.steps), cfg.min_lr_ratio)
        self.sampler = RowSampler(len(dataset), seed=cfg.seed) if dataset is not None else None
        self.step = 0
        mc = self.model_config
        self.aux_coef = cfg.aux_loss_coef if cfg.aux_loss_coef is not None else getattr(mc, "router_aux_loss_coef", 0.0)
        self.mtp_weight = cfg.mtp_loss_weight if cfg.mtp_loss_weight is not None else getattr(mc, "mtp_loss_weight", 0.0)
        self.has_mtp = getattr(_unwrap(model), "mtp", None) is not None and self.mtp_weight > 0
        self.top_k = getattr(mc, "num_experts_per_tok", 1) or 1
        self.forward = torch.compile(model) if cfg.compile else model
        self.autocast = self.device.type == "cuda"
        self._logger: MetricsLogger | None = None

    # --- paths ---------------------------------------------------------------------------------
    @property
    def ckpt_dir(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / "checkpoints"

    @property
    def is_main(self) -> bool:
        return self.dist.rank == 0

    # --- one step --------------------------------------------------------------------------------
    def _micro_batches(self) -> list:
        if self.sampler is None:
            raise RuntimeError("this Trainer has no dataset: build batches yourself and call forward_packed / "
                               "apply_gradients")
        c, w = self.cfg, self.dist.world_size
        rows = self.sampler.take(w * c.grad_accum * c.rows)
        out = []
        for j in range(c.grad_accum):
            start = (self.dist.rank * c.grad_accum + j) * c.rows
            out.append(self.data.batch(rows[start:start + c.rows]))
        return out

    def _tensors(self, b) -> dict[str, torch.Tensor]:
        """A PackedBatch [B, L] as one packed row [1, B*L] for the model, with its pre-shifted targets
        (`PackedBatch.labels`: -100 at piece ends, padding and, in mid-training, non-assistant tokens)."""
        dev = self.device
        return {
            "input_ids": torch.from_numpy(b.input_ids.reshape(1, -1)).to(dev),
            "position_ids": torch.from_numpy(b.position_ids.reshape(1, -1)).to(dev),
            "cu_seqlens": torch.from_numpy(b.cu_seqlens.astype(np.int64)).to(dev),
            "targets": torch.from_numpy(b.labels.reshape(1, -1).astype(np.int64)).to(dev),
        }

    def forward_packed(self, t: dict[str, torch.Tensor], tracker=None, compute_mtp: bool | None = None):
        """The model on one packed micro-batch (input_ids / position_ids / cu_seqlens), bf16 autocast on CUDA."""
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            return self.forward(input_ids=t["input_ids"], position_ids=t["position_ids"], cu_seqlens=t["cu_seqlens"],
                                load_tracker=tracker, compute_mtp=self.has_mtp if compute_mtp is None else compute_mtp)

    def _losses(self, t: dict[str, torch.Tensor], tracker) -> tuple[torch.Tensor, torch.Tensor, Any]:
        from minicoder.model.model import shift_targets

        out = self.forward_packed(t, tracker)
        ce_sum = token_loss_sum(out.logits, t["targets"])
        mtp_sum = torch.zeros((), device=ce_sum.device)
        if self.has_mtp and out.mtp_logits is not None:
            # the MTP head predicts the token after the next one: the targets shifted once more
            mtp_sum = token_loss_sum(out.mtp_logits, shift_targets(t["targets"], t["cu_seqlens"]))
        return ce_sum, mtp_sum, out

    def train_step(self) -> dict[str, Any]:
        """One optimizer step; returns its metrics (global over ranks)."""
        from minicoder.model.moe import ExpertLoadTracker

        c, w = self.cfg, self.dist.world_size
        t0 = time.perf_counter()
        self.model.train()
        micro = [self._tensors(b) for b in self._micro_batches()]
        n_local = sum(count_targets(m["targets"]) for m in micro)
        n_global = int(all_reduce_sum(torch.tensor(float(n_local)), self.dist).item())
        denom = max(n_global, 1)
        tracker = ExpertLoadTracker()
        ce_tot = torch.zeros((), dtype=torch.float64)
        mtp_tot = torch.zeros((), dtype=torch.float64)
        aux_tot = 0.0
        for m in micro:
            ce_sum, mtp_sum, out = self._losses(m, tracker)
            loss = (ce_sum + self.mtp_weight * mtp_sum) * (w / denom)
            if out.aux_loss is not None and self.aux_coef:
                loss = loss + self.aux_coef * out.aux_loss.to(loss.device) / c.grad_accum
            loss.backward()
            ce_tot += ce_sum.detach().double().cpu()
            mtp_tot += mtp_sum.detach().double().cpu()
            aux_tot += float(out.aux_loss.detach()) / c.grad_accum if out.aux_loss is not None else 0.0
        grad_norm, lr = self.apply_gradients()
        sums = all_reduce_sum(torch.tensor([ce_tot.item(), mtp_tot.item(), aux_tot]), self.dist).tolist()
        dt = time.perf_counter() - t0
        # a step whose batch has no loss-bearing token (e.g. only system prompts) has no loss: NaN, not 0
        no_tokens = float("nan") if n_global == 0 else None
        rec: dict[str, Any] = {"step": self.step, "loss": no_tokens or sums[0] / denom, "lr": lr, "grad_norm": grad_norm,
                               "tokens": n_global, "tokens_per_s": n_global / dt, "step_s": dt}
        if self.has_mtp:
            rec["mtp_loss"] = no_tokens or sums[1] / denom
        if tracker.counts is not None:
            rec["aux_loss"] = sums[2] / w
            rec["expert_load"] = (tracker.load() / self.top_k).cpu().tolist()  # [layers, E], rows sum to 1
        return rec

    def apply_gradients(self) -> tuple[float, float]:
        """Clip the global grad norm, set this step's learning rate, AdamW step, zero the grads, count
        the step. Returns (grad norm before clipping, learning rate). `train_step` and RL both end here."""
        grad_norm = self._clip()
        lr = self.schedule(self.step)
        set_lr(self.optimizer, lr)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return grad_norm, lr

    def _clip(self) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
            norm = norm.full_tensor()
        return float(norm)

    # --- evaluation -------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, dataset: PackedDataset, max_rows: int | None = None) -> float:
        """Mean next-token cross-entropy (nats/token) on the first `max_rows` rows of `dataset`."""
        self.model.eval()
        n = len(dataset) if max_rows is None else min(max_rows, len(dataset))
        saved = self.data
        self.data = dataset  # _tensors reads the trainable mask of the dataset being evaluated
        try:
            tot, cnt = 0.0, 0
            mine = np.arange(n)[self.dist.rank::self.dist.world_size]
            for i in range(0, max(len(mine), 1), self.cfg.rows):
                idx = mine[i:i + self.cfg.rows]
                if len(idx) == 0:
                    break
                t = self._tensors(dataset.batch(idx))
                ce_sum, _, _ = self._losses(t, None)
                tot += float(ce_sum)
                cnt += count_targets(t["targets"])
            s = all_reduce_sum(torch.tensor([tot, float(cnt)]), self.dist).tolist()
        finally:
            self.data = saved
            self.model.train()
        return s[0] / max(s[1], 1.0)

    # --- checkpoints --------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        model_sd, optim_sd = full_state_dicts(self.model, self.optimizer, self.dist)
        mc = self.model_config
        return {
            "model": model_sd,
            "optimizer": optim_sd,
            "rng": ckpt.capture_rng(),
            "data": self.sampler.state_dict() if self.sampler is not None else None,
            "config": {"model": dataclasses.asdict(mc) if dataclasses.is_dataclass(mc) else None,
                       "train": self.cfg.to_dict()},
            "extra": self.extra_state,
        }

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0 writes; every rank takes part in gathering)."""
        if self.ckpt_dir is None:
            return None
        state = self.state()
        path = None
        if self.is_main:
            path = ckpt.save_checkpoint(self.ckpt_dir, self.step, state, keep_last=self.cfg.keep_last)
        if self.dist.world_size > 1:
            torch.distributed.barrier()
        return path

    def load_state(self, state: dict[str, Any]) -> None:
        load_full_state_dicts(self.model, self.optimizer, state["model"], state["optimizer"], self.dist)
        if self.sampler is not None:
            self.sampler.load_state_dict(state["data"])
        self.step = int(state["step"])
        ckpt.restore_rng(state["rng"])

    def resume(self, path: str | Path | None = None) -> bool:
        """Continue from `path` (a file or folder; default: this run's newest checkpoint). False if none."""
        src = Path(path) if path is not None else self.ckpt_dir
        if src is None or (src.is_dir() and ckpt.latest_checkpoint(src) is None
                           and ckpt.latest_checkpoint(src / "checkpoints") is None):
            return False
        self.load_state(ckpt.load_checkpoint(src))
        return True

    # --- the loop ---------------------------------------------------------------------------------
    def fit(self, steps: int | None = None, time_limit_s: float | None = None,
            callback: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Train until step `steps` (default: cfg.steps) or `time_limit_s` seconds, then checkpoint.

        Returns the metrics records of this call (also appended to out_dir/metrics.jsonl).
        """
        end = self.cfg.steps if steps is None else steps
        records: list[dict[str, Any]] = []
        if self.out_dir is not None and self._logger is None:
            self._logger = MetricsLogger(self.out_dir / "metrics.jsonl",
                                         truncate_after=self.step if self.step > 0 else None, enabled=self.is_main)
        bar = None
        if self.cfg.progress and self.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=end, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        t_start = time.perf_counter()
        last_saved = self.step
        try:
            while self.step < end:
                rec = self.train_step()
                rec["elapsed_s"] = time.perf_counter() - t_start
                if self.step % self.cfg.log_every == 0 or self.step == end:
                    records.append(rec)
                    if self._logger is not None:
                        self._logger.log(rec)
                if callback is not None:
                    callback(rec)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{rec['lr']:.1e}",
                                    tok_s=f"{rec['tokens_per_s']:.0f}")
                if self.cfg.ckpt_every and self.step % self.cfg.ckpt_every == 0:
                    self.save()
                    last_saved = self.step
                if time_limit_s is not None and time.perf_counter() - t_start > time_limit_s:
                    break
            if last_saved != self.step:
                self.save()
        finally:
            if bar is not None:
                bar.close()
        return records

    def close(self) -> None:
        if self._logger is not None:
            self._logger.close()
            self._logger = None


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP / torch.compile wrapper (FSDP2 wraps in place)."""
    for attr in ("module", "_orig_mod"):
        while hasattr(model, attr):
            model = getattr(model, attr)
    return model
