"""A tiny model that has half-learned two toy tasks, for the RL pipeline and eval-agent tests.

RL needs groups whose rewards differ, so the policy must solve a task sometimes, not always. Here
a two-layer model (hidden 64) is trained on the real recorded episodes of two toy tasks (the agent
loop, tools and all, in real sessions: str_replace the fix, then submit) until the summed
negative log-likelihood of an episode's policy tokens is about `target_nll`: sampled at
temperature 1 it then reproduces a whole episode with probability around exp(-target_nll), and
greedy decoding reproduces it. Deterministic: fixed seeds, one thread.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
import time

import torch

from minicoder.agent.cli import session_opener
from minicoder.agent.loop import Job, run_rollouts
from minicoder.agent.policies import ScriptedPolicy, call
from minicoder.agent.tokens import encode_conversation
from minicoder.agent.tools import ToolConfig
from minicoder.config import ModelConfig
from minicoder.model import HybridLM
from minicoder.rl.toy_tasks import generate
from minicoder.rl.warmstart import TINY_MODEL

TINY = {**TINY_MODEL, "num_nextn_predict_layers": 0, "kernel": "torch"}


def fix_then_submit(st):
    m = st.job.task.metadata
    steps = [call("str_replace", path=m["path"], old_str=m["buggy_line"], new_str=m["fixed_line"]), call("submit")]
    return steps[min(st.turn, 1)]


def toy_tasks(n: int = 2):
    return generate("train", n, 0)


def record(tasks, backend: str = "local"):
    trajs = run_rollouts(ScriptedPolicy(fix_then_submit), [Job(t) for t in tasks], session_opener(backend),
                         tool_cfg=ToolConfig.toy())
    assert all(t.end_reason == "submitted" for t in trajs)
    return [t.messages for t in trajs]


def tiny_config(vocab_size: int) -> ModelConfig:
    return ModelConfig.from_preset("toy", vocab_size=vocab_size, **TINY)


@functools.lru_cache(maxsize=2)
def taught_model(n_tasks: int = 1, target_nll: float = 1.0, max_steps: int = 300, vocab_size: int = 1024,
                 seed: int = 0):
    """(model, tokenizer, steps, per-episode NLLs), taught the first `n_tasks` toy tasks (see the
    module docstring). Cached: the test modules of one run share it (do not train it further)."""
    from minicoder.rl.warmstart import family_tokenizer

    torch.set_num_threads(1)
    episodes = record(toy_tasks(n_tasks))
    tok = family_tokenizer([{"messages": m} for m in episodes], vocab_size, stdlib_files=20)
    specs = ToolConfig.toy().specs()
    torch.manual_seed(seed)
    model = HybridLM(tiny_config(tok.vocab_size))
    rows = []
    for msgs in episodes:
        ids, mask = encode_conversation(msgs, tok, specs)
        ids, mask = ids[:-1], mask[:-1]
        rows.append((torch.tensor([ids[:-1]]), torch.tensor([[t if m else -100 for t, m in zip(ids[1:], mask[1:])]])))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    nll = [float("inf")]
    step = 0
    for step in range(1, max_steps + 1):  # noqa: B007 -- the count is returned
        opt.zero_grad()
        nll = []
        for x, y in rows:
            lp = torch.log_softmax(model(x).logits.float(), -1)
            tot = -lp[0][y[0] != -100].gather(-1, y[0][y[0] != -100, None]).sum()
            nll.append(float(tot.detach()))
            (tot / len(rows)).backward()
        if max(nll) < target_nll:
            opt.zero_grad()
            break
        opt.step()
    return model.eval(), tok, step, nll


@contextlib.contextmanager
def serve_app(app):
    """An ASGI app on uvicorn on a free loopback port, in a thread: yields its /v1 base URL."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    t0 = time.time()
    while not srv.started:
        assert time.time() - t0 < 60, "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        srv.should_exit = True
        th.join(timeout=10)
