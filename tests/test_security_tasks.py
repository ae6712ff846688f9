"""Security task generation and its validation (minicoder.tasks.security).

Host-only checks of every rendered candidate (the catalogue's nine classes with their CWE ids; files
that parse; statements without a security word and hints with one; patches that apply; exploit and
functional ids that exist; varied files; real HumanEval code where a template says so), then the
validator's security half in the real sandbox: a good task is kept, and a task whose exploit tests
have no teeth, whose insecure fix is not functional, or whose gold is itself exploitable is dropped
with its reason. Finally `minicoder synth security` end to end on one small class, and its resume.
"""

from __future__ import annotations

import ast
import copy
import json
import re
import sys

import pytest

from minicoder.gitdiff import apply_to_snapshot as apply_patch
from minicoder.gitdiff import base_files, diff_snapshots, parse_patch
from minicoder.sandbox.security import exploit_tests, security_meta
from minicoder.tasks.runner import run_tests
from minicoder.tasks.security import NEIGHBOURS, candidates, check_insecure_fix, classes, humaneval_code

REQUIRED = {"sql_injection": "CWE-89", "command_injection": "CWE-78", "path_traversal": "CWE-22",
            "unsafe_deserialization": "CWE-502", "xss": "CWE-79", "code_injection": "CWE-94",
            "weak_password_hash": "CWE-327/916", "predictable_token": "CWE-330", "redos": "CWE-1333"}
# words that would hand a no-hint policy the security angle
TELLTALE = re.compile(r"secur|vulnerab|inject|attack|exploit|malicious|sanitiz|sanitis|escap|untrusted|cwe|"
                      r"traversal|xss|cross-site|unsafe|predictab|crypto|redos|backtrack|denial|salt",
                      re.IGNORECASE)


@pytest.fixture(scope="module")
def cands():
    return candidates(per_class=24, seed=0)


def test_catalogue_has_the_nine_classes_with_their_cwe():
    cat = classes()
    assert {k: c.cwe for k, c in cat.items()} == REQUIRED
    for c in cat.values():
        assert len(c.templates) >= 3 and len(c.domains) >= 8, c.key
        assert len({t.key for t in c.templates}) == len(c.templates)


def test_every_candidate_is_well_formed(cands):
    assert len(cands) == 24 * 9
    assert len({c.task.instance_id for c in cands}) == len(cands)
    applied = set()
    for c in cands:
        t, meta = c.task, security_meta(c.task)
        base, secure, insecure, tests = (c.versions[k] for k in ("base", "secure", "insecure", "tests"))
        assert base == t.environment.files
        if c.template not in applied:  # the diffs say the same as the versions (git apply: one per template)
            applied.add(c.template)
            assert apply_patch(base, t.patch) == secure and apply_patch(base, meta["insecure_patch"]) == insecure
            assert apply_patch({}, t.test_patch) == tests
        assert t.patch == diff_snapshots(base, secure) and meta["insecure_patch"] == diff_snapshots(base, insecure)
        assert t.test_patch == diff_snapshots({}, tests)
        for files in (base, secure, insecure, tests):
            for path, text in files.items():
                ast.parse(text, filename=path)
                assert "__" + "PKG" not in text and not re.search(r"__[A-Z][A-Z0-9_]*__", text), (t.instance_id, path)
        assert secure != base and insecure != base and secure != insecure
        # the ids name real test functions, functional ones in one file, exploit ones in the other
        defined = {f"{p}::{n.name}" for p, s in tests.items() for n in ast.parse(s).body
                   if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}
        assert set(t.FAIL_TO_PASS) | set(exploit_tests(t)) == defined
        assert {i.split("::")[0] for i in exploit_tests(t)}.isdisjoint({i.split("::")[0] for i in t.FAIL_TO_PASS})
        assert len(exploit_tests(t)) >= 2
        # the fixes only touch the module under change, never the tests
        assert [fp.path for fp in parse_patch(t.patch)] == [fp.path for fp in parse_patch(meta["insecure_patch"])]
        # a top-level package that shadowed the standard library would break the tests themselves
        assert t.repo.split("/")[1] not in sys.stdlib_module_names


def test_statements_do_not_hint_and_hints_do(cands):
    for c in cands:
        t, meta = c.task, security_meta(c.task)
        assert not TELLTALE.search(t.problem_statement), (t.instance_id, TELLTALE.search(t.problem_statement))
        assert meta["hint"].startswith(t.problem_statement)
        assert meta["cwe"].split("/")[0] in meta["hint"] and "Security:" in meta["hint"]


