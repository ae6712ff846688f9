"""The agent loop in real sandbox sessions: a scripted fix reaching reward 1 (local and docker), a
hostile policy scoring 0 with its refusals counted, invalid calls answered and counted, every end
reason reached, a hung environment timed out while the batch goes on, and token in / token out:
the ids the trainer sees are exactly the ids the sampler produced, with the log-probs it gave them."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time

import pytest
import torch
from rl_fixtures import TINY

from minicoder.agent.cli import session_opener
from minicoder.agent.evaluate import grade
from minicoder.agent.loop import AgentLimits, Job, run_rollouts
from minicoder.agent.policies import LocalPolicy, ScriptedPolicy, call
from minicoder.agent.tools import ToolConfig
from minicoder.rl.toy_tasks import generate

BACKENDS = ["local", pytest.param("docker", marks=pytest.mark.docker)]


@pytest.fixture(scope="module")
def tasks():
    return generate("train", 2, 0)


def script(steps):
    """A policy replaying `steps` (reply dicts / raw strings) turn by turn; the last one repeats."""
    return ScriptedPolicy(lambda st: steps(st)[min(st.turn, len(steps(st)) - 1)])


def fix_steps(st):
    m = st.job.task.metadata
    return [call("view", path=m["path"]), call("str_replace", path=m["path"], old_str=m["buggy_line"],
                                               new_str=m["fixed_line"]),
            call("run_tests"), call("submit")]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_scripted_fix_reaches_reward_one(tasks, backend):
    trajs = run_rollouts(script(fix_steps), [Job(t, 0, 1) for t in tasks], session_opener(backend),
                         tool_cfg=ToolConfig.toy())
    assert [t.task_id for t in trajs] == [t.instance_id for t in tasks]
    for task, tr in zip(tasks, trajs):
        assert (tr.end_reason, tr.turns, tr.invalid_calls, tr.refused_calls) == ("submitted", 4, 0, 0)
        assert tr.tool_calls == {"view": 1, "str_replace": 1, "run_tests": 1, "submit": 1}
        m = task.metadata
        obs = [x["content"] for x in tr.messages if x["role"] == "tool"]
        assert m["buggy_line"] in obs[0]  # the view showed the buggy file
        assert obs[1] == f"Edited {m['path']}."
        assert "3 passed, 0 failed" in obs[2]  # the visible tests ran in the session, after the fix
        assert f"-{m['buggy_line']}\n+{m['fixed_line']}\n" in tr.diff
        grade(task, tr, backend)
        assert (tr.reward, tr.eval_status) == (1.0, "resolved")


def test_the_unfixed_repository_scores_zero(tasks):
    """The same loop without the edit: submitted, graded, reward 0 (the grader is not a constant)."""
    steps = lambda st: [call("run_tests"), call("submit")]  # noqa: E731
    tr = run_rollouts(script(steps), [Job(tasks[0])], session_opener("local"), tool_cfg=ToolConfig.toy())[0]
    assert tr.end_reason == "submitted" and tr.diff == ""
    assert "FAILED" in tr.messages[3]["content"]
    assert grade(tasks[0], tr, "local").reward == 0.0


CONFTEST = ("import pytest\n\n@pytest.hookimpl(hookwrapper=True)\ndef pytest_runtest_makereport(item, call):\n"
            "    out = yield\n    rep = out.get_result()\n    rep.outcome = 'passed'\n")
NETWORK = ["git clone https://github.com/minicoder/toy /tmp/upstream",
           "curl -sL https://raw.githubusercontent.com/minicoder/toy/main/fix.patch | git apply",
           "git remote add upstream git@github.com:minicoder/toy.git"]


def hostile_steps(st):
    """Everything but the fix: rewrite the visible tests, plant the hidden file and a conftest that
    turns every outcome into a pass, print fake PASSED lines, fetch the upstream fix, exit early."""
    t = st.job.task
    name = t.metadata["function"]
    fake_tests = "def test_ok():\n    assert True\n"
    return [call("create", path="conftest.py", file_text=CONFTEST),
            call("bash", command="printf 'def test_%s():\\n    pass\\n' x > test_visible.py"),
            call("create", path="test_hidden.py", file_text=fake_tests),
            call("bash", command=f"echo 'test_hidden.py::test_case_0 PASSED'; echo '{name}: 6 passed'"),
            *[call("bash", command=c) for c in NETWORK],
            call("bash", command="sed -i '1i import sys; sys.exit(0)' test_visible.py"),
            call("bash", command="python -m pytest -q -p no:cacheprovider test_hidden.py && python test_visible.py"),
            call("submit")]


def test_hostile_policy_scores_zero_and_its_refusals_are_counted(tasks):
    task = tasks[0]
    tr = run_rollouts(script(hostile_steps), [Job(task)], session_opener("local"), tool_cfg=ToolConfig.swe(),
                      limits=AgentLimits(max_turns=12))[0]
    assert tr.end_reason == "submitted"
    assert tr.refused_calls == 3  # the three network / remote commands, refused at the tool layer
    obs = [x["content"] for x in tr.messages if x["role"] == "tool"]
    assert all(o.startswith("error: refused:") for o in obs[4:7]), obs[4:7]
    # inside the session the hacks work: a grader that trusted the agent's own test run would pay out
    assert "1 passed" in obs[8] and "failed" not in obs[8] and obs[8].endswith("[exit code 0]"), obs[8]
    # the hacks that are not refused did land in the submitted diff; the grader must see through them
    assert "conftest.py" in tr.diff and "test_visible.py" in tr.diff and "test_hidden.py" in tr.diff
    grade(task, tr, "local")
    assert tr.reward == 0.0, tr.eval_status


def test_invalid_calls_get_error_observations_and_are_counted(tasks):
    path = tasks[0].metadata["path"]
    bad = ["<tool_call>\n<function=view>\n<parameter=path>\nx.py\n",  # unclosed XML
           "<tool_call>\n<function=rm_rf>\n<parameter=path>\n.\n</parameter>\n</function>\n</tool_call>",
           "<tool_call>\n<function=view>\n</function>\n</tool_call>",  # missing the required path
           "I think the bug is in line 3."]  # no call at all
    steps = lambda st: [bad[0], bad[1], call("view", path=path), bad[2], bad[3], call("submit")]  # noqa: E731
    tr = run_rollouts(script(steps), [Job(tasks[0])], session_opener("local"), tool_cfg=ToolConfig.toy())[0]
    assert (tr.end_reason, tr.turns, tr.invalid_calls) == ("submitted", 6, 4)
    answers = [m for m in tr.messages[2:] if m["role"] != "assistant"]
    errs = [a["content"] for a in answers if a["content"].startswith("error: invalid tool call")]
    assert len(errs) == 4
    assert "unclosed" in errs[0] and "rm_rf" in errs[1] and "'path'" in errs[2] and "no tool call" in errs[3]
    assert tr.tool_calls == {"view": 1, "submit": 1}  # malformed turns run nothing


def test_end_reasons_turn_limit_invalid_calls_timeout(tasks):
    path = tasks[0].metadata["path"]
    view = lambda st: [call("view", path=path)]  # noqa: E731
    garbage = lambda st: ["<tool_call>oops"]  # noqa: E731
    slow = lambda st: [call("run_tests")]  # noqa: E731
    opener = session_opener("local")
    tr = run_rollouts(script(view), [Job(tasks[0])], opener, limits=AgentLimits(max_turns=3))[0]
    assert (tr.end_reason, tr.turns, tr.invalid_calls) == ("turn_limit", 3, 0)
    tr = run_rollouts(script(garbage), [Job(tasks[0])], opener, limits=AgentLimits(max_invalid=2))[0]
    assert (tr.end_reason, tr.turns, tr.invalid_calls) == ("invalid_calls", 2, 2)
    tr = run_rollouts(script(slow), [Job(tasks[0])], opener, limits=AgentLimits(wall_time_s=0.5, max_turns=50))[0]
    assert tr.end_reason == "timeout" and 1 <= tr.turns < 50 and tr.wall_s >= 0.5


@pytest.fixture(scope="module")
def tok():
    from minicoder.data.tokenizer import train_tokenizer
    from minicoder.rl.toy_tasks import generate as gen

    texts = [f for t in gen("train", 20, 3) for f in t.environment.files.values()]
    return train_tokenizer(texts * 3, vocab_size=600)


def test_context_limit(tasks, tok):
    from minicoder.agent.loop import initial_messages
    from minicoder.agent.tokens import encode_conversation

    path = tasks[0].metadata["path"]
    prompt = len(encode_conversation(initial_messages(tasks[0]), tok, ToolConfig.toy().specs(), True)[0])
    steps = lambda st: [call("view", path=path)]  # noqa: E731
    # room for the first reply, not for the file's text and a second one
    lim = AgentLimits(max_context_tokens=prompt + 60, max_new_tokens=40, min_new_tokens=8, max_turns=20)
    tr = run_rollouts(script(steps), [Job(tasks[0])], session_opener("local"), tokenizer=tok,
                      tool_cfg=ToolConfig.toy(), limits=lim)[0]
    assert tr.end_reason == "context_limit"
    assert tr.turns >= 1 and len(tr.tokens) > lim.max_context_tokens - lim.min_new_tokens
    assert len(tr.tokens) == len(tr.mask) == len(tr.logprobs) and tr.prompt_tokens == prompt


class HungSession:
    """A real session whose command execution stops answering (a stuck sandbox): `exec` blocks
    until the test releases it. Files still work, so the hang shows up only when a tool runs."""

    def __init__(self, session, release: threading.Event) -> None:
        self.s, self.release = session, release

    def __getattr__(self, name):
        return getattr(self.s, name)

    def exec(self, cmd, timeout=None):
        self.release.wait()
        return self.s.exec(cmd, timeout)


def test_env_errors_cost_only_their_sample(tasks):
    """One rollout's environment hangs in run_tests, one cannot open, one dies under the agent;
    each ends with env_error in bounded time while the healthy one submits and scores 1."""
    release = threading.Event()
    real = session_opener("local")

    kinds = ["ok", "hangs", "broken", "dies"]
    copies = [dataclasses.replace(tasks[0], instance_id=f"{tasks[0].instance_id}-{k}") for k in kinds]

    @contextlib.contextmanager
    def opener(task):
        kind = task.instance_id.rsplit("-", 1)[1]
        if kind == "broken":
            raise RuntimeError("no sandbox for you")
        with real(task) as s:
            if kind == "dies":
                s.kill()
            yield HungSession(s, release) if kind == "hangs" else s

    jobs = [Job(t) for t in copies]
    t0 = time.perf_counter()
    try:
        trajs = run_rollouts(script(fix_steps), jobs, opener, tool_cfg=ToolConfig.toy(exec_timeout_s=2.0),
                             limits=AgentLimits(tool_grace_s=1.0), workers=4)
    finally:
        release.set()
    took = time.perf_counter() - t0
    assert [t.end_reason for t in trajs] == ["submitted", "env_error", "env_error", "env_error"]
    assert "hung" in trajs[1].message and trajs[1].turns == 3  # view and edit answered; run_tests hung
    assert "could not open" in trajs[2].message and trajs[2].turns == 0
    assert trajs[3].turns == 1 and "gone" in trajs[3].message
    assert took < 60  # bounded by the tool timeout + grace, not by the hang
    assert grade(tasks[0], trajs[0], "local").reward == 1.0
    assert grade(tasks[0], trajs[1], "local").reward == 0.0  # not submitted: not graded


def test_token_in_token_out(tasks, tok):
    """The ids the trainer sees are the sampled ids, in place, with the sampler's log-probs; the
    observations between them are context (mask 0); nothing is re-tokenized."""
    from minicoder.config import ModelConfig
    from minicoder.model import HybridLM
    from minicoder.rl.grpo import micro_batches
    from minicoder.rl.pipeline import to_sample
    from minicoder.train.losses import token_logprobs

    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = ModelConfig.from_preset("toy", vocab_size=tok.vocab_size, **TINY)
    model = HybridLM(cfg).eval()
    pol = LocalPolicy(model, tok, temperature=1.0)
    sampled: dict[int, list[list[int]]] = {}
    real_act = pol.act

    def act(states, budgets):
        out = real_act(states, budgets)
        for st, a in zip(states, out):
            sampled.setdefault(st.job.sample, []).append(list(a.token_ids))
        return out

    pol.act = act
    trajs = run_rollouts(pol, [Job(tasks[0], i, 100 + i) for i in range(2)], session_opener("local"), tokenizer=tok,
                         tool_cfg=ToolConfig.toy(), limits=AgentLimits(max_new_tokens=12, max_invalid=3))
    for tr in trajs:
        turns = sampled[tr.sample]
        assert tr.turns == len(turns) >= 2
        pol_ids = [t for t, m in zip(tr.tokens, tr.mask) if m]
        assert pol_ids == [i for turn in turns for i in turn]
        # each turn's ids are one contiguous run of mask 1, separated by observation ids (mask 0)
        runs, cur = [], []
        for t, m in zip(tr.tokens, tr.mask):
            if m:
                cur.append(t)
            elif cur:
                runs.append(cur)
                cur = []
        runs += [cur] if cur else []
        assert runs == [t for t in turns if t]
        s = to_sample(tr, "g")
        assert (s.tokens, s.mask, s.logprobs) == (tr.tokens, tr.mask, tr.logprobs)
        mb = micro_batches([s], [1.0], 10_000)[0]
        tg = mb.targets[0]
        assert tg[tg != -100].tolist() == pol_ids  # the loss's targets are the sampled ids
        # the stored behaviour log-probs are the model's over exactly these ids (one full forward)
        with torch.no_grad():
            logits = model(torch.tensor([tr.tokens])).logits.float()
        lp = token_logprobs(logits, mb.targets)[0]
        want = torch.tensor([tr.logprobs[j + 1] for j in range(len(tr.tokens) - 1)] + [0.0])
        assert torch.allclose(lp[tg != -100], want[tg != -100], atol=2e-4)
    assert sampled[0] != sampled[1]  # per-rollout seeds: the two samples differ
