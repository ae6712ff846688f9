"""The hybrid Gated DeltaNet / gated attention / MoE decoder (Qwen3-Next layout).

    from minicoder.config import ModelConfig
    from minicoder.model import HybridLM, HybridCache, generate, load_pretrained, save_pretrained

    model = HybridLM(ModelConfig.from_preset("toy"))
    out = model(input_ids, labels=input_ids)          # out.logits, out.loss, out.aux_loss, out.mtp_loss
    out = model(ids_1xT, cu_seqlens=cu)               # packed documents
    gen = generate(model, [[1, 2, 3], [4, 5]], max_new_tokens=20)

Files: norm.py, rope.py, attention.py, deltanet.py, moe.py, cache.py, model.py, generate.py, hf.py,
accounting.py (parameter / FLOP / memory accounting on the meta device).
"""

from minicoder.model.cache import HybridCache
from minicoder.model.generate import GenerationOutput, generate
from minicoder.model.hf import CheckpointError, load_pretrained, save_pretrained
from minicoder.model.model import HybridLM, ModelOutput

__all__ = [
    "CheckpointError",
    "GenerationOutput",
    "HybridCache",
    "HybridLM",
    "ModelOutput",
    "generate",
    "load_pretrained",
    "save_pretrained",
]
