"""Policies behind one interface: `act(states, budgets) -> [Action]`, one action per active rollout.

  LocalPolicy     our model: one batched decode for all active rollouts, stop at ``<|im_end|>``,
                  each rollout's context read once into its own mixed cache (`engine.py`); returns
                  the sampled ids and their log-probabilities. Each rollout has its own
                  `torch.Generator` seeded from its job's seed, so its samples do not depend on
                  which rollouts share its batch.
  OpenAIPolicy    any OpenAI-compatible chat endpoint (vLLM / SGLang serving the real
                  Qwen3-Coder-Next, or `minicoder serve`), through the official `openai` client; tool
                  calls are read from the `tool_calls` field, or from the Qwen3-Coder XML in the text.
                  No token ids: its trajectories are for evaluation, not training.
  ScriptedPolicy  a function of the conversation so far -> the reply text (tests, warm-start data,
                  demonstrations of hostile behaviour).

`resolve_policy("local:PATH" | "openai:URL[#MODEL]")` builds one from a command-line spec. A local
PATH is a model folder as `minicoder.model.hf.save_pretrained` writes it, plus its tokenizer.json.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from minicoder.agent.chat import IM_END
from minicoder.agent.tokens import assistant_body


@dataclass
class Action:
    """One assistant turn. `token_ids` (and `logprobs`) only from token-level policies."""

    text: str
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    tool_calls: list[dict[str, Any]] | None = None  # structured calls from an API: [{"name", "arguments"}]
    errors: list[str] = field(default_factory=list)  # problems with structured calls (e.g. bad JSON)
    closed: bool = True  # the turn ended by itself (<|im_end|> / stop), not by the token budget


class LocalPolicy:
    """A minicoder model sampling for a batch of rollouts (see the module docstring)."""

    needs_tokens = True

    def __init__(self, model, tokenizer, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 batch_size: int = 64, name: str = "local") -> None:
        self.model, self.tokenizer = model, tokenizer
        self.temperature, self.top_p, self.top_k = temperature, top_p, top_k
        self.batch_size = batch_size
        self.name = name
        self.stop_id = tokenizer.token_id(IM_END) if hasattr(tokenizer, "token_id") else tokenizer.token_to_id(IM_END)
        from minicoder.agent.engine import Engine

        self.engine = Engine(model, self.stop_id, pad_id=getattr(tokenizer, "pad_id", 0) or 0)
        self.version = 0

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str = "cpu", **kw: Any) -> LocalPolicy:
        model, tok = load_model_folder(path, device)
        return cls(model, tok, name=f"local:{path}", **kw)

    def _generator(self, st) -> torch.Generator | None:
        if self.temperature == 0:
            return None
        if st.generator is None:
            st.generator = torch.Generator().manual_seed(int(st.seed) & 0x7FFF_FFFF_FFFF_FFFF)
        return st.generator

    def set_weights(self, state_dict: dict[str, torch.Tensor], version: int | None = None) -> None:
        """Load new weights (a policy update); the engine forgets what it read with the old ones."""
        self.model.load_state_dict(state_dict)
        self.engine.invalidate()
        if version is not None:
            self.version = version

    @torch.no_grad()
    def act(self, states: Sequence[Any], budgets: Sequence[int]) -> list[Action]:
        from minicoder.agent.engine import RowState

        out: list[Action] = []
        for lo in range(0, len(states), self.batch_size):
            chunk, room = states[lo:lo + self.batch_size], budgets[lo:lo + self.batch_size]
            for s in chunk:
                if getattr(s, "engine_row", None) is None or s.engine_row[0] != self.engine.version:
                    s.engine_row = (self.engine.version, RowState())  # new rollout, or new weights: re-read
            gens = [self._generator(s) for s in chunk]
            res = self.engine.step([s.engine_row[1] for s in chunk], [s.tokens for s in chunk], room,
                                   self.temperature, self.top_k, self.top_p,
                                   gens if self.temperature > 0 else None)
            for toks, lps, closed in res:
                text = self.tokenizer.decode(toks[:-1] if closed else toks)
                out.append(Action(text, toks, lps, closed=closed))
        return out


def load_model_folder(path: str | Path, device: str = "cpu"):
    """(model, tokenizer) from a model folder (config.json + safetensors + tokenizer.json)."""
    from minicoder.data.tokenizer import CodeTokenizer
    from minicoder.model.hf import load_pretrained

    p = Path(path)
    if not (p / "config.json").is_file() or not (p / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{p} is not a model folder (config.json + model.safetensors + tokenizer.json, "
                                "as written by `minicoder rl` / save_pretrained)")
    model = load_pretrained(p, device=device, config_overrides={"kernel": "torch"} if device == "cpu" else None)
    return model, CodeTokenizer.load(p)


class ScriptedPolicy:
    """Replies from `script(state) -> str | dict`: a string is the raw reply; a dict
    ``{"content": ..., "tool_calls": [{"name", "arguments"}]}`` is rendered in the exact template format."""

    needs_tokens = False

    def __init__(self, script: Callable[[Any], str | dict[str, Any]], name: str = "scripted") -> None:
        self.script, self.name = script, name

    def act(self, states: Sequence[Any], budgets: Sequence[int]) -> list[Action]:
        out = []
        for st in states:
            r = self.script(st)
            out.append(Action(assistant_body(r) if isinstance(r, dict) else str(r)))
        return out


def call(name: str, content: str = "", **arguments: Any) -> dict[str, Any]:
    """A scripted reply that calls one tool."""
    return {"content": content, "tool_calls": [{"name": name, "arguments": arguments}]}


class OpenAIPolicy:
    """An OpenAI-compatible chat-completions endpoint (see the module docstring)."""

    needs_tokens = False

    def __init__(self, base_url: str, model: str | None = None, api_key: str = "EMPTY", temperature: float = 1.0,
                 top_p: float = 1.0, tools: Sequence[dict[str, Any]] | None = None, timeout_s: float = 600.0,
                 workers: int = 8) -> None:
        import openai

        self.client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=1)
        self.base_url = base_url
        self.model = model or self._default_model()
        self.temperature, self.top_p = temperature, top_p
        self.tools = list(tools) if tools is not None else None
        self.workers = workers
        self.name = f"openai:{base_url}#{self.model}"

    def _default_model(self) -> str:
        models = self.client.models.list().data
        if not models:
            raise ValueError(f"{self.base_url} serves no model")
        return models[0].id

    @staticmethod
    def wire_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Our messages in the OpenAI wire format (tool calls with ids and JSON-string arguments)."""
        out: list[dict[str, Any]] = []
        pending: list[str] = []
        for k, m in enumerate(messages):
            if m["role"] == "assistant" and m.get("tool_calls"):
                ids = [f"call_{k}_{j}" for j in range(len(m["tool_calls"]))]
                pending = list(ids)
                out.append({"role": "assistant", "content": m.get("content") or None, "tool_calls": [
                    {"id": i, "type": "function", "function": {"name": c["name"],
                                                               "arguments": json.dumps(c.get("arguments", {}))}}
                    for i, c in zip(ids, m["tool_calls"])]})
            elif m["role"] == "tool":
                out.append({"role": "tool", "tool_call_id": pending.pop(0) if pending else "call_0",
                            "content": m.get("content", "")})
            else:
                out.append({"role": m["role"], "content": m.get("content", "")})
        return out

    def _one(self, st, budget: int) -> Action:
        from minicoder.agent.chat import parse_assistant

        tools = [{"type": "function", "function": t} for t in (self.tools or [])]
        kw: dict[str, Any] = {"model": self.model, "messages": self.wire_messages(st.messages),
                              "temperature": self.temperature, "top_p": self.top_p, "max_tokens": budget,
                              "seed": int(st.seed) % (2**31) + st.turn}
        if tools:
            kw["tools"] = tools
        resp = self.client.chat.completions.create(**kw)
        choice = resp.choices[0]
        msg = choice.message
        text = msg.content or ""
        closed = choice.finish_reason != "length"
        if msg.tool_calls:
            calls, errors = [], []
            for c in msg.tool_calls:
                try:
                    args = json.loads(c.function.arguments or "{}")
                except json.JSONDecodeError:
                    errors.append(f"{c.function.name}: arguments are not valid JSON")
                    args = {}
                calls.append({"name": c.function.name, "arguments": args if isinstance(args, dict) else {}})
            return Action(text, tool_calls=calls, errors=errors, closed=closed)
        parsed = parse_assistant(text)
        if parsed.tool_calls:  # the model wrote Qwen3-Coder XML in its text
            return Action(text, closed=closed)
        return Action(text, closed=closed)

    def act(self, states: Sequence[Any], budgets: Sequence[int]) -> list[Action]:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(states)))) as pool:
            return list(pool.map(self._one, states, budgets))


def resolve_policy(spec: str, temperature: float = 1.0, device: str = "cpu", tools=None):
    """A policy from ``local:PATH`` or ``openai:URL[#MODEL]`` (raises ValueError on a bad spec)."""
    kind, _, rest = spec.partition(":")
    if kind == "local" and rest:
        return LocalPolicy.from_pretrained(rest, device=device, temperature=temperature)
    if kind == "openai" and rest:
        url, _, model = rest.partition("#")
        return OpenAIPolicy(url, model or None, temperature=temperature, tools=tools)
    raise ValueError(f"policy {spec!r}: expected local:PATH or openai:URL[#MODEL]")
