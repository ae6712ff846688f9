"""The chat template for agent conversations, in the Qwen3-Coder format, and a parser for its tool calls.

Messages are dicts, as in the OpenAI / HF convention:
    {"role": "system" | "user" | "assistant" | "tool", "content": str,
     "tool_calls": [{"name": str, "arguments": {str: value}}]}        # assistant only, optional

Rendering follows Qwen3-Coder's chat template (``qwen3_coder`` tool-call style):

    <|im_start|>system\n{system}\n\n# Tools\n...<tools>...</tools>...<|im_end|>\n
    <|im_start|>user\n{content}<|im_end|>\n
    <|im_start|>assistant\n{content}\n\n<tool_call>\n<function=NAME>\n<parameter=ARG>\n{value}\n</parameter>\n</function>\n</tool_call><|im_end|>\n
    <|im_start|>user\n<tool_response>\n{result}\n</tool_response>\n<|im_end|>\n

Conventions kept from the real template: tool results go back as a *user* turn, consecutive tool
messages share one user turn (one ``<tool_response>`` block each); an assistant turn with tool calls
puts its text (if any) first, then each call as ``\n<tool_call>...</tool_call>``; parameter values
are written raw when they are strings and as JSON otherwise; the tool list is rendered into the
system turn as ``<tools><function><name>..`` XML; a generation prompt is ``<|im_start|>assistant\n``.

Loss mask (`encode_chat`): only what the model should learn to *produce* carries loss: the text of
each assistant turn after ``<|im_start|>assistant\n`` up to and including its ``<|im_end|>`` (so the
model learns to stop). System, user and tool-response tokens, and the role headers, get label -100.
Each trainable / untrainable piece is tokenized separately and the ids concatenated, so a mask
boundary is always a token boundary, and the assistant's first token is tokenized exactly as at
inference time (after a prompt ending in ``assistant\n``).

Only the template emits special tokens. Message text (a tool's output comes from running untrusted
code, a user turn or a file may quote anything) is encoded as plain text: a ``<|im_end|>`` or
``<tool_response>`` inside it becomes ordinary tokens, never a turn boundary, so no observation can
forge an assistant turn for the model, the loss mask, or anything that finds turns by their ids.
`encode_chat` checks this on its output and raises if a tokenizer cannot do it.

The parser (`parse_assistant`) reads model output back into text + tool calls and reports malformed
calls as errors rather than raising: the RL stage penalises invalid tool calls per token.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (IM_START, IM_END, "<|endoftext|>")
# the tag tokens the template writes around tool calls and results (added tokens in Qwen's vocabulary)
TOOL_TOKENS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
TEMPLATE_TOKENS = (IM_START, IM_END, *TOOL_TOKENS)
ROLES = ("system", "user", "assistant", "tool")
DEFAULT_SYSTEM = "You are a coding agent. You work in a repository through the tools below until the task is done."

# The tool set of the scripted mid-training trajectories (`minicoder.train.trajectories`).
AGENT_TOOLS: list[dict[str, Any]] = [
    {"name": "read_file", "description": "Print a file of the repository.",
     "parameters": {"type": "object", "properties": {
         "path": {"type": "string", "description": "path relative to the repository root"}},
         "required": ["path"]}},
    {"name": "run_tests", "description": "Run the repository's tests and print the runner's output.",
     "parameters": {"type": "object", "properties": {
         "tests": {"type": "string", "description": "optional test ids, space-separated (default: the task's tests)"}},
         "required": []}},
    {"name": "apply_patch", "description": "Apply a unified diff to the repository.",
     "parameters": {"type": "object", "properties": {
         "patch": {"type": "string", "description": "the unified diff (git format)"}},
         "required": ["patch"]}},
    {"name": "submit", "description": "Finish: the current state of the repository is the answer.",
     "parameters": {"type": "object", "properties": {}, "required": []}},
]


class ChatFormatError(ValueError):
    """A message list is malformed; the message names the offending message index and field."""


class _Tok(str):
    """A token the template itself emits (a `TEMPLATE_TOKENS` string): encoded as its own id."""


_TEMPLATE_RE = re.compile("|".join(re.escape(t) for t in TEMPLATE_TOKENS))


def _template(text: str) -> list[str]:
    """Template text as parts: its `TEMPLATE_TOKENS` become `_Tok` parts, the rest stays plain."""
    parts: list[str] = []
    pos = 0
    for m in _TEMPLATE_RE.finditer(text):
        if m.start() > pos:
            parts.append(text[pos:m.start()])
        parts.append(_Tok(m.group()))
        pos = m.end()
    if pos < len(text):
        parts.append(text[pos:])
    return parts


# --- tools in the system prompt ------------------------------------------------------------------

def render_tools(tools: Sequence[dict[str, Any]]) -> str:
    """The tool list as the XML block Qwen3-Coder puts in its system turn.

    `tools`: [{"name", "description", "parameters": {"properties": {arg: {"type", "description"}},
    "required": [...]}}] (a JSON-schema subset; an OpenAI {"type": "function", "function": {...}}
    wrapper is accepted too).
    """
    out = ["# Tools\n\nYou have access to the following functions:\n\n<tools>"]
    for t in tools:
        t = t.get("function", t)
        out.append(f"\n<function>\n<name>{t['name']}</name>")
        if t.get("description"):
            out.append(f"\n<description>{t['description'].strip()}</description>")
        out.append("\n<parameters>")
        params = t.get("parameters", {})
        for pname, spec in params.get("properties", {}).items():
            out.append(f"\n<parameter>\n<name>{pname}</name>")
            if "type" in spec:
                out.append(f"\n<type>{spec['type']}</type>")
            if spec.get("description"):
                out.append(f"\n<description>{spec['description'].strip()}</description>")
            out.append("\n</parameter>")
        if params.get("required"):
            out.append(f"\n<required>{json.dumps(params['required'])}</required>")
        out.append("\n</parameters>\n</function>")
    out.append("\n</tools>")
    out.append(
        "\n\nTo call a function, reply with exactly this format and nothing after it:\n\n"
        "<tool_call>\n<function=example_function_name>\n<parameter=example_parameter_1>\nvalue_1\n"
        "</parameter>\n<parameter=example_parameter_2>\na value\nthat can span lines\n</parameter>\n"
        "</function>\n</tool_call>\n\n"
        "<IMPORTANT>\nReminder:\n- A <function=...></function> block must sit inside <tool_call></tool_call> tags\n"
        "- Give every required parameter\n- Reasoning in plain text may come BEFORE a call, never after it\n"
        "- Without a suitable function, answer normally\n</IMPORTANT>"
    )
    return "".join(out)


# --- tool calls ------------------------------------------------------------------------------------

def format_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)


def format_tool_call(name: str, arguments: dict[str, Any]) -> str:
    """One call: ``<tool_call>\\n<function=NAME>\\n<parameter=ARG>\\nvalue\\n</parameter>\\n...</tool_call>``."""
    return "".join(_call_parts(name, arguments))


def _call_parts(name: str, arguments: dict[str, Any]) -> list[str]:
    """`format_tool_call` as parts (see `_segment_parts`): the tags are the template's, values are text."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", name or ""):
        raise ChatFormatError(f"tool name {name!r} is not a valid function name")
    parts = [_Tok("<tool_call>"), f"\n<function={name}>\n"]
    for arg, val in arguments.items():
        parts += [f"<parameter={arg}>\n", format_value(val), "\n</parameter>\n"]
    return [*parts, "</function>\n", _Tok("</tool_call>")]


