"""Hardened test runners for JavaScript, Go and Rust: per-test outcomes from reports outside the workspace.

`run_language_tests(sb, task, lang, ids, limits, tr)` is what `reward.run_tests` calls for a task
whose language is not Python, after the patch is applied and the hidden tests are restored. It
plans "units" (one test process each: a JavaScript test file, a Go package, a Rust test target),
runs them with one shell script in the sandbox, reads the reports back from the report directory
(mounted at /report, outside the workspace, under a random folder name) and judges them:

  javascript  `node --test-reporter=tap --test-reporter-destination=R FILE` per file (node:test, in
              process), or for tape suites `node -r PRELOAD FILE` with a preload of ours that routes
              tape's result stream (objectMode rows) to R and marks its end. mocha and jest run once
              for all the files: `mocha --reporter OURS --exit FILES` (a
              reporter of ours writes one JSON row per test with its title path, then an end row)
              and `jest --ci --runInBand --reporters OURS --runTestsByPath --forceExit FILES` (ours
              writes jest's `--json` report); both take the report path from a variable they
              delete before any test file loads;
  go          two steps. First `go test -c -vet=off` per package, with an overlay that adds a
              sentinel test of ours (`TestMinicoderSentinel`, in an external test package) writing
              a marker file whose random name is compiled into it; the overlay and the sentinel
              source are then deleted by the host. Second the compiled binaries run (`-test.v
              -test.paniconexit0`, output to a file) and `go tool test2json` turns that output into
              events afterwards: test2json's events are the report, the
              marker proves the binary reached its tests (an `os.Exit(0)` in `init` after printing
              fake `--- PASS` lines leaves no marker);
  rust        two steps. `cargo test --offline --no-run` builds the test targets (build scripts and
              Cargo.toml are protected, so nothing of the candidate's runs here), then each target's
              binary runs with `--logfile R --test-threads=1 [--exact NAMES]`. The targets: each
              integration-test file (`tests/NAME.rs`) and, for the unit tests inside the sources
              (`#[cfg(test)] mod tests` in src/*.rs), the library (`src/lib.rs`, ids
              `src/lib.rs::module::tests::name`) or the binary (`src/main.rs`).

Compiling first, then running, means a compile error is an honest failure (the unit's tests are
missing, so they count as failed) and never a verdict on output the code under test printed.

Cross-checks, per test process, are pytest's (`verdict.exit_mismatch`; any one fails the whole run
with status "report_mismatch"): exit status 0 with a failing test in the report; a non-zero exit
status with a complete report and no failure; exit status 0 with an incomplete report (the runner
never reached its end: TAP's closing plan, tape's and our mocha reporter's end row, every requested
file in jest's report, Go's sentinel, every requested Rust test in the log). A requested test
missing from every report counts as failed (in `evaluate`).

Residual risk, as for Python: code that runs inside the test process can read our helper files or
its own binary and forge a report in memory or on disk (the report folder can be listed, and
mocha's and jest's report file is open in the process); the random names, the report paths kept
out of the arguments and environment (tape, mocha, jest), the host-side deletion of the Go
sentinel source and the exit-status cross-checks make that harder, not impossible. Rust unit tests
inside the sources compile the code under test with `cfg(test)`; `rust_tests.py` refuses a
candidate's new `cfg(test)` mentions, but a macro could still tell test builds apart.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
import secrets
import shlex
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from minicoder.sandbox.base import REPORT_DIR, WORKSPACE, ExecResult
from minicoder.sandbox.junit import CaseResult, ReportError
from minicoder.sandbox.lang_reports import (
    parse_go_json,
    parse_jest_json,
    parse_libtest_log,
    parse_mocha_rows,
    parse_node_tap,
    parse_tape_rows,
)
from minicoder.sandbox.languages import Language
from minicoder.sandbox.status import Status
from minicoder.sandbox.verdict import exit_mismatch, limit_verdict

SENTINEL = "TestMinicoderSentinel"
# Added to each Go package under test through `-overlay` (never written into the workspace).
GO_SENTINEL = """package {pkg}_test

