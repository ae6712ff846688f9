"""The demo's stage runner: cached, resumable stages in a fixed order.

A `Stage` is a name, a function ``fn(ctx: StageContext) -> dict``, the stages whose results it reads
(`deps`) and its settings (a function of the run's options, e.g. smaller with ``--quick``). Each stage
works in its own folder ``<out>/<name>/`` and records itself in ``<out>/<name>/stage.json``:

    {"name", "key", "status": "running" | "done", "seconds", "result": {...}}

Cache key: a hash of the stage's name, its settings, the keys of the stages it reads, the source
of its function and the minicoder version. A stage whose stage.json says "done" under the same key
is skipped (its recorded result is reused); a changed key wipes the folder and re-runs it, and
so every stage downstream of it (their keys contain it).

Interruption: a stage interrupted (Ctrl-C, a crash) is left "running" with its partial work. The
next run with the same key calls the stage again with ``ctx.resumed = True`` and the folder as it
was: stages that can continue do (the trainers resume from their last checkpoint, task synthesis
from its ledger); the others start over. ``--from STAGE`` wipes that stage and every later one first.

Results are JSON; paths in them are relative to ``<out>`` (`ctx.rel`, `ctx.path`), so a demo
folder can be moved. Where a stage lives: ``"module:function"`` strings are imported when the
stage runs, so an optional stage (the RL stage) costs nothing until it is used.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

StageFn = Callable[["StageContext"], dict]


@dataclass(frozen=True)
class Stage:
    name: str
    fn: StageFn | str  # a function or "module:function"
    deps: tuple[str, ...] = ()  # stages whose results this one reads (they must come earlier)
    settings: Callable[[Any], dict] | dict = field(default_factory=dict)  # a dict, or options -> dict
    help: str = ""

    def resolve(self) -> StageFn:
        if callable(self.fn):
            return self.fn
        module, _, attr = self.fn.partition(":")
        return getattr(importlib.import_module(module), attr)

    def settings_for(self, options: Any) -> dict:
        return dict(self.settings(options) if callable(self.settings) else self.settings)


@dataclass
class StageContext:
    """What a stage function gets: its folder, settings, the results of its deps, the run's options."""

    name: str
    dir: Path  # <out>/<name>/, created (and emptied when the key changed)
    out: Path  # the demo folder
    settings: dict
    inputs: dict[str, dict]  # dep name -> its result
    options: Any  # the run's options (argparse Namespace: quick, backend, overrides, ...)
    resumed: bool = False  # partial work of an interrupted run with the same key is in `dir`

    def path(self, rel: str | os.PathLike) -> Path:
        """A path recorded in a result (relative to the demo folder) as a real path."""
        return self.out / rel

    def rel(self, p: str | os.PathLike) -> str:
        """A path to record in a result: relative to the demo folder."""
        return os.path.relpath(Path(p), self.out)


@dataclass
class StageRecord:
    name: str
    key: str
    status: str  # "done" | "running"
    seconds: float = 0.0
    result: dict = field(default_factory=dict)
    cached: bool = False  # skipped in this run (result reused)

    def to_dict(self) -> dict:
        return {"name": self.name, "key": self.key, "status": self.status, "seconds": self.seconds,
                "result": self.result}


def _source_hash(fn: Any) -> str:
    try:
        src = inspect.getsource(fn)
    except (OSError, TypeError):
        src = getattr(fn, "__qualname__", repr(fn))
    return hashlib.sha256(src.encode()).hexdigest()[:16]


def stage_key(stage: Stage, settings: dict, dep_keys: dict[str, str], fn: Any | None = None) -> str:
    """The cache key of a stage run (see the module docstring)."""
    from minicoder import __version__

    blob = json.dumps({"name": stage.name, "settings": settings, "deps": dep_keys, "version": __version__,
                       "code": _source_hash(fn if fn is not None else stage.resolve())},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_record(out: Path, name: str) -> StageRecord | None:
    p = out / name / "stage.json"
    try:
        d = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return StageRecord(d["name"], d["key"], d["status"], d.get("seconds", 0.0), d.get("result") or {})


def write_record(out: Path, rec: StageRecord) -> None:
    p = out / rec.name / "stage.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rec.to_dict(), indent=1, default=str) + "\n")
    os.replace(tmp, p)


def _wipe(d: Path) -> None:
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True, exist_ok=True)


