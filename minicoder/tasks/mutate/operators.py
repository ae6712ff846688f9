"""The mutation operators: bugs found on the AST and written back as minimal text edits.

See the package docstring (`minicoder.tasks.mutate`) for the operators and the checks on each edit.
"""

from __future__ import annotations

import ast
import copy
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

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
