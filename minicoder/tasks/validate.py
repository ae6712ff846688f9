"""Execution validation of a task in the sandbox: is it solvable, stable, and not exploitable?

A task passes validation only when, all runs in the sandbox (`minicoder.sandbox.run_tests`):
  1. the gold patch passes every FAIL_TO_PASS and PASS_TO_PASS test, in each of `repeats` runs;
  2. the empty patch fails every FAIL_TO_PASS test and passes every PASS_TO_PASS test, each run;
  3. runs agree: a test whose outcome differs between repeats of the same patch is flaky and is
     dropped (counted); a FAIL_TO_PASS test that passes without the fix moves to PASS_TO_PASS, a
     PASS_TO_PASS test that fails without the fix moves to FAIL_TO_PASS (the lists are re-derived
     from what was observed, never trusted);
  4. the verifier cannot be gamed by a trivial patch: the function(s) the gold patch changes are
     replaced (on top of the gold patch, so any change outside them stays fixed) by `pass`
     (= deleting the body, returns None), by constants (`return 0`, `return ""`, `return []`,
     `return True`, `return False`) and by `raise NotImplementedError`; if any of these earns the
     full reward (every FAIL_TO_PASS and PASS_TO_PASS test passes) the task is rejected. When the
     function's return annotation names a type, only the constants of that type are tried (a
     `-> str` function is not given `return []`; `-> bool` gets True and False, which also stand
     for 1 and 0 under `==`): fewer sandbox runs, no weaker check for well-typed tests. Each stub
     runs the FAIL_TO_PASS tests first and the PASS_TO_PASS tests only when those all pass (only
     then can it earn the reward): on a real repository that turns each stub run from the whole
     test file into a handful of tests;
  5. the tests exercise the change: a FAIL_TO_PASS test that passes under *every* stub of check 4
     (the function returning None, constants, or raising) does not depend on the changed code at
     all - it failed before the fix because of something else (e.g. a version string the patch
     also bumps). Such tests are dropped; if no FAIL_TO_PASS test is left the task is rejected.
     This is the cheap, honest form of "does the verifier look at the fix?": no coverage tracing,
     no extra run (it reuses check 4's runs), and the raising stub also exposes tests that only
     check "something raised".
  6. security tasks (exploit tests in `metadata["security"]`, see tasks/security.py): the secure
     gold passes every exploit test in each repeat, and the task's insecure functional fix passes
     every functional test but fails at least one exploit test (the exploit tests have teeth);
     otherwise the task is rejected with the reason.
Checks 4-5 need at least one changed Python function (a patch that changes only module-level code
or non-Python files is recorded as skipped). Runs from an earlier stage (the mutation or mining stage ran the same
gold and empty patches) can be passed in as `prior` and count as repeats, so nothing runs twice.
"""

from __future__ import annotations

import ast
import copy
import difflib
import time
from dataclasses import dataclass, field
from typing import Any

from minicoder.gitdiff import PatchError, apply_to_snapshot, base_files, file_diff, parse_patch
from minicoder.record import Task
from minicoder.sandbox.security import exploit_tests
from minicoder.tasks.runner import Run, run_tests

# name -> replacement body for the exploit check (in order; `pass` is "delete the body")
TRIVIAL_BODIES: dict[str, str] = {
    "pass": "pass", "return 0": "return 0", 'return ""': 'return ""', "return []": "return []",
    "return True": "return True", "return False": "return False",
}
STUB_RAISE = "raise NotImplementedError"
# return annotation (outer name) -> the trivial bodies worth trying besides `pass`
_BY_ANNOTATION: dict[str, tuple[str, ...]] = {
    "bool": ("return True", "return False"), "int": ("return 0",), "float": ("return 0",),
    "complex": ("return 0",), "str": ('return ""',), "list": ("return []",), "List": ("return []",),
    "Sequence": ("return []",), "Iterable": ("return []",), "None": (),
}


@dataclass
class Validation:
    """The verdict on one task."""

    instance_id: str
    ok: bool
    reason: str = ""  # why it was rejected ("" when ok)
    task: Task | None = None  # the validated task (lists re-derived, flaky tests dropped) when ok
    flaky: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # test id -> why it left FAIL_TO_PASS/PASS_TO_PASS
    checks: dict[str, Any] = field(default_factory=dict)
    runs: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"instance_id": self.instance_id, "ok": self.ok, "reason": self.reason, "flaky": self.flaky,
                "dropped": self.dropped, "checks": self.checks, "runs": self.runs,
                "seconds": round(self.seconds, 3)}


# --- which functions a patch changes ------------------------------------------------------------

@dataclass(frozen=True)
class ChangedFunction:
    path: str
    qualname: str  # e.g. "Parser.parse" or "has_close_elements"
    body_start: int  # first line of the body after the docstring (1-based)
    end: int  # last line of the function
    indent: str  # indentation of the body
    returns: str = ""  # outer name of the return annotation ("" when absent), e.g. "List" for List[int]


