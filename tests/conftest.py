"""Shared test set-up: Docker and GPU markers, the Triton-interpreter split, no silent skips in CI,
deterministic Hypothesis, and small shared fixtures.

Docker tests: in CI (CI=true) or with MINICODER_DOCKER_TESTS=1 they must run, and a missing engine
is a failure, never a silent skip. Elsewhere they skip with the reason.
GPU tests (`gpu` marker): skipped cleanly without CUDA.
Triton-interpreter tests (`interpreter` marker) need TRITON_INTERPRET=1 before triton is imported;
they are deselected here and run in the fresh interpreter a parent test starts (see
test_triton_gated_delta.py); `no_interpreter` tests are deselected inside that interpreter.

Skips: the run ends with a list of every skipped test and why. With CI=true a skip of a test without
the `gpu` marker fails the run (exit status 1): CI has everything the other tests need, so such a
skip would hide a test that never ran.

Hypothesis: derandomised (a fixed seed per test, no example database), so a failure reproduces with
the same command; HYPOTHESIS_PROFILE=explore draws fresh examples instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from hypothesis import settings

IN_CI = os.environ.get("CI", "").lower() == "true"
REQUIRE_DOCKER = IN_CI or os.environ.get("MINICODER_DOCKER_TESTS") == "1"
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
INTERPRETER_TESTS = pytest.StashKey[list]()  # node ids deselected here because they need the interpreter

settings.register_profile("deterministic", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


def docker_client_or_reason():
    """(client, None) when a Docker engine answers, else (None, why)."""
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
        return client, None
    except Exception as e:  # the SDK raises several unrelated types for "no engine"
        return None, f"no Docker engine answers ({type(e).__name__}: {e}); run `make docker`"


@pytest.fixture(scope="session")
def docker_client():
    client, why = docker_client_or_reason()
    if client is None:
        if REQUIRE_DOCKER:
            pytest.fail(f"Docker tests are required here (CI=true or MINICODER_DOCKER_TESTS=1) but {why}")
        pytest.skip(why)
    return client


@pytest.fixture
def run_interpreter_tests(request):
    """run() re-runs the calling module's `interpreter` tests in a fresh interpreter with
    TRITON_INTERPRET=1 and checks that every one of them ran and passed (none failed or skipped)."""

    def run(timeout: float = 600) -> str:
        module = request.node.nodeid.split("::")[0]
        expected = sorted(n for n in request.config.stash[INTERPRETER_TESTS] if n.startswith(module + "::"))
        assert expected, f"{module} has no test marked `interpreter`"
        r = subprocess.run(
            [sys.executable, "-m", "pytest", str(request.path), "-v", "-p", "no:cacheprovider", "-o", "addopts=",
             "--strict-markers", "-m", "interpreter"],
            cwd=request.config.rootpath, env={**os.environ, "TRITON_INTERPRET": "1"}, capture_output=True,
            text=True, timeout=timeout)
        out = r.stdout + r.stderr
        assert r.returncode == 0, out[-6000:]
        passed = sorted(re.findall(r"^(\S+::\S+) PASSED", out, re.M))
        assert passed == expected, (sorted(set(expected) - set(passed)), out[-3000:])
        return out

    return run


def pytest_configure(config):
    config.stash[INTERPRETER_TESTS] = []


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    keep, drop = [], []
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
        if item.get_closest_marker("interpreter") and not INTERPRETED:
            config.stash[INTERPRETER_TESTS].append(item.nodeid)
            drop.append(item)
        elif item.get_closest_marker("no_interpreter") and INTERPRETED:
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _reason(report) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(getattr(longrepr, "longrepr", longrepr))


_SKIPS: list[tuple[str, str, bool]] = []  # (node id, reason, has the gpu marker), in the order they happen


_NOTEBOOK_TIMES: list[str] = []  # test_notebooks.py's "[notebook] NN_topic: wall, CPU, load" lines


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPS.append((report.nodeid, _reason(report), "gpu" in report.keywords))
    if report.when == "call":
        _NOTEBOOK_TIMES.extend(v for k, v in report.user_properties if k == "notebook_time")


def pytest_collectreport(report):
    if report.skipped:  # a whole module or class skipped at collection (e.g. a module-level importorskip)
        _SKIPS.append((report.nodeid, _reason(report), False))


def _bad_skips() -> list[tuple[str, str, bool]]:
    return [s for s in _SKIPS if not s[2]]


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    tr = terminalreporter
    if _NOTEBOOK_TIMES:
        tr.section(f"{len(_NOTEBOOK_TIMES)} notebooks: wall, kernel CPU, load average", sep="-")
        for line in _NOTEBOOK_TIMES:
            tr.line(line)
    if not _SKIPS:
        return
    tr.section(f"{len(_SKIPS)} skipped", sep="-")
    for nodeid, reason, gpu in _SKIPS:
        tr.line(f"{'[gpu] ' if gpu else ''}{nodeid}: {reason}")
    if IN_CI and _bad_skips():
        tr.line(f"CI=true: {len(_bad_skips())} skip(s) outside the `gpu` marker (CI can run those tests): "
                "the run fails", red=True, bold=True)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    if IN_CI and _bad_skips() and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


# --- fixtures shared by the sandbox tests -----------------------------------------------------------

@pytest.fixture
def backend(request):
    """A sandbox backend from `parametrize(..., indirect=True)`; "docker" needs the engine fixture."""
    if request.param == "docker":
        request.getfixturevalue("docker_client")
    return request.param


@pytest.fixture
def used_uids(monkeypatch):
    """The host uids of the local sandboxes made during a test (each sandbox has its own)."""
    import minicoder.sandbox.local as L

    uids: list[int] = []
    real = L.pick_uid

    def pick():
        uids.append(real())
        return uids[-1]

    monkeypatch.setattr(L, "pick_uid", pick)
    return uids
