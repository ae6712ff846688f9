"""Tree-sitter bug injection: each operator makes the same kind of bug in JavaScript, Go and Rust
(known sources, known edits), mutants always re-parse, test code is never mutated, and a real
mutant becomes a task only when a passing test breaks and the revert fixes it."""

from __future__ import annotations

import pytest

from minicoder.tasks.mutate import OPERATORS, MutationError
from minicoder.tasks.mutate_ts import find_mutations, lang_repo_subject, parses_cleanly

SOURCES = {
    "javascript": ("a.js", """function f(xs, b) {
  let s = 0;
  for (let i = 0; i < xs.length; i++) {
    s += xs[i];
  }
  if (s > 10 && b) {
    return Math.max(s, 1);
  }
  return s / 2;
}
"""),
    "go": ("a.go", """package x

func F(xs []int, b bool) int {
\ts := 0
\tfor i := 0; i < len(xs); i++ {
\t\ts += xs[i]
\t}
\tif s > 10 && b {
\t\treturn max(s, 1)
\t}
\treturn s / 2
}
"""),
    "rust": ("a.rs", """pub fn f(xs: &[i64], b: bool) -> i64 {
    let mut s = 0;
    for i in 0..xs.len() {
        s += xs[i];
    }
    if s > 10 && b {
        return std::cmp::max(s, 1);
    }
    s / 2
}
"""),
}
# operator -> (original text, replacement) that every language must produce (same bug, three syntaxes)
EXPECTED = {
    "flip_compare": [(">", ">="), (">", "<")],
    "wrong_operator": [("+=", "-="), ("&&", "||"), ("/", "*")],
    "off_by_one": [("i", "i + 1"), ("i", "i - 1")],
    "swap_args": [("s, 1", "1, s")],
    "change_constant": [("0", "1"), ("10", "11"), ("1", "0"), ("2", "3")],
    "invert_condition": [("s > 10 && b", "!(s > 10 && b)")],
}


@pytest.mark.parametrize("language", sorted(SOURCES))
@pytest.mark.parametrize("operator", OPERATORS)
def test_operator_makes_the_same_bug_in_each_language(language, operator):
    path, src = SOURCES[language]
    ms = find_mutations(src, path, language, operators=(operator,))
    assert ms, f"{operator} found nothing in {language}"
    edits = {(src[m.start:m.end], m.replacement) for m in ms}
    if operator == "drop_statement":
        dropped = {src[m.start:m.end] for m in ms}
        assert any(d.lstrip().startswith("if s > 10") or d.lstrip().startswith("if (s > 10") for d in dropped)
        assert all(m.replacement == "" and src[m.start:m.end].endswith("\n") for m in ms)  # whole lines
    else:
        assert set(EXPECTED[operator]) <= edits, (language, sorted(edits))
    for m in ms:
        assert m.operator == operator
        assert parses_cleanly(language, m.apply(src)), (language, m)
        assert m.apply(src) != src
    assert [m.site for m in ms] == list(range(len(ms)))


def test_loop_bounds_ranges_and_strings():
    js = find_mutations(SOURCES["javascript"][1], "a.js", "javascript", operators=("off_by_one",))
    assert ("xs.length", "xs.length + 1") in {(SOURCES["javascript"][1][m.start:m.end], m.replacement) for m in js}
    rs = find_mutations(SOURCES["rust"][1], "a.rs", "rust", operators=("off_by_one",))
    assert any(m.description.startswith("range bound 1") for m in rs)
    go = 'package x\n\nimport "fmt"\n\nfunc G() string {\n\treturn fmt.Sprint("ab")\n}\n'
    ms = find_mutations(go, "g.go", "go", operators=("change_constant",))
    assert [(go[m.start:m.end], m.replacement) for m in ms] == [('"ab"', '""')]  # the import path is never touched


def test_rust_test_code_is_never_mutated():
    src = "pub fn one() -> i32 {\n    1\n}\n\n#[cfg(test)]\nmod tests {\n    #[test]\n    fn t() {\n" \
          "        assert_eq!(super::one(), 1 + 0);\n    }\n}\n"
    ms = find_mutations(src, "src/lib.rs", "rust")
    assert ms and all(m.line <= 3 for m in ms)


def test_unparsable_source_is_an_error():
    with pytest.raises(MutationError, match="does not parse"):
        find_mutations("function (", "x.js", "javascript")


@pytest.mark.slow
def test_a_javascript_subject_keeps_only_mutants_its_tests_catch(tmp_path):
    """Real runs: a mutant of `mean` that the tests catch is kept, with the failing tests named."""
    from minicoder.sandbox.lang_examples import DEMOS
    from minicoder.tasks.mutate import baseline
    from minicoder.tasks.mutate_ts import build_candidate

    files, src, buggy, fixed, test_path, test_text, *_ = DEMOS["javascript"]
    for rel, text in {**files, src: files[src].replace(buggy, fixed), test_path: test_text}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    subject = lang_repo_subject(tmp_path, "javascript", name="calc")
    passing = baseline(subject)
    assert len(passing) == 5  # four tests and the describe block
    ms = find_mutations(subject.files["lib/calc.js"], "lib/calc.js", "javascript")
    add = next(m for m in ms if m.operator == "wrong_operator" and m.line == 5)  # `a + b` -> `a - b`
    oc = build_candidate(subject, "calc__add", [add], passing)
    assert oc.kept and oc.task.FAIL_TO_PASS == ["test/add.test.js::adds"] and oc.task.language == "javascript"
    noop = next(m for m in ms if m.operator == "drop_statement" and "'use strict'" in subject.files["lib/calc.js"][m.start:m.end])
    assert not build_candidate(subject, "calc__strict", [noop], passing).kept  # no test notices
