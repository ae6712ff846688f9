# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · The hybrid model: the whole Qwen3-Next stack, trained, sampled, measured and saved
#
# Notebooks 02-04 built the three parts: Gated DeltaNet (linear attention with a fixed-size state), gated
# softmax attention, and the mixture of experts. Qwen3-Coder-Next stacks them as
#
# $$48 \text{ layers} = 12 \times \big(3\times(\text{Gated DeltaNet} \to \text{MoE}) \;\to\; 1\times(\text{Gated Attention} \to \text{MoE})\big),$$
#
# each sub-block pre-normed and residual, then a final norm, the LM head, and a multi-token-prediction
# (MTP) head. This notebook takes the stack as a whole:
#
# 1. the 3:1 layout (`layer_types`) of the toy and the full config;
# 2. the toy model's parameters, by component, total and **active** per token;
# 3. a forward pass on packed real code, and a short training run with the loss going down;
# 4. generation with the **mixed cache**: KV for attention layers, a constant-size state for DeltaNet layers;
# 5. the full 80B config's accounting on the meta device: parameters, FLOPs per token, cache memory at
#    32k and 262k tokens, hybrid vs all-attention;
# 6. saving and loading a checkpoint in the Hugging Face format, into minicoder and into transformers.

# %%
import minicoder.viz.notebook  # noqa: F401  (figures that also render in static HTML: make site)
import os, math, platform, tempfile, time
from pathlib import Path
import numpy as np
import torch
import plotly
import plotly.graph_objects as go
import transformers
import minicoder
from minicoder.config import ModelConfig, default_layer_types
from minicoder.model import HybridCache, generate, load_pretrained, save_pretrained
from minicoder.model.accounting import count_parameters, flops_per_token
from minicoder.model.cache import cache_bytes_per_token
from minicoder.data.corpus import iter_corpus
from minicoder.data.tokenizer import train_tokenizer
from minicoder.train import Trainer, TrainConfig, build_model, corpus_dataset, target_entropy
from minicoder.viz.model_plots import curves, layer_strip, stacked_bars

CI = os.environ.get("MINICODER_CI") == "1"   # the test suite sets this: the training run is shorter
torch.set_num_threads(1)   # tiny tensors: one thread avoids thread start-up cost and a busy CPU's noise
torch.manual_seed(0)
print(f"python {platform.python_version()}  torch {torch.__version__}  transformers {transformers.__version__}  "
      f"plotly {plotly.__version__}  minicoder {minicoder.__version__}")

# %% [markdown]
# ## 1. The layout: `layer_types`
#
# `ModelConfig.layer_types` lists each layer's token mixer: `"linear_attention"` (Gated DeltaNet) or
# `"full_attention"` (gated softmax attention). Left empty it is filled with the released pattern, every
# 4th layer full attention. The same field is in Hugging Face's `config.json`, so a released checkpoint's
# layout reads straight in. Every layer's FFN is an MoE here (`decoder_sparse_step = 1`, no `mlp_only_layers`).

# %%
full = ModelConfig.from_preset("full")
toy = ModelConfig.from_preset("toy")
for name, c in (("full", full), ("toy", toy)):
    assert c.layer_types == default_layer_types(c.num_hidden_layers, 4)
    n_attn = c.layer_types.count("full_attention")
    print(f"{name:4}: {c.num_hidden_layers} layers = {c.num_hidden_layers - n_attn} Gated DeltaNet + {n_attn} gated attention; "
          f"MoE in {sum(c.is_moe_layer(i) for i in range(c.num_hidden_layers))} layers; "
          f"{c.num_experts} experts, top-{c.num_experts_per_tok} + 1 shared")
layer_strip(full.layer_types, "Qwen3-Coder-Next (full preset): 12 x (3 DeltaNet + 1 attention)",
            moe=[full.is_moe_layer(i) for i in range(full.num_hidden_layers)]).show()

# %% [markdown]
# ### Exercise `05.layer_layout`
#
# The hybrid stack's layout as Qwen3-Next (and HF) define it: in every group of `interval` layers
# the last one is gated attention (`"full_attention"`), the others Gated DeltaNet
# (`"linear_attention"`). Write it; the checker compares with `ModelConfig`'s default layout.

# %%
from minicoder.course import check


