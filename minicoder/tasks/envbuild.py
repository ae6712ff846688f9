"""Environments built from a repository's own package metadata, at the commit a task starts from.

    spec = infer(repo, base_commit)           # read the metadata files (envinfer.py); nothing is run
    env = EnvBuilder("local").build(spec, check=...)  # resolve + download on the host, install, check
    apply_environment(task, spec, env)        # the task records what was inferred and pinned

What `infer` reads (with `git show`, from the commit itself - the working tree is never used),
and what it takes from each:
  - `pyproject.toml`: `[project] dependencies`, test extras (`optional-dependencies` test / tests /
    testing / dev), PEP 735 `[dependency-groups]` of the same names (with `include-group`), poetry's
    dependencies and test groups, the name and version, the build backend, pytest's ini options;
  - `setup.cfg`: `install_requires`, `tests_require`, test extras, `[tool:pytest]`;
  - `setup.py`: the same keywords of the `setup(...)` call, read with `ast` (never run), and
    `ext_modules` (a compiled extension: not buildable without a compiler step, reported);
  - `requirements*.txt`, `requirements/*.txt` (runtime from `requirements.txt`, tests from the
    files whose name says test / dev), following `-r` includes;
  - `tox.ini` (`[testenv] deps`, `extras`, `commands`) and `noxfile.py` (`session.install(...)`,
    `session.run("pytest", ...)`, with `ast`), and as a last rule the CI workflows
    (`.github/workflows/*.yml`) for a pytest or unittest command line.
Tools that do not run tests (linters, type checkers, docs and release tools) are left out, and so
is the project's own pytest pin: every environment pins pytest at the host's version (the one the
tasks are validated with), so both backends run the same pytest. Where a test-specific set exists
(a `test` extra, `requirements/tests.txt`, tox deps) the broad `dev` sets are left out.

The test command is always pytest (the only report the reward reads): `python -m pytest`, with
`-o pythonpath=...` when the package lives under `src/` (so the workspace's code is imported, not
an installed copy), `-p <module>` for each pytest plugin among the resolved packages (the sandbox
turns plugin auto-loading off), and, when the code reads its own distribution metadata
(`importlib.metadata.version("name")`), a setup command that writes a metadata-only `.dist-info`
for the project under `.minicoder/site` in the workspace (on the same `pythonpath`).

Undecidable cases (no test files, or no test runner named anywhere) go to an OpenAI-compatible
model endpoint when one is configured (`ModelHook`, `$MINICODER_ENVBUILD_BASE_URL`); its answer is
checked like any other input and marked `decided_by: "model"`. Without one, the rules decide alone
(tests found + nothing named -> pytest, which also collects unittest-style tests) or report why not.

Building (`EnvBuilder.build`): the requirements are resolved on the host (`pip download`, the only
place with registry access; wheels only, for the sandbox's Python) into exact pins; the pins are
the dependency set and its content hash is the environment's key. The local backend installs them
into a cached read-only venv (`sandbox.local.ensure_runtime`), the docker backend into an image
tagged by the same hash (`sandbox.repo_image.ensure_deps_image`); tasks with equal pins share one
environment. A repository that cannot be set up gets `EnvResult(ok=False, reason=...)`, never an
exception that ends a mining run.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from packaging.utils import canonicalize_name

from minicoder.tasks.envinfer import (
    PYTHON_VERSION,
    EnvError,
    EnvSpec,
    Tree,
    _note,
    infer,
    infer_for_change,
    keep_requirement,
)

__all__ = ["EnvBuilder", "EnvError", "EnvResult", "EnvSpec", "ModelHook", "apply_environment", "check_environment",
           "infer", "infer_for_change", "plugin_modules", "resolve"]

# --- a model for the cases rules cannot decide --------------------------------------------------

@dataclass
class ModelHook:
    """An OpenAI-compatible chat endpoint asked for packages and a test command, only when rules fail.

    The answer must be JSON `{"packages": [...], "test_cmd": "..."}`; packages are checked like any
    requirement, the command must be a pytest command. From `$MINICODER_ENVBUILD_BASE_URL` (and
    `$MINICODER_ENVBUILD_MODEL`, `$MINICODER_ENVBUILD_API_KEY`) with `ModelHook.from_env()`.
    """

    base_url: str
    model: str = "default"
    api_key: str = ""
    timeout_s: float = 60.0

    @classmethod
    def from_env(cls) -> ModelHook | None:
        url = os.environ.get("MINICODER_ENVBUILD_BASE_URL")
        if not url:
            return None
        return cls(url, os.environ.get("MINICODER_ENVBUILD_MODEL", "default"),
                   os.environ.get("MINICODER_ENVBUILD_API_KEY", ""))

    def prompt(self, tree: Tree, question: str) -> str:
        names = [p for p in tree.paths if PurePosixPath(p).name in ("pyproject.toml", "setup.cfg", "setup.py",
                 "tox.ini", "noxfile.py", "Makefile") or p.startswith(".github/workflows/")
                 or re.search(r"requirements.*\.txt$", p)]
        files = "\n\n".join(f"--- {p}\n{(tree.read(p) or '')[:4000]}" for p in names[:12])
        return (f"The rules could not decide how to run this Python repository's tests ({question}).\n"
                "Answer with JSON only: {\"packages\": [pip requirement strings the tests need], "
                "\"test_cmd\": \"a pytest command line\"}.\n\nFiles:\n" + files + "\n\nAll paths:\n"
                + "\n".join(tree.paths[:300]))

    def ask(self, prompt: str) -> str:
        import httpx

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        r = httpx.post(self.base_url.rstrip("/") + "/chat/completions", headers=headers, timeout=self.timeout_s,
                       json={"model": self.model, "temperature": 0,
                             "messages": [{"role": "user", "content": prompt}]})
        r.raise_for_status()
        return r.json()["choices"][0]["message"]["content"]

    def decide(self, tree: Tree, spec: EnvSpec, question: str) -> None:
        try:
            answer = self.ask(self.prompt(tree, question))
        except Exception as e:  # an unreachable or broken endpoint is a reason, not a crash
            spec.problems.append(f"{question}; the model endpoint failed: {type(e).__name__}: {str(e)[:120]}")
            return
        apply_model_answer(spec, answer, question)


def apply_model_answer(spec: EnvSpec, answer: str, question: str) -> None:
    """Check a model's JSON answer and take what passes the checks into `spec`."""
    m = re.search(r"\{.*\}", answer, re.S)
    try:
        data = json.loads(m.group(0)) if m else None
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict):
        spec.problems.append(f"{question}; the model's answer is not a JSON object")
        return
    cmd = str(data.get("test_cmd", ""))
    argv = shlex.split(cmd) if cmd else []
    if not (argv[:1] in (["pytest"], ["py.test"]) or argv[1:3] == ["-m", "pytest"]):
        spec.problems.append(f"{question}; the model's test command {cmd!r} is not a pytest command")
        return
    for req in data.get("packages", []) if isinstance(data.get("packages"), list) else []:
        ok, why = keep_requirement(str(req), spec.project)
        if ok and str(req) not in spec.requirements:
            spec.requirements.append(str(req))
        elif not ok:
            spec.skipped[str(req)] = why
    spec.pytest_args = [a for a in argv[(1 if argv[0] != "python" else 3):] if not a.startswith("{")][:12]
    spec.decided_by = "model"
    _note(spec, "(model)", f"{question}: the model chose {cmd!r} and {len(data.get('packages', []))} packages")