def _functions(tree: ast.Module) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualname, def) of the outermost functions: module-level ones and methods of (nested) classes."""
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((prefix + child.name, child))
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")

    visit(tree, "")
    return out


def changed_functions(before: str, after: str, path: str) -> list[ChangedFunction] | None:
    """The outermost functions of `after` that contain a changed line (changes at module level are not
    functions and are skipped); None when `after` does not parse or a function is a one-liner."""
    try:
        tree = ast.parse(after)
    except SyntaxError:
        return None
    changed: list[int] = []  # 1-based lines of `after` (a pure deletion marks the line after it)
    sm = difflib.SequenceMatcher(a=before.splitlines(), b=after.splitlines(), autojunk=False)
    for tag, _i1, _i2, j1, j2 in sm.get_opcodes():
        if tag != "equal":
            changed += list(range(j1 + 1, j2 + 1)) if j2 > j1 else [j1 + 1]
    funcs = _functions(tree)
    hit: dict[str, ChangedFunction] = {}
    lines = after.splitlines()
    for ln in changed:
        owner = next(((q, f) for q, f in funcs if f.lineno <= ln <= (f.end_lineno or f.lineno)), None)
        if owner is None:
            continue
        q, f = owner
        body = f.body
        if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str) and len(body) > 1):
            body = body[1:]
        first = body[0]
        if first.lineno == f.lineno:  # `def f(): return x` on one line: no body lines to replace
            return None
        indent = lines[first.lineno - 1][: len(lines[first.lineno - 1]) - len(lines[first.lineno - 1].lstrip())]
        start = min([first.lineno] + [d.lineno for d in getattr(first, "decorator_list", [])])
        hit[q] = ChangedFunction(path, q, start, f.end_lineno or f.lineno, indent, _annotation_name(f.returns))
    return sorted(hit.values(), key=lambda c: c.body_start)


def _annotation_name(node: ast.expr | None) -> str:
    if node is None:
        return ""
    if isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Constant) and node.value is None:
        return "None"
    return ""


def trivial_bodies(funcs: list[ChangedFunction]) -> dict[str, str]:
    """The trivial bodies to try for these functions (all of TRIVIAL_BODIES unless annotations narrow it)."""
    if any(f.returns not in _BY_ANNOTATION for f in funcs):
        return dict(TRIVIAL_BODIES)
    names = {"pass"} | {b for f in funcs for b in _BY_ANNOTATION[f.returns]}
    return {k: v for k, v in TRIVIAL_BODIES.items() if k in names}


def stub_functions(source: str, funcs: list[ChangedFunction], body: str) -> str:
    """`source` with each function's body (after its docstring) replaced by `body`."""
    lines = source.splitlines(keepends=True)
    for f in sorted(funcs, key=lambda c: -c.body_start):
        lines[f.body_start - 1:f.end] = [f"{f.indent}{body}\n"]
    return "".join(lines)


def exploit_patches(task: Task) -> tuple[dict[str, str], str, str]:
    """({trivial name: patch}, raise-stub patch, note). Empty dict + note when the check cannot apply."""
    try:
        base = base_files(task)
        fixed = apply_to_snapshot(base, task.patch)
    except PatchError as e:
        return {}, "", f"gold patch does not apply on the host copy: {e}"
    targets: dict[str, list[ChangedFunction]] = {}
    for fp in parse_patch(task.patch):
        if not fp.path.endswith(".py") or fp.is_deleted:
            continue
        funcs = changed_functions(base.get(fp.path, ""), fixed[fp.path], fp.path)
        if funcs is None:
            return {}, "", f"cannot stub the changed functions of {fp.path} (a one-line def, or it does not parse)"
        if funcs:
            targets[fp.path] = funcs
    if not targets:
        return {}, "", "the gold patch changes no Python function"

    def patch_with(body: str) -> str:
        new = dict(fixed)
        for path, funcs in targets.items():
            new[path] = stub_functions(fixed[path], funcs, body)
        return "".join(file_diff(p, base.get(p), new.get(p)) for p in sorted(set(base) | set(new))
                       if base.get(p) != new.get(p))

    names = ", ".join(f"`{f.qualname}`" for fs in targets.values() for f in fs)
    bodies = trivial_bodies([f for fs in targets.values() for f in fs])
    return {k: patch_with(v) for k, v in bodies.items()}, patch_with(STUB_RAISE), names


# --- validation ---------------------------------------------------------------------------------

def _agree(runs: list[Run], test: str) -> bool | None:
    """True/False when every run passed / did not pass `test`; None when they disagree (flaky)."""
    seen = {r.outcomes.get(test) == "passed" for r in runs}
    return seen.pop() if len(seen) == 1 else None


