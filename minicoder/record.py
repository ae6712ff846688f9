"""The task record: one verifiable software-engineering task, SWE-bench-compatible where it can be.

A task is a repository at a base commit, a gold fix (`patch`), hidden tests (`test_patch`), and
the tests that must go from failing to passing (FAIL_TO_PASS) and stay passing (PASS_TO_PASS).
Field names follow SWE-bench (REFERENCE.md) so its tooling and ours read each other's files.

How a task names its environment (`Environment`):
  - `image`: the container image the tests run in (Docker backend), e.g. the base image
    `minicoder/python:3.11` or a per-repository image built by `minicoder.sandbox.images`;
  - the repository source, exactly one of:
      `repo_path`: a local path or git URL, checked out at `base_commit`;
      `files`:     an inline snapshot {relative path: text} of the repository at its base commit,
                   which makes a task self-contained (HumanEval-derived tasks, shipped seed sets);
  - `setup`: shell commands run once in a fresh workspace (e.g. `pip install -e .`);
  - `python_packages`: pip requirements the tests need (installed from wheels the host downloads);
  - `test_cmd`: the test runner; test ids are appended to it.

The workspace a sandbox builds from a task (`minicoder.gitdiff.materialize_repo`) is a fresh
single-commit git repository: no remotes and no history beyond the base commit, so an agent cannot
read the fix from the future.

This module imports nothing else from minicoder (SWE-bench keeps its record in `types.py` for the
same reason): the sandbox, task synthesis, training and RL all read tasks without depending on
each other.

Files are JSONL (one task per line) or HF `datasets` (Arrow, `save_to_disk`). Reading checks every
field and names the bad field and line: `TaskFormatError: tasks.jsonl line 7: field 'FAIL_TO_PASS':
expected a list of strings, got str`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEFAULT_IMAGE = "minicoder/python:3.11"  # the base image (`minicoder images base` builds it)
SOURCES = ("git", "mutation", "humaneval", "manual")
PASSING = ("passed", "xfailed")  # outcomes that count as passing (SWE-bench counts an expected failure)


class TaskFormatError(ValueError):
    """A task record (or file of them) is malformed; the message names the field and the line."""


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


@dataclass
class Environment:
    """Where and how a task's tests run. Exactly one of `repo_path` / `files` is set."""

    image: str = DEFAULT_IMAGE  # container image for the docker backend
    repo_path: str | None = None  # local path or git URL of the repository (checked out at base_commit)
    files: dict[str, str] | None = None  # inline snapshot of the repository at the base commit
    setup: list[str] = field(default_factory=list)  # shell commands run once in a fresh workspace
    python_packages: list[str] = field(default_factory=list)  # pip requirements the tests need
    test_cmd: str = "python -m pytest"  # test runner; test ids are appended
    timeout_s: float = 60.0  # wall-clock limit for one test run

    def __post_init__(self) -> None:
        if (self.repo_path is None) == (self.files is None):
            raise TaskFormatError("field 'environment': exactly one of 'repo_path' and 'files' must be set")


@dataclass
class Task:
    """One verifiable task. `patch` and `test_patch` are unified diffs against `base_commit`."""

    instance_id: str  # unique id, e.g. "humaneval__HumanEval_12__flip_compare_0"
    repo: str  # a readable repository name, e.g. "minicoder/humaneval" or "pallets/flask"
    base_commit: str  # commit the task starts from ("" for inline `files` snapshots)
    patch: str  # the gold fix (source changes only)
    test_patch: str  # the hidden tests (applied fresh after the candidate patch)
    problem_statement: str  # what the agent is told
    FAIL_TO_PASS: list[str]  # test ids that fail before the fix and pass after
    PASS_TO_PASS: list[str]  # test ids that pass before and after
    environment: Environment = field(default_factory=lambda: Environment(files={}))
    language: str = "python"
    source: str = "manual"  # how it was made: git | mutation | humaneval | manual
    created_at: str = field(default_factory=_now)  # ISO 8601
    version: str = ""
    hints_text: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)  # free-form provenance (operator, commit, ...)

    # --- conversion ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str = "task") -> Task:
        """Build a Task from a dict, checking every field; errors name `where` and the field."""
        _check_object(d, cls, where)
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        for name in required:
            if name not in d:
                raise TaskFormatError(f"{where}: missing required field '{name}'")
        kw: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                continue
            v = d[f.name]
            if f.name in ("FAIL_TO_PASS", "PASS_TO_PASS"):
                if isinstance(v, str):  # SWE-bench files store these as JSON-encoded strings
                    try:
                        v = json.loads(v)
                    except json.JSONDecodeError:
                        raise TaskFormatError(
                            f"{where}: field '{f.name}': expected a list of strings, got str") from None
                if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                    raise TaskFormatError(f"{where}: field '{f.name}': expected a list of strings, got {v!r:.80}")
            elif f.name == "environment":
                v = _environment_from(v, where)
            elif f.name == "metadata":
                if not isinstance(v, dict):
                    raise TaskFormatError(f"{where}: field 'metadata': expected an object, got {type(v).__name__}")
            elif not isinstance(v, str):
                raise TaskFormatError(f"{where}: field '{f.name}': expected a string, got {type(v).__name__}")
            kw[f.name] = v
        task = cls(**kw)
        task.check(where)
        return task

    def check(self, where: str = "task") -> None:
        """Semantic checks beyond types."""
        if not self.instance_id.strip():
            raise TaskFormatError(f"{where}: field 'instance_id' is empty")
        if not self.FAIL_TO_PASS:
            raise TaskFormatError(f"{where}: field 'FAIL_TO_PASS' is empty: a task needs a test the fix makes pass")
        if self.source not in SOURCES:
            raise TaskFormatError(f"{where}: field 'source': {self.source!r} is not one of {SOURCES}")
        for name in ("patch", "test_patch"):
            text = getattr(self, name)
            if text and "+++ " not in text and "diff --git" not in text:
                raise TaskFormatError(f"{where}: field '{name}' is not a unified diff")
        if self.environment.repo_path is not None and not self.base_commit:
            raise TaskFormatError(f"{where}: field 'base_commit' is required when the environment names a repo_path")


