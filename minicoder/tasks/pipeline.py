"""Resumable synthesis pipelines: candidates -> execution -> validation -> QA, with a ledger.

Every candidate (a commit, a mutant, a task to validate) ends as exactly one line in a ledger file
(`<out>.ledger.jsonl`), written and fsync'ed the moment it finishes: kept (with its final task) or
rejected (with the stage and reason). A rerun reads the ledger and skips every id in it, so an
interrupted run continues where it stopped: nothing finished is redone, nothing is lost (a torn
last line from a kill is dropped and that candidate redone). Per-subject baselines of the mutation
pipeline are ledger lines too. At the end QA runs over all kept tasks, the output file is written
atomically, and a report (yield per stage, rejection reasons per stage, per mutation operator,
sandbox runs, throughput) is written as JSON next to it.

Work fans out over a thread pool (`workers`): the threads only wait on sandbox subprocesses.
Ctrl-C sets a stop flag: workers finish the candidate in hand, record it, and stop.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from minicoder.record import Task, TaskFormatError, write_tasks
from minicoder.tasks.qa import QAConfig, run_qa
from minicoder.tasks.runner import COUNTER, count_runs
from minicoder.tasks.validate import validate_task


def reason_key(reason: str) -> str:
    """The generic part of a reason (before ':' or ' ('), for counting."""
    return reason.split(":", 1)[0].split(" (", 1)[0].strip()


# --- the ledger ---------------------------------------------------------------------------------

class Ledger:
    """Append-only JSONL of finished candidates, keyed by id; tolerant of a torn last line."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.records: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        if self.path.exists():
            raw = self.path.read_bytes()
            if raw and not raw.endswith(b"\n"):  # killed mid-write: drop the partial record
                raw = raw[: raw.rfind(b"\n") + 1]
                self.path.write_bytes(raw)
            for lineno, line in enumerate(raw.decode("utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    raise TaskFormatError(f"{self.path.name} line {lineno}: not valid JSON; "
                                          f"delete the ledger to start over") from None
                self.records[rec["id"]] = rec
        self.resumed = sum(1 for r in self.records.values() if r.get("kind", "candidate") == "candidate")
        self.run_id = f"{os.getpid()}-{time.time():.0f}"  # marks the records this run adds

    def __contains__(self, cid: str) -> bool:
        return cid in self.records

    def add(self, rec: dict[str, Any]) -> None:
        rec = {**rec, "run_id": self.run_id}
        line = json.dumps(rec, ensure_ascii=False) + "\n"
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            self.records[rec["id"]] = rec

    def candidates(self) -> list[dict[str, Any]]:
        return sorted((r for r in self.records.values() if r.get("kind", "candidate") == "candidate"),
                      key=lambda r: r["id"])


def record(cid: str, *, kept: bool, stage: str, reason: str = "", task: Task | None = None,
           operator: str = "", seconds: float = 0.0, runs: int = 0, extra: dict | None = None) -> dict[str, Any]:
    return {"id": cid, "kind": "candidate", "kept": kept, "stage": stage, "reason": reason,
            "operator": operator, "seconds": round(seconds, 3), "runs": runs,
            "task": task.to_dict() if task is not None else None, **(extra or {})}


# --- reports ------------------------------------------------------------------------------------

def machine_info() -> dict[str, Any]:
    from minicoder.machine import machine_info as _machine_info

    return _machine_info(())


@dataclass
class Summary:
    """What a pipeline run produced (also the JSON report)."""

    command: str
    out: str
    funnel: dict[str, int] = field(default_factory=dict)  # stage -> count surviving it
    rejections: dict[str, dict[str, int]] = field(default_factory=dict)  # stage -> reason -> count
    per_operator: dict[str, dict[str, int]] = field(default_factory=dict)
    per_kind: dict[str, dict[str, int]] = field(default_factory=dict)  # git: merge_pr / squash_pr / commit
    environments: dict[str, Any] = field(default_factory=dict)  # git: environments built, shared, failed
    flaky_dropped: int = 0
    resumed: int = 0  # candidates found in the ledger (not redone)
    processed: int = 0  # candidates processed in this run
    sandbox_runs: int = 0
    seconds: float = 0.0
    tasks_per_minute: float = 0.0  # candidates processed per minute in this run
    kept_now: int = 0  # candidates kept (validated, when validating) in this run
    kept_per_minute: float = 0.0
    failed_validation: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["date"] = datetime.now(UTC).replace(microsecond=0).isoformat()
        d["machine"] = machine_info()
        return d

    def table(self) -> str:
        rows = [f"{'stage':<28}{'count':>8}"] + [f"{k:<28}{v:>8}" for k, v in self.funnel.items()]
        for stage, reasons in self.rejections.items():
            for r, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
                rows.append(f"  rejected at {stage}: {r[:60]:<60}{n:>6}")
        if self.per_operator:
            cols = sorted({c for v in self.per_operator.values() for c in v})
            rows.append(f"{'operator':<20}" + "".join(f"{c:>16}" for c in cols))
            for op, v in sorted(self.per_operator.items()):
                rows.append(f"{op:<20}" + "".join(f"{v.get(c, 0):>16}" for c in cols))
        if self.per_kind:
            cols = ["entries", "candidates", "executed", "validated", "after_qa"]
            rows.append(f"{'kind':<20}" + "".join(f"{c:>12}" for c in cols))
            for k, v in sorted(self.per_kind.items()):
                rows.append(f"{k:<20}" + "".join(f"{v.get(c, 0):>12}" for c in cols))
        if self.environments:
            e = self.environments
            rows.append(f"environments: {e.get('built', 0)} built ({e.get('failed', 0)} failed), "
                        f"{e.get('tasks_sharing', 0)} candidates used them, {e.get('seconds', 0.0):.1f}s building")
        rows.append(f"flaky tests dropped: {self.flaky_dropped}; sandbox runs: {self.sandbox_runs}; "
                    f"resumed: {self.resumed}, processed now: {self.processed}; "
                    f"{self.seconds:.1f}s, {self.tasks_per_minute:.1f} candidates/min, "
                    f"{self.kept_per_minute:.1f} kept tasks/min")
        return "\n".join(rows)


def _finish(command: str, out: Path, ledger: Ledger, processed: int, seconds: float, runs: int,
            qa: QAConfig | None, do_qa: bool, stages: list[str], only: set[str] | None = None,
            environments: dict[str, Any] | None = None) -> Summary:
    """QA over kept tasks, write the output and the report. `only`: the candidate ids of this run's plan
    (a ledger may hold more, e.g. from a larger run with the same seed; they are left out)."""
    recs = [r for r in ledger.candidates() if only is None or r["id"] in only]
    kept = [Task.from_dict(r["task"], f"ledger {r['id']}") for r in recs if r["kept"]]
    s = Summary(command=command, out=str(out), resumed=ledger.resumed, processed=processed,
                seconds=round(seconds, 2), sandbox_runs=runs, environments=environments or {})
    s.kept_now = sum(1 for r in recs if r["kept"] and r.get("run_id") == ledger.run_id)
    rej: dict[str, Counter] = defaultdict(Counter)
    for r in recs:
        if not r["kept"]:
            rej[r["stage"]][reason_key(r["reason"])] += 1
        s.flaky_dropped += int(r.get("flaky", 0))
    s.funnel["candidates"] = len(recs)
    alive = len(recs)
    for st in stages:
        alive -= sum(rej[st].values())
        s.funnel[f"after {st}"] = alive
    final = kept
    qa_ids: set[str] = {t.instance_id for t in kept}
    if do_qa:
        rep = run_qa(kept, qa)
        final = rep.kept
        qa_ids = {t.instance_id for t in final}
        rej["qa"] = Counter(rep.counts)
        s.funnel["after qa"] = len(final)
    s.rejections = {k: dict(v) for k, v in rej.items() if v}
    per_op: dict[str, Counter] = defaultdict(Counter)
    for r in recs:
        op = r.get("operator") or "-"
        per_op[op]["candidates"] += 1
        if r["kept"] or r["stage"] not in ("filter", "execute"):
            per_op[op]["broke_tests"] += 1
        if r["kept"]:
            per_op[op]["validated"] += 1
            per_op[op]["after_qa"] += int(r["id"] in qa_ids)
    if any(op != "-" for op in per_op):
        s.per_operator = {k: dict(v) for k, v in per_op.items()}
    per_kind: dict[str, Counter] = defaultdict(Counter)
    for r in recs:
        if "change" not in r:
            continue
        k = per_kind[r["change"]]
        k["entries"] += 1
        k["candidates"] += int(r["stage"] != "filter")
        k["executed"] += int(r["kept"] or r["stage"] == "validate")
        k["validated"] += int(r["kept"])
        k["after_qa"] += int(r["kept"] and r["id"] in qa_ids)
    s.per_kind = {k: dict(v) for k, v in per_kind.items()}
    s.failed_validation = sum(1 for r in recs if not r["kept"] and r["stage"] == "validate")
    write_tasks(out, sorted(final, key=lambda t: t.instance_id))
    s.tasks_per_minute = round(processed / (seconds / 60), 2) if seconds > 0 and processed else 0.0
    s.kept_per_minute = round(s.kept_now / (seconds / 60), 2) if seconds > 0 else 0.0
    Path(str(out) + ".report.json").write_text(json.dumps(s.to_dict(), indent=2) + "\n")
    return s


def _run_units(units: list[Any], work: Callable[[Any, threading.Event], None], workers: int) -> None:
    """Run work(unit, stop) over a thread pool; Ctrl-C lets units in hand finish, then re-raises."""
    stop = threading.Event()
    if workers <= 1:
        try:
            for u in units:
                work(u, stop)
        except KeyboardInterrupt:
            stop.set()
            raise
        return
    pool = ThreadPoolExecutor(max_workers=workers)
    futs = [pool.submit(work, u, stop) for u in units]
    try:
        for f in as_completed(futs):
            f.result()
    except BaseException:
        stop.set()
        for f in futs:
            f.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="cand", disable=not enabled, dynamic_ncols=True)