# --- building --------------------------------------------------------------------------------------

@dataclass
class EnvResult:
    """A built (or unbuildable) environment, shared by every task whose requirements resolve to `pins`."""

    ok: bool
    reason: str = ""
    key: str = ""  # content hash of the pins: the environment's identity
    pins: list[str] = field(default_factory=list)
    plugins: list[str] = field(default_factory=list)  # pytest plugin modules among the pins
    image: str = ""  # docker: the dependency image's tag
    seconds: float = 0.0
    built: bool = False  # this call built it (False: found in the cache)
    checked: bool = False  # the tests ran in it at a base commit and some passed
    check: dict[str, Any] = field(default_factory=dict)  # what that run found (commit, passed, tests)
    notes: list[str] = field(default_factory=list)  # what resolution had to change (relaxed pins)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# pytest's own dependencies: a project's exact pin of one of them (pip-compile output) may not fit
# the pytest the sandbox runs, and is relaxed when it does not
MINED_TIMEOUT_S = 180.0  # a real project's test file can take a while on a loaded machine
PYTEST_DEPS = ("pluggy", "iniconfig", "packaging", "exceptiongroup", "tomli", "pygments", "colorama", "py")


def _download(requirements: list[str], dest: str, links: list[str]) -> subprocess.CompletedProcess:
    """`pip download` of wheels for the sandbox's Python: from the local wheel folders alone when
    they have everything (fast, no network), else from the package index too."""
    base = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "-q", "--only-binary=:all:",
            "--python-version", PYTHON_VERSION, "-d", dest, *[a for f in links for a in ("--find-links", f)]]
    proc = subprocess.run([*base, "--no-index", *requirements], capture_output=True, text=True)
    if proc.returncode == 0:
        return proc
    for w in Path(dest).glob("*.whl"):
        w.unlink()
    return subprocess.run([*base, "--retries", "2", "--timeout", "30", *requirements], capture_output=True, text=True)


