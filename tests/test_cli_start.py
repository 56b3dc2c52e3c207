"""The CLI's second run (issue 12, part 3): what it must not do, checked without timing anything.

A second run of a GGUF model reads the converted copy in the cache: it must not parse the GGUF file (here the
"GGUF" file is 68 bytes of nothing, so any attempt to parse it fails the load), must not import the GGUF reader
or AutoTokenizer's class lookup, and must hand the generation runtime weights it can fuse without copying
(memory-mapped, gate/up back to back in one storage). Also: the memory map is private (writes never reach the
cache file), a safetensors file the reader does not handle falls back to transformers' loader, and the CPU
thread choice follows --threads / OMP_NUM_THREADS / the load average.

Easy mistakes caught here: a cache hit that still opens the GGUF file with transformers, a memory map opened
shared (an optimizer step would rewrite the user's cache), tensors that share a storage but at the wrong offsets,
a tokenizer that loses the chat template, a thread cap that ignores --threads.
"""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch

from litekernels import cli
from litekernels.generation import loading
from tests.helpers import run_fresh_python, tiny_llama_and_tokenizer

TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }} {% endfor %}"


def _tiny_pair(chat_template=TEMPLATE):
    words = ["<unk>", "<s>", "</s>", "hello", "world", "[user]", "again"]
    return tiny_llama_and_tokenizer(words, chat_template, num_hidden_layers=2, max_position_embeddings=64,
                                    tie_word_embeddings=True)  # tied like SmolLM2


@pytest.fixture
def cached_gguf(tmp_path, monkeypatch):
    """A 'GGUF' file nothing can parse, and a converted copy of a tiny model already in the cache for it."""
    path = tmp_path / "models" / "tiny.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF" + bytes(64))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model, tok = _tiny_pair()
    loading._save_converted(model, tok, loading.converted_dir(str(path)), str(path))
    return str(path), model, tok


def test_second_run_reads_the_copy_without_parsing_the_gguf_file(cached_gguf):
    """The whole CLI in a fresh interpreter: loads, generates, and never touches the GGUF machinery."""
    path, _, _ = cached_gguf
    code = (
        "import json, sys\n"
        "from litekernels import cli\n"
        f"rc = cli.main(['generate', 'hello world', '--model', {path!r}, '--max-new-tokens', '2', '--raw'])\n"
        "bad = sorted(m for m in sys.modules if m == 'gguf' or m.startswith('gguf.')\n"
        "             or m in ('transformers.modeling_gguf_pytorch_utils', 'transformers.models.auto.tokenization_auto'))\n"
        "print('\\n' + json.dumps({'rc': rc, 'bad': bad}))\n"
    )
    r = run_fresh_python(code)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"rc": 0, "bad": []}, (out, r.stderr[-3000:])
    assert "from its converted copy" in r.stderr and "mapping the weights" in r.stderr
    assert "converting" not in r.stderr


def test_converted_copy_is_memory_mapped_and_fusable_without_copies(cached_gguf):
    from litekernels.generation.runtime import LlamaRuntime, _adjacent

    path, original, tok = cached_gguf
    lines = []
    model, tok2 = loading.load_model(path, progress=lines.append)
    assert [ln for ln in lines if "converted copy" in ln]
    for k, v in original.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert original.lm_head.weight is original.model.embed_tokens.weight
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied as in the original
    # one storage: the private map of model.safetensors
    storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert len(storages) == 1
    mlp = model.model.layers[1].mlp
    assert _adjacent([mlp.gate_proj.weight, mlp.up_proj.weight]) is not None  # the runtime fuses them in place
    before = {n: p.data_ptr() for n, p in model.named_parameters()}
    rt = LlamaRuntime(model, max_batch=1, max_seq_len=16)
    for name, p in model.named_parameters():
        if "gate_proj" in name or "up_proj" in name:
            assert p.data_ptr() == before[name], f"{name} was copied"
    assert rt.layers[1].gu.weight.untyped_storage().data_ptr() == storages.pop()
    # the tokenizer: a plain fast tokenizer read from tokenizer.json, chat template and special tokens kept
    assert type(tok2).__name__ in ("PreTrainedTokenizerFast", "TokenizersBackend")
    assert tok2.chat_template == TEMPLATE and tok2.eos_token == "</s>"
    assert tok2("hello world again")["input_ids"] == tok("hello world again")["input_ids"]
    msgs = [{"role": "user", "content": "hello"}]
    assert tok2.apply_chat_template(msgs, tokenize=False) == tok.apply_chat_template(msgs, tokenize=False)


def test_writes_to_the_mapped_weights_never_reach_the_cache_file(cached_gguf):
    from safetensors import safe_open

    path, original, _ = cached_gguf
    model, _ = loading.load_model(path)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.add_(1.0)  # e.g. an optimizer step
    model2, _ = loading.load_model(path)
    want = original.model.layers[0].mlp.down_proj.weight
    assert torch.equal(model2.model.layers[0].mlp.down_proj.weight, want)
    with safe_open(os.path.join(loading.converted_dir(path), "model.safetensors"), "pt") as f:
        assert torch.equal(f.get_tensor("model.layers.0.mlp.down_proj.weight"), want)