# --- validation of one kept candidate ----------------------------------------------------------

def _validated_record(cid: str, task: Task, operator: str, t0: float, prior, *, validate: bool, backend: Any,
                      repeats: int, exploit_checks: bool, extra: dict | None = None) -> dict[str, Any]:
    """The ledger record of a kept candidate, after validation when asked. Its `runs` are filled in by
    the caller, who counts the candidate's runs on its own thread (`runner.count_runs`)."""
    if not validate:
        return record(cid, kept=True, stage="execute", task=task, operator=operator,
                      seconds=time.perf_counter() - t0, extra=extra)
    v = validate_task(task, backend=backend, repeats=repeats, check_exploits=exploit_checks, prior=prior)
    extra = {**(extra or {}), "flaky": len(v.flaky), "checks": v.checks}
    if not v.ok:
        return record(cid, kept=False, stage="validate", reason=v.reason, operator=operator,
                      seconds=time.perf_counter() - t0, extra=extra)
    return record(cid, kept=True, stage="validate", task=v.task, operator=operator,
                  seconds=time.perf_counter() - t0, extra=extra)


def _mutators(subject, candidates, build_candidate):
    """(candidates, build_candidate) for a subject: Python's AST operators, or tree-sitter's (mutate_ts)
    for a JavaScript, Go or Rust subject."""
    if getattr(subject, "language", "python") == "python":
        return candidates, build_candidate
    from minicoder.tasks import mutate_ts

    return mutate_ts.candidates, mutate_ts.build_candidate


