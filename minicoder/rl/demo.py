"""The demo's two RL stages: GRPO in the sandbox (`stage`), then held-out pass@1 before and after (`evaluate`).

`minicoder demo` plugs these in by name (`minicoder/demo/stages.py`). They run the same code as
`minicoder warmstart`, `minicoder rl` and `minicoder eval-agent`, at demo size:

  rl     a warm start (the policy must already solve some tasks for GRPO to have a signal), then
         GRPO on the toy family's train split: rollouts in live sandbox sessions, rewards from the
         hidden tests in fresh sandboxes, pipelined updates (`rl.pipeline.RLRun`).
  eval   the warm start and the RL policy on the *held-out* split (other functions, constants and
         mutation tables), greedy and sampled, graded the same way.

Where the warm start comes from (`warmstart.find_warm_start`; recorded in the result and said in
the report):
  ``env``      $MINICODER_WARM, a model folder;
  ``cached``   `runs/warm/final`, what `minicoder warmstart --out runs/warm` trains (about 20
               minutes on 2 cores; see `rl/warmstart.py`);
  ``shipped``  `checkpoints/toy-warm`, the same recipe's checkpoint that the repository ships and
               bench/rl_toy.py measures from, so a fresh clone's demo shows a real gain;
  ``tiny``     with `--quick` (or none of the above), a 2-layer model warm-started here on scripted
               episodes in about a minute. It has learned the tool format but rarely the fix, so
               its held-out numbers are low: the mechanics are the demo's point then.

The toy family has its own small tokenizer (trained on its episodes), so these stages do not read
the demo's pretrained model: a model pretrained for minutes on the stdlib cannot solve a task, and
warm-starting it would cost the time the rest of the demo takes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path


def settings(quick: bool, backend: str) -> dict:
    """The rl stage's settings for a profile (the eval stage's are in `eval_settings`)."""
    from minicoder.rl.warmstart import find_warm_start

    found = None if quick else find_warm_start()
    warm, path = found if found else ("tiny", None)
    return {"warm": warm, "warm_path": str(path) if path else None,
            "tiny_tasks": 32 if quick else 64, "tiny_steps": 40 if quick else 120,
            "train_tasks": 16 if quick else 200, "steps": 1 if quick else 16, "tasks_per_step": 2 if quick else 4,
            "group": 4 if quick else 8, "lr": 3e-4, "seed": 0, "backend": backend}


def with_warm_digest(s: dict) -> dict:
    """`s` plus the content hash of its warm start's weights (the stage cache keys on settings, so a
    model retrained at the same path re-runs the stage); call it on the final settings."""
    from minicoder.rl.warmstart import model_digest

    path = s.get("warm_path")
    return {**s, "warm_digest": model_digest(path) if path and s.get("warm") != "tiny" else None}


def eval_settings(quick: bool, backend: str) -> dict:
    # the default profile evaluates on bench/rl_toy.py's 24 held-out tasks with 8 samples each
    return {"tasks": 3 if quick else 24, "k": 2 if quick else 8, "seed": 0, "backend": backend}


def _limits_tools():
    from minicoder.agent.loop import AgentLimits
    from minicoder.agent.tools import ToolConfig
    from minicoder.rl.cli import PRESETS

    return AgentLimits(**PRESETS["toy"]["limits"]), ToolConfig.toy()


def stage(ctx) -> dict:
    """Warm start (cached or tiny), then GRPO; the result names both model folders and the curve."""
    import torch

    from minicoder.agent.cli import session_opener
    from minicoder.agent.policies import load_model_folder
    from minicoder.model.hf import save_pretrained
    from minicoder.rl import warmstart
    from minicoder.rl.grpo import GRPOConfig
    from minicoder.rl.pipeline import RLConfig, RLRun
    from minicoder.rl.report import export_final
    from minicoder.rl.toy_tasks import generate

    s = ctx.settings
    torch.set_num_threads(1)
    open_env = session_opener(s["backend"])
    t0 = time.perf_counter()
    if s["warm"] != "tiny":
        warm = Path(s["warm_path"])
        if not (warm / "config.json").is_file():
            raise RuntimeError(f"rl: the {s['warm']} warm start {warm} is gone; re-create it with "
                               "`minicoder warmstart --out runs/warm`, or run `minicoder demo --quick`")
        print(f"rl: warm start: the {s['warm']} checkpoint {warm}")
        warm_info = {"source": s["warm"], "path": str(warm)}
    else:
        tasks = generate("train", s["tiny_tasks"], seed=1)
        info = warmstart.warm_start(tasks, ctx.dir / "warm", steps=s["tiny_steps"], rows=2, lr=3e-3, progress=True,
                                    open_env=open_env, resume=ctx.resumed and (ctx.dir / "warm").exists(),
                                    **warmstart.TINY_MODEL)
        warm = Path(info["final"])
        warm_info = {"source": "tiny", "path": ctx.rel(warm), "episodes": info["episodes"], "loss": info["loss"],
                     "parameters": info["parameters"]}
        print(f"rl: warm start: a tiny model trained here ({info['parameters'] / 1e6:.2f}M parameters, "
              f"{info['episodes']} scripted episodes, final loss {info['loss']:.3f})")
    warm_s = time.perf_counter() - t0
    model, tok = load_model_folder(warm)
    limits, tools = _limits_tools()
    cfg = RLConfig(steps=s["steps"], tasks_per_step=s["tasks_per_step"], group=s["group"], lr=s["lr"], seed=s["seed"],
                   max_staleness=1, backend=s["backend"], limits=limits, tools=tools,
                   grpo=GRPOConfig(norm_len=limits.max_new_tokens * limits.max_turns // 2))
    init_dir = ctx.dir / "init"
    if not (init_dir / "config.json").is_file():
        save_pretrained(model, init_dir)
        tok.save(init_dir)
    resume = ctx.resumed and (ctx.dir / "run" / "checkpoints").is_dir()
    run = RLRun(cfg, model, tok, generate("train", s["train_tasks"], seed=2), ctx.dir / "run", open_env=open_env,
                resume=resume, progress=True)
    t1 = time.perf_counter()
    try:
        recs = run.fit()
    finally:
        run.close()
    final = export_final(run.trainer.model, tok, ctx.dir / "final")
    from minicoder.train.metrics import read_metrics

    recs = [r for r in read_metrics(ctx.dir / "run" / "metrics.jsonl") if "reward_mean" in r] or recs
    print(f"rl: {len(recs)} GRPO steps in {time.perf_counter() - t1:.0f}s; reward per step "
          + " ".join(f"{r['reward_mean']:.2f}" for r in recs))
    return {"warm_start": warm_info, "init": ctx.rel(init_dir), "final": ctx.rel(final),
            "reward_curve": {"step": [r["step"] for r in recs], "reward": [r["reward_mean"] for r in recs]},
            "steps": len(recs), "group": s["group"], "tasks_per_step": s["tasks_per_step"],
            "warm_start_seconds": round(warm_s, 1), "rl_seconds": round(time.perf_counter() - t1, 1),
            "zero_variance_frac": [r.get("zero_variance_frac") for r in recs]}


def evaluate(ctx) -> dict:
    """The RL stage's init and final policies on held-out toy tasks: pass@1 (greedy, sampled), pass@k."""
    import torch

    from minicoder.agent.cli import session_opener
    from minicoder.agent.evaluate import evaluate_agent, summarize
    from minicoder.agent.policies import LocalPolicy, load_model_folder
    from minicoder.rl.toy_tasks import generate

    s = ctx.settings
    torch.set_num_threads(1)
    rl = ctx.inputs["rl"]
    held = generate("heldout", s["tasks"], seed=s["seed"])
    limits, tools = _limits_tools()
    out: dict = {"n_tasks": len(held), "k": s["k"], "warm_start": rl["warm_start"]["source"]}
    for name in ("init", "final"):
        model, tok = load_model_folder(ctx.path(rl[name]))
        model.eval()
        pol = LocalPolicy(model, tok, temperature=1.0)
        rows = evaluate_agent(pol, held, session_opener(s["backend"]), k=s["k"], tokenizer=tok, tool_cfg=tools,
                              limits=limits, seed=s["seed"], out=ctx.dir / f"{name}.jsonl", progress=True,
                              set_temperature=lambda t, p=pol: setattr(p, "temperature", t))
        out[name] = summarize(rows, k=s["k"])
    before, after = out["init"], out["final"]
    out["pass_at_1"] = {"before": before.get("pass@1_sampled", 0.0), "after": after.get("pass@1_sampled", 0.0)}
    out["pass_at_1_greedy"] = {"before": before.get("pass@1_greedy", 0.0), "after": after.get("pass@1_greedy", 0.0)}
    kk = next((k for k in before if k.startswith("pass@") and k[5:].isdigit()), None)
    if kk:
        out["pass_at_k"] = {"k": int(kk[5:]), "before": before[kk], "after": after.get(kk, 0.0)}
    (ctx.dir / "summary.json").write_text(json.dumps(out, indent=1))
    p = out["pass_at_1"]
    print(f"eval: held-out pass@1 (sampled) {p['before']:.2f} -> {p['after']:.2f}, greedy "
          f"{out['pass_at_1_greedy']['before']:.2f} -> {out['pass_at_1_greedy']['after']:.2f} on {len(held)} tasks "
          f"(warm start: {out['warm_start']})")
    return out
