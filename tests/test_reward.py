"""Rewards on the tiny real task (local bubblewrap backend): gold patch, no patch, per-test outcomes,
plus the pieces underneath (JUnit parsing, exit-status cross-checks, patch decoding, protection).
Docker runs of the same checks live in test_hostile.py (parametrized over both backends)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from minicoder.gitdiff import make_diff, materialize_repo
from minicoder.sandbox.base import ExecResult
from minicoder.sandbox.examples import BASE_FILES, demo_task
from minicoder.sandbox.junit import ReportError, nodeid_from_attrs, parse_junit
from minicoder.sandbox.patching import apply_patch, changed_paths, decode_patch, protect
from minicoder.sandbox.reward import TestRun, _judge, evaluate, pytest_args, run_tests


@pytest.fixture(scope="module")
def task():
    return demo_task(timeout_s=30)


def test_gold_patch_resolves(task):
    r = evaluate(task, task.patch)
    assert (r.reward, r.status, r.fraction) == (1.0, "resolved", 1.0), r.message
    assert set(r.tests) == set(task.FAIL_TO_PASS + task.PASS_TO_PASS)
    assert all(o == "passed" for o in r.tests.values())
    assert r.patch_applied and r.exec is not None and r.exec.exit_code == 0


def test_no_patch_is_unresolved_with_honest_fraction(task):
    r = evaluate(task, "")
    assert (r.reward, r.status) == (0.0, "unresolved")
    assert {t for t, o in r.tests.items() if o != "passed"} == set(task.FAIL_TO_PASS)
    assert r.fraction == pytest.approx(5 / 7)
    assert r.exec.exit_code == 1


def test_run_tests_default_ids_are_the_test_patch_files(task):
    tr = run_tests(task, "")
    assert tr.status == "ok"
    assert tr.outcomes == {"tests/test_mean.py::test_mean_int": "passed",
                           "tests/test_mean.py::test_mean_fraction": "failed",
                           "tests/test_mean.py::TestMean::test_negative": "failed"}
    assert "assert 1 == 1.5" in tr.messages["tests/test_mean.py::test_mean_fraction"]


def test_run_tests_parametrized_ids_and_missing_ids(task):
    ids = ["tests/test_ops.py::test_clamp[-2--1]", "tests/test_ops.py::test_clamp[5-3]"]
    tr = run_tests(task, task.patch, test_ids=ids)
    assert tr.status == "ok" and tr.outcomes == {i: "passed" for i in ids}
    # a test the patch makes vanish counts as failed (missing) in evaluate
    r = evaluate(task, make_diff(BASE_FILES, {"calc/ops.py": BASE_FILES["calc/ops.py"].replace(
        "return sum(xs) // len(xs)", "return sum(xs) / len(xs)\n\n\nimport missing_module  # noqa")}))
    assert r.reward == 0.0 and r.status == "unresolved"
    assert r.tests["tests/test_mean.py::test_mean_fraction"] in ("missing", "error", "failed")


def test_non_pytest_command_is_a_clear_error(task):
    import copy

    t = copy.deepcopy(task)
    t.environment.test_cmd = "make check"
    with pytest.raises(ValueError, match="not a pytest command"):
        pytest_args(t)
    t.environment.test_cmd = "python -m pytest -x"
    assert pytest_args(t) == ["-x"]


# --- JUnit parsing -------------------------------------------------------------------------------

def test_nodeid_from_xunit1_attributes():
    assert nodeid_from_attrs("tests/test_x.py", "tests.test_x.TestA", "test_y[a.b/c]") == \
        "tests/test_x.py::TestA::test_y[a.b/c]"
    assert nodeid_from_attrs("tests/test_x.py", "tests.test_x", "test_z") == "tests/test_x.py::test_z"


def test_parse_junit_outcomes_and_worst_wins():
    xml = b"""<?xml version="1.0"?><testsuites><testsuite>
      <testcase classname="t.test_a" name="ok" file="t/test_a.py"/>
      <testcase classname="t.test_a" name="bad" file="t/test_a.py"><failure message="assert 1 == 2"/></testcase>
      <testcase classname="t.test_a" name="sk" file="t/test_a.py"><skipped type="pytest.skip" message="no"/></testcase>
      <testcase classname="t.test_a" name="xf" file="t/test_a.py"><skipped type="pytest.xfail" message=""/></testcase>
      <testcase classname="t.test_a" name="ok" file="t/test_a.py"><error message="teardown"/></testcase>
      <testcase classname="x" name="y"><properties><property name="minicoder.nodeid" value="a/b.py::C::d[1]"/>
      </properties></testcase></testsuite></testsuites>"""
    got = {k: v.outcome for k, v in parse_junit(xml).items()}
    assert got == {"t/test_a.py::ok": "error", "t/test_a.py::bad": "failed", "t/test_a.py::sk": "skipped",
                   "t/test_a.py::xf": "xfailed", "a/b.py::C::d[1]": "passed"}


@pytest.mark.parametrize("data", [b"not xml", b"<html/>",
                                  b'<!DOCTYPE x [<!ENTITY a "aaaa">]><testsuites>&a;</testsuites>'])
def test_parse_junit_rejects_junk(data):
    with pytest.raises(ReportError):
        parse_junit(data)


# --- the exit-status / report cross-checks -------------------------------------------------------

REPORT_PASS = b'<testsuites><testsuite><testcase classname="t" name="a" file="t.py"/></testsuite></testsuites>'
REPORT_FAIL = (b'<testsuites><testsuite><testcase classname="t" name="a" file="t.py"><failure message="x"/>'
               b'</testcase></testsuite></testsuites>')


@pytest.mark.parametrize("exit_code,report,status", [
    (0, REPORT_PASS, "ok"), (1, REPORT_FAIL, "ok"),
    (0, REPORT_FAIL, "report_mismatch"), (1, REPORT_PASS, "report_mismatch"),
    (0, None, "report_mismatch"), (5, None, "no_tests"), (3, None, "no_report"),
    (0, b"<testsuites/>", "no_tests"), (-9, REPORT_PASS, "report_mismatch"),
])
def test_judge_cross_checks(exit_code, report, status):
    tr = TestRun(status="error")
    _judge(tr, ExecResult(exit_code=exit_code), report)
    assert tr.status == status


def test_judge_timeout_and_oom_win():
    tr = TestRun(status="error")
    _judge(tr, ExecResult(exit_code=None, timed_out=True), REPORT_PASS)
    assert tr.status == "timeout"
    _judge(tr, ExecResult(exit_code=137, oom_killed=True), None)
    assert tr.status == "oom"


# --- patches -----------------------------------------------------------------------------------

def test_decode_patch_errors_name_the_problem():
    assert decode_patch(b"--- a/x\n+++ b/x\n\xff")[1].startswith("patch is not valid UTF-8 (byte 0xff")
    assert "not a unified diff" in decode_patch("hello")[1]
    assert decode_patch("")[0] == ""
    assert "surrogate" in decode_patch("--- a\n+++ b\n\udcff")[1]


def test_protect_restores_tests_config_and_hooks(task, tmp_path: Path):
    ws = materialize_repo(task, tmp_path / "ws")
    evil = make_diff(BASE_FILES, {
        "calc/ops.py": BASE_FILES["calc/ops.py"] + "\n# honest change\n",
        "tests/test_ops.py": "def test_add():\n    pass\n",
        "conftest.py": "raise SystemExit\n",
        "pytest.ini": "[pytest]\naddopts = -p evil\n",
        "pytest.py": "x = 1\n",
        "queue.py": "x = 1\n",
        "calc/evil.pth": "import os\n",
        "e-1.dist-info/entry_points.txt": "[pytest11]\ne = e\n",
    })
    pr = apply_patch(ws, evil)
    assert pr.applied, pr.message
    assert set(pr.changed) >= {"calc/ops.py", "tests/test_ops.py", "conftest.py", "pytest.py"}
    dropped = protect(ws, pr.changed, task.test_patch, task.FAIL_TO_PASS + task.PASS_TO_PASS)
    assert "calc/ops.py" not in dropped
    assert (ws / "calc/ops.py").read_text().endswith("# honest change\n")  # the honest part is kept
    assert (ws / "tests/test_ops.py").read_text() == BASE_FILES["tests/test_ops.py"]
    assert (ws / "pytest.ini").read_text() == BASE_FILES["pytest.ini"]
    for gone in ("conftest.py", "pytest.py", "queue.py", "calc/evil.pth", "e-1.dist-info/entry_points.txt"):
        assert not (ws / gone).exists(), gone
    assert (ws / "tests/test_mean.py").exists()  # the hidden tests, applied fresh
    assert changed_paths(ws) == ["calc/ops.py", "tests/test_mean.py"]


def test_protect_does_not_follow_symlinks_out_of_the_workspace(task, tmp_path: Path):
    ws = materialize_repo(task, tmp_path / "ws")
    outside = tmp_path / "outside"
    outside.mkdir()
    (ws / "tests").rename(tmp_path / "moved")
    # a candidate turned `tests` into a symlink to a host folder (git apply would refuse to write
    # through it; our restore must not either)
    (ws / "tests").symlink_to(outside)
    protect(ws, ["tests"], task.test_patch, task.FAIL_TO_PASS)
    assert list(outside.iterdir()) == []
    assert (ws / "tests").is_dir() and not (ws / "tests").is_symlink()
    assert (ws / "tests/test_mean.py").exists()


def test_git_apply_refuses_paths_outside(task, tmp_path: Path):
    ws = materialize_repo(task, tmp_path / "ws")
    bad = "--- a/../escape.txt\n+++ b/../escape.txt\n@@ -0,0 +1 @@\n+x\n"
    pr = apply_patch(ws, bad)
    assert not pr.applied and not (tmp_path / "escape.txt").exists()
    assert subprocess.run(["git", "status"], cwd=ws, capture_output=True).returncode == 0
