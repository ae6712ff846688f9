"""Host-side access to a session's workspace (no sandbox needed): safe reads and writes, snapshots, diffs.

The diff a session hands to grading is computed on the host from two snapshots; `git apply` of it on
the base tree must reproduce the agent's tree exactly (text, deletions, no final newline, modes,
symlinks). A workspace written by untrusted code may hold symlinks to host files: every host-side
access must refuse to follow them.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from minicoder.sandbox.workspace import (
    Entry,
    WorkspaceError,
    diff_trees,
    read_bytes,
    snapshot,
    write_bytes,
)


def _git(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "HOME": "/nonexistent",
           "PATH": os.environ["PATH"], "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, env=env)


def _repo(path: Path, files: dict[str, str]) -> Path:
    path.mkdir()
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    assert _git(path, "init", "-q").returncode == 0
    _git(path, "add", "-A")
    assert _git(path, "commit", "-qm", "base").returncode == 0
    return path


BASE = {"pkg/a.py": "x = 1\ny = 2\n", "pkg/b.py": "gone = True\n", "run.sh": "echo hi\n", "notes.txt": "no newline"}


def test_diff_trees_round_trips_through_git_apply(tmp_path):
    base = _repo(tmp_path / "base", BASE)
    work = tmp_path / "work"
    subprocess.run(["cp", "-a", str(base), str(work)], check=True)
    (work / "pkg/a.py").write_text("x = 1\ny = 3\n")  # edit
    (work / "pkg/b.py").unlink()  # delete
    (work / "pkg/new.py").write_text("def f():\n    return 42")  # create, no final newline
    os.chmod(work / "run.sh", 0o755)  # mode change only
    (work / "notes.txt").write_text("no newline, edited")
    os.symlink("pkg/a.py", work / "link")  # a symlink (mode 120000)
    (work / "blob.bin").write_bytes(b"\x00\xff\x00")  # binary: left out, reported
    (work / "__pycache__").mkdir()
    (work / "__pycache__/x.pyc").write_bytes(b"junk")  # bytecode: never part of a diff
    (work / ".pytest_cache").mkdir()
    (work / ".pytest_cache/README.md").write_text("cache\n")

    old, new = snapshot(base), snapshot(work)
    assert ".git/HEAD" not in old and "__pycache__/x.pyc" not in new and ".pytest_cache/README.md" not in new
    assert new["link"] == Entry(b"pkg/a.py", "120000") and new["run.sh"].mode == "100755"
    text, skipped = diff_trees(old, new)
    assert skipped == ["blob.bin"]
    assert "new file mode 120000" in text and "old mode 100644\nnew mode 100755" in text

    target = tmp_path / "target"
    subprocess.run(["cp", "-a", str(base), str(target)], check=True)
    (tmp_path / "p.diff").write_text(text)
    proc = _git(target, "apply", str(tmp_path / "p.diff"))
    assert proc.returncode == 0, proc.stderr
    got = snapshot(target)
    want = {k: v for k, v in new.items() if k != "blob.bin"}
    assert got == want
    assert diff_trees(old, old) == ("", [])


def test_file_becoming_symlink_is_a_delete_and_a_create(tmp_path):
    old = {"a": Entry(b"text\n", "100644")}
    new = {"a": Entry(b"b", "120000")}
    text, _ = diff_trees(old, new)
    assert text.index("deleted file mode 100644") < text.index("new file mode 120000")


def test_reads_and_writes_never_follow_symlinks(tmp_path):
    ws = tmp_path / "ws"
    (ws / "d").mkdir(parents=True)
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")
    (ws / "d/ok.txt").write_text("fine")
    os.symlink(secret, ws / "leak")  # a file link to a host file
    os.symlink(tmp_path, ws / "dirlink")  # a directory link out of the workspace
    assert read_bytes(ws, "d/ok.txt") == b"fine"
    assert read_bytes(ws, "/workspace/d/ok.txt") == b"fine"  # the sandbox's absolute spelling
    for bad in ("leak", "dirlink/secret.txt", "../secret.txt", "/etc/passwd", "d/../../secret.txt", "", "a\x00b"):
        with pytest.raises(WorkspaceError):
            read_bytes(ws, bad)
    with pytest.raises(WorkspaceError):
        read_bytes(ws, "d")  # a directory is not a file
    with pytest.raises(WorkspaceError, match="over"):
        read_bytes(ws, "d/ok.txt", max_bytes=2)
    for bad in ("leak", "dirlink/x.txt", "../x.txt"):
        with pytest.raises(WorkspaceError):
            write_bytes(ws, bad, b"pwned")
    assert secret.read_text() == "host secret" and not (tmp_path / "x.txt").exists()
    write_bytes(ws, "new/deep/f.txt", b"hello")
    assert (ws / "new/deep/f.txt").read_bytes() == b"hello"
    write_bytes(ws, "d/ok.txt", b"shorter")  # replaced, truncated
    assert (ws / "d/ok.txt").read_bytes() == b"shorter"
    listing = snapshot(ws, with_data=False)
    assert set(listing) == {"d/ok.txt", "leak", "dirlink", "new/deep/f.txt"}
    assert listing["dirlink"] == Entry(os.fsencode(str(tmp_path)), "120000")  # listed as a link, never entered
