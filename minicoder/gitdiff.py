"""Git and unified diffs: the one place minicoder runs `git` and writes, reads or applies a diff.

Every stage speaks in diffs (a task's gold `patch` and hidden `test_patch`, a candidate's patch, the
trivial patches the validator tries, an agent session's changes) and in fresh git workspaces, so
they live here, below both the sandbox and task synthesis:

  - `git(cwd, *args)` / `run_git(cwd, *args)`: git with the safe settings ALWAYS on -- no system or
    global config, no hooks, no fsmonitor, `safe.directory=*` (workspaces are owned by sandbox uids),
    a fixed identity and dates (so a workspace's base commit is reproducible), C locale;
  - `file_diff(path, old, new)`: one file's git-style diff (`diff --git a/p b/p`), with
    "\\ No newline at end of file" markers, additions (`old=None`) and deletions (`new=None`), which
    `git apply` and `patch -p1` both accept; `make_diff(old_files, new_files)` for several files,
    `diff_snapshots(old, new)` between two whole snapshots;
  - `parse_patch` (per-file pieces with their added / removed lines), `patch_files` (paths a diff
    touches, renames included), `patch_size`, `normalise_patch` (for duplicate detection);
  - `apply_to_snapshot(files, patch)`: a diff applied to an inline snapshot {path: text} by
    `git apply` in a scratch folder (only files are written; nothing runs);
  - workspaces: `materialize_repo(task, dest)` (a fresh single-commit repository at the task's base
    commit: no remotes, no future history), `snapshot_files`, `base_files(task)`.

Applying a *candidate's* patch to a sandbox workspace, and putting the hidden tests back beyond its
reach, is the sandbox's job (`minicoder.sandbox.patching`), built on `run_git` from here.
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from minicoder.record import Task, TaskFormatError

# --- git with safe settings ----------------------------------------------------------------------

_SAFE_CONFIG = ("-c", "safe.directory=*", "-c", "core.hooksPath=/dev/null", "-c", "core.fsmonitor=false",
                "-c", "core.quotepath=off")
_IDENTITY = {
    "GIT_AUTHOR_NAME": "minicoder", "GIT_AUTHOR_EMAIL": "minicoder@localhost",
    "GIT_COMMITTER_NAME": "minicoder", "GIT_COMMITTER_EMAIL": "minicoder@localhost",
    "GIT_AUTHOR_DATE": "2000-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2000-01-01T00:00:00Z",
}


class GitError(RuntimeError):
    """A git command failed; the message names the command, the folder and git's own words."""


