"""`minicoder demo`: the whole job on this machine, every stage for real, with a report.

    pipeline.py  the stage runner: cache keys from inputs + settings, skip when unchanged, resume
    stages.py    the stages (corpus, tokenizer, pack, model, pretrain, tasks, midtrain, rewards) and
                 their settings per profile (--quick / default); the RL and eval hooks are there
    report.py    report.html (self-contained, plotly inlined) + report.json, the one-line summary
    cli.py       the command line
"""

from __future__ import annotations

from minicoder.demo.cli import add_parser, run

__all__ = ["add_parser", "run"]