def test_variety_per_class(cands):
    for key in REQUIRED:
        cs = [c for c in cands if c.vclass == key]
        modules = [next(v for p, v in base_files(c.task).items() if not p.endswith("__init__.py")) for c in cs]
        assert len(set(modules)) == len(cs), key  # no two tasks of a class share their file
        assert {c.template for c in cs} == {t.key for t in classes()[key].templates}
        assert len({c.task.repo for c in cs}) >= 8
        statements = {c.task.problem_statement for c in cs}
        assert len(statements) == len(cs)


def test_rendering_is_deterministic_and_seeded():
    a, b = candidates(per_class=3, seed=0), candidates(per_class=3, seed=0)
    assert [x.task.to_dict() | {"created_at": ""} for x in a] == [x.task.to_dict() | {"created_at": ""} for x in b]
    c = candidates(per_class=3, seed=1)
    assert [x.task.instance_id for x in a] != [x.task.instance_id for x in c]


def test_real_humaneval_code_is_the_subject(cands):
    """do_algebra (160), string_to_md5 (162) and words_string (101) appear verbatim where used,
    and neighbours are HumanEval solutions checked by their own HumanEval check()."""
    for c in cands:
        base = "".join(base_files(c.task).values())
        for n in security_meta(c.task)["humaneval"]:
            assert humaneval_code(n)[1] in base, (c.task.instance_id, n)
        if c.template == "humaneval_do_algebra":
            assert 160 in security_meta(c.task)["humaneval"] and "return eval(expression)" in base
    used = {n for c in cands for n in security_meta(c.task)["humaneval"]}
    assert {101, 160, 162} <= used and len(used & set(NEIGHBOURS)) >= 10


# --- validation in the sandbox ---------------------------------------------------------------------

def _xss_task():
    return next(c.task for c in candidates(per_class=3, only=["xss"]) if c.template == "line_breaks")


def _run(task):
    return lambda patch, ids: run_tests(task, patch, test_ids=ids)


@pytest.mark.slow
def test_insecure_fix_check_keeps_a_task_and_drops_the_ones_without_teeth():
    """(The full validation of a good task runs in the `synth security` test below.)"""
    task = _xss_task()
    functional = task.FAIL_TO_PASS  # not yet validated: every functional test, all passing with either fix
    checks: dict = {}
    assert check_insecure_fix(task, _run(task), functional, 1, checks) == ""
    assert "insecure fix passes" in checks["security"] and checks["caught_by"]

    # exploit tests that the "insecure" fix passes have no teeth: here it is the secure fix itself
    toothless = copy.deepcopy(task)
    toothless.metadata["security"]["insecure_patch"] = task.patch
    assert "have no teeth" in check_insecure_fix(toothless, _run(toothless), functional, 1, {})

    # an insecure fix that is not functional proves nothing: the base code with a new comment
    broken = copy.deepcopy(task)
    path, text = next((p, s) for p, s in base_files(task).items() if not p.endswith("__init__.py"))
    from minicoder.gitdiff import file_diff

    broken.metadata["security"]["insecure_patch"] = file_diff(path, text, text + "# TODO\n")
    assert "not a functional fix" in check_insecure_fix(broken, _run(broken), functional, 1, {})

    # a gold patch that is itself exploitable
    bad_gold = copy.deepcopy(task)
    bad_gold.patch = security_meta(task)["insecure_patch"]
    assert "secure gold fails an exploit test" in check_insecure_fix(bad_gold, _run(bad_gold), functional, 1, {})


@pytest.mark.slow
def test_synth_security_command_writes_the_report_and_resumes(tmp_path, capsys):
    from minicoder.cli import main

    out = tmp_path / "sec.jsonl"
    argv = ["synth", "security", "--out", str(out), "--classes", "xss", "--per-class", "1", "--repeats", "1",
            "--workers", "1", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    rep = json.loads((tmp_path / "sec.jsonl.report.json").read_text())
    assert rep["per_class"]["xss"]["candidates"] == 1 and rep["per_class"]["xss"]["validated"] == 1
    assert rep["tasks"] == 1 and "xss" in printed and "CWE-79" in printed
    from minicoder.record import read_tasks

    (kept,) = read_tasks(out)
    assert kept.metadata["validation"]["checks"]["security"].startswith("gold passes")
    assert kept.PASS_TO_PASS and kept.FAIL_TO_PASS and exploit_tests(kept)  # re-derived from the runs
    first_runs = rep["sandbox_runs"]
    assert first_runs >= 4
    # a rerun finds the verdict in the ledger: the same report, no candidate redone
    assert main(argv) == 0
    rep2 = json.loads((tmp_path / "sec.jsonl.report.json").read_text())
    assert (rep2["tasks"], rep2["per_class"]) == (rep["tasks"], rep["per_class"])
    assert len((tmp_path / "sec.jsonl.ledger.jsonl").read_text().splitlines()) == 1
    assert main(["synth", "security", "--out", str(out), "--classes", "nope"]) == 2
