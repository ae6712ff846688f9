"""`minicoder eval-agent`: roll an agent out on tasks in sandbox sessions and grade it with the hidden tests.

    minicoder eval-agent --policy local:runs/rl/final --tasks data/tasks/toy_heldout.jsonl --k 8 --out results.jsonl
    minicoder eval-agent --policy openai:http://127.0.0.1:8000/v1 --tasks data/tasks/seed_tasks.jsonl --k 4

Prints pass@1 (greedy and sampled), pass@k, mean turns, end reasons and the invalid-call rate.
Results are appended to --out as each rollout is graded; re-running with the same --out skips what
is there (an interrupted run continues). --tools picks the tool set: `toy` (view, str_replace,
run_tests, submit), `swe` (all six, bash included), or `auto` (toy for the toy family's tasks).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval-agent", help="evaluate an agent policy on tasks: pass@1 greedy/sampled, pass@k",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--policy", required=True, help="local:MODEL_FOLDER or openai:URL[#MODEL]")
    p.add_argument("--tasks", type=Path, required=True, help="task JSONL (or HF dataset folder)")
    p.add_argument("--k", type=int, default=8, help="sampled rollouts per task (default 8)")
    p.add_argument("--out", type=Path, default=None, help="results JSONL (appended; a re-run skips done rollouts)")
    p.add_argument("--max-tasks", type=int, default=0, help="only the first N tasks (default all)")
    p.add_argument("--no-greedy", action="store_true", help="skip the greedy rollout per task")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    p.add_argument("--backend", default="local", choices=("local", "docker"), help="sandbox backend (default local)")
    p.add_argument("--tools", default="auto", choices=("auto", "toy", "swe"))
    p.add_argument("--max-turns", type=int, default=10)
    p.add_argument("--max-context", type=int, default=2048, help="tokens per rollout (local policies)")
    p.add_argument("--max-new-tokens", type=int, default=192, help="tokens per assistant turn")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=4, help="threads for sessions and grading (default 4)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def session_opener(backend: str):
    """open_env(task) for the agent loop: a live sandbox session of the task (issue 10's sessions)."""
    try:
        from minicoder.sandbox.session import open_session
    except ImportError as e:  # the sessions stage is not there
        raise RuntimeError("minicoder.sandbox.session is not available: sessions are needed to run agents") from e
    return lambda task: open_session(task, backend=backend)


def tool_config_for(tasks, choice: str):
    from minicoder.agent.tools import ToolConfig

    if choice == "toy" or (choice == "auto" and tasks and all(t.metadata.get("family") == "toy" for t in tasks)):
        return ToolConfig.toy()
    return ToolConfig.swe()


def run(args: argparse.Namespace) -> int:
    from minicoder.agent.evaluate import evaluate_agent, format_summary, summarize
    from minicoder.agent.loop import AgentLimits
    from minicoder.agent.policies import LocalPolicy, resolve_policy
    from minicoder.errors import UserError
    from minicoder.record import TaskFormatError, read_tasks

    if args.k < 1 or args.max_turns < 1 or args.workers < 1:
        raise UserError("--k, --max-turns and --workers must be >= 1")
    try:
        tasks = read_tasks(args.tasks)
    except TaskFormatError as e:
        raise UserError(f"--tasks {args.tasks}: {e}") from None
    if args.max_tasks:
        tasks = tasks[:args.max_tasks]
    if not tasks:
        raise UserError(f"--tasks {args.tasks}: no tasks")
    tool_cfg = tool_config_for(tasks, args.tools)
    try:
        policy = resolve_policy(args.policy, temperature=args.temperature, tools=tool_cfg.specs())
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None
    except Exception as e:  # an endpoint that does not answer
        raise UserError(f"--policy {args.policy}: {type(e).__name__}: {e}") from None
    try:
        opener = session_opener(args.backend)
    except RuntimeError as e:
        raise UserError(str(e)) from None
    tok = policy.tokenizer if isinstance(policy, LocalPolicy) else None

    def set_temperature(t: float) -> None:
        policy.temperature = t

    limits = AgentLimits(max_turns=args.max_turns, max_context_tokens=args.max_context,
                         max_new_tokens=args.max_new_tokens)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = evaluate_agent(policy, tasks, opener, k=args.k, greedy=not args.no_greedy, tokenizer=tok,
                          tool_cfg=tool_cfg, limits=limits, backend=args.backend, seed=args.seed, out=args.out,
                          workers=args.workers, temperature=args.temperature, set_temperature=set_temperature)
    wanted = {t.instance_id for t in tasks}
    s = summarize([r for r in rows if r["task_id"] in wanted], k=args.k)
    print(json.dumps(s) if args.json else f"eval-agent {args.policy} on {len(tasks)} tasks\n{format_summary(s)}")
    return 0
