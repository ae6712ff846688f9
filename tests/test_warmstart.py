"""The warm start: scripted toy-family episodes played by the real agent loop in real sessions, graded
by the hidden tests; the ids the warm start trains on are the ids the model sees when it acts; a tiny
end-to-end run writes a model folder the agent can load, resumes without redoing episodes, and its
checkpoint exports to the same weights."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from minicoder.agent.chat import render_chat
from minicoder.agent.evaluate import grade
from minicoder.agent.loop import AgentLimits, Job, run_rollouts
from minicoder.agent.tokens import encode_conversation
from minicoder.agent.tools import ToolConfig
from minicoder.gitdiff import apply_to_snapshot as apply_patch
from minicoder.rl.toy_tasks import generate
from minicoder.rl.warmstart import (
    DEFAULT_MIX,
    SCRIPTS,
    export_checkpoint,
    family_tokenizer,
    loss_mask,
    pick_script,
    scripted_policy,
    warm_start,
)

pytest.importorskip("minicoder.sandbox.session")
TOOLS = ToolConfig.toy()


@pytest.fixture(scope="module")
def opener():
    from minicoder.agent.cli import session_opener

    return session_opener("local")


@pytest.fixture(scope="module")
def tasks():
    return generate("train", 12, seed=3)


def test_every_script_reaches_reward_one_and_retry_reads_a_failure(tasks, opener):
    # one task per script, each played in a real session and graded with the hidden tests
    picked = {s: t for s, t in zip(SCRIPTS, tasks)}
    scripts = {t.instance_id: s for s, t in picked.items()}
    trajs = run_rollouts(scripted_policy(scripts), [Job(t) for t in picked.values()], opener, tool_cfg=TOOLS,
                         limits=AgentLimits(max_turns=8))
    by_id = {t.instance_id: t for t in picked.values()}
    for tr in trajs:
        script = scripts[tr.task_id]
        assert tr.end_reason == "submitted" and tr.invalid_calls == 0, (script, tr.end_reason, tr.message)
        assert grade(by_id[tr.task_id], tr).reward == 1.0, (script, tr.eval_status)
        runs = [m["content"] for m in tr.messages if m["role"] == "tool" and m["name"] == "run_tests"]
        assert runs[-1].endswith("0 failed"), (script, runs[-1])  # the last run before submit passes
        if script in ("retry", "test_first", "run_first"):
            assert "FAILED" in runs[0], (script, runs[0])  # it saw the failure first
        if script == "retry":  # two edits: the wrong fix, then the right one after reading the failure
            assert tr.tool_calls["str_replace"] == 2 and tr.turns == 6


def test_scripted_policy_leaves_the_bug_when_the_script_does(tasks, opener):
    # a control: without the fix the same loop and grader give 0 (the reward is not handed out)
    from minicoder.agent.policies import ScriptedPolicy, call

    t = tasks[0]
    tr = run_rollouts(ScriptedPolicy(lambda st: [call("run_tests"), call("submit")][min(st.turn, 1)]), [Job(t)],
                      opener, tool_cfg=TOOLS)[0]
    assert tr.end_reason == "submitted" and tr.diff == ""
    assert grade(t, tr).reward == 0.0


def test_pick_script_is_deterministic_and_follows_the_mix():
    ts = generate("train", 400, seed=5)
    picks = [pick_script(t, seed=0) for t in ts]
    assert picks == [pick_script(t, seed=0) for t in ts]
    assert picks != [pick_script(t, seed=1) for t in ts]
    share = Counter(picks)
    for s, w in DEFAULT_MIX.items():
        assert abs(share[s] / len(ts) - w) < 0.08, (s, share)


def test_training_ids_are_the_ids_the_model_sees_when_acting(tasks, opener):
    """An episode recorded with a tokenizer (ids as the loop builds them turn by turn) equals the
    warm start's encoding of its messages: mid-training teaches exactly the sequences of acting."""
    from minicoder.data.tokenizer import train_tokenizer

    tok = train_tokenizer(["def f(x):\n    return x + 1\n"] * 50 + [t.environment.files[t.metadata["path"]] for t in tasks],
                          vocab_size=400)
    scripts = {t.instance_id: "retry" for t in tasks[:2]}
    trajs = run_rollouts(scripted_policy(scripts), [Job(t) for t in tasks[:2]], opener, tokenizer=tok, tool_cfg=TOOLS,
                         limits=AgentLimits(max_turns=8, max_context_tokens=100_000, max_new_tokens=100_000))
    for tr in trajs:
        ids, mask = encode_conversation(tr.messages, tok, TOOLS.specs())
        assert tok.decode(ids[-1:]) == "\n"  # the template's newline after the last <|im_end|>
        assert tr.tokens == ids[:-1] and tr.mask == mask[:-1]
        assert sum(tr.mask) > 0 and tr.mask[tr.prompt_tokens - 1] == 0
        # the loss masks: the scripted turns only, or everything after the system turn
        assert loss_mask(ids, mask, tok, "assistant") == mask
        ep = loss_mask(ids, mask, tok, "episode")
        n0 = ep.index(1)
        text = render_chat(tr.messages, TOOLS.specs())
        assert tok.decode(ids[:n0]) == text[:text.index("<|im_start|>user")]  # exactly the system turn
        assert all(ep[n0:]) and all(e >= m for e, m in zip(ep, mask)) and sum(ep) > sum(mask)
    with pytest.raises(ValueError, match="loss_on"):
        loss_mask(ids, mask, tok, "observations")


