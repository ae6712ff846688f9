"""The `minicoder synth` / `minicoder validate` commands: real runs, a real interruption, clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from minicoder.cli import main
from minicoder.record import read_tasks, write_tasks

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minicoder", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def ledger_ids(path: Path) -> list[str]:
    return [json.loads(line)["id"] for line in path.read_text().splitlines() if line.strip()]


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    out = capsys.readouterr().out
    assert "git" in out and "mutate" in out


def test_malformed_inputs_give_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "tasks.jsonl"
    bad.write_text('{"instance_id": "a"}\n')
    assert main(["validate", "--tasks", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("minicoder validate: error: tasks.jsonl line 1: missing required field")
    assert "Traceback" not in err and len(err.splitlines()) == 1
    bad.write_text("{not json\n")
    assert main(["validate", "--tasks", str(bad)]) == 2
    assert "tasks.jsonl line 1: not valid JSON" in capsys.readouterr().err
    assert main(["validate", "--tasks", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["synth", "mutate", "--source", "humaneval", "--operators", "flip,nope", "--out",
                 str(tmp_path / "o.jsonl")]) == 2
    assert "--operators: unknown" in capsys.readouterr().err
    assert main(["synth", "git", "--repo", str(tmp_path), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "not a git repository" in capsys.readouterr().err


@pytest.mark.slow
def test_interrupted_run_resumes_without_redoing_work(tmp_path):
    out = tmp_path / "tasks.jsonl"
    ledger = Path(str(out) + ".ledger.jsonl")
    args = [sys.executable, "-m", "minicoder", "synth", "mutate", "--source", "humaneval", "--limit", "2",
            "--per-subject", "3", "--combine", "0", "--workers", "1", "--no-progress", "--out", str(out)]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and (not ledger.exists() or len(ledger_ids(ledger)) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)  # Ctrl-C mid-run: the candidate in hand is not recorded, so it is redone
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    first = ledger_ids(ledger)
    assert 3 <= len(first) < 8  # 2 baselines + 6 candidates when complete
    # a kill during a write leaves a torn line: it is dropped and that candidate redone
    with open(ledger, "a") as fh:
        fh.write('{"id": "torn')
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    ids = ledger_ids(ledger)
    assert len(ids) == len(set(ids)) == 8 and ids[: len(first)] == first  # nothing redone, nothing lost
    report = json.loads(Path(str(out) + ".report.json").read_text())
    n_first_candidates = sum(not i.endswith("__baseline") for i in first)
    assert report["resumed"] == n_first_candidates and report["processed"] == 6 - n_first_candidates
    assert report["funnel"]["candidates"] == 6
    tasks = read_tasks(out)
    assert len(tasks) == report["funnel"]["after qa"] > 0
    # the same command again: everything is in the ledger, nothing runs
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and json.loads(Path(str(out) + ".report.json").read_text())["processed"] == 0


@pytest.mark.slow
def test_validate_command_exit_status(tmp_path):
    from minicoder.gitdiff import file_diff
    from minicoder.record import Environment, Task

    buggy = "def inc(x: int) -> int:\n    return x + 2\n"
    good = Task(instance_id="good", repo="demo/m", base_commit="",
                patch=file_diff("m.py", buggy, buggy.replace("+ 2", "+ 1")),
                test_patch=file_diff("test_m.py", None, "from m import inc\n\n\ndef test_inc():\n    assert inc(1) == 2\n"),
                problem_statement="inc adds two instead of one", FAIL_TO_PASS=["test_m.py::test_inc"], PASS_TO_PASS=[],
                environment=Environment(files={"m.py": buggy}), source="manual")
    weak = Task(**{**good.__dict__, "instance_id": "weak",
                   "test_patch": file_diff("test_m.py", None, "from m import inc\n\n\ndef test_inc():\n"
                                                             "    assert inc(1) > 0\n")})
    path = tmp_path / "tasks.jsonl"
    write_tasks(path, [good])
    r = cli("validate", "--tasks", str(path), "--repeats", "1", "--no-progress", "--out", str(tmp_path / "v1.jsonl"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert [t.instance_id for t in read_tasks(tmp_path / "v1.jsonl")] == ["good"]
    write_tasks(path, [good, weak])
    r = cli("validate", "--tasks", str(path), "--repeats", "1", "--no-exploit-checks", "--no-progress",
            "--out", str(tmp_path / "v2.jsonl"))
    assert r.returncode == 1
    assert "FAILED weak: empty patch passes" in r.stdout
    assert os.path.exists(tmp_path / "v2.jsonl.report.json")