def test_other_dtypes_and_unhandled_files(tmp_path):
    from safetensors.torch import save_file

    tensors = {"a": torch.randn(3, 5), "b": torch.randn(7).to(torch.bfloat16), "c": torch.randn(2, 2, 3).half()}
    f = tmp_path / "m.safetensors"
    save_file(tensors, str(f))
    got = loading._mapped_state_dict(str(f))
    assert set(got) == set(tensors)
    for k, v in tensors.items():
        assert got[k].dtype == v.dtype and torch.equal(got[k], v), k
    save_file({"i": torch.arange(4, dtype=torch.int8)}, str(tmp_path / "int8.safetensors"))
    assert loading._mapped_state_dict(str(tmp_path / "int8.safetensors")) is None  # dtype it does not map
    (tmp_path / "short.safetensors").write_bytes(b"\x05")
    assert loading._mapped_state_dict(str(tmp_path / "short.safetensors")) is None
    header = json.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    (tmp_path / "cut.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(8))  # data cut
    assert loading._mapped_state_dict(str(tmp_path / "cut.safetensors")) is None
    for bad in ({"x": 5}, {"x": {"dtype": "F32"}}, [1, 2]):  # not the header the format defines
        header = json.dumps(bad).encode()
        (tmp_path / "odd.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
        assert loading._mapped_state_dict(str(tmp_path / "odd.safetensors")) is None, bad


def test_unhandled_weights_file_falls_back_to_transformers(cached_gguf, monkeypatch):
    path, original, _ = cached_gguf
    monkeypatch.setattr(loading, "_mapped_state_dict", lambda p: None)
    model, _ = loading.load_model(path)
    for k, v in original.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_bf16_load_of_the_copy(cached_gguf):
    path, original, _ = cached_gguf
    model, _ = loading.load_model(path, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    assert torch.equal(model.model.layers[1].self_attn.q_proj.weight,
                       original.model.layers[1].self_attn.q_proj.weight.to(torch.bfloat16))


# ------------------------------------------------------------------------------------------------ CPU threads
class _Args:
    def __init__(self, threads=None):
        self.threads = threads


@pytest.fixture
def thread_calls(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    return calls


@pytest.mark.parametrize("load, want", [(0.2, []), (0.4, []), (0.6, [1]), (1.0, [1]), (6.5, [1])])
def test_cpu_threads_follow_the_free_cores(thread_calls, monkeypatch, capsys, load, want):
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    cli._cpu_threads(_Args())
    assert thread_calls == want
    err = capsys.readouterr().err
    assert ("using 1 of 2 CPU threads" in err) == bool(want)


def test_cpu_threads_explicit_choices_win(thread_calls, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 9.0, 9.0))
    cli._cpu_threads(_Args(threads=2))
    assert thread_calls == [2]
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    cli._cpu_threads(_Args())
    assert thread_calls == [2]  # the user's OMP_NUM_THREADS is left alone


def test_threads_argument_is_checked_before_loading(monkeypatch, capsys):
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("loaded"))
    with pytest.raises(SystemExit) as e:
        cli.main(["generate", "hi", "--threads", "0"])
    assert e.value.code == 2 and "--threads: must be >= 1" in capsys.readouterr().err


def test_mapped_model_saves_and_reloads(cached_gguf, tmp_path):
    """Every parameter is a view of one storage (the map): save_pretrained must still write each one."""
    from transformers import AutoModelForCausalLM

    path, original, _ = cached_gguf
    model, _ = loading.load_model(path)
    model.save_pretrained(tmp_path / "saved")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    for k, v in original.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_direct_tokenizer_equals_from_pretrained(cached_gguf, monkeypatch):
    """The converted copy's tokenizer is built from its files directly; it must equal what from_pretrained gives,
    and a tokenizer_config.json with keys it does not know goes through AutoTokenizer instead."""
    from transformers import AutoTokenizer

    path, _, _ = cached_gguf
    folder = loading.converted_dir(path)
    direct, auto = loading._tokenizer(folder), AutoTokenizer.from_pretrained(folder)
    for text in ["hello world", "hello <s> world </s> again", "unknown words here", "[user] hello"]:
        ids = direct(text)["input_ids"]
        assert ids == auto(text)["input_ids"], text
        assert direct.decode(ids, skip_special_tokens=True) == auto.decode(ids, skip_special_tokens=True)
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "all_special_ids", "chat_template",
                 "model_max_length", "padding_side"):
        assert getattr(direct, attr) == getattr(auto, attr), attr
    config_path = os.path.join(folder, "tokenizer_config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["add_prefix_space"] = True  # a setting the direct path does not pass on
    with open(config_path, "w") as f:
        json.dump(config, f)
    calls = []
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda folder, **kw: calls.append(folder) or auto)
    assert loading._tokenizer(folder) is auto and calls == [folder]
