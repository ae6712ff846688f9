"""Host-side patch handling: apply a candidate patch, then put the hidden tests back beyond its reach.

Everything here runs on the host in a workspace that no untrusted code has touched yet (the order
in `reward.py` guarantees it), so using the host's `git` on it is safe. `git apply` refuses paths
outside the tree, inside `.git`, and writes "beyond a symbolic link"; our own restores check every
path component for symlinks too (a patch can create a symlink `tests -> /etc`, and the restore runs
as the host user).

The defence against reward hacking (`protect`): after the candidate patch is applied, every file
the verdict depends on is restored to its base-commit content, then the hidden `test_patch` is
applied fresh:
  - the files of the test_patch and the files holding any FAIL_TO_PASS / PASS_TO_PASS test;
  - pytest's configuration and plugin hooks anywhere in the tree: `conftest.py`, `pytest.ini`,
    `.pytest.ini`, `tox.ini`, `setup.cfg`, `pyproject.toml` (a legitimate fix does not need to
    change how tests are collected; dependencies are fixed by the environment anyway);
  - start-up hooks: `sitecustomize.py`, `usercustomize.py`, `*.pth`;
  - bytecode (`__pycache__/`, `*.pyc`): an "unchecked-hash" .pyc is used without looking at its
    source, so a patch could ship a compiled replacement of a hidden test;
  - top-level modules that would shadow the standard library or the test runner's own packages
    (`pytest.py`, `_pytest/`, `pluggy/`, `xml/`, ...), since `python -m pytest` puts the workspace
    first on `sys.path`.
Restoring (rather than rejecting the patch) keeps the honest part of a patch that also touched
one of these files; the changes that were dropped are listed in the result.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path, PurePosixPath

from minicoder.gitdiff import patch_files, run_git
from minicoder.sandbox.base import PatchResult

PROTECTED_NAMES = {"conftest.py", "pytest.ini", ".pytest.ini", "tox.ini", "setup.cfg", "pyproject.toml",
                   "sitecustomize.py", "usercustomize.py"}
# top-level names of the test runner's own packages, besides the standard library
RUNNER_PACKAGES = {"pytest", "_pytest", "pluggy", "iniconfig", "packaging", "py", "exceptiongroup", "tomli"}

def decode_patch(patch: str | bytes | None) -> tuple[str | None, str]:
    """(text, "") for a usable patch text, or (None, why) when it cannot be one."""
    if patch is None:
        return "", ""
    if isinstance(patch, bytes):
        try:
            patch = patch.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, f"patch is not valid UTF-8 (byte 0x{patch[e.start]:02x} at offset {e.start})"
    if not isinstance(patch, str):
        return None, f"patch must be text, got {type(patch).__name__}"
    try:
        patch.encode("utf-8")
    except UnicodeEncodeError as e:
        return None, f"patch is not valid UTF-8 (unpaired surrogate at offset {e.start})"
    if "\x00" in patch:
        return None, "patch contains NUL bytes"
    if patch.strip() and not ("diff --git" in patch or ("--- " in patch and "+++ " in patch)):
        return None, "patch is not a unified diff (no '--- a/...' / '+++ b/...' header)"
    return patch, ""


def changed_paths(ws: Path) -> list[str]:
    """Paths that differ from the base commit (modified, added, deleted; untracked included)."""
    proc = run_git(ws, "status", "--porcelain=v1", "-z", "--no-renames", "--untracked-files=all", "--ignored=no")
    if proc.returncode != 0:
        raise RuntimeError(f"git status failed: {proc.stderr.decode(errors='replace').strip()}")
    out = []
    for entry in proc.stdout.decode("utf-8", errors="surrogateescape").split("\0"):
        if len(entry) > 3:
            out.append(entry[3:])
    return sorted(set(out))


def apply_patch(ws: Path, patch: str | bytes | None) -> PatchResult:
    """Apply a unified diff with `git apply` (then with `--recount` for hand-edited hunk counts)."""
    text, why = decode_patch(patch)
    if text is None:
        return PatchResult(False, why)
    if not text.strip():
        return PatchResult(True, "empty patch")
    if not text.endswith("\n"):
        text += "\n"
    with tempfile.NamedTemporaryFile("wb", suffix=".diff", delete=False) as fh:
        fh.write(text.encode("utf-8"))
        path = fh.name
    try:
        errors = []
        for extra in ([], ["--recount"]):
            proc = run_git(ws, "apply", "--whitespace=nowarn", *extra, path)
            if proc.returncode == 0:
                return PatchResult(True, "applied" + (" (with --recount)" if extra else ""), changed_paths(ws))
            errors.append(proc.stderr.decode("utf-8", errors="replace").strip())
        msg = errors[0].splitlines()
        return PatchResult(False, "git apply failed: " + " | ".join(msg[:4]))
    finally:
        os.unlink(path)


def _safe_parent(ws: Path, rel: str, create: bool) -> Path | None:
    """The parent directory of `rel` inside `ws`, replacing any symlink or file met on the way."""
    parts = PurePosixPath(rel).parts
    if not parts or any(p in ("..", "") for p in parts) or PurePosixPath(rel).is_absolute():
        raise ValueError(f"unsafe path {rel!r}")
    cur = ws
    for part in parts[:-1]:
        cur = cur / part
        if cur.is_symlink() or (cur.exists() and not cur.is_dir()):
            cur.unlink()
        if not cur.exists():
            if not create:
                return None
            cur.mkdir()
    return cur


def restore_path(ws: Path, rel: str) -> None:
    """Put `rel` back to its content at the base commit (HEAD), or delete it if HEAD lacks it."""
    kind = run_git(ws, "cat-file", "-t", f"HEAD:{rel}").stdout.strip()
    if kind == b"tree":  # a directory at base (the candidate may have put a symlink or file there)
        parent = _safe_parent(ws, rel, create=True)
        target = parent / PurePosixPath(rel).name
        if target.is_symlink() or target.is_file():
            target.unlink()
        listing = run_git(ws, "ls-tree", "-r", "-z", "--name-only", "HEAD", "--", rel).stdout
        for sub in filter(None, listing.decode("utf-8", errors="surrogateescape").split("\0")):
            restore_path(ws, sub)
        return
    proc = run_git(ws, "cat-file", "-p", f"HEAD:{rel}")
    base = proc.stdout if proc.returncode == 0 else None
    parent = _safe_parent(ws, rel, create=base is not None)
    if parent is None:
        return
    target = parent / PurePosixPath(rel).name
    if target.is_symlink() or target.is_file():
        target.unlink()
    elif target.is_dir():
        import shutil

        shutil.rmtree(target)
    if base is not None:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(base)


def _shadow_names() -> set[str]:
    return set(sys.stdlib_module_names) | RUNNER_PACKAGES


def in_base(ws: Path, rel: str) -> bool:
    return run_git(ws, "cat-file", "-e", f"HEAD:{rel}").returncode == 0


def is_protected(rel: str, top_in_base: bool = True) -> bool:
    """Whether a candidate's change to `rel` is dropped. `top_in_base`: its top-level entry exists
    at the base commit (a repository's own `queue/` package may be fixed; a new one may not shadow)."""
    p = PurePosixPath(rel)
    if p.name in PROTECTED_NAMES or p.suffix in (".pth", ".pyc") or "__pycache__" in p.parts:
        return True
    top = p.parts[0]
    if top.endswith((".dist-info", ".egg-info")):
        return True  # entry-point plugins (pytest11) are found through distribution metadata
    mod = top[:-3] if (len(p.parts) == 1 and top.endswith(".py")) else top
    return not top_in_base and mod in _shadow_names()


def protect(ws: Path, changed: list[str], test_patch: str, test_ids: list[str]) -> list[str]:
    """Undo the candidate's changes to protected files, then apply `test_patch` fresh.

    `changed`: paths the candidate patch touched (from `changed_paths`). Returns the paths whose
    candidate changes were dropped. Raises RuntimeError when the test_patch does not apply (a
    broken task, not a candidate's fault).
    """
    test_files = set(patch_files(test_patch)) if test_patch.strip() else set()
    test_files |= {tid.split("::", 1)[0] for tid in test_ids}
    dropped = []
    for rel in changed:
        top_in_base = in_base(ws, PurePosixPath(rel).parts[0])
        if rel in test_files or is_protected(rel, top_in_base) or any(
                rel.startswith(t + "/") or t.startswith(rel + "/") for t in test_files):
            restore_path(ws, rel)
            dropped.append(rel)
    # test files the candidate did not touch are at their base content already (`changed` comes
    # from git status against the base commit), so nothing else needs resetting
    # bytecode anywhere (a patch can carry binary .pyc files)
    for dirpath, dirnames, filenames in os.walk(ws):
        if ".git" in dirnames:
            dirnames.remove(".git")
        for name in filenames:
            if name.endswith(".pyc"):
                os.unlink(os.path.join(dirpath, name))
    if test_patch.strip():
        with tempfile.NamedTemporaryFile("wb", suffix=".diff", delete=False) as fh:
            fh.write(test_patch.encode("utf-8") + (b"" if test_patch.endswith("\n") else b"\n"))
            path = fh.name
        try:
            proc = run_git(ws, "apply", "--whitespace=nowarn", path)
        finally:
            os.unlink(path)
        if proc.returncode != 0:
            raise RuntimeError("the task's test_patch does not apply to its base commit: "
                               + proc.stderr.decode(errors="replace").strip()[:300])
    return dropped
