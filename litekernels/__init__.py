"""lite-llama: Triton kernels for Llama-family Hugging Face models.

    from litekernels.patches import apply_lite_llama
    apply_lite_llama(model)          # RMSNorm, RoPE, SiLU*mul, the loss and attention now run our kernels
                                     # (attention "auto": SDPA for unpadded GPU prefill/training, see patching.md)

Submodules: `functional` (ops as functions), `modules` (nn.Module wrappers), `reference` (plain PyTorch),
`patches` (Hugging Face integration), `generation` (static cache + CUDA-graph decode).
"""

from .functional import apply_rope, decode_attention, flash_attention, fused_add_rms_norm, rms_norm, silu_mul
from .functional import fused_linear_cross_entropy
from .modules import LiteMLP, LiteRMSNorm
from . import library  # noqa: F401,E402  (registers torch.ops.litekernels.*)
from .utils import backend_name

__version__ = "0.1.0"
__all__ = ["rms_norm", "fused_add_rms_norm", "apply_rope", "silu_mul", "flash_attention", "decode_attention",
           "fused_linear_cross_entropy",
           "LiteRMSNorm", "LiteMLP",
           "backend_name", "__version__"]
