"""Parse pytest's JUnit XML report into {pytest node id: outcome}.

Outcomes: "passed", "failed", "error", "skipped", "xfailed" (an expected failure; SWE-bench counts
it as passing). A node id appearing more than once (a test that passed but whose teardown failed)
keeps its worst outcome.

Node ids: our runner (reward.RUNNER) records each item's exact node id as a JUnit property
`minicoder.nodeid`, which survives parametrization ids with dots, slashes or brackets. Reports from
other runs are mapped back from the xunit1 `file` / `classname` / `name` attributes
(`tests/test_x.py` + `tests.test_x.TestA` + `test_y[1]` -> `tests/test_x.py::TestA::test_y[1]`).

The report comes from untrusted code's process, so: size-capped, parsed with expat (no external
entities), and anything unexpected is a `ReportError`, never a crash.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

MAX_REPORT_BYTES = 32 * 2**20
SEVERITY = {"passed": 0, "xfailed": 1, "skipped": 2, "failed": 3, "error": 4}
NODEID_PROPERTY = "minicoder.nodeid"


class ReportError(ValueError):
    """The report is not a pytest JUnit XML file we can trust to read."""


@dataclass
class CaseResult:
    outcome: str
    message: str = ""
    time_s: float = 0.0


def nodeid_from_attrs(file: str | None, classname: str, name: str) -> str:
    """Rebuild a pytest node id from xunit1 attributes (used when our property is absent)."""
    if not file:
        return f"{classname.replace('.', '/')}::{name}" if classname else name
    module = file[:-3] if file.endswith(".py") else file
    module_dotted = module.replace("/", ".")
    rest = classname[len(module_dotted):].lstrip(".") if classname.startswith(module_dotted) else ""
    parts = [file, *[p for p in rest.split(".") if p], name]
    return "::".join(parts)


def _outcome(case: ET.Element) -> tuple[str, str]:
    for child in case:
        tag = child.tag
        if tag in ("failure", "error"):
            return ("failed" if tag == "failure" else "error"), (child.get("message") or "")[:500]
        if tag == "skipped":
            kind = "xfailed" if child.get("type") == "pytest.xfail" else "skipped"
            return kind, (child.get("message") or "")[:500]
    return "passed", ""


def parse_junit(data: bytes) -> dict[str, CaseResult]:
    """{node id: CaseResult} from a JUnit XML document (bytes)."""
    if len(data) > MAX_REPORT_BYTES:
        raise ReportError(f"report is {len(data)} bytes, over the {MAX_REPORT_BYTES} byte cap")
    if b"<!ENTITY" in data or b"<!DOCTYPE" in data:
        raise ReportError("report declares a DOCTYPE/ENTITY; pytest never writes one")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as e:
        raise ReportError(f"report is not well-formed XML ({e})") from None
    if root.tag not in ("testsuites", "testsuite"):
        raise ReportError(f"report root is <{root.tag}>, expected <testsuites> or <testsuite>")
    out: dict[str, CaseResult] = {}
    for case in root.iter("testcase"):
        nodeid = None
        for prop in case.iter("property"):
            if prop.get("name") == NODEID_PROPERTY:
                nodeid = prop.get("value")
        if not nodeid:
            nodeid = nodeid_from_attrs(case.get("file"), case.get("classname") or "", case.get("name") or "")
        outcome, message = _outcome(case)
        try:
            t = float(case.get("time") or 0.0)
        except ValueError:
            t = 0.0
        prev = out.get(nodeid)
        if prev is None or SEVERITY[outcome] > SEVERITY[prev.outcome]:
            out[nodeid] = CaseResult(outcome, message, t)
    return out
