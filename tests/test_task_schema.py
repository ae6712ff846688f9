"""The task record: round trips through JSONL and HF datasets, clear errors, clean workspaces."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from minicoder.gitdiff import materialize_repo, snapshot_files
from minicoder.record import Environment, Task, TaskFormatError, read_tasks, save_tasks, write_tasks

PATCH = "diff --git a/m.py b/m.py\n--- a/m.py\n+++ b/m.py\n@@ -1 +1 @@\n-x = 1\n+x = 2\n"


def make_task(i: int = 0, **kw) -> Task:
    base = dict(
        instance_id=f"t{i}", repo="demo/m", base_commit="", patch=PATCH, test_patch="",
        problem_statement="x should be 2", FAIL_TO_PASS=["test_m.py::test_x"], PASS_TO_PASS=[],
        environment=Environment(files={"m.py": "x = 1\n"}), source="manual",
    )
    base.update(kw)
    return Task(**base)


def test_jsonl_and_dataset_round_trip(tmp_path: Path):
    tasks = [make_task(i, metadata={"op": "flip", "n": i}) for i in range(3)]
    write_tasks(tmp_path / "t.jsonl", tasks)
    assert read_tasks(tmp_path / "t.jsonl") == tasks
    save_tasks(tmp_path / "ds", tasks)
    assert read_tasks(tmp_path / "ds") == tasks


def test_swebench_style_string_lists_are_accepted():
    d = make_task().to_dict()
    d["FAIL_TO_PASS"] = json.dumps(["a::b"])
    assert Task.from_dict(d).FAIL_TO_PASS == ["a::b"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("patch"), "missing required field 'patch'"),
        (lambda d: d.update(FAIL_TO_PASS="nope"), "field 'FAIL_TO_PASS'"),
        (lambda d: d.update(FAIL_TO_PASS=[]), "field 'FAIL_TO_PASS' is empty"),
        (lambda d: d.update(bogus=1), "unknown field(s) ['bogus']"),
        (lambda d: d.update(patch="not a diff"), "field 'patch' is not a unified diff"),
        (lambda d: d["environment"].update(files=None), "exactly one of 'repo_path' and 'files'"),
        (lambda d: d["environment"].update(timeout_s=-1), "environment.timeout_s"),
        (lambda d: d.update(source="magic"), "field 'source'"),
    ],
)
def test_malformed_records_name_the_field_and_line(tmp_path: Path, mutate, message):
    good = make_task(0).to_dict()
    bad = make_task(1).to_dict()
    mutate(bad)
    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(TaskFormatError) as e:
        read_tasks(path)
    assert "tasks.jsonl line 2" in str(e.value) and message in str(e.value)


def test_invalid_json_and_duplicates(tmp_path: Path):
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"instance_id": \n')
    with pytest.raises(TaskFormatError, match="line 1: not valid JSON"):
        read_tasks(path)
    write_tasks(path, [make_task(0), make_task(0)])
    with pytest.raises(TaskFormatError, match="duplicate instance_id 't0'"):
        read_tasks(path)


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_materialize_from_git_has_no_future_history(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    _git(src, "init", "-q")
    (src / "m.py").write_text("x = 1\n")
    _git(src, "add", "-A")
    _git(src, "commit", "-qm", "base")
    base = _git(src, "rev-parse", "HEAD")
    (src / "m.py").write_text("x = 2  # the fix\n")
    _git(src, "commit", "-qam", "fix")
    fix = _git(src, "rev-parse", "HEAD")
    task = make_task(base_commit=base, environment=Environment(repo_path=str(src)))
    ws = materialize_repo(task, tmp_path / "ws")
    assert (ws / "m.py").read_text() == "x = 1\n"
    log = _git(ws, "log", "--all", "--format=%s")
    assert log == "base"  # one commit, the fix is unreachable
    assert _git(ws, "remote") == ""
    # not merely unreachable: the fix commit and its blob are not in the object store at all
    for obj in (fix, f"{fix}:m.py"):
        assert subprocess.run(["git", "cat-file", "-e", obj], cwd=ws, capture_output=True).returncode != 0
    objects = _git(ws, "cat-file", "--batch-all-objects", "--batch-check=%(objecttype)")
    assert objects.split().count("commit") == 1


def test_materialize_from_files_and_snapshot(tmp_path: Path):
    task = make_task(environment=Environment(files={"pkg/m.py": "x = 1\n", "test_m.py": "import pkg\n"}))
    ws = materialize_repo(task, tmp_path / "ws")
    assert snapshot_files(ws) == {"pkg/m.py": "x = 1\n", "test_m.py": "import pkg\n"}
    subprocess.run(["git", "apply", "--check", "-"], cwd=ws, input=PATCH.replace("m.py", "pkg/m.py"),
                   text=True, check=True)
    bad = make_task(environment=Environment(files={"../evil.py": "x"}))
    with pytest.raises(TaskFormatError, match="escapes the repository"):
        materialize_repo(bad, tmp_path / "ws2")
