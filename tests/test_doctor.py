"""`minicoder doctor`: a ready machine exits 0; a missing sandbox or a full disk exits 1 and says what to do."""

from __future__ import annotations

import shutil

import pytest

from minicoder import doctor
from minicoder.cli import main


def test_doctor_on_this_machine_lists_every_check_and_exits_0(capsys):
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed here (make setup installs it)")
    rc = main(["doctor", "--no-sandbox-run"])
    out = capsys.readouterr().out
    for name in ("python", "torch", "cuda", "triton", "fla", "docker", "bubblewrap", "ray", "disk", "minicoder"):
        assert f"] {name}" in out
    assert rc == 0 and "ready for `make demo`" in out
    # every check that is not ok says what to do about it
    results = doctor.checks(run_task=False)
    assert all(c.fix for c in results if c.status != "ok")


def test_no_bubblewrap_is_a_failure_with_a_fix(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: no bwrap on it
    c = doctor.check_bwrap(run_task=False)
    assert c.status == "fail" and c.needed and "apt-get install bubblewrap" in c.fix
    rc = main(["doctor", "--no-sandbox-run"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "[FAIL] bubblewrap" in out and "-> `apt-get install bubblewrap`" in out
    assert "cannot run with: bubblewrap" in out


def test_full_disk_is_a_failure(monkeypatch):
    monkeypatch.setattr(doctor, "MIN_FREE_GIB", 1e9)
    c = doctor.check_disk()
    assert c.status == "fail" and c.needed and "rm -rf runs/" in c.fix


def test_missing_optional_pieces_are_warnings_not_failures(monkeypatch):
    monkeypatch.setattr(doctor, "_dist_version", lambda dist: None)
    ray = doctor.check_ray()
    assert ray.status == "warn" and not ray.needed and ".[scale]" in ray.fix
    if not doctor._gpu():
        fla = doctor.check_fla()
        assert fla.status == "warn" and not fla.needed


@pytest.mark.slow
def test_the_sandbox_check_grades_a_real_task():
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed here")
    c = doctor.check_bwrap(run_task=True)
    assert c.status == "ok", c.detail
    assert "gold 1, empty 0" in c.detail