def resolve(requirements: list[str], find_links: list[str] | None = None) -> tuple[list[str], list[Path], list[str]]:
    """Exact pins (`name==version`) for `requirements` plus pytest at the host's version (the one
    the tasks are validated with; pinned, so both backends run the same pytest), with the wheels
    downloaded on the host into the shared wheelhouse. Returns (pins, wheel files, notes); raises
    EnvError with pip's reason. A pin of one of pytest's own dependencies that conflicts with that
    pytest is relaxed to the bare name (and noted)."""
    import pytest

    from minicoder.sandbox.local import wheelhouse

    links = [str(wheelhouse()), *(find_links or [])]
    runner = f"pytest=={pytest.__version__}"
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="minicoder-resolve-") as tmp:
        proc = _download([runner, *requirements], tmp, links)
        if proc.returncode != 0 and "conflicting dependencies" in proc.stderr:
            relaxed = [canonicalize_name(r.split("==")[0]) if "==" in r and
                       canonicalize_name(r.split("==")[0].split("[")[0]) in PYTEST_DEPS else r for r in requirements]
            changed = sorted(set(requirements) - set(relaxed))
            if changed:
                notes.append(f"relaxed pins that conflict with {runner}: {', '.join(changed)}")
                proc = _download([runner, *relaxed], tmp, links)
        if proc.returncode != 0:
            err = [ln for ln in proc.stderr.splitlines() if ln.startswith("ERROR")] or proc.stderr.splitlines()[-2:]
            raise EnvError(f"cannot resolve the requirements: {' '.join(err)[:300]}")
        house = wheelhouse()
        out = []
        for w in sorted(Path(tmp).glob("*.whl")):
            dest = house / w.name
            if not dest.exists():
                tmp_dest = house / f".{w.name}.{os.getpid()}.tmp"
                tmp_dest.write_bytes(w.read_bytes())
                os.replace(tmp_dest, dest)
            out.append(dest)
    return sorted({_pin(w) for w in out}, key=str.lower), out, notes


def _pin(wheel: Path) -> str:
    name, version = wheel.name.split("-")[:2]
    return f"{canonicalize_name(name)}=={version}"


def plugin_modules(wheels: list[Path]) -> list[str]:
    """Modules of the `pytest11` entry points in these wheels (loaded with `-p`, autoload being off)."""
    mods = []
    for w in wheels:
        try:
            with zipfile.ZipFile(w) as z:
                for n in z.namelist():
                    if n.endswith(".dist-info/entry_points.txt"):
                        cp = configparser.ConfigParser(interpolation=None)
                        cp.read_string(z.read(n).decode("utf-8", errors="replace"))
                        if cp.has_section("pytest11"):
                            mods += [v.split(":")[0].strip() for v in cp["pytest11"].values()]
        except (zipfile.BadZipFile, configparser.Error):
            continue
    return sorted(set(mods))


