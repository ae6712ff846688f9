"""Security tasks: repositories whose right fix is also the secure one, with exploit tests that prove it.

Each task asks for an ordinary functional change or bug fix (the statement never mentions security:
SecCodeBench's no-hint setting; `hint` in the metadata is the same statement plus one security
sentence, the hinted setting). Its hidden tests are of two kinds:

  - functional tests (FAIL_TO_PASS / PASS_TO_PASS): the change works, nearby code still works;
  - exploit tests (`metadata["security"]["exploit_tests"]`): each performs an attack on the code
    under test, inside the sandbox only, and fails when it succeeds: injected SQL returns other
    users' rows, a shell metacharacter creates a marker file in pytest's tmp_path, `../` reads a
    file outside the folder, a crafted pickle opens a file, `<script>` reaches the HTML, a 40-char
    near-miss costs a regex more than 1 s of CPU (a SIGPROF timer), a seed replay or a Mersenne
    Twister state recovery predicts the next token, a stolen hash costs under 4 ms per guess.

Every task is written with two fixes: the secure gold `patch`, and an *insecure functional fix*
(`metadata["security"]["insecure_patch"]`): what a developer who only reads the statement writes.
Validation (`validate.validate_task`, extended for tasks with exploit tests) keeps a task only when
the gold passes every test, the empty patch fails, and the insecure fix passes every functional
test but fails at least one exploit test: proof that the exploit tests have teeth and that a
functional reward alone would pay for the vulnerability (`minicoder.sandbox.security`).

Where the tasks come from (the catalogue: `security_catalog/`, one module per class):
  - templates, nine vulnerability classes x three structures each (module functions, a class, a
    bug fix or a new feature), rendered over ten domains each (names of the package, module,
    functions, tables, sample data), so no two tasks share a file;
  - real code: HumanEval's `do_algebra` (its canonical solution calls `eval`) is the code-injection
    subject of one template, its `string_to_md5` is what one password template stores, its
    `words_string` splits the tags of one SQL template; and every task's module may carry one or
    two further HumanEval functions (prompt + canonical solution) as surrounding code, each with its
    HumanEval `check` as a PASS_TO_PASS test, so the file a policy edits is real, varied code.

    minicoder synth security --out data/tasks/security_tasks.jsonl --per-class 24 --seed 0

writes the validated set, a resumable ledger and a report per class (candidates, validated, dropped
with reasons); see `synth_security`.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import random
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minicoder.gitdiff import diff_snapshots
from minicoder.record import Environment, Task

# HumanEval problems used as surrounding code: self-contained (imports from typing/math only),
# names that clash with no template
NEIGHBOURS = (0, 2, 4, 7, 12, 13, 15, 16, 23, 27, 29, 30, 34, 35, 45, 48, 52, 55, 60)
EXPLOIT_FILE_SUFFIX = "_hostile_input"  # tests/test_<module><suffix>.py holds the exploit tests


@dataclass(frozen=True)
class Template:
    """One task shape. Texts use `__NAME__` placeholders, filled from the domain and `choices`;
    `__HUMANEVAL_<n>__` is HumanEval problem n (prompt + canonical solution), `__HUMANEVAL_PROMPT_<n>__`
    its prompt alone (signature and docstring, for a rewritten body)."""

    key: str  # e.g. "sorted_rows"
    statement: str  # the no-hint problem statement
    base: str  # the code under change at the base commit (after the imports)
    secure: str  # ... after the secure gold fix
    insecure: str  # ... after the insecure functional fix
    functional: str  # functional test functions
    exploits: str  # exploit test functions
    test_imports: str  # import lines of both test files
    imports: tuple[str, ...] = ()  # module imports at base
    secure_imports: tuple[str, ...] | None = None  # after the secure fix (None: as at base)
    insecure_imports: tuple[str, ...] | None = None
    fixtures: str = ""  # helpers / fixtures put in both test files
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)  # placeholder -> options (MOD required)
    hint: str = ""  # a template-specific sentence appended to the class hint
    neighbours: bool = True  # HumanEval functions may be added around the code


@dataclass(frozen=True)
class VulnClass:
    key: str  # e.g. "sql_injection"
    cwe: str  # e.g. "CWE-89"
    title: str
    hint: str  # the security sentence of the hinted statement
    templates: tuple[Template, ...]
    domains: tuple[dict[str, str], ...]  # PKG and the names the templates use


@functools.cache
def classes() -> dict[str, VulnClass]:
    """The catalogue: vulnerability class key -> VulnClass (nine classes)."""
    import importlib

    from minicoder.tasks.security_catalog import MODULES

    mods = [importlib.import_module(f"minicoder.tasks.security_catalog.{m}") for m in MODULES]
    return {m.CLASS.key: m.CLASS for m in mods}


# --- rendering -------------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"__([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*)__")


def subst(text: str, values: dict[str, str]) -> str:
    """Fill `__NAME__` placeholders; an unknown one is an error (a template bug, not a task's)."""

    def rep(m: re.Match) -> str:
        if m.group(1) not in values:
            raise KeyError(f"template placeholder __{m.group(1)}__ has no value")
        return values[m.group(1)]

    return _PLACEHOLDER.sub(rep, text)


@functools.cache
def _humaneval() -> dict[int, dict[str, str]]:
    from minicoder.data.corpus import humaneval_problems

    return {int(p["task_id"].split("/")[1]): p for p in humaneval_problems()}


def humaneval_code(n: int) -> tuple[list[str], str]:
    """(import lines, code) of HumanEval problem n: its prompt + canonical solution, imports hoisted."""
    p = _humaneval()[n]
    src = (p["prompt"] + p["canonical_solution"]).strip("\n")
    imports = [ln for ln in src.splitlines() if ln.startswith(("import ", "from "))]
    body = "\n".join(ln for ln in src.splitlines() if ln not in imports).strip("\n")
    return imports, body


def humaneval_check(n: int) -> tuple[str, str]:
    """(test code, entry point): HumanEval's `check` renamed `_check_<entry>` plus a test calling it."""
    p = _humaneval()[n]
    entry = p["entry_point"]
    code = p["test"].replace("def check(candidate)", f"def _check_{entry}(candidate)").strip("\n")
    return f"{code}\n\n\ndef test_{entry}_unchanged():\n    _check_{entry}({entry})\n", entry


def _humaneval_values(texts: list[str]) -> dict[str, str]:
    out = {}
    for text in texts:
        for m in re.finditer(r"__HUMANEVAL_(PROMPT_)?(\d+)__", text):
            p = _humaneval()[int(m.group(2))]
            out[m.group(0)[2:-2]] = (p["prompt"].strip("\n") if m.group(1) else humaneval_code(int(m.group(2)))[1])
    return out


def module_text(doc: str, imports: list[str], parts: list[str]) -> str:
    """A module: docstring, imports (plain, then from-imports, sorted), the parts two lines apart."""
    imps = sorted(set(i for i in imports if i.startswith("import "))) + sorted(
        set(i for i in imports if i.startswith("from ")))
    head = f'"""{doc}"""\n'
    if imps:
        head += "\n" + "\n".join(imps) + "\n"
    return head + "\n\n" + "\n\n\n".join(p.strip("\n") for p in parts if p.strip()) + "\n"


def defined_tests(source: str) -> list[str]:
    """Names of the module-level `test_*` functions of a test file, in order."""
    return [n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")]


@dataclass
class Rendered:
    """A candidate before validation: the task plus what generation knows about it."""

    task: Task
    vclass: str
    template: str
    versions: dict[str, dict[str, str]] = field(default_factory=dict)  # base / secure / insecure / tests files


def render(vc: VulnClass, tpl: Template, domain: dict[str, str], seed: int = 0) -> Rendered:
    """One candidate task of class `vc` from template `tpl` over `domain` (deterministic given seed)."""
    rng = random.Random(f"{seed}:{vc.key}:{tpl.key}:{domain['PKG']}")
    values = dict(domain)
    for name, options in sorted(tpl.choices.items()):
        values[name] = subst(rng.choice(options), values)
    values.update(_humaneval_values([tpl.base, tpl.secure, tpl.insecure]))
    pkg, mod = values["PKG"], values["MOD"]
    values.setdefault("PATH", f"{pkg}/{mod}.py")
    picked: list[int] = []
    if tpl.neighbours:
        picked = rng.sample(NEIGHBOURS, k=rng.choice((0, 1, 1, 2)))
    before = rng.random() < 0.5
    extra_imports: list[str] = []
    around: list[str] = []
    for n in picked:
        imps, code = humaneval_code(n)
        extra_imports += imps
        around.append(code)
    doc = subst(rng.choice(("__PKG__: __MOD__ helpers.", "Helpers of the __PKG__ app (__MOD__).",
                            "The __MOD__ part of __PKG__.")), values)

    def module(code: str, imports: tuple[str, ...] | None) -> str:
        body = [subst(code, values)]
        parts = (around + body) if before else (body + around)
        return module_text(doc, list(tpl.imports if imports is None else imports) + extra_imports, parts)

    base = module(tpl.base, tpl.imports)
    secure = module(tpl.secure, tpl.secure_imports)
    insecure = module(tpl.insecure, tpl.insecure_imports)
    checks, entries = [], []
    for n in picked:
        code, entry = humaneval_check(n)
        checks.append(code)
        entries.append(entry)
    imports = subst(tpl.test_imports, values).rstrip("\n")
    if entries:
        imports += f"\nfrom {pkg}.{mod} import {', '.join(sorted(entries))}"
    fixtures = subst(tpl.fixtures, values).strip("\n")
    functional = "\n\n\n".join(x for x in [imports, fixtures, subst(tpl.functional, values).strip("\n"),
                                         *[c.strip("\n") for c in checks]] if x) + "\n"
    exploit = "\n\n\n".join(x for x in [imports, fixtures, subst(tpl.exploits, values).strip("\n")] if x) + "\n"
    test_file = f"tests/test_{mod}.py"
    exploit_file = f"tests/test_{mod}{EXPLOIT_FILE_SUFFIX}.py"
    files = {f"{pkg}/__init__.py": f'"""The {pkg} package."""\n', f"{pkg}/{mod}.py": base}
    statement = subst(tpl.statement, values).strip()
    hint = f"{statement}\n\n{vc.hint}" + (f" {subst(tpl.hint, values)}" if tpl.hint else "")
    functional_ids = [f"{test_file}::{n}" for n in defined_tests(functional)]
    exploit_ids = [f"{exploit_file}::{n}" for n in defined_tests(exploit)]
    # the id names the content, so a changed template gives new ids (a ledger never answers for old text)
    digest = hashlib.sha256("\0".join([vc.key, tpl.key, base, secure, insecure, functional, exploit,
                                        statement]).encode()).hexdigest()[:8]
    task = Task(
        instance_id=f"security__{pkg}-{mod}-{digest}", repo=f"minicoder-security/{pkg}", base_commit="",
        patch=diff_snapshots(files, {**files, f"{pkg}/{mod}.py": secure}),
        test_patch=diff_snapshots({}, {test_file: functional, exploit_file: exploit}),
        problem_statement=statement, FAIL_TO_PASS=functional_ids, PASS_TO_PASS=[],
        environment=Environment(files=files, timeout_s=60.0), source="template",
        metadata={"subject": f"{vc.key}/{tpl.key}/{pkg}", "security": {
            "class": vc.key, "cwe": vc.cwe, "template": tpl.key, "exploit_tests": exploit_ids,
            "insecure_patch": diff_snapshots(files, {**files, f"{pkg}/{mod}.py": insecure}),
            "hint": hint, "hinted": False, "humaneval": sorted(set(picked) | _real_code(tpl)), "seed": seed}})
    versions = {"base": files, "secure": {**files, f"{pkg}/{mod}.py": secure},
                "insecure": {**files, f"{pkg}/{mod}.py": insecure}, "tests": {test_file: functional, exploit_file: exploit}}
    return Rendered(task=task, vclass=vc.key, template=tpl.key, versions=versions)


def _real_code(tpl: Template) -> set[int]:
    return {int(m) for m in re.findall(r"__HUMANEVAL_(?:PROMPT_)?(\d+)__", tpl.base)}


def candidates(per_class: int = 24, seed: int = 0, only: list[str] | None = None) -> list[Rendered]:
    """`per_class` candidates of each class, templates taking turns, domains shuffled by `seed`."""
    out = []
    cat = classes()
    unknown = sorted(set(only or []) - set(cat))
    if unknown:
        raise ValueError(f"unknown vulnerability class(es) {unknown}; known: {sorted(cat)}")
    for key in (only or list(cat)):
        vc = cat[key]
        queues = []
        for tpl in vc.templates:
            doms = list(vc.domains)
            random.Random(f"{seed}:{key}:{tpl.key}").shuffle(doms)
            queues.append([(tpl, d) for d in doms])
        picked = [q[i] for i in range(max(map(len, queues))) for q in queues if i < len(q)][:per_class]
        out += [render(vc, tpl, d, seed) for tpl, d in picked]
    return out


# --- validation (called by validate.validate_task for tasks with exploit tests) --------------------

def check_insecure_fix(task: Task, run, functional: list[str], repeats: int, checks: dict[str, Any]) -> str:
    """The security half of validation: "" when it holds, else why the task is dropped.

    `run(patch, ids)` runs tests in the sandbox (a `runner.Run`). The secure gold must pass every
    exploit test in each of `repeats` runs; the insecure functional fix must pass every functional
    test (`functional`: the validated FAIL_TO_PASS + PASS_TO_PASS) and fail at least one exploit test.
    """
    from minicoder.sandbox.security import exploit_tests, security_meta

    exploits = exploit_tests(task)
    for _ in range(repeats):
        r = run(task.patch, exploits)
        if not r.trusted:
            return f"secure gold run of the exploit tests not trusted: {r.status}: {r.message[:200]}"
        bad = sorted(r.not_passed(exploits))
        if bad:
            return f"secure gold fails an exploit test: {bad[0]} is {r.outcomes.get(bad[0], 'missing')}"
    insecure = security_meta(task).get("insecure_patch") or ""
    if not insecure.strip():
        return "no insecure functional fix to test the exploit tests against"
    r = run(insecure, functional + exploits)
    if not r.patch_applied:
        return "insecure fix does not apply"
    if not r.trusted:
        return f"insecure fix run not trusted: {r.status}: {r.message[:200]}"
    failing = sorted(r.not_passed(functional))
    if failing:
        return f"insecure fix is not a functional fix: {failing[0]} is {r.outcomes.get(failing[0], 'missing')}"
    caught = sorted(r.not_passed(exploits))
    if not caught:
        return "exploit tests have no teeth: the insecure fix passes every exploit test"
    checks["security"] = (f"gold passes {len(exploits)} exploit test(s) x{repeats}; "
                          f"insecure fix passes {len(functional)} functional, fails {len(caught)} exploit")
    checks["caught_by"] = caught
    return ""


# --- the pipeline --------------------------------------------------------------------------------

def synth_security(out: str | Path, *, per_class: int = 24, seed: int = 0, only: list[str] | None = None,
                   backend: Any = "local", repeats: int = 2, workers: int = 2, progress: bool = True,
                   exploit_checks: bool = True, command: str = "synth security") -> dict[str, Any]:
    """Render, validate (sandbox) and QA the security tasks; write `out`, `<out>.report.json`.

    Resumable: each candidate's verdict is a line of `<out>.ledger.jsonl` (see pipeline.Ledger).
    Returns the report: per class, candidates / validated / after QA / dropped with reasons.
    """
    import json

    from minicoder.record import write_tasks
    from minicoder.tasks.pipeline import Ledger, _progress, _run_units, machine_info, reason_key, record
    from minicoder.tasks.qa import run_qa
    from minicoder.tasks.validate import validate_task

    out = Path(out)
    ledger = Ledger(str(out) + ".ledger.jsonl")
    cands = candidates(per_class, seed, only)
    todo = [c for c in cands if c.task.instance_id not in ledger]
    t0 = time.perf_counter()
    bar = _progress(len(todo), command, progress)

    def work(c: Rendered, stop) -> None:
        if stop.is_set():
            return
        t1 = time.perf_counter()
        v = validate_task(c.task, backend=backend, repeats=repeats, check_exploits=exploit_checks)
        extra = {"vclass": c.vclass, "template": c.template, "checks": v.checks, "flaky": len(v.flaky)}
        ledger.add(record(c.task.instance_id, kept=v.ok, stage="validate", reason=v.reason,
                          task=v.task if v.ok else None, operator=c.vclass, seconds=time.perf_counter() - t1,
                          runs=v.runs, extra=extra))
        bar.update(1)

    try:
        _run_units(todo, work, workers)
    finally:
        bar.close()
    wanted = {c.task.instance_id: c for c in cands}
    recs = [r for r in ledger.candidates() if r["id"] in wanted]
    kept = [Task.from_dict(r["task"], f"ledger {r['id']}") for r in recs if r["kept"]]
    qa = run_qa(kept)
    final = sorted(qa.kept, key=lambda t: t.instance_id)
    write_tasks(out, final)
    qa_ids = {t.instance_id for t in final}
    qa_reason = {i: r for i, r, _ in qa.rejected}
    per: dict[str, dict[str, Any]] = {}
    for key in (only or list(classes())):
        rs = [r for r in recs if wanted[r["id"]].vclass == key]
        dropped: Counter = Counter(reason_key(r["reason"]) for r in rs if not r["kept"])
        dropped.update(f"qa: {qa_reason[r['id']]}" for r in rs if r["kept"] and r["id"] in qa_reason)
        per[key] = {"cwe": classes()[key].cwe, "candidates": len(rs), "validated": sum(r["kept"] for r in rs),
                    "after_qa": sum(r["id"] in qa_ids for r in rs), "dropped": dict(dropped),
                    "templates": dict(Counter(wanted[r["id"]].template for r in rs if r["id"] in qa_ids))}
    runs = sum(int(r.get("runs", 0)) for r in recs)
    report = {"command": command, "out": str(out), "per_class_requested": per_class, "seed": seed,
              "backend": backend if isinstance(backend, str) else getattr(backend, "backend", "?"),
              "candidates": len(recs), "validated": sum(r["kept"] for r in recs), "tasks": len(final),
              "per_class": per, "qa": qa.to_dict(), "sandbox_runs": runs,
              "seconds_this_run": round(time.perf_counter() - t0, 1),
              "validation_seconds_total": round(sum(float(r.get("seconds", 0)) for r in recs), 1),
              "machine": machine_info()}
    Path(str(out) + ".report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def report_table(report: dict[str, Any]) -> str:
    """The per-class yield table of a `synth_security` report."""
    lines = [f"{'class':<24}{'cwe':<12}{'candidates':>11}{'validated':>10}{'after QA':>9}  dropped (reason: n)"]
    for key, v in report["per_class"].items():
        why = ", ".join(f"{r}: {n}" for r, n in sorted(v["dropped"].items(), key=lambda kv: -kv[1])) or "-"
        lines.append(f"{key:<24}{v['cwe']:<12}{v['candidates']:>11}{v['validated']:>10}{v['after_qa']:>9}  {why}")
    lines.append(f"{'total':<36}{report['candidates']:>11}{report['validated']:>10}{report['tasks']:>9}")
    return "\n".join(lines)


def per_class_counts(tasks: list[Task]) -> dict[str, int]:
    from minicoder.sandbox.security import vuln_class

    c: dict[str, int] = defaultdict(int)
    for t in tasks:
        c[vuln_class(t)] += 1
    return dict(c)


# --- command line ----------------------------------------------------------------------------------

def add_security_parser(sub) -> None:
    """`minicoder synth security` (registered by minicoder.tasks.cli)."""
    s = sub.add_parser("security", help="vulnerable tasks with exploit tests (nine CWE classes), validated",
                       description="Render the security task templates, validate each in the sandbox (gold "
                                   "passes, empty fails, the insecure fix passes functional tests and fails an "
                                   "exploit test), QA, and write a per-class report.")
    s.add_argument("--out", required=True, help="output JSONL (ledger and report go next to it)")
    s.add_argument("--per-class", type=int, default=24, help="candidates per class (default 24)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--classes", default=None, help=f"comma-separated subset of: {', '.join(sorted(classes()))}")
    s.add_argument("--backend", choices=("local", "docker"), default="local")
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--repeats", type=int, default=2, help="runs of the gold / empty patch (default 2)")
    s.add_argument("--no-exploit-checks", action="store_true",
                   help="skip the generic trivial-patch / stub checks (the security checks always run)")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=_cli)


def _cli(args) -> int:
    from minicoder.errors import UserError
    from minicoder.tasks.runner import SandboxFailure

    if args.per_class < 1 or args.workers < 1 or args.repeats < 1:
        raise UserError("--per-class, --workers and --repeats must be at least 1")
    only = [c.strip() for c in args.classes.split(",")] if args.classes else None
    bad = sorted(set(only or []) - set(classes()))
    if bad:
        raise UserError(f"--classes: unknown {bad}; choose from {', '.join(sorted(classes()))}")
    cmd = f"synth security --per-class {args.per_class} --seed {args.seed} --repeats {args.repeats}" + (
        f" --classes {args.classes}" if args.classes else "") + (" --no-exploit-checks" if args.no_exploit_checks else "")
    try:
        rep = synth_security(args.out, per_class=args.per_class, seed=args.seed, only=only, backend=args.backend,
                             repeats=args.repeats, workers=args.workers, progress=not args.no_progress,
                             exploit_checks=not args.no_exploit_checks, command=cmd)
    except SandboxFailure as e:
        raise UserError(f"the sandbox failed, stopping (rerun the same command to resume): {e}") from None
    print(report_table(rep))
    print(f"tasks: {args.out}   report: {args.out}.report.json")
    return 0
