"""Parsers for the structured test reports of the non-Python runners: one outcome per test id.

  parse_node_tap(data, file)   node:test's TAP reporter (`--test-reporter=tap`), nested subtests
  parse_tape_rows(data, file)  tape's result stream (objectMode rows, one JSON object per line)
  parse_mocha_rows(data)       our mocha reporter's rows (one JSON object per test, then an end row)
  parse_jest_json(data, files) jest's `--json --outputFile` report
  parse_go_json(data, pkgdir)  `go tool test2json` events
  parse_libtest_log(data, file) libtest's `--logfile` lines (`ok name`, `failed name`, `ignored name`)

Every parser returns ({test id: CaseResult}, complete): `complete` says the runner reached its own
end (TAP's closing plan and summary, tape's end row, ...). The reports come from processes that run
untrusted code, so they are size-capped, parsed leniently (a malformed line is skipped, never a
crash) and an outcome seen twice for one id keeps the worse one: a fake "ok" line cannot cover a
real failure of the same test.
"""

from __future__ import annotations

import json
import posixpath
import re

from minicoder.sandbox.junit import SEVERITY, CaseResult, ReportError

MAX_REPORT_BYTES = 32 * 2**20


def _text(data: bytes) -> str:
    if len(data) > MAX_REPORT_BYTES:
        raise ReportError(f"report is {len(data)} bytes, over the {MAX_REPORT_BYTES} byte cap")
    return data.decode("utf-8", errors="replace")


def _json_rows(data: bytes):
    """The JSON objects of a JSON-lines report, one per line; other lines (a test's own prints) skipped."""
    for line in _text(data).splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            yield row


def _put(out: dict[str, CaseResult], tid: str, outcome: str, message: str = "") -> None:
    prev = out.get(tid)
    if prev is None or SEVERITY[outcome] > SEVERITY[prev.outcome]:
        out[tid] = CaseResult(outcome, message[:500])
    elif message and not prev.message and prev.outcome == outcome:
        prev.message = message[:500]


# --- node:test TAP ------------------------------------------------------------------------------

_TAP_RESULT = re.compile(r"^(?P<indent> *)(?P<not>not )?ok \d+(?: - (?P<name>.*?))?(?: # (?P<dir>SKIP|TODO)\b.*)?$")
_TAP_SUBTEST = re.compile(r"^(?P<indent> *)# Subtest: (?P<name>.*)$")


def _tap_unescape(s: str) -> str:
    return s.replace("\\#", "#").replace("\\\\", "\\")


def parse_node_tap(data: bytes, file: str) -> tuple[dict[str, CaseResult], bool]:
    """Outcomes from node:test's TAP: id `file::outer > inner`. Suites get an id too."""
    out: dict[str, CaseResult] = {}
    lines = _text(data).splitlines()
    stack: dict[int, str] = {}  # indent level -> subtest name announced at that level
    complete_plan = complete_summary = False
    for i, line in enumerate(lines):
        m = _TAP_SUBTEST.match(line)
        if m:
            level = len(m.group("indent")) // 4
            stack = {k: v for k, v in stack.items() if k < level}
            stack[level] = _tap_unescape(m.group("name"))
            continue
        m = _TAP_RESULT.match(line)
        if m:
            level = len(m.group("indent")) // 4
            name = _tap_unescape(m.group("name") or stack.get(level, ""))
            path = [stack[k] for k in sorted(stack) if k < level] + [name]
            directive = m.group("dir")
            if m.group("not"):
                outcome = "skipped" if directive == "TODO" else "failed"
            else:
                outcome = "skipped" if directive else "passed"
            message = _tap_error(lines, i + 1, len(m.group("indent"))) if outcome == "failed" else ""
            _put(out, f"{file}::{' > '.join(path)}", outcome, message)
            stack = {k: v for k, v in stack.items() if k < level}
            continue
        if re.fullmatch(r"1\.\.\d+", line):
            complete_plan = True
        elif re.fullmatch(r"# tests \d+", line):
            complete_summary = True
    return out, complete_plan and complete_summary


def _tap_error(lines: list[str], start: int, indent: int) -> str:
    """The `error:` field of the YAML block that follows a `not ok` line."""
    pad = " " * (indent + 2)
    if start >= len(lines) or lines[start].strip() != "---":
        return ""
    msg: list[str] = []
    grab = False
    for line in lines[start + 1:start + 200]:
        if line.strip() == "...":
            break
        body = line[len(pad):] if line.startswith(pad) else line.strip()
        if body.startswith("error:"):
            rest = body[len("error:"):].strip()
            grab = rest in ("|-", "|", ">-")
            if not grab:
                msg.append(rest.strip("'\""))
            continue
        if grab:
            if body.startswith("  "):
                msg.append(body.strip())
            else:
                break
    return " ".join(x for x in msg if x)


# --- tape ------------------------------------------------------------------------------------------

def parse_tape_rows(data: bytes, file: str) -> tuple[dict[str, CaseResult], bool]:
    """Outcomes from tape's objectMode rows: id `file::test name` (a test fails if any assertion does)."""
    out: dict[str, CaseResult] = {}
    names: dict[int, str] = {}
    verdict: dict[int, tuple[str, str]] = {}
    complete = False
    for row in _json_rows(data):
        kind = row.get("type")
        if kind == "minicoder.end":
            complete = True
        elif kind == "test" and isinstance(row.get("id"), int):
            names[row["id"]] = str(row.get("name", ""))
            verdict[row["id"]] = ("skipped", "") if row.get("skip") else ("passed", "")
        elif (kind == "assert" and isinstance(row.get("test"), int) and row["test"] in verdict
              and not row.get("ok") and not row.get("todo") and not row.get("skip")):
            msg = str(row.get("name", ""))
            if "expected" in row or "actual" in row:
                msg += f": expected {row.get('expected')!r}, got {row.get('actual')!r}"
            if verdict[row["test"]][0] != "failed":
                verdict[row["test"]] = ("failed", msg)
    for tid, name in names.items():
        outcome, msg = verdict[tid]
        _put(out, f"{file}::{name}", outcome, msg)
    return out, complete