import (
\t"os"
\t"testing"
)

func {name}(t *testing.T) {{
\tif err := os.WriteFile({marker}, []byte("ok"), 0644); err != nil {{
\t\tt.Fatal(err)
\t}}
}}
"""

# The environment each toolchain gets on top of the sandbox's base environment: offline, no user
# config, caches under the private /tmp or the report folder, no colour codes, few threads.
ENV: dict[str, dict[str, str]] = {
    "javascript": {"NODE_PATH": "/usr/share/nodejs:/usr/lib/nodejs", "NO_COLOR": "1", "FORCE_COLOR": "0",
                   "NODE_DISABLE_COLORS": "1", "UV_THREADPOOL_SIZE": "2"},
    "go": {"GOCACHE": "/tmp/go-build", "GOPATH": "/tmp/go", "GOPROXY": "off", "GOSUMDB": "off",
           "GOFLAGS": "-mod=mod", "GOWORK": "off", "GOTOOLCHAIN": "local", "GOENV": "off", "GO111MODULE": "on",
           "CGO_ENABLED": "0", "GOMAXPROCS": "2", "GOTELEMETRY": "off"},
    "rust": {"CARGO_HOME": "/tmp/cargo", "CARGO_NET_OFFLINE": "true", "CARGO_BUILD_JOBS": "2",
             "CARGO_INCREMENTAL": "0", "CARGO_TERM_COLOR": "never", "CARGO_PROFILE_DEV_DEBUG": "false",
             "CARGO_PROFILE_TEST_DEBUG": "false", "RUST_BACKTRACE": "0", "RUST_TEST_THREADS": "1"},
}

# Routes tape's results to the report file and marks the end; deletes its own variable so the code
# under test does not find the report path in its environment.
TAPE_PRELOAD = r"""'use strict';
const fs = require('fs');
const out = process.env.MINICODER_TAPE_OUT;
delete process.env.MINICODER_TAPE_OUT;
const fd = fs.openSync(out, 'w');
const tape = require('tape');
const rows = tape.createStream({ objectMode: true });
rows.on('data', (row) => {
  try { fs.writeSync(fd, JSON.stringify(row, (k, v) => (typeof v === 'bigint' ? String(v) : v)) + '\n'); }
  catch (e) { fs.writeSync(fd, JSON.stringify({ type: row.type, ok: row.ok, id: row.id, test: row.test, name: String(row.name) }) + '\n'); }
});
rows.on('end', () => { fs.writeSync(fd, JSON.stringify({ type: 'minicoder.end' }) + '\n'); });
"""


# Loaded (`node -r`) before any test file: freezes node's assertion and test modules, so code under
# test cannot neuter them (`require('assert').strictEqual = () => {}`). (tape's Test.prototype cannot
# be frozen: tape assigns bound copies of its methods onto each test, which a frozen prototype forbids.)
JS_FREEZE = r"""'use strict';
for (const name of ['assert', 'assert/strict', 'node:test']) {
  let m;
  try { m = require(name); } catch (e) { continue; }
  Object.freeze(m);
  if (m.strict) Object.freeze(m.strict);
  if (m.AssertionError) Object.freeze(m.AssertionError.prototype);
}
"""


# The reporter mocha loads (`--reporter PATH`): one JSON row per finished test (its title path, its
# file, pass / fail / pending), then an end row when the run ends. Mocha's own JSON reporter joins
# titles with spaces (ambiguous ids). Mocha loads its reporter before any test file: the report
# path comes in a variable that is deleted then, so the code under test finds it in neither its
# environment nor its arguments.
MOCHA_REPORTER = r"""'use strict';
const fs = require('fs');
const out = process.env.MINICODER_REPORT_OUT;
delete process.env.MINICODER_REPORT_OUT;
const fd = fs.openSync(out, 'w');
function MinicoderReporter(runner) {
  const row = (obj) => { fs.writeSync(fd, JSON.stringify(obj) + '\n'); };
  const file = (t) => t.file || (t.parent && t.parent.file) || '';
  const title = (t) => { try { return t.titlePath().map(String); } catch (e) { return [String(t.title)]; } };
  runner.on('pass', (t) => row({ type: 'test', state: 'passed', file: file(t), path: title(t) }));
  runner.on('pending', (t) => row({ type: 'test', state: 'skipped', file: file(t), path: title(t) }));
  runner.on('fail', (t, err) => row({ type: 'test', state: 'failed', file: file(t), path: title(t),
    message: String((err && err.message) || err).slice(0, 500) }));
  runner.once('end', () => row({ type: 'end', failures: runner.failures }));
}
module.exports = MinicoderReporter;
"""

# Loaded twice in jest's own process: first with `node -r` (before jest: it takes the report path
# from its variable and deletes that, as for mocha), then by jest as a reporter (`--reporters`),
# the same module instance. At the end of the run it writes jest's JSON report (the format of
# `--json`). Before that, Debian's jest reads `process.config.variables.node_relative_path` (a
# setting of Debian's own Node build) to find /usr/share/nodejs; a host's Node from elsewhere lacks
# it, so it is filled in (a no-op on Debian's Node, the task images').
JEST_REPORTER = r"""'use strict';
const fs = require('fs');
const v = process.config.variables || {};
if (v.node_relative_path === undefined) {
  Object.defineProperty(process, 'config', { enumerable: true, value: Object.freeze({ ...process.config,
    variables: Object.freeze({ ...v, node_relative_path: 'lib/nodejs:share/nodejs', node_prefix: '/usr' }) }) });
}
let fd = null;
if (process.env.MINICODER_REPORT_OUT) {
  fd = fs.openSync(process.env.MINICODER_REPORT_OUT, 'w');
  delete process.env.MINICODER_REPORT_OUT;
}
class MinicoderReporter {
  onRunComplete(contexts, results) {
    const { formatTestResults } = require('@jest/test-result');
    fs.writeSync(fd, JSON.stringify(formatTestResults(results)));
  }
}
module.exports = MinicoderReporter;
"""
JS_RUNNERS = ("node", "tape", "mocha", "jest")
BATCH_RUNNERS = ("mocha", "jest")  # one process for every test file (their start-up is the cost)


@dataclass
class Unit:
    """One test file or target: a JavaScript file, a Go package directory, a Rust test target."""

    key: str  # the file, or (Go) the package directory, or (Rust) the target's root file
    names: list[str] = field(default_factory=list)  # requested tests in it ([] = all of them)
    runner: str = ""  # javascript: "node" | "tape" | "mocha" | "jest"


@dataclass
class Run:
    """The evidence of one test process: the units it ran, its exit status and its report."""

    units: list[Unit]
    rc: int | None = None
    data: bytes | None = None
    build: str = ""  # why it never ran (the unit did not compile)
    marker: bool = False  # Go: the sentinel test ran

    @property
    def label(self) -> str:
        if len(self.units) == 1:
            return self.units[0].key
        return f"{self.units[0].runner} run of {len(self.units)} files"


def js_runner(test_cmd: str) -> str:
    argv = shlex.split(test_cmd)
    for name in ("tape", "mocha", "jest"):
        if argv[:1] == [name] or (len(argv) > 1 and argv[0] in ("npx", "node") and name in argv[1]):
            return name
    if argv[:1] == ["node"] and "--test" in argv:
        return "node"
    raise ValueError(f"environment.test_cmd {test_cmd!r} is not a JavaScript runner we can grade "
                     "(`node --test ...`, `tape ...`, `mocha ...` or `jest ...`)")


def check_test_cmd(lang: Language, task) -> None:
    """ValueError when the task's test command is not one this language's runner grades."""
    cmd = task.environment.test_cmd
    first = shlex.split(cmd)[:2] if cmd.strip() else []
    if lang.name == "javascript":
        js_runner(cmd)
    elif lang.name == "go" and first != ["go", "test"]:
        raise ValueError(f"{task.instance_id}: environment.test_cmd {cmd!r} is not `go test ...`")
    elif lang.name == "rust" and first != ["cargo", "test"]:
        raise ValueError(f"{task.instance_id}: environment.test_cmd {cmd!r} is not `cargo test ...`")


def plan_units(lang: Language, ids: list[str], ws: Path, test_cmd: str) -> list[Unit]:
    """Group test ids (or bare file paths) into units, in a stable order."""
    units: dict[str, Unit] = {}
    whole: set[str] = set()
    for tid in ids:
        path, _, name = tid.partition("::")
        if lang.name == "rust" and not name and not _rust_target_file(path):
            continue  # a helper module beside the tests (tests/util/mod.rs), not a test target
        if lang.name == "go":
            key = path if name else (str(PurePosixPath(path).parent) if path.endswith(".go") else path)
            key = key or "."
            name = name.split("/", 1)[0]
        else:
            key = path
        u = units.setdefault(key, Unit(key, runner=js_runner(test_cmd) if lang.name == "javascript" else ""))
        if not name:
            whole.add(key)
        elif name not in u.names:
            u.names.append(name)
    for key in whole:
        units[key].names = []
    return [units[k] for k in sorted(units)]


def default_units(lang: Language, ws: Path) -> list[str]:
    """Every test file of the workspace (the selector when a task names none); for Rust also the
    library or binary target when the sources hold unit tests."""
    out = []
    unit_tests = False
    for dirpath, dirnames, filenames in os.walk(ws):
        dirnames[:] = [d for d in dirnames if d not in (".git", "node_modules", "target", "vendor", "testdata")]
        for n in filenames:
            rel = os.path.relpath(os.path.join(dirpath, n), ws)
            if lang.is_test(rel) and (lang.name != "rust" or _rust_target_file(rel)):
                out.append(rel)
            elif lang.name == "rust" and rel.startswith("src/") and n.endswith(".rs") and not unit_tests:
                unit_tests = "#[test]" in (ws / rel).read_text(errors="replace")
    if unit_tests:
        out += [t for t in ("src/lib.rs", "src/main.rs") if (ws / t).is_file()][:1]
    return sorted(out)


# --- host-side files in the report directory ------------------------------------------------------

def _read(path: Path, cap: int = 32 * 2**20) -> bytes | None:
    """A file the sandbox wrote, only if it is a regular file (never follows a symlink)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        return fh.read(cap + 1)


