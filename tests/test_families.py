"""The Llama family through the registry: Llama, Qwen2 (q/k/v bias, tied and untied embeddings), Qwen3
(per-head q/k RMSNorm), Mistral (sliding window), on tiny random configs (2 layers, hidden 48, 6 query heads
over 2 KV heads: GQA ratio 3, head_dim 16 so heads * head_dim != hidden).

Checked per family: patched logits and gradients equal the unpatched model's (fp32 vs the float64 model, the
rule of tests/helpers.py); the runtime's greedy tokens on a ragged batch equal HF `generate` greedy per
prompt; revert is bit-exact; settings the runtime cannot run raise a clear error naming the setting. Weights
are drawn with std 0.15 (HF's default 0.02 makes attention near-uniform and greedy tokens all equal). Easy
mistakes this catches: a missing bias in the fused q/k/v GEMM, q/k norm applied after RoPE or not at all, the
tied lm_head read from the wrong module, a sliding-window model silently run with full attention.
"""

import copy

import pytest
import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM)

from helpers import assert_matches
from litekernels.generation import LlamaRuntime, generate_ids
from litekernels.patches import apply_lite_llama, lite_llama_summary, revert_lite_llama

COMMON = dict(vocab_size=128, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=6, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
              pad_token_id=0, bos_token_id=1, eos_token_id=2)

FAMILIES = {
    "llama": (LlamaForCausalLM, LlamaConfig, {}),
    "qwen2-untied": (Qwen2ForCausalLM, Qwen2Config, dict(tie_word_embeddings=False)),
    "qwen2-tied": (Qwen2ForCausalLM, Qwen2Config, dict(tie_word_embeddings=True)),
    "qwen3": (Qwen3ForCausalLM, Qwen3Config, {}),
    "qwen3-bias": (Qwen3ForCausalLM, Qwen3Config, dict(attention_bias=True, tie_word_embeddings=True)),
    "mistral": (MistralForCausalLM, MistralConfig, dict(sliding_window=None)),
}
# rms_norm modules per model: 2 per layer + the final one, and Qwen3's q_norm/k_norm per layer
NORMS = {"llama": 5, "qwen2-untied": 5, "qwen2-tied": 5, "qwen3": 9, "qwen3-bias": 9, "mistral": 5}


def make(family, std=0.15, **kw):
    model_cls, config_cls, extra = FAMILIES[family]
    cfg = config_cls(**{**COMMON, **extra, **kw})
    model = model_cls(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # norm weights around 1, so they matter without blowing up activations
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0, std)
    model.generation_config.eos_token_id = None
    return model


def _batch(B=2, T=13, vocab=128):
    ids = torch.randint(3, vocab, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :4] = 0  # left padding
    return ids, mask


@pytest.mark.parametrize("family", FAMILIES)
def test_patched_logits_match_unpatched(family):
    model = make(family)
    ids, mask = _batch()
    with torch.no_grad():
        ref = copy.deepcopy(model).double()(ids, attention_mask=mask).logits
        apply_lite_llama(model)
        out = model(ids, attention_mask=mask).logits
    arch = FAMILIES[family][0].__name__[:-len("ForCausalLM")].lower()
    assert lite_llama_summary(model) == {"architecture": arch, "rms_norm": NORMS[family], "mlp": 2, "rope": 2,
                                         "attention": "lite_auto", "fused_linear_cross_entropy": True}
    assert_matches(out[0], ref[0], name=f"{family} logits row 0")
    assert_matches(out[1, 4:], ref[1, 4:], name=f"{family} logits row 1")  # padded positions are don't-care


