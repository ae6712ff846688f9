"""The failure statuses no other test reaches, for real: `setup_failed` (a task whose setup command
fails) and `error` (the sandbox itself failing: bubblewrap not installed, no Docker engine), and what
synthesis makes of the latter: `minicoder synth` and `minicoder validate` stop with exit status 2 and
one line, and leave the ledger exactly as it was (a sandbox failure is no verdict on a candidate).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest

from minicoder.cli import main
from minicoder.gitdiff import file_diff
from minicoder.record import Environment, Task, write_tasks
from minicoder.sandbox.examples import demo_task
from minicoder.sandbox.reward import evaluate

BACKENDS = ["local", pytest.param("docker", marks=pytest.mark.docker)]


def path_without(tmp: Path, program: str) -> str:
    """A PATH with every program of ours except `program` (symlinks in one folder)."""
    d = tmp / f"path-without-{program}"
    d.mkdir()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for entry in os.scandir(folder):
            if entry.name != program and not os.path.lexists(d / entry.name):
                (d / entry.name).symlink_to(entry.path)
    assert shutil.which(program, path=str(d)) is None and shutil.which("git", path=str(d))
    return str(d)


@pytest.fixture
def no_bwrap(tmp_path, monkeypatch):
    """bubblewrap is not installed, as on a machine where `make setup` never ran as root. The cold
    runner: a warm runner started earlier in this process (while bwrap was there) would not notice."""
    monkeypatch.setenv("PATH", path_without(tmp_path, "bwrap"))
    monkeypatch.setenv("MINICODER_SANDBOX_RUNNER", "cold")


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
def test_failing_setup_command_is_setup_failed(backend):
    task = copy.deepcopy(demo_task(timeout_s=120))  # (a loaded machine must not turn this into a timeout)
    task.environment.setup = ["echo preparing > setup.log", "echo 'no such package' >&2; exit 3"]
    r = evaluate(task, task.patch, backend=backend)
    assert (r.reward, r.status, r.fraction) == (0.0, "setup_failed", 0.0)
    assert "exit 3" in r.message and "no such package" in r.exec.stderr
    assert r.patch_applied and r.tests == {t: "missing" for t in task.FAIL_TO_PASS + task.PASS_TO_PASS}
    if backend == "local":  # the same task with only the working setup command resolves
        task.environment.setup = ["echo preparing > setup.log"]
        assert evaluate(task, task.patch, backend=backend).status == "resolved"


def test_missing_bubblewrap_is_error_status(no_bwrap):
    task = demo_task()
    r = evaluate(task, task.patch, backend="local")
    assert (r.reward, r.status) == (0.0, "error")
    assert r.message.startswith("sandbox failure: bubblewrap (`bwrap`) is not installed")


@pytest.mark.docker
def test_unreachable_engine_is_error_status(docker_client, monkeypatch):
    from minicoder.sandbox import docker as D

    monkeypatch.setattr(D, "_client", None)  # no client and no pool (which holds one) from earlier tests
    monkeypatch.setattr(D, "_pools", {})
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    monkeypatch.setenv("MINICODER_SANDBOX_RUNNER", "cold")  # a warm container started earlier would not notice
    r = evaluate(demo_task(), demo_task().patch, backend="docker")
    assert (r.reward, r.status) == (0.0, "error") and "no Docker engine answers" in r.message


# --- synthesis stops on a sandbox failure, the ledger untouched -----------------------------------

BUGGY = "def inc(x: int) -> int:\n    return x + 2\n"


def inc_task(iid: str) -> Task:
    return Task(instance_id=iid, repo="demo/m", base_commit="", patch=file_diff("m.py", BUGGY, BUGGY.replace("+ 2", "+ 1")),
                test_patch=file_diff("test_m.py", None, "from m import inc\n\n\ndef test_inc():\n    assert inc(1) == 2\n"),
                problem_statement="inc adds two instead of one", FAIL_TO_PASS=["test_m.py::test_inc"], PASS_TO_PASS=[],
                environment=Environment(files={"m.py": BUGGY}), source="manual")


def _one_error_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"minicoder {command}: error: the sandbox failed, stopping (rerun the same command")
    return err


def test_validate_stops_with_exit_2_and_leaves_the_ledger_untouched(tmp_path, no_bwrap, capsys):
    tasks = tmp_path / "tasks.jsonl"
    write_tasks(tasks, [inc_task("a"), inc_task("b")])
    out = tmp_path / "v.jsonl"
    ledger = Path(str(out) + ".ledger.jsonl")
    # an earlier run finished `a` (its line as the pipeline writes it); `b` is still to do
    ledger.write_text('{"id": "a", "kind": "candidate", "kept": false, "stage": "validate", '
                      '"reason": "empty patch passes: no test fails without the fix", "run_id": "1-1"}\n')
    before = ledger.read_bytes()
    assert main(["validate", "--tasks", str(tasks), "--out", str(out), "--no-progress", "--workers", "1"]) == 2
    assert "b: error: sandbox failure: bubblewrap" in _one_error_line(capsys, "validate")
    assert ledger.read_bytes() == before and not out.exists()


def test_synth_mutate_stops_with_exit_2_and_writes_no_ledger_line(tmp_path, no_bwrap, capsys):
    out = tmp_path / "m.jsonl"
    assert main(["synth", "mutate", "--source", "humaneval", "--limit", "1", "--per-subject", "2",
                 "--no-progress", "--out", str(out)]) == 2
    assert "error: sandbox failure: bubblewrap" in _one_error_line(capsys, "synth")
    ledger = Path(str(out) + ".ledger.jsonl")
    assert (not ledger.exists() or ledger.read_text() == "") and not out.exists()


def test_synth_git_stops_with_exit_2_and_writes_no_ledger_line(tmp_path, no_bwrap, capsys):
    import subprocess

    repo = tmp_path / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x"}
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, env=env, capture_output=True)
    git("init", "-q")
    (repo / "m.py").write_text(BUGGY)
    (repo / "test_m.py").write_text("from m import inc\n\n\ndef test_two():\n    assert inc(0) >= 0\n")
    git("add", "-A")
    git("commit", "-qm", "base")
    (repo / "m.py").write_text(BUGGY.replace("+ 2", "+ 1"))
    (repo / "test_m.py").write_text("from m import inc\n\n\ndef test_two():\n    assert inc(0) >= 0\n\n\n"
                                    "def test_one():\n    assert inc(1) == 2\n")
    git("commit", "-qam", "inc added two")
    out = tmp_path / "g.jsonl"
    assert main(["synth", "git", "--repo", str(repo), "--no-progress", "--out", str(out)]) == 2
    assert "error: sandbox failure: bubblewrap" in _one_error_line(capsys, "synth")
    # the root commit's verdict needs no sandbox ("no parent"); the fix commit, which does, is not recorded
    ledger = Path(str(out) + ".ledger.jsonl")
    rows = [json.loads(line) for line in ledger.read_text().splitlines()] if ledger.exists() else []
    assert [(r["stage"], r["reason"]) for r in rows] in ([], [("filter", "root commit (no parent to start from)")])
