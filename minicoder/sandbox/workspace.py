"""Fresh workspaces for sandboxes: the task's repository at its base commit, fast to hand out.

`materialize_repo` (tasks/schema.py) builds a history-free git repository (git init + add +
commit, three processes). Evaluations of the same task need the same starting tree many times, so
the first one is kept as a template in a per-process cache and later ones are plain copies (a
small repository copies in about a millisecond). Templates live in a temp folder deleted at exit.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path

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
