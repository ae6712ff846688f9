"""Generation with the mixed cache: greedy tokens equal transformers' generate, a left-padded batch
equals each prompt alone, sampling filters give known answers, stop tokens end rows."""

from __future__ import annotations

import pytest
import torch

from minicoder.config import ModelConfig
from minicoder.model import HybridLM
from minicoder.model.generate import filter_logits, generate, left_pad, sample_next

try:  # transformers' Qwen3-Next is the oracle of the parity test only
    from transformers.models.qwen3_next import modeling_qwen3_next as hf_mod

    HF_MISSING = ""
except ImportError as e:
    hf_mod, HF_MISSING = None, f"transformers' qwen3_next cannot be imported ({e})"


@pytest.fixture
def torch_path_in_transformers(monkeypatch):
    """transformers' PyTorch reference paths (the decorators may swap in fla's kernels)."""
    for name in ("torch_chunk_gated_delta_rule", "torch_recurrent_gated_delta_rule", "causal_conv1d_fn",
                 "causal_conv1d_update"):
        fn = getattr(hf_mod, name)
        monkeypatch.setattr(hf_mod, name, getattr(fn, "__wrapped__", fn))


def cfg_(**kw) -> ModelConfig:
    base = dict(
        vocab_size=50, hidden_size=32, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, rope_theta=10_000.0, max_position_embeddings=256, linear_num_key_heads=2,
        linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8, num_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16,
        num_nextn_predict_layers=0, bos_token_id=None, eos_token_id=None, kernel="torch",
    )
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture(scope="module")
def model() -> HybridLM:
    torch.manual_seed(0)
    m = HybridLM(cfg_()).eval()
    with torch.no_grad():  # sharpen the distribution so greedy paths are not near-ties
        m.lm_head.weight.mul_(40)
        for p in m.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn_like(p))
    return m


@pytest.mark.skipif(hf_mod is None, reason=HF_MISSING)
def test_greedy_matches_transformers_generate(model, tmp_path, torch_path_in_transformers):
    from minicoder.model.hf import save_pretrained

    save_pretrained(model, tmp_path)
    ref = hf_mod.Qwen3NextForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    prompt = torch.tensor([[3, 17, 4, 9, 22, 1, 8]])
    want = ref.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None)
    got = generate(model, prompt, max_new_tokens=12)
    assert got.tokens[0] == want[0, 7:].tolist()
    assert len(set(got.tokens[0])) > 1  # not a degenerate repeat of one token
    assert got.finish_reasons == ["length"]


@pytest.mark.slow
def test_padded_batch_equals_each_prompt_alone(model):
    prompts = [[5, 6, 7, 8, 9, 10, 11, 12], [40], [1, 2, 3]]
    batch = generate(model, prompts, max_new_tokens=9)
    for i, p in enumerate(prompts):
        alone = generate(model, [p], max_new_tokens=9)
        assert batch.tokens[i] == alone.tokens[0], i
    assert batch.prompt_lengths == [8, 1, 3]
    assert batch.sequences.shape == (3, 8 + 9)
    mem = batch.cache_bytes
    assert mem["full_attention"] > 0 and mem["linear_attention"] > 0


@pytest.mark.slow
def test_stop_tokens_end_rows(model):
    free = generate(model, [[5, 6, 7], [1, 2]], max_new_tokens=10)
    stop = free.tokens[0][3]  # the 4th token row 0 produces
    out = generate(model, [[5, 6, 7], [1, 2]], max_new_tokens=10, stop_tokens=[stop])
    first = free.tokens[0].index(stop)
    assert out.tokens[0] == free.tokens[0][: first + 1]
    assert out.finish_reasons[0] == "stop"
    if stop in free.tokens[1]:
        assert out.tokens[1] == free.tokens[1][: free.tokens[1].index(stop) + 1]
    else:
        assert out.tokens[1] == free.tokens[1] and out.finish_reasons[1] == "length"


