"""Warm start: scripted agent episodes of the toy family, recorded by the real agent loop, for mid-training.

Before RL can sharpen anything the model must already solve some tasks (RL.md: sampled pass@1 of
~15-40% is the learnable range). It gets there by mid-training (`minicoder.train.Trainer`, the same
stage as `minicoder train --data tasks:...`) on episodes a scripted policy plays in the real tool
format. The episodes are *recorded by running the agent loop*, tools and all, in real sessions: the
token ids, loss mask (1 on the scripted assistant turns only) and observations are exactly what the
model will see when it acts itself.

Four scripts, drawn per task (the bug's line and its fix come from the task's metadata, which the
agent never sees):
    direct      view -> str_replace(bug -> fix) -> run_tests (pass) -> submit
    test_first  view -> run_tests (fail) -> str_replace -> run_tests (pass) -> submit
    run_first   run_tests (fail) -> view -> str_replace -> run_tests (pass) -> submit
    retry       view -> str_replace(bug -> a wrong fix) -> run_tests (fail, read it) ->
                str_replace(wrong fix -> fix) -> run_tests (pass) -> submit
The retry episodes teach "write it, run it, fix it when it fails": after a failing run the next
move is another edit, not a submit.
"""

from __future__ import annotations

import random
from typing import Any

from minicoder.agent.policies import ScriptedPolicy, call

SCRIPTS = ("direct", "test_first", "run_first", "retry")
DEFAULT_MIX = {"direct": 0.3, "test_first": 0.2, "run_first": 0.2, "retry": 0.3}


def script_steps(task, script: str) -> list[dict[str, Any]]:
    """The scripted replies for `task`, in order."""
    m = task.metadata
    path, bug, fix, decoy = m["path"], m["buggy_line"], m["fixed_line"], m["decoy_line"]
    view = call("view", path=path)
    edit = call("str_replace", path=path, old_str=bug, new_str=fix)
    test, done = call("run_tests"), call("submit")
    if script == "direct":
        return [view, edit, test, done]
    if script == "test_first":
        return [view, test, edit, test, done]
    if script == "run_first":
        return [test, view, edit, test, done]
    if script == "retry":
        return [view, call("str_replace", path=path, old_str=bug, new_str=decoy), test,
                call("str_replace", path=path, old_str=decoy, new_str=fix), test, done]
    raise ValueError(f"unknown script {script!r}; choose one of {SCRIPTS}")


def pick_script(task, seed: int = 0, mix: dict[str, float] | None = None) -> str:
    mix = mix or DEFAULT_MIX
    rng = random.Random(f"warm:{seed}:{task.instance_id}")
    return rng.choices(list(mix), weights=list(mix.values()))[0]


def scripted_policy(scripts: dict[str, str]) -> ScriptedPolicy:
    """A policy playing `scripts[task_id]` for each rollout (one reply per turn; then submit)."""

    def reply(st) -> dict[str, Any]:
        steps = script_steps(st.job.task, scripts[st.task_id])
        return steps[min(st.turn, len(steps) - 1)]

    return ScriptedPolicy(reply, name="scripted-toy")


# --- the warm-start run ------------------------------------------------------------------------------

def record_episodes(tasks, open_env, path, seed: int = 0, tool_cfg=None, workers: int = 4,
                    batch: int = 32, progress: bool = True) -> list[dict[str, Any]]:
    """Play the scripted episode of every task in a real session; append each to `path` (JSONL of
    {"task_id", "script", "messages", "end_reason"}) as it finishes; tasks already there are skipped."""
    import json
    from pathlib import Path

    from minicoder.agent.loop import Job, run_rollouts
    from minicoder.agent.tools import ToolConfig

    tool_cfg = tool_cfg or ToolConfig.toy()
    path = Path(path)
    have = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue
            have[d["task_id"]] = d
    todo = [t for t in tasks if t.instance_id not in have]
    scripts = {t.instance_id: pick_script(t, seed) for t in tasks}
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="scripted episodes", unit="episode", dynamic_ncols=True)
    with open(path, "a", encoding="utf-8") as fh:
        for lo in range(0, len(todo), batch):
            trajs = run_rollouts(scripted_policy(scripts), [Job(t) for t in todo[lo:lo + batch]], open_env,
                                 tokenizer=None, tool_cfg=tool_cfg, workers=workers)
            for tr in trajs:
                d = {"task_id": tr.task_id, "script": scripts[tr.task_id], "messages": tr.messages,
                     "end_reason": tr.end_reason}
                have[tr.task_id] = d
                fh.write(json.dumps(d) + "\n")
                fh.flush()
            if bar is not None:
                bar.update(len(trajs))
    if bar is not None:
        bar.close()
    return [have[t.instance_id] for t in tasks if t.instance_id in have]


