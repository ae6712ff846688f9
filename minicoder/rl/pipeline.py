"""The RL pipeline: rollout -> evaluation -> post-processing, over bounded queues, local or on Ray.

    run = RLRun(RLConfig(steps=30, tasks_per_step=4, group=8), init="runs/warm/final", tasks=train_tasks,
                out="runs/rl")
    run.fit()            # Ctrl-C, then RLRun(..., resume=True).fit() continues from the last checkpoint

Each task of a step runs as three stages (MegaFlow, in the Qwen3-Coder-Next report):
  rollout          the policy acts in a live sandbox session (`agent.loop.run_rollouts`); one batch per
                   shard of `groups_per_shard` task groups, G samples each
  evaluation       each submitted rollout's diff is graded in a fresh sandbox with the hidden tests
                   (`agent.evaluate.grade`) as soon as it finishes, while other rollouts still run
  post-processing  when a step's rollouts are all graded: GRPO advantages, filtering and the update
                   (`grpo.grpo_step` on the shared `train.Trainer`), metrics, checkpoint, new weights out

Staleness. ``max_staleness=0`` is synchronous: the rollouts of step s use the weights after update
s - 1. ``max_staleness=1`` pipelines: the rollouts of step s start as soon as those of s - 1 are
done, with the weights after update s - 2, while step s - 1 is graded and trained on; the loss's
ratio uses the stored behaviour log-probabilities, so the update is still correct. The version a
step's rollouts use is fixed (exactly s - staleness, never "whatever is newest"), so a run is a
pure function of its seed, whatever the timing (local and Ray agree, tested).

Executors. `local` (default): the rollout stage is one thread of this process with its own copy of
the weights, the evaluation stage a thread pool (the sandboxes are processes), post-processing the
main thread. `ray`: rollout workers and evaluation workers are Ray actors (`ray_executor.py`), each
with its own thread count; the driver keeps post-processing and the update.

Threads are planned, not left to torch's default (on 2 cores, generation overlapping sandbox runs
oversubscribes the CPU): `gen_threads` for generation, `update_threads` for the update, and
`eval_workers` sandboxes at once (each single-threaded inside).

Failures cost one sample: a session that cannot open, dies or hangs ends that rollout with
`env_error` (reward 0, reason in its record); a grader that fails gives reward 0 with its status.
Seeds are per (run seed, step, task, sample), so a resumed run redoes exactly what it lost: a
checkpoint after each update holds the trainer state (weights, optimizer, RNG) plus, when
pipelined, the weights the next step's rollouts must use; `resume=True` continues bit-exactly.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from minicoder.agent.evaluate import grade, sample_seed
from minicoder.agent.loop import AgentLimits, Job, Trajectory, run_rollouts
from minicoder.agent.tools import ToolConfig
from minicoder.rl.grpo import GRPOConfig, Sample, frozen_copy, grpo_step
from minicoder.train import checkpoint as ckpt
from minicoder.train.metrics import MetricsLogger
from minicoder.train.trainer import TrainConfig, Trainer


@dataclass
class RLConfig:
    steps: int = 30
    tasks_per_step: int = 4  # groups per step
    group: int = 8  # rollouts per task (G)
    seed: int = 0
    temperature: float = 1.0
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 0
    max_staleness: int = 1  # 0: synchronous; 1: rollouts one policy version behind (pipelined)
    executor: str = "local"  # local | ray
    backend: str = "local"  # sandbox backend: local (bubblewrap) | docker
    groups_per_shard: int = 4  # task groups generated together (one batch per rollout worker call)
    rollout_workers: int = 1
    eval_workers: int = 2
    gen_threads: int = 1
    update_threads: int = 1
    session_workers: int = 4  # threads per rollout batch for opening sessions and running tools
    queue_size: int = 64  # bound of the rollout -> evaluation queue
    ckpt_every: int = 1
    keep_last: int = 2
    eval_timeout_s: float = 120.0  # a grading that does not answer by then scores 0
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    limits: AgentLimits = field(default_factory=AgentLimits)
    tools: ToolConfig = field(default_factory=ToolConfig.toy)

    def __post_init__(self) -> None:
        if self.executor not in ("local", "ray"):
            raise ValueError(f"executor must be local or ray, got {self.executor!r}")
        if self.max_staleness not in (0, 1):
            raise ValueError("max_staleness must be 0 (synchronous) or 1 (one version behind)")
        for n in ("steps", "tasks_per_step", "group", "groups_per_shard", "rollout_workers", "eval_workers",
                  "gen_threads", "update_threads"):
            if getattr(self, n) < 1:
                raise ValueError(f"RLConfig.{n} must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=str))


def step_tasks(tasks: Sequence[Any], step: int, n: int, seed: int) -> list[Any]:
    """The `n` tasks of step `step`: consecutive slices of a per-epoch seeded permutation."""
    out = []
    for j in range(n):
        i = step * n + j
        epoch, pos = divmod(i, len(tasks))
        out.append(tasks[int(np.random.default_rng([seed, epoch]).permutation(len(tasks))[pos])])
    return out


def step_jobs(tasks: Sequence[Any], step: int, cfg: RLConfig) -> list[list[Job]]:
    """The step's rollouts, sharded: each shard is `groups_per_shard` groups of `group` samples."""
    chosen = step_tasks(tasks, step, cfg.tasks_per_step, cfg.seed)
    jobs = [Job(t, s, sample_seed(cfg.seed, "rollout", step, gi, t.instance_id, s), gi)
            for gi, t in enumerate(chosen) for s in range(cfg.group)]
    per = cfg.groups_per_shard * cfg.group
    return [jobs[i:i + per] for i in range(0, len(jobs), per)]


