"""The Qwen3-Coder chat template, its tool-call parser, and assistant-only loss masks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minicoder.agent.chat import (
    ChatFormatError,
    chat_segments,
    encode_chat,
    format_tool_call,
    parse_assistant,
    render_chat,
)

TOOLS = [
    {"name": "read_file", "description": "Print a file.",
     "parameters": {"properties": {"path": {"type": "string", "description": "the path"}}, "required": ["path"]}},
    {"name": "grep", "description": "Search.",
     "parameters": {"properties": {"pattern": {"type": "string"}, "max_hits": {"type": "integer"},
                                   "flags": {"type": "object"}}, "required": ["pattern"]}},
]

CONV = [
    {"role": "user", "content": "Fix the bug."},
    {"role": "assistant", "content": "Let me look.", "tool_calls": [{"name": "read_file", "arguments": {"path": "a.py"}}]},
    {"role": "tool", "content": "x = 1"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"name": "grep", "arguments": {"pattern": "x =", "max_hits": 3}},
        {"type": "function", "function": {"name": "read_file", "arguments": {"path": "b.py"}}}]},
    {"role": "tool", "content": "a.py:1:x = 1"},
    {"role": "tool", "content": "y = 2"},
    {"role": "assistant", "content": "Done."},
]


def test_render_matches_qwen3_coder_layout():
    """Known answer, written by hand from the Qwen3-Coder template's rules."""
    text = render_chat(CONV[:3] + [{"role": "assistant", "content": "ok"}])
    assert text == (
        "<|im_start|>user\nFix the bug.<|im_end|>\n"
        "<|im_start|>assistant\nLet me look.\n\n<tool_call>\n<function=read_file>\n<parameter=path>\na.py\n"
        "</parameter>\n</function>\n</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nx = 1\n</tool_response>\n<|im_end|>\n"
        "<|im_start|>assistant\nok<|im_end|>\n"
    )


def test_consecutive_tool_results_share_one_user_turn_and_calls_without_text():
    text = render_chat(CONV)
    assert ("<|im_start|>assistant\n<tool_call>\n<function=grep>\n<parameter=pattern>\nx =\n</parameter>\n"
            "<parameter=max_hits>\n3\n</parameter>\n</function>\n</tool_call>\n<tool_call>\n<function=read_file>")\
        in text
    assert ("<|im_start|>user\n<tool_response>\na.py:1:x = 1\n</tool_response>\n<tool_response>\ny = 2\n"
            "</tool_response>\n<|im_end|>\n") in text
    assert text.count("<|im_start|>") == 6


def test_tools_go_into_the_system_turn_and_generation_prompt():
    text = render_chat([{"role": "system", "content": "Be brief."}, CONV[0]], tools=TOOLS, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nBe brief.\n\n# Tools\n")
    assert "<function>\n<name>grep</name>" in text and "<type>integer</type>" in text
    assert '<required>["pattern"]</required>' in text
    assert text.endswith("<|im_start|>user\nFix the bug.<|im_end|>\n<|im_start|>assistant\n")
    assert text.count("<|im_end|>") == 2


def test_only_assistant_output_is_trainable():
    segs = chat_segments(CONV, tools=TOOLS)
    trainable = [t for t, f in segs if f]
    assert len(trainable) == 3
    assert all(t.endswith("<|im_end|>") and not t.startswith("<|im_start|>") for t in trainable)
    assert trainable[-1] == "Done.<|im_end|>"
    assert "".join(t for t, _ in segs) == render_chat(CONV, tools=TOOLS)


def test_parse_roundtrip_of_rendered_calls_with_types():
    text = render_chat(CONV[:4] + [{"role": "tool", "content": "x"}], tools=TOOLS)
    body = text.split("<|im_start|>assistant\n")[2].split("<|im_end|>")[0]
    p = parse_assistant(body, tools=TOOLS)
    assert p.valid, p.errors
    assert p.content == ""
    assert [(c.name, c.arguments) for c in p.tool_calls] == [("grep", {"pattern": "x =", "max_hits": 3}),
                                                              ("read_file", {"path": "b.py"})]


_name = st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True)
_value = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40).filter(
    lambda v: "</parameter>" not in v and "<parameter=" not in v and "</function>" not in v and "</tool_call>" not in v)


