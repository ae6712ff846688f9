"""`minicoder demo`: the end-to-end toy pipeline, as far as the project has built it.

corpus -> tokenizer -> packed batches -> hybrid MoE model -> tasks -> sandboxed rewards -> RL.
Each stage runs at toy size on a CPU in a few minutes and prints what it did.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the end-to-end toy pipeline on this machine")
    p.add_argument("--out", type=Path, default=Path("runs/demo"), help="where artifacts go (default: runs/demo)")
    p.set_defaults(func=run)


STAGES: list = []  # (name, function(out_dir) -> None); each stage module appends itself below


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    print(f"minicoder demo: {len(STAGES)} stage(s), artifacts in {out}/")
    for name, fn in STAGES:
        t0 = time.perf_counter()
        print(f"\n=== {name}")
        fn(out)
        print(f"--- {name}: {time.perf_counter() - t0:.1f}s")
    print("\nminicoder demo: done")
    return 0
