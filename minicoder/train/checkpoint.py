"""Checkpoints: everything a run needs to continue bit-for-bit, written so a crash cannot corrupt them.

A checkpoint is one file, ``step_00000123.pt`` in the run's ``checkpoints/`` folder, holding
  - ``model`` and ``optimizer`` state dicts (full, unsharded tensors; see `distributed.py` for FSDP2),
  - ``step`` (optimizer steps done; the schedule is a pure function of it, so it is the scheduler state),
  - ``rng``: python ``random``, numpy and torch (CPU, and CUDA when present) generator states,
  - ``data``: the data loader's position (epoch, index into its shuffled order),
  - ``config``: the model and training configs as plain dicts (for `minicoder train --resume` and
    for reading a checkpoint without the code that wrote it).

Atomic write: the bytes go to a temporary file in the same folder (``.step_*.pt.tmp``), are flushed
and fsynced, and only then renamed over the final name (``os.replace``, atomic on POSIX). A crash or
a kill at any moment leaves either the old set of checkpoints or the old set plus the new one, never
a half-written file under a checkpoint name; stale temporaries are ignored and cleaned on the next
save. Keep-last-N deletes the oldest checkpoints only after the new one is in place.

Everything is stored as tensors, ints, floats, strings, lists and dicts, so loading uses
``torch.load(weights_only=True)``: a checkpoint file cannot run code when it is read.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

CKPT_RE = re.compile(r"^step_(\d{8})\.pt$")


class CheckpointError(RuntimeError):
    """A checkpoint folder or file is missing or unreadable; the message names the path."""


# --- RNG state ---------------------------------------------------------------------------------

def capture_rng() -> dict[str, Any]:
    """The state of every random generator a training step can touch, as weights-only-loadable data."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "mt": list(mt), "gauss": gauss},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the generator states recorded by `capture_rng`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["mt"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- files -------------------------------------------------------------------------------------

def checkpoint_path(ckpt_dir: str | os.PathLike, step: int) -> Path:
    return Path(ckpt_dir) / f"step_{step:08d}.pt"


def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints in `ckpt_dir`, oldest first (temporaries are not listed)."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(ckpt_dir)
    return found[-1] if found else None


def _fsync_dir(d: Path) -> None:
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(ckpt_dir: str | os.PathLike, step: int, state: dict[str, Any], keep_last: int = 3,
                    _write=torch.save) -> Path:
    """Write `state` as checkpoint `step` atomically; keep only the newest `keep_last` (0 = keep all).

    `_write(obj, file)` does the serialising (``torch.save``); tests replace it to crash mid-write.
    """
    if keep_last < 0:
        raise ValueError(f"keep_last must be >= 0, got {keep_last}")
    d = Path(ckpt_dir)
    d.mkdir(parents=True, exist_ok=True)
    for stale in d.glob(".step_*.pt.tmp"):  # left by an earlier crash mid-write
        stale.unlink(missing_ok=True)
    final = checkpoint_path(d, step)
    tmp = d / f".{final.name}.tmp"
    try:
        with open(tmp, "wb") as fh:
            _write({**state, "step": step}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(d)
    if keep_last:
        for old in list_checkpoints(d)[:-keep_last]:
            old.unlink(missing_ok=True)
    return final


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file (or the newest one in a folder)."""
    p = Path(path)
    if p.is_dir():
        latest = latest_checkpoint(p) or latest_checkpoint(p / "checkpoints")
        if latest is None:
            raise CheckpointError(f"no checkpoint (step_*.pt) in {p}")
        p = latest
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which, without a deep traceback
        raise CheckpointError(f"checkpoint {p} is unreadable ({type(e).__name__}: {e})") from None