# --- synth mutate ---------------------------------------------------------------------------------

def synth_mutate(subjects: Iterable[Any], out: str | os.PathLike, *, per_subject: int = 6, combine: int = 1,
                 seed: int = 0, operators: tuple[str, ...] | None = None, validate: bool = True,
                 backend: Any = "local", repeats: int = 2, exploit_checks: bool = True, workers: int = 2,
                 qa: QAConfig | None = None, progress: bool = True, command: str = "synth mutate",
                 max_tasks: int | None = None) -> Summary:
    """Mutation tasks from `subjects` (see mutate.py), resumable through `<out>.ledger.jsonl`.

    `max_tasks`: stop starting new candidates once this many have been kept (a soft cap).
    """
    from minicoder.tasks.mutate import OPERATORS, baseline, build_candidate, candidates, combinations

    out = Path(out)
    ops = tuple(operators or OPERATORS)
    ledger = Ledger(str(out) + ".ledger.jsonl")
    subjects = list(subjects)
    plan = [(s, _mutators(s, candidates, build_candidate)[0](s, per_subject, seed, ops)) for s in subjects]
    todo = sum(1 for _, cs in plan for cid, _ in cs if cid not in ledger)
    planned: set[str] = {cid for _, cs in plan for cid, _ in cs}
    t_start = time.perf_counter()
    runs0 = COUNTER.n
    processed = [0]
    kept_count = [sum(1 for r in ledger.candidates() if r["kept"])]
    bar = _progress(todo, f"{command}: candidates", progress)

    def work(item, stop: threading.Event) -> None:
        subject, singles = item
        pending = [(cid, ms) for cid, ms in singles if cid not in ledger]
        kept_singles = [(cid, ms) for cid, ms in singles if cid in ledger and ledger.records[cid]["kept"]]
        base_id = f"{subject.name}__baseline"

        def passing() -> set[str]:
            if base_id not in ledger:
                with count_runs() as counted:
                    ok = sorted(baseline(subject, backend))
                ledger.add({"id": base_id, "kind": "baseline", "passing": ok, "runs": counted.n})
            return set(ledger.records[base_id]["passing"])

        def one(cid: str, ms) -> bool:
            if stop.is_set() or (max_tasks is not None and kept_count[0] >= max_tasks):
                return False
            t0 = time.perf_counter()
            ok = passing()  # the subject's baseline: its runs belong to the subject, not to this candidate
            with count_runs() as counted:
                if not ok:
                    rec = record(cid, kept=False, stage="execute", reason="no test passes on the original code",
                                 operator=ms[0].operator if len(ms) == 1 else "combined")
                else:
                    oc = _mutators(subject, candidates, build_candidate)[1](subject, cid, ms, ok, backend=backend)
                    if not oc.kept:
                        rec = record(cid, kept=False, stage="execute", reason=oc.reason, operator=oc.operator,
                                     seconds=oc.seconds)
                    else:
                        rec = _validated_record(cid, oc.task, oc.operator, t0, oc.prior, validate=validate,
                                                backend=backend, repeats=repeats, exploit_checks=exploit_checks)
            rec["runs"] = counted.n
            ledger.add(rec)
            processed[0] += 1
            if rec["kept"]:
                kept_count[0] += 1
                return True
            return False

        for cid, ms in pending:
            if one(cid, ms):
                kept_singles.append((cid, ms))
            bar.update(1)
        if combine > 0 and not stop.is_set():
            all_combos = combinations(subject, kept_singles, combine, 2, seed)
            planned.update(cid for cid, _ in all_combos)
            combos = [(cid, ms) for cid, ms in all_combos if cid not in ledger]
            bar.total += len(combos)
            for cid, ms in combos:
                one(cid, ms)
                bar.update(1)

    try:
        _run_units(plan, work, workers)
    finally:
        bar.close()
    stages = ["execute", "validate"] if validate else ["execute"]
    return _finish(command, out, ledger, processed[0], time.perf_counter() - t_start, COUNTER.n - runs0, qa,
                   True, stages, only=planned)


