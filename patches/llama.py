"""What lite-llama replaces in transformers' Llama modeling code.

A new architecture with the same module structure (see mistral.py, qwen2.py, qwen3.py) is one more `Architecture(...)` in a
file like this one, plus its import in `patches/__init__.py`; the walker that applies it is shared.
"""

from .registry import Architecture, register

LLAMA = register(
    Architecture(
        name="llama",
        modeling_module="transformers.models.llama.modeling_llama",
        pretrained_class="LlamaPreTrainedModel",
        rms_norm_class="LlamaRMSNorm",
        mlp_class="LlamaMLP",
        attention_class="LlamaAttention",
        rope_function="apply_rotary_pos_emb",
        causal_lm_class="LlamaForCausalLM",
    )
)
