"""Sandboxes and test-based rewards: run untrusted patches and hidden tests in isolation.

    from minicoder.sandbox import evaluate, run_tests, Limits
    r = evaluate(task, patch, backend="local")   # or "docker"
    r.reward, r.status, r.fraction, r.tests
    rewards = evaluate_many(task, patches, backend="local", workers=2)   # a GRPO group, same order

    from minicoder.sandbox.session import open_session   # a live sandbox for one agent rollout
    with open_session(task, backend="local") as s:
        s.exec("python -m pytest -q"); s.write_file("pkg/mod.py", text); patch = s.diff()

Modules: base (interface, limits, results), host (roots, uids, killing, trees), local (bubblewrap),
docker (Docker engine + container pool), warm / zygotes / zygote (the warm runner: sandboxes forked
from one warm interpreter), session (a live sandbox for one rollout, session pools), patching
(apply / protect), junit (report parsing), reward (evaluate / evaluate_many / run_tests), status
(the verdicts, one str enum), workspace (fresh copies, safe host-side access, tree diffs),
repo_image (per-repository images), examples (a tiny task and hostile patches), cli (eval, cleanup,
images).
"""

from minicoder.sandbox.base import ExecResult, Limits, Sandbox, SandboxError
from minicoder.sandbox.reward import Reward, TestRun, evaluate, evaluate_many, run_tests
from minicoder.sandbox.status import Status

__all__ = ["ExecResult", "Limits", "Reward", "Sandbox", "SandboxError", "Status", "TestRun", "evaluate",
           "evaluate_many", "run_tests"]