def git_env() -> dict[str, str]:
    """The environment every git call gets: nothing from the user's or the system's git config."""
    return {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "HOME": "/nonexistent",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", **_IDENTITY}


def git_argv(*args: str) -> list[str]:
    """The command line of `git ARGS` with the safe settings (for callers that stream, e.g. Popen)."""
    return ["git", *_SAFE_CONFIG, *args]


def run_git(cwd: str | os.PathLike, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """`git ARGS` in `cwd` with the safe settings; the caller reads returncode / stdout / stderr."""
    return subprocess.run(git_argv(*args), cwd=cwd, input=stdin, capture_output=True, env=git_env())


def git(cwd: str | os.PathLike, *args: str, stdin: bytes | None = None) -> bytes:
    """`git ARGS` in `cwd` with the safe settings; its stdout, or GitError when it fails."""
    proc = run_git(cwd, *args, stdin=stdin)
    if proc.returncode != 0:
        raise GitError(f"git {' '.join(args)} failed in {cwd}: {proc.stderr.decode(errors='replace').strip()}")
    return proc.stdout


# --- writing diffs --------------------------------------------------------------------------------

def file_diff(path: str, old: str | None, new: str | None) -> str:
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


def make_diff(old: dict[str, str], new: dict[str, str | None]) -> str:
    """The diff that changes the files named in `new` from `old` (a value None deletes the file;
    a path not in `old` is created). Files not named in `new` are left alone."""
    return "".join(file_diff(p, old.get(p), new[p]) for p in sorted(new))


def diff_snapshots(old: dict[str, str], new: dict[str, str]) -> str:
    """The diff taking snapshot `old` to snapshot `new` (a file missing from `new` is deleted)."""
    return "".join(file_diff(p, old.get(p), new.get(p)) for p in sorted(set(old) | set(new)))


# --- reading diffs --------------------------------------------------------------------------------

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
    for i, line in enumerate(lines):
        starts = line.startswith("diff --git ") if git_style else (
            line.startswith("--- ") and i + 1 < len(lines) and lines[i + 1].startswith("+++ "))
        if starts:
            flush()
        cur.append(line)
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


def patch_files(patch: str) -> list[str]:
    """Repo-relative paths a unified diff touches (both sides of renames and copies), sorted."""
    out: set[str] = set()
    for line in patch.splitlines():
        if line.startswith(("--- ", "+++ ")):
            p = line[4:].split("\t", 1)[0].strip()
            if p != "/dev/null" and p[:2] in ("a/", "b/"):
                out.add(p[2:])
        elif line.startswith(("rename from ", "rename to ", "copy from ", "copy to ")):
            out.add(line.split(" ", 2)[2].strip())
    return sorted(out)


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


# --- applying diffs to snapshots ----------------------------------------------------------------

class PatchError(ValueError):
    """A diff does not apply to the snapshot it was meant for."""


def apply_to_snapshot(files: dict[str, str], patch: str) -> dict[str, str]:
    """The snapshot `files` with `patch` applied (by `git apply` on a scratch copy; nothing runs)."""
    if not patch.strip():
        return dict(files)
    with tempfile.TemporaryDirectory(prefix="minicoder-apply-") as tmp:
        root = Path(tmp)
        for rel, text in files.items():
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text, encoding="utf-8")
        proc = run_git(root, "apply", "--whitespace=nowarn", "-", stdin=patch.encode())
        if proc.returncode != 0:
            raise PatchError(proc.stderr.decode(errors="replace").strip())
        return snapshot_files(root)


# --- workspaces ------------------------------------------------------------------------------------

def materialize_repo(task: Task, dest: str | os.PathLike) -> Path:
    """Write the task's repository at its base commit into `dest` (created; must not exist or be empty).

    The result is a fresh git repository with one commit ("base") and no remotes: neither the fix
    nor any later history is reachable from it. Neither `patch` nor `test_patch` is applied.
    """
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} is not empty")
    dest.mkdir(parents=True, exist_ok=True)
    env = task.environment
    if env.files is not None:
        for rel, text in env.files.items():
            p = (dest / rel).resolve()
            if not str(p).startswith(str(dest.resolve()) + os.sep):
                raise TaskFormatError(f"{task.instance_id}: environment.files path escapes the repository: {rel!r}")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text, encoding="utf-8")
    else:
        src = env.repo_path
        assert src is not None
        with tempfile.TemporaryDirectory(prefix="minicoder-src-") as tmp:
            src_dir = Path(src)
            if not src_dir.exists():  # a URL: clone it (bare, no checkout) first
                git(tmp, "clone", "--quiet", "--bare", src, tmp + "/repo.git")
                src_dir = Path(tmp) / "repo.git"
            archive = git(src_dir, "archive", "--format=tar", task.base_commit)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    git(dest, "init", "--quiet", "--initial-branch=main")
    git(dest, "add", "-A")
    git(dest, "commit", "--quiet", "--allow-empty", "--no-verify", "-m", "base")
    return dest


def snapshot_files(repo_dir: str | os.PathLike, exclude: Iterable[str] = (".git",)) -> dict[str, str]:
    """The text files of a directory as {relative path: text} (for `Environment(files=...)`)."""
    repo_dir = Path(repo_dir)
    skip = set(exclude)
    out: dict[str, str] = {}
    for p in sorted(repo_dir.rglob("*")):
        rel = p.relative_to(repo_dir)
        if p.is_dir() or any(part in skip or part == "__pycache__" for part in rel.parts):
            continue
        try:
            out[rel.as_posix()] = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary files are not part of inline snapshots
    return out


def base_files(task: Task) -> dict[str, str]:
    """The task's repository at its base commit as {path: text} (inline snapshot or git archive)."""
    if task.environment.files is not None:
        return dict(task.environment.files)
    with tempfile.TemporaryDirectory(prefix="minicoder-base-") as tmp:
        materialize_repo(task, Path(tmp) / "repo")
        return snapshot_files(Path(tmp) / "repo")
