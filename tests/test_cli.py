"""The `lite-llama` command's first seconds (issue 12, part 3): arguments are checked before the model loads,
a path that is not a model gets one line (exit code 2, no traceback), GGUF files are converted once into the
user's cache directory and loaded from there after.

Easy mistakes caught here: validating an argument only after a 25 s load, a transformers traceback for
`--model /etc/passwd`, a cache key that ignores a changed file, a half-written cache folder read as complete.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from litekernels import cli
from litekernels.generation import loading
from tests.helpers import tiny_llama_and_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def no_loading(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the model must not be loaded for this command")

    monkeypatch.setattr(loading, "load_model", refuse)


@pytest.mark.parametrize("args, words", [
    (["--temperature", "-0.5"], "--temperature: must be >= 0"),
    (["--temperature", "nan"], "--temperature: must be finite"),
    (["--top-p", "0"], r"--top-p: must be in \(0, 1\]"),
    (["--top-p", "1.5"], r"--top-p: must be in \(0, 1\]"),
    (["--top-k", "0"], "--top-k: must be >= 1"),
    (["--max-new-tokens", "0"], "--max-new-tokens: must be >= 1"),
    (["--max-new-tokens", "ten"], "--max-new-tokens: expected a positive integer"),
    (["--dtype", "float64"], "--dtype: invalid choice"),
])
@pytest.mark.parametrize("command", ["generate", "chat"])
def test_bad_arguments_fail_before_loading(no_loading, capsys, command, args, words):
    argv = [command] + (["hi"] if command == "generate" else []) + args
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    import re

    assert re.search(words, capsys.readouterr().err)


def test_empty_prompt_fails_before_loading(no_loading, capsys):
    assert cli.main(["generate", "  "]) == 2
    assert "non-empty prompts" in capsys.readouterr().err


def _one_line_error(capsys, argv):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lite-llama: "), err
    return err[0]


def test_not_a_model_gets_one_line(no_loading, capsys, tmp_path):
    assert "not a model" in _one_line_error(capsys, ["generate", "hi", "--model", "/etc/passwd"])
    assert "without config.json" in _one_line_error(capsys, ["generate", "hi", "--model", str(tmp_path)])
    fake = tmp_path / "weights.gguf"
    fake.write_bytes(b"PK\x03\x04 not gguf")
    assert "must be a GGUF file" in _one_line_error(capsys, ["chat", "--model", str(fake)])
    assert "does not exist" in _one_line_error(capsys, ["demo", "--model", str(tmp_path / "nothing")])


def test_broken_checkpoint_folder_is_one_clear_error(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(loading.NotAModelError, match="could not load .* as a model"):
        loading.load_model(str(tmp_path))


def test_not_a_model_from_the_shell_has_no_traceback():
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "litekernels", "generate", "hi", "--model", "/etc/passwd"],
                       check=False, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "not a model" in r.stderr
    print(f"rejected in {time.perf_counter() - t0:.1f} s")


# --------------------------------------------------------------------------------------------- the cache
def test_cache_location_and_key(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert loading.cache_root() == str(tmp_path / "xdg" / "lite-llama")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert loading.cache_root() == os.path.join(os.path.expanduser("~"), ".cache", "lite-llama")
    f = tmp_path / "m.Q4.gguf"
    f.write_bytes(b"GGUF" + bytes(100))
    key = loading.gguf_cache_key(str(f))
    assert key.startswith("m.Q4-") and len(key) == len("m.Q4-") + 16
    assert loading.gguf_cache_key(str(f)) == key  # stable
    os.utime(f, ns=(0, 10**9))
    key_mtime = loading.gguf_cache_key(str(f))
    f.write_bytes(b"GGUF" + bytes(99) + b"\x01")  # same size, new content (and mtime)
    os.utime(f, ns=(0, 10**9))
    key_content = loading.gguf_cache_key(str(f))
    assert len({key, key_mtime, key_content}) == 3


def _tiny_pair():
    return tiny_llama_and_tokenizer(["<unk>", "<s>", "</s>", "hello", "world"])


@pytest.fixture
def fake_gguf(tmp_path, monkeypatch):
    """A file that passes the GGUF magic check, and transformers' GGUF readers replaced by a tiny model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path / "models" / "tiny.gguf"
    path.parent.mkdir()
    path.write_bytes(b"GGUF" + bytes(64))
    model, tok = _tiny_pair()
    reads = {"gguf": 0}
    real_model, real_tok = AutoModelForCausalLM.from_pretrained, AutoTokenizer.from_pretrained

    def fake_model(folder, *a, **kw):
        if "gguf_file" in kw:
            reads["gguf"] += 1
            return model
        return real_model(folder, *a, **kw)

    def fake_tok(folder, *a, **kw):
        return tok if "gguf_file" in kw else real_tok(folder, *a, **kw)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", fake_tok)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return str(path), model, reads


