"""Agent trajectories for mid-training, built from synthesized tasks and their gold patches.

Each task becomes one short, successful agent episode in the Qwen3-Coder chat format (`minicoder.agent.chat`),
using the tool set `AGENT_TOOLS` (read_file, run_tests, apply_patch, submit):

    system  (tools)          user: the problem statement
    assistant -> read_file(path)            tool: the file at the base commit
    assistant -> run_tests()                tool: the FAIL_TO_PASS tests failing (real output)
    assistant -> apply_patch(gold patch)    tool: "Patch applied ..."
    assistant -> run_tests()                tool: the same tests passing (real output)
    assistant -> submit()

The toy model learns the *format* of agentic work (when to call which tool, how a call is written,
that tests are run before submitting) from them; the RL stage then learns the *content*.

Observations are real: the default ``runner="sandbox"`` runs the task's tests in `minicoder.sandbox`
(isolated; the same grader as the rewards). Running task code without isolation is never a silent
fallback: ``runner="local"`` must be asked for by name (the task's repository materialised in a
temporary folder, `git apply` of the hidden test patch (and the gold patch for the second run), the
task's test command on its FAIL_TO_PASS ids, with the task's time limit; use it only on tasks you
trust, such as the shipped seed set). ``runner="formatted"`` writes a pytest-like summary from
FAIL_TO_PASS without running anything (fast; for tests and previews).
Long observations are cut to their last `max_obs_chars` characters (where pytest puts its summary).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from minicoder.agent.chat import AGENT_TOOLS, encode_chat
from minicoder.gitdiff import materialize_repo, run_git
from minicoder.record import PASSING, Task
from minicoder.sandbox.reward import run_tests
from minicoder.sandbox.status import Status

#: (task, with_fix) -> (observation text, tests passed)
TestRunner = Callable[[Task, bool], tuple[str, bool]]


class TrajectoryError(ValueError):
    """A task cannot be turned into a trajectory (no gold patch, patch does not apply, ...)."""


def patched_paths(patch: str) -> list[str]:
    """Files a unified diff modifies (``+++ b/path`` lines; new files included, deletions not)."""
    out = []
    for line in patch.splitlines():
        if line.startswith("+++ ") and not line.startswith("+++ /dev/null"):
            p = line[4:].split("\t")[0].strip()
            p = p[2:] if p.startswith(("a/", "b/")) else p
            if p not in out:
                out.append(p)
    return out


def _tail(text: str, n: int) -> str:
    return text if len(text) <= n else "[... output truncated ...]\n" + text[-n:]


# --- test runners -----------------------------------------------------------------------------

def _git_apply(repo: Path, patch: str, what: str) -> None:
    if not patch.strip():
        return
    proc = run_git(repo, "apply", "--whitespace=nowarn", "-", stdin=patch.encode())
    if proc.returncode != 0:
        raise TrajectoryError(f"{what} does not apply: {proc.stderr.decode(errors='replace').strip()[:200]}")


def local_runner(task: Task, with_fix: bool) -> tuple[str, bool]:
    """Run the task's FAIL_TO_PASS tests in a subprocess on a fresh copy of its repository (no isolation)."""
    env = task.environment
    with tempfile.TemporaryDirectory(prefix="minicoder-traj-") as tmp:
        repo = materialize_repo(task, Path(tmp) / "repo")
        _git_apply(repo, task.test_patch, "test_patch")
        if with_fix:
            _git_apply(repo, task.patch, "patch")
        cmd = env.test_cmd.split()
        if cmd and cmd[0] in ("python", "python3"):
            cmd[0] = sys.executable  # the interpreter that has pytest, not whatever is on PATH
        cmd += list(task.FAIL_TO_PASS)
        clean_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_"))}
        clean_env["PYTHONDONTWRITEBYTECODE"] = "1"
        try:
            proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=env.timeout_s, env=clean_env)
        except subprocess.TimeoutExpired:
            return f"error: the tests did not finish within {env.timeout_s:.0f}s", False
        out = (proc.stdout + proc.stderr).replace(str(repo), ".")
        return out.strip(), proc.returncode == 0


def formatted_runner(task: Task, with_fix: bool) -> tuple[str, bool]:
    """A pytest-style summary written from FAIL_TO_PASS, without running anything."""
    tests = task.FAIL_TO_PASS
    if with_fix:
        lines = [f"{t} PASSED" for t in tests] + [f"{'=' * 10} {len(tests)} passed {'=' * 10}"]
        return "\n".join(lines), True
    lines = [f"{t} FAILED" for t in tests] + [f"{'=' * 10} {len(tests)} failed {'=' * 10}"]
    return "\n".join(lines), False