def check_stages(stages: Sequence[Stage]) -> None:
    """Names unique, every dep an earlier stage."""
    seen: set[str] = set()
    for s in stages:
        if s.name in seen:
            raise ValueError(f"stage {s.name!r} appears twice")
        for d in s.deps:
            if d not in seen:
                raise ValueError(f"stage {s.name!r} reads {d!r}, which is not an earlier stage")
        seen.add(s.name)


def insert_stage(stages: list[Stage], stage: Stage, after: str) -> list[Stage]:
    """A copy of `stages` with `stage` right after the stage named `after`."""
    names = [s.name for s in stages]
    if after not in names:
        raise ValueError(f"no stage {after!r} to insert {stage.name!r} after; stages: {names}")
    i = names.index(after) + 1
    return [*stages[:i], stage, *stages[i:]]


def run_stages(stages: Sequence[Stage], out: Path, options: Any, from_stage: str | None = None,
               only: str | None = None, log: Callable[[str], None] = print) -> list[StageRecord]:
    """Run (or skip, when cached) each stage in order; returns one record per stage run or skipped.

    `from_stage`: wipe and re-run it and every later stage. `only`: run just that stage (its deps
    must have run before; their recorded results are used). A KeyboardInterrupt propagates after the
    interrupted stage is left "running" for the next run to continue.
    """
    check_stages(stages)
    names = [s.name for s in stages]
    for n in (from_stage, only):
        if n is not None and n not in names:
            raise ValueError(f"no stage {n!r}; stages: {', '.join(names)}")
    out.mkdir(parents=True, exist_ok=True)
    if from_stage is not None:
        for s in stages[names.index(from_stage):]:
            if (out / s.name).exists():
                shutil.rmtree(out / s.name)
    records: dict[str, StageRecord] = {}
    done: list[StageRecord] = []
    for s in stages:
        fn = s.resolve()
        settings = s.settings_for(options)
        for d in s.deps:
            if d not in records:  # `only`: the dep was not visited in this run
                rec_d = read_record(out, d)
                if rec_d is None or rec_d.status != "done":
                    raise RuntimeError(f"stage {s.name!r} needs stage {d!r}, which has not run; run without --only")
                records[d] = rec_d
        key = stage_key(s, settings, {d: records[d].key for d in s.deps}, fn)
        if only is not None and s.name != only:
            prev = read_record(out, s.name)
            if prev is not None and prev.status == "done":
                records[s.name] = prev
            continue
        prev = read_record(out, s.name)
        if prev is not None and prev.key == key and prev.status == "done":
            prev.cached = True
            records[s.name] = prev
            done.append(prev)
            log(f"\n=== {s.name}: unchanged, skipped (cached result from {s.name}/stage.json)")
            continue
        resumed = prev is not None and prev.key == key and prev.status == "running"
        if not resumed:
            _wipe(out / s.name)
        rec = StageRecord(s.name, key, "running")
        write_record(out, rec)
        ctx = StageContext(s.name, out / s.name, out, settings, {d: records[d].result for d in s.deps}, options,
                           resumed=resumed)
        log(f"\n=== {s.name}" + (" (continuing an interrupted run)" if resumed else ""))
        t0 = time.perf_counter()
        result = fn(ctx) or {}
        rec.seconds = round(time.perf_counter() - t0, 2)
        rec.result = json.loads(json.dumps(result, default=str))
        rec.status = "done"
        write_record(out, rec)
        records[s.name] = rec
        done.append(rec)
        log(f"--- {s.name}: {rec.seconds:.1f}s")
    return done


def load_results(stages: Sequence[Stage], out: Path) -> dict[str, StageRecord]:
    """The recorded results of every finished stage in the demo folder."""
    recs = {}
    for s in stages:
        r = read_record(out, s.name)
        if r is not None and r.status == "done":
            recs[s.name] = r
    return recs
