"""The Ray executor of the RL pipeline: rollout workers and evaluation workers as Ray actors.

    RLConfig(executor="ray", rollout_workers=2, eval_workers=2)

Rollout actors each hold a copy of the policy (weights sent through the object store once per
version) and run whole shards of a step with `gen_threads` torch threads of their own; evaluation
actors grade trajectories in fresh sandboxes. The driver keeps post-processing and the update
(`update_threads`). Shard k of a step goes to rollout actor k mod R and the shards are the same as
the local executor's, so every batch the model sees is the same and the metrics agree (tested).
A trajectory is sent to an evaluation actor as soon as its shard returns.

`ray.init` is called with a local cluster when none is running (``num_cpus`` = the actors' threads,
no dashboard); the actors are killed when the run ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def _ray():
    try:
        import ray
    except ImportError as e:
        raise RuntimeError("--executor ray needs ray (pip install 'minicoder[scale]')") from e
    return ray


def start_local_ray(num_cpus: int, env_vars: dict[str, str] | None = None, attempts: int = 3) -> None:
    """Start a local Ray cluster (no dashboard), retrying a failed start.

    Ray's raylet gives up when its dashboard agent has not written its port file within a fixed 15 s
    (ray-project/ray#65983); on a loaded 2-core machine the agent's imports alone can take that long
    the first time, and a second start (warm page cache) usually makes it. Raises the last error,
    with the load average, after `attempts` tries."""
    import os

    ray = _ray()
    err: Exception | None = None
    for _ in range(attempts):
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                     runtime_env={"env_vars": dict(env_vars or {})})
            return
        except Exception as e:  # noqa: BLE001 -- Ray raises several kinds here; retried, then re-raised
            err = e
            ray.shutdown()
    raise RuntimeError(f"a local Ray cluster did not start in {attempts} tries (load average "
                       f"{os.getloadavg()[0]:.1f}; Ray's raylet waits a fixed 15 s for its dashboard agent, "
                       f"ray-project/ray#65983): {err}") from err

class RayExecutor:
    name = "ray"

    def __init__(self, model, tokenizer, cfg, open_env: Callable, tasks_by_id: dict[str, Any]) -> None:
        ray = _ray()
        from minicoder.rl.grpo import frozen_copy

        if not ray.is_initialized():
            start_local_ray(num_cpus=max(2, cfg.rollout_workers * cfg.gen_threads + cfg.eval_workers),
                            env_vars={"OMP_NUM_THREADS": str(cfg.gen_threads)})
        self.cfg, self.ray = cfg, ray

        @ray.remote(num_cpus=0)
        class RolloutActor:
            def __init__(self, model, tokenizer, cfg, open_env):
                import torch

                from minicoder.rl.pipeline import RolloutWorker

                torch.set_num_threads(cfg.gen_threads)
                self.w = RolloutWorker(model, tokenizer, cfg, open_env)

            def run(self, weights, version, jobs):
                self.w.set_weights(weights, version)
                return self.w.run(jobs)

        @ray.remote(num_cpus=0)
        class EvalActor:
            def __init__(self, tasks, backend):
                self.tasks, self.backend = tasks, backend

            def grade(self, traj):
                from minicoder.agent.evaluate import grade

                return grade(self.tasks[traj.task_id], traj, self.backend)

        tasks_ref = ray.put(tasks_by_id)
        base = frozen_copy(model)
        self.rollout_actors = [RolloutActor.remote(base, tokenizer, cfg, open_env) for _ in range(cfg.rollout_workers)]
        self.eval_actors = [EvalActor.remote(tasks_ref, cfg.backend) for _ in range(cfg.eval_workers)]
        self._next_eval = 0
        self._weights: tuple[int, Any] | None = None

    def rollout(self, shards, weights, version: int, graded: Callable) -> None:
        ray = self.ray
        if self._weights is None or self._weights[0] != version:
            self._weights = (version, ray.put(weights))
        wref = self._weights[1]
        pending = {}
        for k, shard in enumerate(shards):
            actor = self.rollout_actors[k % len(self.rollout_actors)]
            pending[actor.run.remote(wref, version, shard)] = k
        evals = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                pending.pop(ref)
                for traj in ray.get(ref):
                    actor = self.eval_actors[self._next_eval % len(self.eval_actors)]
                    self._next_eval += 1
                    evals.append(actor.grade.remote(traj))

        def collect(refs=evals) -> None:  # deliver gradings as they land, off the rollout thread
            left = list(refs)
            while left:
                done, left = ray.wait(left, num_returns=1)
                for ref in done:
                    graded(ray.get(ref))

        threading.Thread(target=collect, name="ray-grades", daemon=True).start()

    def close(self) -> None:
        import contextlib

        for a in self.rollout_actors + self.eval_actors:
            with contextlib.suppress(Exception):  # already gone
                self.ray.kill(a)