def _rc(path: Path) -> int | None:
    data = _read(path, 64)
    try:
        return int(data.decode().strip()) if data else None
    except ValueError:
        return None


def _dirs(sb) -> tuple[Path, Path, str]:
    """(report folder the sandbox writes, helper folder it may only read, their name)."""
    name = secrets.token_hex(12)
    out, helpers = sb.report_dir / name, sb.report_dir / f"{name}-h"
    out.mkdir()
    helpers.mkdir()
    st = os.stat(sb.report_dir)
    with contextlib.suppress(PermissionError):
        os.chown(out, st.st_uid, st.st_gid)  # writable by the sandbox user, like the report dir
    os.chmod(out, 0o755)
    os.chmod(helpers, 0o755)  # ours: the sandbox user can read, not change, what we put there
    return out, helpers, name


def _helper(helpers: Path, name: str, text: str) -> str:
    p = helpers / name
    p.write_text(text)
    os.chmod(p, 0o444)
    return f"{REPORT_DIR}/{helpers.name}/{name}"


def _go_package_name(ws: Path, d: str) -> str:
    names = []
    for p in sorted((ws / d).glob("*.go")):
        m = re.search(r"^package\s+(\w+)", p.read_text(errors="replace"), re.M)
        if m:
            names.append((p.name.endswith("_test.go"), m.group(1)))
    names.sort()
    name = names[0][1] if names else "main"
    return name[:-5] if name.endswith("_test") else name


