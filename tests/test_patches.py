"""apply_lite_llama / revert_lite_llama on tiny random Llama models (any backend: kernels or reference)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from litekernels.patches import apply_lite_llama, lite_llama_summary, revert_lite_llama


def tiny_config(**kw):
    base = dict(vocab_size=256, hidden_size=128, intermediate_size=200, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0)
    base.update(kw)
    return LlamaConfig(**base)


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


@pytest.fixture(params=["default-rope", "llama3-rope"])
def model(request):
    kw = {"rope_parameters": LLAMA3_ROPE} if request.param == "llama3-rope" else {}
    return LlamaForCausalLM(tiny_config(**kw)).eval()


def _batch(B=2, T=19, vocab=256):
    ids = torch.randint(1, vocab, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :6] = 0  # left padding
    return ids, mask


def test_patched_logits_match(model):
    ids, mask = _batch()
    with torch.no_grad():
        ref = model(ids, attention_mask=mask).logits
        apply_lite_llama(model)
        out = model(ids, attention_mask=mask).logits
    summary = lite_llama_summary(model)
    assert summary == {"architecture": "llama", "rms_norm": 5, "mlp": 2, "rope": 2, "attention": "lite",
                       "fused_linear_cross_entropy": True}
    torch.testing.assert_close(out[0], ref[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[1, 6:], ref[1, 6:], atol=1e-4, rtol=1e-4)  # padded positions are don't-care


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
    model = LlamaForCausalLM(tiny_config()).eval()
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
    model = LlamaForCausalLM(tiny_config()).eval()
    apply_lite_llama(model)
    apply_lite_llama(model, attention=False, swiglu=False)
    s = lite_llama_summary(model)
    assert s["mlp"] == 0 and "attention" not in s and s["rms_norm"] == 5


def test_only_the_given_instance_is_patched():
    a, b = LlamaForCausalLM(tiny_config()).eval(), LlamaForCausalLM(tiny_config()).eval()
    apply_lite_llama(a)
    assert lite_llama_summary(b) == {}
    assert b.config._attn_implementation != "lite"
    assert "forward" not in b.model.norm.__dict__


def test_state_dict_keys_unchanged_and_round_trip(tmp_path):
    model = LlamaForCausalLM(tiny_config()).eval()
    keys = list(model.state_dict().keys())
    apply_lite_llama(model)
    assert list(model.state_dict().keys()) == keys
    model.save_pretrained(tmp_path)
    again = LlamaForCausalLM.from_pretrained(tmp_path).eval()
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
    ref_model = LlamaForCausalLM(tiny_config()).eval()
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


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_greedy_matches_with_left_padding(cache):
    model = LlamaForCausalLM(tiny_config()).eval()
    ids, mask = _batch(T=9)
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    if cache == "static":
        kw.update(cache_implementation="static", disable_compile=True)
    ref = model.generate(ids, attention_mask=mask, **kw)
    apply_lite_llama(model)
    out = model.generate(ids, attention_mask=mask, **kw)
    assert torch.equal(out, ref)
