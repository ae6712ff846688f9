"""Quality filters over a set of tasks, no execution: every rejection has a reason, and is counted.

Filters, in order (a task is rejected by the first that fires):
  - `oversized`: the gold patch changes more than `max_files` files or `max_lines` lines;
  - `short_statement`: the problem statement is too short to be a task (< `min_statement_chars`);
  - `leak`: the statement contains an added line of the gold patch (whitespace-normalised, lines
    of at least `min_leak_chars` characters that are not also removed lines, so moved code and
    `return x` do not count) - the statement would hand over the fix;
  - `tests_untouched`: none of the hidden tests names the changed code: the tests (test_patch
    plus the files holding FAIL_TO_PASS tests) mention neither a changed module (its import path
    or file stem) nor a function/class defined in the changed code. This is a static proxy: a task
    whose validation showed by running that its tests exercise the change (`checks.exercised`:
    each FAIL_TO_PASS test kept fails under at least one stub of the changed functions) passes
    it, as do tests that reach the code through a package's public names (`click.command()`
    exercises `click.core`, which they never name);
  - `duplicate`: the normalised gold patch (headers, offsets, context and whitespace dropped) was
    already kept for the same code base, so the same edit reached twice is one task. "Same code
    base" is the repository, or for synthesised tasks the mutated subject (`metadata["subject"]`:
    one HumanEval problem, one package) - the same one-line fix in two different problems is two
    different tasks;
  - `near_duplicate`: the Jaccard similarity of the token 3-gram sets of the normalised patches of
    two tasks of the same code base and files is at least `near_dup_threshold` (the earlier task
    is kept). Tasks are compared only within a (repo, files) bucket, so this stays cheap.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from minicoder.gitdiff import normalise_patch, parse_patch, patch_size
from minicoder.record import Task

REASONS = ("oversized", "short_statement", "leak", "tests_untouched", "duplicate", "near_duplicate")


@dataclass
class QAConfig:
    max_files: int = 10
    max_lines: int = 200
    min_statement_chars: int = 40
    min_leak_chars: int = 12
    near_dup_threshold: float = 0.9


@dataclass
class QAReport:
    kept: list[Task] = field(default_factory=list)
    rejected: list[tuple[str, str, str]] = field(default_factory=list)  # (instance id, reason, detail)
    counts: Counter = field(default_factory=Counter)  # reason -> count

    def to_dict(self) -> dict:
        return {"kept": len(self.kept), "rejected": len(self.rejected), "reasons": dict(self.counts),
                "rejections": [{"instance_id": i, "reason": r, "detail": d} for i, r, d in self.rejected]}


def _norm_ws(s: str) -> str:
    return " ".join(s.split())


def leaked_lines(task: Task, min_chars: int = 12) -> list[str]:
    """Added lines of the gold patch that appear verbatim (whitespace-normalised) in the statement."""
    statement = _norm_ws(task.problem_statement)
    hits = []
    for fp in parse_patch(task.patch):
        removed = {_norm_ws(x) for x in fp.removed}
        for line in fp.added:
            n = _norm_ws(line)
            if len(n) >= min_chars and n not in removed and n in statement:
                hits.append(n)
    return hits


_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def changed_names(task: Task) -> tuple[set[str], set[str]]:
    """(module names, defined names) of the code the gold patch changes.

    Module names: each changed file's dotted import path and its stem. Defined names: functions and
    classes whose `def`/`class` line is in, or encloses, a hunk (from the hunk headers' context and
    the changed lines themselves).
    """
    modules: set[str] = set()
    names: set[str] = set()
    files = task.environment.files or {}
    for fp in parse_patch(task.patch):
        p = PurePosixPath(fp.path)
        if p.suffix == ".py":
            parts = list(p.with_suffix("").parts)
            if parts and parts[-1] == "__init__":
                parts = parts[:-1]
            if parts and parts[0] in ("src", "lib"):
                parts = parts[1:]
            if parts:
                modules.add(".".join(parts))
                modules.add(parts[-1])
        for line in fp.text.splitlines():
            m = re.match(r"^@@[^@]*@@\s*(?:async\s+)?(?:def|class)\s+(\w+)", line)
            if m:
                names.add(m.group(1))
            m = re.match(r"^[+\- ]\s*(?:async\s+)?(?:def|class)\s+(\w+)", line)
            if m:
                names.add(m.group(1))
        src = files.get(fp.path)
        if src and p.suffix == ".py":
            names |= _enclosing_defs(src, fp)
        elif src and task.language != "python":  # JavaScript, Go, Rust: tree-sitter finds the functions
            from minicoder.tasks.mutate_ts import enclosing_functions

            removed = set(fp.removed)
            names |= enclosing_functions(task.language, src, {i + 1 for i, ln in enumerate(src.splitlines())
                                                               if ln in removed})
            modules.add(p.stem)
    return modules, names


def _enclosing_defs(src: str, fp) -> set[str]:
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return set()
    touched = {i + 1 for i, line in enumerate(src.splitlines()) if line in set(fp.removed)}
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and any(
                node.lineno <= ln <= (node.end_lineno or node.lineno) for ln in touched):
            out.add(node.name)
    return out


def test_text(task: Task) -> str:
    """The text of the hidden tests: the test_patch's added/context lines and FAIL_TO_PASS files."""
    parts = []
    for fp in parse_patch(task.test_patch):
        parts += fp.added
        parts += [ln[1:] for ln in fp.text.splitlines() if ln.startswith(" ")]
    files = task.environment.files or {}
    for t in task.FAIL_TO_PASS:
        path = t.split("::", 1)[0]
        if path in files:
            parts.append(files[path])
    return "\n".join(parts)


