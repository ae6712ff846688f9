"""A small real task per language (JavaScript, Go, Rust), the counterparts of `examples.demo_task`.

Each is a tiny package whose `mean` truncates (integer division or `Math.floor`); the hidden tests
(`test_patch`) add a test file (for "rust_unit", tests to src/lib.rs's test module) with two FAIL_TO_PASS tests (one of them nested: a `describe` block,
a Go subtest, a Rust test module) and one PASS_TO_PASS test the bug does not affect, next to an old
test file (PASS_TO_PASS). `lang_hostile.py` attacks these tasks; tests, the bench and notebook 08
use them.
"""

from __future__ import annotations

from minicoder.gitdiff import make_diff
from minicoder.record import Environment, Task
from minicoder.sandbox.languages import LANGUAGES

# --- JavaScript (node:test; a tape variant for the tape runner) ----------------------------------
JS_MEAN_BUGGY = "  return Math.floor(sum / xs.length);\n"
JS_MEAN_FIXED = "  return sum / xs.length;\n"
JS_LIB = """'use strict';
// Small numeric helpers.

function add(a, b) {
  return a + b;
}

function mean(xs) {
  let sum = 0;
  for (const x of xs) sum += x;
""" + JS_MEAN_BUGGY + """}

module.exports = { add, mean };
"""
JS_FILES = {
    "package.json": '{\n  "name": "calc",\n  "version": "1.0.0",\n  "private": true,\n  "scripts": {"test": "node --test"}\n}\n',
    "lib/calc.js": JS_LIB,
    "test/add.test.js": "'use strict';\nconst test = require('node:test');\nconst assert = require('node:assert');\n"
                        "const { add } = require('../lib/calc');\n\ntest('adds', () => {\n  assert.strictEqual(add(2, 3), 5);\n});\n",
}
JS_TEST = """'use strict';
const { test, describe, it } = require('node:test');
const assert = require('node:assert');
const { mean } = require('../lib/calc');

test('mean of even total', () => {
  assert.strictEqual(mean([2, 4]), 3);
});

test('mean of a fraction', () => {
  assert.strictEqual(mean([1, 2]), 1.5);
});

describe('negative', () => {
  it('keeps the fraction', () => {
    assert.strictEqual(mean([-1, -2]), -1.5);
  });
});
"""
JS_TAPE_FILES = {
    "package.json": '{\n  "name": "calc",\n  "version": "1.0.0",\n  "private": true,\n  "scripts": {"test": "tape test/*.js"}\n}\n',
    "lib/calc.js": JS_LIB,
    "test/add.js": "'use strict';\nconst test = require('tape');\nconst { add } = require('../lib/calc');\n\n"
                   "test('adds', (t) => {\n  t.equal(add(2, 3), 5);\n  t.end();\n});\n",
}
JS_TAPE_TEST = """'use strict';
const test = require('tape');
const { mean } = require('../lib/calc');

test('mean of even total', (t) => {
  t.equal(mean([2, 4]), 3);
  t.end();
});

test('mean of a fraction', (t) => {
  t.plan(2);
  t.equal(mean([1, 2]), 1.5);
  t.equal(mean([-1, -2]), -1.5, 'negative');
});
"""

# mocha and jest: the same library, tests in their styles (mocha: describe/it + node:assert; jest:
# test/describe + expect), the runner named by package.json's test script.
def _pkg(script: str) -> str:
    return JS_FILES["package.json"].replace('"node --test"', f'"{script}"')


JS_MOCHA_FILES = {
    "package.json": _pkg("mocha"),
    "lib/calc.js": JS_LIB,
    "test/add.test.js": "'use strict';\nconst assert = require('node:assert');\nconst { add } = require('../lib/calc');\n\n"
                        "describe('add', () => {\n  it('adds', () => {\n    assert.strictEqual(add(2, 3), 5);\n  });\n});\n",
}
JS_MOCHA_TEST = """'use strict';
const assert = require('node:assert');
const { mean } = require('../lib/calc');

describe('mean', () => {
  it('of even total', () => {
    assert.strictEqual(mean([2, 4]), 3);
  });

  it('of a fraction', () => {
    assert.strictEqual(mean([1, 2]), 1.5);
  });

  describe('negative', () => {
    it('keeps the fraction', () => {
      assert.strictEqual(mean([-1, -2]), -1.5);
    });
  });
});
"""
JS_JEST_FILES = {
    "package.json": _pkg("jest"),
    "lib/calc.js": JS_LIB,
    "test/add.test.js": "'use strict';\nconst { add } = require('../lib/calc');\n\n"
                        "test('adds', () => {\n  expect(add(2, 3)).toBe(5);\n});\n",
}
JS_JEST_TEST = """'use strict';
const { mean } = require('../lib/calc');

test('mean of even total', () => {
  expect(mean([2, 4])).toBe(3);
});

describe('mean', () => {
  test('of a fraction', () => {
    expect(mean([1, 2])).toBe(1.5);
  });

  describe('negative', () => {
    test('keeps the fraction', () => {
      expect(mean([-1, -2])).toBe(-1.5);
    });
  });
});
"""

