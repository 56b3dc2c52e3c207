"""Qwen2 / Qwen2.5 (`Qwen2ForCausalLM`): Llama's structure plus q/k/v biases; tied or untied embeddings.

Its layers may use sliding-window attention (`use_sliding_window=True` marks the layers from
`max_window_layers` on as "sliding_attention" in `config.layer_types`); the generation runtime refuses a cache
longer than the window.
"""

from .registry import Architecture, register


def _sliding_window(config):
    if "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        return getattr(config, "sliding_window", None)
    return None


QWEN2 = register(
    Architecture(
        name="qwen2",
        modeling_module="transformers.models.qwen2.modeling_qwen2",
        pretrained_class="Qwen2PreTrainedModel",
        rms_norm_class="Qwen2RMSNorm",
        mlp_class="Qwen2MLP",
        attention_class="Qwen2Attention",
        rope_function="apply_rotary_pos_emb",
        sliding_window=_sliding_window,
    )
)
