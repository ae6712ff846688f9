"""Rewards for JavaScript (node:test, tape, mocha, jest), Go and Rust (integration tests and unit tests
inside src/lib.rs) tasks: real runs on both backends, and the report parsers and protections on
their own (known inputs, known answers)."""

from __future__ import annotations

import json

import pytest

from minicoder.sandbox.lang_examples import demo_task
from minicoder.sandbox.lang_reports import (
    parse_go_json,
    parse_jest_json,
    parse_libtest_log,
    parse_mocha_rows,
    parse_node_tap,
    parse_tape_rows,
)
from minicoder.sandbox.languages import LANGUAGES, classify
from minicoder.sandbox.languages import test_cmd_for as runner_for
from minicoder.sandbox.reward import evaluate, evaluate_many, run_tests

BACKENDS = ["local", pytest.param("docker", marks=pytest.mark.docker)]
LANGS = ["javascript", "tape", "mocha", "jest", "go", "rust", "rust_unit"]


@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("language", LANGS)
def test_gold_resolves_and_empty_does_not(language, backend):
    task = demo_task(language)
    gold, empty = evaluate_many(task, [task.patch, ""], backend=backend, workers=2)  # each in its own sandbox
    assert (gold.reward, gold.status) == (1.0, "resolved"), (gold.status, gold.message, gold.tests)
    assert (empty.reward, empty.status) == (0.0, "unresolved"), (empty.status, empty.message)
    # exactly the FAIL_TO_PASS tests fail without the fix; PASS_TO_PASS pass either way
    assert {t for t, o in empty.tests.items() if o != "passed"} == set(task.FAIL_TO_PASS)
    assert all(gold.tests[t] == "passed" for t in task.FAIL_TO_PASS + task.PASS_TO_PASS)


@pytest.mark.parametrize("language", ["javascript", "go", "rust", "rust_unit"])
def test_default_selection_runs_every_test_of_the_test_patch(language):
    """With no ids, run_tests runs the test_patch's files; Go reports the file's whole package."""
    task = demo_task(language)
    tr = run_tests(task, task.patch)
    assert tr.status == "ok", tr.message
    hidden = {t for t in task.FAIL_TO_PASS + task.PASS_TO_PASS if "add" not in t.lower()}
    assert hidden <= set(tr.outcomes), (hidden, tr.outcomes)
    assert all(tr.outcomes[t] == "passed" for t in hidden)


def test_a_compile_error_is_a_failure_not_a_crash():
    """A patch that does not compile: every requested test counts as failed, the message says why."""
    from minicoder.gitdiff import make_diff
    from minicoder.sandbox.lang_examples import DEMOS

    # Go: a syntax error; Rust: a type error (a Rust source that does not even parse keeps the base file,
    # since its test items cannot be checked: see rust_tests.py)
    for language, path, junk in (("go", "mathx/mathx.go", "func Mean( nonsense"),
                                 ("rust", "src/lib.rs", 'pub fn broken() -> i64 {\n    "not a number"\n}')):
        task = demo_task(language)
        files = DEMOS[language][0]
        broken = make_diff(files, {path: files[path] + f"\n{junk}\n"})
        r = evaluate(task, broken)
        assert r.reward == 0.0 and r.status in ("no_report", "unresolved"), (r.status, r.message)
        assert "build failed" in r.message
        assert set(r.tests.values()) == {"missing"}


def test_parse_node_tap_nesting_escapes_and_errors():
    tap = b"""TAP version 13
# Subtest: top \\# one
ok 1 - top \\# one
  ---
  duration_ms: 1.0
  ...
# Subtest: suite
    # Subtest: inner
    not ok 1 - inner
      ---
      duration_ms: 1.2
      failureType: 'testCodeFailure'
      error: |-
        Expected values to be strictly equal:
        1 !== 1.5
      code: 'ERR_ASSERTION'
      ...
    # Subtest: later
    ok 2 - later # SKIP
    1..2
not ok 2 - suite
  ---
  type: 'suite'
  ...
# Subtest: todo
not ok 3 - todo # TODO
1..3
# tests 4
# pass 1
"""
    cases, complete = parse_node_tap(tap, "t.js")
    assert {k: v.outcome for k, v in cases.items()} == {
        "t.js::top # one": "passed", "t.js::suite > inner": "failed", "t.js::suite > later": "skipped",
        "t.js::suite": "failed", "t.js::todo": "skipped"}
    assert "1 !== 1.5" in cases["t.js::suite > inner"].message
    assert complete
    cut = tap[: tap.index(b"1..3")]
    assert parse_node_tap(cut, "t.js")[1] is False  # no closing plan: the run never reached its end


