"""Unified diffs for task synthesis: make them, parse them per file, normalise them, apply them.

Every stage of synthesis speaks in diffs (the gold `patch`, the hidden `test_patch`, the trivial
patches the validator tries), so they live in one place:
  - `make_diff(path, old, new)` writes a git-style diff (`diff --git a/p b/p`) with difflib, with
    "\\ No newline at end of file" markers, additions (`old=None`) and deletions (`new=None`), so
    `git apply` and `patch -p1` both accept it;
  - `parse_patch` splits a diff into per-file pieces with their added / removed lines;
  - `normalise_patch` strips what does not change meaning (headers, hunk offsets, whitespace) so
    duplicates can be found by hashing;
  - `apply_patch` applies a diff to an inline snapshot {path: text} with `git apply` in a scratch
    directory (only files are written; nothing is executed).
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from minicoder.tasks.schema import Task, materialize_repo, snapshot_files


def make_diff(path: str, old: str | None, new: str | None) -> str:
    """A git-style unified diff of one file; "" when nothing changed. None means absent."""
    if old == new:
        return ""
    a = (old or "").splitlines(keepends=True)
    b = (new or "").splitlines(keepends=True)
    out = [f"diff --git a/{path} b/{path}\n"]
    if old is None:
        out.append("new file mode 100644\n")
    elif new is None:
        out.append("deleted file mode 100644\n")
    out.append("--- /dev/null\n" if old is None else f"--- a/{path}\n")
    out.append("+++ /dev/null\n" if new is None else f"+++ b/{path}\n")
    for i, line in enumerate(difflib.unified_diff(a, b, n=3)):
        if i < 2:  # difflib's own ---/+++ header lines
            continue
        if line.startswith("@@"):
            out.append(line if line.endswith("\n") else line + "\n")
        elif line.endswith("\n"):
            out.append(line)
        else:  # the last line of a file without a trailing newline
            out.append(line + "\n\\ No newline at end of file\n")
    return "".join(out)


def diff_snapshots(old: dict[str, str], new: dict[str, str]) -> str:
    """The diff taking snapshot `old` to snapshot `new` (files sorted by path)."""
    return "".join(make_diff(p, old.get(p), new.get(p)) for p in sorted(set(old) | set(new)))


@dataclass
class FilePatch:
    """One file's part of a diff."""

    path: str  # the file's path after the change (before, for a deletion)
    text: str  # this file's part of the diff, headers included
    added: list[str] = field(default_factory=list)  # added lines, without the leading '+'
    removed: list[str] = field(default_factory=list)  # removed lines, without the leading '-'
    is_new: bool = False
    is_deleted: bool = False


_DIFF_GIT = re.compile(r"^diff --git a/(.*) b/(.*)$")


def parse_patch(text: str) -> list[FilePatch]:
    """Split a unified diff (git style, or plain ---/+++ pairs) into per-file pieces."""
    files: list[FilePatch] = []
    cur: list[str] = []
    lines = text.splitlines(keepends=True)

    def flush() -> None:
        if cur:
            files.append(_file_patch("".join(cur)))
            cur.clear()

    git_style = any(line.startswith("diff --git ") for line in lines)
    i = 0
    while i < len(lines):
        line = lines[i]
        starts = line.startswith("diff --git ") if git_style else (
            line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "))
        if starts:
            flush()
        cur.append(line)
        i += 1
    flush()
    return [f for f in files if f.path]


def _file_patch(text: str) -> FilePatch:
    old_path = new_path = ""
    added: list[str] = []
    removed: list[str] = []
    in_hunk = False
    for line in text.splitlines():
        if not in_hunk:
            m = _DIFF_GIT.match(line)
            if m:
                old_path, new_path = m.group(1), m.group(2)
            elif line.startswith("--- "):
                old_path = _strip_prefix(line[4:])
            elif line.startswith("+++ "):
                new_path = _strip_prefix(line[4:])
            elif line.startswith("@@"):
                in_hunk = True
            continue
        if line.startswith("@@"):
            continue
        if line.startswith("+"):
            added.append(line[1:])
        elif line.startswith("-"):
            removed.append(line[1:])
    is_new, is_deleted = old_path == "/dev/null", new_path == "/dev/null"
    path = old_path if is_deleted else new_path
    return FilePatch(path=path, text=text, added=added, removed=removed, is_new=is_new, is_deleted=is_deleted)


def _strip_prefix(p: str) -> str:
    p = p.split("\t")[0].strip()
    if p == "/dev/null":
        return p
    return p[2:] if p[:2] in ("a/", "b/") else p


def changed_files(patch: str) -> list[str]:
    return [f.path for f in parse_patch(patch)]


def patch_size(patch: str) -> tuple[int, int]:
    """(files changed, lines added + removed)."""
    fps = parse_patch(patch)
    return len(fps), sum(len(f.added) + len(f.removed) for f in fps)


def normalise_patch(patch: str) -> str:
    """What a diff changes, with headers, hunk offsets, context and whitespace removed.

    Two diffs that make the same edits to the same files normalise to the same text, wherever the
    hunks sit and however the lines are indented.
    """
    parts = []
    for f in sorted(parse_patch(patch), key=lambda f: f.path):
        rem = [" ".join(x.split()) for x in f.removed if x.strip()]
        add = [" ".join(x.split()) for x in f.added if x.strip()]
        parts.append(f.path + "\n" + "\n".join("-" + x for x in rem) + "\n" + "\n".join("+" + x for x in add))
    return "\n".join(parts)


def _git(args: list[str], cwd: str | os.PathLike, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True)


class PatchError(ValueError):
    """A diff does not apply to the snapshot it was meant for."""


def apply_patch(files: dict[str, str], patch: str) -> dict[str, str]:
    """The snapshot `files` with `patch` applied (by `git apply` on a scratch copy; nothing runs)."""
    if not patch.strip():
        return dict(files)
    with tempfile.TemporaryDirectory(prefix="minicoder-apply-") as tmp:
        root = Path(tmp)
        for rel, text in files.items():
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text, encoding="utf-8")
        proc = _git(["apply", "--whitespace=nowarn", "-"], cwd=root, stdin=patch.encode())
        if proc.returncode != 0:
            raise PatchError(proc.stderr.decode(errors="replace").strip())
        return snapshot_files(root)


def base_files(task: Task) -> dict[str, str]:
    """The task's repository at its base commit as {path: text} (inline snapshot or git archive)."""
    if task.environment.files is not None:
        return dict(task.environment.files)
    with tempfile.TemporaryDirectory(prefix="minicoder-base-") as tmp:
        materialize_repo(task, Path(tmp) / "repo")
        return snapshot_files(Path(tmp) / "repo")
