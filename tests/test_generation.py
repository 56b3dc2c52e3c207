"""The generation loop on CPU: greedy tokens equal HF generate, ragged batches equal single prompts, seeded
sampling is reproducible, top-k/top-p only pick allowed tokens, bad input is refused, stream() agrees."""

import collections

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from litekernels.generation import LlamaRuntime, generate, sample, stream
from litekernels.generation.sampling import filter_logits
from tests.conftest import requires_kernels
from tests.helpers import DEVICE, ByteTokenizer




@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=200, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      eos_token_id=2, bos_token_id=1, pad_token_id=0)
    m = LlamaForCausalLM(cfg).to(DEVICE).eval()  # CUDA when present: the runtime then runs compiled kernels
    m.generation_config.eos_token_id = 2
    return m


TOK = ByteTokenizer()
PROMPTS = ["hello there", "a", "the quick brown fox jumps"]


def _hf_greedy(model, prompt, n):
    ids = torch.tensor([TOK(prompt)["input_ids"]], device=next(model.parameters()).device)
    out = model.generate(ids, max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0)
    return out[0, ids.shape[1]:].tolist()


def _peaky_model(dtype=torch.float32):
    """A tiny Llama whose attention is far from uniform (projections of std 0.15: the largest attention weight of
    a row over 11-40 keys averages 0.54, against 0.045 for uniform attention; HF's default init is close to
    uniform) and whose norms have distinct random weights, so a decode
    step at the wrong position, with the wrong length, scale or norm weight changes the logits by O(1)."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(1)
    cfg = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=0.15, rms_norm_eps=1e-5, eos_token_id=2, bos_token_id=1, pad_token_id=0)
    m = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, LlamaRMSNorm):
                mod.weight.copy_(1 + 0.3 * torch.randn_like(mod.weight))
        # embeddings of std 0.02, as real models have: the first norm's mean square is then 4e-4, so eps (1e-5)
        # moves its output by ~1% and a runtime that drops or misplaces eps fails
        m.model.embed_tokens.weight.normal_(0.0, 0.02)
    return m.to(DEVICE, dtype).eval()


PARITY_NEW_TOKENS = 24


@requires_kernels()
@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=pytest.mark.gpu)], ids=str)
def test_runtime_matches_hf_greedy_token_for_token_and_logits(dtype):
    """A ragged batch through LlamaRuntime (prefill, then 24 decode steps) against HF generate on each prompt
    alone: at every step the logits agree, and the greedy token equals HF's. Our decode is fed HF's tokens
    (teacher forcing), so one early difference cannot hide the later steps; in fp32 the argmax must match at
    every step, which is the free-running greedy sequence token for token."""
    model = _peaky_model(dtype)
    gen = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 256, (n,), generator=gen).tolist() for n in (4, 13, 29)]
    hf_tokens, hf_logits = [], []
    for p in prompts:
        out = model.generate(torch.tensor([p], device=DEVICE), max_new_tokens=PARITY_NEW_TOKENS, do_sample=False,
                             eos_token_id=None, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
        hf_tokens.append(out.sequences[0, len(p):].tolist())
        hf_logits.append(torch.cat(out.logits).float())  # (steps, vocab): raw logits before any processing
    assert all(len(set(t)) >= 6 for t in hf_tokens), f"degenerate reference sequences: {hf_tokens}"
    truth = None
    if dtype != torch.float32:
        # the truth for bf16: the same weights in fp32, teacher-forced on HF's tokens (one forward per prompt)
        exact = copy.deepcopy(model).float()
        with torch.no_grad():
            truth = [exact(torch.tensor([p + t], device=DEVICE)).logits[0, len(p) - 1:len(p) - 1 + PARITY_NEW_TOKENS]
                     for p, t in zip(prompts, hf_tokens)]
        del exact
    rt = LlamaRuntime(model, max_batch=4, max_seq_len=128)
    logits = rt.prefill(prompts)
    positions = torch.tensor([len(p) for p in prompts], device=DEVICE)
    for step in range(PARITY_NEW_TOKENS):
        want = torch.stack([hf[step] for hf in hf_logits])
        got = logits.float()
        if dtype == torch.float32:
            torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4, msg=lambda m, s=step: f"step {s}: {m}")
            assert got.argmax(-1).tolist() == [t[step] for t in hf_tokens], f"greedy token differs at step {step}"
        else:  # bf16: both sides round, at different points: ours may be at most 2x as far from the fp32 truth as
            # HF's own bf16 run (the rule of tests/helpers.py), per row; the 2e-3 floor is about the relative error
            # of rounding the logits themselves to bf16 once (2^-9), for rows where HF happens to land closer
            exact = torch.stack([t[step] for t in truth]).float()
            ours = (got - exact).norm(dim=-1) / exact.norm(dim=-1)
            hf = (want - exact).norm(dim=-1) / exact.norm(dim=-1)
            assert (ours <= 2 * hf + 2e-3).all(), f"step {step}: relative logits error {ours.tolist()} vs HF {hf.tolist()}"
        if step + 1 < PARITY_NEW_TOKENS:
            tok = torch.tensor([t[step] for t in hf_tokens], device=DEVICE)
            logits = rt.decode(tok, positions)
            positions += 1


@requires_kernels()
def test_runtime_reads_each_norms_own_eps():
    """Every RMSNorm (input, post-attention, final) with its own eps, large enough to move its output by ~10%:
    a runtime that drops one, or uses one norm's eps for another, gives other prefill logits than HF."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    model = _peaky_model()
    for i, mod in enumerate(m for m in model.modules() if isinstance(m, LlamaRMSNorm)):
        mod.variance_epsilon = 0.05 * (i + 1)
    prompts = [[5, 80, 17, 200, 9], [1, 33]]
    rt = LlamaRuntime(model, max_batch=2, max_seq_len=16)
    got = rt.prefill(prompts)
    with torch.no_grad():
        want = torch.stack([model(torch.tensor([p], device=DEVICE)).logits[0, -1] for p in prompts])
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)