def _check_object(d: Any, cls: type, where: str) -> None:
    """`d` is a dict whose keys are all fields of the dataclass `cls`; else TaskFormatError."""
    if not isinstance(d, dict):
        raise TaskFormatError(f"{where}: expected {'a JSON object' if cls is Task else 'an object'}, got {type(d).__name__}")
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise TaskFormatError(f"{where}: unknown field(s) {unknown}")


def _environment_from(v: Any, where: str) -> Environment:
    if isinstance(v, Environment):
        return v
    _check_object(v, Environment, f"{where}: field 'environment'")
    files = v.get("files")
    if files is not None and (not isinstance(files, dict)
                              or not all(isinstance(a, str) and isinstance(b, str) for a, b in files.items())):
        raise TaskFormatError(f"{where}: field 'environment.files': expected an object of path -> text")
    for key in ("setup", "python_packages"):
        if key in v and (not isinstance(v[key], list) or not all(isinstance(x, str) for x in v[key])):
            raise TaskFormatError(f"{where}: field 'environment.{key}': expected a list of strings")
    for key in ("image", "repo_path", "test_cmd"):
        if v.get(key) is not None and not isinstance(v[key], str):
            raise TaskFormatError(f"{where}: field 'environment.{key}': expected a string")
    if "timeout_s" in v and (not isinstance(v["timeout_s"], (int, float)) or v["timeout_s"] <= 0):
        raise TaskFormatError(f"{where}: field 'environment.timeout_s': expected a positive number")
    try:
        return Environment(**v)
    except TaskFormatError as e:
        raise TaskFormatError(f"{where}: {e}") from None


# --- files ------------------------------------------------------------------------------------

def iter_tasks(path: str | os.PathLike) -> Iterator[Task]:
    """Stream tasks from a JSONL file, or from an HF `datasets` folder written by `save_tasks`."""
    path = Path(path)
    if not path.exists():
        raise TaskFormatError(f"{path}: no such file")
    if path.is_dir():
        yield from from_hf_dataset(path)
        return
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{path.name} line {lineno}"
            try:
                d = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskFormatError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            yield Task.from_dict(d, where)


def read_tasks(path: str | os.PathLike) -> list[Task]:
    """All tasks of a file; duplicate instance ids are an error."""
    tasks, seen = [], set()
    for t in iter_tasks(path):
        if t.instance_id in seen:
            raise TaskFormatError(f"{Path(path).name}: duplicate instance_id {t.instance_id!r}")
        seen.add(t.instance_id)
        tasks.append(t)
    return tasks


def write_tasks(path: str | os.PathLike, tasks: Iterable[Task]) -> int:
    """Write tasks as JSONL atomically (temp file + rename). Returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, delete=False, suffix=".tmp") as fh:
        for t in tasks:
            fh.write(json.dumps(t.to_dict(), ensure_ascii=False) + "\n")
            n += 1
    os.replace(fh.name, path)
    return n


def to_hf_dataset(tasks: Iterable[Task]):
    """An HF `datasets.Dataset`, nested fields stored as JSON strings (as SWE-bench does)."""
    import datasets

    rows = []
    for t in tasks:
        d = t.to_dict()
        for key in ("FAIL_TO_PASS", "PASS_TO_PASS", "environment", "metadata"):
            d[key] = json.dumps(d[key], ensure_ascii=False)
        rows.append(d)
    return datasets.Dataset.from_list(rows)


def from_hf_dataset(ds_or_path) -> Iterator[Task]:
    """Tasks from an HF `datasets.Dataset` or a folder saved with `save_to_disk`."""
    import datasets

    ds = datasets.load_from_disk(str(ds_or_path)) if isinstance(ds_or_path, (str, os.PathLike)) else ds_or_path
    for i, row in enumerate(ds):
        d = dict(row)
        where = f"dataset row {i}"
        for key in ("environment", "metadata"):
            if isinstance(d.get(key), str):
                try:
                    d[key] = json.loads(d[key])
                except json.JSONDecodeError:
                    raise TaskFormatError(f"{where}: field '{key}' is not valid JSON") from None
        yield Task.from_dict(d, where)


def save_tasks(path: str | os.PathLike, tasks: Iterable[Task]) -> None:
    """Save as JSONL (path ending in .jsonl) or as an HF dataset folder (any other path)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        write_tasks(path, tasks)
    else:
        to_hf_dataset(tasks).save_to_disk(str(path))
