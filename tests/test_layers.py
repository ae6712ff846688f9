"""The codebase's shape: layers point down (import-linter's contracts in pyproject.toml), and moving
code between packages did not change what the model is trained on.

The contracts: leaves (config, record, errors, machine) -> gitdiff -> ops, data -> model, sandbox ->
agent -> train, tasks -> rl -> cli, demo; plus forbidden imports (ops/data never import model, the
sandbox never imports model/train/rl, the model never imports sandbox/train/tasks/viz, only the
command line imports minicoder.cli, nothing in the core imports viz).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    if exe is None:
        pytest.fail("import-linter is not installed (it is a dev dependency: pip install -e .[dev])")
    proc = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_agent_trajectories_render_as_before_the_move():
    """The chat template and AGENT_TOOLS moved from train/ to agent/; the rendered mid-training
    trajectories are byte-for-byte what they were before (hashes taken on the old layout)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from test_trajectories import make_task

    from minicoder.agent.chat import render_chat
    from minicoder.record import read_tasks
    from minicoder.train.trajectories import trajectory_from_task

    tr = trajectory_from_task(make_task(), runner="formatted")
    one = render_chat(tr.messages, tools=tr.tools)
    assert hashlib.sha256(one.encode()).hexdigest() == "ae9d52de72cc234c3fee9e5fb91d57c2868968d48d5dad201c770e179e1aa69a"
    seeds = read_tasks(ROOT / "data/tasks/seed_tasks.jsonl")[:5]
    texts = [render_chat(t.messages, tools=t.tools) for t in (trajectory_from_task(x, runner="formatted") for x in seeds)]
    assert hashlib.sha256("\x00".join(texts).encode()).hexdigest() == (
        "42494b859062052d8dec81d40c403d83cea7f806144d736d17fce04981d2ca1d")
