"""QA filters on hand-built tasks: each filter fires on exactly the task planted for it, with its reason."""

from __future__ import annotations

from minicoder.gitdiff import file_diff, normalise_patch, parse_patch
from minicoder.record import Environment, Task
from minicoder.tasks.qa import QAConfig, jaccard, leaked_lines, run_qa, touches_change

BUGGY = "def area(w, h):\n    return w + h\n\n\ndef perimeter(w, h):\n    return 2 * (w + h)\n"
FIXED = BUGGY.replace("return w + h", "return w * h")
TESTS = "from geometry import area\n\n\ndef test_area():\n    assert area(2, 3) == 6\n"
STATEMENT = "area() returns the wrong value for rectangles: area(2, 3) should be 6, it is 5."


def task(name: str, patch: str | None = None, tests: str = TESTS, statement: str = STATEMENT,
         subject: str = "s") -> Task:
    return Task(instance_id=name, repo="demo/geometry", base_commit="",
                patch=patch if patch is not None else file_diff("geometry.py", BUGGY, FIXED),
                test_patch=file_diff("test_geometry.py", None, tests), problem_statement=statement,
                FAIL_TO_PASS=["test_geometry.py::test_area"], PASS_TO_PASS=[],
                environment=Environment(files={"geometry.py": BUGGY}), source="manual",
                metadata={"subject": subject})


def test_normalised_patch_ignores_offsets_and_whitespace():
    a = file_diff("geometry.py", BUGGY, FIXED)
    b = file_diff("geometry.py", "\n\n" + BUGGY, "\n\n" + FIXED.replace("w * h", "w  *  h"))
    assert a != b and normalise_patch(a) == normalise_patch(b)
    fp = parse_patch(a)[0]
    assert (fp.path, fp.removed, fp.added) == ("geometry.py", ["    return w + h"], ["    return w * h"])


def test_leak_detection():
    leaky = task("leaky", statement=STATEMENT + " Replace it with `return w * h`.")
    assert leaked_lines(leaky) == ["return w * h"]
    assert leaked_lines(task("ok")) == []


def test_tests_must_name_the_changed_code():
    assert touches_change(task("ok"))
    unrelated = task("unrelated", tests="import math\n\n\ndef test_pi():\n    assert math.pi > 3\n")
    assert not touches_change(unrelated)
    by_module = task("by_module", tests="import geometry\n\n\ndef test_it():\n    assert geometry.area(2, 3) == 6\n")
    assert touches_change(by_module)
    # tests that never name the changed code but were shown by running to depend on it (validation's
    # stubs of the changed functions make them fail) touch it; without that evidence they do not
    unrelated_tests = "import math\n\n\ndef test_pi():\n    assert math.pi > 3\n"
    shown = task("shown", tests=unrelated_tests)
    shown.metadata["validation"] = {"checks": {"exercised": "yes"}}
    partly = task("partly", tests=unrelated_tests)
    partly.metadata["validation"] = {"checks": {"exercised": "1 FAIL_TO_PASS test(s) dropped"}}
    unknown = task("unknown", tests=unrelated_tests)
    unknown.metadata["validation"] = {"checks": {"exploits": "skipped: the gold patch changes no Python function"}}
    assert touches_change(shown) and touches_change(partly) and not touches_change(unknown)


def test_qa_rejects_each_planted_task_with_its_reason():
    big_old = "".join(f"x{i} = {i}\n" for i in range(300))
    big = file_diff("geometry.py", big_old, big_old.replace(" = ", " = 1 + "))
    near_fixed = FIXED.replace("return w * h", "return w * h  # fixed")  # token 3-gram Jaccard 0.85
    tasks = [
        task("good"),
        task("dup_of_good", patch=file_diff("geometry.py", "\n" + BUGGY, "\n" + FIXED)),
        task("same_fix_other_subject", subject="other"),
        task("oversized", patch=big),
        task("short", statement="fix it"),
        task("leaky", statement=STATEMENT + " Use: return w * h"),
        task("untouched", tests="import math\n\n\ndef test_pi():\n    assert math.pi > 3\n"),
        task("near_dup", patch=file_diff("geometry.py", BUGGY, near_fixed)),
    ]
    rep = run_qa(tasks, QAConfig(near_dup_threshold=0.8))
    assert [t.instance_id for t in rep.kept] == ["good", "same_fix_other_subject"]
    assert {i: r for i, r, _ in rep.rejected} == {
        "dup_of_good": "duplicate", "oversized": "oversized", "short": "short_statement", "leaky": "leak",
        "untouched": "tests_untouched", "near_dup": "near_duplicate"}
    assert sum(rep.counts.values()) == 6 and rep.counts["leak"] == 1
    assert "same edit as good" in dict((i, d) for i, _, d in rep.rejected)["dup_of_good"]
    # with the default threshold (0.9) the comment is enough to keep both
    assert [t.instance_id for t in run_qa([tasks[0], tasks[-1]]).kept] == ["good", "near_dup"]


def test_jaccard():
    assert jaccard({1, 2}, {2, 3}) == 1 / 3 and jaccard(set(), set()) == 1.0
