"""apply_lite_llama's default attention mode, "auto" ("lite_auto"): which calls go to transformers' SDPA and
which to our kernels, checked with spies on both. The device rule (`_prefers_sdpa`: CUDA) is forced on for the
CPU run, so the routing is tested everywhere; the GPU run checks the real rule and a training step."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.integrations import sdpa_attention

import litekernels.patches.attention as lite_attn
from litekernels.patches import apply_lite_llama, lite_llama_summary
from tests.conftest import requires_kernels
from tests.helpers import DEVICE


def tiny():
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(DEVICE).eval()


@pytest.fixture
def spies(monkeypatch):
    calls = {"sdpa": 0, "flash": 0, "decode": 0}

    def spy(name, owner, attr):
        real = getattr(owner, attr)

        def wrapped(*a, **k):
            calls[name] += 1
            return real(*a, **k)
        monkeypatch.setattr(owner, attr, wrapped)

    spy("sdpa", sdpa_attention, "sdpa_attention_forward")
    spy("flash", lite_attn, "flash_attention_unchecked")
    spy("decode", lite_attn, "decode_attention_unchecked")
    monkeypatch.setattr(lite_attn, "_prefers_sdpa", lambda q: True)  # the GPU rule, on any device
    return calls


def test_bad_mode_is_refused():
    with pytest.raises(ValueError, match="attention must be"):
        apply_lite_llama(tiny(), attention="fast")


def test_modes_name_the_implementation():
    assert lite_llama_summary(apply_lite_llama(tiny()))["attention"] == "lite_auto"
    for mode in ("ours", True):
        m = apply_lite_llama(tiny(), attention=mode)
        assert lite_llama_summary(m)["attention"] == "lite" and m.config._attn_implementation == "lite"
    assert "attention" not in lite_llama_summary(apply_lite_llama(tiny(), attention=False))


@requires_kernels()
def test_unpadded_prefill_goes_to_sdpa_padded_and_decode_to_ours(spies):
    model = tiny()
    ids = torch.randint(1, 256, (2, 12), device=DEVICE)
    with torch.no_grad():
        ref = model(ids).logits
        apply_lite_llama(model)
        out = model(ids).logits
    assert spies == {"sdpa": 2, "flash": 0, "decode": 0}  # both layers, no mask
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)

    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding: lite_mask's key row, our KEY_MASK kernel path
    with torch.no_grad():
        model(ids, attention_mask=mask)
    assert spies == {"sdpa": 2, "flash": 2, "decode": 0}

    model.generation_config.pad_token_id = 0
    model.generate(ids[:1], max_new_tokens=3, do_sample=False)  # prefill (SDPA), then one-token steps (ours)
    assert spies["sdpa"] == 4 and spies["flash"] == 2 and spies["decode"] == 4


@requires_kernels()
def test_ours_mode_never_calls_sdpa(spies):
    model = apply_lite_llama(tiny(), attention="ours")
    with torch.no_grad():
        model(torch.randint(1, 256, (1, 9), device=DEVICE))
    assert spies["sdpa"] == 0 and spies["flash"] == 2


@requires_kernels()
def test_auto_training_step_matches_ours(spies):
    """The loss and gradients of a training step with labels: auto (SDPA attention) vs ours."""
    ids = torch.randint(1, 256, (2, 16), device=DEVICE)
    grads = {}
    for mode in ("auto", "ours"):
        model = apply_lite_llama(tiny().train(), attention=mode)
        loss = model(ids, labels=ids).loss
        loss.backward()
        grads[mode] = (loss.detach(), model.model.layers[0].self_attn.q_proj.weight.grad)
    assert spies["sdpa"] == 2 and spies["flash"] == 2
    torch.testing.assert_close(grads["auto"][0], grads["ours"][0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(grads["auto"][1], grads["ours"][1], atol=1e-4, rtol=1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run `pytest -m gpu` on the GPU machine)")
def test_gpu_rule_is_cuda():
    q = torch.empty(1, 1, 2, 8, device="cuda")
    assert lite_attn._prefers_sdpa(q) and not lite_attn._prefers_sdpa(q.cpu())
