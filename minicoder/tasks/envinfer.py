"""Reading a repository's package metadata at one commit: what its tests need and how they run.

`infer(repo, commit)` returns an `EnvSpec` (the requirements, the source roots, the test command,
the evidence for each decision, and the problems that make it unbuildable); `envbuild.py` turns a
spec into an environment. Everything here reads files with `git show` and parses them (TOML,
INI, `ast` for setup.py / noxfile.py); nothing of the repository is executed. What is read from
which file is listed in envbuild.py's header.
"""

from __future__ import annotations

import ast
import configparser
import hashlib
import json
import os
import re
import shlex
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from minicoder.gitdiff import run_git

TEST_EXTRAS = ("test", "tests", "testing", "dev", "develop", "development")
PYTHON_VERSION = "3.11"  # the sandboxes' Python (the base image and the local runtime)
# distributions that lint, type-check, document, package or orchestrate - none of them runs tests
TOOLS = {"ruff", "mypy", "flake8", "black", "isort", "pylint", "pre-commit", "tox", "tox-uv", "nox", "twine",
         "build", "wheel", "flit", "hatch", "uv", "pip", "pip-tools", "check-manifest", "towncrier", "codecov",
         "coveralls", "pyright", "bump2version", "bumpversion", "docutils", "readme-renderer", "pyroma",
         "pytest-randomly", "pytest-xdist", "pytest-sugar", "pytest-benchmark", "pytest-codspeed", "ty",
         "pyrefly", "prek", "pre-commit-uv", "codespell", "pydocstyle", "pyupgrade", "autopep8", "yapf", "setuptools-scm",
         "setuptools-git-versioning", "ipython", "ipdb", "pdbpp", "jupyter", "coverage-enable-subprocess"}
TOOL_PREFIXES = ("sphinx", "mkdocs", "flake8-", "types-", "mypy-", "furo", "myst-", "pallets-sphinx", "tox-")
COMPILED_BACKENDS = ("mesonpy", "scikit_build_core", "maturin", "setuptools_rust", "cmake_build_extension")


class EnvError(RuntimeError):
    """An environment cannot be built; the message is the reason recorded for the candidate."""


# --- reading a commit -------------------------------------------------------------------------

class Tree:
    """Files of a repository at one commit, read with git (nothing is checked out)."""

    def __init__(self, repo: str | os.PathLike, commit: str):
        self.repo, self.commit = Path(repo), commit
        proc = run_git(self.repo, "ls-tree", "-r", "--name-only", commit)
        if proc.returncode != 0:
            raise EnvError(f"cannot list {commit} in {self.repo}: {proc.stderr.decode(errors='replace').strip()[:200]}")
        self.paths = proc.stdout.decode("utf-8", errors="replace").splitlines()
        self._set = set(self.paths)
        self._cache: dict[str, str | None] = {}

    def __contains__(self, path: str) -> bool:
        return path in self._set

    def read(self, path: str) -> str | None:
        if path not in self._set:
            return None
        if path not in self._cache:
            proc = run_git(self.repo, "show", f"{self.commit}:{path}")
            self._cache[path] = proc.stdout.decode("utf-8", errors="replace") if proc.returncode == 0 else None
        return self._cache[path]


# --- requirements -------------------------------------------------------------------------------

def requirement_lines(text: str, tree: Tree | None = None, where: str = "", _seen: set[str] | None = None) -> list[str]:
    """Requirement strings of a requirements file; `-r other.txt` is followed within `tree`."""
    seen = _seen if _seen is not None else {where}
    out: list[str] = []
    text = re.sub(r"\\\n", " ", text)
    for raw in text.splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        if not line:
            continue
        m = re.match(r"^(-r|--requirement)\s*=?\s*(\S+)", line)
        if m:
            inc = str(PurePosixPath(where).parent / m.group(2)) if where else m.group(2)
            inc = os.path.normpath(inc)
            if tree is not None and inc not in seen and tree.read(inc) is not None:
                seen.add(inc)
                out += requirement_lines(tree.read(inc) or "", tree, inc, seen)
            continue
        if line.startswith("-") or line in (".", "..") or line.startswith((".", "/")) or "://" in line:
            continue  # options, the project itself (-e .), local paths and URLs
        out.append(" ".join(line.split()))
    return out


