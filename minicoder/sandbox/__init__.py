"""Sandboxes and test-based rewards: run untrusted patches and hidden tests in isolation.

    from minicoder.sandbox import evaluate, run_tests, Limits
    r = evaluate(task, patch, backend="local")   # or "docker"
    r.reward, r.status, r.fraction, r.tests

Modules: base (interface, limits, results), local (bubblewrap), docker (Docker engine + warm pool),
patching (apply / protect), junit (report parsing), reward (evaluate / run_tests), status (the
verdicts, one str enum), workspace,
repo_image (per-repository images), examples (a tiny task and hostile patches), cli (eval, cleanup, images).
"""

from minicoder.sandbox.base import ExecResult, Limits, Sandbox, SandboxError
from minicoder.sandbox.reward import Reward, TestRun, evaluate, run_tests
from minicoder.sandbox.status import Status

__all__ = ["ExecResult", "Limits", "Reward", "Sandbox", "SandboxError", "Status", "TestRun", "evaluate", "run_tests"]