def touches_change(task: Task) -> bool:
    if task.language != "python":  # JavaScript, Go, Rust: imports and functions found with tree-sitter
        from minicoder.tasks.mutate_ts import touches_change as lang_touches_change

        return lang_touches_change(task)
    exercised = str(task.metadata.get("validation", {}).get("checks", {}).get("exercised", ""))
    if exercised == "yes" or exercised.endswith("dropped"):  # shown by execution (validate.py, check 5)
        return True
    modules, names = changed_names(task)
    text = test_text(task)
    if not text.strip():
        return False
    tokens = set(_IDENT.findall(text))
    if names & tokens:
        return True
    for mod in modules:
        if mod in tokens or re.search(rf"(?:import|from)\s+[\w.]*\b{re.escape(mod)}\b", text):
            return True
    return False


def _shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    toks = re.findall(r"\w+|[^\w\s]", text)
    if len(toks) < n:
        return {tuple(toks)}
    return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def run_qa(tasks: list[Task], config: QAConfig | None = None) -> QAReport:
    """Filter `tasks` (kept in order); see the module docstring for the filters."""
    cfg = config or QAConfig()
    rep = QAReport()
    seen_exact: dict[str, str] = {}
    buckets: dict[tuple[str, tuple[str, ...]], list[tuple[str, set]]] = {}  # (code base, files) -> kept

    def reject(t: Task, reason: str, detail: str) -> None:
        rep.rejected.append((t.instance_id, reason, detail))
        rep.counts[reason] += 1

    for t in tasks:
        n_files, n_lines = patch_size(t.patch)
        if n_files > cfg.max_files or n_lines > cfg.max_lines:
            reject(t, "oversized", f"{n_files} files, {n_lines} lines changed")
            continue
        if len(t.problem_statement.strip()) < cfg.min_statement_chars:
            reject(t, "short_statement", f"{len(t.problem_statement.strip())} characters")
            continue
        leaks = leaked_lines(t, cfg.min_leak_chars)
        if leaks:
            reject(t, "leak", f"statement contains the fix line {leaks[0]!r}")
            continue
        if not touches_change(t):
            reject(t, "tests_untouched", "no hidden test names a changed module, function or class")
            continue
        norm = normalise_patch(t.patch)
        base_id = f"{t.repo}::{t.metadata.get('subject', '')}"
        h = hashlib.sha256((base_id + "\n" + norm).encode()).hexdigest()
        if h in seen_exact:
            reject(t, "duplicate", f"same edit as {seen_exact[h]}")
            continue
        key = (base_id, tuple(sorted(f.path for f in parse_patch(t.patch))))
        sh = _shingles(norm)
        twin = next((iid for iid, other in buckets.get(key, []) if jaccard(sh, other) >= cfg.near_dup_threshold), None)
        if twin is not None:
            reject(t, "near_duplicate", f"near duplicate of {twin}")
            continue
        seen_exact[h] = t.instance_id
        buckets.setdefault(key, []).append((t.instance_id, sh))
        rep.kept.append(t)
    return rep
