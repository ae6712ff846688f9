"""The `minicoder` command: one entry point, one subcommand per stage of the data's journey.

Each stage package has one ``cli.py`` whose functions register its subcommands on the argparse
subparsers and set ``func`` (called with the parsed args, returns an exit code). ``COMMANDS`` below
names each subcommand's ``"module:function"``; add a subcommand by adding a line. Modules are
imported lazily, only for the subcommand that runs, so ``minicoder --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from minicoder.errors import UserError

# subcommand name -> ("module:function" that registers it on the subparsers, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("minicoder.demo:add_parser", "run the end-to-end job on this machine (cached stages, --quick), with a report"),
    "doctor": ("minicoder.doctor:add_parser", "check Python, torch, CUDA, Triton, fla, Docker, bubblewrap, Ray, disk; say what to fix"),
    "compare": ("minicoder.viz.compare:add_parser", "plot runs' metrics side by side with their config differences (HTML)"),
    "pack": ("minicoder.data.cli:add_parser", "corpus -> tokenizer -> Best-Fit / concat / pad packed sequences, with stats"),
    "model": ("minicoder.model.cli:add_parser", "model accounting (params, FLOPs, memory, cache) and checkpoint validation"),
    "train": ("minicoder.train.cli:add_parser", "pretrain / mid-train on packed data: exact resume, torchrun + FSDP2, --plan"),
    "synth": ("minicoder.tasks.cli:add_synth_parser", "synthesise verifiable tasks: mine git history, or inject bugs (HumanEval, a package)"),
    "validate": ("minicoder.tasks.cli:add_validate_parser", "validate tasks in the sandbox: gold passes, empty fails, stable, not exploitable"),
    "eval": ("minicoder.sandbox.cli:add_eval_parser", "grade predictions against tasks in sandboxes (test-based rewards)"),
    "cleanup": ("minicoder.sandbox.cli:add_cleanup_parser", "remove leftover sandbox containers and folders"),
    "eval-agent": ("minicoder.agent.cli:add_parser", "evaluate an agent policy on tasks: pass@1 greedy/sampled, pass@k"),
    "rl": ("minicoder.rl.cli:add_parser", "GRPO in sandboxes: rollout -> evaluation -> update, local or Ray"),
    "warmstart": ("minicoder.rl.cli:add_warmstart_parser", "mid-train on scripted toy-family episodes (the RL warm start)"),
    "serve": ("minicoder.serve:add_parser", "OpenAI-compatible chat-completions server for a minicoder checkpoint"),
    "images": ("minicoder.sandbox.cli:add_images_parser", "build the Docker images task sandboxes run in (make docker)"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minicoder",
        description="minicoder: the system behind an agentic coding model, rebuilt for learning.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        if only is not None and name != only:
            sub.add_parser(name, help=help_, add_help=False)
            continue
        module_name, _, function = module.partition(":")
        getattr(importlib.import_module(module_name), function)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Import only the module of the subcommand being run (fast --help, no torch import for it).
    first = next((a for a in argv if not a.startswith("-")), None)
    only = first if first in COMMANDS else None
    parser = build_parser(only=only if only is not None else "__none__")
    if only is None:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"minicoder {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nminicoder {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
