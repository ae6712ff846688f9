"""The shipped JavaScript, Go and Rust task sets: well-formed, self-contained, and for one task of each,
on both backends, the gold patch scores 1 and the empty patch 0 (the hostile patches are run against
the demo tasks in test_lang_hostile.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from minicoder.record import read_tasks
from minicoder.sandbox.languages import LANGUAGES
from minicoder.sandbox.reward import evaluate_many

DATA = Path(__file__).resolve().parents[1] / "data" / "tasks"
BACKENDS = ["local", pytest.param("docker", marks=pytest.mark.docker)]


def _tasks(language: str):
    path = DATA / f"{language}_tasks.jsonl"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `python -m minicoder.tasks.lang_sets {language}`")
    return read_tasks(path)


@pytest.mark.parametrize("language", ["javascript", "go", "rust"])
def test_shipped_set_is_well_formed(language):
    tasks = _tasks(language)
    assert tasks
    for t in tasks:
        assert t.language == language and t.environment.image == LANGUAGES[language].image
        assert t.environment.files and t.FAIL_TO_PASS and t.patch and t.test_patch
        assert t.metadata["validation"]["checks"]["gold"] == "pass"
        assert t.metadata["registry"] in ("npm", "debian")
    assert len({t.instance_id for t in tasks}) == len(tasks)


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS, indirect=True)
@pytest.mark.parametrize("language", ["javascript", "go", "rust"])
def test_a_shipped_task_gold_scores_1_and_empty_0(language, backend):
    # the task whose tests span the fewest test files (processes): the check is the same, the run shorter
    task = min(_tasks(language), key=lambda t: (len({i.split("::")[0] for i in t.FAIL_TO_PASS + t.PASS_TO_PASS}),
                                                 t.instance_id))
    gold, empty = evaluate_many(task, [task.patch, ""], backend=backend, workers=2)  # each in its own sandbox
    assert (gold.reward, gold.status) == (1.0, "resolved"), (gold.status, gold.message)
    assert empty.reward == 0.0 and empty.status == "unresolved", (empty.status, empty.message)
