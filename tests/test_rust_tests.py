"""The hidden tests inside Rust source files (`sandbox/rust_tests.py`): found by tree-sitter, and a
candidate's file gets exactly the reference's test items back, keeping its code (known sources,
known results; the real runs are in test_lang_reward.py and test_lang_hostile.py, `rust_unit`)."""

from __future__ import annotations

from minicoder.sandbox.languages import LANGUAGES
from minicoder.sandbox.rust_tests import find_test_items, same_tests, with_reference_tests

REF = b"""//! Helpers.
pub fn mean(xs: &[i64]) -> f64 {
    let sum: i64 = xs.iter().sum();
    sum as f64 / xs.len() as f64
}

pub mod inner {
    pub fn one() -> i32 { 1 }

    #[cfg(test)]
    mod tests {
        #[test]
        fn one() { assert_eq!(super::one(), 1); }
    }
}

#[test]
fn top_level() { assert_eq!(mean(&[2]), 2.0); }

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fraction() {
        assert_eq!(mean(&[1, 2]), 1.5);
    }
}
"""
FIXED = REF.replace(b"let sum: i64 = xs.iter().sum();", b"let sum: i64 = xs.iter().copied().sum();")


def _texts(src: bytes) -> list[bytes]:
    return [i.text for i in find_test_items(src)]


def test_test_items_are_found_with_their_modules():
    items = find_test_items(REF)
    assert [(i.module, i.key) for i in items] == [
        (("inner",), "mod_item tests"), ((), "function_item top_level"), ((), "mod_item tests")]
    assert items[0].text.startswith(b"#[cfg(test)]") and items[0].text.endswith(b"}")
    assert REF[items[2].start:items[2].end] == items[2].text
    assert find_test_items(b"fn (") is None


def test_a_candidate_keeps_its_code_and_gets_the_reference_tests():
    assert with_reference_tests(FIXED, REF) == FIXED  # tests untouched: nothing changes
    gutted = FIXED.replace(b"assert_eq!(mean(&[1, 2]), 1.5);", b"")
    assert with_reference_tests(gutted, REF) == FIXED  # an emptied test is put back
    ignored = FIXED.replace(b"    #[test]\n    fn fraction", b"    #[test]\n    #[ignore]\n    fn fraction")
    assert with_reference_tests(ignored, REF) == FIXED  # so is an #[ignore]d one
    no_tests = FIXED[:FIXED.index(b"#[cfg(test)]\nmod tests {\n    use")]
    no_inner = no_tests.replace(b"    #[cfg(test)]\n    mod tests {\n        #[test]\n        fn one() { assert_eq!(super::one(), 1); }\n    }\n", b"")
    merged = with_reference_tests(no_inner, REF)  # deleted test modules come back, in their modules
    assert merged is not None and sorted(_texts(merged)) == sorted(_texts(REF))
    assert b"pub fn one() -> i32 { 1 }\n\n" in merged and b"copied()" in merged
    extra = FIXED + b"\n#[cfg(test)]\nmod sneaky {\n    #[test]\n    fn always() {}\n}\n"
    assert _texts(with_reference_tests(extra, REF)) == _texts(REF)  # the candidate's own tests go
    assert same_tests(FIXED, REF) and not same_tests(gutted, REF) and not same_tests(extra, REF)


def test_unsafe_merges_are_refused():
    cheat = REF.replace(b"sum as f64 / xs.len() as f64", b"if cfg!(test) { 1.5 } else { 0.0 }")
    assert with_reference_tests(cheat, REF) is None  # behaves differently under test
    attr = REF.replace(b"pub fn mean", b"#[cfg(not(test))]\npub fn mean")
    assert with_reference_tests(attr, REF) is None
    assert with_reference_tests(b"pub fn mean( {", REF) is None  # does not parse
    gone = REF.replace(b"pub mod inner {", b"pub mod renamed {")  # the module holding a test is gone
    assert with_reference_tests(gone, REF) is None
    stripped = with_reference_tests(FIXED, b"")  # a reference without tests: none are left
    assert _texts(stripped) == [] and b"pub fn one()" in stripped


def test_an_all_tests_source_file_is_a_test_file():
    rust = LANGUAGES["rust"]
    assert rust.is_test("src/tests.rs") and rust.is_test("src/parser/tests.rs") and rust.is_test("tests/a.rs")
    assert not rust.is_test("src/lib.rs") and not rust.is_test("src/testing_utils.rs")
