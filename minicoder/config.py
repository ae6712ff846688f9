"""ModelConfig: one typed config for the hybrid Gated DeltaNet / gated attention / MoE decoder.

Design choices:
- One dataclass, every field commented, field names = HF `Qwen3NextConfig` names wherever HF has the
  field, so `to_hf_dict()` / `from_hf_dict()` are a near-identity and a released `config.json` reads
  straight in (model_type "qwen3_next").
- The hybrid layout is an explicit `layer_types` list ("linear_attention" = Gated DeltaNet,
  "full_attention" = gated softmax attention). Left empty, it is filled with HF's default pattern:
  every `full_attention_interval`-th layer is full attention (3 DeltaNet : 1 attention).
- Presets: `toy` (a few million parameters, CPU in minutes), `small` (a few hundred million, one GPU),
  `full` (Qwen3-Coder-Next 80B-A3B, as its released config.json). Scale by changing one word.
- Validation happens in `__post_init__` and names the offending field, so a bad config fails at
  construction, not deep inside a reshape.
- Training-only knobs that HF has no field for (`mtp_loss_weight`, `kernel`) are written to
  config.json as extra keys; HF ignores them.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LAYER_TYPES = ("linear_attention", "full_attention")
#: The one list of kernel names, shared by the gated-delta and MoE ops and checked by
#: `ModelConfig.kernel`. An op's `register_backend` adds its new name here, so a backend registered
#: at run time is a valid `kernel` at once. A name only one op implements means "auto" in the other
#: (fla has no MoE kernel, say).
KERNELS: list[str] = ["auto", "fla", "triton", "torch", "naive"]


def register_kernel_name(name: str) -> None:
    """Make `name` a valid kernel (called by the ops' `register_backend`)."""
    if name not in KERNELS:
        KERNELS.append(name)


class ConfigError(ValueError):
    """A config field has a bad value; the message names the field."""


def default_layer_types(num_layers: int, full_attention_interval: int = 4) -> list[str]:
    """HF's default hybrid pattern: layer i is full attention when (i + 1) % interval == 0."""
    return [
        "full_attention" if (i + 1) % full_attention_interval == 0 else "linear_attention"
        for i in range(num_layers)
    ]


@dataclass
class ModelConfig:
    # --- sizes -------------------------------------------------------------------------------
    vocab_size: int = 151936  # tokens in the vocabulary (embedding rows, lm_head rows)
    hidden_size: int = 2048  # width of the residual stream
    num_hidden_layers: int = 48  # decoder layers in the main stack (MTP layers not included)
    # per layer: "linear_attention" (Gated DeltaNet) or "full_attention" (gated softmax attention);
    # empty -> filled with default_layer_types(num_hidden_layers, full_attention_interval)
    layer_types: list[str] = field(default_factory=list)
    full_attention_interval: int = 4  # only used to fill an empty layer_types
    # --- gated softmax attention -------------------------------------------------------------
    num_attention_heads: int = 16  # query heads
    num_key_value_heads: int = 2  # key/value heads (GQA: each serves heads / kv_heads query heads)
    head_dim: int = 256  # dims per attention head (q_proj emits 2 * heads * head_dim: query | gate)
    partial_rotary_factor: float = 0.25  # RoPE rotates the first 25% of each head's dims
    rope_theta: float = 5_000_000.0  # RoPE base (Qwen3-Coder-Next's released config.json: 5e6)
    max_position_embeddings: int = 262_144  # longest context the model is meant for
    attention_bias: bool = False  # bias on q/k/v/o projections (False in every released config)
    # --- Gated DeltaNet (linear attention) ---------------------------------------------------
    linear_num_key_heads: int = 16  # q/k heads of the delta rule
    linear_num_value_heads: int = 32  # v heads (a multiple of the key heads; q/k shared across them)
    linear_key_head_dim: int = 128  # dk: rows of each head's K x V recurrent state
    linear_value_head_dim: int = 128  # dv: columns of the state
    linear_conv_kernel_dim: int = 4  # depthwise causal short convolution over q, k, v channels
    # --- mixture of experts ------------------------------------------------------------------
    num_experts: int = 512  # routed experts per MoE layer (0 -> every layer is a dense MLP)
    num_experts_per_tok: int = 10  # top-k routed experts per token
    moe_intermediate_size: int = 512  # SwiGLU width of each routed expert
    shared_expert_intermediate_size: int = 512  # SwiGLU width of the always-on shared expert
    norm_topk_prob: bool = True  # renormalise the top-k router probabilities to sum to 1
    router_aux_loss_coef: float = 0.001  # weight of the load-balancing loss in the total loss
    decoder_sparse_step: int = 1  # layer i is MoE when (i + 1) % step == 0 (and not in mlp_only_layers)
    mlp_only_layers: list[int] = field(default_factory=list)  # layer indices forced to a dense MLP
    intermediate_size: int = 5120  # SwiGLU width of the dense MLP in non-MoE layers
    # --- multi-token prediction --------------------------------------------------------------
    num_nextn_predict_layers: int = 1  # MTP depth (released checkpoints ship one `mtp.layers.0`)
    mtp_loss_weight: float = 0.3  # training only: weight of the MTP cross-entropy in the total loss
    # --- misc --------------------------------------------------------------------------------
    rms_norm_eps: float = 1e-6  # epsilon of every RMSNorm
    tie_word_embeddings: bool = False  # lm_head shares the embedding matrix
    initializer_range: float = 0.02  # std of the normal init of linear / embedding weights
    bos_token_id: int | None = 151643
    eos_token_id: int | list[int] | None = field(default_factory=lambda: [151645, 151643])
    pad_token_id: int | None = None
    # which gated-delta / MoE kernels to use (`KERNELS`): "auto" (fla on GPU when installed, else
    # ours), "fla", "triton" (ours), "torch" (PyTorch, runs anywhere), "naive" (the reference loops)
    kernel: str = "auto"

    def __post_init__(self) -> None:
        if not self.layer_types:
            self.layer_types = default_layer_types(self.num_hidden_layers, self.full_attention_interval)
        self.layer_types = list(self.layer_types)
        self.mlp_only_layers = list(self.mlp_only_layers)
        self.validate()

    # ------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ConfigError naming the field when the shapes or choices don't fit together."""

        def need(cond: bool, name: str, why: str) -> None:
            if not cond:
                raise ConfigError(f"ModelConfig.{name}: {why}")

        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "linear_num_key_heads",
            "linear_num_value_heads",
            "linear_key_head_dim",
            "linear_value_head_dim",
            "linear_conv_kernel_dim",
            "decoder_sparse_step",
            "max_position_embeddings",
        ):
            v = getattr(self, name)
            need(isinstance(v, int) and v > 0, name, f"must be a positive int, got {v!r}")
        need(len(self.layer_types) == self.num_hidden_layers, "layer_types",
             f"has {len(self.layer_types)} entries but num_hidden_layers = {self.num_hidden_layers}")
        for i, t in enumerate(self.layer_types):
            need(t in LAYER_TYPES, "layer_types", f"entry {i} is {t!r}; expected one of {LAYER_TYPES}")
        need(self.num_attention_heads % self.num_key_value_heads == 0, "num_key_value_heads",
             f"{self.num_key_value_heads} does not divide num_attention_heads = {self.num_attention_heads}")
        need(self.linear_num_value_heads % self.linear_num_key_heads == 0, "linear_num_value_heads",
             f"{self.linear_num_value_heads} is not a multiple of linear_num_key_heads = "
             f"{self.linear_num_key_heads}")
        rot = int(self.head_dim * self.partial_rotary_factor)
        need(0 < self.partial_rotary_factor <= 1, "partial_rotary_factor",
             f"must be in (0, 1], got {self.partial_rotary_factor}")
        need(rot % 2 == 0 and rot > 0, "partial_rotary_factor",
             f"head_dim * factor = {self.head_dim} * {self.partial_rotary_factor} = {rot} rotary dims; "
             "it must be a positive even number")
        need(self.rope_theta > 0, "rope_theta", f"must be positive, got {self.rope_theta}")
        need(self.num_experts >= 0, "num_experts", f"must be >= 0, got {self.num_experts}")
        if self.num_experts > 0:
            need(0 < self.num_experts_per_tok <= self.num_experts, "num_experts_per_tok",
                 f"top-k = {self.num_experts_per_tok} must be in [1, num_experts = {self.num_experts}]")
            need(self.moe_intermediate_size > 0, "moe_intermediate_size", "must be positive")
            need(self.shared_expert_intermediate_size > 0, "shared_expert_intermediate_size",
                 "must be positive (the Qwen3-Next MoE block always has a shared expert)")
        for i in self.mlp_only_layers:
            need(isinstance(i, int) and 0 <= i < self.num_hidden_layers, "mlp_only_layers",
                 f"index {i!r} is not a layer in [0, {self.num_hidden_layers})")
        if any(not self.is_moe_layer(i) for i in range(self.num_hidden_layers)):
            need(self.intermediate_size > 0, "intermediate_size", "dense MLP layers need a positive width")
        need(self.num_nextn_predict_layers >= 0, "num_nextn_predict_layers", "must be >= 0")
        need(self.rms_norm_eps > 0, "rms_norm_eps", "must be positive")
        need(self.kernel in KERNELS, "kernel", f"{self.kernel!r} is not one of {KERNELS}")

    # ------------------------------------------------------------------------------------------
    def is_moe_layer(self, i: int) -> bool:
        """Layer i uses the sparse MoE block (else the dense SwiGLU MLP), as HF decides it."""
        return (
            i not in self.mlp_only_layers and self.num_experts > 0 and (i + 1) % self.decoder_sparse_step == 0
        )

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def linear_key_dim(self) -> int:
        return self.linear_num_key_heads * self.linear_key_head_dim

    @property
    def linear_value_dim(self) -> int:
        return self.linear_num_value_heads * self.linear_value_head_dim

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (layer_types is re-derived if num_hidden_layers changes)."""
        if "num_hidden_layers" in changes and "layer_types" not in changes:
            changes["layer_types"] = []
        return dataclasses.replace(self, **changes)

    # --- presets -----------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ModelConfig:
        """`toy` (CPU, a few M params), `small` (one GPU, a few hundred M), `full` (Qwen3-Coder-Next)."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        kwargs = dict(PRESETS[name])
        kwargs.update(overrides)
        return cls(**kwargs)

    # --- HF config.json ----------------------------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        """The HF `config.json` dict (model_type "qwen3_next", HF field names).

        RoPE goes both into `rope_parameters` (transformers >= 5) and as top-level `rope_theta` /
        `partial_rotary_factor` (the released checkpoints and transformers 4.x read those).
        """
        d: dict[str, Any] = {
            "architectures": ["Qwen3NextForCausalLM"],
            "model_type": "qwen3_next",
            "hidden_act": "silu",
            "attention_dropout": 0.0,
            "use_cache": True,
        }
        for f in dataclasses.fields(self):
            if f.name in ("full_attention_interval",):
                continue
            d[f.name] = getattr(self, f.name)
        d["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": self.rope_theta,
            "partial_rotary_factor": self.partial_rotary_factor,
        }
        d["mtp_num_hidden_layers"] = self.num_nextn_predict_layers
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Read an HF Qwen3-Next `config.json` dict (released checkpoints or transformers' own).

        Unknown keys are ignored. A `rope_parameters` / `rope_scaling` with a non-default rope type
        (e.g. YaRN) is refused rather than silently dropped. The MTP depth comes from
        `num_nextn_predict_layers` or `mtp_num_hidden_layers`; when neither is there (transformers'
        own configs, and the released Qwen3-Next ones) it is 0 here, and
        `minicoder.model.hf.load_pretrained` infers it from the checkpoint's `mtp.*` tensors.
        """
        if d.get("model_type", "qwen3_next") != "qwen3_next":
            raise ConfigError(f"config.json model_type is {d.get('model_type')!r}; expected 'qwen3_next'")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names}
        rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", None):
            raise ConfigError(f"config.json rope_parameters.rope_type = {rope_type!r}; only 'default' RoPE "
                              "is supported")
        if "rope_theta" in rope:
            kwargs["rope_theta"] = rope["rope_theta"]
        if "partial_rotary_factor" in rope:
            kwargs["partial_rotary_factor"] = rope["partial_rotary_factor"]
        if not d.get("layer_types"):
            kwargs["layer_types"] = default_layer_types(
                d.get("num_hidden_layers", cls.num_hidden_layers), d.get("full_attention_interval", 4)
            )
        depth = mtp_depth_in(d)
        kwargs["num_nextn_predict_layers"] = 0 if depth is None else depth
        return cls(**kwargs)

    def to_json(self, path: str | Path) -> None:
        """Write the HF-format config.json."""
        Path(path).write_text(json.dumps(self.to_hf_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> ModelConfig:
        """Read an HF-format config.json (see from_hf_dict)."""
        try:
            d = json.loads(Path(path).read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from e
        return cls.from_hf_dict(d)


def mtp_depth_in(d: dict[str, Any]) -> int | None:
    """The MTP depth an HF config dict declares, or None when it says nothing."""
    depth = d.get("num_nextn_predict_layers", d.get("mtp_num_hidden_layers"))
    return None if depth is None else int(depth)


PRESETS: dict[str, dict[str, Any]] = {
    # CPU, a few million parameters: every notebook and all of CI.
    "toy": dict(
        vocab_size=8192, hidden_size=128, num_hidden_layers=4, layer_types=[],
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, rope_theta=10_000.0,
        max_position_embeddings=4096,
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=32, linear_value_head_dim=32,
        num_experts=16, num_experts_per_tok=2, moe_intermediate_size=64, shared_expert_intermediate_size=128,
        intermediate_size=256, num_nextn_predict_layers=1, router_aux_loss_coef=0.01,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    ),
    # One GPU, a few hundred million parameters (about 0.4B total, 0.1B active).
    "small": dict(
        vocab_size=32768, hidden_size=768, num_hidden_layers=12, layer_types=[],
        num_attention_heads=8, num_key_value_heads=2, head_dim=128, rope_theta=1_000_000.0,
        max_position_embeddings=32768,
        linear_num_key_heads=4, linear_num_value_heads=8, linear_key_head_dim=128, linear_value_head_dim=128,
        num_experts=64, num_experts_per_tok=4, moe_intermediate_size=256, shared_expert_intermediate_size=512,
        intermediate_size=2048, num_nextn_predict_layers=1, router_aux_loss_coef=0.001,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    ),
    # Qwen3-Coder-Next (80B-A3B): 48 layers = 12 x (3 x (Gated DeltaNet -> MoE) -> 1 x (Gated Attention -> MoE)).
    "full": dict(),
}


# --- `--set key=value` overrides (every command that takes a model config) -------------------------

LAYER_TYPE_ALIASES = {"linear": "linear_attention", "deltanet": "linear_attention", "full": "full_attention",
                      "attention": "full_attention"}


def _parse_scalar(kind: str, name: str, text: str) -> Any:
    t = text.strip()
    if t.lower() in ("none", "null") and "None" in kind:
        return None
    try:
        if kind.startswith("bool"):
            if t.lower() in ("1", "true", "yes", "on"):
                return True
            if t.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind.startswith("int"):
            return int(t)
        if kind.startswith("float"):
            return float(t)
    except ValueError:
        raise ConfigError(f"ModelConfig.{name}: {text!r} is not a valid {kind.split(' ')[0]}") from None
    return t


def parse_override(item: str) -> tuple[str, Any]:
    """`"key=value"` -> (field name, typed value), typed by the field's annotation.

    Lists are comma-separated (`layer_types=linear,linear,linear,full`; `linear` / `full` stand for
    `linear_attention` / `full_attention`; `mlp_only_layers=` is an empty list). An unknown key or a
    value of the wrong type raises ConfigError naming the field (with the closest field names).
    """
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set num_experts=32")
    key, _, text = item.partition("=")
    key = key.strip().replace("-", "_")
    kinds = {f.name: str(f.type) for f in dataclasses.fields(ModelConfig)}
    if key not in kinds:
        import difflib

        near = difflib.get_close_matches(key, list(kinds), n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else "; see `ModelConfig` in minicoder/config.py"
        raise ConfigError(f"--set {key}: ModelConfig has no field {key!r}{hint}")
    kind = kinds[key]
    if kind.startswith("list["):
        parts = [p for p in text.split(",") if p.strip()]
        inner = kind[5:-1]
        vals = [_parse_scalar(inner, key, p) for p in parts]
        if key == "layer_types":
            vals = [LAYER_TYPE_ALIASES.get(v, v) for v in vals]
        return key, vals
    if kind.startswith("int | list[int]"):  # eos_token_id: one id or a list of ids
        parts = [p for p in text.split(",") if p.strip()]
        if len(parts) > 1:
            return key, [_parse_scalar("int", key, p) for p in parts]
    return key, _parse_scalar(kind, key, text)


def parse_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    """Many `key=value` strings -> {field: value} (a later one for the same key wins)."""
    return dict(parse_override(i) for i in (items or ()))


def apply_overrides(cfg: ModelConfig, items: Sequence[str] | dict[str, Any] | None) -> ModelConfig:
    """`cfg` with `--set` overrides applied and validated (ConfigError names the offending field).

    Changing `num_hidden_layers` without `layer_types` re-derives the hybrid layout.
    """
    changes = dict(items) if isinstance(items, dict) else parse_overrides(items)
    return cfg.replace(**changes) if changes else cfg


def add_set_argument(parser) -> None:
    """The shared `--set key=value` option of every command that builds a model config."""
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a ModelConfig field, repeatable (e.g. --set num_experts=32 "
                             "--set layer_types=linear,linear,linear,full)")
