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
from minicoder.model.model import HybridLM, ModelOutput

__all__ = ["HybridCache", "HybridLM", "ModelOutput", "generate", "load_pretrained", "save_pretrained"]


def __getattr__(name: str):
    # generate / hf are imported lazily so `import minicoder.model` stays light
    if name == "generate":
        from minicoder.model.generate import generate

        return generate
    if name in ("load_pretrained", "save_pretrained"):
        from minicoder.model import hf

        return getattr(hf, name)
    raise AttributeError(name)