# --- validate a file ----------------------------------------------------------------------------

def validate_file(tasks: list[Task], out: str | os.PathLike, *, backend: Any = "local", repeats: int = 2,
                  exploit_checks: bool = True, workers: int = 2, progress: bool = True,
                  command: str = "validate") -> Summary:
    """Validate every task; validated tasks go to `out`, verdicts to `<out>.ledger.jsonl` (resumable)."""
    out = Path(out)
    ledger = Ledger(str(out) + ".ledger.jsonl")
    todo = [t for t in tasks if t.instance_id not in ledger]
    t_start = time.perf_counter()
    runs0 = COUNTER.n
    processed = [0]
    bar = _progress(len(todo), command, progress)

    def work(task: Task, stop: threading.Event) -> None:
        if stop.is_set():
            return
        operator = str(task.metadata["operators"][0]) if task.metadata.get("operators") else ""
        with count_runs() as counted:
            rec = _validated_record(task.instance_id, task, operator, time.perf_counter(), None, validate=True,
                                    backend=backend, repeats=repeats, exploit_checks=exploit_checks)
        rec["runs"] = counted.n
        ledger.add(rec)
        processed[0] += 1
        bar.update(1)

    try:
        _run_units(todo, work, workers)
    finally:
        bar.close()
    return _finish(command, out, ledger, processed[0], time.perf_counter() - t_start, COUNTER.n - runs0, None,
                   False, ["validate"])