def keep_requirement(req: str, project: str | None = None) -> tuple[bool, str]:
    """(keep?, why not): markers for the sandbox's Python, tools, pytest itself, the project itself."""
    try:
        r = Requirement(req)
    except InvalidRequirement:
        return False, "not a requirement"
    name = canonicalize_name(r.name)
    if r.marker is not None:
        env = {"python_version": PYTHON_VERSION, "python_full_version": PYTHON_VERSION + ".0", "extra": "",
               "sys_platform": "linux", "platform_system": "Linux", "implementation_name": "cpython",
               "platform_python_implementation": "CPython", "os_name": "posix"}
        try:
            if not r.marker.evaluate(env):
                return False, "marker excludes this Python"
        except Exception:
            return False, "marker cannot be evaluated"
    if name == "pytest":
        return False, "pytest comes with the sandbox"
    if project and name == canonicalize_name(project):
        return False, "the project itself (its code is the workspace)"
    if name in TOOLS or name.startswith(TOOL_PREFIXES):
        return False, "a tool that does not run tests"
    return True, ""


# --- the spec -------------------------------------------------------------------------------------

@dataclass
class EnvSpec:
    """What `infer` found for one repository at one commit (all of it goes into the task)."""

    repo: str
    commit: str
    requirements: list[str] = field(default_factory=list)  # what the tests need (before resolution)
    pythonpath: list[str] = field(default_factory=list)  # source roots besides the repository root
    test_cmd: str = "python -m pytest"
    setup: list[str] = field(default_factory=list)  # shell commands run in each fresh workspace
    project: str = ""
    version: str = ""
    evidence: dict[str, list[str]] = field(default_factory=dict)  # file -> what was taken from it
    skipped: dict[str, str] = field(default_factory=dict)  # requirement -> why it was left out
    problems: list[str] = field(default_factory=list)  # why it cannot be built (empty = buildable)
    decided_by: str = "rules"  # rules | model
    needs_metadata: bool = False
    pytest_args: list[str] = field(default_factory=list)  # from tox / nox / CI command lines (recorded)

    @property
    def ok(self) -> bool:
        return not self.problems

    def requirements_key(self) -> str:
        return hashlib.sha256(json.dumps(sorted(self.requirements)).encode()).hexdigest()[:12]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def command(self, plugins: list[str]) -> tuple[str, list[str]]:
        """(test_cmd, setup) for a built environment with these pytest plugin modules."""
        cmd = ["python", "-m", "pytest", *[a for m in plugins for a in ("-p", m)]]
        path = list(self.pythonpath)
        setup = list(self.setup)
        if self.needs_metadata and self.project:
            site = ".minicoder/site"
            dist = f"{self.project.replace('-', '_')}-{self.version or '0.0.0'}.dist-info"
            meta = f"Metadata-Version: 2.1\\nName: {self.project}\\nVersion: {self.version or '0.0.0'}\\n"
            setup.append(f"mkdir -p {site}/{dist} && printf '{meta}' > {site}/{dist}/METADATA")
            path.append(site)
        if path:
            cmd += ["-o", "pythonpath=" + " ".join(path)]
        return shlex.join(cmd), setup


def _note(spec: EnvSpec, path: str, what: str) -> None:
    spec.evidence.setdefault(path, []).append(what)


def _bucket(what: str) -> str:
    """runtime | test | dev: which set a source of requirements belongs to (by its name)."""
    w = what.lower()
    if re.search(r"\b(tests?|testing|tests_require|testenv)\b|session\.install", w):
        return "test"
    if re.search(r"\b(dev|develop|development)\b|dev-dependencies", w):
        return "dev"
    return "runtime"


