"""`minicoder serve`: an OpenAI-compatible chat-completions server for a minicoder checkpoint.

    minicoder serve --ckpt runs/rl/final --port 8000
    # then any OpenAI client or agent scaffold:  OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="x")
    minicoder eval-agent --policy openai:http://127.0.0.1:8000/v1 --tasks tasks.jsonl

Endpoints: ``GET /v1/models``, ``POST /v1/chat/completions`` (FastAPI + uvicorn). A request's
messages (and ``tools``) are rendered with the Qwen3-Coder template the model was trained on
(`minicoder.agent.tokens`: message content as plain text, so a request cannot inject turn markers),
the reply is sampled until ``<|im_end|>``, and Qwen3-Coder XML tool calls in it are returned in the
structured ``tool_calls`` field (``finish_reason: "tool_calls"``), with the text before them as
``content``. ``logprobs: true`` returns the log-probability of every generated token; the extra
``return_token_ids: true`` also returns the prompt and generated token ids (what an RL trainer needs
and most OpenAI-compatible servers cannot give).

Concurrent requests are batched: a worker thread takes every pending request (waiting up to
`batch_wait_s` for more) and decodes them together with the multi-turn engine (`agent.engine`), one
random generator per request (seeded by ``seed`` when given). Supported: temperature, top_p,
max_tokens / max_completion_tokens, seed, n = 1, stream = false.
"""

from __future__ import annotations

import argparse
import json
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import torch


def _text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return str(content)