# --- Go ----------------------------------------------------------------------------------------------
GO_MEAN_BUGGY = "\treturn float64(sum / len(xs))\n"
GO_MEAN_FIXED = "\treturn float64(sum) / float64(len(xs))\n"
GO_LIB = """// Package mathx has small numeric helpers.
package mathx

// Add returns a + b.
func Add(a, b int) int {
\treturn a + b
}

// Mean is the arithmetic mean of a non-empty slice.
func Mean(xs []int) float64 {
\tsum := 0
\tfor _, x := range xs {
\t\tsum += x
\t}
""" + GO_MEAN_BUGGY + "}\n"
GO_FILES = {
    "go.mod": "module example.com/calc\n\ngo 1.19\n",
    "mathx/mathx.go": GO_LIB,
    "mathx/add_test.go": "package mathx\n\nimport \"testing\"\n\nfunc TestAdd(t *testing.T) {\n"
                         "\tif Add(2, 3) != 5 {\n\t\tt.Fatal(\"2 + 3 != 5\")\n\t}\n}\n",
}
GO_TEST = """package mathx

import "testing"

func TestMeanEven(t *testing.T) {
\tif got := Mean([]int{2, 4}); got != 3 {
\t\tt.Fatalf("Mean([2 4]) = %v, want 3", got)
\t}
}

func TestMeanFraction(t *testing.T) {
\tif got := Mean([]int{1, 2}); got != 1.5 {
\t\tt.Fatalf("Mean([1 2]) = %v, want 1.5", got)
\t}
}

func TestMeanNegative(t *testing.T) {
\tt.Run("fraction", func(t *testing.T) {
\t\tif got := Mean([]int{-1, -2}); got != -1.5 {
\t\t\tt.Errorf("Mean([-1 -2]) = %v, want -1.5", got)
\t\t}
\t})
}
"""

# --- Rust ----------------------------------------------------------------------------------------------
RUST_MEAN_BUGGY = "    (sum / xs.len() as i64) as f64\n"
RUST_MEAN_FIXED = "    sum as f64 / xs.len() as f64\n"
RUST_LIB = """//! Small numeric helpers.

/// `a + b`.
pub fn add(a: i64, b: i64) -> i64 {
    a + b
}

/// The arithmetic mean of a non-empty slice.
pub fn mean(xs: &[i64]) -> f64 {
    let sum: i64 = xs.iter().sum();
""" + RUST_MEAN_BUGGY + "}\n"
RUST_FILES = {
    "Cargo.toml": '[package]\nname = "calc"\nversion = "0.1.0"\nedition = "2018"\n\n[dependencies]\n',
    "Cargo.lock": "# This file is automatically @generated by Cargo.\n# It is not intended for manual editing.\n"
                  "version = 3\n\n[[package]]\nname = \"calc\"\nversion = \"0.1.0\"\n",
    "src/lib.rs": RUST_LIB,
    "tests/add.rs": "use calc::add;\n\n#[test]\nfn adds() {\n    assert_eq!(add(2, 3), 5);\n}\n",
}
RUST_TEST = """use calc::mean;

#[test]
fn mean_even() {
    assert_eq!(mean(&[2, 4]), 3.0);
}

#[test]
fn mean_fraction() {
    assert_eq!(mean(&[1, 2]), 1.5);
}

mod negative {
    #[test]
    fn keeps_the_fraction() {
        assert_eq!(calc::mean(&[-1, -2]), -1.5);
    }
}
"""

# Rust unit tests inside the source: the tests live in src/lib.rs's `#[cfg(test)] mod tests`, which
# the hidden tests (the test_patch) extend; the fix is in the same file, far from the tests.
RUST_UNIT_LIB = RUST_LIB + """
/// `a * b`.
pub fn mul(a: i64, b: i64) -> i64 {
    a * b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds() {
        assert_eq!(add(2, 3), 5);
    }
}
"""
RUST_UNIT_FILES = {**{k: v for k, v in RUST_FILES.items() if not k.startswith("tests/")}, "src/lib.rs": RUST_UNIT_LIB}
RUST_UNIT_TEST = RUST_UNIT_LIB.replace("""        assert_eq!(add(2, 3), 5);
    }
""", """        assert_eq!(add(2, 3), 5);
    }

    #[test]
    fn mean_even() {
        assert_eq!(mean(&[2, 4]), 3.0);
    }

    #[test]
    fn mean_fraction() {
        assert_eq!(mean(&[1, 2]), 1.5);
    }

    mod negative {
        #[test]
        fn keeps_the_fraction() {
            assert_eq!(super::super::mean(&[-1, -2]), -1.5);
        }
    }
""")

