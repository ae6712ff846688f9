"""Workspaces for sandboxes: fresh copies of a task's base commit, and safe host-side access to them.

`materialize_repo` (gitdiff.py) builds a history-free git repository (git init + add +
commit, three processes). Evaluations of the same task need the same starting tree many times, so
the first one is kept as a template in a per-process cache and later ones are plain copies (a
small repository copies in about a millisecond). Templates live in a temp folder deleted at exit.

A workspace that untrusted code has written may hold symlinks to anywhere (`ln -s /etc/shadow x`),
fifos, devices or huge files, and the host reads it as root. `read_file`, `write_file`,
`list_files` and `snapshot` therefore walk every path component with O_NOFOLLOW from a directory
descriptor, accept regular files only (a symlink is reported as a link, never followed), cap sizes,
and never run git there; `diff_trees` turns two snapshots into a git-style patch (file modes and
symlinks included) that `git apply` reproduces on the base commit.
"""

from __future__ import annotations

import atexit
import difflib
import hashlib
import json
import os
import shutil
import stat
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from minicoder.gitdiff import materialize_repo
from minicoder.record import Task

_lock = threading.Lock()
_templates: dict[str, Path] = {}
_cache_dir: Path | None = None


def _key(task: Task) -> str:
    env = task.environment
    src = env.files if env.files is not None else {"repo_path": env.repo_path, "commit": task.base_commit}
    return hashlib.sha256(json.dumps(src, sort_keys=True).encode()).hexdigest()[:24]


def _cleanup() -> None:
    if _cache_dir is not None:
        shutil.rmtree(_cache_dir, ignore_errors=True)


def template_for(task: Task) -> Path:
    """The cached base-commit repository of `task` (built on first use; treat as read-only)."""
    global _cache_dir
    key = _key(task)
    with _lock:
        if key in _templates and _templates[key].exists():
            return _templates[key]
        if _cache_dir is None:
            _cache_dir = Path(tempfile.mkdtemp(prefix=f"minicoder-templates-{os.getpid()}-"))
            atexit.register(_cleanup)
        dest = _cache_dir / key
        if dest.exists():
            shutil.rmtree(dest)
        materialize_repo(task, dest)
        _templates[key] = dest
        return dest


def fill_workspace(task: Task, dest: Path) -> None:
    """Copy the task's base-commit repository into `dest` (an existing, empty folder)."""
    if any(dest.iterdir()):
        raise FileExistsError(f"workspace {dest} is not empty")
    shutil.copytree(template_for(task), dest, symlinks=True, dirs_exist_ok=True)


# --- safe host-side access to a workspace untrusted code has touched ------------------------------

# never part of a listing or a diff: git's own folder, bytecode, and the caches test and lint tools leave
SKIP_DIRS = {".git", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", ".hypothesis"}
MAX_FILES = 20000


class WorkspaceError(ValueError):
    """A path or file the host refuses to touch (escapes the workspace, symlink, not a file, too big)."""


def _parts(rel: str) -> list[str]:
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise WorkspaceError(f"invalid path {rel!r}")
    p = PurePosixPath(rel)
    if p.is_absolute():  # the sandbox's own spelling of a workspace path is accepted
        if p.parts[:2] != ("/", "workspace") or len(p.parts) < 3:
            raise WorkspaceError(f"{rel!r} is outside the workspace")
        p = PurePosixPath(*p.parts[2:])
    parts = [x for x in p.parts if x != "."]
    if not parts or ".." in parts:
        raise WorkspaceError(f"{rel!r} is outside the workspace")
    return parts


def _open_dir(ws: Path, parts: list[str], create: bool = False, owner: tuple[int, int] | None = None) -> int:
    """A descriptor of directory ws/parts..., never through a symlink (O_NOFOLLOW at every step)."""
    fd = os.open(ws, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o755, dir_fd=fd)
                if owner is not None:
                    os.chown(part, *owner, dir_fd=fd, follow_symlinks=False)
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except (NotADirectoryError, OSError) as e:
                if isinstance(e, FileNotFoundError):
                    raise
                raise WorkspaceError(f"{'/'.join(parts)}: {part!r} is not a directory (or is a symlink)") from None
            os.close(fd)
            fd = nxt
        return fd
    except BaseException:
        os.close(fd)
        raise


def read_bytes(ws: Path, rel: str, max_bytes: int = 4 * 2**20) -> bytes:
    """The bytes of regular file `rel` in `ws` (no symlink followed anywhere); WorkspaceError else."""
    parts = _parts(rel)
    try:
        dfd = _open_dir(ws, parts[:-1])
    except FileNotFoundError:
        raise WorkspaceError(f"no such file: {rel}") from None
    try:
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
    except FileNotFoundError:
        raise WorkspaceError(f"no such file: {rel}") from None
    except OSError as e:
        raise WorkspaceError(f"{rel}: cannot open ({e.strerror}; symlinks are not followed)") from None
    finally:
        os.close(dfd)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise WorkspaceError(f"{rel} is not a regular file")
    with os.fdopen(fd, "rb") as fh:
        if st.st_size > max_bytes:
            raise WorkspaceError(f"{rel} is {st.st_size} bytes, over the {max_bytes} byte cap")
        return fh.read(max_bytes + 1)[:max_bytes]


def write_bytes(ws: Path, rel: str, data: bytes, owner: tuple[int, int] | None = None,
                max_bytes: int = 64 * 2**20) -> None:
    """Write regular file `rel` (parents created; an existing symlink or non-file there is refused)."""
    if len(data) > max_bytes:
        raise WorkspaceError(f"{rel}: {len(data)} bytes is over the {max_bytes} byte cap")
    parts = _parts(rel)
    dfd = _open_dir(ws, parts[:-1], create=True, owner=owner)
    try:
        try:
            fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644, dir_fd=dfd)
        except OSError as e:
            raise WorkspaceError(f"{rel}: cannot write ({e.strerror}; symlinks are not followed)") from None
    finally:
        os.close(dfd)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise WorkspaceError(f"{rel} is not a regular file")
    with os.fdopen(fd, "wb") as fh:
        fh.truncate(0)
        fh.write(data)
        if owner is not None:
            os.fchown(fh.fileno(), *owner)


