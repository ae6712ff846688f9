"""`minicoder doctor`: is this machine ready for the course and the demo? What to do if not.

Checks Python, the torch build, CUDA, Triton, fla (flash-linear-attention), the Docker engine and the
base task image, bubblewrap (the local sandbox, tried on a real task), Ray, free disk, and that
notebooks import this checkout of minicoder. Each check is `ok`, `warn` (optional, the course
still runs: e.g. no GPU) or `fail` (`minicoder demo` cannot run); each non-ok one says what to do.
The exit status is 1 when a check the demo needs failed, else 0.

`checks()` returns the same list for notebook 00's environment cell.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIN_FREE_GIB = 2.0


@dataclass
class Check:
    name: str
    status: str  # "ok" | "warn" | "fail"
    detail: str
    fix: str = ""  # what to do when not ok
    needed: bool = False  # the demo needs it (a failure makes the exit status non-zero)


def _version(module: str) -> str | None:
    """The version of an importable module (imports it: a broken install counts as missing)."""
    try:
        m = importlib.import_module(module)
    except Exception:  # not installed, or broken on import: both mean "not usable"
        return None
    return str(getattr(m, "__version__", "installed"))


def _dist_version(dist: str) -> str | None:
    """The installed version of a distribution, without importing it (fast)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def check_python() -> Check:
    v = sys.version_info
    ok = v >= (3, 11)
    return Check("python", "ok" if ok else "fail", f"{sys.version.split()[0]} at {sys.executable}",
                 "" if ok else "minicoder needs Python >= 3.11: `PYTHON=python3.11 make setup`", needed=True)


def check_torch() -> Check:
    try:
        import torch
    except Exception as e:
        return Check("torch", "fail", f"not importable ({type(e).__name__}: {e})",
                     "run `make setup` (installs the right torch build for this machine)", needed=True)
    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build"
    return Check("torch", "ok", f"{torch.__version__} ({build}), {torch.get_num_threads()} threads", needed=True)


def check_cuda() -> Check:
    try:
        import torch
    except Exception:
        return Check("cuda", "warn", "torch missing", "see the torch check")
    has_smi = shutil.which("nvidia-smi") is not None
    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        bf16 = torch.cuda.is_bf16_supported()
        return Check("cuda", "ok", f"{torch.cuda.device_count()} GPU(s): {names}; bf16 {'yes' if bf16 else 'no'}")
    if has_smi and not torch.version.cuda:
        return Check("cuda", "warn", "nvidia-smi sees a GPU but torch is a CPU build",
                     "reinstall torch with CUDA: `rm -rf .venv && make setup` on this machine")
    return Check("cuda", "warn", "no GPU: everything runs on the CPU at toy size (the course is built for that)",
                 "for the `small` preset and the kernels, use a machine with an NVIDIA GPU")


def _gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def check_triton() -> Check:
    v = _version("triton")
    if v is None:
        return Check("triton", "warn", "not installed: the Triton kernels (notebook 06) fall back to PyTorch",
                     "`pip install 'triton>=3.1'` (comes with CUDA torch builds)")
    if not _gpu():
        return Check("triton", "ok", f"{v} (kernels need a GPU; on the CPU the PyTorch reference runs)")
    return Check("triton", "ok", f"{v}")


def check_fla() -> Check:
    if not _gpu():  # importing fla costs a minute on a busy CPU and is not used there: version only
        v = _dist_version("flash-linear-attention")
        if v is None:
            return Check("fla", "warn", "flash-linear-attention not installed (only used on a GPU)",
                         "`pip install 'flash-linear-attention>=0.3'` for a GPU machine")
        return Check("fla", "ok", f"{v} installed (used on a GPU; on the CPU the PyTorch path runs)")
    v = _version("fla")
    if v is None:
        return Check("fla", "warn", "flash-linear-attention not importable: kernel='auto' uses ours / PyTorch",
                     "`pip install 'flash-linear-attention>=0.3'`; its Triton kernels need a matching triton "
                     "(an import error here usually means a triton / fla version mismatch)")
    return Check("fla", "ok", f"{v} (imports with triton {_dist_version('triton')})")


def check_docker() -> Check:
    try:
        import docker

        client = docker.from_env(timeout=5)
        client.ping()
    except Exception as e:  # no SDK, no socket, no answer: all "no engine"
        return Check("docker", "warn", f"no Docker engine answers ({type(e).__name__})",
                     "`make docker` starts one and builds the base image; without it the local bubblewrap "
                     "sandbox is used (the demo picks it by itself)")
    from minicoder.record import DEFAULT_IMAGE as BASE_TAG

    try:
        client.images.get(BASE_TAG)
    except Exception:
        return Check("docker", "warn", f"engine {client.version().get('Version', '?')} answers, but the base image "
                     f"{BASE_TAG} is missing", "`make docker` builds it (offline, from this machine's Python)")
    return Check("docker", "ok", f"engine {client.version().get('Version', '?')}, base image {BASE_TAG}")


