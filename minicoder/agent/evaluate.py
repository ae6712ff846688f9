"""Evaluate an agent on tasks: rollouts in live sessions, the final diff graded with the hidden tests.

    rows = evaluate_agent(policy, tasks, k=8, out="results.jsonl")   # appends as it goes; re-run skips done
    print(format_summary(summarize(rows, k=8)))

For each task: one greedy rollout (temperature 0, for pass@1 greedy) when the policy supports it, and
`k` sampled rollouts (pass@1 sampled = the mean reward of the samples; pass@k = the unbiased
estimator 1 - C(n - c, k) / C(n, k) of Chen et al. 2021 with n samples and c correct). A rollout is
graded only if it submitted; otherwise its reward is 0 and its end reason says why. Grading runs
`minicoder.sandbox.reward.evaluate` in a fresh sandbox: the candidate diff, then the hidden tests.

Results are one JSON object per rollout (task, sample, mode, reward, status, end reason, turns,
invalid and refused calls, seconds), appended and flushed as each one is graded; a re-run with the
same file skips the (task, mode, sample) triples already there, so an interrupted evaluation loses
nothing.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from minicoder.agent.loop import AgentLimits, Job, Trajectory, run_rollouts
from minicoder.agent.tools import ToolConfig


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021)."""
    if n < k:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def sample_seed(base: int, *parts: Any) -> int:
    """A 63-bit seed from a base seed and any parts (task id, step, sample), stable across runs."""
    import hashlib

    h = hashlib.blake2b(repr((base, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & 0x7FFF_FFFF_FFFF_FFFF


def grade(task, traj: Trajectory, backend: str = "local", timeout_s: float | None = None) -> Trajectory:
    """Set traj.reward / eval_status from the hidden tests (0 without grading when it did not submit)."""
    import time

    from minicoder.sandbox.reward import evaluate

    if not traj.finished:
        traj.reward, traj.eval_status = 0.0, f"not_submitted:{traj.end_reason}"
        return traj
    t0 = time.perf_counter()
    try:
        r = evaluate(task, traj.diff, backend=backend, timeout_s=timeout_s)
        traj.reward, traj.eval_status = float(r.reward), r.status
    except Exception as e:  # the grader itself failed: that sample scores 0, with the reason
        traj.reward, traj.eval_status = 0.0, f"grader_error: {type(e).__name__}: {e}"[:300]
    traj.eval_s = time.perf_counter() - t0
    return traj


def _row(t: Trajectory, mode: str) -> dict[str, Any]:
    return {"task_id": t.task_id, "mode": mode, "sample": t.sample, "reward": t.reward, "status": t.eval_status,
            "end_reason": t.end_reason, "turns": t.turns, "invalid_calls": t.invalid_calls,
            "refused_calls": t.refused_calls, "tool_calls": t.tool_calls, "policy_tokens": t.policy_tokens,
            "wall_s": round(t.wall_s, 3), "eval_s": round(t.eval_s, 3), "message": t.message}


def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    p = Path(path)
    if not p.exists():
        return []
    out = []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut by a crash
    return out


def evaluate_agent(policy, tasks: Sequence[Any], open_env: Callable, k: int = 8, greedy: bool = True,
                   tokenizer=None, tool_cfg: ToolConfig | None = None, limits: AgentLimits | None = None,
                   backend: str = "local", seed: int = 0, out: str | os.PathLike | None = None,
                   batch_tasks: int = 8, workers: int = 4, progress: bool = True, temperature: float = 1.0,
                   set_temperature: Callable[[float], None] | None = None) -> list[dict[str, Any]]:
    """Roll out and grade (see the module docstring); returns every result row (old ones included).

    set_temperature(t): switches the policy between greedy (0) and sampling at `temperature`;
    without it only the policy's own temperature is used (mode "sampled" only).
    """
    from concurrent.futures import ThreadPoolExecutor

    done = read_results(out) if out is not None else []
    have = {(r["task_id"], r["mode"], r["sample"]) for r in done}
    fh = open(out, "a", encoding="utf-8") if out is not None else None  # noqa: SIM115
    by_id = {t.instance_id: t for t in tasks}
    modes = ([("greedy", 1)] if greedy and set_temperature is not None else []) + [("sampled", k)]
    todo = [(mode, t, s) for mode, n in modes for t in tasks for s in range(n) if (t.instance_id, mode, s) not in have]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="eval-agent", unit="rollout", dynamic_ncols=True)
    rows = list(done)
    grader = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="grade")
    try:
        for mode, _ in modes:
            jobs = [Job(t, s, sample_seed(seed, t.instance_id, mode, s)) for m, t, s in todo if m == mode]
            if not jobs:
                continue
            if set_temperature is not None:
                set_temperature(0.0 if mode == "greedy" else temperature)
            per = max(1, batch_tasks * (1 if mode == "greedy" else k))
            for lo in range(0, len(jobs), per):
                futs: list = []

                def to_grade(tr, futs=futs) -> None:
                    futs.append(grader.submit(grade, by_id[tr.task_id], tr, backend))

                run_rollouts(policy, jobs[lo:lo + per], open_env, tokenizer=tokenizer, tool_cfg=tool_cfg,
                             limits=limits, workers=workers, on_done=to_grade)
                for f in futs:
                    row = _row(f.result(), mode)
                    rows.append(row)
                    if fh is not None:
                        fh.write(json.dumps(row) + "\n")
                        fh.flush()
                    if bar is not None:
                        bar.update(1)
    finally:
        grader.shutdown(wait=True)
        if fh is not None:
            fh.close()
        if bar is not None:
            bar.close()
    return rows


def summarize(rows: Sequence[dict[str, Any]], k: int = 8) -> dict[str, Any]:
    """pass@1 greedy / sampled, pass@k, mean turns, end reasons, invalid-call rate (per turn)."""
    out: dict[str, Any] = {"rollouts": len(rows)}
    greedy = [r for r in rows if r["mode"] == "greedy"]
    sampled = [r for r in rows if r["mode"] == "sampled"]
    if greedy:
        out["pass@1_greedy"] = sum(r["reward"] for r in greedy) / len(greedy)
    if sampled:
        out["pass@1_sampled"] = sum(r["reward"] for r in sampled) / len(sampled)
        per: dict[str, list[float]] = defaultdict(list)
        for r in sampled:
            per[r["task_id"]].append(r["reward"])
        kk = min(k, min(len(v) for v in per.values()))
        out[f"pass@{kk}"] = sum(pass_at_k(len(v), sum(x == 1.0 for x in v), kk) for v in per.values()) / len(per)
        out["tasks"] = len(per)
    turns = sum(r["turns"] for r in rows)
    out["mean_turns"] = turns / len(rows) if rows else 0.0
    out["invalid_call_rate"] = sum(r["invalid_calls"] for r in rows) / max(turns, 1)
    out["refused_calls"] = sum(r.get("refused_calls", 0) for r in rows)
    out["end_reasons"] = dict(Counter(r["end_reason"] for r in rows))
    return out


def format_summary(s: dict[str, Any]) -> str:
    keys = [k for k in s if k.startswith("pass@")]
    lines = [f"{k:>16}: {s[k]:.3f}" for k in keys]
    lines += [f"{'mean turns':>16}: {s['mean_turns']:.2f}", f"{'invalid calls':>16}: {s['invalid_call_rate']:.3f} per turn",
              f"{'end reasons':>16}: " + ", ".join(f"{k} {v}" for k, v in sorted(s["end_reasons"].items())),
              f"{'rollouts':>16}: {s['rollouts']}" + (f" over {s['tasks']} tasks" if "tasks" in s else "")]
    return "\n".join(lines)