def test_tiny_warm_start_end_to_end_resume_and_export(tmp_path, opener):
    from minicoder.agent.policies import load_model_folder

    ts = generate("train", 6, seed=4)
    kw = dict(steps=2, rows=1, seq_len=1024, vocab_size=512, progress=False, open_env=opener,
              hidden_size=32, num_hidden_layers=2, num_experts=4, moe_intermediate_size=16,
              shared_expert_intermediate_size=32, intermediate_size=64)
    res = warm_start(ts, tmp_path, **kw)
    assert res["episodes"] == 6 and res["steps"] == 2 and 0 < res["loss_tokens"] < res["tokens"]
    eps = [json.loads(x) for x in (tmp_path / "episodes.jsonl").read_text().splitlines()]
    assert [e["task_id"] for e in eps] == [t.instance_id for t in ts]
    model, tok = load_model_folder(res["final"])
    assert tok.vocab_size == model.config.vocab_size
    recipe = json.loads((Path(res["final"]) / "warmstart.json").read_text())
    assert recipe["steps"] == 2 and recipe["code_docs"] == res["code_docs"] and recipe["episodes"] == 6
    exported, _ = load_model_folder(export_checkpoint(tmp_path, 2))
    for (k, a), (_, b) in zip(model.state_dict().items(), exported.state_dict().items()):
        assert torch.equal(a, b), k
    # a second call finds the episodes and the finished training: nothing is redone
    mtime = (tmp_path / "episodes.jsonl").stat().st_mtime_ns
    res2 = warm_start(ts, tmp_path, resume=True, **kw)
    assert res2["steps"] == 2 and (tmp_path / "episodes.jsonl").stat().st_mtime_ns == mtime


def test_code_documents_are_gold_code_that_copies_its_docstring():
    from minicoder.rl.warmstart import code_documents

    eps = [{"messages": [{"role": "user", "content": "fix it"}]}]
    tok = family_tokenizer(eps, vocab_size=400, stdlib_files=5)
    docs = code_documents(4, tok, seed=3)
    golds = [apply_patch(dict(t.environment.files), t.patch)["solution.py"] for t in generate("train", 4, seed=3)]
    assert len(docs) == 4
    for d, gold in zip(docs, golds):
        assert d[-1] == tok.eos_id and tok.decode(d[:-1]) == gold
        steps = gold.split("Steps: ")[1].split('"""')[0].split("; ")
        code = [line.strip() for line in gold.splitlines()]
        assert steps[-1] in code and steps[-2] in code  # the body's last two lines are docstring steps


def test_family_tokenizer_keeps_the_template_tokens_whole():
    from minicoder.agent.chat import TEMPLATE_TOKENS

    eps = [{"messages": [{"role": "user", "content": "fix it"},
                         {"role": "assistant", "content": "", "tool_calls": [{"name": "submit", "arguments": {}}]}]}]
    tok = family_tokenizer(eps, vocab_size=400, stdlib_files=5)
    for t in TEMPLATE_TOKENS:
        assert len(tok.encode(t, allow_special=True)) == 1, t


def test_find_warm_start_prefers_env_then_regenerated_then_shipped(tmp_path, monkeypatch):
    from minicoder.errors import UserError
    from minicoder.rl import warmstart as ws

    def folder(name):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        return tmp_path / name

    monkeypatch.delenv("MINICODER_WARM", raising=False)
    monkeypatch.setattr(ws, "REGENERATED_WARM", tmp_path / "regen")
    monkeypatch.setattr(ws, "SHIPPED_WARM", tmp_path / "shipped")
    assert ws.find_warm_start() is None
    (tmp_path / "shipped").mkdir()
    assert ws.find_warm_start() is None  # an empty folder is not a model
    (tmp_path / "shipped").rmdir()
    shipped = folder("shipped")
    assert ws.find_warm_start() == ("shipped", shipped)
    regen = folder("regen")
    assert ws.find_warm_start() == ("cached", regen)
    monkeypatch.setenv("MINICODER_WARM", str(folder("mine")))
    assert ws.find_warm_start() == ("env", tmp_path / "mine")
    monkeypatch.setenv("MINICODER_WARM", str(tmp_path / "typo"))
    with pytest.raises(UserError, match="MINICODER_WARM"):
        ws.find_warm_start()


def test_the_shipped_warm_start_is_a_model_folder_with_its_recipe():
    from minicoder.agent.policies import load_model_folder
    from minicoder.rl.warmstart import SHIPPED_WARM

    model, tok = load_model_folder(SHIPPED_WARM)
    recipe = json.loads((SHIPPED_WARM / "warmstart.json").read_text())
    assert recipe["code_docs"] == 20000 and recipe["steps"] == 800 and recipe["episodes"] == 3000
    assert model.num_parameters() == recipe["parameters"] and tok.vocab_size == model.config.vocab_size


def test_model_digest_follows_the_weights_not_the_path(tmp_path):
    from minicoder.rl.warmstart import SHIPPED_WARM, model_digest

    (tmp_path / "model.safetensors").write_bytes((SHIPPED_WARM / "model.safetensors").read_bytes())
    assert model_digest(tmp_path) == model_digest(SHIPPED_WARM)  # same weights, another folder
    with open(tmp_path / "model.safetensors", "r+b") as fh:
        fh.seek(-1, 2)
        last = fh.read(1)
        fh.seek(-1, 2)
        fh.write(bytes([last[0] ^ 1]))  # one bit of the weights
    assert model_digest(tmp_path) != model_digest(SHIPPED_WARM)
