"""Qwen3 (`Qwen3ForCausalLM`): Llama's structure plus a per-head RMSNorm on q and k before RoPE.

`q_norm` / `k_norm` are instances of Qwen3RMSNorm over head_dim, so the patch's RMSNorm replacement covers
them; the runtime applies them to q and k right after the q/k/v GEMM. Sliding-window layers as in Qwen2.
"""

from .qwen2 import _sliding_window
from .registry import Architecture, register

QWEN3 = register(
    Architecture(
        name="qwen3",
        modeling_module="transformers.models.qwen3.modeling_qwen3",
        pretrained_class="Qwen3PreTrainedModel",
        rms_norm_class="Qwen3RMSNorm",
        mlp_class="Qwen3MLP",
        attention_class="Qwen3Attention",
        rope_function="apply_rotary_pos_emb",
        q_norm="self_attn.q_norm",
        k_norm="self_attn.k_norm",
        sliding_window=_sliding_window,
    )
)