@pytest.mark.slow
def test_sampling_is_reproducible_and_top_k_1_is_greedy(model):
    kw = dict(max_new_tokens=8, temperature=1.3, top_p=0.9)
    a = generate(model, [[4, 5, 6]], generator=torch.Generator().manual_seed(1), **kw)
    b = generate(model, [[4, 5, 6]], generator=torch.Generator().manual_seed(1), **kw)
    assert a.tokens == b.tokens
    greedy = generate(model, [[4, 5, 6]], max_new_tokens=8)
    top1 = generate(model, [[4, 5, 6]], max_new_tokens=8, temperature=2.0, top_k=1,
                    generator=torch.Generator().manual_seed(2))
    assert top1.tokens == greedy.tokens


def test_top_p_sampling_never_leaves_the_nucleus():
    """Sampled tokens, checked against the model's own next-token distribution (one full forward over
    the finished sequences, float64): each lies in the top-p nucleus, the smallest set of the most
    likely tokens whose mass reaches p. The distribution is flat enough that about half the mass lies
    outside the nucleus at each step, so sampling that ignored top-p would leave it many times."""
    torch.manual_seed(3)
    flat = HybridLM(cfg_()).eval()  # not sharpened: many tokens share the mass
    top_p, temperature = 0.5, 1.0
    prompts = [[3, 17, 4, 9, 22], [1, 2, 3, 4, 5], [40, 30, 20, 10, 0]]
    out = generate(flat, prompts, max_new_tokens=16, temperature=temperature, top_p=top_p,
                   generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = flat(out.sequences).logits.double()  # [B, 5 + 16, V]; position t predicts token t + 1
    outside_mass, n_steps = 0.0, 0
    for b, row in enumerate(out.tokens):
        for j, tok in enumerate(row):
            probs = torch.softmax(logits[b, 5 + j - 1] / temperature, -1)
            before = (probs * (probs > probs[tok])).sum().item()  # mass of strictly more likely tokens
            assert before < top_p + 1e-4, (b, j, tok, before)  # tok is inside the nucleus
            order = probs.sort(descending=True).values
            outside_mass += order[(order.cumsum(0) - order) >= top_p].sum().item()
            n_steps += 1
    assert n_steps == 3 * 16 and outside_mass > 0.3 * n_steps  # without the filter: ~20 draws outside


def test_filters_known_answers():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    keep = lambda x: torch.isfinite(x)[0].tolist()
    assert keep(filter_logits(logits, top_k=2)) == [True, True, False, False, False]
    # nucleus 0.6: 0.5 alone is not enough, 0.5 + 0.2 reaches it
    assert keep(filter_logits(logits, top_p=0.6)) == [True, True, False, False, False]
    assert keep(filter_logits(logits, top_p=0.5)) == [True, False, False, False, False]
    assert keep(filter_logits(logits, top_p=0.86)) == [True, True, True, True, False]
    assert keep(filter_logits(logits, top_p=0.01)) == [True, False, False, False, False]
    # shuffled vocabulary order: the same tokens survive
    perm = torch.tensor([3, 0, 4, 2, 1])
    assert keep(filter_logits(logits[:, perm], top_p=0.6)) == [False, True, False, False, True]
    # sampling frequencies follow the filtered distribution
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, 1.0, top_k=2, generator=g) for _ in range(2000)])
    frac0 = (draws == 0).float().mean().item()
    assert abs(frac0 - 0.5 / 0.7) < 0.04 and set(draws.unique().tolist()) == {0, 1}


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[1, 2], []], 0)
    with pytest.raises(ValueError, match="top_p"):
        sample_next(torch.zeros(1, 4), 1.0, top_p=0.0)
    m = HybridLM(cfg_())
    with pytest.raises(ValueError, match="left padding"):
        generate(m, torch.tensor([[1, 2, 3]]), attention_mask=torch.tensor([[1, 1, 0]]))
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(m, [[1]], max_new_tokens=0)
