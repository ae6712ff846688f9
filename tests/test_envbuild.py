"""Environments from package metadata: what is read from which file, a dependency the tests need, and
repositories that cannot be set up.

The repositories are made here with git. Reading (`infer`) is checked against known answers for each
metadata format; nothing of the repository runs on the host. Building runs for real: pins resolved with
`pip download`, an environment installed, the tests run in the local sandbox. The dependency is a
wheel this test builds (`minicoder-testdep`, found only through `find_links`), so the environment can
only have it if the builder installed it; the unbuildable repository fails for three different reasons
at three base commits, each reported for its own commit, and the run finishes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from minicoder.tasks.envbuild import ModelHook, apply_model_answer, infer, plugin_modules
from minicoder.tasks.envinfer import EnvSpec, keep_requirement, requirement_lines

ENV = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
       "GIT_COMMITTER_EMAIL": "t@x", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"}


def commit(repo: Path, files: dict[str, str | None], message: str) -> str:
    """Write (text) or delete (None) files and commit; returns the sha."""
    if not (repo / ".git").exists():
        repo.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "init", "-q", "-b", "main"], cwd=repo, check=True, env=ENV)
    for rel, text in files.items():
        p = repo / rel
        if text is None:
            p.unlink()
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True, env=ENV)
    subprocess.run(["git", "commit", "-q", "-m", message], cwd=repo, check=True, env=ENV)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, check=True, env=ENV, capture_output=True,
                          text=True).stdout.strip()


def test_requirement_files_and_filters():
    text = "# pinned\nfoo==1.0  # why\n-r base.txt\n-e .\n--index-url https://x\nbar>=2 ; python_version < '3.8'\n" \
           "baz \\\n  >=3\nhttps://example.com/x.whl\n"
    assert requirement_lines(text) == ["foo==1.0", "bar>=2 ; python_version < '3.8'", "baz >=3"]
    assert keep_requirement("bar>=2 ; python_version < '3.8'") == (False, "marker excludes this Python")
    assert keep_requirement("colorama; platform_system == 'Windows'")[0] is False
    assert keep_requirement("tomli; python_version < '3.12'") == (True, "")
    assert keep_requirement("pytest>=7") == (False, "pytest comes with the sandbox")
    assert keep_requirement("ruff")[1] == keep_requirement("sphinx-rtd-theme")[1] == "a tool that does not run tests"
    assert keep_requirement("My_Pkg>=1", project="my-pkg")[0] is False  # the project itself
    assert keep_requirement("hypothesis") == (True, "")


def test_infer_reads_each_format(tmp_path):
    """One repository, every format at once: the union of what the test-specific sets ask for."""
    repo = tmp_path / "r"
    sha = commit(repo, {
        "pyproject.toml": '[project]\nname = "demo"\nversion = "1.2.3"\ndependencies = ["attrs>=22"]\n'
                          '[project.optional-dependencies]\ntest = ["hypothesis"]\ndocs = ["sphinx"]\n'
                          '[dependency-groups]\ntests = ["pytest-mock", {include-group = "cov"}]\ncov = ["coverage"]\n'
                          'dev = ["ruff", "ipython", "black"]\n[tool.pytest.ini_options]\naddopts = "-ra"\n',
        "setup.cfg": "[options]\ninstall_requires =\n    six\n[options.extras_require]\ntesting =\n    freezegun\n",
        "setup.py": 'from setuptools import setup\nTESTS = ["responses"]\n'
                    'setup(name="demo", tests_require=TESTS, extras_require={"test": ["toolz"]})\n',
        "requirements/tests.txt": "-r common.txt\npytest==8.0\n",
        "requirements/common.txt": "markupsafe\n",
        "requirements.txt": "idna\n",
        "tox.ini": "[testenv]\ndeps =\n    mock\n    py38: oldthing\ncommands = pytest {posargs:-x tests}\n",
        "noxfile.py": 'import nox\n@nox.session\ndef tests(session):\n    session.install("-e", ".", "pyyaml")\n'
                      '    session.run("pytest", "-q")\n',
        "src/demo/__init__.py": "from importlib.metadata import version\n__version__ = version('demo')\n",
        "tests/test_demo.py": "def test_x():\n    assert True\n",
    }, "all formats")
    spec = infer(repo, sha)
    assert spec.ok and spec.project == "demo" and spec.version == "1.2.3"
    assert spec.requirements == ["attrs>=22", "coverage", "freezegun", "hypothesis", "idna", "markupsafe", "mock",
                                 "pytest-mock", "pyyaml", "responses", "six", "toolz"]
    assert spec.skipped["pytest==8.0"] == "pytest comes with the sandbox" and "sphinx" not in spec.requirements
    assert not any(r in spec.requirements for r in ("ruff", "ipython", "black"))  # dev loses to tests
    assert spec.pythonpath == ["src"] and spec.needs_metadata
    assert spec.pytest_args == ["-q"]  # tox's line is only {posargs}: nox's is the first that says something
    assert set(spec.evidence) >= {"pyproject.toml", "setup.cfg", "setup.py", "requirements/tests.txt", "tox.ini",
                                  "noxfile.py", "requirements.txt"}
    cmd, setup = spec.command(["pytest_mock"])
    assert cmd == "python -m pytest -p pytest_mock -o 'pythonpath=src .minicoder/site'"
    assert setup == ["mkdir -p .minicoder/site/demo-1.2.3.dist-info && printf 'Metadata-Version: 2.1\\nName: demo\\n"
                     "Version: 1.2.3\\n' > .minicoder/site/demo-1.2.3.dist-info/METADATA"]


def test_infer_problems_and_undecided(tmp_path):
    repo = tmp_path / "p"
    compiled = commit(repo, {"setup.py": "from setuptools import setup, Extension\n"
                             "setup(name='c', ext_modules=[Extension('c._x', ['x.c'])])\n",
                             "c/__init__.py": "", "tests/test_c.py": "def test_c():\n    pass\n"}, "compiled")
    assert infer(repo, compiled).problems == ["needs compiling: setup.py builds extension modules (Extension)"]
    no_tests = commit(repo, {"setup.py": None, "tests/test_c.py": None, "pyproject.toml": '[project]\nname = "c"\n'},
                      "no tests")
    assert infer(repo, no_tests).problems == ["no tests found (no test_*.py / *_test.py / tests/ files)"]
    plain = commit(repo, {"pyproject.toml": None, "test_c.py": "def test_c():\n    pass\n"}, "plain")
    spec = infer(repo, plain)  # nothing names a runner: the rules settle on pytest and say so
    assert spec.ok and spec.decided_by == "rules" and "pytest, which also collects" in spec.evidence["(rules)"][0]


def test_model_answers_are_checked():
    spec = EnvSpec(repo="r", commit="c", project="r")
    apply_model_answer(spec, 'Sure: {"packages": ["numpy>=1", "ruff"], "test_cmd": "pytest -x tests"}', "q")
    assert spec.decided_by == "model" and spec.requirements == ["numpy>=1"] and spec.pytest_args == ["-x", "tests"]
    assert spec.skipped == {"ruff": "a tool that does not run tests"}
    bad = EnvSpec(repo="r", commit="c")
    apply_model_answer(bad, '{"packages": [], "test_cmd": "make test"}', "q")
    assert bad.problems == ["q; the model's test command 'make test' is not a pytest command"]
    worse = EnvSpec(repo="r", commit="c")
    apply_model_answer(worse, "I cannot tell", "q")
    assert worse.problems == ["q; the model's answer is not a JSON object"]


def test_model_hook_is_asked_only_when_rules_cannot_decide(tmp_path):
    """A real HTTP endpoint speaking the chat-completions protocol: what it is sent and how its answer is used."""
    asked: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            asked.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
            reply = {"choices": [{"message": {"role": "assistant", "content":
                                              '{"packages": ["six"], "test_cmd": "python -m pytest -q"}'}}]}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hook = ModelHook(f"http://127.0.0.1:{server.server_port}/v1", model="m", api_key="k")
        repo = tmp_path / "m"
        undecided = commit(repo, {"Makefile": "check:\n\tpython run_checks.py\n", "pkg/__init__.py": ""}, "no tests")
        spec = infer(repo, undecided, model=hook)
        assert spec.ok and spec.decided_by == "model" and spec.requirements == ["six"]
        assert len(asked) == 1 and asked[0]["path"] == "/v1/chat/completions" and asked[0]["auth"] == "Bearer k"
        prompt = asked[0]["messages"][0]["content"]
        assert "no test files" in prompt and "--- Makefile" in prompt and "python run_checks.py" in prompt
        decided = commit(repo, {"tests/test_p.py": "def test_p():\n    pass\n", "tox.ini": "[testenv]\ncommands = pytest\n"},
                         "tests")
        assert infer(repo, decided, model=hook).decided_by == "rules" and len(asked) == 1  # not asked again
    finally:
        server.shutdown()


# --- building -------------------------------------------------------------------------------------

def build_wheel(dest: Path, name: str, version: str, files: dict[str, str]) -> Path:
    """A pure-Python wheel written by hand (deterministic bytes): METADATA, WHEEL, RECORD and `files`."""
    dist = f"{name.replace('-', '_')}-{version}"
    entries = {**files, f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
               f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: minicoder-test\nRoot-Is-Purelib: true\n"
                                          "Tag: py3-none-any\n"}
    record = []
    for path, text in entries.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    entries[f"{dist}.dist-info/RECORD"] = "\n".join(record + [f"{dist}.dist-info/RECORD,,"]) + "\n"
    dest.mkdir(parents=True, exist_ok=True)
    whl = dest / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for path, text in entries.items():
            z.writestr(zipfile.ZipInfo(path, date_time=(2020, 1, 1, 0, 0, 0)), text)
    return whl


def test_pytest_plugins_from_entry_points(tmp_path):
    plug = build_wheel(tmp_path, "pytest-demo", "1.0", {"pytest_demo.py": "",
                       "pytest_demo-1.0.dist-info/entry_points.txt": "[pytest11]\ndemo = pytest_demo.plugin\n"})
    other = build_wheel(tmp_path, "plain", "1.0", {"plain.py": ""})
    assert plugin_modules([plug, other]) == ["pytest_demo.plugin"]


TESTDEP = {"minicoder_testdep.py": "def scale(x):\n    return 10 * x\n"}
SRC_BUGGY = "from minicoder_testdep import scale\n\n\ndef tenfold_plus_one(x):\n    return scale(x)\n"


@pytest.mark.slow
def test_dependency_from_a_local_wheel_is_in_the_environment(tmp_path):
    from minicoder.record import read_tasks
    from minicoder.tasks.pipeline_git import synth_git

    wheels = tmp_path / "wheels"
    build_wheel(wheels, "minicoder-testdep", "1.0", TESTDEP)
    repo = tmp_path / "withdep"
    commit(repo, {"pyproject.toml": '[project]\nname = "withdep"\ndependencies = ["minicoder-testdep==1.0"]\n',
                  "withdep.py": SRC_BUGGY,
                  "tests/test_withdep.py": "from withdep import tenfold_plus_one\n\n\ndef test_zero():\n"
                  "    assert tenfold_plus_one(0) in (0, 1)\n"}, "start")
    fix = commit(repo, {"withdep.py": SRC_BUGGY.replace("return scale(x)", "return scale(x) + 1"),
                        "tests/test_withdep.py": "from withdep import tenfold_plus_one\n\n\ndef test_zero():\n"
                        "    assert tenfold_plus_one(0) in (0, 1)\n\n\ndef test_two():\n"
                        "    assert tenfold_plus_one(2) == 21\n"}, "tenfold_plus_one forgot the one")
    s = synth_git(repo, tmp_path / "t.jsonl", validate=False, workers=1, progress=False, find_links=[str(wheels)])
    (task,) = read_tasks(tmp_path / "t.jsonl")
    assert task.metadata["commit"] == fix
    # FAIL_TO_PASS can only come out this way if the sandbox could import minicoder_testdep
    assert task.FAIL_TO_PASS == ["tests/test_withdep.py::test_two"]
    assert task.PASS_TO_PASS == ["tests/test_withdep.py::test_zero"]
    assert "minicoder-testdep==1.0" in task.environment.python_packages
    assert task.metadata["environment"]["requirements"] == ["minicoder-testdep==1.0"]
    assert s.environments["built"] == 1 and s.rejections.get("environment") is None


@pytest.mark.slow
def test_unbuildable_repository_is_reported_per_commit(tmp_path):
    """Three base commits, three different reasons; the run ends normally with each one in the report."""
    from minicoder.tasks.pipeline_git import synth_git

    repo = tmp_path / "broken"
    src = "".join(f"def inc{n}(x):\n    return x\n\n\n" for n in (1, 2, 3))

    def fix_commit(n: int) -> str:
        fixed = (repo / "broken.py").read_text().replace(f"def inc{n}(x):\n    return x\n",
                                                          f"def inc{n}(x):\n    return x + 1\n")
        return commit(repo, {"broken.py": fixed, f"tests/test_inc{n}.py": f"from broken import inc{n}\n\n\n"
                             f"def test_inc{n}():\n    assert inc{n}(1) == 2\n"}, f"inc{n}() increments")

    commit(repo, {"pyproject.toml": '[project]\nname = "broken"\ndependencies = ["minicoder-no-such-dist==0.1"]\n',
                  "broken.py": src}, "start: a dependency no index has")
    shas = {"unresolvable": fix_commit(1)}
    commit(repo, {"pyproject.toml": '[project]\nname = "broken"\n',
                  "setup.py": "from setuptools import setup, Extension\nsetup(ext_modules=[Extension('b', ['b.c'])])\n"},
           "a C extension")
    shas["compiled"] = fix_commit(2)
    commit(repo, {"setup.py": None, "tests/conftest.py": "import nowhere_to_be_found\n"},
           "a conftest that needs a module nobody ships")
    shas["fails_at_base"] = fix_commit(3)
    out = tmp_path / "t.jsonl"
    s = synth_git(repo, out, validate=False, workers=1, progress=False)
    recs = {r["id"].rsplit("__", 1)[1]: r for r in map(json.loads, Path(str(out) + ".ledger.jsonl").read_text().splitlines())
            if r.get("kind") == "candidate"}
    why = {label: (recs[sha[:12]]["stage"], recs[sha[:12]]["reason"]) for label, sha in shas.items()}
    assert why["unresolvable"][0] == "environment" and why["unresolvable"][1].startswith(
        "cannot resolve the requirements:") and "minicoder-no-such-dist" in why["unresolvable"][1]
    assert why["compiled"] == ("environment", "needs compiling: setup.py builds extension modules (Extension)")
    assert why["fails_at_base"] == ("environment", "tests fail at the base commit: "
                                                   "ModuleNotFoundError: No module named 'nowhere_to_be_found'")
    assert s.rejections["environment"] == {"cannot resolve the requirements": 1, "needs compiling": 1,
                                           "tests fail at the base commit": 1}
    assert s.funnel["after environment"] == 0 and out.read_text() == ""


@pytest.mark.slow
def test_equal_pins_are_one_environment_checked_once(tmp_path):
    """Requirement strings that differ between commits but resolve to the same pins share the check."""
    from minicoder.tasks.envbuild import EnvBuilder

    wheels = tmp_path / "wheels"
    build_wheel(wheels, "minicoder-testdep", "1.0", TESTDEP)
    builder = EnvBuilder("local", [str(wheels)])
    checked: list[str] = []

    def check_at(commit: str):
        def check(res):
            checked.append(commit)
            return True, "", {"commit": commit, "passed": 1}
        return check

    first = builder.build(EnvSpec("r", "c1", requirements=["minicoder-testdep==1.0"]), check=check_at("c1"))
    same = builder.build(EnvSpec("r", "c2", requirements=["minicoder-testdep>=1.0"]), check=check_at("c2"))
    other = builder.build(EnvSpec("r", "c3", requirements=[]), check=check_at("c3"))
    assert first.ok and same.ok and other.ok and first.built and same.built
    assert same.key == first.key and other.key != first.key
    assert "minicoder-testdep==1.0" in same.pins and "minicoder-testdep==1.0" not in other.pins
    assert checked == ["c1", "c3"]  # c2's pins are c1's environment: not checked twice
    assert same.checked and same.check["commit"] == "c1" and same.check["shared_with"] == first.key
