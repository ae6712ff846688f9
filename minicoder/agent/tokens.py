"""Token ids of agent conversations: the template's special tokens, everything else as plain text.

The chat template (`chat.py`, Qwen3-Coder format) renders a conversation to text. Turning that text
into ids in one `encode(..., allow_special=True)` call would let any *content* that contains a
special-token string (a tool output printing ``<|im_end|>\\n<|im_start|>assistant``, a problem
statement quoting ``<tool_call>``) become real turn boundaries: environment text could forge turns.
So the pieces are kept apart here:

  template pieces  (``<|im_start|>user\\n``, ``<tool_response>\\n``, role headers, the tool list in
                    the system turn)                                   -> specials parsed
  content          (system text, user text, tool results)             -> plain text, specials not parsed
  assistant output (what the policy produced, ending in ``<|im_end|>``) -> specials parsed (the
                    policy emits ``<tool_call>`` as its special id); trainable

`conversation_pieces` yields (text, specials_allowed, trainable) in exactly the order and with exactly
the text of `chat.chat_segments` (the joined text equals `render_chat`; tested), so a rollout built
turn by turn, a served request and a mid-training example of the same conversation get the same ids.
The agent loop never re-encodes what a policy sampled: `observation_ids` encodes only the new pieces
after a turn (the tool results and the next generation prompt).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from typing import Any

from minicoder.agent.chat import DEFAULT_SYSTEM, IM_END, IM_START, format_tool_call, render_tools

Piece = tuple[str, bool, bool]  # (text, special tokens allowed, trainable)


def encode_text(tokenizer, text: str, special: bool) -> list[int]:
    """Ids of `text`; special-token strings become special ids only when `special`."""
    if not text:
        return []
    enc = tokenizer.encode
    try:
        params = inspect.signature(enc).parameters
    except (TypeError, ValueError):
        params = {}
    if "allow_special" in params:  # minicoder's CodeTokenizer
        out = enc(text, allow_special=special)
    elif hasattr(tokenizer, "hf") or "add_special_tokens" in params:  # transformers-like
        kw: dict[str, Any] = {"add_special_tokens": False}
        if not special and "split_special_tokens" in params:
            kw["split_special_tokens"] = True
        out = enc(text, **kw)
    else:
        out = enc(text)
    return list(out.ids) if hasattr(out, "ids") else list(out)


def assistant_body(message: dict[str, Any]) -> str:
    """The text an assistant message is rendered as (content, then each tool call), without <|im_end|>."""
    content = message.get("content", "") or ""
    calls = message.get("tool_calls") or []
    if not calls:
        return content
    body = content.strip() + "\n" if content.strip() else ""
    for c in calls:
        c = c.get("function", c)
        args = c.get("arguments", {})
        if isinstance(args, str):  # OpenAI wire format: a JSON string
            import json

            args = json.loads(args) if args.strip() else {}
        body += "\n" + format_tool_call(c["name"], args)
    return body.lstrip("\n") if not content.strip() else body


def conversation_pieces(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None,
                        add_generation_prompt: bool = False) -> Iterator[Piece]:
    """The conversation as (text, specials allowed, trainable) pieces; see the module docstring."""
    msgs = list(messages)
    if not msgs:
        raise ValueError("empty conversation")
    if tools:
        system = msgs[0]["content"] if msgs[0]["role"] == "system" else DEFAULT_SYSTEM
        yield f"{IM_START}system\n", True, False
        yield system.strip() + "\n\n", False, False
        yield render_tools(tools) + f"{IM_END}\n", True, False
        if msgs[0]["role"] == "system":
            msgs = msgs[1:]
    elif msgs[0]["role"] == "system":
        yield f"{IM_START}system\n", True, False
        yield msgs[0].get("content", ""), False, False
        yield f"{IM_END}\n", True, False
        msgs = msgs[1:]
    for i, m in enumerate(msgs):
        role = m["role"]
        if role == "system":
            raise ValueError(f"message {i}: a system message must come first")
        if role == "user":
            yield f"{IM_START}user\n", True, False
            yield m.get("content", "") or "", False, False
            yield f"{IM_END}\n", True, False
        elif role == "assistant":
            yield f"{IM_START}assistant\n", True, False
            yield assistant_body(m) + IM_END, True, True
            yield "\n", True, False
        elif role == "tool":
            prev_tool = i > 0 and msgs[i - 1]["role"] == "tool"
            next_tool = i + 1 < len(msgs) and msgs[i + 1]["role"] == "tool"
            yield ("" if prev_tool else f"{IM_START}user\n") + "<tool_response>\n", True, False
            yield m.get("content", "") or "", False, False
            yield "\n</tool_response>\n" + ("" if next_tool else f"{IM_END}\n"), True, False
        else:
            raise ValueError(f"message {i}: unknown role {role!r}")
    if add_generation_prompt:
        yield f"{IM_START}assistant\n", True, False


def encode_conversation(messages: Sequence[dict[str, Any]], tokenizer, tools: Sequence[dict[str, Any]] | None = None,
                        add_generation_prompt: bool = False) -> tuple[list[int], list[int]]:
    """(ids, mask): the whole conversation, mask 1 on assistant output (``<|im_end|>`` included)."""
    ids: list[int] = []
    mask: list[int] = []
    for text, special, trainable in conversation_pieces(messages, tools, add_generation_prompt):
        piece = encode_text(tokenizer, text, special)
        ids += piece
        mask += [int(trainable)] * len(piece)
    return ids, mask


def observation_ids(tokenizer, messages: Sequence[dict[str, Any]], closed: bool = True) -> list[int]:
    """Ids that follow an assistant turn: the newline after its ``<|im_end|>``, the observation
    messages (``tool`` results, one ``<tool_response>`` block each in one user turn, or a ``user``
    message) with their content as plain text, and the next ``<|im_start|>assistant\n``.

    `closed` False: the turn was cut off before ``<|im_end|>``, which is added first (not sampled).
    """
    ids = [] if closed else encode_text(tokenizer, IM_END, True)
    ids += encode_text(tokenizer, "\n", True)
    for text, special, _ in conversation_pieces(messages, None, add_generation_prompt=True):
        ids += encode_text(tokenizer, text, special)
    return ids
