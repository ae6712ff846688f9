"""The language table: one row per language the sandbox can grade, read by the grader and by mining.

A row says which files are sources and which are tests, the default test command, the Docker
image the tests run in, which files a candidate patch may never change (they decide how tests
run), and which runner produces per-test outcomes. Python's runner is `reward.py`'s hardened pytest
runner; the others live in `lang_runners.py`:

  language     test_cmd (Environment.test_cmd)      image                 report (outside the workspace)
  python       python -m pytest                      minicoder/python:3.11 pytest JUnit XML
  javascript   node --test | tape | mocha | jest     minicoder/node:18     node:test TAP file | tape rows | our mocha
                                                                           reporter's rows | jest --json
  go           go test ./...                         minicoder/go:1.19     `go tool test2json` JSON + a sentinel file
  rust         cargo test                            minicoder/rust:1.63   libtest `--logfile` per test target

Toolchains come from Debian's packages (bookworm: nodejs 18, golang-go 1.19, rustc 1.63 + cargo,
node-tape, mocha, jest): baked into the images (envs/lang/, `lang_images.py`) and installed on the host by
`scripts/setup.sh` for the local backend, which sees the host's /usr read-only.

Test ids: `file::name` as in pytest for JavaScript (`test/a.test.js::suite > case`) and Rust
(`tests/parse.rs::module::case`; the unit tests inside the sources by their target,
`src/lib.rs::module::tests::case`); `package-dir::TestName[/subtest]` for Go (`mathx::TestMean`,
`.::TestRoot`), since Go reports tests by package, not by file. A bare path selects everything in
that file (Go: in that file's package).

This module is the sandbox layer's (the grader needs it); `tasks.mine_git` imports the table.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

# --- which files are tests --------------------------------------------------------------------


def py_is_test(path: str) -> bool:
    p = PurePosixPath(path)
    if p.suffix != ".py":
        return False
    return (p.name.startswith("test_") or p.name.endswith("_test.py") or p.name == "conftest.py"
            or any(part in ("tests", "test", "testing") for part in p.parts[:-1]))


JS_EXTS = (".js", ".mjs", ".cjs")


def js_is_test(path: str) -> bool:
    p = PurePosixPath(path)
    if not p.name.endswith(JS_EXTS):
        return False
    return (bool(re.search(r"[.\-_](test|spec)\.[cm]?js$", p.name)) or p.stem in ("test", "tests")
            or any(part in ("test", "tests", "__tests__", "spec") for part in p.parts[:-1]))


def go_is_test(path: str) -> bool:
    return path.endswith("_test.go")


def rust_is_test(path: str) -> bool:
    """Integration tests (tests/...), and a source file that is all tests (`#[cfg(test)] mod tests;`
    declares src/.../tests.rs). Unit tests *inside* a source file are guarded by `rust_tests.py`."""
    p = PurePosixPath(path)
    return p.suffix == ".rs" and (p.parts[0] == "tests" or "tests" in p.parts[1:-1]
                                  or (p.parts[0] == "src" and p.stem in ("tests", "test")))


# --- which files a candidate may not change ----------------------------------------------------
# Beyond the test files themselves: whatever changes how the tests are found, built or reported.

_JS_PROTECTED = re.compile(
    r"(^|/)(package\.json|package-lock\.json|npm-shrinkwrap\.json|yarn\.lock|\.npmrc|\.yarnrc(\.yml)?"
    r"|\.mocharc(\.[a-z]+)?|jest\.config\.[cm]?[jt]s(on)?|\.taprc|babel\.config\.[a-z]+|\.babelrc(\.[a-z]+)?"
    r"|tsconfig\.json|\.nvmrc)$|(^|/)node_modules(/|$)")
_GO_PROTECTED = re.compile(r"(^|/)(go\.mod|go\.sum|go\.work|go\.work\.sum)$|(^|/)(vendor|testdata)(/|$)")
_RUST_PROTECTED = re.compile(
    r"(^|/)(Cargo\.toml|Cargo\.lock|build\.rs|rust-toolchain(\.toml)?|\.cargo)(/|$)|^(tests|benches)/")


@dataclass(frozen=True)
class Language:
    """How to recognise, run and protect one language's tests."""

    name: str
    source_exts: tuple[str, ...]
    is_test: Callable[[str], bool]
    test_cmd: str  # the default Environment.test_cmd
    image: str  # the Docker image its tests run in
    runnable: bool = True  # the sandbox can grade it
    protected: Callable[[str], bool] = field(default=lambda p: False)  # config a patch may not change
    parse_log: Callable[[str], dict[str, str]] | None = None  # outcomes from a plain log (mining reports)

    def owns(self, path: str) -> bool:
        return path.endswith(self.source_exts)

    def guarded(self, path: str) -> bool:
        """Whether a candidate's change to `path` is undone before the tests run."""
        return self.is_test(path) or self.protected(path)


_PYTEST_LINE = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\s+(\S+)")


def parse_pytest_log(log: str) -> dict[str, str]:
    """Outcomes from `pytest -rA` summary lines (`PASSED tests/test_a.py::test_x`)."""
    mapping = {"PASSED": "passed", "FAILED": "failed", "ERROR": "error", "SKIPPED": "skipped",
               "XFAIL": "skipped", "XPASS": "passed"}
    out: dict[str, str] = {}
    for line in log.splitlines():
        m = _PYTEST_LINE.match(line.strip())
        if m:
            out[m.group(2)] = mapping[m.group(1)]
    return out


_GO_LINE = re.compile(r"^\s*--- (PASS|FAIL|SKIP): (\S+)")