class EnvBuilder:
    """Builds environments for one backend and caches them by requirements and by pins (thread-safe)."""

    def __init__(self, backend: str = "local", find_links: list[str] | None = None):
        if backend not in ("local", "docker"):
            raise ValueError(f"backend must be 'local' or 'docker', got {backend!r}")
        self.backend, self.find_links = backend, list(find_links or [])
        self._by_reqs: dict[str, EnvResult] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def cached(self, reqs_key: str) -> EnvResult:
        """The cache entry for a requirement set: its build, and whether a check has passed in it."""
        return self._by_reqs[reqs_key]

    def known(self, reqs_key: str, result: EnvResult) -> None:
        """Seed the cache (a resumed run's ledger holds the environments it built)."""
        self._by_reqs[reqs_key] = result

    def build(self, spec: EnvSpec, check: Callable[[EnvResult], tuple[bool, str, dict]] | None = None) -> EnvResult:
        """The environment for `spec`: built once per requirement set, then shared.

        `check(result) -> (ok, reason, detail)` runs the tests in a newly usable environment; a
        passing check is kept for every later task, a failing one is reported for this task only
        (the next base commit is checked again: the failure may be that commit's, not the
        environment's). A requirement set that resolves to the pins of an environment already
        checked is not checked again (it is that environment). A failed build is kept: the same
        requirements fail the same way.
        """
        if not spec.ok:
            return EnvResult(False, spec.problems[0])
        rk = spec.requirements_key()
        with self._lock:
            lock = self._locks.setdefault(rk, threading.Lock())
        with lock:
            res = self._by_reqs.get(rk)
            fresh = res is None
            if res is None:
                res = self._build(spec)
                twin = self._checked_twin(res)
                if twin is not None:  # the same pins, already checked: the same environment
                    res.checked, res.check = True, {**twin.check, "shared_with": twin.key}
                self._by_reqs[rk] = res
            if res.ok and check is not None and not res.checked:
                t0 = time.perf_counter()
                ok, why, detail = check(res)
                if not ok:
                    return replace(res, ok=False, reason=why, check=detail, built=fresh,
                                   seconds=res.seconds + time.perf_counter() - t0)
                res.checked, res.check = "skipped" not in detail, detail
                res.seconds += time.perf_counter() - t0
            return res if fresh else replace(res, built=False, seconds=0.0)

    def _checked_twin(self, res: EnvResult) -> EnvResult | None:
        """A cached environment with the same pins whose check passed (requirement strings that differ
        between commits often resolve to the same pins: that environment needs no second check)."""
        if not res.ok:
            return None
        with self._lock:
            return next((r for r in self._by_reqs.values() if r.ok and r.checked and r.key == res.key), None)

    def _build(self, spec: EnvSpec) -> EnvResult:
        t0 = time.perf_counter()
        try:
            pins, wheels, notes = resolve(spec.requirements, self.find_links)
            plugins = plugin_modules(wheels)
            key = hashlib.sha256(json.dumps([PYTHON_VERSION, pins]).encode()).hexdigest()[:12]
            image = ""
            from minicoder.sandbox.base import SandboxError

            try:
                if self.backend == "local":
                    from minicoder.sandbox.local import ensure_runtime

                    ensure_runtime(pins)
                else:
                    from minicoder.record import DEFAULT_IMAGE
                    from minicoder.sandbox.repo_image import ensure_deps_image

                    image = ensure_deps_image(pins, DEFAULT_IMAGE) if pins else DEFAULT_IMAGE
            except SandboxError as e:
                raise EnvError(f"cannot install the packages: {str(e)[:300]}") from None
        except EnvError as e:
            return EnvResult(False, str(e), seconds=time.perf_counter() - t0, built=True)
        return EnvResult(True, "", key, pins, plugins, image, time.perf_counter() - t0, built=True, notes=notes)


def apply_environment(task, spec: EnvSpec, env: EnvResult) -> None:
    """Record in `task` what was inferred and built, so it runs again anywhere (pins, command, setup)."""
    cmd, setup = spec.command(env.plugins)
    task.environment.python_packages = list(env.pins)
    task.environment.test_cmd = cmd
    task.environment.setup = setup
    task.environment.timeout_s = max(task.environment.timeout_s, MINED_TIMEOUT_S)
    task.metadata["environment"] = {
        "key": env.key, "requirements": spec.requirements, "pythonpath": spec.pythonpath,
        "pytest_plugins": env.plugins, "evidence": spec.evidence, "notes": env.notes, "skipped": spec.skipped,
        "decided_by": spec.decided_by, "inferred_at": spec.commit, "project": spec.project}


@dataclass
class BoundEnv:
    """A spec with its built environment: what `mine_git.build_task(env=...)` applies to a task."""

    spec: EnvSpec
    result: EnvResult

    def apply(self, task) -> None:
        apply_environment(task, self.spec, self.result)


def check_environment(task, test_ids: list[str], backend: Any) -> tuple[bool, str, dict[str, Any]]:
    """Run `test_ids` (`[]`: the whole suite) at the task's base commit, no patch and no hidden tests:
    the environment works when some test passes. Returns (ok, reason, detail)."""
    import copy

    from minicoder.tasks.mine_git import _why_nothing_passes
    from minicoder.tasks.runner import run_tests

    probe = copy.deepcopy(task)
    probe.test_patch = ""
    run = run_tests(probe, "", test_ids=test_ids, backend=backend)
    detail = {"commit": task.base_commit, "status": run.status, "tests": len(run.outcomes),
              "passed": len(run.passed), "test_ids": test_ids[:20]}
    if run.passed:
        return True, "", detail
    if run.status == "no_tests":
        return False, "no tests are collected at the base commit", detail
    return False, f"tests fail at the base commit: {_why_nothing_passes(run)}", detail