# language -> (files, source path, buggy line, fixed line, hidden test path, hidden test, F2P, P2P, test_cmd)
DEMOS = {
    "javascript": (JS_FILES, "lib/calc.js", JS_MEAN_BUGGY, JS_MEAN_FIXED, "test/mean.test.js", JS_TEST,
                   ["test/mean.test.js::mean of a fraction", "test/mean.test.js::negative > keeps the fraction"],
                   ["test/add.test.js::adds", "test/mean.test.js::mean of even total"], "node --test"),
    "tape": (JS_TAPE_FILES, "lib/calc.js", JS_MEAN_BUGGY, JS_MEAN_FIXED, "test/mean.js", JS_TAPE_TEST,
             ["test/mean.js::mean of a fraction"], ["test/add.js::adds", "test/mean.js::mean of even total"],
             "tape test/*.js"),
    "mocha": (JS_MOCHA_FILES, "lib/calc.js", JS_MEAN_BUGGY, JS_MEAN_FIXED, "test/mean.test.js", JS_MOCHA_TEST,
              ["test/mean.test.js::mean > of a fraction", "test/mean.test.js::mean > negative > keeps the fraction"],
              ["test/add.test.js::add > adds", "test/mean.test.js::mean > of even total"], "mocha"),
    "jest": (JS_JEST_FILES, "lib/calc.js", JS_MEAN_BUGGY, JS_MEAN_FIXED, "test/mean.test.js", JS_JEST_TEST,
             ["test/mean.test.js::mean > of a fraction", "test/mean.test.js::mean > negative > keeps the fraction"],
             ["test/add.test.js::adds", "test/mean.test.js::mean of even total"], "jest"),
    "go": (GO_FILES, "mathx/mathx.go", GO_MEAN_BUGGY, GO_MEAN_FIXED, "mathx/mean_test.go", GO_TEST,
           ["mathx::TestMeanFraction", "mathx::TestMeanNegative", "mathx::TestMeanNegative/fraction"],
           ["mathx::TestAdd", "mathx::TestMeanEven"], "go test ./..."),
    "rust": (RUST_FILES, "src/lib.rs", RUST_MEAN_BUGGY, RUST_MEAN_FIXED, "tests/mean.rs", RUST_TEST,
             ["tests/mean.rs::mean_fraction", "tests/mean.rs::negative::keeps_the_fraction"],
             ["tests/add.rs::adds", "tests/mean.rs::mean_even"], "cargo test"),
    "rust_unit": (RUST_UNIT_FILES, "src/lib.rs", RUST_MEAN_BUGGY, RUST_MEAN_FIXED, "src/lib.rs", RUST_UNIT_TEST,
                  ["src/lib.rs::tests::mean_fraction", "src/lib.rs::tests::negative::keeps_the_fraction"],
                  ["src/lib.rs::tests::adds", "src/lib.rs::tests::mean_even"], "cargo test"),
}
VARIANTS = {"tape": "javascript", "mocha": "javascript", "jest": "javascript", "rust_unit": "rust"}


def demo_task(language: str, timeout_s: float = 60.0) -> Task:
    """The tiny real task of `language`: "javascript" (node:test), "tape", "mocha", "jest" (JavaScript
    with those runners), "go", "rust" (integration tests), "rust_unit" (unit tests in src/lib.rs)."""
    files, src, buggy, fixed, test_path, test_text, f2p, p2p, cmd = DEMOS[language]
    lang = VARIANTS.get(language, language)
    patch = make_diff(files, {src: files[src].replace(buggy, fixed)})
    test_patch = make_diff(files, {test_path: test_text})
    return Task(
        instance_id=f"minicoder__calc-{language}-1", repo=f"minicoder/calc-{language}", base_commit="",
        patch=patch, test_patch=test_patch,
        problem_statement=f"`mean([1, 2])` returns 1 instead of 1.5 ({language}): the mean truncates.",
        FAIL_TO_PASS=list(f2p), PASS_TO_PASS=list(p2p),
        environment=Environment(image=LANGUAGES[lang].image, files=dict(files), test_cmd=cmd, timeout_s=timeout_s),
        language=lang, source="manual",
    )
