"""What machine a benchmark or report ran on: one helper for every `bench/` script and report.

Benchmarks record the CPU model, core count, the load average when they started (this project's
machines can be shared, and a loaded machine slows CPU timings down), the torch thread count, the
GPU's name when one is used, the package versions that matter to the figure, and the date.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(packages: Iterable[str] = ("torch",), **extra: Any) -> dict[str, Any]:
    """A JSON-ready description of this machine; `packages`: whose versions to record."""
    versions = {}
    for name in packages:
        try:
            versions[name] = __import__(name).__version__
        except Exception:  # not installed, or no __version__: recorded as unknown
            versions[name] = None
    info: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": versions,
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    info.update(extra)
    return info
