"""The table of supported architectures: names of the classes and functions lite-llama replaces."""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

ARCHITECTURES: dict[str, "Architecture"] = {}


@dataclasses.dataclass(frozen=True)
class Architecture:
    name: str
    modeling_module: str  # the transformers module that defines the classes below
    pretrained_class: str  # every model of the family subclasses it
    rms_norm_class: str
    mlp_class: str
    attention_class: str
    rope_function: str  # module-level function the attention forward looks up on each call
    # the causal-LM head class whose forward gets the fused linear cross-entropy; None: derived from
    # pretrained_class ("LlamaPreTrainedModel" -> "LlamaForCausalLM")
    causal_lm_class: str | None = None
    # --- how the generation runtime reads the weights (dotted attribute paths) ------------------------------
    # from the ...ForCausalLM model:
    layers: str = "model.layers"
    embed_tokens: str = "model.embed_tokens"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    rotary_emb: str = "model.rotary_emb"  # module called as rotary_emb(x, position_ids) -> (cos, sin)
    # from one decoder layer (each projection an nn.Linear; its bias, if any, is read from the same module):
    input_norm: str = "input_layernorm"
    post_attention_norm: str = "post_attention_layernorm"
    attention: str = "self_attn"  # the attention module (its `scaling` is the softmax scale)
    q_proj: str = "self_attn.q_proj"
    k_proj: str = "self_attn.k_proj"
    v_proj: str = "self_attn.v_proj"
    o_proj: str = "self_attn.o_proj"
    gate_proj: str = "mlp.gate_proj"
    up_proj: str = "mlp.up_proj"
    down_proj: str = "mlp.down_proj"
    q_norm: str | None = None  # per-head RMSNorm on q (over head_dim) before RoPE (Qwen3)
    k_norm: str | None = None  # per-head RMSNorm on k (over head_dim) before RoPE (Qwen3)
    # config -> the sliding window of the model's attention layers (None: full causal attention everywhere)
    sliding_window: Callable[[Any], int | None] | None = None

    def module(self):
        return importlib.import_module(self.modeling_module)

    def cls(self, attr: str):
        if attr == "causal_lm_class" and self.causal_lm_class is None:
            return getattr(self.module(), self.pretrained_class.replace("PreTrainedModel", "ForCausalLM"))
        return getattr(self.module(), getattr(self, attr))

    def window(self, config) -> int | None:
        """The smallest sliding window any attention layer of a model with this config uses, or None."""
        return None if self.sliding_window is None else self.sliding_window(config)


def get_path(obj, path: str):
    """obj.a.b.c for path "a.b.c"; numeric parts index a ModuleList."""
    for part in path.split("."):
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


def register(arch: Architecture) -> Architecture:
    ARCHITECTURES[arch.name] = arch
    return arch


def find_architecture(model) -> Architecture:
    """The Architecture whose pretrained class `model` is an instance of; else TypeError naming them all.

    A class may name its entry itself (`lite_architecture = "llama"`: the transformers-free weight container of
    litekernels/generation/lite_model.py), which is found without importing any transformers module."""
    named = getattr(type(model), "lite_architecture", None)
    if isinstance(named, str) and named in ARCHITECTURES:
        return ARCHITECTURES[named]
    for arch in ARCHITECTURES.values():
        try:
            base = arch.cls("pretrained_class")
        except (ImportError, AttributeError):
            continue
        if isinstance(model, base):
            return arch
    supported = ", ".join(f"{a.pretrained_class} ({a.name})" for a in ARCHITECTURES.values())
    raise TypeError(f"apply_lite_llama does not support {type(model).__name__}; supported model classes: "
                    f"subclasses of {supported}")