def parse_go_log(log: str) -> dict[str, str]:
    """Outcomes from `go test -v` (`--- PASS: TestName (0.00s)`); for reading logs, never for grading."""
    mapping = {"PASS": "passed", "FAIL": "failed", "SKIP": "skipped"}
    return {m.group(2): mapping[m.group(1)] for m in map(_GO_LINE.match, log.splitlines()) if m}


LANGUAGES: dict[str, Language] = {
    "python": Language("python", (".py",), py_is_test, "python -m pytest", "minicoder/python:3.11",
                       parse_log=parse_pytest_log),
    "go": Language("go", (".go",), go_is_test, "go test ./...", "minicoder/go:1.19",
                   protected=lambda p: bool(_GO_PROTECTED.search(p)), parse_log=parse_go_log),
    "javascript": Language("javascript", JS_EXTS, js_is_test, "node --test", "minicoder/node:18",
                           protected=lambda p: bool(_JS_PROTECTED.search(p))),
    "rust": Language("rust", (".rs",), rust_is_test, "cargo test", "minicoder/rust:1.63",
                     protected=lambda p: bool(_RUST_PROTECTED.search(p))),
}


def classify(path: str) -> tuple[str | None, bool]:
    """(language name or None, is a test file)."""
    for lang in LANGUAGES.values():
        if lang.owns(path):
            return lang.name, lang.is_test(path)
    return None, False


def language_of(task) -> Language:
    """The row of a task's language (`Task.language`, default "python"); ValueError if unknown."""
    name = getattr(task, "language", "python") or "python"
    try:
        return LANGUAGES[name]
    except KeyError:
        raise ValueError(f"{task.instance_id}: language {name!r} is not one of {sorted(LANGUAGES)}") from None


def image_for_language(name: str) -> str:
    return LANGUAGES[name].image


def protect_language(ws, changed: list[str], test_patch: str, lang: Language) -> list[str]:
    """The non-Python counterpart of `patching.protect`: undo the candidate's changes to the
    language's test files and protected configuration (and to the files of the test_patch), then
    apply the test_patch fresh. Rust source files the candidate changed keep its code but get the
    reference's test items back (`rust_tests.with_reference_tests`; the reference is the base file
    with the test_patch applied), or, when that cannot be done safely, the reference file whole.
    Returns the paths whose changes were (partly) dropped."""
    from minicoder.gitdiff import patch_files
    from minicoder.sandbox.patching import protect, restore_path

    test_files = set(patch_files(test_patch)) if test_patch.strip() else set()
    dropped = []
    inline: dict[str, tuple[bytes, bytes]] = {}  # Rust sources the candidate changed: (its version, base)
    for rel in changed:
        path = ws / rel
        if (lang.name == "rust" and rel.endswith(".rs") and not lang.guarded(rel) and path.is_file()
                and not path.is_symlink()):
            candidate = path.read_bytes()
            restore_path(ws, rel)
            inline[rel] = (candidate, path.read_bytes() if path.is_file() else b"")
        elif rel in test_files or lang.guarded(rel) or any(rel.startswith(t + "/") for t in test_files):
            restore_path(ws, rel)
            dropped.append(rel)
    protect(ws, [], test_patch, [])  # applies the test_patch (and drops stray bytecode)
    for rel, (candidate, base) in inline.items():
        _put_back_rust_source(ws, rel, candidate, base, dropped)
    return dropped


def _put_back_rust_source(ws, rel: str, candidate: bytes, base: bytes, dropped: list[str]) -> None:
    """Write the candidate's `rel` with the reference's test items (now in the workspace) into the
    workspace; `rel` joins `dropped` when the candidate had changed its test items (or the file
    could not be merged, and the reference stays)."""
    import os

    from minicoder.sandbox.patching import _safe_parent
    from minicoder.sandbox.rust_tests import same_tests, with_reference_tests

    path = ws / rel
    reference = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
    merged = with_reference_tests(candidate, reference)
    if merged is None:  # unparsable, or it cannot be given the reference's tests: the reference stays
        dropped.append(rel)
        return
    if not same_tests(candidate, base):
        dropped.append(rel)
    if merged == reference and path.is_file():
        return
    parent = _safe_parent(ws, rel, create=True)
    target = parent / path.name
    if target.is_symlink() or target.exists():
        target.unlink()
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(merged)


def test_cmd_for(name: str, package_json: str | None = None) -> str:
    """The Environment.test_cmd for a repository of language `name`. JavaScript: `jest`, `mocha` or
    `tape test/*.js` when its package.json's test script names that runner (else when it is a
    dependency), else node's built-in runner."""
    if name == "javascript" and package_json:
        import json

        try:
            meta = json.loads(package_json)
        except ValueError:
            meta = {}
        if isinstance(meta, dict):
            scripts = meta.get("scripts") if isinstance(meta.get("scripts"), dict) else {}
            script = str(scripts.get("test", ""))
            deps: dict = {}
            for key in ("dependencies", "devDependencies"):
                if isinstance(meta.get(key), dict):
                    deps.update(meta[key])
            for found in ([r for r in JS_TEST_RUNNERS if re.search(rf"\b{r}\b", script)], [r for r in JS_TEST_RUNNERS if r in deps]):
                if found:
                    return JS_TEST_RUNNERS[found[0]]
    return LANGUAGES[name].test_cmd


# JavaScript runners other than node's own, in the order they are looked for: the test command each gets
JS_TEST_RUNNERS = {"jest": "jest", "mocha": "mocha", "tape": "tape test/*.js"}