def test_parsers_keep_the_worse_outcome_of_a_faked_line():
    go = "\n".join(json.dumps(e) for e in [
        {"Action": "pass", "Test": "TestA"},  # a fake line printed by the code under test...
        {"Action": "output", "Test": "TestA", "Output": "    a_test.go:3: boom\n"},
        {"Action": "fail", "Test": "TestA"},  # ...and the real failure
        {"Action": "pass", "Test": "TestA/sub"}, {"Action": "pass", "Test": "TestMinicoderSentinel"},
        {"Action": "fail"}]).encode()
    cases, complete = parse_go_json(go, "pkg", ignore=("TestMinicoderSentinel",))
    assert {k: v.outcome for k, v in cases.items()} == {"pkg::TestA": "failed", "pkg::TestA/sub": "passed"}
    assert "boom" in cases["pkg::TestA"].message and complete
    log = b"ok m::a\nfailed m::a\nignored b\nnot a line\n"
    assert {k: v.outcome for k, v in parse_libtest_log(log, "tests/x.rs")[0].items()} == {
        "tests/x.rs::m::a": "failed", "tests/x.rs::b": "skipped"}
    rows = "\n".join(json.dumps(r) for r in [
        {"type": "test", "name": "adds", "id": 0}, {"type": "assert", "ok": True, "test": 0, "name": "eq"},
        {"type": "test", "name": "subs", "id": 1},
        {"type": "assert", "ok": False, "test": 1, "name": "should be equal", "expected": 1, "actual": 2},
        {"type": "end", "test": 1}, {"type": "minicoder.end"}]).encode()
    cases, complete = parse_tape_rows(rows, "test/a.js")
    assert {k: v.outcome for k, v in cases.items()} == {"test/a.js::adds": "passed", "test/a.js::subs": "failed"}
    assert "expected 1, got 2" in cases["test/a.js::subs"].message and complete


def test_language_table_classifies_and_guards():
    assert classify("lib/x.js") == ("javascript", False) and classify("test/x.js") == ("javascript", True)
    assert classify("a/b_test.go") == ("go", True) and classify("tests/t.rs") == ("rust", True)
    assert classify("src/lib.rs") == ("rust", False) and classify("README.md") == (None, False)
    guarded = {"javascript": ["package.json", "node_modules/tape/index.js", "sub/.mocharc.json", "test/a.js"],
               "go": ["go.mod", "go.work", "vendor/modules.txt", "pkg/testdata/x.txt", "pkg/x_test.go"],
               "rust": ["Cargo.toml", "Cargo.lock", "build.rs", ".cargo/config.toml", "tests/t.rs"]}
    free = {"javascript": ["lib/x.js", "index.js"], "go": ["pkg/x.go", "main.go"], "rust": ["src/lib.rs"]}
    for lang, paths in guarded.items():
        assert all(LANGUAGES[lang].guarded(p) for p in paths), lang
        assert not any(LANGUAGES[lang].guarded(p) for p in free[lang]), lang


def test_parse_mocha_rows_and_jest_json():
    rows = "\n".join(json.dumps(r) for r in [
        {"type": "test", "state": "passed", "file": "/workspace/test/a.js", "path": ["mean", "even"]},
        {"type": "test", "state": "failed", "file": "/workspace/test/a.js", "path": ["mean", "neg", "keeps"],
         "message": "-2 !== -1.5"},
        {"type": "test", "state": "passed", "file": "/workspace/test/a.js", "path": ["mean", "neg", "keeps"]},  # forged
        {"type": "test", "state": "skipped", "file": "/workspace/test/b.js", "path": ["later"]},
        "not json"]).encode()
    cases, complete = parse_mocha_rows(rows)
    assert {k: v.outcome for k, v in cases.items()} == {
        "test/a.js::mean > even": "passed", "test/a.js::mean > neg > keeps": "failed", "test/b.js::later": "skipped"}
    assert cases["test/a.js::mean > neg > keeps"].message == "-2 !== -1.5" and not complete
    assert parse_mocha_rows(rows + b'\n{"type": "end"}\n')[1] is True

    report = {"testResults": [
        {"name": "/workspace/test/a.test.js", "status": "failed", "assertionResults": [
            {"ancestorTitles": ["mean"], "title": "of a fraction", "status": "failed", "failureMessages": ["1 != 1.5"]},
            {"ancestorTitles": [], "title": "top", "status": "passed", "failureMessages": []},
            {"ancestorTitles": ["mean", "neg"], "title": "todo", "status": "todo"}]},
        {"name": "/workspace/test/broken.test.js", "status": "failed", "assertionResults": [],
         "message": "SyntaxError: Unexpected token"}]}
    cases, complete = parse_jest_json(json.dumps(report).encode(), ["test/a.test.js", "test/broken.test.js"])
    assert {k: v.outcome for k, v in cases.items()} == {
        "test/a.test.js::mean > of a fraction": "failed", "test/a.test.js::top": "passed",
        "test/a.test.js::mean > neg > todo": "skipped", "test/broken.test.js": "error"}
    assert "1 != 1.5" in cases["test/a.test.js::mean > of a fraction"].message and complete
    assert parse_jest_json(json.dumps(report).encode(), ["test/a.test.js", "test/c.test.js"])[1] is False
    assert parse_jest_json(b"", ["test/a.test.js"]) == ({}, False)
    with pytest.raises(ValueError, match="not JSON"):
        parse_jest_json(b"{ cut off", ["test/a.test.js"])


def test_javascript_runner_comes_from_package_json():
    pkg = lambda **kw: json.dumps(kw)  # noqa: E731
    assert runner_for("javascript", pkg(scripts={"test": "jest --coverage"})) == "jest"
    assert runner_for("javascript", pkg(scripts={"test": "mocha test/"}, devDependencies={"jest": "29"})) == "mocha"
    assert runner_for("javascript", pkg(devDependencies={"mocha": "10"})) == "mocha"
    assert runner_for("javascript", pkg(scripts={"test": "tape test/*.js"})) == "tape test/*.js"
    assert runner_for("javascript", pkg(scripts={"test": "node --test"})) == "node --test"
    assert runner_for("javascript", "not json") == "node --test"
