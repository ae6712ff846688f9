"""Execution validation: planted bad verifiers are rejected with their reason, good tasks pass.

Every task here is built by hand (inline files, real diffs) and validated in the real local
sandbox: a verifier a constant return satisfies, a verifier that tests a version string instead
of the fix, flaky tests, a broken gold patch. The host-side helpers (which functions a patch
changes, stubbing them) are checked on known sources.
"""

from __future__ import annotations

import pytest

from minicoder.gitdiff import apply_to_snapshot, file_diff
from minicoder.record import Environment, Task
from minicoder.tasks.validate import (
    TRIVIAL_BODIES,
    changed_functions,
    exploit_patches,
    stub_functions,
    trivial_bodies,
    validate_task,
)


def make_task(buggy: str, fixed: str, tests: str, f2p: list[str], p2p: list[str], name: str = "t") -> Task:
    return Task(instance_id=name, repo="demo/m", base_commit="", patch=file_diff("m.py", buggy, fixed),
                test_patch=file_diff("test_m.py", None, tests), problem_statement="m is wrong",
                FAIL_TO_PASS=f2p, PASS_TO_PASS=p2p,
                environment=Environment(files={"m.py": buggy}, timeout_s=30), source="manual")


EVEN_BUGGY = 'def is_even(n: int) -> bool:\n    """True for even n."""\n    return n % 2 == 1\n'
EVEN_FIXED = EVEN_BUGGY.replace("== 1", "== 0")


def test_changed_functions_and_stubs_known_answers():
    before = "X = 1\n\n\nclass A:\n    def f(self):\n        return 1\n\n    def g(self) -> str:\n        return 'a'\n"
    after = before.replace("return 1", "return 2").replace("X = 1", "X = 2")
    funcs = changed_functions(before, after, "m.py")
    assert [(f.qualname, f.body_start, f.end, f.returns) for f in funcs] == [("A.f", 6, 6, "")]
    assert stub_functions(after, funcs, "pass") == after.replace("        return 2\n", "        pass\n")
    # the docstring stays, the body goes
    stubbed = stub_functions(EVEN_FIXED, changed_functions(EVEN_BUGGY, EVEN_FIXED, "m.py"), "return True")
    assert stubbed == 'def is_even(n: int) -> bool:\n    """True for even n."""\n    return True\n'
    assert list(trivial_bodies(changed_functions(EVEN_BUGGY, EVEN_FIXED, "m.py"))) == \
        ["pass", "return True", "return False"]
    assert trivial_bodies(funcs) == TRIVIAL_BODIES  # no annotation: every trivial body


def test_exploit_patches_apply_on_top_of_the_gold_patch():
    task = make_task(EVEN_BUGGY, EVEN_FIXED, "", ["x"], [])
    trivial, stub, note = exploit_patches(task)
    assert note == "`is_even`" and set(trivial) == {"pass", "return True", "return False"}
    assert "raise NotImplementedError" in apply_to_snapshot(task.environment.files, stub)["m.py"]
    assert apply_to_snapshot(task.environment.files, trivial["pass"])["m.py"].endswith('"""True for even n."""\n    pass\n')


@pytest.mark.slow
def test_a_good_task_validates():
    tests = "from m import is_even\n\n\ndef test_three():\n    assert is_even(3) is False\n\n\n" \
            "def test_four():\n    assert is_even(4) is True\n"
    v = validate_task(make_task(EVEN_BUGGY, EVEN_FIXED, tests, ["test_m.py::test_three", "test_m.py::test_four"], []))
    assert v.ok, v.reason
    assert v.checks["exploits"] == "none of 4 trivial patches passes" and v.checks["exercised"] == "yes"
    assert v.task.FAIL_TO_PASS == ["test_m.py::test_four", "test_m.py::test_three"] and not v.flaky


