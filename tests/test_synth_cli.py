"""The `minicoder synth` / `minicoder validate` commands: real runs, real interruptions (SIGKILL, Ctrl-C)
resumed by the same command with nothing lost or redone, clear one-line errors (exit status 2)."""

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
from minicoder.gitdiff import file_diff
from minicoder.record import Environment, Task, read_tasks, write_tasks

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minicoder", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def ledger_ids(path: Path) -> list[str]:
    """Ids of the complete lines (a line being written while we read has no newline yet)."""
    text = path.read_text() if path.exists() else ""
    return [json.loads(line)["id"] for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


def run_until(args: list[str], ledger: Path, n: int, sig: int, timeout: float = 300) -> subprocess.Popen:
    """Start `minicoder ARGS`, send `sig` once the ledger holds `n` complete lines, wait for the end."""
    proc = subprocess.Popen([sys.executable, "-m", "minicoder", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and len(ledger_ids(ledger)) < n:
        time.sleep(0.05)
    assert proc.poll() is None, f"finished before it could be interrupted: {proc.communicate()}"
    proc.send_signal(sig)
    proc.communicate(timeout=timeout)
    return proc


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    out = capsys.readouterr().out
    assert "git" in out and "mutate" in out


def _one_line(capsys, command: str) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and err.startswith(f"minicoder {command}: error: "), err
    return err


def test_malformed_inputs_give_one_clear_line(tmp_path, capsys):
    bad = tmp_path / "tasks.jsonl"
    bad.write_text('{"instance_id": "a"}\n')
    assert main(["validate", "--tasks", str(bad)]) == 2
    err = _one_line(capsys, "validate")
    assert err.startswith("minicoder validate: error: tasks.jsonl line 1: missing required field")
    bad.write_text("{not json\n")
    assert main(["validate", "--tasks", str(bad)]) == 2
    assert "tasks.jsonl line 1: not valid JSON" in _one_line(capsys, "validate")
    assert main(["validate", "--tasks", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such file" in _one_line(capsys, "validate")
    bad.write_text("")
    assert main(["validate", "--tasks", str(bad)]) == 2
    assert "tasks.jsonl: no tasks" in _one_line(capsys, "validate")
    assert main(["synth", "mutate", "--source", "humaneval", "--operators", "flip,nope", "--out",
                 str(tmp_path / "o.jsonl")]) == 2
    assert "--operators: unknown" in _one_line(capsys, "synth")
    assert main(["synth", "git", "--repo", str(tmp_path), "--out", str(tmp_path / "o.jsonl")]) == 2
    assert "not a git repository" in _one_line(capsys, "synth")


def test_bad_numbers_and_a_missing_engine_give_one_clear_line(tmp_path, capsys, monkeypatch):
    write_tasks(tmp_path / "t.jsonl", [_inc_task("a")])
    out = str(tmp_path / "o.jsonl")
    commands = {"validate": ["validate", "--tasks", str(tmp_path / "t.jsonl"), "--out", out],
                "synth": ["synth", "mutate", "--source", "humaneval", "--limit", "1", "--out", out]}
    git_cmd = ["synth", "git", "--repo", str(ROOT), "--max-commits", "1", "--out", out]
    for name, argv in [*commands.items(), ("synth", git_cmd)]:
        for flag, message in (("--workers", "--workers must be at least 1"), ("--repeats", "--repeats must be at least 1")):
            assert main([*argv, flag, "0"]) == 2, (argv, flag)
            assert message in _one_line(capsys, name)
    from minicoder.sandbox import docker as D

    monkeypatch.setattr(D, "_client", None)
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    for name, argv in [*commands.items(), ("synth", git_cmd)]:
        assert main([*argv, "--backend", "docker", "--no-progress"]) == 2, argv
        assert "--backend docker: no Docker engine answers" in _one_line(capsys, name)
    assert not os.path.exists(out) and not os.path.exists(out + ".ledger.jsonl")


@pytest.mark.slow
def test_killed_and_interrupted_runs_resume_without_redoing_work(tmp_path):
    """SIGKILL mid-run (a kill may tear the line being written), then Ctrl-C, then the same command:
    every candidate ends as exactly one ledger line, none redone, none lost."""
    out = tmp_path / "tasks.jsonl"
    ledger = Path(str(out) + ".ledger.jsonl")
    args = ["synth", "mutate", "--source", "humaneval", "--limit", "2", "--per-subject", "3", "--combine", "0",
            "--workers", "1", "--no-progress", "--out", str(out)]
    killed = run_until(args, ledger, 2, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    first = ledger_ids(ledger)
    assert 2 <= len(first) < 8  # 2 baselines + 6 candidates when complete
    stopped = run_until(args, ledger, len(first) + 1, signal.SIGINT)  # Ctrl-C: the candidate in hand is redone
    assert stopped.returncode == 130
    second = ledger_ids(ledger)
    assert len(second) < 8 and second[: len(first)] == first
    done = subprocess.run([sys.executable, "-m", "minicoder", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    ids = ledger_ids(ledger)
    assert len(ids) == len(set(ids)) == 8 and ids[: len(second)] == second  # nothing redone, nothing lost
    report = json.loads(Path(str(out) + ".report.json").read_text())
    n_before = sum(not i.endswith("__baseline") for i in second)
    assert report["resumed"] == n_before and report["processed"] == 6 - n_before
    assert report["funnel"]["candidates"] == 6
    tasks = read_tasks(out)
    assert len(tasks) == report["funnel"]["after qa"] > 0
    # the same command again: everything is in the ledger, nothing runs
    again = subprocess.run([sys.executable, "-m", "minicoder", *args], cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0 and json.loads(Path(str(out) + ".report.json").read_text())["processed"] == 0
    assert read_tasks(out) == tasks


def test_a_corrupt_ledger_line_is_named(tmp_path, capsys):
    """A damaged line in the middle of a ledger (not a torn last line) stops the run with its line number."""
    tasks = tmp_path / "tasks.jsonl"
    write_tasks(tasks, [_inc_task("good")])
    out = tmp_path / "v.jsonl"
    ledger = Path(str(out) + ".ledger.jsonl")
    ledger.write_text('{"id": "a", "kind": "candidate", "kept": false, "stage": "validate", "reason": "x"}\n'
                      '{"id": "b", "kind": "cand\n'
                      '{"id": "c", "kind": "candidate", "kept": false, "stage": "validate", "reason": "x"}\n')
    before = ledger.read_bytes()
    assert main(["validate", "--tasks", str(tasks), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("minicoder validate: error: v.jsonl.ledger.jsonl line 2: not valid JSON; "
                   "delete the ledger to start over")
    assert ledger.read_bytes() == before


BUGGY = "def inc(x: int) -> int:\n    return x + 2\n"


def _inc_task(iid: str, test: str = "assert inc(1) == 2") -> Task:
    return Task(instance_id=iid, repo="demo/m", base_commit="", patch=file_diff("m.py", BUGGY, BUGGY.replace("+ 2", "+ 1")),
                test_patch=file_diff("test_m.py", None, f"from m import inc\n\n\ndef test_inc():\n    {test}\n"),
                problem_statement="inc adds two instead of one", FAIL_TO_PASS=["test_m.py::test_inc"], PASS_TO_PASS=[],
                environment=Environment(files={"m.py": BUGGY}), source="manual")


@pytest.mark.slow
def test_validate_command_exit_status_and_resume_after_a_kill(tmp_path):
    good, weak = _inc_task("good"), _inc_task("weak", "assert inc(1) > 0")
    path = tmp_path / "tasks.jsonl"
    write_tasks(path, [good])
    r = cli("validate", "--tasks", str(path), "--repeats", "1", "--no-progress", "--out", str(tmp_path / "v1.jsonl"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert [t.instance_id for t in read_tasks(tmp_path / "v1.jsonl")] == ["good"]
    four = [good, weak, _inc_task("good2", "assert inc(2) == 3"), _inc_task("weak2", "assert inc(2) > 1")]
    write_tasks(path, four)
    out = tmp_path / "v2.jsonl"
    ledger = Path(str(out) + ".ledger.jsonl")
    args = ["validate", "--tasks", str(path), "--repeats", "1", "--no-exploit-checks", "--no-progress",
            "--workers", "1", "--out", str(out)]
    assert run_until(args, ledger, 1, signal.SIGKILL).returncode == -signal.SIGKILL
    first = ledger_ids(ledger)
    assert 1 <= len(first) < 4
    r = cli(*args)
    assert r.returncode == 1, r.stdout + r.stderr  # weak tasks fail validation
    assert "FAILED weak: empty patch passes" in r.stdout and "FAILED weak2: empty patch passes" in r.stdout
    ids = ledger_ids(ledger)
    assert sorted(ids) == ["good", "good2", "weak", "weak2"] and ids[: len(first)] == first
    assert [t.instance_id for t in read_tasks(out)] == ["good", "good2"]
    report = json.loads(Path(str(out) + ".report.json").read_text())
    assert report["resumed"] == len(first) and report["processed"] == 4 - len(first)


def _git_history(repo: Path, n_fixes: int) -> None:
    """A repository whose history is a root commit and `n_fixes` real fix commits with their tests."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x"}
    git = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, env=env, capture_output=True)
    repo.mkdir()
    git("init", "-q")
    funcs = {f"f{i}": f"def f{i}(x):\n    return x + {i + 1}\n" for i in range(n_fixes)}  # each off by one
    (repo / "m.py").write_text("\n\n".join(funcs.values()))
    (repo / "test_m.py").write_text("import m\n\n\ndef test_import():\n    assert m\n")
    git("add", "-A")
    git("commit", "-qm", "base")
    tests = (repo / "test_m.py").read_text()
    for i in range(n_fixes):
        funcs[f"f{i}"] = f"def f{i}(x):\n    return x + {i}\n"
        (repo / "m.py").write_text("\n\n".join(funcs.values()))
        tests += f"\n\ndef test_f{i}():\n    assert m.f{i}(1) == {i + 1}\n"
        (repo / "test_m.py").write_text(tests)
        git("commit", "-qam", f"f{i} added one too many (f{i}(1) returned {i + 2})")


@pytest.mark.slow
def test_synth_git_resumes_after_a_kill(tmp_path):
    repo = tmp_path / "repo"
    _git_history(repo, 3)
    out = tmp_path / "git.jsonl"
    ledger = Path(str(out) + ".ledger.jsonl")
    args = ["synth", "git", "--repo", str(repo), "--workers", "1", "--no-progress", "--out", str(out)]
    assert run_until(args, ledger, 3, signal.SIGKILL).returncode == -signal.SIGKILL  # root, environment, one fix commit
    first = [i for i in ledger_ids(ledger) if not i.startswith("env__")]  # env__: the repository's environment
    assert 2 <= len(first) < 4
    r = cli(*args)
    assert r.returncode == 0, r.stdout + r.stderr
    ids = [i for i in ledger_ids(ledger) if not i.startswith("env__")]
    assert len(ids) == len(set(ids)) == 4 and ids[: len(first)] == first
    tasks = read_tasks(out)
    assert sorted(t.FAIL_TO_PASS[0] for t in tasks) == ["test_m.py::test_f0", "test_m.py::test_f1", "test_m.py::test_f2"]
    report = json.loads(Path(str(out) + ".report.json").read_text())
    assert report["resumed"] == len(first) and report["processed"] == 4 - len(first)