def sandbox_runner(backend: str = "local") -> TestRunner:
    """A runner on `minicoder.sandbox.reward.run_tests` (isolated, hardened)."""

    def sandbox(task: Task, with_fix: bool) -> tuple[str, bool]:
        tr = run_tests(task, task.patch if with_fix else None, backend=backend)
        out = ""
        if tr.exec is not None:
            out = (tr.exec.stdout or "") + (tr.exec.stderr or "")
        if tr.status != Status.OK:
            out = (out + f"\n[{tr.status}] {tr.message}").strip()
        passed = tr.status == Status.OK and all(tr.outcomes.get(t) in PASSING for t in task.FAIL_TO_PASS)
        return out.strip(), passed

    return sandbox


def resolve_runner(runner: str | TestRunner) -> TestRunner:
    if callable(runner):
        return runner
    if runner == "formatted":
        return formatted_runner
    if runner == "local":
        return local_runner
    if runner == "sandbox":
        return sandbox_runner()
    raise TrajectoryError(f"unknown runner {runner!r}; choose sandbox, local, formatted or a callable")


# --- building ----------------------------------------------------------------------------------

@dataclass
class Trajectory:
    instance_id: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    observed: str  # which runner produced the test observations

    def to_dict(self) -> dict[str, Any]:
        return {"instance_id": self.instance_id, "messages": self.messages, "tools": self.tools,
                "observed": self.observed}


def _call(name: str, text: str = "", **args: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text, "tool_calls": [{"name": name, "arguments": args}]}


def trajectory_from_task(task: Task, runner: str | TestRunner = "sandbox", max_obs_chars: int = 1500,
                         max_file_chars: int = 4000) -> Trajectory:
    """One successful episode for `task` (see the module docstring). Raises TrajectoryError when the
    task has no gold patch, or when the observed tests do not fail before / pass after the fix."""
    if not task.patch.strip():
        raise TrajectoryError(f"{task.instance_id}: no gold patch")
    run = resolve_runner(runner)
    name = getattr(run, "__name__", "custom").replace("_runner", "")
    paths = patched_paths(task.patch)
    if not paths:
        raise TrajectoryError(f"{task.instance_id}: the gold patch modifies no file")
    files = task.environment.files
    if files is None:
        from minicoder.gitdiff import base_files

        files = base_files(task)
    path = paths[0]
    content = files.get(path)
    read_obs = _tail(content, max_file_chars) if content is not None else f"error: {path}: no such file"

    before, ok_before = run(task, False)
    after, ok_after = run(task, True)
    if ok_before or not ok_after:
        raise TrajectoryError(f"{task.instance_id}: tests {'pass' if ok_before else 'fail'} before and "
                              f"{'pass' if ok_after else 'fail'} after the gold patch ({name} runner); "
                              "a trajectory needs fail -> pass")
    statement = task.problem_statement.strip()
    msgs: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a coding agent. Fix the issue in the repository, check your "
                                      "fix with the tests, then submit."},
        {"role": "user", "content": f"<issue>\n{statement}\n</issue>\n\nThe repository is checked out at the "
                                    "working directory. Make the failing tests pass without breaking others."},
        _call("read_file", f"Let me look at `{path}` first.", path=path),
        {"role": "tool", "content": read_obs},
        _call("run_tests", "Now I run the tests to see the failure."),
        {"role": "tool", "content": _tail(before, max_obs_chars)},
        _call("apply_patch", "The failure points at the code above. I will fix it.", patch=task.patch.rstrip("\n")),
        {"role": "tool", "content": f"Patch applied: {', '.join(paths)} modified."},
        _call("run_tests", "Let me check that the tests pass now."),
        {"role": "tool", "content": _tail(after, max_obs_chars)},
        _call("submit", "The tests pass, so I submit the fix."),
    ]
    return Trajectory(task.instance_id, msgs, AGENT_TOOLS, name)


def build_trajectories(tasks: Iterable[Task], runner: str | TestRunner = "sandbox", skip_bad: bool = True,
                       progress: bool = False, **kw: Any) -> tuple[list[Trajectory], list[str]]:
    """Trajectories of many tasks; returns (trajectories, reasons the skipped tasks were skipped)."""
    run = resolve_runner(runner)
    out, skipped = [], []
    tasks = list(tasks)
    it: Iterable[Task] = tasks
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(tasks, desc="trajectories", unit="task")
    for t in it:
        try:
            out.append(trajectory_from_task(t, runner=run, **kw))
        except TrajectoryError as e:
            if not skip_bad:
                raise
            skipped.append(str(e))
    return out, skipped


def encode_trajectories(trajs: Sequence[Trajectory], tokenizer) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids and assistant-only loss masks of each trajectory (see `chat.encode_chat`)."""

    ids, masks = [], []
    for t in trajs:
        i, m = encode_chat(t.messages, tokenizer, tools=t.tools)
        ids.append(i)
        masks.append(m)
    return ids, masks