def layer_types(num_layers, interval):
    # BEGIN SOLUTION
    return ["full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(num_layers)]
    # END SOLUTION


check("05.layer_layout", layer_types);


# %% [markdown]
# ## 2. The toy model and its parameters
#
# The toy preset keeps every structural choice of the full model (head layout, GQA, partial RoPE,
# DeltaNet heads with more value than key heads, 16 experts top-2 + a shared expert, MTP) at a width of
# 128. We give it the vocabulary of a small BPE trained on the standard library (2048 tokens), so the
# embeddings don't dominate.
#
# Counting parameters by component from the module names (the names are Hugging Face's), and the
# **active** parameters: everything except the routed experts counts fully, the routed experts count
# $k/E$ (a token passes through $k$ of $E$). Both are checked against `minicoder.model.accounting`, which
# counts on the meta device:

# %%
t0 = time.perf_counter()
tok = train_tokenizer([d.text for d in iter_corpus("stdlib", max_files=120, seed=0)], vocab_size=2048)
model, cfg = build_model("toy", vocab_size=tok.vocab_size, seed=0)
print(f"tokenizer ({tok.vocab_size} tokens) + model in {time.perf_counter() - t0:.1f}s")

def component(name):
    if name.startswith("mtp."):
        return "MTP head"
    for key, label in (("embed_tokens", "embedding"), ("lm_head", "lm_head"), (".mlp.experts.", "routed experts"),
                       (".mlp.shared_expert", "shared expert + its gate"), (".mlp.gate.", "routers"),
                       (".linear_attn.", "Gated DeltaNet"), (".self_attn.", "gated attention")):
        if key in name:
            return label
    assert "norm" in name, name
    return "norms"

parts = {}
for name, p in model.named_parameters():
    parts[component(name)] = parts.get(component(name), 0) + p.numel()
pc = count_parameters(cfg)
assert sum(parts.values()) == model.num_parameters() == pc.total
routed = parts["routed experts"]
active = pc.total_without_mtp - routed + routed * cfg.num_experts_per_tok // cfg.num_experts
assert active == pc.active and parts["MTP head"] == pc.mtp
for k_, v_ in sorted(parts.items(), key=lambda kv: -kv[1]):
    print(f"  {k_:26} {v_:>10,}  {v_ / pc.total:6.1%}")
print(f"total {pc.total:,} (without MTP {pc.total_without_mtp:,}); active per token {pc.active:,} "
      f"({pc.active / pc.total_without_mtp:.0%} of the main model)")
fig = go.Figure(go.Bar(x=list(parts), y=list(parts.values()), marker_color="#4C78A8"))
fig.update_layout(title="toy model: parameters by component", yaxis_title="parameters", width=800, height=380)
fig.show()

# %% [markdown]
# ## 3. A forward pass on packed code, then a short training run
#
# The data stage packs tokenized files into rows of 256 tokens with Best-Fit Packing; a batch arrives
# as `input_ids [B, L]` plus `cu_seqlens` over the flattened rows, per-document `position_ids`, and
# pre-shifted labels. The model attends block-diagonally, resets DeltaNet's state and convolution at
# every document boundary, and never predicts across one. At initialisation the next-token loss should
# be about $\ln V$ (a uniform guess over the vocabulary); the balancing loss about $k$; and the MTP loss
# (predicting token $t+2$) about $\ln V$ as well:

# %%
ds = corpus_dataset(tok, seq_len=256, max_files=40, skip_files=20)        # files 20..59; 0..19 held out below
b = ds.batch(np.arange(4)).to_torch()
print(f"{len(ds)} packed rows; this batch: input_ids {tuple(b['input_ids'].shape)}, "
      f"{len(b['cu_seqlens']) - 1} segments (documents, pieces and padding tails)")
with torch.no_grad():
    out = model(b["input_ids"], position_ids=b["position_ids"], cu_seqlens=b["cu_seqlens"], targets=b["labels"])
coef, w_mtp = cfg.router_aux_loss_coef, cfg.mtp_loss_weight
mtp_aux = (out.loss - (out.ce_loss + coef * out.aux_loss + w_mtp * out.mtp_loss)).item() / coef
print(f"logits {tuple(out.logits.shape)}; CE {out.ce_loss:.3f} (ln V = {math.log(cfg.vocab_size):.3f}); "
      f"balancing {out.aux_loss:.3f} (k = {cfg.num_experts_per_tok}); MTP {out.mtp_loss:.3f}")
print(f"total loss {out.loss:.3f} = CE + {coef} x balancing + {w_mtp} x MTP + {coef} x the MTP layer's own balancing ({mtp_aux:.3f})")
assert abs(out.ce_loss.item() - math.log(cfg.vocab_size)) < 0.1
assert 0 < mtp_aux <= cfg.num_experts

# %% [markdown]
# Now a short run with `minicoder.train.Trainer` (AdamW, warmup + cosine, gradient clipping, the
# token-weighted loss over the global batch, global-batch MoE balancing). A yardstick: the **unigram
# entropy** of the training targets is the loss of the best model that ignores context; going below
# it means the model uses what came before.

# %%
STEPS = 40 if CI else 200
H_unigram = target_entropy(ds)
trainer = Trainer(model, ds, TrainConfig(steps=STEPS, rows=4, lr=3e-3, warmup_steps=5, seed=0, progress=False))
c0 = time.process_time()
recs = trainer.fit()
print(f"{STEPS} steps x 4 rows x 256 tokens in {time.process_time() - c0:.1f} CPU-s; "
      f"loss {recs[0]['loss']:.3f} -> {recs[-1]['loss']:.3f} (unigram entropy {H_unigram:.3f})")
first, last = np.mean([r["loss"] for r in recs[:5]]), np.mean([r["loss"] for r in recs[-5:]])
assert last < first - 1.0, (first, last)
fig = curves({"next-token CE": [r["loss"] for r in recs], "MTP CE (token t+2)": [r["mtp_loss"] for r in recs]},
             "toy hybrid model on packed stdlib code", yaxis="nats per token")
fig.add_hline(y=H_unigram, line_dash="dash", annotation_text="unigram entropy")
fig.show()

# %% [markdown]
# ## 4. Generation with the mixed cache
#
# Decoding one token at a time needs, per layer, what the layer remembers of the past:
#
# * an **attention** layer keeps the keys and values of every past token: $2\,H_{kv}\,D$ numbers per token,
#   growing with the context (`KVSlot`);
# * a **Gated DeltaNet** layer keeps its $d_k\times d_v$ state per value head plus the last 3 inputs of
#   its short convolution: a constant, whatever the context (`StateSlot`).
#
# `HybridCache` holds one slot per layer, of the right kind. `generate` pre-allocates it for prompt +
# new tokens and reports its bytes by layer kind. First, a greedy continuation of some Python:

# %%
prompt = "import os\n\n\ndef read_config(path):\n    "
prompt_ids = tok.encode(prompt)
gen = generate(model, [prompt_ids], max_new_tokens=48, temperature=0.0, stop_tokens=[tok.eos_id])
print(prompt + tok.decode(gen.tokens[0]))
print("---")
print("cache bytes by layer kind:", gen.cache_bytes)

# The cache is exact: feeding the same tokens one at a time through a cache gives the logits of one
# full forward pass over the whole sequence (chunked DeltaNet / causal SDPA) at every position.
seq = torch.tensor([prompt_ids + gen.tokens[0]])
P = len(prompt_ids)
with torch.no_grad():
    full_logits = model(seq).logits[0]
    cache = HybridCache(cfg, batch_size=1)
    step_logits = [model(seq[:, :P], cache=cache).logits[0, -1]]
    for t in range(P, seq.shape[1] - 1):
        step_logits.append(model(seq[:, t:t + 1], cache=cache).logits[0, -1])
cache_diff = (torch.stack(step_logits) - full_logits[P - 1:-1]).abs().max().item()
print(f"cached decoding vs one full forward: max |logit diff| {cache_diff:.1e} over {len(step_logits)} positions")
assert cache_diff < 1e-4

# ... and its size is what the shapes say (float32 model: 4 bytes per number)
n_attn, n_lin = cfg.layer_types.count("full_attention"), cfg.layer_types.count("linear_attention")
max_len = P + 48
kv = n_attn * 2 * cfg.num_key_value_heads * max_len * cfg.head_dim * 4
conv_channels = 2 * cfg.linear_key_dim + cfg.linear_value_dim
state = n_lin * ((cfg.linear_conv_kernel_dim - 1) * conv_channels
                 + cfg.linear_num_value_heads * cfg.linear_key_head_dim * cfg.linear_value_head_dim) * 4
assert gen.cache_bytes == {"full_attention": kv, "linear_attention": state, "total": kv + state}

# %% [markdown]
# How the two kinds grow with the context: prefill real code of increasing length into a cache sized for
# it, and read `memory_bytes()`. The attention layer's KV grows linearly; the three DeltaNet layers' state
# does not move. For comparison, the same model with all four layers attention
# (`cache_bytes_per_token`, the analytic formula, checked here against the measured bytes):

# %%
held_out = np.concatenate([tok.encode(d.text) for d in iter_corpus("stdlib", max_files=20, seed=0)])
lengths = [128, 256, 512, 1024, 2048]
measured, all_attention = {}, {}
per_tok_hybrid = cache_bytes_per_token(cfg, dtype_bytes=4)
per_tok_attn = cache_bytes_per_token(cfg.replace(layer_types=["full_attention"] * cfg.num_hidden_layers), dtype_bytes=4)
for L in lengths:
    cache = HybridCache(cfg, batch_size=1, max_len=L)
    with torch.no_grad():
        model(torch.from_numpy(held_out[:L])[None], cache=cache, logits_to_keep=1)
    m = cache.memory_bytes()
    assert m["full_attention"] == per_tok_hybrid["kv_bytes_per_token"] * L
    assert m["linear_attention"] == per_tok_hybrid["deltanet_state_bytes"]
    measured[f"{L}"] = {"full_attention": m["full_attention"] / 2**20, "linear_attention": m["linear_attention"] / 2**20}
    all_attention[L] = per_tok_attn["kv_bytes_per_token"] * L / 2**20
fig = stacked_bars(measured, "toy model cache after prefilling L tokens (measured), MiB", yaxis="MiB")
fig.add_trace(go.Scatter(x=[f"{L}" for L in lengths], y=list(all_attention.values()), mode="lines+markers",
                         name="all-attention model (analytic)", line=dict(color="black", dash="dash")))
fig.update_xaxes(title="context length L (tokens)")
fig.show()
for L in lengths:
    hyb = sum(measured[f"{L}"].values())
    print(f"L={L:5}: hybrid {hyb:6.2f} MiB (KV {measured[f'{L}']['full_attention']:.2f} + state "
          f"{measured[f'{L}']['linear_attention']:.2f})   all-attention {all_attention[L]:6.2f} MiB")

# %% [markdown]
# At toy size the DeltaNet state (3 layers x 4 heads x 32 x 32 floats) is still comparable to a short
# KV cache. At full size and long context the picture is very different, as the next section shows.
#
# ## 5. The full config's accounting, on the meta device
#
# `minicoder.model.accounting` builds `HybridLM(full)` on PyTorch's **meta device**: every parameter has
# a shape but no memory, so the 80B model is "built" in about a second on a laptop and its parameters are
# counted exactly (tests check the count against transformers' `Qwen3NextForCausalLM`, also on meta).
# FLOPs per token count 2 per multiply-add of every active weight plus the sequence-mixing terms:
# attention's $QK^\top$ and $AV$ grow with the context, DeltaNet's state update does not. The counterfactual
# is the same model with all 48 layers attention. Cache: bf16, batch 1.

# %%
t0 = time.perf_counter()
pc_full = count_parameters(full)
assert round(pc_full.total_without_mtp / 1e9, 2) == 79.67 and round(pc_full.active / 1e9, 2) == 3.87   # published counts
full_attn = full.replace(layer_types=["full_attention"] * full.num_hidden_layers)
pc_attn = count_parameters(full_attn)
B = lambda n: f"{n / 1e9:.2f}B"
rows = [
    ("parameters, total (no MTP)", B(pc_full.total_without_mtp), B(pc_attn.total_without_mtp)),
    ("parameters, MTP head", B(pc_full.mtp), B(pc_attn.mtp)),
    ("active per token (with embeddings + lm_head)", B(pc_full.active), B(pc_attn.active)),
    ("active per token (without; the '3B' of A3B)", B(pc_full.active_without_embeddings), B(pc_attn.active_without_embeddings)),
]
for L in (4096, 32768, 262144):
    fh, fa = flops_per_token(full, seq_len=L), flops_per_token(full_attn, seq_len=L)
    rows.append((f"forward GFLOPs per token, sequence of {L:,}", f"{fh['total'] / 1e9:.1f}", f"{fa['total'] / 1e9:.1f}"))
for L in (32768, 262144):
    ch, ca = cache_bytes_per_token(full), cache_bytes_per_token(full_attn)
    hyb = ch["kv_bytes_per_token"] * L + ch["deltanet_state_bytes"]
    att = ca["kv_bytes_per_token"] * L + ca["deltanet_state_bytes"]
    rows.append((f"inference cache at {L:,} tokens (bf16, batch 1)", f"{hyb / 2**30:.2f} GiB", f"{att / 2**30:.2f} GiB"))
print(f"accounting on the meta device in {time.perf_counter() - t0:.1f}s; the hybrid's DeltaNet state "
      f"({full.layer_types.count('linear_attention')} layers) is {cache_bytes_per_token(full)['deltanet_state_bytes'] / 2**20:.1f} MiB "
      f"at any context length")
w = max(len(r[0]) for r in rows)
print(f"{'':{w}}  {'hybrid (3:1)':>14}  {'all-attention':>14}")
for r in rows:
    print(f"{r[0]:{w}}  {r[1]:>14}  {r[2]:>14}")
fig = go.Figure(go.Table(header=dict(values=["Qwen3-Coder-Next config", "hybrid 3:1 (released)", "all 48 layers attention"]),
                         cells=dict(values=[list(c) for c in zip(*rows)], align=["left", "right", "right"])))
fig.update_layout(width=900, height=420, margin=dict(l=10, r=10, t=10, b=10))
fig.show()

# %% [markdown]
# Read the table from the bottom. At 262k tokens an all-attention model would need almost 4x the cache
# (48 instead of 12 layers of KV) and over 3x the forward FLOPs per token (attention's cost grows with
# the context, the matmuls don't); the hybrid pays for that with a fixed DeltaNet state (printed above,
# well under 0.1 GiB). At 4k tokens the two cost about the same.
# And the parameter lines: of 80B parameters a token touches under 4B, because 77B of them are routed
# experts of which it uses 10 of 512 per layer.
#
# ## 6. Saving and loading: the Hugging Face checkpoint format
#
# `save_pretrained` writes `config.json` (HF field names, `model_type: qwen3_next`) and safetensors,
# with the routed experts split per expert as in the released checkpoints
# (`...mlp.experts.{j}.gate_proj.weight`), sharded above `max_shard_size`. `load_pretrained` builds the
# model on the meta device and assigns each tensor as it is read, strictly: a missing, unexpected or
# mis-shaped tensor is an error naming it. Save the trained toy model, load it back, and compare logits:

# %%
tmp = tempfile.TemporaryDirectory()
ckpt = Path(tmp.name) / "toy-hybrid"
files = save_pretrained(model, ckpt, max_shard_size="5MB")
for f in files:
    print(f"  {f.name:40} {f.stat().st_size / 1e6:7.2f} MB")
back = load_pretrained(ckpt)
ids = torch.from_numpy(held_out[:200])[None]
model.eval()
with torch.no_grad():
    want = model(ids).logits
    got = back(ids).logits
assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))
assert torch.equal(want, got)
print("minicoder -> disk -> minicoder: every tensor and the logits are bit-identical")