def validate_task(task: Task, backend: Any = "local", repeats: int = 2, check_exploits: bool = True,
                  prior: dict[str, list[Run]] | None = None, timeout_s: float | None = None) -> Validation:
    """Validate one task by execution (see the module docstring for the checks, in order)."""
    t0 = time.perf_counter()
    v = Validation(task.instance_id, ok=False)
    prior = prior or {}
    ids = sorted(set(task.FAIL_TO_PASS) | set(task.PASS_TO_PASS))

    def run(patch: str, test_ids: list[str]) -> Run:
        v.runs += 1
        return run_tests(task, patch, test_ids=test_ids, backend=backend, timeout_s=timeout_s)

    def reject(reason: str) -> Validation:
        v.ok, v.reason, v.seconds = False, reason, time.perf_counter() - t0
        return v

    gold = list(prior.get("gold", []))[:repeats]
    empty = list(prior.get("empty", []))[:repeats]
    while len(gold) < repeats:
        gold.append(run(task.patch, ids))
        if not gold[-1].patch_applied:
            return reject("gold patch does not apply")
    while len(empty) < repeats:
        empty.append(run("", ids))
    bad = next((r for r in gold if not r.trusted), None)
    if bad is not None:  # a timeout, or a report the sandbox does not trust: not a test verdict
        return reject(f"gold patch run not trusted: {bad.status}: {bad.message[:200]}")
    f2p, p2p = [], []
    for t in ids:
        g, e = _agree(gold, t), _agree(empty, t)
        if g is None or e is None:
            v.flaky.append(t)
            v.dropped[t] = "flaky: outcomes differ between repeated runs"
            continue
        if not g:
            return reject(f"gold patch fails a test: {'FAIL_TO_PASS' if t in task.FAIL_TO_PASS else 'PASS_TO_PASS'} "
                          f"{t} is {gold[0].outcomes.get(t, 'missing')}")
        if e:
            p2p.append(t)
            if t in task.FAIL_TO_PASS:
                v.dropped[t] = "passes without the fix: moved to PASS_TO_PASS"
        else:
            f2p.append(t)
            if t in task.PASS_TO_PASS:
                v.dropped[t] = "fails without the fix: moved to FAIL_TO_PASS"
    v.checks["gold"] = "pass"
    v.checks["empty"] = "fails" if f2p else "passes"
    if not f2p:
        if v.flaky and all(t in v.flaky for t in task.FAIL_TO_PASS):
            return reject("every FAIL_TO_PASS test is flaky")
        return reject("empty patch passes: no test fails without the fix")
    if check_exploits:
        trivial, stub, note = exploit_patches(task)
        if not trivial:
            v.checks["exploits"] = f"skipped: {note}"
        else:
            survivors = set(f2p)  # FAIL_TO_PASS tests that pass under every stub so far
            for name, patch in [*trivial.items(), (STUB_RAISE, stub)]:
                # FAIL_TO_PASS first: a stub that fails one of them cannot earn the reward, so the
                # (often much longer) PASS_TO_PASS list runs only for a stub that passes them all
                r = run(patch, f2p)
                if not r.not_passed(f2p) and (not p2p or not run(patch, f2p + p2p).not_passed(f2p + p2p)):
                    v.checks["exploits"] = f"`{name}` passes"
                    return reject(f"exploitable verifier: every test passes when {note} is replaced by `{name}`")
                survivors &= r.passed
            v.checks["exploits"] = f"none of {len(trivial) + 1} trivial patches passes"
            unexercised = sorted(survivors)
            if unexercised and len(unexercised) == len(f2p):
                v.checks["exercised"] = "no"
                return reject(f"tests do not exercise the changed code: every FAIL_TO_PASS test passes whatever "
                              f"{note} does (returns None, a constant, or raises)")
            for t in unexercised:
                f2p.remove(t)
                v.dropped[t] = "does not exercise the changed code (passes under every stub)"
            v.checks["exercised"] = "yes" if not unexercised else f"{len(unexercised)} FAIL_TO_PASS test(s) dropped"
    if exploit_tests(task):  # security tasks: the insecure-fix check (tasks/security.py)
        from minicoder.tasks.security import check_insecure_fix

        why = check_insecure_fix(task, run, sorted(f2p + p2p), repeats, v.checks)
        if why:
            return reject(why)
    out = copy.deepcopy(task)
    out.FAIL_TO_PASS, out.PASS_TO_PASS = sorted(f2p), sorted(p2p)
    out.metadata["validation"] = {"repeats": repeats, "flaky": len(v.flaky), "dropped": len(v.dropped),
                                  "checks": dict(v.checks)}
    v.ok, v.task, v.seconds = True, out, time.perf_counter() - t0
    return v