def check_bwrap(run_task: bool = True) -> Check:
    path = shutil.which("bwrap")
    if path is None:
        return Check("bubblewrap", "fail", "`bwrap` not found: no local sandbox",
                     "`apt-get install bubblewrap` (or `make setup` as root); or start Docker with `make docker`",
                     needed=True)
    ver = subprocess.run([path, "--version"], capture_output=True, text=True).stdout.strip()
    if not run_task:
        return Check("bubblewrap", "ok", ver, needed=True)
    try:
        from minicoder.sandbox import evaluate
        from minicoder.sandbox.examples import demo_task

        t0 = time.perf_counter()
        task = demo_task()
        good = evaluate(task, task.patch, backend="local")
        bad = evaluate(task, "", backend="local")
        dt = time.perf_counter() - t0
    except Exception as e:  # the sandbox could not start: say why
        return Check("bubblewrap", "fail", f"{ver}, but the local sandbox failed: {type(e).__name__}: {e}",
                     "check that unprivileged user namespaces are allowed (sysctl kernel.unprivileged_userns_clone=1) "
                     "or run as root; or use Docker (`make docker`)", needed=True)
    if good.reward != 1.0 or bad.reward != 0.0:
        return Check("bubblewrap", "fail", f"{ver}: the sample task scored gold {good.reward} / empty {bad.reward} "
                     f"({good.status}: {good.message[:120]})", "run `pytest tests/test_sandbox.py -x` to see why",
                     needed=True)
    return Check("bubblewrap", "ok", f"{ver}; a sample task graded in the local sandbox (gold 1, empty 0) in {dt:.1f}s",
                 needed=True)


def check_ray() -> Check:
    v = _dist_version("ray")
    if v is None:
        return Check("ray", "warn", "not installed: rollouts run on this machine only",
                     "`pip install -e '.[scale]'` to fan rollouts and rewards out over a Ray cluster")
    return Check("ray", "ok", v)


def check_disk(path: Path | None = None) -> Check:
    p = path or Path.cwd()
    free = shutil.disk_usage(p).free / 2**30
    ok = free >= MIN_FREE_GIB
    return Check("disk", "ok" if ok else "fail", f"{free:.1f} GiB free at {p}",
                 "" if ok else f"the demo writes ~1 GiB (checkpoints, tasks): free at least {MIN_FREE_GIB:.0f} GiB "
                               "(`rm -rf runs/` removes old demo runs)", needed=True)


def check_minicoder() -> Check:
    import minicoder

    where = Path(minicoder.__file__).resolve().parent
    ok = where == REPO / "minicoder"
    msg = f"{minicoder.__version__} from {where}"
    if not ok:
        return Check("minicoder", "warn", msg + f" (not this checkout, {REPO})",
                     "`pip install -e .` from this checkout, or select the .venv kernel in Jupyter")
    return Check("minicoder", "ok", msg)


def check_jupyter() -> Check:
    from shutil import which

    ok = _dist_version("ipykernel") is not None and _dist_version("jupyterlab") is not None
    kernel = Path(sys.prefix) / "share" / "jupyter" / "kernels" / "python3"
    if not ok:
        return Check("jupyter", "warn", "jupyterlab / ipykernel missing", "`make setup` installs them")
    lab = which("jupyter-lab") or str(Path(sys.prefix) / "bin" / "jupyter-lab")
    return Check("jupyter", "ok", f"jupyterlab {_dist_version('jupyterlab')}; kernel {'in this venv' if kernel.exists() else 'system'}"
                 f"; start with `{os.path.relpath(lab)} notebooks/`")


CHECKS: list[Callable[[], Check]] = [check_python, check_torch, check_cuda, check_triton, check_fla, check_docker,
                                     check_bwrap, check_ray, check_disk, check_minicoder, check_jupyter]


def checks(run_task: bool = True) -> list[Check]:
    out = []
    for fn in CHECKS:
        try:
            out.append(fn(run_task) if fn is check_bwrap else fn())
        except Exception as e:  # a check must never crash the doctor
            out.append(Check(fn.__name__.removeprefix("check_"), "warn", f"check crashed: {type(e).__name__}: {e}"))
    return out


def format_checks(results: list[Check]) -> str:
    mark = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}
    lines = []
    for c in results:
        lines.append(f"[{mark[c.status]}] {c.name:11s} {c.detail}")
        if c.status != "ok" and c.fix:
            lines.append(f"       {'':11s} -> {c.fix}")
    return "\n".join(lines)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check this machine for the course and the demo, and say what to fix",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--no-sandbox-run", action="store_true", help="do not grade a sample task in the local sandbox")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    results = checks(run_task=not args.no_sandbox_run)
    print(format_checks(results))
    failed = [c.name for c in results if c.status == "fail" and c.needed]
    warned = [c.name for c in results if c.status == "warn"]
    if failed:
        print(f"\nminicoder doctor: {len(failed)} problem(s) the demo cannot run with: {', '.join(failed)}")
        return 1
    print("\nminicoder doctor: ready for `make demo`" + (f" ({len(warned)} optional: {', '.join(warned)})" if warned else ""))
    return 0
