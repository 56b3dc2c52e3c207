"""The real bundled model (SmolLM2-135M-Instruct, float32, CPU): patched and unpatched greedy generation agree."""

import pytest
import torch

from litekernels.generation.loading import load_model
from litekernels.patches import apply_lite_llama, revert_lite_llama

from tests.conftest import requires_kernels
from tests.helpers import DEVICE

# Without CUDA or the interpreter both sides would run the same PyTorch code: skipped (requires_kernels says so)
pytestmark = [pytest.mark.slow, requires_kernels()]


@pytest.fixture(scope="module")
def smollm2():
    try:
        return load_model(None, dtype="float32", device=DEVICE)
    except FileNotFoundError as e:
        pytest.fail(f"bundled model missing: {e}")  # a missing model is a broken install, not a skip


def test_smollm2_greedy_tokens_match(smollm2):
    model, tok = smollm2
    prompts = ["What is the capital of France?", "Name three colors."]
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in prompts]
    tok.padding_side = "left"
    batch = tok(texts, return_tensors="pt", padding=True).to(DEVICE)
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    ref = model.generate(**batch, **kw)
    apply_lite_llama(model)
    try:
        out = model.generate(**batch, **kw)
    finally:
        revert_lite_llama(model)
    assert torch.equal(out, ref)
    assert "Paris" in tok.decode(out[0, batch["input_ids"].shape[1]:])


def test_smollm2_generation_loop_matches_hf_generate(smollm2):
    from litekernels.generation import generate

    model, tok = smollm2
    prompts = ["What is the capital of France?", "Write a haiku about the sea."]
    texts = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
             for p in prompts]
    ours = generate(model, tok, texts, 8)  # a ragged batch through our runtime (static cache, our kernels)
    for text, r in zip(texts, ours):
        ids = tok(text, return_tensors="pt").to(DEVICE)
        ref = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
        ref = ref[0, ids["input_ids"].shape[1]:].tolist()
        assert r.token_ids == ref[: len(r.token_ids)]
    assert "Paris" in ours[0].text
