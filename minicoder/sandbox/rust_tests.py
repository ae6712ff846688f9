"""The hidden tests inside Rust source files: find them, and put them back after a candidate's patch.

Rust keeps unit tests in the file they test: `#[cfg(test)] mod tests { ... }` at the end of
src/lib.rs, `#[test] fn` items, `#[cfg(test)] use ...`. A patch that fixes such a file may also
edit those tests (delete an assertion, `#[ignore]` a test, add a test-only helper), so the file
cannot simply be restored like a test file: the candidate's code must stay, its test items must not.

    find_test_items(source)               -> [TestItem] (items carrying #[test] or #[cfg(test)]), None if unparsable
    same_tests(a, b)                      -> whether two versions have the same test items
    with_reference_tests(cand, reference) -> the candidate's file with exactly the reference's test items, or None

`with_reference_tests` removes every test item of the candidate's file, puts each of the
reference's (the base file with the test_patch applied) back where the candidate had it (or at the
end of its module), then verifies the result: its test items are exactly the reference's, byte
for byte, and outside them the file mentions `cfg(test)` / `cfg!(test)` no more often than the
reference does (code that behaves differently under test is a way to pass tests, not a fix). None
when any of that fails (the caller then keeps the reference file, dropping the candidate's change
to it). Residual risk: a build script or macro could still tell test builds apart in other ways;
Cargo.toml and build.rs are protected files, so a candidate cannot add either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache

TEST_ATTR = re.compile(rb"#\[\s*(test|cfg\(\s*test\s*\))\s*\]")
CFG_TEST = re.compile(rb"\bcfg(?:_attr)?\s*!?\s*\(\s*(?:(?:not|any|all)\s*\(\s*)*test\b")


@dataclass(frozen=True)
class TestItem:
    """One item that exists only in test builds, with the attributes before it."""

    __test__ = False  # not a pytest class

    module: tuple[str, ...]  # the inline modules it sits in (() = the file's top level)
    key: str  # its kind and name, unique within its module
    start: int  # byte offsets of the item, attributes included
    end: int
    text: bytes


@cache
def _parser():
    import tree_sitter as ts
    import tree_sitter_rust

    return ts.Parser(ts.Language(tree_sitter_rust.language()))


def _name(node) -> str:
    n = node.child_by_field_name("name") or node.child_by_field_name("type") or node.child_by_field_name("argument")
    return n.text.decode(errors="replace") if n is not None else node.text.split(b"\n", 1)[0].decode(errors="replace")


def _attributes(node) -> list:
    """The attribute items right before `node` (comments between them allowed), nearest last."""
    out = []
    prev = node.prev_named_sibling
    while prev is not None and prev.type in ("attribute_item", "line_comment", "block_comment"):
        if prev.type == "attribute_item":
            out.insert(0, prev)
        prev = prev.prev_named_sibling
    return out


def is_test_item(node) -> bool:
    """An item carrying #[test] or #[cfg(test)] (tree-sitter puts its attributes before it as siblings)."""
    return any(TEST_ATTR.search(a.text) for a in _attributes(node))


def _collect(container, module: tuple[str, ...], out: list[TestItem], modules: dict[tuple[str, ...], int]) -> None:
    seen: dict[str, int] = {}
    for child in container.named_children:
        if child.type in ("attribute_item", "inner_attribute_item", "line_comment", "block_comment"):
            continue
        if is_test_item(child):
            key = f"{child.type} {_name(child)}"
            seen[key] = seen.get(key, 0) + 1
            if seen[key] > 1:
                key += f" #{seen[key]}"
            start = _attributes(child)[0].start_byte
            out.append(TestItem(module, key, start, child.end_byte, b""))
            continue
        body = child.child_by_field_name("body") if child.type == "mod_item" else None
        if body is not None:
            path = (*module, _name(child))
            modules[path] = body.end_byte - 1  # the module's closing brace
            _collect(body, path, out, modules)


def _scan(source: bytes) -> tuple[list[TestItem], dict[tuple[str, ...], int]] | None:
    tree = _parser().parse(source)
    if tree.root_node.has_error:
        return None
    items: list[TestItem] = []
    modules: dict[tuple[str, ...], int] = {(): len(source)}
    _collect(tree.root_node, (), items, modules)
    return [TestItem(i.module, i.key, i.start, i.end, source[i.start:i.end]) for i in items], modules


def find_test_items(source: bytes) -> list[TestItem] | None:
    """The test-only items of a Rust file, in order; None when the file does not parse."""
    scanned = _scan(source)
    return None if scanned is None else scanned[0]


def _cfg_test_outside(source: bytes, items: list[TestItem]) -> int:
    """How often the file mentions cfg(test) outside its test items."""
    n, pos = 0, 0
    for it in sorted(items, key=lambda i: i.start):
        n += len(CFG_TEST.findall(source[pos:it.start]))
        pos = max(pos, it.end)
    return n + len(CFG_TEST.findall(source[pos:]))


def _signature(items: list[TestItem]) -> list[tuple]:
    return sorted((i.module, i.key, i.text) for i in items)


def same_tests(a: bytes, b: bytes) -> bool:
    """Whether two versions of a file have the same test items (False if either does not parse)."""
    x, y = find_test_items(a), find_test_items(b)
    return x is not None and y is not None and _signature(x) == _signature(y)


def with_reference_tests(candidate: bytes, reference: bytes) -> bytes | None:
    """`candidate` with its test items replaced by exactly those of `reference` (see the module
    docstring), or None when the candidate's file cannot be brought there safely."""
    cand, ref = _scan(candidate), _scan(reference)
    if cand is None or ref is None:
        return None
    (c_items, c_modules), (r_items, _) = cand, ref
    allowed = _cfg_test_outside(reference, r_items)
    if _signature(c_items) == _signature(r_items):
        return candidate if _cfg_test_outside(candidate, c_items) <= allowed else None
    wanted = {(i.module, i.key): i for i in r_items}
    edits: list[tuple[int, int, bytes]] = []  # (start, end, replacement) on the candidate
    placed: set[tuple] = set()
    for it in c_items:
        ref_item = wanted.get((it.module, it.key))
        if ref_item is not None and (it.module, it.key) not in placed:
            edits.append((it.start, it.end, ref_item.text))
            placed.add((it.module, it.key))
        else:
            edits.append((it.start, it.end, b""))
    for key, it in wanted.items():
        if key in placed:
            continue
        if it.module not in c_modules:
            return None  # the module that held this test is gone from the candidate's file
        at = c_modules[it.module]
        edits.append((at, at, b"\n" + it.text + b"\n"))
    out = candidate
    for start, end, text in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        out = out[:start] + text + out[end:]
    check = _scan(out)
    if check is None or _signature(check[0]) != _signature(r_items) or _cfg_test_outside(out, check[0]) > allowed:
        return None
    return out