def to_sample(t: Trajectory, group_key: str) -> Sample:
    return Sample(group_key, t.tokens, t.mask, t.logprobs, float(t.reward or 0.0), t.finished, t.invalid_calls, t.sample)


class RolloutWorker:
    """One rollout worker: a copy of the policy's weights, generating shards of a step."""

    def __init__(self, model, tokenizer, cfg: RLConfig, open_env: Callable) -> None:
        from minicoder.agent.policies import LocalPolicy

        self.cfg, self.open_env, self.tokenizer = cfg, open_env, tokenizer
        self.policy = LocalPolicy(model, tokenizer, temperature=cfg.temperature)
        self.version = -1

    def set_weights(self, state_dict: dict[str, torch.Tensor], version: int) -> None:
        if version != self.version:
            self.policy.set_weights(state_dict, version)
            self.version = version

    def run(self, jobs: list[Job], on_done: Callable[[Trajectory], None] | None = None) -> list[Trajectory]:
        torch.set_num_threads(self.cfg.gen_threads)
        return run_rollouts(self.policy, jobs, self.open_env, tokenizer=self.tokenizer, tool_cfg=self.cfg.tools,
                            limits=self.cfg.limits, workers=self.cfg.session_workers, policy_version=self.version,
                            on_done=on_done)