# %% [markdown]
# The same folder loads into Hugging Face transformers' own `Qwen3NextForCausalLM` (which ignores the
# `mtp.*` tensors). One detail: with flash-linear-attention installed, transformers routes the gated delta
# rule and the short convolution to fla's Triton kernels, which need a GPU; on CPU we point those module
# functions back at transformers' own PyTorch versions (the undecorated originals), as the parity tests do.

# %%
import transformers.models.qwen3_next.modeling_qwen3_next as hf_qwen3_next
from transformers import Qwen3NextForCausalLM
if not torch.cuda.is_available():
    for name in ("torch_chunk_gated_delta_rule", "torch_recurrent_gated_delta_rule", "causal_conv1d_fn", "causal_conv1d_update"):
        fn = getattr(hf_qwen3_next, name)
        setattr(hf_qwen3_next, name, getattr(fn, "__wrapped__", fn))
transformers.logging.set_verbosity_error()          # it would list the mtp.* tensors it ignores
hf = Qwen3NextForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
with torch.no_grad():
    hf_logits = hf(ids).logits
diff = (hf_logits - want).abs().max().item()
print(f"transformers {transformers.__version__} Qwen3NextForCausalLM vs minicoder: max |logit diff| {diff:.2e} "
      f"(logits range {want.min():.1f} .. {want.max():.1f})")
assert diff <= 1e-4
tmp.cleanup()

# %% [markdown]
# ## Summary
#
# * The 3:1 layout is one list in the config; the toy model has every structural piece of the full one.
# * Parameter counts by component and the active count ($k/E$ of the routed experts) match the
#   meta-device accounting; the full config gives the published 79.67B total / 3.87B active.
# * A packed forward starts at $\ln V$, and a short training run on real code brings the loss down toward
#   and below the unigram entropy.
# * The mixed cache is exact (cached decoding = full forward) and its size is what the shapes say: KV grows
#   with the context in 1 layer of 4, the DeltaNet state is constant; at 262k tokens that is 4x less cache
#   than all-attention.
# * Checkpoints are Hugging Face's format: they round-trip bit-exactly and load into transformers with
#   the same logits.