@dataclass
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass
class ParsedAssistant:
    """An assistant output read back: its text, the well-formed calls, and what was malformed."""

    content: str
    tool_calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return not self.errors


_CALL_RE = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)
_FUNC_RE = re.compile(r"^\s*<function=([^>\n]+)>\n?(.*?)</function>\s*$", re.S)
_PARAM_RE = re.compile(r"<parameter=([^>\n]+)>\n?(.*?)\n?</parameter>", re.S)


def parse_assistant(text: str, tools: Sequence[dict[str, Any]] | None = None) -> ParsedAssistant:
    """Split model output into text and tool calls (Qwen3-Coder XML). Never raises on bad output.

    `text` may still end with ``<|im_end|>`` (stripped). Errors (a call with no ``<function=..>``,
    unclosed tags, an unknown tool or a missing required parameter when `tools` is given, stray text
    after the last call) are collected in ``errors``; well-formed calls are still returned.
    With `tools`, values are converted from strings by the parameter's JSON-schema type.
    """
    text = text.split(IM_END, 1)[0]
    errors: list[str] = []
    calls: list[ToolCall] = []
    first = text.find("<tool_call>")
    content = (text if first < 0 else text[:first]).strip()
    specs = {t.get("function", t)["name"]: t.get("function", t) for t in (tools or [])}
    last_end = first
    for m in _CALL_RE.finditer(text):
        between = text[last_end:m.start()].strip() if calls or errors else ""
        if between:
            errors.append(f"text between tool calls: {between[:40]!r}")
        last_end = m.end()
        fm = _FUNC_RE.match(m.group(1))
        if not fm:
            errors.append(f"tool call without a well-formed <function=NAME>...</function>: {m.group(1)[:60]!r}")
            continue
        name, body = fm.group(1).strip(), fm.group(2)
        args: dict[str, Any] = {}
        for pm in _PARAM_RE.finditer(body):
            args[pm.group(1).strip()] = pm.group(2)
        leftover = _PARAM_RE.sub("", body).strip()
        if leftover:
            errors.append(f"{name}: text outside <parameter> tags: {leftover[:40]!r}")
        if specs:
            if name not in specs:
                errors.append(f"unknown tool {name!r} (known: {sorted(specs)})")
            else:
                args, errs = _convert_args(name, args, specs[name])
                errors.extend(errs)
        calls.append(ToolCall(name, args))
    if first >= 0:
        tail = text[last_end:] if calls or errors else text[first:]
        if "<tool_call>" in tail:
            errors.append("unclosed <tool_call>")
        elif tail.strip():
            errors.append(f"text after the last tool call: {tail.strip()[:40]!r}")
    return ParsedAssistant(content=content, tool_calls=calls, errors=errors)


