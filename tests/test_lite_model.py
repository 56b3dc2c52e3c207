"""The CLI's transformers-free path (generation/lite_model.py, lite_tokenizer.py) against transformers' own classes.

The weight container must give the generation runtime exactly what transformers' LlamaForCausalLM gives it: the
same logits (torch.equal) and greedy tokens from the same converted folder, the same cos/sin tables (bit for bit,
rope "default" and "llama3"), tied and untied embeddings; the tokenizer must encode, decode and render chat
templates exactly as transformers' does; and a second CLI run must not import transformers at all. Anything the
container does not reproduce (another family, another rope type, unexpected weights) must load transformers'
model instead.

Easy mistakes caught here: an inv_freq computed with a different op order (1-ulp cos/sin differences), an
lm_head that is a copy instead of the tied embedding, a rms_norm_eps default that differs from LlamaConfig's, a
chat template environment without trim_blocks, `import litekernels.patches` pulling transformers back in.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from litekernels.generation import generate_ids, loading
from litekernels.generation.lite_model import (
    LiteLlamaForCausalLM,
    LiteLlamaRotaryEmbedding,
    lite_config,
)
from litekernels.generation.lite_tokenizer import LiteTokenizer, load_lite_tokenizer
from litekernels.generation.runtime import LlamaRuntime
from tests.helpers import run_fresh_python

WORDS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>", "hello", "world", "again", "paris", "is", "the",
         "capital", "of", "france", "user", "assistant", "system", "what", "?", ".", "a", "b", "c", "d", "e", "f",
         "g", "h", "i", "j", "k", "l"]
# the bundled SmolLM2-135M-Instruct's chat template (its converted copy's chat_template.jinja)
SMOL_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}


def _tokenizer(template=SMOL_TEMPLATE):
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.add_special_tokens([AddedToken(t, special=True) for t in ("<s>", "</s>", "<|im_start|>", "<|im_end|>")])
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>")
    tok.chat_template = template
    return tok


def _model(tied=True, rope=None, **kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=tied, rms_norm_eps=1e-5, eos_token_id=4, bos_token_id=1, pad_token_id=4,
                      **({"rope_parameters": rope} if rope else {}), **kw)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # weights of a trained model's scale, so the greedy tokens are not near-ties
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


@pytest.fixture
def converted(tmp_path, monkeypatch):
    """make(tied, rope) -> (GGUF path, folder): a 'GGUF' file nothing can parse and its converted copy in the
    cache, written by the conversion's own save function."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def make(tied=True, rope=None, name="tiny", **kw):
        path = tmp_path / f"{name}.gguf"
        path.write_bytes(b"GGUF" + bytes(64))
        folder = loading.converted_dir(str(path))
        loading._save_converted(_model(tied, rope, **kw), _tokenizer(), folder, str(path))
        return str(path), folder

    return make


def _both(folder, dtype=torch.float32):
    lite, lite_tok = loading._load_converted(folder, dtype, lambda line: None, lite=True)
    hf, hf_tok = loading._load_converted(folder, dtype, lambda line: None, lite=False)
    assert isinstance(lite, LiteLlamaForCausalLM) and isinstance(lite_tok, LiteTokenizer)
    assert not isinstance(hf, LiteLlamaForCausalLM)
    return (lite, lite_tok), (hf, hf_tok)


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("rope", [None, LLAMA3_ROPE], ids=["default", "llama3"])
def test_runtime_on_the_skeleton_equals_runtime_on_the_hf_model(converted, tied, rope):
    _, folder = converted(tied, rope)
    (lite, _), (hf, _) = _both(folder)
    assert set(lite.state_dict()) == set(hf.state_dict())
    for k, v in hf.state_dict().items():
        assert torch.equal(lite.state_dict()[k], v), k
    assert (lite.lm_head.weight is lite.model.embed_tokens.weight) == tied
    assert lite.generation_config.eos_token_id == hf.generation_config.eos_token_id == 4
    prompts = [[1, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [3, 14, 5, 6]]
    runtimes = [LlamaRuntime(m, max_batch=2, max_seq_len=192) for m in (lite, hf)]
    assert torch.equal(runtimes[0].cos, runtimes[1].cos) and torch.equal(runtimes[0].sin, runtimes[1].sin)
    assert runtimes[0].eps == runtimes[1].eps and runtimes[0].scale == runtimes[1].scale
    logits = [rt.prefill(prompts) for rt in runtimes]
    assert torch.equal(logits[0], logits[1])
    tok = logits[0].argmax(-1)
    pos = torch.tensor([len(p) for p in prompts])
    assert torch.equal(runtimes[0].decode(tok, pos), runtimes[1].decode(tok, pos))
    del runtimes
    # the whole greedy loop (short: under TRITON_INTERPRET=1 every step is interpreted; the cos/sin tables of all
    # 192 positions, llama3's scaled ones past 64 included, are compared above)
    outs = [generate_ids(m, prompts, 6)[0] for m in (lite, hf)]
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("rope", [None, LLAMA3_ROPE], ids=["default", "llama3"])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rotary_equals_transformers_bit_for_bit(rope, head_dim, dtype):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    kw = {"rope_parameters": dict(rope, original_max_position_embeddings=8192)} if rope else {}
    cfg = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, head_dim=head_dim,
                      max_position_embeddings=131072, **kw)
    raw = json.loads(cfg.to_json_string())
    raw["architectures"] = ["LlamaForCausalLM"]
    config, why = lite_config(raw)
    assert config is not None, why
    ours, theirs = LiteLlamaRotaryEmbedding(config), LlamaRotaryEmbedding(cfg)
    assert torch.equal(ours.inv_freq, theirs.inv_freq) and ours.attention_scaling == theirs.attention_scaling
    pos = torch.arange(0, 131072, 7)[None]
    x = torch.empty(1, dtype=dtype)
    for a, b in zip(ours(x, pos), theirs(x, pos)):
        assert a.dtype == b.dtype == dtype and torch.equal(a, b)


