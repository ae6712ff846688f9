"""Every notebook in notebooks/ runs top to bottom on a CPU (toy config), as a learner would run it.

Notebooks see MINICODER_CI=1 so that a rare expensive cell can shrink itself; they must still
compute everything they show.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def kernel_cpu_seconds(client) -> float | None:
    """CPU seconds (user + system, with its finished children) of the notebook's kernel, from /proc:
    unlike wall time, about the same on a loaded machine as on an idle one."""
    try:
        pid = client.km.provisioner.process.pid
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    except (AttributeError, OSError, ValueError):
        return None


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path: Path, tmp_path: Path, record_property):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    os.environ["MINICODER_CI"] = "1"
    cpu: list[float | None] = [None]
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}},
                            on_cell_executed=lambda **_: cpu.__setitem__(0, kernel_cpu_seconds(client) or cpu[0]))
    t0 = time.perf_counter()
    client.execute()
    used = f", {cpu[0]:.0f}s kernel CPU" if cpu[0] is not None else ""
    line = f"[notebook] {path.stem}: {time.perf_counter() - t0:.0f}s{used} (load average {os.getloadavg()[0]:.1f})"
    print("\n" + line)
    record_property("notebook_time", line)  # conftest prints these at the end of every run, captured or not
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