# Backward: the patch replaces the same modules in every family; what differs is Qwen3's q/k norms (our
# RMSNorm kernel on (B, T, heads, head_dim) views) and Qwen2's biases. Llama's gradients:
# tests/test_patches.py.
@pytest.mark.parametrize("family", ["qwen2-untied", "qwen3-bias"])
def test_patched_grads_match_unpatched(family):
    model = make(family).train()
    exact = copy.deepcopy(model).double()
    ids, _ = _batch()
    ref_loss = exact(ids, labels=ids).loss
    ref_grads = torch.autograd.grad(ref_loss, list(exact.parameters()))
    apply_lite_llama(model)
    loss = model(ids, labels=ids).loss
    got = torch.autograd.grad(loss, list(model.parameters()))
    assert_matches(loss, ref_loss, name=f"{family} loss")
    for (name, _), a, e in zip(model.named_parameters(), got, ref_grads):
        # gradients are sums over B*T positions of O(1) terms: 1e-4 relative to their largest element
        assert_matches(a, e, name=f"{family} grad of {name}", rtol32=1e-4)


SLIDING = {"mistral": dict(sliding_window=5),  # every layer windowed; Qwen2: layer 1 only
           "qwen2-untied": dict(use_sliding_window=True, sliding_window=5, max_window_layers=1)}


@pytest.mark.parametrize("family", SLIDING)
def test_sliding_window_patched_matches_unpatched(family):
    """A window shorter than the keys goes to HF's eager code, our (bool) mask made additive: same logits."""
    model = make(family, **SLIDING[family])
    ids, mask = _batch()
    with torch.no_grad():
        exact = copy.deepcopy(model).double()(ids, attention_mask=mask).logits
        no_window = make(family).double()
        no_window.load_state_dict(model.state_dict())
        full = no_window(ids, attention_mask=mask).logits
        assert not torch.allclose(full[0], exact[0])  # the window matters
        apply_lite_llama(model)
        out = model(ids, attention_mask=mask).logits
    assert_matches(out[0], exact[0], name=f"{family} sliding logits row 0")
    assert_matches(out[1, 4:], exact[1, 4:], name=f"{family} sliding logits row 1")


def test_mistral_window_that_never_cuts_runs_our_attention(monkeypatch):
    """Mistral passes config.sliding_window (4096 by default) on every call; a window no shorter than the keys
    must still run our flash-attention, not HF's eager fallback."""
    import litekernels.patches.attention as lite_attention

    calls = []
    real = lite_attention.flash_attention_unchecked
    monkeypatch.setattr(lite_attention, "flash_attention_unchecked", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = make("mistral", sliding_window=13)  # == T: never cuts
    ids, mask = _batch()
    with torch.no_grad():
        exact = copy.deepcopy(model).double()(ids, attention_mask=mask).logits
        apply_lite_llama(model)
        out = model(ids, attention_mask=mask).logits
    assert len(calls) == 2  # one per layer
    assert_matches(out[0], exact[0], name="mistral window=T logits row 0")
    assert_matches(out[1, 4:], exact[1, 4:], name="mistral window=T logits row 1")


@pytest.mark.parametrize("family", FAMILIES)
def test_revert_is_bit_exact(family):
    model = make(family)
    ids, mask = _batch()
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        apply_lite_llama(model)
        revert_lite_llama(model)
        assert torch.equal(model(ids, attention_mask=mask).logits, ref)
    assert not any("forward" in m.__dict__ for m in model.modules())


PROMPTS = [[1, 17, 99, 5, 42, 8, 77], [1, 3], [1, 64, 12, 90, 33]]


def _hf_greedy(model, prompt, n):
    ids = torch.tensor([prompt], device=next(model.parameters()).device)
    out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


# The runtime's code path differs by bias / q-k norm / tied head, not by family name: these cases cover every
# branch (Llama: tests/test_generation.py; qwen2-tied and plain qwen3 only repeat them; each case costs ~15 s
# under TRITON_INTERPRET). The runtime reads weights, not forwards: patching must not change its tokens.
@pytest.mark.parametrize("family, patched",
                         [("qwen2-untied", False), ("mistral", False), ("qwen3-bias", True)])
def test_runtime_greedy_matches_hf_generate_on_ragged_batch(family, patched):
    model = make(family)
    refs = [_hf_greedy(model, p, 6) for p in PROMPTS]  # unpatched HF, one prompt at a time
    assert len({tuple(r) for r in refs}) > 1, "degenerate model: every prompt gives the same tokens"
    if patched:
        apply_lite_llama(model)
    out, _, _ = generate_ids(model, PROMPTS, 6, use_cuda_graph=False)
    assert out.tolist() == refs


def test_qwen3_runtime_applies_qk_norm():
    """Zeroing q_norm/k_norm weights changes the runtime's logits (they are read, not ignored)."""
    model = make("qwen3")
    rt = LlamaRuntime(model, max_batch=1, max_seq_len=16, use_cuda_graph=False)
    a = rt.prefill([PROMPTS[0]])
    with torch.no_grad():
        model.model.layers[0].self_attn.k_norm.weight.mul_(0.1)  # in place: the runtime sees it
    b = rt.prefill([PROMPTS[0]])
    assert not torch.allclose(a, b)


def _dynamic_rope(family):
    return make(family, rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})


