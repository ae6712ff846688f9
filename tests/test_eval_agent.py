"""`minicoder eval-agent --policy openai:URL` against `minicoder serve` (the real `openai` client and a
real uvicorn server on 127.0.0.1): the printed pass@1 (greedy and sampled), pass@k, end reasons and
invalid-call rate agree with the recorded results, recomputed here by hand; a re-run with the same
--out skips every finished rollout (no request reaches the server) and prints the same summary.

The served model is the tiny half-taught one of `rl_fixtures`: greedy it solves its task, sampled
it sometimes does."""

from __future__ import annotations

import json
import math

import pytest
from rl_fixtures import serve_app, taught_model, toy_tasks

from minicoder.cli import main
from minicoder.record import write_tasks
from minicoder.serve import create_app

pytestmark = pytest.mark.slow  # trains the tiny model first (shared with test_rl_pipeline)

K = 4


@pytest.fixture(scope="module")
def server():
    model, tok, _, _ = taught_model()
    app = create_app(model, tok, "taught")
    hits = {"chat": 0}

    @app.middleware("http")
    async def count(request, call_next):
        if request.url.path.endswith("/chat/completions"):
            hits["chat"] += 1
        return await call_next(request)

    with serve_app(app) as url:
        yield url, hits


def test_eval_agent_against_serve(server, tmp_path, capsys):
    url, hits = server
    tasks = tmp_path / "tasks.jsonl"
    write_tasks(tasks, toy_tasks(1))
    out = tmp_path / "results.jsonl"
    argv = ["eval-agent", "--policy", f"openai:{url}", "--tasks", str(tasks), "--k", str(K), "--out", str(out),
            "--max-turns", "4", "--max-new-tokens", "96", "--workers", "2", "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 1 + K and hits["chat"] >= len(rows)
    greedy = [r for r in rows if r["mode"] == "greedy"]
    sampled = [r for r in rows if r["mode"] == "sampled"]
    assert len(greedy) == 1 and sorted(r["sample"] for r in sampled) == list(range(K))
    # greedy decoding reproduces the taught episode: a str_replace, a submit, graded with the hidden tests
    assert (greedy[0]["reward"], greedy[0]["end_reason"], greedy[0]["turns"]) == (1.0, "submitted", 2)
    assert greedy[0]["status"] == "resolved" and greedy[0]["tool_calls"] == {"str_replace": 1, "submit": 1}
    c = sum(r["reward"] == 1.0 for r in sampled)
    assert 0 < c < K, [r["end_reason"] for r in sampled]  # sampling at T=1 sometimes fails
    turns = sum(r["turns"] for r in rows)
    want = {"rollouts": 1 + K, "tasks": 1, "pass@1_greedy": 1.0, "pass@1_sampled": c / K,
            f"pass@{K}": 1.0 - math.comb(K - c, K) / math.comb(K, K),  # = 1: some sample passed
            "mean_turns": turns / (1 + K),
            "invalid_call_rate": sum(r["invalid_calls"] for r in rows) / turns,
            "end_reasons": {e: sum(r["end_reason"] == e for r in rows) for e in {r["end_reason"] for r in rows}}}
    for key, v in want.items():
        assert printed[key] == pytest.approx(v), key
    # a re-run with the same --out: nothing left to do, nothing sent to the server, same summary
    before, n_lines = hits["chat"], len(rows)
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert hits["chat"] == before and len(out.read_text().splitlines()) == n_lines
    assert again == printed
