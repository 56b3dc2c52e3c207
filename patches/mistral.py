"""Mistral (`MistralForCausalLM`): Llama's structure; every layer attends within `config.sliding_window`
tokens (None: full causal attention). The patched attention sends a window shorter than the keys to Hugging
Face's eager code; the generation runtime refuses a cache longer than the window.
"""

from .registry import Architecture, register


def _sliding_window(config):
    return getattr(config, "sliding_window", None)


MISTRAL = register(
    Architecture(
        name="mistral",
        modeling_module="transformers.models.mistral.modeling_mistral",
        pretrained_class="MistralPreTrainedModel",
        rms_norm_class="MistralRMSNorm",
        mlp_class="MistralMLP",
        attention_class="MistralAttention",
        rope_function="apply_rotary_pos_emb",
        sliding_window=_sliding_window,
    )
)
