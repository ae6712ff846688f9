"""Removing a sandbox root never touches the folder it lives in (a shared /tmp must stay 1777)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from minicoder.sandbox.base import remove_tree


def test_remove_tree_handles_read_only_dirs_and_leaves_the_parent_alone(tmp_path: Path):
    base = tmp_path / "shared"
    base.mkdir()
    os.chmod(base, 0o1777)
    root = base / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_text("x")
    os.chmod(root / "a" / "b", 0o500)
    os.chmod(root / "a", 0o500)
    remove_tree(root)
    assert not root.exists()
    remove_tree(base / "already-gone")  # a concurrent reaper got there first: no error
    assert stat.S_IMODE(os.stat(base).st_mode) == 0o1777