def _with_setting(family, **attrs):
    model = make(family)
    for k, v in attrs.items():
        setattr(model.config, k, v)
    return model


class _LoraLikeLinear(torch.nn.Linear):
    def forward(self, x):  # adds something the runtime would ignore if it read .weight directly
        return super().forward(x) + 1.0


def _lora_like(family):
    model = make(family)
    attn = model.model.layers[1].self_attn
    wrapped = _LoraLikeLinear(attn.v_proj.in_features, attn.v_proj.out_features, bias=False)
    wrapped.weight = attn.v_proj.weight
    attn.v_proj = wrapped
    return model


@pytest.mark.parametrize("build, exc, words", [
    (lambda: make("mistral", sliding_window=16), ValueError, "sliding_window=16"),
    (lambda: make("qwen2-untied", use_sliding_window=True, sliding_window=16, max_window_layers=1),
     ValueError, "sliding_window=16"),
    (lambda: _dynamic_rope("llama"), ValueError, "rope_type='dynamic'"),
    (lambda: _dynamic_rope("qwen3"), ValueError, "rope_type='dynamic'"),
    (lambda: _with_setting("qwen2-tied", num_experts=4), ValueError, "num_experts=4"),
    (lambda: _with_setting("mistral", num_local_experts=8), ValueError, "num_local_experts=8"),
    (lambda: _with_setting("llama", hidden_act="gelu"), ValueError, "hidden_act='gelu'"),
    (lambda: _lora_like("qwen3"), TypeError, "self_attn.v_proj is a _LoraLikeLinear"),
], ids=["mistral-window", "qwen2-window", "llama-dynamic-rope", "qwen3-dynamic-rope", "moe", "moe-local",
        "gelu", "lora-like"])
def test_unsupported_configs_raise_when_the_runtime_is_built(build, exc, words):
    model = build()
    with pytest.raises(exc, match=words):
        LlamaRuntime(model, max_batch=1, max_seq_len=32, use_cuda_graph=False)


def test_sliding_window_at_least_the_cache_is_accepted():
    """A window no shorter than the cache never cuts: the runtime runs and matches HF (window included)."""
    model = make("mistral", sliding_window=32)
    rt = LlamaRuntime(model, max_batch=1, max_seq_len=32, use_cuda_graph=False)
    assert rt.prefill([PROMPTS[0]]).shape == (1, 128)


@pytest.mark.gpu
@pytest.mark.parametrize("family", ["qwen2-untied", "qwen3-bias", "mistral"])
def test_gpu_graph_decode_matches_eager_and_hf(family):
    """On CUDA (compiled kernels, decode replayed from a CUDA graph, Qwen3's q/k norms inside the graph),
    fp32: graph tokens == eager tokens == HF greedy per prompt."""
    model = make(family).cuda()
    refs = [_hf_greedy(model, p, 6) for p in PROMPTS]
    eager, _, _ = generate_ids(model, PROMPTS, 6, use_cuda_graph=False)
    graph, _, _ = generate_ids(model, PROMPTS, 6, use_cuda_graph=True)
    assert eager.tolist() == refs
    assert graph.tolist() == refs


def test_model_without_lm_head_is_refused():
    from transformers import Qwen3Model

    base = make("qwen3")
    with pytest.raises(TypeError, match="needs a ...ForCausalLM model; Qwen3Model has no model"):
        LlamaRuntime(Qwen3Model(base.config), max_batch=1, max_seq_len=16, use_cuda_graph=False)