@pytest.mark.slow
def test_exploitable_verifier_is_rejected():
    # every test expects False: `return False` earns the full reward without solving anything
    tests = "from m import is_even\n\n\ndef test_three():\n    assert is_even(3) == False\n\n\n" \
            "def test_five():\n    assert not is_even(5)\n"
    v = validate_task(make_task(EVEN_BUGGY, EVEN_FIXED, tests, ["test_m.py::test_three", "test_m.py::test_five"], []))
    assert not v.ok
    assert v.reason.startswith("exploitable verifier") and "`return False`" in v.reason


@pytest.mark.slow
def test_verifier_that_does_not_exercise_the_fix_is_rejected():
    # the patch fixes `area` *and* bumps VERSION; the only FAIL_TO_PASS test looks at VERSION
    buggy = 'VERSION = "1.0"\n\n\ndef area(w, h) -> int:\n    return w + h\n'
    fixed = 'VERSION = "1.1"\n\n\ndef area(w, h) -> int:\n    return w * h\n'
    tests = "import m\n\n\ndef test_version():\n    assert m.VERSION == '1.1'\n\n\n" \
            "def test_square():\n    assert m.area(2, 2) == 4\n"
    v = validate_task(make_task(buggy, fixed, tests, ["test_m.py::test_version"], ["test_m.py::test_square"]))
    assert not v.ok and v.reason.startswith("tests do not exercise the changed code"), v.reason


@pytest.mark.slow
def test_flaky_tests_are_dropped_and_counted():
    """Deterministic flakiness: the first gold run comes from the mining stage (`prior`) and saw two
    of the four `coin` tests fail (run, for real, on a version of the tests where they fail); the
    second gold run, by the validator, sees them pass. Exactly those two disagree and are dropped."""
    from minicoder.tasks.runner import run_tests

    coins = "".join(f"\n\ndef test_coin_{i}():\n    assert {'COIN' if i < 2 else 'True'}\n" for i in range(4))
    tests = "from m import is_even\n\n\ndef test_three():\n    assert is_even(3) is False\n" + coins
    ids = [f"test_m.py::test_coin_{i}" for i in range(4)]
    task = make_task(EVEN_BUGGY, EVEN_FIXED, "COIN = True\n" + tests, ["test_m.py::test_three"], ids)
    earlier = make_task(EVEN_BUGGY, EVEN_FIXED, "COIN = False\n" + tests, ["test_m.py::test_three"], ids)
    first = run_tests(earlier, earlier.patch, test_ids=sorted(ids + ["test_m.py::test_three"]))
    assert {t for t, o in first.outcomes.items() if o != "passed"} == {ids[0], ids[1]}
    v = validate_task(task, repeats=2, check_exploits=False, prior={"gold": [first]})
    assert v.ok, v.reason
    assert v.flaky == [ids[0], ids[1]] and v.runs == 3  # one more gold run, two empty runs
    assert v.task.FAIL_TO_PASS == ["test_m.py::test_three"]
    assert ids[2:] == v.task.PASS_TO_PASS
    assert v.dropped == {t: "flaky: outcomes differ between repeated runs" for t in ids[:2]}
    assert v.task.metadata["validation"]["flaky"] == 2


@pytest.mark.slow
def test_broken_gold_and_passing_empty_patch_are_rejected():
    wrong_fix = EVEN_BUGGY.replace("n % 2 == 1", "n % 2 == 2")  # is_even(4) is still False
    tests4 = "from m import is_even\n\n\ndef test_four():\n    assert is_even(4) is True\n"
    v = validate_task(make_task(EVEN_BUGGY, wrong_fix, tests4, ["test_m.py::test_four"], []), repeats=1,
                      check_exploits=False)
    assert not v.ok and v.reason.startswith("gold patch fails a test: FAIL_TO_PASS test_m.py::test_four")
    tests_ok = "from m import is_even\n\n\ndef test_ten():\n    assert is_even(0) in (True, False)\n"
    v = validate_task(make_task(EVEN_BUGGY, EVEN_FIXED, tests_ok, ["test_m.py::test_ten"], []), repeats=1,
                      check_exploits=False)
    assert not v.ok and v.reason == "empty patch passes: no test fails without the fix"
