"""`minicoder eval` and `minicoder cleanup` end to end: results appended as they finish, resume
skips finished instances (also after a half-written last line), clean errors for bad input."""

from __future__ import annotations

import json
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


def test_eval_bad_input_is_a_clean_error(files: Path, capsys):
    bad = files / "bad.jsonl"
    bad.write_text('{"instance_id": "nope", "model_patch": ""}\n')
    base = ["eval", "--tasks", str(files / "tasks.jsonl"), "--out", str(files / "r.jsonl")]
    assert main([*base, "--predictions", str(bad)]) == 2
    assert "name no task" in capsys.readouterr().err
    bad.write_text("{not json\n")
    assert main([*base, "--predictions", str(bad)]) == 2
    assert "bad.jsonl line 1: not valid JSON" in capsys.readouterr().err
    assert main([*base, "--predictions", str(files / "missing.jsonl")]) == 2


def test_cleanup_command_runs(capsys):
    assert main(["cleanup", "--dead-only"]) == 0
    assert "local: removed" in capsys.readouterr().out