def family_tokenizer(episodes: list[dict[str, Any]], vocab_size: int = 2048, tool_cfg=None, stdlib_files: int = 200):
    """A byte-level BPE trained on stdlib code plus (up to 300) rendered episodes, so the template's
    tags and the family's vocabulary are short: fewer tokens per rollout on a CPU."""
    from minicoder.agent.chat import render_chat
    from minicoder.agent.tools import ToolConfig
    from minicoder.data.corpus import iter_corpus
    from minicoder.data.tokenizer import train_tokenizer

    specs = (tool_cfg or ToolConfig.toy()).specs()
    texts = [render_chat(e["messages"], specs) for e in episodes[:300]]
    code = [d.text for d in iter_corpus("stdlib", max_files=stdlib_files, seed=0)]
    return train_tokenizer(code + texts, vocab_size=vocab_size)


def warm_start(tasks, out, steps: int = 300, lr: float = 3e-3, model_preset: str = "toy", backend: str = "local",
               seed: int = 0, resume: bool = False, open_env=None, rows: int = 8, seq_len: int = 1024,
               vocab_size: int = 2048, progress: bool = True, **model_overrides: Any) -> dict[str, Any]:
    """Episodes -> tokenizer -> mid-training -> ``out/final`` (a model folder). Resumable at each stage."""
    from pathlib import Path

    from minicoder.agent.tokens import encode_conversation
    from minicoder.agent.tools import ToolConfig
    from minicoder.data.tokenizer import CodeTokenizer
    from minicoder.rl.report import export_final
    from minicoder.train import PackedDataset, TrainConfig, Trainer, build_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tool_cfg = ToolConfig.toy()
    if open_env is None:
        from minicoder.agent.cli import session_opener

        open_env = session_opener(backend)
    episodes = record_episodes(tasks, open_env, out / "episodes.jsonl", seed, tool_cfg, progress=progress)
    bad = [e for e in episodes if e["end_reason"] != "submitted"]
    if bad:
        raise RuntimeError(f"{len(bad)} scripted episodes did not submit (first: {bad[0]['task_id']}: "
                           f"{bad[0]['end_reason']})")
    tok_path = out / "tokenizer.json"
    tok = CodeTokenizer.load(tok_path) if tok_path.exists() else family_tokenizer(episodes, vocab_size, tool_cfg)
    tok.save(tok_path)
    ids, masks = [], []
    for e in episodes:
        i, m = encode_conversation(e["messages"], tok, tool_cfg.specs())
        ids.append(i[:-1])  # a rollout ends at the last <|im_end|>; the template's newline is not part of it
        masks.append(m[:-1])
    ds = PackedDataset.from_token_lists(ids, seq_len, trainable=masks, pad_id=tok.pad_id)
    overrides = {"kernel": "torch", "num_nextn_predict_layers": 0, **model_overrides}
    model, mcfg = build_model(model_preset, vocab_size=tok.vocab_size, seed=seed, **overrides)
    # every 50-step checkpoint is kept: an earlier one is a weaker warm start (see `export_checkpoint`)
    cfg = TrainConfig(steps=steps, rows=rows, lr=lr, warmup_steps=min(20, steps // 10 + 1), ckpt_every=50,
                      keep_last=steps // 50 + 1, seed=seed, progress=progress, log_every=1)
    tr = Trainer(model, ds, cfg, out_dir=out, model_config=mcfg, extra_state={"tokenizer": str(tok_path)})
    if resume:
        tr.resume()
    recs = tr.fit()
    tr.close()
    final = export_final(model, tok, out / "final")
    return {"final": str(final), "episodes": len(episodes), "tokens": int(sum(map(len, ids))),
            "policy_tokens": int(sum(map(sum, masks))), "steps": tr.step,
            "loss": recs[-1]["loss"] if recs else None, "parameters": model.num_parameters()}


def export_checkpoint(run_dir, step: int, folder=None):
    """The warm-start run's checkpoint at `step` as a model folder (default ``run_dir/step_<step>``).

    A warm start must leave RL something to learn (sampled pass@1 of ~15-40%, pass@k well above):
    an earlier checkpoint of the same run is a weaker starting point when the final one is too strong."""
    from pathlib import Path

    from minicoder.config import ModelConfig
    from minicoder.data.tokenizer import CodeTokenizer
    from minicoder.model import HybridLM
    from minicoder.rl.report import export_final
    from minicoder.train import checkpoint as ckpt

    run_dir = Path(run_dir)
    state = ckpt.load_checkpoint(ckpt.checkpoint_path(run_dir / "checkpoints", step))
    model = HybridLM(ModelConfig(**state["config"]["model"]))
    model.load_state_dict(state["model"])
    return export_final(model, CodeTokenizer.load(run_dir / "tokenizer.json"), folder or run_dir / f"step_{step}")
