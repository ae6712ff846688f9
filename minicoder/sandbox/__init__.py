"""Sandboxes and test-based rewards: run untrusted patches and hidden tests in isolation.

    from minicoder.sandbox import evaluate, run_tests, Limits
    r = evaluate(task, patch, backend="local")   # or "docker"
    r.reward, r.status, r.fraction, r.tests

Modules: base (interface, limits, results), host (roots, uids, killing, trees), local (bubblewrap), docker (Docker engine + warm pool),
patching (apply / protect), junit (report parsing), reward (evaluate / run_tests), workspace,
repo_image (per-repository images), examples (a tiny task and hostile patches), cli_eval, cli_cleanup.
"""

from minicoder.sandbox.base import ExecResult, Limits, Sandbox, SandboxError
from minicoder.sandbox.reward import Reward, TestRun, evaluate, run_tests

__all__ = ["ExecResult", "Limits", "Reward", "Sandbox", "SandboxError", "TestRun", "evaluate", "run_tests"]