def test_what_the_skeleton_does_not_reproduce_loads_transformers(converted):
    base = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 64,
            "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 32,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}
    assert lite_config(base)[0] is not None
    for change in ({"model_type": "qwen2"}, {"architectures": ["LlamaModel"]}, {"attention_bias": True},
                   {"mlp_bias": True}, {"hidden_act": "gelu"}, {"pretraining_tp": 2}, {"rope_theta": 1e4},
                   {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}},
                   {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}},
                   {"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4}},
                   {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}},
                   {"num_local_experts": 8}):
        config, why = lite_config({**base, **change})
        assert config is None and why, change
    # a linear-rope Llama goes through transformers (and still loads)
    path, folder = converted(rope={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}, name="linear")
    lines = []
    model, _ = loading.load_model(path, lite_skeleton=True, progress=lines.append)
    assert not isinstance(model, LiteLlamaForCausalLM) and any("transformers' model code" in ln for ln in lines)
    # weights that are not the config's checkpoint: transformers' loader decides
    path, folder = converted(name="extra")
    state = loading._mapped_state_dict(os.path.join(folder, "model.safetensors"))
    state["model.extra.weight"] = torch.zeros(3)
    from litekernels.generation.lite_model import build_lite_llama

    with open(os.path.join(folder, "config.json")) as f:
        assert build_lite_llama(lite_config(json.load(f))[0], state, torch.float32) is None
    # without lite_skeleton (the library API): always transformers' model
    model, _ = loading.load_model(path)
    assert not isinstance(model, LiteLlamaForCausalLM)


def test_skeleton_has_no_forward_and_cannot_be_patched(converted):
    from litekernels.patches import apply_lite_llama

    _, folder = converted()
    (lite, _), _ = _both(folder)
    with pytest.raises(NotImplementedError, match="LlamaForCausalLM"):
        lite(torch.tensor([[1, 2]]))
    with pytest.raises(TypeError, match="weight container"):
        apply_lite_llama(lite)


def test_bf16_skeleton_equals_bf16_hf_model(converted):
    _, folder = converted()
    (lite, _), (hf, _) = _both(folder, torch.bfloat16)
    assert lite.dtype == hf.dtype == torch.bfloat16
    assert lite.model.rotary_emb.inv_freq.dtype == hf.model.rotary_emb.inv_freq.dtype == torch.float32
    outs = [generate_ids(m, [[1, 5, 6, 7], [3, 14]], 4)[0] for m in (lite, hf)]
    assert torch.equal(outs[0], outs[1])


def _check_tokenizers(lite, hf, texts, conversations):
    for text in texts:
        ids = hf(text)["input_ids"]
        assert lite(text)["input_ids"] == ids, text
        for skip in (False, True):
            assert lite.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), text
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "eos_token", "chat_template"):
        assert getattr(lite, attr) == getattr(hf, attr), attr
    for msgs in conversations:
        for gen in (False, True):
            want = hf.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=False)
            assert lite.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=False) == want
            assert lite.apply_chat_template(msgs, add_generation_prompt=gen) == \
                hf.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=True, return_dict=False)


CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello world"}],
    [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "world"},
     {"role": "user", "content": "again <|im_end|> </s>", "name": None}],
]


def test_lite_tokenizer_equals_transformers(converted):
    from transformers import AutoTokenizer

    _, folder = converted()
    lite, hf = load_lite_tokenizer(folder), AutoTokenizer.from_pretrained(folder)
    assert lite is not None
    _check_tokenizers(lite, hf, ["hello world", "<s> hello </s> world <|im_end|>", "unknown words", "what is ?"],
                      CONVERSATIONS)
    # settings it does not reproduce: transformers' tokenizer
    with open(os.path.join(folder, "tokenizer_config.json")) as f:
        config = json.load(f)
    for change in ({"add_prefix_space": True}, {"clean_up_tokenization_spaces": True},
                   {"eos_token": {"content": "</s>", "special": True}}):
        with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
            json.dump({**config, **change}, f)
        assert load_lite_tokenizer(folder) is None, change


