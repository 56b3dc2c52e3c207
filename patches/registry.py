"""The table of supported architectures: names of the classes and functions lite-llama replaces."""

from __future__ import annotations

import dataclasses
import importlib

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

    def module(self):
        return importlib.import_module(self.modeling_module)

    def cls(self, attr: str):
        if attr == "causal_lm_class" and self.causal_lm_class is None:
            return getattr(self.module(), self.pretrained_class.replace("PreTrainedModel", "ForCausalLM"))
        return getattr(self.module(), getattr(self, attr))


def register(arch: Architecture) -> Architecture:
    ARCHITECTURES[arch.name] = arch
    return arch


def find_architecture(model) -> Architecture:
    """The Architecture whose pretrained class `model` is an instance of; TypeError naming the supported ones."""
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