def to_chat_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI wire messages -> our message dicts (tool-call arguments parsed from JSON strings)."""
    out = []
    for i, m in enumerate(messages):
        role = m.get("role")
        if role not in ("system", "user", "assistant", "tool", "developer"):
            raise ValueError(f"messages[{i}]: unknown role {role!r}")
        msg: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": _text(m.get("content"))}
        if role == "assistant" and m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                f = c.get("function", c)
                args = f.get("arguments") or {}
                if isinstance(args, str):
                    try:
                        args = json.loads(args) if args.strip() else {}
                    except json.JSONDecodeError:
                        raise ValueError(f"messages[{i}]: tool call arguments are not valid JSON") from None
                calls.append({"name": f["name"], "arguments": args})
            msg["tool_calls"] = calls
        out.append(msg)
    return out


class _Request:
    def __init__(self, ids: list[int], max_new: int, temperature: float, top_p: float, seed: int | None) -> None:
        self.ids, self.max_new, self.temperature, self.top_p, self.seed = ids, max_new, temperature, top_p, seed
        self.done = threading.Event()
        self.result: tuple[list[int], list[float], bool] | None = None
        self.error: BaseException | None = None


class Generator:
    """The batching worker around a model (see the module docstring)."""

    def __init__(self, model, tokenizer, max_context: int | None = None, batch_wait_s: float = 0.02,
                 max_batch: int = 32) -> None:
        from minicoder.agent.engine import Engine

        self.model, self.tokenizer = model, tokenizer
        self.stop_id = tokenizer.token_id("<|im_end|>")
        self.engine = Engine(model, self.stop_id, pad_id=tokenizer.pad_id)
        self.max_context = max_context or model.config.max_position_embeddings
        self.batch_wait_s, self.max_batch = batch_wait_s, max_batch
        self.q: queue.Queue[_Request] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="minicoder-serve", daemon=True)
        self._thread.start()

    def submit(self, req: _Request) -> tuple[list[int], list[float], bool]:
        self.q.put(req)
        req.done.wait()
        if req.error is not None:
            raise req.error
        assert req.result is not None
        return req.result

    def _loop(self) -> None:
        from minicoder.agent.engine import RowState

        while True:
            first = self.q.get()
            batch = [first]
            deadline = time.monotonic() + self.batch_wait_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.q.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            groups: dict[tuple[float, float], list[_Request]] = {}
            for r in batch:
                groups.setdefault((r.temperature, r.top_p), []).append(r)
            for (temp, top_p), reqs in groups.items():
                try:
                    gens = [torch.Generator().manual_seed(r.seed if r.seed is not None else
                                                          int.from_bytes(uuid.uuid4().bytes[:7], "little"))
                            for r in reqs]
                    res = self.engine.step([RowState() for _ in reqs], [r.ids for r in reqs], [r.max_new for r in reqs],
                                           temp, 0, top_p, gens if temp > 0 else None)
                    for r, out in zip(reqs, res):
                        r.result = out
                except BaseException as e:  # answered as an error, the worker stays up
                    for r in reqs:
                        r.error = e
                for r in reqs:
                    r.done.set()


def create_app(model, tokenizer, model_name: str = "minicoder", max_context: int | None = None):
    """The FastAPI app serving `model` (a HybridLM) with `tokenizer` (a CodeTokenizer)."""
    from fastapi import FastAPI, HTTPException
    from fastapi.responses import JSONResponse

    from minicoder.agent.chat import parse_assistant
    from minicoder.agent.tokens import encode_conversation

    gen = Generator(model, tokenizer, max_context)
    app = FastAPI(title="minicoder", description="OpenAI-compatible chat completions for a minicoder model")
    created = int(time.time())

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                            "owned_by": "minicoder"}]}

    @app.post("/v1/chat/completions")
    def chat(body: dict[str, Any]) -> Any:
        if body.get("stream"):
            raise HTTPException(400, "stream=true is not supported")
        if int(body.get("n") or 1) != 1:
            raise HTTPException(400, "only n = 1 is supported")
        try:
            msgs = to_chat_messages(body.get("messages") or [])
            if not msgs:
                raise ValueError("messages is empty")
            tools = [t.get("function", t) for t in (body.get("tools") or [])]
            ids, _ = encode_conversation(msgs, tokenizer, tools or None, add_generation_prompt=True)
        except (ValueError, KeyError, TypeError) as e:
            raise HTTPException(400, f"bad request: {e}") from None
        room = gen.max_context - len(ids)
        want = int(body.get("max_completion_tokens") or body.get("max_tokens") or 512)
        if room < 1:
            raise HTTPException(400, f"the prompt has {len(ids)} tokens; the context is {gen.max_context}")
        temperature = float(body.get("temperature", 1.0) if body.get("temperature") is not None else 1.0)
        top_p = float(body.get("top_p") if body.get("top_p") is not None else 1.0)
        seed = body.get("seed")
        toks, lps, closed = gen.submit(_Request(ids, max(1, min(want, room)), temperature, top_p,
                                                None if seed is None else int(seed)))
        text = tokenizer.decode(toks[:-1] if closed else toks)
        parsed = parse_assistant(text, tools or None)
        message: dict[str, Any] = {"role": "assistant", "content": text}
        finish = "stop" if closed else "length"
        if parsed.tool_calls and parsed.valid:
            message["content"] = parsed.content or None
            message["tool_calls"] = [{"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                                      "function": {"name": c.name, "arguments": json.dumps(c.arguments)}}
                                     for c in parsed.tool_calls]
            finish = "tool_calls"
        choice: dict[str, Any] = {"index": 0, "message": message, "finish_reason": finish}
        if body.get("logprobs"):
            choice["logprobs"] = {"content": [{"token": tokenizer.decode([t]), "logprob": lp, "top_logprobs": []}
                                              for t, lp in zip(toks, lps)]}
        if body.get("return_token_ids"):
            choice["token_ids"] = toks
        resp = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": model_name, "choices": [choice],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": len(toks),
                          "total_tokens": len(ids) + len(toks)}}
        if body.get("return_token_ids"):
            resp["prompt_token_ids"] = ids
        return JSONResponse(resp)

    app.state.generator = gen
    return app


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="OpenAI-compatible chat-completions server for a minicoder checkpoint",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--ckpt", type=Path, required=True, help="model folder (config.json + safetensors + tokenizer.json)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--name", default=None, help="model id clients send (default: the folder's name)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-context", type=int, default=None, help="prompt + reply tokens (default: the model's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from minicoder.agent.policies import load_model_folder
    from minicoder.errors import UserError

    try:
        model, tok = load_model_folder(args.ckpt, args.device)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(str(e)) from None
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port} is not a TCP port")
    app = create_app(model, tok, args.name or args.ckpt.name, args.max_context)
    print(f"serving {args.ckpt} as {args.name or args.ckpt.name!r} on http://{args.host}:{args.port}/v1")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