# --- the runs ----------------------------------------------------------------------------------------

def _sh(lines: list[str]) -> list[str]:
    return ["/bin/sh", "-c", "\n".join(lines)]


def _record(cmd: str, out: str, tag: str | int, log: str = "out") -> str:
    """One test process's shell line: its output to a file (not a pipe: a daemon the code under test
    leaves behind holds that file open, not a pipe something waits on), its exit status to TAG.rc."""
    return f"{cmd} > {out}/{tag}.{log} 2>&1; echo $? > {out}/{tag}.rc; cat {out}/{tag}.{log}"


def _js_script(units: list[Unit], out: str, helpers: dict[str, str]) -> tuple[list[str], list[Run]]:
    """The shell lines and the runs they make: a process per file (node, tape), or one for all (mocha, jest)."""
    lines = [f"cd {WORKSPACE}"]
    freeze = helpers["freeze"]
    runner = units[0].runner
    if runner in BATCH_RUNNERS:
        files = " ".join(shlex.quote(u.key) for u in units)
        if runner == "mocha":
            cmd = (f"MINICODER_REPORT_OUT={out}/0.rep mocha --require {freeze} --reporter {helpers['mocha']} "
                   f"--exit --no-parallel --no-colors -- {files}")
        else:
            cmd = (f"MINICODER_REPORT_OUT={out}/0.rep node -r {helpers['jest']} -r {freeze} "
                   f"/usr/share/nodejs/jest/bin/jest.js --ci --runInBand --reporters=default "
                   f"--reporters={helpers['jest']} --runTestsByPath --forceExit --watchman=false "
                   f"--cacheDirectory=/tmp/jest-cache -- {files}")
        return [*lines, _record(cmd, out, 0)], [Run(units)]
    for i, u in enumerate(units):
        f = shlex.quote(u.key)
        if u.runner == "tape":
            cmd = f"MINICODER_TAPE_OUT={out}/{i}.rep node -r {helpers['tape']} -r {freeze} {f}"
        else:
            cmd = f"node -r {freeze} --test-reporter=tap --test-reporter-destination={out}/{i}.rep {f}"
        lines.append(_record(cmd, out, i))
    return lines, [Run([u]) for u in units]


