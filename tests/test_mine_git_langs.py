"""Mining a JavaScript, a Go and a Rust repository made here with real git commits: exactly the fix
commits become tasks, with the FAIL_TO_PASS / PASS_TO_PASS lists the runners give by hand.

Each history: the initial code and tests, a fix with its new test (a task), a source-only refactor
and a tests-only commit (filtered out before running), and a commit whose new test already passes
before its source change (executed, dropped: no FAIL_TO_PASS test).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from minicoder.tasks.mine_git import LANGUAGES
from minicoder.tasks.mine_pr import mine

ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@x", "GIT_CONFIG_NOSYSTEM": "1"}


def _commit(repo: Path, files: dict[str, str], message: str) -> str:
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=ENV)
    subprocess.run(["git", "commit", "-q", "-m", message], cwd=repo, check=True, env=ENV)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, env=ENV,
                          capture_output=True, text=True).stdout.strip()[:12]


# language -> (commits: [(label, files, message)], expected {label: (FAIL_TO_PASS, PASS_TO_PASS)})
JS_LIB = "'use strict';\nfunction clamp(x, lo, hi) {\n  return Math.max(lo, Math.min(x, hi));\n}\n" \
         "function sign(x) {\n  return x > 0 ? 1 : -1;\n}\nmodule.exports = { clamp, sign };\n"
JS_T1 = "'use strict';\nconst test = require('node:test');\nconst assert = require('node:assert');\n" \
        "const { clamp, sign } = require('../lib/num');\n\ntest('clamps', () => {\n  assert.strictEqual(clamp(5, 0, 3), 3);\n});\n"
JS_T2 = JS_T1 + "\ntest('sign of zero', () => {\n  assert.strictEqual(sign(0), 0);\n});\n"
GO_LIB = "package num\n\nfunc Clamp(x, lo, hi int) int {\n\tif x < lo {\n\t\treturn lo\n\t}\n\tif x > hi {\n\t\treturn hi\n\t}\n" \
         "\treturn x\n}\n\nfunc Sign(x int) int {\n\tif x > 0 {\n\t\treturn 1\n\t}\n\treturn -1\n}\n"
GO_T1 = "package num\n\nimport \"testing\"\n\nfunc TestClamp(t *testing.T) {\n\tif Clamp(5, 0, 3) != 3 {\n\t\tt.Fatal(\"clamp\")\n\t}\n}\n"
GO_T2 = GO_T1 + "\nfunc TestSignZero(t *testing.T) {\n\tif got := Sign(0); got != 0 {\n\t\tt.Fatalf(\"Sign(0) = %d\", got)\n\t}\n}\n"
RS_LIB = "pub fn clamp(x: i32, lo: i32, hi: i32) -> i32 {\n    x.max(lo).min(hi)\n}\n\n" \
         "pub fn sign(x: i32) -> i32 {\n    if x > 0 { 1 } else { -1 }\n}\n"
RS_T1 = "use num::{clamp, sign};\n\n#[test]\nfn clamps() {\n    assert_eq!(clamp(5, 0, 3), 3);\n}\n"
RS_T2 = RS_T1 + "\n#[test]\nfn sign_of_zero() {\n    assert_eq!(sign(0), 0);\n}\n"
HISTORIES = {
    "javascript": ({"package.json": '{"name": "num", "scripts": {"test": "node --test"}}\n', "lib/num.js": JS_LIB,
                    "test/num.test.js": JS_T1},
                   ("lib/num.js", "test/num.test.js", JS_T2, "return x > 0 ? 1 : -1;", "return x > 0 ? 1 : x < 0 ? -1 : 0;",
                    "  return Math.max(lo, Math.min(x, hi));", "  return Math.min(hi, Math.max(lo, x));",
                    "\ntest('clamps low', () => {\n  assert.strictEqual(clamp(-5, 0, 3), 0);\n});\n"),
                   (["test/num.test.js::sign of zero"], ["test/num.test.js::clamps"])),
    "go": ({"go.mod": "module example.com/num\n\ngo 1.19\n", "num/num.go": GO_LIB, "num/num_test.go": GO_T1},
           ("num/num.go", "num/num_test.go", GO_T2, "\treturn -1\n}", "\tif x < 0 {\n\t\treturn -1\n\t}\n\treturn 0\n}",
            "\treturn x\n}", "\treturn x // in range\n}",
            "\nfunc TestClampLow(t *testing.T) {\n\tif Clamp(-5, 0, 3) != 0 {\n\t\tt.Fatal(\"low\")\n\t}\n}\n"),
           (["num::TestSignZero"], ["num::TestClamp"])),
    "rust": ({"Cargo.toml": '[package]\nname = "num"\nversion = "0.1.0"\nedition = "2018"\n', "src/lib.rs": RS_LIB,
              "tests/num.rs": RS_T1},
             ("src/lib.rs", "tests/num.rs", RS_T2, "if x > 0 { 1 } else { -1 }", "x.signum()",
              "    x.max(lo).min(hi)", "    x.min(hi).max(lo)",
              "\n#[test]\nfn clamps_low() {\n    assert_eq!(clamp(-5, 0, 3), 0);\n}\n"),
             (["tests/num.rs::sign_of_zero"], ["tests/num.rs::clamps"])),
}


def _history(repo: Path, language: str) -> dict[str, str]:
    base, (src, test, test2, bug, fix, old, refactored, extra_test), _ = HISTORIES[language]
    subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True, env=ENV)
    shas = {"root": _commit(repo, dict(base), "Initial numeric helpers")}
    fixed = base[src].replace(bug, fix)
    shas["fix"] = _commit(repo, {src: fixed, test: test2}, "sign(0) returned -1\n\nZero has no sign.")
    shas["refactor"] = _commit(repo, {src: fixed.replace(old, refactored)}, "Reorder clamp")
    shas["tests_only"] = _commit(repo, {test: test2 + extra_test}, "Test clamp below the range")
    shas["no_f2p"] = _commit(repo, {src: fixed.replace(old, refactored) + "\n", test: test2 + extra_test + "\n"},
                             "Whitespace, and tests unchanged in substance")
    return shas


@pytest.mark.slow
@pytest.mark.parametrize("language", ["javascript", "go", "rust"])
def test_mining_yields_exactly_the_fix_commit(language, tmp_path):
    repo = tmp_path / f"num-{language}"
    repo.mkdir()
    shas = _history(repo, language)
    outcomes = {o.candidate_id.rsplit("__", 1)[1]: o for o in mine(repo)}
    kept = sorted(label for label, sha in shas.items() if outcomes[sha].kept)
    assert kept == ["fix"], {label: outcomes[sha].reason for label, sha in shas.items()}
    task = outcomes[shas["fix"]].task
    f2p, p2p = HISTORIES[language][2]
    assert f2p == task.FAIL_TO_PASS and p2p == task.PASS_TO_PASS
    assert task.language == language and task.environment.image == LANGUAGES[language].image
    assert task.problem_statement.startswith("sign(0) returned -1")
    assert f2p[0] in task.problem_statement
    assert HISTORIES[language][1][4] not in task.problem_statement  # never the fix
    assert outcomes[shas["refactor"]].reason == "changes source without tests"
    assert outcomes[shas["tests_only"]].reason == "changes tests only"
    assert outcomes[shas["no_f2p"]].reason == "no FAIL_TO_PASS test: the tests already pass before the fix"