def _add(spec: EnvSpec, reqs: list[str], path: str, what: str, found: dict[str, list[str]]) -> None:
    if reqs:
        _note(spec, path, f"{what}: {len(reqs)}")
        found[_bucket(what)] += reqs


def _pyproject(tree: Tree, spec: EnvSpec, found: dict[str, list[str]]) -> dict:
    text = tree.read("pyproject.toml")
    if text is None:
        return {}
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        spec.problems.append(f"pyproject.toml does not parse: {e}")
        return {}
    proj = data.get("project", {})
    spec.project = spec.project or str(proj.get("name", ""))
    if isinstance(proj.get("version"), str):
        spec.version = proj["version"]
    _add(spec, list(proj.get("dependencies", [])), "pyproject.toml", "project.dependencies", found)
    for extra in TEST_EXTRAS:
        _add(spec, list(proj.get("optional-dependencies", {}).get(extra, [])), "pyproject.toml",
             f"optional-dependencies.{extra}", found)
    groups = data.get("dependency-groups", {})

    def group(name: str, depth: int = 0) -> list[str]:
        out = []
        for item in groups.get(name, []) if depth < 5 else []:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, dict) and "include-group" in item:
                out += group(item["include-group"], depth + 1)
        return out

    for g in TEST_EXTRAS:
        _add(spec, group(g), "pyproject.toml", f"dependency-groups.{g}", found)
    poetry = data.get("tool", {}).get("poetry", {})
    if poetry:
        spec.project = spec.project or str(poetry.get("name", ""))
        spec.version = spec.version or str(poetry.get("version", ""))
        sections = [("dependencies", poetry.get("dependencies", {})), ("dev-dependencies", poetry.get("dev-dependencies", {}))]
        sections += [(f"group.{g}", poetry.get("group", {}).get(g, {}).get("dependencies", {})) for g in TEST_EXTRAS]
        for what, deps in sections:
            _add(spec, [_poetry_req(k, v) for k, v in deps.items() if k.lower() != "python"], "pyproject.toml",
                 f"tool.poetry.{what}", found)
    backend = str(data.get("build-system", {}).get("build-backend", ""))
    if backend.split(".")[0] in COMPILED_BACKENDS:
        spec.problems.append(f"needs compiling: build backend {backend}")
    if data.get("tool", {}).get("setuptools", {}).get("ext-modules"):
        spec.problems.append("needs compiling: [tool.setuptools] ext-modules")
    return data.get("tool", {}).get("pytest", {}).get("ini_options", {})


def _poetry_req(name: str, v: Any) -> str:
    if isinstance(v, str) and v not in ("*", ""):
        m = re.match(r"^\^(\d+)(\.\d+)?", v)
        return f"{name}>={v[1:]}" if m else (f"{name}{v}" if v[0] in "<>=!~" else f"{name}=={v}")
    return name


def _setup_cfg(tree: Tree, spec: EnvSpec, found: dict[str, list[str]]) -> dict:
    text = tree.read("setup.cfg")
    if text is None:
        return {}
    cp = configparser.ConfigParser(interpolation=None)
    try:
        cp.read_string(text)
    except configparser.Error as e:
        spec.problems.append(f"setup.cfg does not parse: {str(e)[:120]}")
        return {}
    if cp.has_option("metadata", "name"):
        spec.project = spec.project or cp.get("metadata", "name").strip()
    if cp.has_option("metadata", "version") and not cp.get("metadata", "version").startswith(("attr:", "file:")):
        spec.version = spec.version or cp.get("metadata", "version").strip()
    for key in ("install_requires", "tests_require"):
        if cp.has_option("options", key):
            _add(spec, requirement_lines(cp.get("options", key)), "setup.cfg", f"options.{key}", found)
    for extra in TEST_EXTRAS:
        if cp.has_option("options.extras_require", extra):
            _add(spec, requirement_lines(cp.get("options.extras_require", extra)), "setup.cfg",
                 f"extras_require.{extra}", found)
    return dict(cp["tool:pytest"]) if cp.has_section("tool:pytest") else {}