def lock_guarded(ws: Path, lang: Language) -> int:
    """Make the test and configuration files (and their folders) root-owned and read-only for the run,
    so code under test cannot rewrite a test file that a later test process loads. Root hosts only
    (elsewhere the sandbox runs as our own uid); `Sandbox.finalize_workspace` re-owns them after."""
    if os.geteuid() != 0:
        return 0
    n = 0
    dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(ws):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        for name in filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, ws)
            if lang.guarded(rel) and not os.path.islink(p):
                os.lchown(p, 0, 0)
                os.chmod(p, 0o444)
                dirs.add(dirpath)
                n += 1
    for d in dirs:
        os.lchown(d, 0, 0)
        os.chmod(d, 0o755)
    return n


def _go_regex(names: list[str]) -> str:
    return "^(" + "|".join(re.escape(n) for n in [*names, SENTINEL]) + ")$"


def run_language_tests(sb, task, lang: Language, ids: list[str], limits, tr) -> None:
    """Run the units of `ids` (default: every test file) in `sb` and judge them into `tr` (a TestRun)."""
    check_test_cmd(lang, task)
    ws = sb.workspace
    selectors = ids or default_units(lang, ws)
    units = plan_units(lang, selectors, ws, task.environment.test_cmd)
    if not units:
        tr.status, tr.message = Status.NO_TESTS, "no test files to run"
        return
    out, helpers, name = _dirs(sb)
    o = f"{REPORT_DIR}/{name}"
    env = ENV[lang.name]
    if lang.name == "javascript":
        paths = {"freeze": _helper(helpers, "freeze.js", JS_FREEZE)}
        runner = units[0].runner
        if runner == "tape":
            paths["tape"] = _helper(helpers, "tape_preload.js", TAPE_PRELOAD)
        elif runner == "mocha":
            paths["mocha"] = _helper(helpers, "mocha_reporter.js", MOCHA_REPORTER)
        elif runner == "jest":
            paths["jest"] = _helper(helpers, "jest_reporter.js", JEST_REPORTER)
        lines, runs = _js_script(units, o, paths)
        lock_guarded(ws, lang)
        try:
            res = sb.run(_sh(lines), timeout_s=limits.timeout_s, env=env)
        finally:
            sb.finalize_workspace()
        for i, run in enumerate(runs):
            run.rc, run.data = _rc(out / f"{i}.rc"), _read(out / f"{i}.rep")
        tr.exec = res
        _judge_runs(tr, res, runs, lang)
        return
    token = secrets.token_hex(16)
    lines = [f"cd {WORKSPACE}", f"mkdir -p {o}/bin"]
    if lang.name == "go":
        for i, u in enumerate(units):
            src = GO_SENTINEL.format(pkg=_go_package_name(ws, u.key), name=SENTINEL,
                                     marker=json.dumps(f"{o}/{token}.{i}"))
            sentinel = _helper(helpers, f"{i}_sentinel_test.go", src)
            overlay = _helper(helpers, f"{i}.json", json.dumps(
                {"Replace": {posixpath.normpath(f"{WORKSPACE}/{u.key}/zz_minicoder_sentinel_test.go"): sentinel}}))
            lines.append(f"go test -c -vet=off -o {o}/bin/{i}.test -overlay {overlay} ./{shlex.quote(u.key)} "
                         f"> {o}/{i}.build 2>&1; echo $? > {o}/{i}.brc")
    else:
        targets = " ".join(sorted({_rust_selector(u.key) for u in units}))
        lines.append(f"CARGO_TARGET_DIR={o}/target cargo test --offline --no-run --message-format=json "
                     f"{targets} > {o}/build.json 2> {o}/build.err; echo $? > {o}/build.rc")
    res = sb.run(_sh(lines), timeout_s=limits.timeout_s, env=env)
    for p in helpers.iterdir():  # the sentinel's source (and its marker name) go before any test runs
        p.unlink()
    runs = [Run([u]) for u in units]
    if res.timed_out or res.oom_killed:
        tr.exec = res
        _judge_runs(tr, res, runs, lang)
        return
    executables = _rust_executables(out) if lang.name == "rust" else {}
    lines = []
    for i, (u, run) in enumerate(zip(units, runs)):
        if lang.name == "go":
            if _rc(out / f"{i}.brc") != 0 or not (out / "bin" / f"{i}.test").is_file():
                run.build = (_read(out / f"{i}.build", 4000) or b"").decode(errors="replace")[-800:] or "build failed"
                continue
            sel = f"-test.run {shlex.quote(_go_regex(u.names))}" if u.names else ""
            # the binary writes to a file that test2json converts afterwards (a daemon left holding
            # the binary's stdout would keep a pipe to test2json open until the time limit)
            lines.append(f"cd {WORKSPACE}/{shlex.quote(u.key)} && {o}/bin/{i}.test -test.v=true -test.paniconexit0 "
                         f"-test.count=1 {sel} > {o}/{i}.raw 2>&1; echo $? > {o}/{i}.rc; "
                         f"go tool test2json -p {shlex.quote(u.key)} < {o}/{i}.raw > {o}/{i}.rep; cat {o}/{i}.raw")
        else:
            exe = executables.get(u.key)
            if exe is None:
                run.build = (_read(out / "build.err", 8000) or b"").decode(errors="replace")[-800:] or "build failed"
                continue
            names = (" --exact " + " ".join(shlex.quote(n) for n in u.names)) if u.names else ""
            lines.append(f"cd {WORKSPACE} && " + _record(
                f"{shlex.quote(exe)} --logfile {o}/{i}.rep --test-threads=1{names}", o, i))
    if lines:
        res = sb.run(_sh(lines), timeout_s=limits.timeout_s, env=env)
    else:
        res = ExecResult(exit_code=1, stdout="", stderr="\n".join(r.build for r in runs))
    tr.exec = res
    for i, run in enumerate(runs):
        if not run.build:
            run.rc, run.data = _rc(out / f"{i}.rc"), _read(out / f"{i}.rep")
            run.marker = lang.name == "go" and (out / f"{token}.{i}").is_file()
    _judge_runs(tr, res, runs, lang)