def test_gguf_is_converted_once_then_loaded_from_the_cache(fake_gguf):
    path, original, reads = fake_gguf
    want = {k: v.clone() for k, v in original.state_dict().items()}
    lines = []
    m1, tok1 = loading.load_model(path, progress=lines.append)
    target = loading.converted_dir(path)
    assert any(line.startswith("converting tiny.gguf") and target in line for line in lines)
    assert os.path.isfile(os.path.join(target, "model.safetensors")) and reads["gguf"] == 1
    lines.clear()
    m2, tok2 = loading.load_model(path, progress=lines.append, dtype="bfloat16")
    assert reads["gguf"] == 1 and any("converted copy" in line for line in lines)
    assert m2.dtype == torch.bfloat16
    for k, v in want.items():
        assert torch.equal(m1.state_dict()[k], v)
        assert torch.equal(m2.state_dict()[k], v.to(torch.bfloat16)), k
    assert tok2("hello world")["input_ids"] == tok1("hello world")["input_ids"]


def test_interrupted_conversion_is_redone_and_unwritable_cache_still_loads(fake_gguf, tmp_path, monkeypatch):
    path, _, reads = fake_gguf
    target = loading.converted_dir(path)
    os.makedirs(target)
    (tmp_path / "cache" / "lite-llama" / os.path.basename(target) / "config.json").write_text("{}")
    loading.load_model(path)  # no completion marker: converted again, not read half-written
    assert reads["gguf"] == 1 and os.path.isfile(os.path.join(target, loading._DONE))
    monkeypatch.setenv("XDG_CACHE_HOME", "/proc/no-such-cache")  # cannot be created
    lines = []
    m, _ = loading.load_model(path, progress=lines.append)
    assert reads["gguf"] == 2 and any("could not cache" in line for line in lines)
    assert m is not None


@pytest.mark.slow
def test_bundled_model_second_run_reads_the_converted_copy(tmp_path):
    try:
        loading.smollm2_path()
    except FileNotFoundError as e:
        pytest.skip(f"bundled model not installed: {e}")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
    env.pop("TRITON_INTERPRET", None)  # the CLI's own path: compiled kernels on CUDA, else the reference ops
    cmd = [sys.executable, "-m", "litekernels", "generate", "What is the capital of France?", "--max-new-tokens", "8"]
    runs = []
    for _ in range(2):
        t0 = time.perf_counter()
        r = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
        runs.append((r, time.perf_counter() - t0))
        assert r.returncode == 0, r.stderr[-2000:]
    (first, t1), (second, t2) = runs
    assert "converting" in first.stderr and "converted copy" in second.stderr and "converting" not in second.stderr
    assert "mapping the weights" in second.stderr  # the memory-mapped copy, not transformers' loader
    assert "Paris" in first.stdout and first.stdout == second.stdout
    if not torch.cuda.is_available():  # README: "... fall back to the reference with one warning"
        assert second.stderr.count("fall back to the plain PyTorch reference") == 1
    print(f"first run {t1:.1f} s, second run {t2:.1f} s")