def _literal(node: ast.AST, names: dict[str, ast.AST]) -> Any:
    if isinstance(node, ast.Name) and node.id in names:
        node = names[node.id]
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        return None


def _setup_py(tree: Tree, spec: EnvSpec, found: dict[str, list[str]]) -> None:
    text = tree.read("setup.py")
    if text is None:
        return
    try:
        mod = ast.parse(text)
    except SyntaxError as e:
        spec.problems.append(f"setup.py does not parse: {e.msg} (line {e.lineno})")
        return
    names = {t.id: n.value for n in ast.walk(mod) if isinstance(n, ast.Assign) for t in n.targets
             if isinstance(t, ast.Name)}
    calls = [n for n in ast.walk(mod) if isinstance(n, ast.Call)]
    for call in calls:
        fname = getattr(call.func, "id", getattr(call.func, "attr", ""))
        if fname in ("Extension", "cythonize", "Pybind11Extension"):
            spec.problems.append(f"needs compiling: setup.py builds extension modules ({fname})")
            return
    for call in calls:
        if getattr(call.func, "id", getattr(call.func, "attr", "")) != "setup":
            continue
        for kw in call.keywords:
            val = _literal(kw.value, names)
            if kw.arg == "name" and isinstance(val, str):
                spec.project = spec.project or val
            elif kw.arg == "version" and isinstance(val, str):
                spec.version = spec.version or val
            elif kw.arg in ("install_requires", "tests_require") and isinstance(val, (list, tuple)):
                _add(spec, [str(v) for v in val], "setup.py", kw.arg, found)
            elif kw.arg == "extras_require" and isinstance(val, dict):
                for extra in TEST_EXTRAS:
                    _add(spec, [str(v) for v in val.get(extra, [])], "setup.py", f"extras_require.{extra}", found)
            elif kw.arg == "ext_modules" and not (isinstance(val, (list, tuple)) and not val):
                spec.problems.append("needs compiling: setup.py has ext_modules")


def _requirements_files(tree: Tree, spec: EnvSpec, found: dict[str, list[str]]) -> None:
    for path in tree.paths:
        p = PurePosixPath(path)
        top_level = len(p.parts) == 1 or (len(p.parts) == 2 and p.parts[0] == "requirements")
        if not top_level or not re.match(r"^(.*[-_])?(requirements|reqs|test|tests|testing|dev)([-_.].*)?\.(txt|in)$",
                                         p.name) or p.suffix not in (".txt", ".in"):
            continue
        what = "test requirements" if "test" in str(p).lower() else \
            "dev requirements" if "dev" in str(p).lower() else "requirements"
        if p.name == "requirements.txt" or what != "requirements":
            _add(spec, requirement_lines(tree.read(path) or "", tree, path), path, what, found)


