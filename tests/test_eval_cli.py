"""`minicoder eval` and `minicoder cleanup` end to end: results appended as they finish, resume
skips finished instances (after a real SIGKILL, and after a half-written last line), a damaged line
is named, clean one-line errors (exit status 2) for bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minicoder.cli import main
from minicoder.record import write_tasks
from minicoder.sandbox.examples import demo_task, hostile_patches


@pytest.fixture
def files(tmp_path: Path):
    tasks = [demo_task(instance_id=f"calc-{i}") for i in range(3)]
    write_tasks(tmp_path / "tasks.jsonl", tasks)
    preds = [{"instance_id": "calc-0", "model_patch": tasks[0].patch, "model_name_or_path": "gold"},
             {"instance_id": "calc-1", "model_patch": hostile_patches()["conftest"].patch},
             {"instance_id": "calc-2", "model_patch": "not a diff"}]
    (tmp_path / "preds.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    return tmp_path


def _rows(path: Path) -> dict[str, dict]:
    return {r["instance_id"]: r for r in map(json.loads, path.read_text().splitlines())}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["local", pytest.param("docker", marks=pytest.mark.docker)])
def test_eval_writes_results_and_resumes(files: Path, backend, request, capsys):
    if backend == "docker":
        request.getfixturevalue("docker_client")
    out = files / "results.jsonl"
    argv = ["eval", "--tasks", str(files / "tasks.jsonl"), "--predictions", str(files / "preds.jsonl"),
            "--backend", backend, "--workers", "2", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    rows = _rows(out)
    assert {k: (r["reward"], r["status"]) for k, r in rows.items()} == {
        "calc-0": (1.0, "resolved"), "calc-1": (0.0, "unresolved"), "calc-2": (0.0, "patch_failed")}
    assert "conftest.py" in rows["calc-1"]["dropped"]
    text = capsys.readouterr().out
    assert "resolved" in text and "patch_failed" in text

    # a killed run: the last line half-written and one instance missing -> only that one re-runs
    lines = out.read_text().splitlines()
    keep = [ln for ln in lines if json.loads(ln)["instance_id"] != "calc-0"]
    out.write_text("\n".join(keep) + "\n" + '{"instance_id": "calc-0", "rew')
    assert main(argv) == 0
    assert "1 to evaluate" in capsys.readouterr().out
    assert len(out.read_text().splitlines()) == 3 and _rows(out)["calc-0"]["reward"] == 1.0


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and err.startswith("minicoder eval: error: "), err
    return err


@pytest.fixture
def no_engine(monkeypatch):
    """No Docker engine to talk to (and no client cached from an earlier test)."""
    from minicoder.sandbox import docker as D

    monkeypatch.setattr(D, "_client", None)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")


def _preds(path: Path, *rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_eval_bad_input_is_a_clean_error(files: Path, capsys, monkeypatch):
    out = files / "r.jsonl"
    base = ["eval", "--tasks", str(files / "tasks.jsonl"), "--out", str(out)]
    preds = ["--predictions", str(files / "preds.jsonl")]
    bad = files / "bad.jsonl"
    cases = [
        ([*base, "--predictions", str(_preds(bad, {"instance_id": "nope", "model_patch": ""}))], "name no task"),
        ([*base, *preds, "--workers", "0"], "--workers must be at least 1"),
        ([*base, "--predictions", str(_preds(files / "dup.jsonl", {"instance_id": "calc-0", "model_patch": ""},
                                             {"instance_id": "calc-1"}, {"instance_id": "calc-0", "model_patch": "x"}))],
         "dup.jsonl line 3: duplicate instance_id 'calc-0'"),
        ([*base, "--predictions", str(_preds(files / "num.jsonl", {"instance_id": "calc-0", "model_patch": 7}))],
         "num.jsonl line 1: 'model_patch' must be a string or null"),
        ([*base, "--predictions", str(_preds(files / "noid.jsonl", {"model_patch": ""}))], "a string 'instance_id'"),
        ([*base, "--predictions", str(files / "missing.jsonl")], "--predictions: no such file"),
    ]
    (files / "empty.jsonl").write_text("")
    cases.append((["eval", "--tasks", str(files / "empty.jsonl"), *preds, "--out", str(out)], "empty.jsonl: no tasks"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in _one_line_error(capsys), argv
    bad.write_text("{not json\n")
    assert main([*base, "--predictions", str(bad)]) == 2
    assert "bad.jsonl line 1: not valid JSON" in _one_line_error(capsys)
    assert not out.exists()  # nothing was evaluated, nothing written


def test_eval_docker_without_an_engine_is_a_clean_error(files: Path, capsys, no_engine):
    out = files / "r.jsonl"
    argv = ["eval", "--tasks", str(files / "tasks.jsonl"), "--predictions", str(files / "preds.jsonl"),
            "--backend", "docker", "--out", str(out)]
    assert main(argv) == 2
    assert "--backend docker: no Docker engine answers" in _one_line_error(capsys)
    assert not out.exists()


def _complete_lines(path: Path) -> list[str]:
    text = path.read_text() if path.exists() else ""
    return text[: text.rfind("\n") + 1].splitlines()


@pytest.mark.slow
def test_eval_resumes_after_a_real_kill(tmp_path: Path):
    tasks = [demo_task(instance_id=f"calc-{i}") for i in range(4)]
    write_tasks(tmp_path / "tasks.jsonl", tasks)
    _preds(tmp_path / "preds.jsonl", *({"instance_id": t.instance_id, "model_patch": t.patch if i % 2 else ""}
                                       for i, t in enumerate(tasks)))
    out = tmp_path / "results.jsonl"
    argv = [sys.executable, "-m", "minicoder", "eval", "--tasks", str(tmp_path / "tasks.jsonl"), "--predictions",
            str(tmp_path / "preds.jsonl"), "--workers", "1", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not _complete_lines(out):
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    first = _complete_lines(out)
    assert 1 <= len(first) < 4
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"{4 - len(first)} to evaluate" in done.stdout
    lines = out.read_text().splitlines()
    assert lines[: len(first)] == first  # kept as they were, not redone
    rows = [json.loads(line) for line in lines]
    assert sorted(r["instance_id"] for r in rows) == [t.instance_id for t in tasks]  # none lost, none twice
    assert {r["instance_id"]: r["reward"] for r in rows} == {"calc-0": 0.0, "calc-1": 1.0, "calc-2": 0.0, "calc-3": 1.0}


def test_a_damaged_line_in_the_results_is_named(files: Path, capsys):
    out = files / "results.jsonl"
    out.write_text('{"instance_id": "calc-0", "reward": 1.0}\n{"instance_id": "ca\n{"instance_id": "calc-2"}\n')
    before = out.read_bytes()
    argv = ["eval", "--tasks", str(files / "tasks.jsonl"), "--predictions", str(files / "preds.jsonl"),
            "--out", str(out), "--quiet"]
    assert main(argv) == 2
    assert "results.jsonl line 2: not valid JSON" in _one_line_error(capsys)
    assert out.read_bytes() == before


def test_cleanup_command_runs(capsys):
    assert main(["cleanup", "--dead-only"]) == 0
    assert "local: removed" in capsys.readouterr().out
