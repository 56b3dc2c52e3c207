"""apply_lite_llama / revert_lite_llama on tiny random Llama models.

Models live on the device the suite runs on (CUDA when present, so the GPU run checks the compiled kernels; the
CPU under TRITON_INTERPRET=1 checks the interpreted ones). A test that compares patched with unpatched numbers
skips on the reference path (CPU without the interpreter), where both sides run the same PyTorch code and the
comparison could not fail. Patch mechanics (revert, idempotence, refusal) are checked on any path."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from litekernels.patches import apply_lite_llama, lite_llama_summary, revert_lite_llama
from tests.conftest import requires_kernels
from tests.helpers import DEVICE


def tiny_config(**kw):
    # eps 1e-5 (not HF's default 1e-6): embeddings of std 0.02 give the first norm a mean square of 4e-4, so
    # an eps that is dropped or replaced changes its output by ~1%
    base = dict(vocab_size=256, hidden_size=128, intermediate_size=200, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, rms_norm_eps=1e-5)
    base.update(kw)
    return LlamaConfig(**base)


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


@pytest.fixture(params=["default-rope", "llama3-rope"])
def model(request):
    kw = {"rope_parameters": LLAMA3_ROPE} if request.param == "llama3-rope" else {}
    return LlamaForCausalLM(tiny_config(**kw)).to(DEVICE).eval()


def _batch(B=2, T=19, vocab=256):
    ids = torch.randint(1, vocab, (B, T), device=DEVICE)
    mask = torch.ones(B, T, dtype=torch.long, device=DEVICE)
    mask[1, :6] = 0  # left padding
    return ids, mask


@requires_kernels()
def test_patched_logits_match(model):
    ids, mask = _batch()
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        apply_lite_llama(model)
        out = model(ids, attention_mask=mask).logits
    summary = lite_llama_summary(model)
    assert summary == {"architecture": "llama", "rms_norm": 5, "mlp": 2, "rope": 2, "attention": "lite_auto",
                       "fused_linear_cross_entropy": True}
    torch.testing.assert_close(out[0], ref[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[1, 6:], ref[1, 6:], atol=1e-4, rtol=1e-4)  # padded positions are don't-care


@requires_kernels()
def test_training_loss_and_gradients_match(model):
    model.train()
    ids, _ = _batch()
    ref_loss = model(ids, labels=ids).loss
    ref_grads = torch.autograd.grad(ref_loss, list(model.parameters()))
    apply_lite_llama(model)
    loss = model(ids, labels=ids).loss
    got = torch.autograd.grad(loss, list(model.parameters()))
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    for (name, _), a, b in zip(model.named_parameters(), got, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"grad of {n}: {m}")


def test_revert_is_bit_exact_and_apply_is_idempotent():
    model = LlamaForCausalLM(tiny_config()).to(DEVICE).eval()
    ids, mask = _batch()
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        before = model.config._attn_implementation
        apply_lite_llama(model)
        state = model._lite_llama
        assert apply_lite_llama(model) is model and model._lite_llama is state  # second apply: no-op
        revert_lite_llama(model)
        assert torch.equal(model(ids, attention_mask=mask).logits, ref)
    assert model.config._attn_implementation == before
    assert lite_llama_summary(model) == {}
    assert not any("forward" in m.__dict__ for m in model.modules())
    from litekernels.patches import _rope_dispatchers
    d = _rope_dispatchers.get("llama")  # gone, or still there only for other patched models
    assert d is None or model not in d.users


def test_apply_with_other_options_replaces_previous_patch():
    model = LlamaForCausalLM(tiny_config()).to(DEVICE).eval()
    apply_lite_llama(model)
    apply_lite_llama(model, attention=False, swiglu=False)
    s = lite_llama_summary(model)
    assert s["mlp"] == 0 and "attention" not in s and s["rms_norm"] == 5


def test_only_the_given_instance_is_patched():
    a, b = LlamaForCausalLM(tiny_config()).to(DEVICE).eval(), LlamaForCausalLM(tiny_config()).to(DEVICE).eval()
    apply_lite_llama(a)
    assert lite_llama_summary(b) == {}
    assert b.config._attn_implementation not in ("lite", "lite_auto")
    assert "forward" not in b.model.norm.__dict__


def test_state_dict_keys_unchanged_and_round_trip(tmp_path):
    model = LlamaForCausalLM(tiny_config()).to(DEVICE).eval()
    keys = list(model.state_dict().keys())
    apply_lite_llama(model)
    assert list(model.state_dict().keys()) == keys
    model.save_pretrained(tmp_path)
    again = LlamaForCausalLM.from_pretrained(tmp_path).to(DEVICE).eval()
    ids, _ = _batch()
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits, atol=1e-4, rtol=1e-4)


def test_non_llama_model_is_refused_untouched():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    impl = gpt.config._attn_implementation
    with pytest.raises(TypeError, match="GPT2LMHeadModel.*LlamaPreTrainedModel"):
        apply_lite_llama(gpt)
    assert not hasattr(gpt, "_lite_llama") and gpt.config._attn_implementation == impl
    with pytest.raises(TypeError, match="str"):
        apply_lite_llama("not a model")


def test_class_patching_reaches_new_models_and_reverts():
    from transformers.models.llama import modeling_llama

    original_forward = modeling_llama.LlamaRMSNorm.forward
    ref_model = LlamaForCausalLM(tiny_config()).to(DEVICE).eval()
    ids, _ = _batch()
    with torch.no_grad():
        ref = ref_model(ids).logits
    try:
        apply_lite_llama()
        assert modeling_llama.LlamaRMSNorm.forward is not original_forward
        with torch.no_grad():
            torch.testing.assert_close(ref_model(ids).logits, ref, atol=1e-4, rtol=1e-4)
    finally:
        revert_lite_llama()
    assert modeling_llama.LlamaRMSNorm.forward is original_forward
    with torch.no_grad():
        assert torch.equal(ref_model(ids).logits, ref)


@requires_kernels()
@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_greedy_matches_with_left_padding(cache):
    """HF generate on a left-padded batch, patched vs unpatched: the same tokens and, at every step, the same
    logits (the decode steps go through flash-decoding with HF's padding mask). Weights of std 0.15 make the
    attention far from uniform, so a decode step that ignores the padding or attends the wrong keys shows."""
    model = LlamaForCausalLM(tiny_config(initializer_range=0.15)).to(DEVICE).eval()
    ids, mask = _batch(T=9)
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    if cache == "static":
        kw.update(cache_implementation="static", disable_compile=True)
    ref = model.generate(ids, attention_mask=mask, **kw)
    apply_lite_llama(model)
    out = model.generate(ids, attention_mask=mask, **kw)
    assert torch.equal(out.sequences, ref.sequences)
    for step, (a, b) in enumerate(zip(out.logits, ref.logits)):
        torch.testing.assert_close(a, b, atol=2e-4, rtol=2e-4, msg=lambda m, s=step: f"step {s}: {m}")


@requires_kernels()
def test_lite_attention_function_with_additive_and_bias_masks():
    """The "lite" attention function itself: an additive float mask of 0 / finfo.min (what eager-style mask
    builders give) is read as a bool mask; one with other values is a real bias and goes to HF's eager code."""
    import types

    from transformers.models.llama.modeling_llama import eager_attention_forward

    from litekernels import reference
    from litekernels.patches.attention import lite_attention_forward

    module = types.SimpleNamespace(is_causal=True, training=False, num_key_value_groups=2)
    B, H, HKV, T, D = 2, 4, 2, 11, 32
    q, k, v = torch.randn(B, H, T, D, device=DEVICE), torch.randn(B, HKV, T, D, device=DEVICE), torch.randn(B, HKV, T, D, device=DEVICE)
    allowed = torch.ones(B, 1, T, T, dtype=torch.bool, device=DEVICE).tril()
    allowed[1, ..., :3] = False  # left padding
    allowed[1, :, :3, 0] = True  # padded query rows keep one key (HF's rows are never empty either)
    additive = torch.zeros(B, 1, T, T, device=DEVICE).masked_fill(~allowed, torch.finfo(torch.float32).min)
    with torch.no_grad():
        out, _ = lite_attention_forward(module, q, k, v, additive, scaling=D ** -0.5)
        want = reference.attention(q, k, v, causal=True, attn_mask=allowed, scale=D ** -0.5).transpose(1, 2)
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
        out, _ = lite_attention_forward(module, q, k, v, allowed.to(torch.int64), scaling=D ** -0.5)  # nonzero = attend
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
        bias = additive + 0.5 * torch.randn(B, 1, T, T, device=DEVICE)
        out, _ = lite_attention_forward(module, q, k, v, bias, scaling=D ** -0.5)
        want, _ = eager_attention_forward(module, q, k, v, bias, scaling=D ** -0.5)
        torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)