def test_cli_second_run_imports_no_transformers(converted):
    """The whole CLI in a fresh interpreter on a cached converted copy: no transformers module at all, and the
    same answer as the runtime on transformers' model with transformers' tokenizer."""
    from litekernels.generation import generate

    path, folder = converted()
    prompt = "what is the capital of france ?"
    code = (
        "import json, sys\n"
        "from litekernels import cli\n"
        f"rc = cli.main(['generate', {prompt!r}, '--model', {path!r}, '--max-new-tokens', '6'])\n"
        "bad = sorted(m for m in sys.modules if m == 'transformers' or m.startswith('transformers.'))\n"
        "print('\\n' + json.dumps({'rc': rc, 'transformers_modules': bad}))\n"
    )
    r = run_fresh_python(code)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == {"rc": 0, "transformers_modules": []}, r.stderr[-3000:]
    assert "no transformers import" in r.stderr and "converting" not in r.stderr
    hf, hf_tok = loading._load_converted(folder, torch.float32, lambda line: None, lite=False)
    text = hf_tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      tokenize=False)
    [want] = generate(hf, hf_tok, text, 6)
    assert lines[0] == f">>> {prompt}" and lines[1] == want.text


@pytest.mark.slow
def test_bundled_model_tokenizer_equals_transformers():
    """The real SmolLM2 tokenizer (BPE, byte-level) and chat template from its converted copy."""
    from transformers import AutoTokenizer

    try:
        loading.load_model(None)  # converts once if the cache is empty
    except FileNotFoundError as e:
        pytest.fail(f"bundled model missing: {e}")
    folder = loading.converted_dir(loading.smollm2_path())
    lite, hf = load_lite_tokenizer(folder), AutoTokenizer.from_pretrained(folder)
    assert lite is not None
    texts = ["What is the capital of France?", "  leading spaces and\ttabs\n\nnew lines", "émigré café 東京 🙂",
             "<|im_start|>user\nhi<|im_end|>", "code: def f(x):\n    return x**2  # ok", ""]
    _check_tokenizers(lite, hf, texts, CONVERSATIONS + [[{"role": "user", "content": t}] for t in texts if t])


def test_patching_still_works_in_a_process_that_built_the_skeleton(converted):
    """The skeleton defers `import litekernels.patches`' registration with transformers (process-wide); a
    transformers model patched later in the same process must still get the lite attention and the fused
    cross-entropy forward (both resolved at patch time then)."""
    _, folder = converted()
    code = (
        "import sys, torch\n"
        "from litekernels.generation import loading\n"
        f"lite, _ = loading._load_converted({folder!r}, torch.float32, print, lite=True)\n"
        "import litekernels.patches as P\n"
        "assert not any(m.startswith('transformers') for m in sys.modules), 'transformers imported'\n"
        f"hf, _ = loading._load_converted({folder!r}, torch.float32, print, lite=False)\n"
        "ids = torch.tensor([[1, 5, 6, 7, 8, 9]])\n"
        "ref = hf(ids, labels=ids).loss\n"
        "P.apply_lite_llama(hf)\n"
        "hf.train()\n"
        "out = hf(ids, labels=ids)\n"
        "assert hf.config._attn_implementation == 'lite_auto', hf.config._attn_implementation\n"
        "assert out.logits is None and torch.allclose(out.loss, ref, rtol=1e-5, atol=1e-6), (out.loss, ref)\n"
        "print('OK')\n"
    )
    r = run_fresh_python(code)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), (r.stdout[-2000:], r.stderr[-3000:])


@pytest.mark.gpu
@pytest.mark.parametrize("rope", [None, LLAMA3_ROPE], ids=["default", "llama3"])
def test_skeleton_on_cuda_with_graphs_equals_hf_model(converted, rope):
    """What the CLI does on a GPU: bf16, moved to CUDA, decode replayed from CUDA graphs (and the fused decode
    step where it is the default): same greedy tokens as transformers' model through the same runtime."""
    _, folder = converted(False, rope)
    (lite, _), (hf, _) = _both(folder, torch.bfloat16)
    lite, hf = lite.to("cuda"), hf.to("cuda")
    assert (lite.lm_head.weight is lite.model.embed_tokens.weight) is False
    prompts = [[1, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [3, 14, 5, 6]]
    outs = [generate_ids(m, prompts, 40, use_cuda_graph=True)[0] for m in (lite, hf)]
    assert torch.equal(outs[0], outs[1])
    from litekernels.generation.api import _state

    rts = [_state(m).runtime for m in (lite, hf)]
    assert all(rt.use_cuda_graph for rt in rts)
    # transformers 5.17 (the GPU machine) computes the rotary frequencies with a K=1 matmul, 5.24 with a product
    assert torch.equal(rts[0].cos, rts[1].cos) and torch.equal(rts[0].sin, rts[1].sin)
