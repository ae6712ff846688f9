"""The project's set-up files agree with each other, and the code is lint-clean."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_requirements() -> dict[str, str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(meta["dependencies"])
    for extra in meta.get("optional-dependencies", {}).values():
        reqs += extra
    return {_name(r): r.replace(" ", "") for r in reqs}


def _environment_yml_requirements() -> dict[str, str]:
    # environment.yml is simple enough to read without a YAML parser: the pip: list items.
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    reqs = []
    for line in lines[start + 1 :]:
        m = re.match(r"^\s{6,}-\s+(\S.*)$", line)
        if not m:
            break
        reqs.append(m.group(1).split("#")[0].strip())
    return {_name(r): r.replace(" ", "") for r in reqs}


def test_environment_yml_matches_pyproject():
    py, env = _pyproject_requirements(), _environment_yml_requirements()
    assert py, "no requirements parsed from pyproject.toml"
    missing = sorted(set(py) - set(env))
    extra = sorted(set(env) - set(py))
    assert not missing and not extra, f"environment.yml drifted: missing {missing}, extra {extra}"
    differ = {k: (py[k], env[k]) for k in py if py[k] != env[k]}
    assert not differ, f"version specifiers differ (pyproject, environment.yml): {differ}"


def test_ruff_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed (it is a dev dependency: pip install -e .[dev])")
    proc = subprocess.run([ruff, "check", "minicoder", "tests", "bench", "notebooks"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_cli_help_lists_every_command():
    from minicoder.cli import COMMANDS

    proc = subprocess.run([sys.executable, "-m", "minicoder", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    for name in COMMANDS:
        assert name in proc.stdout
        sub = subprocess.run([sys.executable, "-m", "minicoder", name, "--help"], capture_output=True, text=True, cwd=ROOT)
        assert sub.returncode == 0, f"`minicoder {name} --help` failed: {sub.stderr}"
        assert "usage: minicoder" in sub.stdout


def test_cli_unknown_command_is_an_error():
    proc = subprocess.run([sys.executable, "-m", "minicoder", "no-such-command"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