def _convert_args(name: str, args: dict[str, str], spec: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    props = spec.get("parameters", {}).get("properties", {})
    errors = [f"{name}: missing required parameter {r!r}" for r in spec.get("parameters", {}).get("required", [])
              if r not in args]
    out: dict[str, Any] = {}
    for k, v in args.items():
        if k not in props:
            errors.append(f"{name}: unknown parameter {k!r}")
            out[k] = v
            continue
        typ = props[k].get("type", "string")
        if typ == "string":
            out[k] = v
            continue
        try:
            val = json.loads(v)
        except json.JSONDecodeError:
            errors.append(f"{name}: parameter {k!r} is not a valid {typ}: {v[:40]!r}")
            out[k] = v
            continue
        ok = {"integer": lambda x: isinstance(x, int) and not isinstance(x, bool),
              "number": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
              "boolean": lambda x: isinstance(x, bool), "array": lambda x: isinstance(x, list),
              "object": lambda x: isinstance(x, dict)}.get(typ, lambda x: True)(val)
        if not ok:
            errors.append(f"{name}: parameter {k!r} is not a valid {typ}: {v[:40]!r}")
        out[k] = val
    return out, errors


# --- rendering -------------------------------------------------------------------------------------

def _check(messages: Sequence[dict[str, Any]]) -> None:
    if not messages:
        raise ChatFormatError("empty conversation")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise ChatFormatError(f"message {i}: expected a dict, got {type(m).__name__}")
        if m.get("role") not in ROLES:
            raise ChatFormatError(f"message {i}: field 'role' must be one of {ROLES}, got {m.get('role')!r}")
        if not isinstance(m.get("content", ""), str):
            raise ChatFormatError(f"message {i}: field 'content' must be a string")
        if m.get("tool_calls") and m["role"] != "assistant":
            raise ChatFormatError(f"message {i}: only assistant messages carry 'tool_calls'")
        if m["role"] == "system" and i != 0:
            raise ChatFormatError(f"message {i}: a system message must come first")
        for c in m.get("tool_calls") or []:
            c = c.get("function", c)
            if not isinstance(c, dict) or "name" not in c or not isinstance(c.get("arguments", {}), dict):
                raise ChatFormatError(f"message {i}: a tool call needs 'name' and an 'arguments' dict")


def _segment_parts(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None,
                   add_generation_prompt: bool) -> list[tuple[list[str], bool]]:
    """The conversation as (parts, trainable) segments; a part is a template token (`_Tok`) or text.
    Message contents, tool specs and argument values are always text parts, never `_Tok`."""
    _check(messages)
    segs: list[tuple[list[str], bool]] = []
    msgs = list(messages)
    if tools:
        system = msgs[0]["content"] if msgs[0]["role"] == "system" else DEFAULT_SYSTEM
        segs.append(([_Tok(IM_START), "system\n", system.strip(), "\n\n", *_tools_parts(tools), _Tok(IM_END), "\n"],
                     False))
        if msgs[0]["role"] == "system":
            msgs = msgs[1:]
    elif msgs[0]["role"] == "system":
        segs.append(([_Tok(IM_START), "system\n", msgs[0]["content"], _Tok(IM_END), "\n"], False))
        msgs = msgs[1:]
    for i, m in enumerate(msgs):
        role = m["role"]
        if role == "user":
            segs.append(([_Tok(IM_START), "user\n", m.get("content", ""), _Tok(IM_END), "\n"], False))
        elif role == "assistant":
            body: list[str] = []
            content = m.get("content", "") or ""
            calls = m.get("tool_calls") or []
            if calls:
                if content.strip():
                    body += [content.strip(), "\n"]
                for j, c in enumerate(calls):
                    c = c.get("function", c)
                    if j or content.strip():  # calls after text, and between calls, start on a new line
                        body.append("\n")
                    body += _call_parts(c["name"], c.get("arguments", {}))
            else:
                body = [content]
            segs.append(([_Tok(IM_START), "assistant\n"], False))
            segs.append(([*body, _Tok(IM_END)], True))
            segs.append((["\n"], False))
        else:  # tool: grouped into one user turn with the neighbouring tool messages
            prev_tool = i > 0 and msgs[i - 1]["role"] == "tool"
            next_tool = i + 1 < len(msgs) and msgs[i + 1]["role"] == "tool"
            parts = [] if prev_tool else [_Tok(IM_START), "user\n"]
            parts += [_Tok("<tool_response>"), "\n", m.get("content", ""), "\n", _Tok("</tool_response>"), "\n"]
            if not next_tool:
                parts += [_Tok(IM_END), "\n"]
            segs.append((parts, False))
    if add_generation_prompt:
        segs.append(([_Tok(IM_START), "assistant\n"], False))
    # merge neighbours with the same flag (fewer, longer pieces to tokenize)
    merged: list[tuple[list[str], bool]] = []
    for parts, flag in segs:
        if merged and merged[-1][1] == flag and not flag:
            merged[-1][0].extend(parts)
        else:
            merged.append((list(parts), flag))
    return merged


def _tools_parts(tools: Sequence[dict[str, Any]]) -> list[str]:
    """`render_tools` as parts: the fixed instructions are template, the tool specs are text."""
    text = render_tools(tools)
    cut = text.rindex("\n</tools>")  # everything before is the tool specs (names, descriptions)
    return [text[:cut], *_template(text[cut:])]


def chat_segments(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None,
                  add_generation_prompt: bool = False) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, trainable) pieces; joined they give `render_chat`.

    Trainable pieces are exactly the assistant outputs, each ending with ``<|im_end|>``.
    """
    return [("".join(parts), flag) for parts, flag in _segment_parts(messages, tools, add_generation_prompt)]


def render_chat(messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]] | None = None,
                add_generation_prompt: bool = False) -> str:
    """The conversation as one string in the Qwen3-Coder chat format."""
    return "".join(t for t, _ in chat_segments(messages, tools, add_generation_prompt))


def _encode(tokenizer, text: str, special: bool) -> list[int]:
    """Ids of `text`, no BOS/EOS added. `special`: parse special-token strings (only ever for the
    template's own tokens); otherwise every string is ordinary text."""
    import inspect

    try:
        params = inspect.signature(tokenizer.encode).parameters
    except (TypeError, ValueError):
        params = {}
    if "allow_special" in params:  # minicoder's CodeTokenizer: plain text unless asked
        enc = tokenizer.encode(text, allow_special=special)
    else:
        # HF tokenizers / transformers match added tokens anywhere in the text: cut every occurrence
        # so that no piece contains one (joined, the pieces are the text; see split_at_tokens).
        from minicoder.data.tokenizer import split_at_tokens

        pieces = [text] if special else split_at_tokens(text, _added_tokens(tokenizer))
        switch = special and isinstance(getattr(tokenizer, "encode_special_tokens", None), bool)
        if switch:  # a tokenizers.Tokenizer: its "parse specials" switch may have been left off
            before, tokenizer.encode_special_tokens = tokenizer.encode_special_tokens, False
        try:
            enc = []
            for piece in pieces:
                e = tokenizer.encode(piece, add_special_tokens=False) if "add_special_tokens" in params \
                    else tokenizer.encode(piece)
                enc.extend(e.ids if hasattr(e, "ids") else e)
        finally:
            if switch:
                tokenizer.encode_special_tokens = before
    return list(enc.ids) if hasattr(enc, "ids") else list(enc)


def _added_tokens(tokenizer) -> dict[str, int]:
    """The tokenizer's added / special tokens (string -> id) as far as it tells, plus the template's."""
    found: dict[str, int] = {}
    hf = getattr(tokenizer, "hf", tokenizer)
    if hasattr(hf, "get_added_tokens_decoder"):  # tokenizers.Tokenizer (also under CodeTokenizer)
        found.update({t.content: i for i, t in hf.get_added_tokens_decoder().items()})
    if isinstance(getattr(tokenizer, "added_tokens_encoder", None), dict):  # transformers
        found.update(tokenizer.added_tokens_encoder)
    for t in (*TEMPLATE_TOKENS, *SPECIAL_TOKENS):
        ids = [] if t in found else _encode(tokenizer, t, special=True)
        if len(ids) == 1:
            found[t] = ids[0]
    return found


def encode_chat(messages: Sequence[dict[str, Any]], tokenizer, tools: Sequence[dict[str, Any]] | None = None
                ) -> tuple[list[int], list[int]]:
    """Token ids of the rendered conversation and a 0/1 loss mask (1 on assistant output only).

    `tokenizer`: anything with ``encode(text)`` returning ids or an object with ``.ids`` (an HF
    `tokenizers.Tokenizer`, a transformers tokenizer, minicoder's BPE wrapper) that maps the special
    tokens ``<|im_start|>`` / ``<|im_end|>`` to single ids. Only the template's own tokens become
    special ids; message text is encoded as plain text (raises ChatFormatError if a special id
    still appears in it, which would let the text forge a turn).
    """
    ids: list[int] = []
    mask: list[int] = []
    protected = set(_added_tokens(tokenizer).values())
    for parts, trainable in _segment_parts(messages, tools, False):
        text = ""
        for part in [*parts, _Tok("")]:
            if not isinstance(part, _Tok):
                text += part
                continue
            if text:  # the text since the last template token, as plain text
                piece = _encode(tokenizer, text, special=False)
                bad = protected.intersection(piece)
                if bad:
                    raise ChatFormatError(f"the tokenizer turned message text into special token id(s) {sorted(bad)}; "
                                          "it cannot encode untrusted text safely")
                ids.extend(piece)
                mask.extend([int(trainable)] * len(piece))
                text = ""
            if part:
                piece = _encode(tokenizer, part, special=True)
                ids.extend(piece)
                mask.extend([int(trainable)] * len(piece))
    return ids, mask
