"""The agent loop: a batch of rollouts, each a policy acting turn by turn in its own live session.

    trajs = run_rollouts(policy, [Job(task, sample=i, seed=s) for ...], open_env=open_session_fn)

One turn for every active rollout at once (so a local model generates them as one batch):
    actions = policy.act(active)                  # text, and for token policies the sampled ids + log-probs
    for each rollout: parse the tool calls (Qwen3-Coder XML, or the API's tool_calls field); run them in
    the rollout's session (rollouts in parallel threads); append the observation; check the limits.

Token in, token out: a rollout keeps `tokens` (every id, in order), `mask` (1 on ids the policy
sampled, 0 on prompt / observation / template ids) and `logprobs` (the behaviour log-probability of
each sampled id). Sampled ids are appended as they came out of the sampler and never re-encoded;
only the new observation pieces are encoded (`tokens.observation_ids`, content as plain text).

Limits (`AgentLimits`) and why a rollout ended (`Trajectory.end_reason`):
  submitted      the agent called `submit`
  turn_limit     `max_turns` assistant turns without submitting
  context_limit  the next turn would not fit in `max_context_tokens`
  timeout        the rollout's wall time passed `wall_time_s`
  invalid_calls  `max_invalid` malformed turns in a row (unparseable XML, unknown tool, missing parameter)
  env_error      the session could not be opened, died, or hung (a tool call did not return within its
                 timeout + `tool_grace_s`): that sample only; the others go on
A malformed call is answered with an error observation and counted (`invalid_calls`); a refused call
(network + repository address, git remote edits: see `tools.refusal`) likewise (`refused_calls`).
Sessions are opened at the start and always closed at the end (also on Ctrl-C or an exception).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from typing import Any

from minicoder.agent.chat import IM_END, parse_assistant
from minicoder.agent.tokens import encode_conversation, encode_text, observation_ids
from minicoder.agent.tools import SessionLike, ToolBox, ToolConfig, ToolResult

END_REASONS = ("submitted", "turn_limit", "context_limit", "timeout", "invalid_calls", "env_error")
SYSTEM_PROMPT = ("You are a coding agent working in a repository. Use the tools to read the code, fix it, "
                 "run the tests, and submit when they pass.")


@dataclass(frozen=True)
class AgentLimits:
    max_turns: int = 10
    max_context_tokens: int = 2048
    max_new_tokens: int = 192  # per assistant turn
    wall_time_s: float = 300.0
    max_invalid: int = 3  # consecutive malformed turns
    tool_grace_s: float = 15.0  # beyond the tool's own timeout before the environment counts as hung
    min_new_tokens: int = 8  # a turn with less room than this ends the rollout (context_limit)


@dataclass
class Job:
    """One rollout to run: a task, its sample number in the group, the seed of its sampler, and
    which group of the batch it belongs to (the same task drawn twice in a step is two groups)."""

    task: Any
    sample: int = 0
    seed: int = 0
    group: int = 0


@dataclass
class Trajectory:
    """One finished rollout (see the module docstring). `reward` is set by the evaluation stage."""

    task_id: str
    sample: int
    seed: int
    messages: list[dict[str, Any]]
    tokens: list[int] = field(default_factory=list)
    mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    turns: int = 0
    end_reason: str = ""
    invalid_calls: int = 0
    refused_calls: int = 0
    tool_calls: dict[str, int] = field(default_factory=dict)
    diff: str = ""
    message: str = ""  # why it ended, in words, for env_error / limits
    gen_s: float = 0.0
    tool_s: float = 0.0
    wall_s: float = 0.0
    policy_version: int = 0
    reward: float | None = None
    eval_status: str = ""
    eval_s: float = 0.0
    group: int = 0  # the job's group in its batch

    @property
    def finished(self) -> bool:
        return self.end_reason == "submitted"

    @property
    def policy_tokens(self) -> int:
        return sum(self.mask)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Trajectory:
        return cls(**d)


class _State:
    """A rollout in progress."""

    def __init__(self, job: Job, messages: list[dict[str, Any]], tokens: list[int]) -> None:
        self.job = job
        self.messages = messages
        self.tokens = list(tokens)
        self.mask = [0] * len(tokens)
        self.logprobs = [0.0] * len(tokens)
        self.prompt_tokens = len(tokens)
        self.turn = 0
        self.invalid = self.invalid_run = self.refused = 0
        self.tool_counts: dict[str, int] = {}
        self.end = ""
        self.message = ""
        self.session: SessionLike | None = None
        self.tools: ToolBox | None = None
        self.start = time.perf_counter()
        self.gen_s = self.tool_s = 0.0
        self.generator = None  # the policy's per-rollout sampler state (set by token policies)
        self.engine_row = None  # the local policy's cache of this rollout (engine.RowState)

    @property
    def seed(self) -> int:
        return self.job.seed

    @property
    def task_id(self) -> str:
        return self.job.task.instance_id


def initial_messages(task, system_prompt: str = SYSTEM_PROMPT) -> list[dict[str, Any]]:
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": task.problem_statement.strip()}]


def _run_calls(st: _State, calls: list[tuple[str, dict]], errors: list[str]) -> list[tuple[str, ToolResult]]:
    out: list[tuple[str, ToolResult]] = []
    for name, args in calls:
        st.tool_counts[name] = st.tool_counts.get(name, 0) + 1
        r = st.tools.call(name, args)
        out.append((name, r))
        if r.submitted or r.env_error:
            break
    return out


def run_rollouts(policy, jobs: Sequence[Job], open_env: Callable[[Any], contextlib.AbstractContextManager],
                 tokenizer=None, tool_cfg: ToolConfig | None = None, limits: AgentLimits | None = None,
                 system_prompt: str = SYSTEM_PROMPT, workers: int = 4, policy_version: int = 0,
                 on_done: Callable[[Trajectory], None] | None = None) -> list[Trajectory]:
    """Run `jobs` to the end with `policy`; returns their trajectories in the order of `jobs`.

    open_env(task) -> a context manager giving a `SessionLike` (e.g. `sandbox.session.open_session`).
    tokenizer: needed for token-level policies and the context limit (API policies may pass None).
    workers: threads for opening sessions and running tools (sandbox processes run in parallel).
    on_done(trajectory): called as each rollout finishes (the pipeline grades it right away).
    """
    tool_cfg = tool_cfg or ToolConfig()
    limits = limits or AgentLimits()
    specs = tool_cfg.specs()
    states = []
    for job in jobs:
        msgs = initial_messages(job.task, system_prompt)
        ids = encode_conversation(msgs, tokenizer, specs, add_generation_prompt=True)[0] if tokenizer else []
        states.append(_State(job, msgs, ids))
    results: list[Trajectory | None] = [None] * len(states)
    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="agent-tools")
    stack = contextlib.ExitStack()

    def finish(i: int, reason: str, message: str = "") -> None:
        st = states[i]
        st.end, st.message = reason, message or st.message
        diff = ""
        if st.session is not None and reason != "env_error":
            fut = pool.submit(st.session.diff)
            try:
                diff = fut.result(timeout=tool_cfg.exec_timeout_s + limits.tool_grace_s)
            except FutureTimeout:
                st.end, st.message = "env_error", "the environment hung while computing the diff"
            except Exception as e:
                st.end, st.message = "env_error", f"diff failed: {type(e).__name__}: {e}"
        t = Trajectory(st.task_id, st.job.sample, st.job.seed, st.messages, st.tokens, st.mask, st.logprobs,
                       st.prompt_tokens, st.turn, st.end, st.invalid, st.refused, dict(st.tool_counts), diff,
                       st.message, st.gen_s, st.tool_s, time.perf_counter() - st.start, policy_version,
                       group=st.job.group)
        results[i] = t
        if on_done is not None:
            on_done(t)

    try:
        def opener(st: _State):
            cm = open_env(st.job.task)
            return cm, cm.__enter__()

        futs = [pool.submit(opener, st) for st in states]
        for i, (st, f) in enumerate(zip(states, futs)):
            try:
                cm, sess = f.result()
            except Exception as e:
                finish(i, "env_error", f"could not open the environment: {type(e).__name__}: {e}")
                continue
            stack.push(cm.__exit__)
            st.session, st.tools = sess, ToolBox(sess, st.job.task, tool_cfg)
        active = [i for i, st in enumerate(states) if not st.end]
        while active:
            now = time.perf_counter()
            budgets = []
            for i in list(active):
                st = states[i]
                if now - st.start > limits.wall_time_s:
                    finish(i, "timeout", f"wall time over {limits.wall_time_s:.0f}s")
                    continue
                room = limits.max_new_tokens
                if tokenizer is not None:
                    room = min(room, limits.max_context_tokens - len(st.tokens))
                if room < limits.min_new_tokens:
                    finish(i, "context_limit", f"{len(st.tokens)} tokens of {limits.max_context_tokens}")
                    continue
                budgets.append((i, room))
            active = [i for i, _ in budgets]
            if not active:
                break
            t0 = time.perf_counter()
            actions = policy.act([states[i] for i in active], [b for _, b in budgets])
            dt = time.perf_counter() - t0
            work = {}
            for i, act in zip(active, actions):
                st = states[i]
                st.gen_s += dt / len(active)
                st.turn += 1
                if act.token_ids is not None:
                    ids, lps = list(act.token_ids), list(act.logprobs or [0.0] * len(act.token_ids))
                elif tokenizer is not None:  # a text policy: its output is its own token ids
                    ids = encode_text(tokenizer, act.text + (IM_END if act.closed else ""), True)
                    lps = [0.0] * len(ids)
                else:
                    ids, lps = [], []
                st.tokens += ids
                st.mask += [1] * len(ids)
                st.logprobs += lps
                if act.tool_calls is not None:  # an API's structured tool_calls
                    calls = [(c["name"], c.get("arguments") or {}) for c in act.tool_calls]
                    errors, content = list(act.errors), act.text
                else:
                    parsed = parse_assistant(act.text, specs)
                    calls = [(c.name, c.arguments) for c in parsed.tool_calls]
                    errors, content = parsed.errors, parsed.content
                if not calls and not errors:
                    errors = ["no tool call in the reply; call one of the tools (submit when done)"]
                if not act.closed and not errors:
                    errors = [f"the reply was cut off at {len(ids)} tokens"]
                if errors:  # a malformed turn runs nothing: it is recorded as the text it was
                    calls = []
                    msg: dict[str, Any] = {"role": "assistant", "content": act.text.split(IM_END)[0]}
                else:
                    msg = {"role": "assistant", "content": content,
                           "tool_calls": [{"name": n, "arguments": a} for n, a in calls]}
                st.messages.append(msg)
                work[i] = (calls, errors, act.closed)
            t1 = time.perf_counter()
            futs = {i: pool.submit(_run_calls, states[i], calls, errs) for i, (calls, errs, _) in work.items()}
            deadline = tool_cfg.exec_timeout_s + limits.tool_grace_s
            for i, fut in futs.items():
                st = states[i]
                calls, errors, closed = work[i]
                try:
                    done = fut.result(timeout=max(1.0, deadline - (time.perf_counter() - t1)))
                except FutureTimeout:
                    finish(i, "env_error", f"the environment hung (no answer within {deadline:.0f}s)")
                    continue
                except Exception as e:
                    finish(i, "env_error", f"a tool failed: {type(e).__name__}: {e}")
                    continue
                st.tool_s += time.perf_counter() - t1
                obs: list[dict[str, Any]] = []
                if errors:
                    st.invalid += 1
                    st.invalid_run += 1
                    obs.append({"role": "user", "content": "error: invalid tool call: " + "; ".join(errors[:3])})
                else:
                    st.invalid_run = 0
                for name, r in done:
                    st.invalid += r.invalid
                    st.refused += r.refused
                    obs.append({"role": "tool", "content": r.output, "name": name})
                if any(r.env_error for _, r in done):
                    finish(i, "env_error", next(r.output for _, r in done if r.env_error))
                elif any(r.submitted for _, r in done):
                    finish(i, "submitted")
                elif st.invalid_run >= limits.max_invalid:
                    finish(i, "invalid_calls", f"{st.invalid_run} invalid turns in a row")
                elif st.turn >= limits.max_turns:
                    finish(i, "turn_limit", f"{st.turn} turns")
                else:
                    st.messages.extend(obs)
                    if tokenizer is not None:
                        ob = observation_ids(tokenizer, obs, closed=closed)
                        st.tokens += ob
                        st.mask += [0] * len(ob)
                        st.logprobs += [0.0] * len(ob)
            active = [i for i in active if not states[i].end]
    finally:
        stack.close()  # every session is closed, whatever happened
        pool.shutdown(wait=False, cancel_futures=True)
    return [r for r in results if r is not None]