@dataclass(frozen=True)
class Entry:
    """One file of a snapshot: its bytes (a symlink: its target) and git mode (100644/100755/120000)."""

    data: bytes
    mode: str


def snapshot(ws: Path, max_bytes: int = 4 * 2**20, skip_dirs: set[str] = SKIP_DIRS,
             with_data: bool = True) -> dict[str, Entry]:
    """{relative path: Entry} of the regular files and symlinks under `ws`, symlinks never followed;
    .git / __pycache__ / *.pyc are left out, and so are fifos, devices and (`with_data`) files over
    `max_bytes`. `with_data=False`: every file, with empty data (a listing)."""
    out: dict[str, Entry] = {}
    for dirpath, dirnames, filenames, dfd in os.fwalk(ws, follow_symlinks=False):
        links = [d for d in dirnames if stat.S_ISLNK(os.stat(d, dir_fd=dfd, follow_symlinks=False).st_mode)]
        dirnames[:] = sorted(d for d in dirnames if d not in skip_dirs and d not in links)
        rel_dir = os.path.relpath(dirpath, ws)
        for name in sorted(filenames + links):
            if name.endswith(".pyc"):
                continue
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = Entry(os.fsencode(os.readlink(name, dir_fd=dfd)), "120000")
            elif stat.S_ISREG(st.st_mode) and not with_data:
                out[rel] = Entry(b"", "100755" if st.st_mode & 0o100 else "100644")
            elif stat.S_ISREG(st.st_mode) and st.st_size <= max_bytes:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dfd)
                with os.fdopen(fd, "rb") as fh:
                    out[rel] = Entry(fh.read(max_bytes + 1), "100755" if st.st_mode & 0o100 else "100644")
            if len(out) > MAX_FILES:
                raise WorkspaceError(f"more than {MAX_FILES} files in the workspace")
    return out


def _text(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return None if "\x00" in text else text


def diff_trees(old: dict[str, Entry], new: dict[str, Entry]) -> tuple[str, list[str]]:
    """(a git-style unified diff turning `old` into `new`, the paths left out because they are binary).

    Modes are written like git does (new/deleted file mode, old/new mode), a symlink's content is its
    target without a trailing newline, so `git apply` on `old`'s tree reproduces `new`."""
    chunks, skipped = [], []
    for path in sorted(set(old) | set(new)):
        a, b = old.get(path), new.get(path)
        if a == b:
            continue
        if a is not None and b is not None and (a.mode == "120000") != (b.mode == "120000"):
            d1, s1 = diff_trees({path: a}, {})  # a file became a link or the other way: delete, create
            d2, s2 = diff_trees({}, {path: b})
            chunks += [d1, d2]
            skipped += s1 + s2
            continue
        ta = "" if a is None else _text(a.data)
        tb = "" if b is None else _text(b.data)
        if ta is None or tb is None:
            skipped.append(path)
            continue
        head = [f"diff --git a/{path} b/{path}\n"]
        if a is None:
            head.append(f"new file mode {b.mode}\n")
        elif b is None:
            head.append(f"deleted file mode {a.mode}\n")
        elif a.mode != b.mode:
            head += [f"old mode {a.mode}\n", f"new mode {b.mode}\n"]
        la = ta.splitlines(keepends=True)
        lb = tb.splitlines(keepends=True)
        for lines in (la, lb):
            if lines and not lines[-1].endswith("\n"):
                lines[-1] += "\n\\ No newline at end of file\n"
        body = list(difflib.unified_diff(la, lb, "/dev/null" if a is None else f"a/{path}",
                                         "/dev/null" if b is None else f"b/{path}", n=3))
        if body or len(head) > 1:
            chunks.append("".join(head + body))
    return "".join(chunks), skipped
