"""Grading a policy on the security tasks (SecCodeBench / CWEval style): func@1 and func-sec@1 per class.

A policy maps a task, as the policy sees it (no-hint statement, or the hinted variant from
`sandbox.security.hinted_variant`), to a patch. `grade` asks it once per task and hint setting,
grades every patch with the security reward (functional tests + exploit tests + bandit, in the
sandbox) and `sandbox.security.security_report` turns the rows into the per-class table.

Two scripted policies bound the table and test it: `always-insecure-fix` applies each task's insecure
functional fix (func@1 = 1, func-sec@1 = 0 in every class, if the exploit tests have teeth), and
`always-secure-fix` applies the gold patch (1 and 1). A learned policy lands in between.

A patch already graded for the same task is not graded again: the sandbox's verdict on a patch does
not depend on which statement the policy read, so a policy that ignores the hint costs one
evaluation per task, not two.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from minicoder.record import Task
from minicoder.sandbox.security import (
    HINT_SUFFIX,
    evaluate_security,
    security_meta,
    security_report,
    suite,
    vuln_class,
)

Policy = Callable[[Task], str]


def always_insecure_fix(task: Task) -> str:
    """The insecure functional fix written with the task (what a security-blind developer writes)."""
    return security_meta(task)["insecure_patch"]


def always_secure_fix(task: Task) -> str:
    """The secure gold patch."""
    return task.patch


SCRIPTED: dict[str, Policy] = {"always-insecure-fix": always_insecure_fix, "always-secure-fix": always_secure_fix}


def load_policy(name: str) -> Policy:
    """A scripted policy by name, or any callable named `package.module:function`."""
    if name in SCRIPTED:
        return SCRIPTED[name]
    if ":" not in name:
        raise ValueError(f"unknown policy {name!r}: one of {sorted(SCRIPTED)} or 'module:function'")
    mod, fn = name.split(":", 1)
    return getattr(importlib.import_module(mod), fn)


def grade(tasks: Iterable[Task], policy: Policy, *, hints: tuple[bool, ...] = (False, True),
          backend: Any = "local", workers: int = 2, progress: bool = True, **evaluate_kw) -> list[dict[str, Any]]:
    """One graded attempt per (task, hint setting): `SecurityReward.to_dict()` rows plus "class" and "hint".

    Rows of hinted attempts carry the hinted instance id (base id + HINT_SUFFIX), as `security_report`
    expects. Extra keyword arguments go to `evaluate_security` (limits, penalty, ...).
    """
    from tqdm.auto import tqdm

    tasks = list(tasks)
    views = [(t, v, h) for h in hints for t, v in zip(tasks, suite(tasks, h))]
    patches = [policy(v) for _, v, _ in views]
    done: dict[tuple[str, str], dict[str, Any]] = {}
    lock = threading.Lock()
    bar = tqdm(total=len(views), desc="security suite", unit="task", disable=not progress)

    def one(i: int) -> dict[str, Any]:
        task, view, hinted = views[i]
        key = (task.instance_id, patches[i])
        with lock:
            cached = done.get(key)
        if cached is None:
            cached = evaluate_security(task, patches[i], backend=backend, **evaluate_kw).to_dict()
            with lock:
                done[key] = cached
        row = {**cached, "instance_id": view.instance_id, "class": vuln_class(task), "hint": hinted}
        bar.update(1)
        return row

    # no-hint attempts first, so hinted attempts with the same patch find them graded
    order = sorted(range(len(views)), key=lambda i: views[i][2])
    try:
        if workers <= 1:
            rows = {i: one(i) for i in order}
        else:
            first = [i for i in order if not views[i][2]]
            rest = [i for i in order if views[i][2]]
            with ThreadPoolExecutor(max_workers=workers) as pool:
                rows = dict(zip(first, pool.map(one, first)))
                rows.update(zip(rest, pool.map(one, rest)))
    finally:
        bar.close()
    return [rows[i] for i in range(len(views))]


def run(tasks: list[Task], policies: dict[str, Policy], **kw) -> dict[str, dict[str, Any]]:
    """{policy name: {"rows": graded rows, "report": security_report}} for each policy."""
    out = {}
    for name, policy in policies.items():
        rows = grade(tasks, policy, **kw)
        out[name] = {"rows": rows, "report": security_report(rows, tasks)}
    return out


def one_per_class(tasks: Iterable[Task], n: int = 1) -> list[Task]:
    """The first `n` tasks (by instance id) of each vulnerability class, classes in catalogue order."""
    from minicoder.tasks.security import classes

    by: dict[str, list[Task]] = {}
    for t in sorted(tasks, key=lambda t: t.instance_id):
        if not t.instance_id.endswith(HINT_SUFFIX):
            by.setdefault(vuln_class(t), []).append(t)
    order = [c for c in classes() if c in by] + sorted(set(by) - set(classes()))
    return [t for c in order for t in by[c][:n]]
