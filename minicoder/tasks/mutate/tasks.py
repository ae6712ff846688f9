"""From mutants to tasks: sample candidates, run them in the sandbox, keep the mutants a passing test
catches and whose revert fixes it, combine validated ones, and write the problem statement.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from minicoder.record import Task
from minicoder.sandbox.status import Status
from minicoder.tasks.mutate.operators import (
    OPERATORS,
    Mutation,
    apply_mutations,
    find_mutations,
    sample_mutations,
)
from minicoder.tasks.mutate.subjects import Subject
from minicoder.tasks.runner import run_tests


@dataclass
class Outcome:
    """What happened to one candidate: kept (with its task) or rejected (with a reason)."""

    candidate_id: str
    kept: bool
    reason: str = ""
    task: Task | None = None
    operator: str = ""
    seconds: float = 0.0
    prior: dict[str, list] = field(default_factory=dict)  # {"empty": [Run], "gold": [Run]}: reusable as repeats


def candidates(subject: Subject, per_subject: int, seed: int,
               operators: tuple[str, ...] = OPERATORS) -> list[tuple[str, list[Mutation]]]:
    """The deterministic single-mutation candidates of a subject: [(instance id, [mutation])]."""
    all_ms: list[Mutation] = []
    for path, lines in sorted(subject.targets.items()):
        all_ms += find_mutations(subject.files[path], path, lines, operators)
    chosen = sample_mutations(all_ms, per_subject, f"{seed}:{subject.name}")
    return [(f"{subject.name}__{_file_tag(subject, m.path)}{m.key}", [m]) for m in chosen]


def _file_tag(subject: Subject, path: str) -> str:
    if len(subject.targets) == 1:
        return ""
    return path.replace("/", "_").removesuffix(".py") + "__"


def combinations(subject: Subject, kept: list[tuple[str, list[Mutation]]], n_combos: int, k: int,
                 seed: int) -> list[tuple[str, list[Mutation]]]:
    """Up to n_combos harder candidates, each k validated mutations of one file on disjoint lines."""
    rng = random.Random(f"{seed}:{subject.name}:combine")
    singles = sorted(kept, key=lambda c: c[0])
    out: list[tuple[str, list[Mutation]]] = []
    seen: set[tuple[str, ...]] = set()
    for _ in range(20 * max(n_combos, 1)):
        if len(out) >= n_combos or len(singles) < k:
            break
        pick = rng.sample(singles, k)
        ms = [c[1][0] for c in pick]
        if len({m.path for m in ms}) != 1:
            continue
        spans = sorted((m.line, m.end_line) for m in ms)
        if any(b[0] <= a[1] for a, b in zip(spans, spans[1:])):
            continue
        ids = tuple(sorted(c[0].rsplit("__", 1)[-1] for c in pick))
        if ids in seen:
            continue
        seen.add(ids)
        out.append((f"{subject.name}__combo__{'+'.join(ids)}", sorted(ms, key=lambda m: m.start)))
    return out


def baseline(subject: Subject, backend: Any = "local") -> set[str]:
    """Test ids that pass on the original (correct) snapshot."""
    probe = subject.task(f"{subject.name}__baseline", subject.files, ["baseline"], [], "baseline", {})
    return run_tests(probe, "", backend=backend).passed


def build_candidate(subject: Subject, instance_id: str, mutations: list[Mutation], passing: set[str],
                    backend: Any = "local") -> Outcome:
    """Execute one mutant: keep it iff some passing test breaks and the gold revert fixes them all."""
    import time

    t0 = time.perf_counter()
    ops = [m.operator for m in mutations]
    op_label = ops[0] if len(ops) == 1 else "combined"
    buggy = dict(subject.files)
    by_path: dict[str, list[Mutation]] = {}
    for m in mutations:
        by_path.setdefault(m.path, []).append(m)
    for path, ms in by_path.items():
        buggy[path] = apply_mutations(subject.files[path], ms)
    meta = {"operators": ops, "mutations": [{"operator": m.operator, "path": m.path, "line": m.line,
                                               "description": m.description} for m in mutations],
            "n_bugs": len(mutations)}

    prior: dict[str, list] = {}

    def done(kept: bool, reason: str = "", task: Task | None = None) -> Outcome:
        return Outcome(instance_id, kept, reason, task, op_label, time.perf_counter() - t0, prior)

    probe = subject.task(instance_id, buggy, ["probe"], [], "probe", meta)
    before = run_tests(probe, "", backend=backend)
    prior["empty"] = [before]
    if Status(before.status).is_limit:
        return done(False, f"mutant hangs or exhausts resources ({before.status})")
    broken = before.not_passed(passing)
    if not broken:
        return done(False, "mutant survives: no passing test fails")
    after = run_tests(probe, probe.patch, backend=backend)
    prior["gold"] = [after]
    unfixed = after.not_passed(passing)
    if unfixed:
        return done(False, "reverting the mutation does not fix the tests")
    statement = problem_statement(subject, sorted(broken), before.messages)
    task = subject.task(instance_id, buggy, sorted(broken), sorted(passing - broken), statement, meta)
    return done(True, "", task)


def problem_statement(subject: Subject, failing: list[str], messages: dict[str, str] | None = None) -> str:
    """An issue-style statement: what misbehaves and which tests show it; never the fix.

    With per-case test snippets (HumanEval) up to three failing checks are quoted; otherwise the
    first failure messages of the test run are (e.g. `AssertionError: assert 'x' == 'y'`).
    """
    lines = [f"{subject.what[0].upper() + subject.what[1:]} has a bug: it no longer behaves as documented."
             if subject.what else "The code has a bug: it no longer behaves as documented.", ""]
    examples = [(t, subject.test_snippets[t]) for t in failing if t in subject.test_snippets][:3]
    if examples:
        lines.append("These checks fail:")
        for _, code in examples:
            lines += ["```python", code.strip(), "```"]
    elif messages:
        shown_msgs = [(t, messages[t]) for t in failing if messages.get(t)][:2]
        if shown_msgs:
            lines.append("Failure output:")
            for t, msg in shown_msgs:
                lines += ["```", f"{t}: {msg.strip()[:300]}", "```"]
    shown = failing[:8]
    lines.append("Failing tests: " + ", ".join(f"`{t}`" for t in shown)
                 + (f" and {len(failing) - len(shown)} more." if len(failing) > len(shown) else "."))
    lines.append("Fix the code (not the tests) so that these tests pass and no other test breaks.")
    return "\n".join(lines)
