"""`minicoder serve` with the real `openai` client on 127.0.0.1: models list, a plain reply, a reply
whose Qwen3-Coder XML tool call comes back in the structured `tool_calls` field, log-probs and token
ids, batching of concurrent requests, and clear 400s for requests it cannot serve."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import torch
from rl_fixtures import TINY, serve_app

from minicoder.agent.tokens import encode_conversation
from minicoder.agent.tools import ToolConfig
from minicoder.config import ModelConfig
from minicoder.model import HybridLM
from minicoder.serve import create_app, to_chat_messages

pytestmark = pytest.mark.slow  # the fixture trains a tiny model first

REPLY = "<tool_call>\n<function=view>\n<parameter=path>\nf.py\n</parameter>\n</function>\n</tool_call>"
MESSAGES = [{"role": "system", "content": "Fix it."}, {"role": "user", "content": "f.py is broken."}]


@pytest.fixture(scope="module")
def tok():
    from minicoder.data.corpus import iter_corpus
    from minicoder.data.tokenizer import train_tokenizer

    return train_tokenizer([d.text for d in iter_corpus("stdlib", max_files=20, seed=0)] + [REPLY] * 20,
                           vocab_size=400)


@pytest.fixture(scope="module")
def taught_model(tok):
    """A tiny model trained until its greedy reply to MESSAGES is the view call (a real model, not a stub)."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    cfg = ModelConfig.from_preset("toy", vocab_size=tok.vocab_size, **TINY)
    model = HybridLM(cfg)
    conv = MESSAGES + [{"role": "assistant", "content": "", "tool_calls": [{"name": "view", "arguments": {"path": "f.py"}}]}]
    ids, mask = encode_conversation(conv, tok, ToolConfig.toy().specs())
    ids, mask = ids[:-1], mask[:-1]
    x = torch.tensor([ids])
    labels = torch.tensor([[t if m else -100 for t, m in zip(ids, mask)]])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = model(x, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.01:
            break
    return model.eval()


@pytest.fixture(scope="module")
def server(taught_model, tok):
    with serve_app(create_app(taught_model, tok, "tiny")) as url:
        yield url


def client(url):
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0)


def test_models_and_a_tool_call_through_the_openai_client(server):
    c = client(server)
    assert [m.id for m in c.models.list().data] == ["tiny"]
    tools = [{"type": "function", "function": s} for s in ToolConfig.toy().specs()]
    r = c.chat.completions.create(model="tiny", messages=MESSAGES, tools=tools, temperature=0, max_tokens=64)
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls"
    assert ch.message.tool_calls[0].function.name == "view"
    import json

    assert json.loads(ch.message.tool_calls[0].function.arguments) == {"path": "f.py"}
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0


def test_logprobs_and_token_ids(server, taught_model, tok):
    c = client(server)
    tools = [{"type": "function", "function": s} for s in ToolConfig.toy().specs()]
    r = c.chat.completions.create(model="tiny", messages=MESSAGES, tools=tools, temperature=1.0, seed=5,
                                  max_tokens=64, logprobs=True, extra_body={"return_token_ids": True})
    raw = r.model_dump()
    toks = raw["choices"][0]["token_ids"]
    lps = [x["logprob"] for x in raw["choices"][0]["logprobs"]["content"]]
    prompt = raw["prompt_token_ids"]
    assert prompt == encode_conversation(MESSAGES, tok, ToolConfig.toy().specs(), add_generation_prompt=True)[0]
    with torch.no_grad():  # the log-probs are those of the model on exactly these ids
        lp = torch.log_softmax(taught_model(torch.tensor([prompt + toks])).logits[0].float(), -1)
    want = [float(lp[len(prompt) - 1 + j, t]) for j, t in enumerate(toks)]
    assert lps == pytest.approx(want, abs=1e-4)
    # the same seed gives the same reply
    r2 = c.chat.completions.create(model="tiny", messages=MESSAGES, tools=tools, temperature=1.0, seed=5,
                                   max_tokens=64, extra_body={"return_token_ids": True})
    assert r2.model_dump()["choices"][0]["token_ids"] == toks


def test_concurrent_requests_are_batched_and_answered(server):
    c = client(server)
    with ThreadPoolExecutor(8) as pool:
        rs = list(pool.map(lambda i: c.chat.completions.create(model="tiny", messages=MESSAGES, temperature=0,
                                                                max_tokens=16), range(8)))
    texts = {r.choices[0].message.content or "" for r in rs} | {
        str(r.choices[0].message.tool_calls) for r in rs}
    assert len(rs) == 8 and len(texts) <= 2  # greedy: every request the same reply


def test_bad_requests_are_400(server):
    c = client(server)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="tiny", messages=[{"role": "wizard", "content": "x"}])
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="tiny", messages=MESSAGES, n=2)
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="tiny", messages=[])


def test_wire_messages_round_trip():
    from minicoder.agent.policies import OpenAIPolicy

    ours = [*MESSAGES, {"role": "assistant", "content": "", "tool_calls": [{"name": "view", "arguments": {"path": "a"}}]},
            {"role": "tool", "content": "x = 1"}]
    wire = OpenAIPolicy.wire_messages(ours)
    assert wire[2]["tool_calls"][0]["id"] == wire[3]["tool_call_id"]
    back = to_chat_messages(wire)
    assert back[2]["tool_calls"] == [{"name": "view", "arguments": {"path": "a"}}]
    assert [m["content"] for m in back[:2]] == [m["content"] for m in MESSAGES] and back[3]["content"] == "x = 1"