@requires_kernels()
def test_lite_mask_key_row_on_the_kernel_and_the_eager_fallback():
    """lite_mask (the "lite" mask builder) hands prefill a padding row viewed with stride 0 over queries, meaning
    "causal AND these keys": the kernel path and HF's eager fallback (here forced by a softcap, which Llama's eager
    attention ignores) must both give what HF's own sdpa mask gives."""
    import types

    from transformers.masking_utils import causal_mask_function, sdpa_mask
    from transformers.models.llama.modeling_llama import eager_attention_forward

    from litekernels.patches.attention import lite_attention_forward, lite_mask

    B, H, HKV, T, D = 2, 4, 2, 11, 32
    pad = torch.ones(B, T, dtype=torch.bool, device=DEVICE)
    pad[1, :4] = False
    names = {"q_length", "cache_position"} & set(__import__("inspect").signature(sdpa_mask).parameters)
    qarg = {"q_length": T} if "q_length" in names else {"cache_position": torch.arange(T, device=DEVICE)}
    kw = dict(batch_size=B, kv_length=T, kv_offset=0, mask_function=causal_mask_function, attention_mask=pad,
              allow_is_causal_skip=True, device=DEVICE, **qarg)
    row = lite_mask(**kw)
    assert row.shape == (B, 1, T, T) and row.stride(2) == 0
    assert lite_mask(**{**kw, "attention_mask": torch.ones_like(pad)}) is None  # eager, no padding: causal
    full = sdpa_mask(**{**kw, "allow_is_causal_skip": False})
    assert torch.equal(full[0], (row & torch.ones(T, T, dtype=torch.bool, device=DEVICE).tril())[0])
    module = types.SimpleNamespace(is_causal=True, training=False, num_key_value_groups=2)
    q, k, v = torch.randn(B, H, T, D, device=DEVICE), torch.randn(B, HKV, T, D, device=DEVICE), torch.randn(B, HKV, T, D, device=DEVICE)
    additive = torch.zeros(full.shape, device=DEVICE).masked_fill(~full, torch.finfo(torch.float32).min)
    with torch.no_grad():
        want, _ = eager_attention_forward(module, q, k, v, additive, scaling=D ** -0.5)
        kernel, _ = lite_attention_forward(module, q, k, v, row, scaling=D ** -0.5)
        fallback, _ = lite_attention_forward(module, q, k, v, row, scaling=D ** -0.5, softcap=50.0)
    ok = full.any(-1)[:, 0, :, None, None]  # (B, T, 1, 1): rows with a key (HF fills empty rows differently)
    torch.testing.assert_close(fallback, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kernel * ok, want * ok, atol=1e-5, rtol=1e-5)