# --- Rust targets ----------------------------------------------------------------------------------------

RUST_UNIT_TARGETS = {"src/lib.rs": "--lib", "src/main.rs": "--bins"}  # unit tests inside the sources


def _rust_target_file(path: str) -> bool:
    """tests/NAME.rs or tests/NAME/main.rs (integration tests), src/lib.rs or src/main.rs (the unit
    tests in the sources): the files Cargo makes test targets of."""
    p = PurePosixPath(path)
    if path in RUST_UNIT_TARGETS:
        return True
    return p.parts[:1] == ("tests",) and p.suffix == ".rs" and (
        len(p.parts) == 2 or (len(p.parts) == 3 and p.name == "main.rs"))


def _rust_selector(path: str) -> str:
    """The `cargo test` option that builds the target of `path`."""
    if path in RUST_UNIT_TARGETS:
        return RUST_UNIT_TARGETS[path]
    p = PurePosixPath(path)
    return "--test " + shlex.quote(p.parent.name if p.name == "main.rs" and len(p.parts) == 3 else p.stem)


def _rust_executables(out: Path) -> dict[str, str]:
    """{target's root file (relative): test executable in the sandbox} from cargo's JSON messages."""
    exes: dict[str, str] = {}
    for line in (_read(out / "build.json") or b"").decode(errors="replace").splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if not (isinstance(msg, dict) and msg.get("reason") == "compiler-artifact" and msg.get("executable")
                and (msg.get("profile") or {}).get("test")):
            continue
        exe, src = str(msg["executable"]), str((msg.get("target") or {}).get("src_path", ""))
        if exe.startswith(REPORT_DIR + "/") and src.startswith(WORKSPACE + "/"):
            exes[posixpath.relpath(src, WORKSPACE)] = exe
    return exes