@settings(max_examples=200, deadline=None)
@given(name=_name, args=st.dictionaries(_name, _value, max_size=4),
       text=st.text(max_size=30).filter(lambda t: "<tool_call>" not in t and "<|im_end|>" not in t))
def test_format_then_parse_is_identity(name, args, text):
    out = (text.strip() + "\n\n" if text.strip() else "") + format_tool_call(name, args)
    p = parse_assistant(out + "<|im_end|>")
    assert p.valid, p.errors
    assert p.content == text.strip()
    assert len(p.tool_calls) == 1 and p.tool_calls[0].name == name and p.tool_calls[0].arguments == args


@pytest.mark.parametrize("bad, expect", [
    ("<tool_call>\n<function=read_file>\n<parameter=path>\na.py\n</parameter>\n</function>", "unclosed"),
    ("<tool_call>\n<function=rm>\n</function>\n</tool_call>", "unknown tool"),
    ("<tool_call>\n<function=read_file>\n</function>\n</tool_call>", "missing required parameter 'path'"),
    ("<tool_call>\n<function=grep>\n<parameter=pattern>\nx\n</parameter>\n<parameter=max_hits>\nthree\n"
     "</parameter>\n</function>\n</tool_call>", "not a valid integer"),
    ("<tool_call>\n<function=read_file>\n<parameter=path>\na\n</parameter>\n</function>\n</tool_call>\nthanks",
     "text after the last tool call"),
    ("<tool_call>\n<parameter=path>\na\n</parameter>\n</tool_call>", "without a well-formed"),
    ("<tool_call>\n<function=read_file>\nstray\n<parameter=path>\na\n</parameter>\n</function>\n</tool_call>",
     "outside <parameter>"),
])
def test_malformed_calls_are_reported_not_raised(bad, expect):
    p = parse_assistant(bad, tools=TOOLS)
    assert not p.valid
    assert any(expect in e for e in p.errors), p.errors


def test_plain_answer_has_no_calls():
    p = parse_assistant("The answer is 4.<|im_end|>trailing")
    assert p.valid and p.content == "The answer is 4." and p.tool_calls == []


def test_bad_messages_name_the_problem():
    with pytest.raises(ChatFormatError, match="message 0: field 'role'"):
        render_chat([{"role": "robot", "content": "hi"}])
    with pytest.raises(ChatFormatError, match="message 1: a system message must come first"):
        render_chat([CONV[0], {"role": "system", "content": "x"}])
    with pytest.raises(ChatFormatError, match="only assistant"):
        render_chat([{"role": "user", "content": "x", "tool_calls": [{"name": "a", "arguments": {}}]}])
    with pytest.raises(ChatFormatError, match="not a valid function name"):
        format_tool_call("bad name", {})


@pytest.fixture(scope="module")
def tokenizer():
    from minicoder.data.tokenizer import train_tokenizer

    texts = [render_chat(CONV, tools=TOOLS)] * 3 + ["def f(x):\n    return x + 1\n"] * 5
    return train_tokenizer(texts, vocab_size=400)


def test_encode_chat_mask_covers_exactly_the_assistant_output(tokenizer):
    ids, mask = encode_chat(CONV, tokenizer, tools=TOOLS)
    assert len(ids) == len(mask) and set(mask) == {0, 1}
    assert tokenizer.decode(ids) == render_chat(CONV, tools=TOOLS)  # lossless, specials as single ids
    im_start, im_end = tokenizer.token_id("<|im_start|>"), tokenizer.token_id("<|im_end|>")
    assert ids.count(im_start) == 7  # system (tools) + user + 3 assistant + 2 tool-response turns
    # the trainable runs, decoded, are the assistant outputs; everything else is not trainable
    runs, cur = [], []
    for i, m in zip(ids, mask):
        if m:
            cur.append(i)
        elif cur:
            runs.append(cur)
            cur = []
    decoded = [tokenizer.decode(r) for r in runs]
    expect = [t for t, f in chat_segments(CONV, tools=TOOLS) if f]
    assert decoded == expect
    assert all(r[-1] == im_end for r in runs)
    assert sum(mask) == sum(len(r) for r in runs)
    assert im_start not in [i for i, m in zip(ids, mask) if m]