def test_chunked_prefill_into_a_static_cache_without_mask():
    """Two prefill chunks into a static cache, no attention mask: the second chunk's queries must see the first
    chunk's keys and not the cache's unwritten tail (the "lite" mask builder may hand over None only when the
    queries are all the keys; here Tq < Tk = max_cache_len)."""
    from transformers import StaticCache

    model = LlamaForCausalLM(tiny_config()).to(DEVICE).eval()
    ids = torch.randint(1, 256, (1, 13), device=DEVICE)

    def chunked(m):
        cache = StaticCache(config=m.config, max_cache_len=32)
        with torch.no_grad():
            m(ids[:, :8], past_key_values=cache, cache_position=torch.arange(8, device=DEVICE), use_cache=True)
            return m(ids[:, 8:], past_key_values=cache, cache_position=torch.arange(8, 13, device=DEVICE),
                     use_cache=True).logits

    want = chunked(model)
    apply_lite_llama(model)
    torch.testing.assert_close(chunked(model), want, atol=2e-4, rtol=2e-4)


@requires_kernels()
def test_lite_attention_reads_the_calls_is_causal_and_keeps_paths_consistent():
    """HF passes is_causal per call (CLIP's text model: module False, call True); the kernel path and the eager
    fallback must both follow it, for a padding row given as a stride-0 view too."""
    import types

    from transformers.models.llama.modeling_llama import eager_attention_forward

    from litekernels.patches.attention import lite_attention_forward

    B, H, HKV, T, D = 2, 4, 2, 9, 32
    pad = torch.ones(B, T, dtype=torch.bool, device=DEVICE)
    pad[1, -3:] = False  # right padding: every query keeps a key, causal or not
    row = pad[:, None, None, :].expand(B, 1, T, T)
    q, k, v = torch.randn(B, H, T, D, device=DEVICE), torch.randn(B, HKV, T, D, device=DEVICE), torch.randn(B, HKV, T, D, device=DEVICE)
    module = types.SimpleNamespace(is_causal=False, training=False, num_key_value_groups=2)

    def eager(mask):
        add = torch.zeros(mask.shape, device=DEVICE).masked_fill(~mask, torch.finfo(torch.float32).min)
        return eager_attention_forward(module, q, k, v, add, scaling=D ** -0.5)[0]

    causal = row & torch.ones(T, T, dtype=torch.bool, device=DEVICE).tril()
    with torch.no_grad():
        for is_causal, want in ((True, eager(causal)), (None, eager(row.contiguous()))):
            kw = {} if is_causal is None else {"is_causal": is_causal}
            kernel, _ = lite_attention_forward(module, q, k, v, row, scaling=D ** -0.5, **kw)
            fallback, _ = lite_attention_forward(module, q, k, v, row, scaling=D ** -0.5, softcap=50.0, **kw)
            torch.testing.assert_close(kernel, want, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(fallback, want, atol=1e-5, rtol=1e-5)


def test_autocast_dtype_reports_the_active_autocast():
    """utils.autocast_dtype decides whether LiteMLP's fused SiLU*mul+down and the fused cross-entropy step aside
    (autocast changes the dtype nn.Linear computes in)."""
    from litekernels.utils import autocast_dtype

    assert autocast_dtype("cpu") is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert autocast_dtype("cpu") == torch.bfloat16
    assert autocast_dtype("cpu") is None
