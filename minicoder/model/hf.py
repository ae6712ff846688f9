"""Load and save Qwen3-Next checkpoints (config.json + safetensors), the format HF transformers uses.

Design choices:
- On disk, routed experts are per expert, as in the released checkpoints and as transformers 5's
  `save_pretrained` writes them: `...mlp.experts.{j}.gate_proj.weight [I, H]`, `up_proj [I, H]`,
  `down_proj [H, I]`. In memory they are stacked (`experts.gate_up_proj [E, 2I, H]`, gate rows first,
  and `experts.down_proj [E, H, I]`). The loader also accepts the stacked names directly.
- Everything else maps 1:1 by name (our module tree is HF's), `mtp.*` included. transformers'
  own `Qwen3NextForCausalLM` ignores `mtp.*` when loading, so our checkpoints load there too.
- Sharding: one `model.safetensors`, or `model-0000i-of-0000n.safetensors` + `model.safetensors.index.json`
  (`weight_map`), split at `max_shard_size`.
- Strict: every tensor the model needs must be there with the right shape and nothing else may be;
  otherwise `CheckpointError` names the tensors. A tied `lm_head.weight` may be absent (and is not
  written). The MTP depth comes from config.json, or, when it does not say (released configs,
  transformers-saved ones), from the `mtp.layers.N` tensors present.
- Memory: the model is built on the meta device and tensors are assigned as they are read (each
  converted straight to the target device/dtype), so loading never holds two copies of the weights.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from minicoder.config import ModelConfig, mtp_depth_in
from minicoder.model.model import HybridLM

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
_PER_EXPERT = re.compile(r"^(?P<prefix>.*\.mlp\.experts)\.(?P<j>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)\.weight$")


class CheckpointError(ValueError):
    """A checkpoint does not match the model; the message names the tensors."""


def _names_list(names: list[str], limit: int = 8) -> str:
    names = sorted(names)
    more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _tensor_files(path: Path) -> dict[str, Path]:
    """tensor name -> safetensors file, from the index (sharded) or the single file."""
    index = path / INDEX_NAME
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return {name: path / fname for name, fname in weight_map.items()}
    single = path / SINGLE_NAME
    if single.exists():
        with safe_open(str(single), "pt") as f:
            return {name: single for name in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    raise CheckpointError(f"{path}: neither {INDEX_NAME} nor {SINGLE_NAME} found")


def _tensor_shapes(files: dict[str, Path]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    by_file: dict[Path, list[str]] = defaultdict(list)
    for name, f in files.items():
        by_file[f].append(name)
    for f, names in by_file.items():
        if not f.exists():
            raise CheckpointError(f"{f.name} is listed in {INDEX_NAME} but missing from {f.parent}")
        with safe_open(str(f), "pt") as sf:
            present = set(sf.keys())
            for name in names:
                if name not in present:
                    raise CheckpointError(f"tensor {name!r} is listed in {INDEX_NAME} but not in {f.name}")
                shapes[name] = tuple(sf.get_slice(name).get_shape())
    return shapes


def _infer_mtp_depth(names: list[str]) -> int:
    layers = {int(m.group(1)) for n in names if (m := re.match(r"^mtp\.layers\.(\d+)\.", n))}
    return max(layers) + 1 if layers else 0


def _expected_disk_shapes(model: HybridLM) -> dict[str, tuple[int, ...]]:
    """Every tensor name (on-disk, per-expert form) the model needs, with its shape."""
    out: dict[str, tuple[int, ...]] = {}
    for name, p in model.state_dict(keep_vars=True).items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        if name.endswith(".experts.gate_up_proj"):
            e, two_i, h = p.shape
            for j in range(e):
                out[f"{name[: -len('.gate_up_proj')]}.{j}.gate_proj.weight"] = (two_i // 2, h)
                out[f"{name[: -len('.gate_up_proj')]}.{j}.up_proj.weight"] = (two_i // 2, h)
        elif name.endswith(".experts.down_proj"):
            e, h, i = p.shape
            for j in range(e):
                out[f"{name[: -len('.down_proj')]}.{j}.down_proj.weight"] = (h, i)
        else:
            out[name] = tuple(p.shape)
    return out


def _stacked_to_disk_names(model: HybridLM) -> dict[str, list[str]]:
    """Stacked param name -> the per-expert disk names it covers (for accepting stacked checkpoints)."""
    out = {}
    for name, p in model.state_dict(keep_vars=True).items():
        if name.endswith(".experts.gate_up_proj"):
            base = name[: -len(".gate_up_proj")]
            out[name] = [f"{base}.{j}.{w}.weight" for j in range(p.shape[0]) for w in ("gate_proj", "up_proj")]
        elif name.endswith(".experts.down_proj"):
            base = name[: -len(".down_proj")]
            out[name] = [f"{base}.{j}.down_proj.weight" for j in range(p.shape[0])]
    return out


def check_checkpoint(
    path: str | Path, config_overrides: dict | None = None
) -> tuple[ModelConfig, dict[str, Path], HybridLM]:
    """Validate a checkpoint folder without reading any weights (headers only).

    Returns (config, tensor name -> file, the model built on the meta device). Raises CheckpointError
    naming missing / unexpected / wrong-shape tensors, or a missing config.json / weights file.
    """
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise CheckpointError(f"{path}: no config.json")
    raw = json.loads(cfg_file.read_text())
    files = _tensor_files(path)
    cfg = ModelConfig.from_hf_dict(raw)
    if mtp_depth_in(raw) is None:
        cfg = cfg.replace(num_nextn_predict_layers=_infer_mtp_depth(list(files)))
    if config_overrides:
        cfg = cfg.replace(**config_overrides)

    with torch.device("meta"):
        model = HybridLM(cfg)
    expected = _expected_disk_shapes(model)
    stacked_cover = _stacked_to_disk_names(model)
    params = model.state_dict(keep_vars=True)

    shapes = _tensor_shapes(files)
    provided: dict[str, tuple[int, ...]] = {}
    for name, shape in shapes.items():
        if name in stacked_cover:  # stacked experts on disk: check the whole tensor, count it as its parts
            if shape != tuple(params[name].shape):
                raise CheckpointError(
                    f"tensor {name!r} has shape {list(shape)} in the checkpoint but the model needs "
                    f"{list(params[name].shape)}"
                )
            provided.update({n: expected[n] for n in stacked_cover[name]})
        elif name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue  # tied: the embedding is the lm_head
        else:
            provided[name] = shape
    missing = [n for n in expected if n not in provided]
    unexpected = [n for n in provided if n not in expected]
    if missing:
        raise CheckpointError(f"checkpoint {path} is missing {len(missing)} tensor(s): {_names_list(missing)}")
    if unexpected:
        raise CheckpointError(
            f"checkpoint {path} has {len(unexpected)} unexpected tensor(s): {_names_list(unexpected)}"
        )
    for name, shape in provided.items():
        if shape != expected[name]:
            raise CheckpointError(
                f"tensor {name!r} has shape {list(shape)} in the checkpoint but the model needs {list(expected[name])}"
            )

    return cfg, files, model


def load_pretrained(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    config_overrides: dict | None = None,
) -> HybridLM:
    """Read a Qwen3-Next checkpoint folder into a HybridLM (eval mode).

    path: folder with config.json and model.safetensors or model.safetensors.index.json + shards.
    dtype: floating-point dtype for every weight (default: float32).
    config_overrides: ModelConfig fields to change (e.g. {"kernel": "torch"}), not shapes.
    Raises CheckpointError naming missing / unexpected / wrong-shape tensors.
    """
    cfg, files, model = check_checkpoint(path, config_overrides)
    dtype = dtype or torch.float32
    params = model.state_dict(keep_vars=True)
    stacked_cover = _stacked_to_disk_names(model)
    # Read tensor by tensor straight into place.
    state: dict[str, torch.Tensor] = {}
    for name, p in params.items():
        if name in stacked_cover:
            state[name] = torch.empty(p.shape, dtype=dtype, device=device)
    by_file: dict[Path, list[str]] = defaultdict(list)
    for name, f in files.items():
        by_file[f].append(name)
    for f, names in by_file.items():
        with safe_open(str(f), "pt", device=str(device)) as sf:
            for name in names:
                if name == "lm_head.weight" and cfg.tie_word_embeddings:
                    continue
                t = sf.get_tensor(name)
                t = t.to(dtype) if t.is_floating_point() else t
                m = _PER_EXPERT.match(name)
                if m is None:
                    state[name] = t
                    continue
                j, proj, prefix = int(m["j"]), m["proj"], m["prefix"]
                if proj == "down_proj":
                    state[f"{prefix}.down_proj"][j] = t
                else:
                    inner = t.shape[0]
                    rows = slice(0, inner) if proj == "gate_proj" else slice(inner, 2 * inner)
                    state[f"{prefix}.gate_up_proj"][j, rows] = t
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
        model.load_state_dict(state, strict=False, assign=True)
        model.lm_head.weight = model.model.embed_tokens.weight
    else:
        model.load_state_dict(state, strict=True, assign=True)
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:
        raise CheckpointError(f"tensors never loaded: {_names_list(leftover)}")
    return model.eval()


def _disk_tensors(model: HybridLM, dtype: torch.dtype | None) -> Iterator[tuple[str, torch.Tensor]]:
    """(on-disk name, contiguous CPU tensor) in state-dict order, experts split per expert."""

    def prep(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        return t.to("cpu").contiguous()

    for name, t in model.state_dict().items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue
        if name.endswith(".experts.gate_up_proj"):
            base, inner = name[: -len(".gate_up_proj")], t.shape[1] // 2
            for j in range(t.shape[0]):
                yield f"{base}.{j}.gate_proj.weight", prep(t[j, :inner]).clone()
                yield f"{base}.{j}.up_proj.weight", prep(t[j, inner:]).clone()
        elif name.endswith(".experts.down_proj"):
            base = name[: -len(".down_proj")]
            for j in range(t.shape[0]):
                yield f"{base}.{j}.down_proj.weight", prep(t[j]).clone()
        else:
            yield name, prep(t).clone()


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B)\s*", size, flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"max_shard_size {size!r}: use an int (bytes) or e.g. '5GB', '500MB'")
    unit = m.group(2).upper().replace("I", "")
    return int(float(m.group(1)) * {"B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}[unit])


def save_pretrained(
    model: HybridLM, path: str | Path, max_shard_size: int | str = "5GB", dtype: torch.dtype | None = None
) -> list[Path]:
    """Write config.json + safetensors (sharded with an index when larger than max_shard_size).

    dtype: cast floating weights on the way out (default: as they are). Returns the files written.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    limit = _parse_size(max_shard_size)
    shards: list[list[str]] = []  # tensor names per shard (tensors are freed once written)
    current: dict[str, torch.Tensor] = {}
    size = total = 0
    tmp_files: list[Path] = []
    # Write shards as they fill (names fixed once the count is known, by renaming).
    for name, t in _disk_tensors(model, dtype):
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > limit:
            shards.append(list(current))
            tmp = path / f".shard-{len(shards):05d}.tmp"
            save_file(current, str(tmp), metadata={"format": "pt"})
            tmp_files.append(tmp)
            current, size = {}, 0
        current[name] = t
        size += nbytes
        total += nbytes
    if current:
        shards.append(list(current))
        tmp = path / f".shard-{len(shards):05d}.tmp"
        save_file(current, str(tmp), metadata={"format": "pt"})
        tmp_files.append(tmp)

    for stale in [path / SINGLE_NAME, path / INDEX_NAME, *path.glob("model-*-of-*.safetensors")]:
        stale.unlink(missing_ok=True)
    written: list[Path] = []
    if len(shards) == 1:
        tmp_files[0].rename(path / SINGLE_NAME)
        written.append(path / SINGLE_NAME)
    else:
        weight_map = {}
        for i, (shard, tmp) in enumerate(zip(shards, tmp_files), start=1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            tmp.rename(path / fname)
            written.append(path / fname)
            weight_map.update({n: fname for n in shard})
        (path / INDEX_NAME).write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n"
        )
        written.append(path / INDEX_NAME)

    d = model.config.to_hf_dict()
    dt = dtype or next(model.parameters()).dtype
    d["dtype"] = d["torch_dtype"] = str(dt).removeprefix("torch.")
    (path / "config.json").write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")
    written.append(path / "config.json")
    return written
