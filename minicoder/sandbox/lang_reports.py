"""Parsers for the structured test reports of the non-Python runners: one outcome per test id.

  parse_node_tap(data, file)   node:test's TAP reporter (`--test-reporter=tap`), nested subtests
  parse_tape_rows(data, file)  tape's result stream (objectMode rows, one JSON object per line)
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
import re

from minicoder.sandbox.junit import SEVERITY, CaseResult, ReportError

MAX_REPORT_BYTES = 32 * 2**20


def _text(data: bytes) -> str:
    if len(data) > MAX_REPORT_BYTES:
        raise ReportError(f"report is {len(data)} bytes, over the {MAX_REPORT_BYTES} byte cap")
    return data.decode("utf-8", errors="replace")


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
    for line in _text(data).splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict):
            continue
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


# --- go test2json ------------------------------------------------------------------------------------

def parse_go_json(data: bytes, pkgdir: str, ignore: tuple[str, ...] = ()) -> tuple[dict[str, CaseResult], bool]:
    """Outcomes from test2json events: id `pkgdir::TestName[/sub]`. `complete`: a package-level
    pass/fail event (the binary exited)."""
    out: dict[str, CaseResult] = {}
    output: dict[str, list[str]] = {}
    complete = False
    for line in _text(data).splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if not isinstance(ev, dict):
            continue
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