# --- mocha (our reporter's rows) ---------------------------------------------------------------------

def _relative(path: str, root: str) -> str:
    return posixpath.relpath(path, root) if path.startswith(root.rstrip("/") + "/") else path


def parse_mocha_rows(data: bytes, root: str = "/workspace") -> tuple[dict[str, CaseResult], bool]:
    """Outcomes from `MOCHA_REPORTER`'s rows: id `file::suite > ... > test` (the test's title path).
    A failing hook is a failed case of its own (`file::suite > "before all" hook ...`); the tests it
    kept from running are missing, so they count as failed. `complete`: the end row was written."""
    out: dict[str, CaseResult] = {}
    complete = False
    for row in _json_rows(data):
        if row.get("type") == "end":
            complete = True
        elif (row.get("type") == "test" and row.get("state") in ("passed", "failed", "skipped")
              and isinstance(row.get("path"), list)):
            title = " > ".join(str(t) for t in row["path"])
            _put(out, f"{_relative(str(row.get('file') or ''), root)}::{title}", row["state"],
                 str(row.get("message") or ""))
    return out, complete


# --- jest --json ------------------------------------------------------------------------------------

_JEST_STATUS = {"passed": "passed", "failed": "failed", "pending": "skipped", "skipped": "skipped",
                "todo": "skipped", "disabled": "skipped", "focused": "passed"}


def parse_jest_json(data: bytes, files: list[str], root: str = "/workspace") -> tuple[dict[str, CaseResult], bool]:
    """Outcomes from jest's JSON report: id `file::describe > ... > test`. A test file that failed to
    run (a syntax error, an exception at load) is an "error" case with the file's path as its id.
    `complete`: the report names every requested file (jest writes it once, at the very end)."""
    text = _text(data)
    if not text.strip():
        return {}, False
    try:
        report = json.loads(text)
    except ValueError as e:
        raise ReportError(f"jest's report is not JSON ({e})") from None
    if not isinstance(report, dict) or not isinstance(report.get("testResults"), list):
        raise ReportError("jest's report has no testResults list")
    out: dict[str, CaseResult] = {}
    seen: set[str] = set()
    for suite in report["testResults"]:
        if not isinstance(suite, dict):
            continue
        rel = _relative(str(suite.get("name", "")), root)
        seen.add(rel)
        cases = [a for a in suite.get("assertionResults") or [] if isinstance(a, dict)]
        for a in cases:
            path = [str(t) for t in a.get("ancestorTitles") or []] + [str(a.get("title", ""))]
            outcome = _JEST_STATUS.get(str(a.get("status")), "failed")
            msg = " ".join(str(m) for m in a.get("failureMessages") or [])
            _put(out, f"{rel}::{' > '.join(path)}", outcome, msg if outcome == "failed" else "")
        if suite.get("testExecError") or (suite.get("status") == "failed" and not cases):
            _put(out, rel, "error", str(suite.get("message") or suite.get("testExecError") or "the file did not run"))
    return out, all(f in seen for f in files)


# --- go test2json ------------------------------------------------------------------------------------

def parse_go_json(data: bytes, pkgdir: str, ignore: tuple[str, ...] = ()) -> tuple[dict[str, CaseResult], bool]:
    """Outcomes from test2json events: id `pkgdir::TestName[/sub]`. `complete`: a package-level
    pass/fail event (the binary exited)."""
    out: dict[str, CaseResult] = {}
    output: dict[str, list[str]] = {}
    complete = False
    for ev in _json_rows(data):
        test, action = ev.get("Test"), ev.get("Action")
        if not test:
            complete = complete or action in ("pass", "fail")
            continue
        if not isinstance(test, str) or test.split("/", 1)[0] in ignore:
            continue
        if action == "output" and isinstance(ev.get("Output"), str):
            text = ev["Output"].strip()
            if text and not text.startswith(("=== ", "--- ")):
                output.setdefault(test, []).append(text)
        elif action in ("pass", "fail", "skip"):
            outcome = {"pass": "passed", "fail": "failed", "skip": "skipped"}[action]
            _put(out, f"{pkgdir}::{test}", outcome, " ".join(output.get(test, [])) if outcome == "failed" else "")
    return out, complete


# --- libtest --logfile -------------------------------------------------------------------------------

_LIBTEST = re.compile(r"^(ok|failed|ignored) (\S+)$")


def parse_libtest_log(data: bytes, file: str) -> tuple[dict[str, CaseResult], bool]:
    """Outcomes from libtest's `--logfile`: id `file::module::test`. Completeness is judged by the
    caller (every requested test present); the log has no closing line."""
    out: dict[str, CaseResult] = {}
    for line in _text(data).splitlines():
        m = _LIBTEST.match(line.strip())
        if m:
            _put(out, f"{file}::{m.group(2)}", {"ok": "passed", "failed": "failed", "ignored": "skipped"}[m.group(1)])
    return out, False
