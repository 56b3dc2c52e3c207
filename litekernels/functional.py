"""The functions users call. Each checks its inputs and runs Triton or the PyTorch reference (see utils)."""

from .ops.attention import flash_attention
from .ops.cross_entropy import fused_linear_cross_entropy
from .ops.decode_attention import decode_attention
from .ops.linear import decode_linear
from .ops.rms_norm import fused_add_rms_norm, rms_norm
from .ops.rope import apply_rope, rope_cache_write
from .ops.swiglu import silu_mul

__all__ = ["rms_norm", "fused_add_rms_norm", "apply_rope", "rope_cache_write", "silu_mul", "flash_attention", "decode_attention",
           "decode_linear", "fused_linear_cross_entropy"]
