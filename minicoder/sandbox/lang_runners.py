"""Hardened test runners for JavaScript, Go and Rust: per-test outcomes from reports outside the workspace.

`run_language_tests(sb, task, lang, ids, limits, tr)` is what `reward.run_tests` calls for a task
whose language is not Python, after the patch is applied and the hidden tests are restored. It
plans "units" (one test process each: a JavaScript test file, a Go package, a Rust test target),
runs them with one shell script in the sandbox, reads the reports back from the report directory
(mounted at /report, outside the workspace, under a random folder name) and judges them:

  javascript  `node --test-reporter=tap --test-reporter-destination=R FILE` per file (node:test, in
              process), or for tape suites `node -r PRELOAD FILE` with a preload of ours that routes
              tape's result stream (objectMode rows) to R and marks its end;
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
              binary runs with `--logfile R --test-threads=1 [--exact NAMES]`.

Compiling first, then running, means a compile error is an honest failure (the unit's tests are
missing, so they count as failed) and never a verdict on output the code under test printed.

Cross-checks, per unit, as for pytest (any one fails the whole run with status "report_mismatch"):
exit status 0 with a failing test in the report; a non-zero exit status with a complete report and
no failure; exit status 0 with an incomplete report (the runner never reached its end: TAP's
closing plan, tape's end row, Go's sentinel, every requested Rust test in the log). A requested
test missing from every report counts as failed (in `evaluate`).

Residual risk, as for Python: code that runs inside the test process can read our helper files or
its own binary and forge a report in memory or on disk; the random names, the host-side deletion
of the Go sentinel source and the exit-status cross-checks make that harder, not impossible.
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
from minicoder.sandbox.lang_reports import parse_go_json, parse_libtest_log, parse_node_tap, parse_tape_rows
from minicoder.sandbox.languages import Language
from minicoder.sandbox.status import Status

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


@dataclass
class Unit:
    """One test process: a JavaScript file, a Go package directory, a Rust integration-test file."""

    key: str  # the file, or (Go) the package directory
    names: list[str] = field(default_factory=list)  # requested tests in it ([] = all of them)
    runner: str = ""  # javascript: "node" | "tape"


def js_runner(test_cmd: str) -> str:
    argv = shlex.split(test_cmd)
    if argv[:1] == ["tape"] or (len(argv) > 1 and argv[0] in ("npx", "node") and "tape" in argv[1]):
        return "tape"
    if argv[:1] == ["node"] and "--test" in argv:
        return "node"
    raise ValueError(f"environment.test_cmd {test_cmd!r} is not a JavaScript runner we can grade "
                     "(`node --test ...` or `tape ...`)")


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
    """Every test file of the workspace (the selector when a task names none)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(ws):
        dirnames[:] = [d for d in dirnames if d not in (".git", "node_modules", "target", "vendor", "testdata")]
        for n in filenames:
            rel = os.path.relpath(os.path.join(dirpath, n), ws)
            if lang.is_test(rel) and (lang.name != "rust" or _rust_target_file(rel)):
                out.append(rel)
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


def _js_script(units: list[Unit], out: str, freeze: str, tape: str | None) -> list[str]:
    lines = [f"cd {WORKSPACE}"]
    for i, u in enumerate(units):
        f = shlex.quote(u.key)
        # output to a file, not a pipe: a daemon the code under test leaves behind holds that file open,
        # not a pipe something waits on
        if u.runner == "tape":
            lines.append(f"MINICODER_TAPE_OUT={out}/{i}.rep node -r {tape} -r {freeze} {f} > {out}/{i}.out 2>&1; "
                         f"echo $? > {out}/{i}.rc; cat {out}/{i}.out")
        else:
            lines.append(f"node -r {freeze} --test-reporter=tap --test-reporter-destination={out}/{i}.rep {f} "
                         f"> {out}/{i}.out 2>&1; echo $? > {out}/{i}.rc; cat {out}/{i}.out")
    return lines


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
    built: dict[int, str] = {}  # unit index -> the executable to run (go, rust)
    build_msg: dict[int, str] = {}
    if lang.name == "javascript":
        tape = _helper(helpers, "tape_preload.js", TAPE_PRELOAD) if any(u.runner == "tape" for u in units) else None
        freeze = _helper(helpers, "freeze.js", JS_FREEZE)
        lock_guarded(ws, lang)
        try:
            res = sb.run(_sh(_js_script(units, o, freeze, tape)), timeout_s=limits.timeout_s, env=env)
        finally:
            sb.finalize_workspace()
    else:
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
            targets = " ".join(f"--test {shlex.quote(_rust_target(u.key))}" for u in units)
            lines.append(f"CARGO_TARGET_DIR={o}/target cargo test --offline --no-run --message-format=json "
                         f"{targets} > {o}/build.json 2> {o}/build.err; echo $? > {o}/build.rc")
        res = sb.run(_sh(lines), timeout_s=limits.timeout_s, env=env)
        for p in helpers.iterdir():  # the sentinel's source (and its marker name) go before any test runs
            p.unlink()
        if res.timed_out or res.oom_killed:
            tr.exec = res
            _judge_units(tr, res, {}, units, lang)
            return
        executables = _rust_executables(out) if lang.name == "rust" else {}
        lines = []
        for i, u in enumerate(units):
            if lang.name == "go":
                brc = _rc(out / f"{i}.brc")
                if brc != 0 or not (out / "bin" / f"{i}.test").is_file():
                    build_msg[i] = (_read(out / f"{i}.build", 4000) or b"").decode(errors="replace")[-800:]
                    continue
                built[i] = f"{o}/bin/{i}.test"
                run = f"-test.run {shlex.quote(_go_regex(u.names))}" if u.names else ""
                # the binary writes to a file that test2json converts afterwards (a daemon left holding
                # the binary's stdout would keep a pipe to test2json open until the time limit)
                lines.append(f"cd {WORKSPACE}/{shlex.quote(u.key)} && {built[i]} -test.v=true -test.paniconexit0 "
                             f"-test.count=1 {run} > {o}/{i}.raw 2>&1; echo $? > {o}/{i}.rc; "
                             f"go tool test2json -p {shlex.quote(u.key)} < {o}/{i}.raw > {o}/{i}.rep; cat {o}/{i}.raw")
            else:
                exe = executables.get(_rust_target(u.key))
                if exe is None:
                    build_msg[i] = (_read(out / "build.err", 8000) or b"").decode(errors="replace")[-800:]
                    continue
                built[i] = exe
                names = (" --exact " + " ".join(shlex.quote(n) for n in u.names)) if u.names else ""
                lines.append(f"cd {WORKSPACE} && {shlex.quote(exe)} --logfile {o}/{i}.rep --test-threads=1{names} "
                             f"> {o}/{i}.out 2>&1; echo $? > {o}/{i}.rc; cat {o}/{i}.out")
        if lines:
            res = sb.run(_sh(lines), timeout_s=limits.timeout_s, env=env)
        else:
            res = ExecResult(exit_code=1, stdout="", stderr="\n".join(build_msg.values()))
    tr.exec = res
    reports: dict[int, tuple[int | None, bytes | None, str]] = {}
    for i in range(len(units)):
        if lang.name != "javascript" and i not in built:
            reports[i] = (None, None, build_msg.get(i, "build failed"))
        else:
            reports[i] = (_rc(out / f"{i}.rc"), _read(out / f"{i}.rep"), "")
    markers = {i for i in range(len(units)) if lang.name == "go" and (out / f"{token}.{i}").is_file()}
    _judge_units(tr, res, reports, units, lang, markers)