class LocalExecutor:
    """Rollouts in a thread of this process, grading in a thread pool."""

    name = "local"

    def __init__(self, model, tokenizer, cfg: RLConfig, open_env: Callable, tasks_by_id: dict[str, Any]) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.worker = RolloutWorker(frozen_copy(model), tokenizer, cfg, open_env)
        self.cfg, self.tasks = cfg, tasks_by_id
        self.pool = ThreadPoolExecutor(max_workers=cfg.eval_workers, thread_name_prefix="grade")

    def rollout(self, shards: list[list[Job]], weights: dict[str, torch.Tensor], version: int,
                graded: Callable[[Trajectory], None]) -> None:
        """Run every shard; each trajectory goes to grading as soon as it finishes; `graded` gets it back."""
        self.worker.set_weights(weights, version)
        futs = []

        def to_eval(t: Trajectory) -> None:
            futs.append(self.pool.submit(grade, self.tasks[t.task_id], t, self.cfg.backend))

        for shard in shards:
            self.worker.run(shard, on_done=to_eval)
        for f in futs:
            f.add_done_callback(lambda fut: graded(fut.result()))

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class RLRun:
    """A GRPO run over a task list (see the module docstring)."""

    def __init__(self, cfg: RLConfig, model, tokenizer, tasks: Sequence[Any], out: str | Path,
                 open_env: Callable | None = None, resume: bool = False, progress: bool = True) -> None:
        self.cfg, self.tokenizer, self.tasks = cfg, tokenizer, list(tasks)
        if not self.tasks:
            raise ValueError("no tasks to train on")
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.progress = progress
        if open_env is None:
            from minicoder.agent.cli import session_opener

            open_env = session_opener(cfg.backend)
        self.open_env = open_env
        self.ref = frozen_copy(model)  # the initial policy (KL reference)
        tcfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay,
                           grad_clip=cfg.grad_clip, seed=cfg.seed, keep_last=cfg.keep_last, progress=False)
        self.trainer = Trainer(model, None, tcfg, out_dir=self.out, model_config=model.config,
                               extra_state={"rl": {"config": cfg.to_dict()}})
        self.behaviour: dict[str, torch.Tensor] | None = None  # weights for the next step's rollouts (pipelined)
        if resume and not self.resume():
            raise FileNotFoundError(f"--resume: no checkpoint in {self.out / 'checkpoints'}")
        self._logger = MetricsLogger(self.out / "metrics.jsonl", truncate_after=self.trainer.step if resume else None)
        self.records: list[dict[str, Any]] = []

    # --- state -------------------------------------------------------------------------------------
    def _weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.trainer.model.state_dict().items()}

    def save(self) -> None:
        rl = {"config": self.cfg.to_dict(), "ref": self.ref.state_dict()}
        if self.behaviour is not None:
            rl["behaviour"] = self.behaviour
        self.trainer.extra_state["rl"] = rl
        self.trainer.save()

    def resume(self) -> bool:
        d = self.out / "checkpoints"
        if ckpt.latest_checkpoint(d) is None:
            return False
        state = ckpt.load_checkpoint(d)
        self.trainer.load_state(state)
        rl = state["extra"]["rl"]
        self.ref.load_state_dict(rl["ref"])
        self.behaviour = rl.get("behaviour")
        return True

    # --- the loop ----------------------------------------------------------------------------------
    def _executor(self):
        by_id = {t.instance_id: t for t in self.tasks}
        if self.cfg.executor == "ray":
            from minicoder.rl.ray_executor import RayExecutor

            return RayExecutor(self.trainer.model, self.tokenizer, self.cfg, self.open_env, by_id)
        return LocalExecutor(self.trainer.model, self.tokenizer, self.cfg, self.open_env, by_id)

    def fit(self, steps: int | None = None, callback: Callable[[dict[str, Any]], None] | None = None
            ) -> list[dict[str, Any]]:
        """Train until step `steps` (default cfg.steps); returns this call's metrics records."""
        end = self.cfg.steps if steps is None else steps
        start = self.trainer.step
        cfg = self.cfg
        if start >= end:
            return []
        ex = self._executor()
        graded: dict[int, queue.Queue] = {}
        lock = threading.Lock()
        versions: dict[int, dict[str, torch.Tensor]] = {}
        # the weights each step's rollouts use: version s - staleness (the behaviour copy on resume)
        versions[start] = self._weights()
        if cfg.max_staleness and start > 0:
            if self.behaviour is None:
                raise RuntimeError("a pipelined checkpoint without the behaviour weights")
            versions[start - 1] = self.behaviour
        ready = threading.Condition()
        rollout_done: dict[int, float] = {}
        errors: list[BaseException] = []
        stop = threading.Event()

        def q_for(s: int) -> queue.Queue:
            with lock:
                return graded.setdefault(s, queue.Queue(maxsize=cfg.queue_size * 4))

        def rollout_loop() -> None:
            try:
                for s in range(start, end):
                    v = max(0, s - cfg.max_staleness)
                    with ready:
                        while v not in versions and not stop.is_set():
                            ready.wait(0.5)
                    if stop.is_set():
                        return
                    t0 = time.perf_counter()
                    shards = step_jobs(self.tasks, s, cfg)
                    ex.rollout(shards, versions[v], v, q_for(s).put)
                    rollout_done[s] = time.perf_counter() - t0
            except BaseException as e:  # surfaced in the main thread
                errors.append(e)

        torch.set_num_threads(cfg.update_threads)
        thread = threading.Thread(target=rollout_loop, name="rollout", daemon=True)
        t_run = time.perf_counter()
        thread.start()
        bar = None
        if self.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=end, initial=start, desc="rl", unit="step", dynamic_ncols=True)
        out: list[dict[str, Any]] = []
        try:
            for s in range(start, end):
                n = cfg.tasks_per_step * cfg.group
                t0 = time.perf_counter()
                trajs: list[Trajectory] = []
                while len(trajs) < n:
                    if errors:
                        raise errors[0]
                    try:
                        trajs.append(q_for(s).get(timeout=0.5))
                    except queue.Empty:
                        continue
                t_wait = time.perf_counter() - t0
                rec = self._update(s, trajs, versions)
                rec.update(rollout_s=rollout_done.get(s, float("nan")), wait_s=t_wait,
                           elapsed_s=time.perf_counter() - t_run)
                with ready:
                    versions[s + 1] = self._weights()
                    for old in [k for k in versions if k < s + 1 - cfg.max_staleness]:
                        del versions[old]
                    ready.notify_all()
                self.behaviour = versions.get(s + 1 - cfg.max_staleness) if cfg.max_staleness else None
                if cfg.ckpt_every and (self.trainer.step % cfg.ckpt_every == 0 or self.trainer.step == end):
                    self.save()
                self._logger.log(rec)
                out.append(rec)
                self.records.append(rec)
                if callback is not None:
                    callback(rec)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(reward=f"{rec['reward_mean']:.2f}", zero_var=f"{rec['zero_variance_frac']:.2f}")
        finally:
            stop.set()
            with ready:
                ready.notify_all()
            ex.close()
            if bar is not None:
                bar.close()
        return out

    def _update(self, step: int, trajs: list[Trajectory], versions) -> dict[str, Any]:
        cfg = self.cfg
        trajs = sorted(trajs, key=lambda t: (t.group, t.sample))
        # one group per (step, task draw): the same task drawn twice in a step makes two groups
        samples = [to_sample(t, f"{t.group}:{t.task_id}") for t in trajs]
        m = grpo_step(self.trainer, samples, cfg.grpo, ref_model=self.ref)
        turns = sum(t.turns for t in trajs)
        ends: dict[str, int] = {}
        for t in trajs:
            ends[t.end_reason] = ends.get(t.end_reason, 0) + 1
        rec: dict[str, Any] = {"step": self.trainer.step, **m,
                               "pass_rate": sum(t.reward == 1.0 for t in trajs) / len(trajs),
                               "submitted_frac": sum(t.finished for t in trajs) / len(trajs),
                               "turns_mean": turns / len(trajs),
                               "invalid_rate": sum(t.invalid_calls for t in trajs) / max(turns, 1),
                               "refused_calls": sum(t.refused_calls for t in trajs),
                               "env_errors": ends.get("env_error", 0), "end_reasons": ends,
                               "policy_version": min(t.policy_version for t in trajs),
                               "staleness": self.trainer.step - 1 - min(t.policy_version for t in trajs),
                               "gen_s": sum(t.gen_s for t in trajs) / max(1, cfg.rollout_workers),
                               "tool_s": sum(t.tool_s for t in trajs),
                               "eval_s": sum(t.eval_s for t in trajs),
                               "policy_tokens_mean": sum(t.policy_tokens for t in trajs) / len(trajs)}
        return rec

    def close(self) -> None:
        self._logger.close()
