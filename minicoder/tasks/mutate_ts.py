"""Bug injection for JavaScript, Go and Rust with tree-sitter: the seven operators of `mutate`, once.

The operators are written a single time over a small per-language table of tree-sitter node types
(`GRAMMARS`); each language row only names which nodes are comparisons, calls, indexes, blocks,
conditions and literals in its grammar. A mutation is a minimal text edit (an operator token, an
argument swap, a literal, a deleted line) found on the syntax tree, returned as `mutate.Mutation`
(character offsets), so the rest of the mutation pipeline (sampling, tasks, combinations,
validation) is the Python one. Every edit is re-parsed: a mutant whose tree has an ERROR or MISSING
node is dropped, and so is one that reaches a source already produced by another operator.

  flip_compare      `<` -> `<=` / `>`, `==` -> `!=`, `===` -> `!==`, ...
  off_by_one        `a[i]` -> `a[i + 1]` / `a[i - 1]`, a loop bound `i < n` -> `i < n + 1`, a Rust
                    range `0..n` -> `0..n + 1`, a Go slice bound
  swap_args         `f(a, b)` -> `f(b, a)` (adjacent arguments; never of require/import)
  drop_statement    delete one statement line from a block of two or more
  change_constant   `0` <-> `1`, `n` -> `n + 1`, `true` <-> `false`, short strings emptied
  invert_condition  `if (c)` -> `if (!(c))`, `if !c` -> `if c` (if, while, for conditions, ternaries)
  wrong_operator    `+` <-> `-`, `*` -> `+`, `&&` <-> `||`, `+=` -> `-=`, ...

Not mutated: test code (Rust `#[cfg(test)]` modules and `#[test]` functions), attributes and
macro token trees, imports. A mutant is kept only after execution (`build_candidate`): a passing
test breaks, the revert fixes it, and (Go, Rust) the mutant compiles: a type error is the
compiler's catch, not a bug to hunt.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from minicoder.gitdiff import diff_snapshots, snapshot_files
from minicoder.record import Environment, Task
from minicoder.sandbox.languages import LANGUAGES, test_cmd_for
from minicoder.sandbox.rust_tests import is_test_item as _is_test_item
from minicoder.tasks.mutate import OPERATORS, Mutation, MutationError, Outcome, Subject, sample_mutations
from minicoder.tasks.mutate import build_candidate as _build_candidate

_FLIPS = {"<": ["<=", ">"], "<=": ["<"], ">": [">=", "<"], ">=": [">"], "==": ["!="], "!=": ["=="],
          "===": ["!=="], "!==": ["==="]}
_SWAPS = {"+": "-", "-": "+", "*": "+", "/": "*", "%": "/", "&": "|", "|": "&", "^": "|", "<<": ">>",
          ">>": "<<", ">>>": ">>", "**": "*", "&&": "||", "||": "&&", "&^": "&"}


@dataclass(frozen=True)
class Grammar:
    """Which node types of one tree-sitter grammar play which part (the only per-language code)."""

    module: str  # the PyPI grammar package
    binary: str = "binary_expression"
    augmented: tuple[str, ...] = ()  # `x += 1` nodes (their `operator` field)
    call: str = "call_expression"
    index: tuple[str, ...] = ()  # (node type, field of the index; "" = the second named child)
    blocks: tuple[str, ...] = ()  # statement containers
    statements: tuple[str, ...] = ()  # droppable statements
    conditions: tuple[tuple[str, str], ...] = ()  # (node type, field of its condition)
    loops: tuple[tuple[str, str], ...] = ()  # (node, field) holding a loop's comparison
    numbers: tuple[str, ...] = ()
    booleans: tuple[str, ...] = ()
    strings: tuple[str, ...] = ()
    skip: tuple[str, ...] = ()  # subtrees never mutated
    ranges: tuple[str, ...] = ()  # Rust `a..b`
    slices: tuple[str, ...] = ()  # Go `a[i:j]` (fields start / end)
    functions: tuple[tuple[str, str], ...] = ()  # (node, field naming it) of function-like definitions


GRAMMARS: dict[str, Grammar] = {
    "javascript": Grammar(
        "tree_sitter_javascript", augmented=("augmented_assignment_expression",),
        index=(("subscript_expression", "index"),), blocks=("statement_block", "program", "switch_case"),
        statements=("expression_statement", "return_statement", "if_statement", "break_statement",
                    "continue_statement", "throw_statement"),
        conditions=(("if_statement", "condition"), ("while_statement", "condition"),
                    ("do_statement", "condition"), ("ternary_expression", "condition"), ("for_statement", "condition")),
        loops=(("for_statement", "condition"),), numbers=("number",), booleans=("true", "false"),
        strings=("string",), skip=("import_statement", "comment", "regex", "template_string"),
        functions=(("function_declaration", "name"), ("function_expression", "name"), ("method_definition", "name"),
                   ("generator_function_declaration", "name"), ("pair", "key"), ("variable_declarator", "name"))),
    "go": Grammar(
        "tree_sitter_go", augmented=("assignment_statement",), index=(("index_expression", "index"),),
        blocks=("statement_list",),
        statements=("expression_statement", "assignment_statement", "inc_statement", "dec_statement",
                    "return_statement", "if_statement", "break_statement", "continue_statement"),
        conditions=(("if_statement", "condition"), ("for_clause", "condition"), ("for_statement", "")),
        loops=(("for_clause", "condition"),), numbers=("int_literal", "float_literal"), booleans=("true", "false"),
        strings=("interpreted_string_literal",), skip=("import_declaration", "comment", "raw_string_literal"),
        slices=("slice_expression",), functions=(("function_declaration", "name"), ("method_declaration", "name"))),
    "rust": Grammar(
        "tree_sitter_rust", augmented=("compound_assignment_expr",), index=(("index_expression", ""),),
        blocks=("block",), statements=("expression_statement",),
        conditions=(("if_expression", "condition"), ("while_expression", "condition")),
        numbers=("integer_literal", "float_literal"), booleans=("boolean_literal",), strings=("string_literal",),
        skip=("attribute_item", "inner_attribute_item", "macro_invocation", "use_declaration", "line_comment",
              "block_comment", "macro_definition", "let_condition"),
        ranges=("range_expression",), functions=(("function_item", "name"),)),
}


@cache
def parser(language: str):
    import importlib

    import tree_sitter as ts

    mod = importlib.import_module(GRAMMARS[language].module)
    return ts.Parser(ts.Language(mod.language()))


def parses_cleanly(language: str, source: str) -> bool:
    root = parser(language).parse(source.encode()).root_node
    return not root.has_error


# --- walking -----------------------------------------------------------------------------------

def _walk(node, g: Grammar) -> Iterator[Any]:
    for child in node.named_children:
        if child.type in g.skip or (child.type in ("mod_item", "function_item") and _is_test_item(child)):
            continue
        if child.type == g.call and _callee(child) in ("require", "import"):
            continue
        yield child
        yield from _walk(child, g)


def _callee(call) -> str:
    fn = call.child_by_field_name("function")
    return fn.text.decode(errors="replace") if fn is not None else ""


def _field(node, name: str):
    if name:
        return node.child_by_field_name(name)
    kids = node.named_children
    return kids[1] if len(kids) > 1 else None


def _real(nodes) -> list:
    return [n for n in nodes if "comment" not in n.type]


_SIMPLE = re.compile(r"^[\w.\[\]()]+$")


def _plus(text: str, k: int) -> str:
    if re.fullmatch(r"\d+", text):
        return str(max(int(text) + k, 0))
    base = text if _SIMPLE.match(text) else f"({text})"
    return f"{base} {'+' if k > 0 else '-'} {abs(k)}"


# --- the operators, once -----------------------------------------------------------------------

Edit = tuple[str, int, int, str, str]  # (operator, start byte, end byte, replacement, description)


def _edits(node, g: Grammar, src: bytes) -> Iterator[Edit]:
    t = node.type
    text = node.text.decode(errors="replace")
    if t == g.binary or t in g.augmented:
        op = node.child_by_field_name("operator")
        if op is not None:
            o = op.text.decode()
            if t == g.binary:
                for new in _FLIPS.get(o, []):
                    yield "flip_compare", op.start_byte, op.end_byte, new, f"`{o}` -> `{new}`"
            base = o[:-1] if t in g.augmented and o.endswith("=") and o not in ("==", "=") else o
            if (t == g.binary or base != o) and base in _SWAPS:
                new = _SWAPS[base] + ("=" if base != o else "")
                yield "wrong_operator", op.start_byte, op.end_byte, new, f"`{o}` -> `{new}`"
    for typ, fld in g.index:
        if t == typ:
            idx = _field(node, fld)
            if idx is not None and idx.type not in g.ranges:
                for k in (1, -1):
                    yield ("off_by_one", idx.start_byte, idx.end_byte, _plus(idx.text.decode(), k),
                           f"index {'+' if k > 0 else '-'}1")
    for typ, fld in g.loops:
        if t == typ:
            cond = node.child_by_field_name(fld)
            if cond is not None and cond.type == g.binary and cond.child_by_field_name("operator").text.decode() in _FLIPS:
                right = cond.child_by_field_name("right")
                for k in (1, -1):
                    yield ("off_by_one", right.start_byte, right.end_byte, _plus(right.text.decode(), k),
                           f"loop bound {'+' if k > 0 else '-'}1")
    if t in g.ranges or t in g.slices:
        ends = [node.child_by_field_name("start"), node.child_by_field_name("end")] if t in g.slices else \
            [c for c in node.named_children]
        for i, b in enumerate(e for e in ends if e is not None):
            for k in (1, -1):
                yield ("off_by_one", b.start_byte, b.end_byte, _plus(b.text.decode(), k),
                       f"{'range' if t in g.ranges else 'slice'} bound {i} {'+' if k > 0 else '-'}1")
    if t == g.call:
        args = node.child_by_field_name("arguments")
        items = _real(args.named_children) if args is not None else []
        for a, b in zip(items, items[1:]):
            if a.text != b.text and "spread" not in a.type + b.type:
                yield ("swap_args", a.start_byte, b.end_byte,
                       b.text.decode() + src[a.end_byte:b.start_byte].decode() + a.text.decode(), "adjacent arguments swapped")
    if (t in g.statements and node.parent is not None and node.parent.type in g.blocks
            and len(_real(node.parent.named_children)) >= 2):
        yield "drop_statement", node.start_byte, node.end_byte, "", f"`{t}` dropped"
    if t in g.numbers:
        m = re.fullmatch(r"(\d+)([a-z]\w*)?", text) or re.fullmatch(r"(\d+\.\d+)(f32|f64)?", text)
        if m:
            v = m.group(1)
            new = (str(float(v) + 1.0) if "." in v else "1" if v == "0" else "0" if v == "1" else str(int(v) + 1))
            yield "change_constant", node.start_byte, node.end_byte, new + (m.group(2) or ""), f"`{text}` -> `{new}`"
    if t in g.booleans:
        new = {"true": "false", "false": "true"}.get(text)
        if new:
            yield "change_constant", node.start_byte, node.end_byte, new, f"`{text}` -> `{new}`"
    if t in g.strings and len(text) <= 5 and text[:1] in "\"'" and not _in_key(node):
        q = text[0]
        new = q + ("" if len(text) > 2 else " ") + q
        yield "change_constant", node.start_byte, node.end_byte, new, f"{text} -> {new}"
    for typ, fld in g.conditions:
        if t == typ:
            cond = _field(node, fld) if fld else _bare_for_condition(node)
            if cond is None:
                continue
            if cond.type == "parenthesized_expression" and cond.named_children:
                cond = cond.named_children[0]
            ctext = cond.text.decode()
            if cond.type == "unary_expression" and ctext.startswith("!"):
                yield "invert_condition", cond.start_byte, cond.end_byte, ctext[1:].strip(), "`!` removed from condition"
            else:
                yield "invert_condition", cond.start_byte, cond.end_byte, f"!({ctext})", "condition negated"


def _bare_for_condition(node):
    """Go `for cond { }`: the one expression child that is not the body or a clause."""
    kids = [c for c in node.named_children if c.type not in ("block", "for_clause", "range_clause")]
    return kids[0] if len(kids) == 1 else None


def _in_key(node) -> bool:
    p = node.parent
    return p is not None and p.type in ("pair", "import_spec", "keyed_element") and p.named_children[:1] == [node]


class _Offsets:
    def __init__(self, source: str):
        self.source = source
        self.b = source.encode()

    def char(self, byte: int) -> int:
        return len(self.b[:byte].decode(errors="replace"))


def find_mutations(source: str, path: str, language: str, lines: tuple[int, int] | None = None,
                   operators: tuple[str, ...] = OPERATORS) -> list[Mutation]:
    """Every single mutation of `source` that re-parses cleanly, in source order (sites numbered)."""
    if language not in GRAMMARS:
        raise MutationError(f"no tree-sitter grammar table for {language!r}; known: {sorted(GRAMMARS)}")
    unknown = set(operators) - set(OPERATORS)
    if unknown:
        raise MutationError(f"unknown mutation operator(s) {sorted(unknown)}; known: {list(OPERATORS)}")
    g = GRAMMARS[language]
    src = source.encode()
    tree = parser(language).parse(src)
    if tree.root_node.has_error:
        raise MutationError(f"{path}: does not parse as {language}")
    pos = _Offsets(source)
    found: list[Mutation] = []
    seen: set[str] = {source}
    for node in _walk(tree.root_node, g):
        first, last = node.start_point[0] + 1, node.end_point[0] + 1
        if lines is not None and not (lines[0] <= first and last <= lines[1]):
            continue
        for op, sb, eb, rep, desc in _edits(node, g, src):
            if op not in operators:
                continue
            if op == "drop_statement":  # whole lines only, when the statement owns them
                ls = src.rfind(b"\n", 0, sb) + 1
                le = src.find(b"\n", eb)
                le = len(src) if le < 0 else le + 1
                if src[ls:sb].strip() or src[eb:le].strip() not in (b"", b";"):
                    continue
                sb, eb = ls, le
            s, e = pos.char(sb), pos.char(eb)
            mutated = source[:s] + rep + source[e:]
            if mutated in seen or not parses_cleanly(language, mutated):
                continue
            seen.add(mutated)
            found.append(Mutation(op, path, s, e, rep, source.count("\n", 0, s) + 1,
                                  source.count("\n", 0, max(s, e - 1)) + 1, desc))
    found.sort(key=lambda m: (m.start, m.end, OPERATORS.index(m.operator)))
    return [Mutation(**{**m.__dict__, "site": i}) for i, m in enumerate(found)]


# --- subjects and candidates ----------------------------------------------------------------------

@dataclass
class LangSubject(Subject):
    """A `mutate.Subject` whose code is JavaScript, Go or Rust: tasks carry the language and its image."""

    language: str = "javascript"
    extra: dict[str, Any] = field(default_factory=dict)

    def task(self, instance_id: str, buggy: dict[str, str], fail: list[str], keep: list[str],
             statement: str, metadata: dict[str, Any]) -> Task:
        return Task(
            instance_id=instance_id, repo=self.repo, base_commit="",
            patch=diff_snapshots(buggy, self.files), test_patch=self.test_patch,
            problem_statement=statement, FAIL_TO_PASS=sorted(fail), PASS_TO_PASS=sorted(keep),
            environment=Environment(image=LANGUAGES[self.language].image, files=buggy, test_cmd=self.test_cmd,
                                    timeout_s=self.timeout_s),
            language=self.language, source=self.source,
            metadata={"subject": self.name, **self.metadata, **metadata},
        )


_SKIP_DIRS = ("examples/", "example/", "benches/", "bench/", "docs/", "doc/", "dist/", "vendor/", "testdata/",
              "node_modules/", "target/", "fuzz/", "build/")


def lang_repo_subject(root: str | Path, language: str, name: str | None = None, timeout_s: float = 120.0,
                      exclude: tuple[str, ...] = ()) -> LangSubject:
    """A JavaScript, Go or Rust project on disk with its own tests: the language's test files are
    hidden (test_patch), its other source files are mutation targets (`exclude`: path prefixes to leave
    alone, e.g. generated tables)."""
    root = Path(root)
    if not root.is_dir():
        raise MutationError(f"{root}: not a directory")
    lang = LANGUAGES[language]
    snap = snapshot_files(root, exclude=(".git", "node_modules", "target", ".github"))
    tests = {p: t for p, t in snap.items() if lang.is_test(p)}
    if not tests:
        raise MutationError(f"{root}: no {language} test files found")
    files = {p: t for p, t in snap.items() if p not in tests}
    targets: dict[str, tuple[int, int] | None] = {
        p: None for p in files if lang.owns(p) and not p.startswith(_SKIP_DIRS + tuple(exclude))
        and not lang.protected(p) and "/" + p not in ("/build.rs",)}
    if not targets:
        raise MutationError(f"{root}: no {language} source files to mutate")
    name = (name or root.name).replace("/", "_")
    return LangSubject(name=name, repo=name, files=files, tests=tests, targets=targets, source="mutation",
                       what="the package", test_cmd=test_cmd_for(language, files.get("package.json")),
                       timeout_s=timeout_s, metadata={"package": name, "language": language}, language=language)


def candidates(subject: LangSubject, per_subject: int, seed: int,
               operators: tuple[str, ...] = OPERATORS) -> list[tuple[str, list[Mutation]]]:
    """The deterministic single-mutation candidates of a subject (as `mutate.candidates`)."""
    all_ms: list[Mutation] = []
    for path, lines in sorted(subject.targets.items()):
        all_ms += find_mutations(subject.files[path], path, subject.language, lines, operators)
    chosen = sample_mutations(all_ms, per_subject, f"{seed}:{subject.name}")
    tag = (lambda p: "") if len(subject.targets) == 1 else (lambda p: re.sub(r"\.\w+$", "", p).replace("/", "_") + "__")
    return [(f"{subject.name}__{tag(m.path)}{m.key}", [m]) for m in chosen]


def build_candidate(subject: LangSubject, instance_id: str, mutations: list[Mutation], passing: set[str],
                    backend: Any = "local") -> Outcome:
    """`mutate.build_candidate`, and (Go, Rust) a mutant that does not compile is dropped."""
    oc = _build_candidate(subject, instance_id, mutations, passing, backend=backend)
    before = (oc.prior.get("empty") or [None])[0]
    if oc.kept and before is not None and "build failed" in (before.message or ""):
        return Outcome(instance_id, False, "mutant does not compile", None, oc.operator, oc.seconds, oc.prior)
    return oc


def enclosing_functions(language: str, source: str, lines: set[int]) -> set[str]:
    """Names of the functions of `source` whose span holds one of `lines` (1-based); for QA."""
    g = GRAMMARS.get(language)
    if g is None or not lines:
        return set()
    kinds = dict(g.functions)
    out = set()
    stack = [parser(language).parse(source.encode()).root_node]
    while stack:
        node = stack.pop()
        if node.type in kinds and any(node.start_point[0] + 1 <= ln <= node.end_point[0] + 1 for ln in lines):
            nm = node.child_by_field_name(kinds[node.type])
            if nm is not None and nm.type in ("identifier", "property_identifier", "field_identifier", "string"):
                out.add(nm.text.decode(errors="replace").strip("'\""))
        stack.extend(node.named_children)
    return out


_REQUIRE = re.compile(r"""(?:require\(\s*|from\s+|import\s+)['"]([^'"]+)['"]""")


def touches_change(task: Task) -> bool:
    """QA's "do the hidden tests name the changed code?" for JavaScript, Go and Rust: a test names a
    function around a changed line, or loads the changed file itself (JavaScript: a `require` /
    `import` that resolves to it; Go: a test file of the changed file's package; Rust: an integration
    test that uses the crate whose `src/` holds it)."""
    from minicoder.gitdiff import parse_patch

    files = task.environment.files or {}
    tests = {fp.path: "\n".join(fp.added) for fp in parse_patch(task.test_patch)}
    text = "\n".join(tests.values())
    tokens = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text))
    main = "index.js"
    if task.language == "javascript" and "package.json" in files:
        with contextlib.suppress(ValueError, AttributeError):
            main = posixpath.normpath(json.loads(files["package.json"]).get("main") or "index.js")
    crate = ""
    if task.language == "rust":
        m = re.search(r'^name\s*=\s*"([^"]+)"', files.get("Cargo.toml", ""), re.M)
        crate = m.group(1).replace("-", "_") if m else ""
    for fp in parse_patch(task.patch):
        src = files.get(fp.path, "")
        removed = set(fp.removed)
        touched = {i + 1 for i, ln in enumerate(src.splitlines()) if ln in removed}
        if enclosing_functions(task.language, src, touched) & tokens:
            return True
        if task.language == "go" and any(posixpath.dirname(t) == posixpath.dirname(fp.path) for t in tests):
            return True
        if task.language == "rust" and fp.path.startswith("src/") and crate and crate in tokens:
            return True
        if task.language == "javascript":
            for t, body in tests.items():
                for spec in _REQUIRE.findall(body):
                    if not spec.startswith("."):
                        continue
                    base = posixpath.normpath(posixpath.join(posixpath.dirname(t), spec))
                    if fp.path in (base, base + ".js", posixpath.join(base, "index.js")) or (
                            base in (".", "") and fp.path == main) or posixpath.join(base, main) == fp.path:
                        return True
    return False
