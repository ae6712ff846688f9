"""The `minicoder` command: one entry point, one subcommand per stage of the data's journey.

Each stage owns its subcommand in its own module, exposing ``add_parser(subparsers)`` that
registers the subcommand and sets ``func`` (called with the parsed args, returns an exit code).
Add a stage by adding its module to ``COMMANDS`` below. Modules are imported lazily, only for the
subcommand that runs, so ``minicoder --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> (module with add_parser, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("minicoder.demo", "run the end-to-end job on this machine (cached stages, --quick), with a report"),
    "doctor": ("minicoder.doctor", "check Python, torch, CUDA, Triton, fla, Docker, bubblewrap, Ray, disk; say what to fix"),
    "compare": ("minicoder.viz.compare", "plot runs' metrics side by side with their config differences (HTML)"),
    "eval": ("minicoder.sandbox.cli_eval", "grade predictions against tasks in sandboxes (test-based rewards)"),
    "cleanup": ("minicoder.sandbox.cli_cleanup", "remove leftover sandbox containers and folders"),
    "pack": ("minicoder.data.cli", "corpus -> tokenizer -> Best-Fit / concat / pad packed sequences, with stats"),
    "model": ("minicoder.model.cli", "model accounting (params, FLOPs, memory, cache) and checkpoint validation"),
    "train": ("minicoder.train.cli", "pretrain / mid-train on packed data: exact resume, torchrun + FSDP2, --plan"),
    "synth": ("minicoder.tasks.cli", "synthesise verifiable tasks: mine git history, or inject bugs (HumanEval, a package)"),
    "validate": ("minicoder.tasks.validate", "validate tasks in the sandbox: gold passes, empty fails, stable, not exploitable"),
}


class UserError(Exception):
    """A problem with the user's input: printed as a one-line error, exit status 2, no traceback."""


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
        importlib.import_module(module).add_parser(sub)
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