# --- judging -----------------------------------------------------------------------------------------

def _parse(run: Run, lang: Language):
    """(cases, complete) of one run's report."""
    data, u = run.data or b"", run.units[0]
    if lang.name == "javascript":
        if u.runner == "mocha":
            return parse_mocha_rows(data, WORKSPACE)
        if u.runner == "jest":
            return parse_jest_json(data, [x.key for x in run.units], WORKSPACE)
        return (parse_tape_rows if u.runner == "tape" else parse_node_tap)(data, u.key)
    if lang.name == "go":
        return parse_go_json(data, u.key, ignore=(SENTINEL,))[0], run.marker
    cases, _ = parse_libtest_log(data, u.key)
    return cases, (all(f"{u.key}::{n}" in cases for n in u.names) if u.names else run.rc == 0)


def _judge_runs(tr, res: ExecResult, runs: list[Run], lang: Language) -> None:
    limit = limit_verdict(res)
    if limit:
        tr.status, tr.message = limit
        return
    outcomes: dict[str, CaseResult] = {}
    problems: list[str] = []
    build_failures: list[str] = []
    for run in runs:
        if run.build:
            build_failures.append(f"{run.label}: build failed: {run.build.strip()[-300:]}")
            continue
        try:
            cases, complete = _parse(run, lang)
        except ReportError as e:
            problems.append(f"{run.label}: unreadable report: {e}")
            continue
        bad = [k for k, v in cases.items() if v.outcome in ("failed", "error")]
        why = exit_mismatch(run.rc, len(bad), complete)
        if why:
            problems.append(f"{run.label}: {why}")
        for k, v in cases.items():
            prev = outcomes.get(k)
            if prev is None or v.outcome in ("failed", "error"):
                outcomes[k] = v
    tr.outcomes = {k: v.outcome for k, v in outcomes.items()}
    tr.messages = {k: v.message for k, v in outcomes.items() if v.message}
    if problems:
        tr.status, tr.message = Status.REPORT_MISMATCH, "; ".join(problems)[:1000]
    elif not outcomes:
        if build_failures:
            tr.status, tr.message = Status.NO_REPORT, "; ".join(build_failures)[:1000]
        else:
            tr.status, tr.message = Status.NO_TESTS, f"the reports hold no test cases ({res.summary()})"
    else:
        tr.status = Status.OK
        if build_failures:
            tr.message = "; ".join(build_failures)[:1000]