def _rust_target_file(path: str) -> bool:
    """tests/NAME.rs or tests/NAME/main.rs: the files Cargo makes integration-test targets of."""
    p = PurePosixPath(path)
    return (len(p.parts) == 2 or (len(p.parts) == 3 and p.name == "main.rs")) and p.suffix == ".rs"


def _rust_target(path: str) -> str:
    p = PurePosixPath(path)
    return p.parent.name if p.name == "main.rs" and len(p.parts) == 3 else p.stem


def _rust_executables(out: Path) -> dict[str, str]:
    """{test target name: executable path in the sandbox} from cargo's JSON build messages."""
    exes: dict[str, str] = {}
    for line in (_read(out / "build.json") or b"").decode(errors="replace").splitlines():
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get("reason") == "compiler-artifact" and msg.get("executable") \
                and "test" in (msg.get("target") or {}).get("kind", []):
            exe = str(msg["executable"])
            if exe.startswith(REPORT_DIR + "/"):
                exes[str(msg["target"]["name"])] = exe
    return exes


# --- judging -----------------------------------------------------------------------------------------

def _judge_units(tr, res: ExecResult, reports: dict[int, tuple[int | None, bytes | None, str]],
                 units: list[Unit], lang: Language, markers: set[int] | None = None) -> None:
    if res.timed_out:
        tr.status, tr.message = Status.TIMEOUT, f"tests did not finish within {res.duration_s:.1f}s"
        return
    if res.oom_killed:
        tr.status, tr.message = Status.OOM, "killed by the out-of-memory killer"
        return
    if res.disk_exceeded:
        tr.status, tr.message = Status.DISK_LIMIT, "the workspace grew past its disk quota"
        return
    outcomes: dict[str, CaseResult] = {}
    problems: list[str] = []
    build_failures: list[str] = []
    for i, u in enumerate(units):
        rc, data, build = reports.get(i, (None, None, ""))
        if build:
            build_failures.append(f"{u.key}: build failed: {build.strip()[-300:]}")
            continue
        try:
            if lang.name == "javascript":
                cases, complete = (parse_tape_rows if u.runner == "tape" else parse_node_tap)(data or b"", u.key)
            elif lang.name == "go":
                cases, _ = parse_go_json(data or b"", u.key, ignore=(SENTINEL,))
                complete = i in (markers or set())
            else:
                cases, _ = parse_libtest_log(data or b"", u.key)
                complete = all(f"{u.key}::{n}" in cases for n in u.names) if u.names else rc == 0
        except ReportError as e:
            problems.append(f"{u.key}: unreadable report: {e}")
            continue
        bad = [k for k, v in cases.items() if v.outcome in ("failed", "error")]
        if rc is None:
            problems.append(f"{u.key}: the runner left no exit status")
        elif rc == 0 and bad:
            problems.append(f"{u.key}: exit status 0 but the report has {len(bad)} failing test(s)")
        elif rc == 0 and not complete:
            problems.append(f"{u.key}: exit status 0 but the test run never reached its end (early exit?)")
        elif rc != 0 and complete and not bad:
            problems.append(f"{u.key}: exit status {rc} but the report has no failure")
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