@requires_kernels()
def test_generate_ragged_batch_matches_hf_greedy():
    """generate() end to end (tokenizer, ragged batch, positions, the sampling loop) against HF greedy on each
    prompt alone, token for token, on the peaky model (a uniform-attention model repeats tokens and hides a
    wrong decode step)."""
    model = _peaky_model()
    model.generation_config.eos_token_id = 2
    prompts = ["the quick brown fox", "hi", "a longer prompt than the rest"]
    results = generate(model, TOK, prompts, PARITY_NEW_TOKENS)
    for p, r in zip(prompts, results):
        ref = _hf_greedy(model, p, PARITY_NEW_TOKENS)
        assert r.token_ids == ref[: len(r.token_ids)], f"prompt {p!r}"
        assert r.finish_reason == ("eos" if 2 in r.token_ids else "length")
        assert r.finish_reason == "eos" or len(r.token_ids) == PARITY_NEW_TOKENS


def test_sampling_loop_with_top_k_1_equals_greedy(model):
    """temperature > 0 with top_k=1 is greedy through the host-side sampling loop (greedy calls run the
    on-device loop, GreedySteps): both loops must give HF's greedy tokens on a ragged batch that hits EOS."""
    sampled = generate(model, TOK, PROMPTS, 12, temperature=0.7, top_k=1, seed=3)
    greedy = generate(model, TOK, PROMPTS, 12)
    for p, s, g in zip(PROMPTS, sampled, greedy):
        ref = _hf_greedy(model, p, 12)
        assert s.token_ids == g.token_ids == ref[: len(g.token_ids)], f"prompt {p!r}"


def test_generate_ids_rows_stop_at_eos_and_repeat_it():
    """Token level: a row that produced a stop id repeats it (in the on-device greedy loop and in the sampling
    loop), the other rows go on unchanged, and the loop ends early once every row has stopped. The peaky model:
    its greedy tokens do not repeat, so a stop id that is ignored shows."""
    from litekernels.generation import generate_ids

    model = _peaky_model()
    prompts = [TOK(p)["input_ids"] for p in PROMPTS]
    free, _, _ = generate_ids(model, prompts, 12)
    free = free.tolist()
    # a stop id that row 0 produces first at step t >= 1 and then leaves (so ignoring it would show)
    t = next(t for t in range(1, 11) if free[0][t] not in free[0][:t] and free[0][t + 1] != free[0][t])
    stop = free[0][t]
    stopped_at = [row.index(stop) if stop in row else None for row in free]
    for kw in ({}, {"temperature": 0.5, "top_k": 1, "seed": 0}):  # greedy loop, host sampling loop
        got, _, _ = generate_ids(model, prompts, 12, eos_ids=[stop], **kw)
        got = got.tolist()
        for row, ref, at in zip(got, free, stopped_at):
            if at is None:
                assert row == ref[: len(row)]
            else:
                assert row[: at + 1] == ref[: at + 1] and set(row[at:]) == {stop}, (row, ref, kw)
    # every row stops at once: the host sees it at the next check (every 16 steps) and ends the loop there
    first = [row[0] for row in free]
    got, _, _ = generate_ids(model, prompts, 40, eos_ids=sorted(set(first)))
    assert got.shape[1] == 16 and all(set(row) == {row[0]} for row in got.tolist())


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