def _tox_nox_ci(tree: Tree, spec: EnvSpec, found: dict[str, list[str]], extras: set[str]) -> list[str]:
    """Requirements from tox/nox; returns the test command lines seen (tox, nox, CI)."""
    commands: list[str] = []
    text = tree.read("tox.ini")
    if text is not None:
        cp = configparser.ConfigParser(interpolation=None, strict=False)
        try:
            cp.read_string(text)
        except configparser.Error:
            cp = configparser.ConfigParser()
        if cp.has_section("testenv"):
            env = cp["testenv"]
            deps = [d for d in requirement_lines(re.sub(r"\{[^}]*\}", "", env.get("deps", "")), tree, "tox.ini")
                    if ":" not in d.split(";")[0]]  # factor-conditional lines ("py38: foo") are skipped
            _add(spec, deps, "tox.ini", "testenv.deps", found)
            extras |= {e.strip() for e in re.split(r"[,\s]+", env.get("extras", "")) if e.strip()}
            commands += [ln.strip() for ln in env.get("commands", "").splitlines() if ln.strip()]
        if cp.has_section("pytest"):
            _note(spec, "tox.ini", "[pytest] ini options")
    text = tree.read("noxfile.py")
    if text is not None:
        try:
            mod = ast.parse(text)
        except SyntaxError:
            mod = ast.Module(body=[], type_ignores=[])
        for call in (n for n in ast.walk(mod) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)):
            args = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            if call.func.attr == "install":
                reqs, follow = [], False
                for a in args:
                    if follow and tree.read(a) is not None:
                        reqs += requirement_lines(tree.read(a) or "", tree, a)
                    elif not a.startswith("-") and a not in (".", "-e"):
                        m = re.match(r"^\.\[(.*)\]$", a)
                        if m:
                            extras.update(x.strip() for x in m.group(1).split(","))
                        else:
                            reqs.append(a)
                    follow = a in ("-r", "--requirement")
                _add(spec, reqs, "noxfile.py", "session.install", found)
            elif call.func.attr == "run" and args:
                commands.append(" ".join(args))
    for path in tree.paths:
        if path.startswith(".github/workflows/") and path.endswith((".yml", ".yaml")):
            for ln in (tree.read(path) or "").splitlines():
                if re.search(r"\b(pytest|py\.test|-m unittest)\b", ln):
                    commands.append(ln.split("run:", 1)[-1].strip(" -|"))
                    _note(spec, path, "test command line")
    return commands


def _layout(tree: Tree, spec: EnvSpec, ini: dict) -> None:
    src_pkgs = {PurePosixPath(p).parts[1] for p in tree.paths if p.startswith("src/") and p.endswith(".py")
                and len(PurePosixPath(p).parts) >= 2}
    if src_pkgs:
        spec.pythonpath.append("src")
        _note(spec, "src/", "package under src/: put on pythonpath")
    extra = ini.get("pythonpath")
    if extra:
        for p in (extra.split() if isinstance(extra, str) else list(extra)):
            if p not in spec.pythonpath and p != ".":
                spec.pythonpath.append(p)
    roots = [f"src/{p}" for p in sorted(src_pkgs)] + sorted({PurePosixPath(p).parts[0] for p in tree.paths
                                                            if p.endswith("/__init__.py") and p.count("/") == 1})
    pat = re.compile(r"importlib[._]metadata|pkg_resources|importlib_metadata")
    for p in tree.paths:
        if p.endswith(".py") and any(p.startswith(r + "/") for r in roots) and p.count("/") <= 2 and \
                ("/tests/" not in p) and pat.search(tree.read(p) or ""):
            spec.needs_metadata = True
            _note(spec, p, "reads distribution metadata: a metadata-only .dist-info is provided")
            break
    if spec.needs_metadata and not spec.version:
        for r in roots:
            for name in ("__init__.py", "_version.py", "version.py", "__about__.py"):
                m = re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", tree.read(f"{r}/{name}") or "", re.M)
                if m:
                    spec.version = m.group(1)
                    break
            if spec.version:
                break
        if not spec.version:
            proc = run_git(tree.repo, "describe", "--tags", "--abbrev=0", tree.commit)
            spec.version = proc.stdout.decode().strip().lstrip("v") if proc.returncode == 0 else ""
        spec.version = re.sub(r"[^0-9A-Za-z.+]", ".", spec.version) or "0.0.0"


def test_files(tree: Tree) -> list[str]:
    from minicoder.tasks.mine_git import is_test_module
    from minicoder.tasks.mine_pr import file_kind

    return [p for p in tree.paths if file_kind(p) == ("test", "python") and is_test_module(p)]


