"""Agent trajectories from tasks: real test observations, the chat format, and parseable tool calls."""

from __future__ import annotations

import pytest

from minicoder.agent.chat import AGENT_TOOLS, chat_segments, parse_assistant
from minicoder.gitdiff import file_diff
from minicoder.record import Environment, Task
from minicoder.train.trajectories import (
    TrajectoryError,
    build_trajectories,
    patched_paths,
    trajectory_from_task,
)

SRC = "def add(a, b):\n    return a - b\n"
FIXED = "def add(a, b):\n    return a + b\n"
TEST = "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"


def make_task(patch_new: str = FIXED, iid: str = "calc_1") -> Task:
    return Task(instance_id=iid, repo="demo/calc", base_commit="", patch=file_diff("calc.py", SRC, patch_new),
                test_patch=file_diff("test_calc.py", None, TEST), problem_statement="add() subtracts instead of adding.",
                FAIL_TO_PASS=["test_calc.py::test_add"], PASS_TO_PASS=[], environment=Environment(files={"calc.py": SRC}))


def test_patched_paths():
    assert patched_paths(make_task().patch) == ["calc.py"]
    assert patched_paths(file_diff("new.py", None, "x\n") + file_diff("gone.py", "y\n", None)) == ["new.py"]


@pytest.mark.parametrize("runner", ["local", "formatted"])
def test_trajectory_shape_and_parseable_calls(runner):
    tr = trajectory_from_task(make_task(), runner=runner)
    assert tr.observed == runner
    roles = [m["role"] for m in tr.messages]
    assert roles == ["system", "user"] + ["assistant", "tool"] * 4 + ["assistant"]
    calls = [m["tool_calls"][0]["name"] for m in tr.messages if m["role"] == "assistant"]
    assert calls == ["read_file", "run_tests", "apply_patch", "run_tests", "submit"]
    assert tr.messages[3]["content"] == SRC  # read_file shows the base file
    fail_obs, pass_obs = tr.messages[5]["content"], tr.messages[9]["content"]
    assert "failed" in fail_obs and "passed" in pass_obs and "failed" not in pass_obs
    if runner == "local":  # real pytest output: the assertion that failed is in it
        assert "assert -1 == 5" in fail_obs
    # each assistant turn, as rendered, parses back to the same call with no errors
    bodies = [t[: -len("<|im_end|>")] for t, f in chat_segments(tr.messages, tools=tr.tools) if f]
    parsed = [parse_assistant(b, tools=AGENT_TOOLS) for b in bodies]
    assert all(p.valid for p in parsed), [p.errors for p in parsed]
    assert [p.tool_calls[0].name for p in parsed] == calls
    assert parsed[2].tool_calls[0].arguments["patch"] == make_task().patch.rstrip("\n")


@pytest.mark.slow
def test_sandbox_observations_are_real():
    tr = trajectory_from_task(make_task(), runner="sandbox")
    assert tr.observed == "sandbox"
    assert "assert -1 == 5" in tr.messages[5]["content"]


@pytest.mark.slow
def test_a_patch_that_does_not_fix_is_refused():
    bad = make_task(patch_new="def add(a, b):\n    return a * b\n", iid="calc_bad")
    with pytest.raises(TrajectoryError, match="fail after the gold patch"):
        trajectory_from_task(bad, runner="local")

    def judged(task, with_fix):  # a runner that knows the outcome, to test the skipping alone
        ok = with_fix and task.instance_id == "calc_1"
        return ("1 passed" if ok else "1 failed"), ok

    trajs, skipped = build_trajectories([make_task(), bad], runner=judged)
    assert [t.instance_id for t in trajs] == ["calc_1"] and len(skipped) == 1 and "calc_bad" in skipped[0]


def test_unknown_runner_is_a_clear_error():
    with pytest.raises(TrajectoryError, match="unknown runner"):
        trajectory_from_task(make_task(), runner="magic")


def test_no_silent_unisolated_fallback():
    """Task code runs unisolated only when runner="local" is asked for by name; the default is the
    sandbox, and the old "auto" (sandbox if importable, else local) is an error, not a fallback."""
    import inspect

    from minicoder.train.trajectories import resolve_runner, sandbox_runner

    assert inspect.signature(trajectory_from_task).parameters["runner"].default == "sandbox"
    assert resolve_runner("sandbox").__qualname__ == sandbox_runner().__qualname__
    with pytest.raises(TrajectoryError, match="unknown runner 'auto'"):
        resolve_runner("auto")
