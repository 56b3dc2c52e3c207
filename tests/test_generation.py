"""The generation loop on CPU: greedy tokens equal HF generate, ragged batches equal single prompts, seeded
sampling is reproducible, top-k/top-p only pick allowed tokens, bad input is refused, stream() agrees."""

import collections

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from litekernels.generation import LlamaRuntime, generate, sample, stream
from litekernels.generation.sampling import filter_logits


class ByteTokenizer:
    """Each character is one token (its code point mod 250, +3); 1 = BOS prepended, 2 = EOS."""

    eos_token_id = 2
    pad_token_id = 0

    def __call__(self, text):
        return {"input_ids": [1] + [3 + ord(c) % 250 for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + (i - 3) % 26) for i in ids if i >= 3)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=200, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      eos_token_id=2, bos_token_id=1, pad_token_id=0)
    m = LlamaForCausalLM(cfg).eval()
    m.generation_config.eos_token_id = 2
    return m


TOK = ByteTokenizer()
PROMPTS = ["hello there", "a", "the quick brown fox jumps"]


def _hf_greedy(model, prompt, n):
    ids = torch.tensor([TOK(prompt)["input_ids"]])
    out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def test_greedy_matches_hf_generate(model):
    for p in PROMPTS:
        ours = generate(model, TOK, p, 12, use_cuda_graph=False)[0]
        ref = _hf_greedy(model, p, 12)
        n = len(ours.token_ids)
        assert ours.token_ids == ref[:n]
        assert ours.finish_reason == ("eos" if 2 in ours.token_ids else "length")


def test_ragged_batch_equals_each_prompt_alone(model):
    batch = generate(model, TOK, PROMPTS, 10)
    for p, r in zip(PROMPTS, batch):
        alone = generate(model, TOK, p, 10)[0]
        assert r.token_ids == alone.token_ids and r.text == alone.text
        assert r.prompt_tokens == len(TOK(p)["input_ids"])
    assert all(r.prefill_ms > 0 for r in batch)


def test_seeded_sampling_is_reproducible(model):
    kw = dict(temperature=1.0, top_k=50, top_p=0.9)
    a = generate(model, TOK, PROMPTS, 8, seed=7, **kw)
    b = generate(model, TOK, PROMPTS, 8, seed=7, **kw)
    c = generate(model, TOK, PROMPTS, 8, seed=8, **kw)
    assert [r.token_ids for r in a] == [r.token_ids for r in b]
    assert [r.token_ids for r in a] != [r.token_ids for r in c]


def test_stream_pieces_equal_generate_text(model):
    it = stream(model, TOK, "hello there", 10)
    pieces = list(it)
    assert "".join(pieces) == generate(model, TOK, "hello there", 10)[0].text


def test_stop_string_cuts_text(model):
    full = generate(model, TOK, "hello there", 12)[0]
    assert len(full.text) >= 3
    stop = full.text[2:4]
    cut = generate(model, TOK, "hello there", 12, stop=[stop])[0]
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.find(stop)]


def test_top_k_top_p_only_pick_allowed_tokens_with_sane_frequencies():
    torch.manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]]).repeat(20000, 1)
    gen = torch.Generator().manual_seed(0)
    counts = collections.Counter(sample(logits, 1.0, top_k=3, generator=gen).tolist())
    assert set(counts) <= {0, 1, 2}
    p = torch.softmax(torch.tensor([2.0, 1.0, 0.5]), 0)
    for t in range(3):  # within 5 standard deviations of the renormalised top-3 probabilities
        sd = (20000 * p[t] * (1 - p[t])) ** 0.5
        assert abs(counts[t] - 20000 * p[t]) < 5 * sd
    probs = torch.softmax(logits[0], 0)  # cumulative 0.56, 0.77, 0.89: the smallest set reaching 0.7 is {0, 1}
    assert probs[:2].sum() > 0.7 > probs[:1].sum()
    kept = torch.isfinite(filter_logits(logits[:1], top_p=0.7))[0].tolist()
    assert kept == [True, True, False, False, False, False]
    counts = collections.Counter(sample(logits, 1.0, top_p=0.7, generator=gen).tolist())
    assert set(counts) <= {0, 1} and counts[0] > counts[1]


@pytest.mark.parametrize("call, exc, words", [
    (lambda m: generate(m, TOK, [], 4), ValueError, "prompts is empty"),
    (lambda m: generate(m, TOK, [""], 4), ValueError, "non-empty string"),
    (lambda m: generate(m, TOK, "hi", 0), ValueError, "max_new_tokens must be positive"),
    (lambda m: generate(m, TOK, "x" * 600, 4), ValueError, "max_position_embeddings=512"),
    (lambda m: generate(m, TOK, "hi", 4, temperature=-1), ValueError, "temperature"),
    (lambda m: generate(m, TOK, "hi", 4, top_p=1.5), ValueError, "top_p"),
    (lambda m: LlamaRuntime(m, max_batch=1, max_seq_len=8).prefill([list(range(3, 12))]), ValueError,
     "exceeds the KV cache"),
    (lambda m: LlamaRuntime(m, max_batch=1, max_seq_len=8).prefill([[3], [4]]), ValueError, "max_batch=1"),
    (lambda m: LlamaRuntime(torch.nn.Linear(2, 2)), TypeError, "Linear"),
])
def test_bad_input(model, call, exc, words):
    with pytest.raises(exc, match=words):
        call(model)