def infer(repo: str | os.PathLike, commit: str, *, model: Any = None, change_tests: list[str] = ()) -> EnvSpec:
    """Read the repository's metadata at `commit` and decide packages, layout and test command.

    `model`: asked (its `decide(tree, spec, question)`) only where the rules cannot decide; see
    `envbuild.ModelHook`. Without one the rules decide alone or record the problem.
    `change_tests`: test files a change brings (a PR may add a project's first tests)."""
    tree = Tree(repo, commit)
    spec = EnvSpec(repo=Path(repo).resolve().name, commit=commit)
    found: dict[str, list[str]] = {"runtime": [], "test": [], "dev": []}
    extras: set[str] = set()
    ini = _pyproject(tree, spec, found)
    ini = {**_setup_cfg(tree, spec, found), **ini}
    _setup_py(tree, spec, found)
    _requirements_files(tree, spec, found)
    commands = _tox_nox_ci(tree, spec, found, extras)
    if extras - set(TEST_EXTRAS):
        _note(spec, "tox.ini/noxfile.py", f"extras {sorted(extras)} (only test-named extras are read)")
    if "pytest.ini" in tree or ini:
        _note(spec, "pytest.ini" if "pytest.ini" in tree else "pyproject.toml/setup.cfg", "pytest configuration")
    spec.project = spec.project or spec.repo
    _layout(tree, spec, ini)
    if found["test"] and found["dev"]:
        _note(spec, "(rules)", f"{len(found['dev'])} dev requirements left out: test-specific ones exist")
    seen: set[str] = set()
    for req in found["runtime"] + (found["test"] or found["dev"]):
        req = req.strip()
        ok, why = keep_requirement(req, spec.project)
        if not ok:
            spec.skipped[req] = why
        elif req not in seen:
            seen.add(req)
            spec.requirements.append(req)
    spec.requirements.sort(key=str.lower)
    runner = [c for c in commands if re.search(r"\b(pytest|py\.test|unittest|nose2?|trial)\b", c)]
    for c in runner:
        m = re.search(r"(?:pytest|py\.test)\s+(.*)$", c)
        args = re.sub(r"\{[^}]*\}", " ", m.group(1)).split()[:12] if m else []
        if args:
            spec.pytest_args = args
            break
    from minicoder.tasks.mine_git import is_test_module

    has_tests = bool(test_files(tree)) or any(is_test_module(p) for p in change_tests)
    pytest_named = bool(ini) or "pytest.ini" in tree or any("pytest" in r.lower() for b in found.values() for r in b) or \
        any(re.search(r"pytest|py\.test", c) for c in runner)
    if not has_tests or not (pytest_named or runner):
        question = "no test files" if not has_tests else "no test runner named in the package metadata or CI"
        if model is not None:
            model.decide(tree, spec, question)
        elif not has_tests:
            spec.problems.append("no tests found (no test_*.py / *_test.py / tests/ files)")
        else:
            _note(spec, "(rules)", f"{question}: pytest, which also collects unittest-style tests")
    elif not pytest_named:
        _note(spec, "(rules)", f"tests run with {runner[0]!r}: pytest collects those tests too")
    return spec


def infer_for_change(repo: str | os.PathLike, base: str, fix_commit: str, changed: list[str], *,
                     model: Any = None) -> EnvSpec:
    """`infer` at the base commit, plus the requirements the change itself adds (a PR that adds a
    dependency needs it for its own tests to pass); those are noted in the evidence."""
    from minicoder.tasks.mine_pr import file_kind

    spec = infer(repo, base, model=model, change_tests=changed)
    if spec.ok and any(file_kind(p)[0] == "packaging" or p == "tox.ini" for p in changed):
        after = infer(repo, fix_commit)
        names = {canonicalize_name(Requirement(r).name) for r in spec.requirements}
        added = [r for r in after.requirements if canonicalize_name(Requirement(r).name) not in names]
        if added:
            spec.requirements = sorted(spec.requirements + added, key=str.lower)
            _note(spec, "(the change)", f"adds requirements: {', '.join(added)}")
    return spec
