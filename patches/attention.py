"""The transformers attention function "lite": prefill through flash_attention, one-token decode through
flash-decoding, anything else to Hugging Face's own eager attention.

Registered with `AttentionInterface` and, under the same name, `AttentionMaskInterface` (with HF's sdpa mask
builder). Without the mask registration `create_causal_mask` returns None for an unknown name and left padding
or static-cache decode silently give wrong tokens (see shared/notes). What arrives here as `attention_mask`:
  * None       -> plain causal (HF only skips the mask when Tq == Tk, or Tq == 1 with every key valid);
  * bool 4-D   -> True = attend; passed to the kernel as a mask (still combined with bottom-right causal, which
                  is implied by every causal mask HF builds, so the kernel can skip blocks past the diagonal);
  * float 4-D  -> an additive mask; used if it holds only 0 and "minus infinity", else HF eager attention.
"""

from __future__ import annotations

import torch

from litekernels.ops.attention import flash_attention
from litekernels.ops.decode_attention import decode_attention

NAME = "lite"


def _as_bool_mask(mask: torch.Tensor):
    if mask.dtype == torch.bool:
        return mask
    if not mask.is_floating_point():
        return mask != 0
    blocked = mask <= torch.finfo(mask.dtype).min / 2
    if bool(((mask == 0) | blocked).all()):
        return ~blocked
    return None  # a real additive bias: not ours to approximate


def lite_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                           sliding_window=None, softcap=None, **kwargs):
    """AttentionInterface contract: q (B,H,Tq,D), k/v (B,Hkv,Tk,D) -> ((B,Tq,H,D), None)."""
    causal = bool(getattr(module, "is_causal", True))
    mask = None if attention_mask is None else _as_bool_mask(attention_mask)
    # a window no shorter than the keys never cuts (query i sees keys j > i - window): Mistral passes its
    # config's window (4096 by default) on every call, so only a window that matters goes to HF eager
    windowed = sliding_window is not None and key.shape[2] > sliding_window
    unsupported = ((dropout and module.training) or windowed or softcap is not None
                   or (attention_mask is not None and mask is None) or query.dtype != key.dtype
                   or query.shape[-1] > 256)
    if unsupported:
        from transformers.models.llama.modeling_llama import eager_attention_forward
        if attention_mask is not None and attention_mask.dtype == torch.bool:
            # HF eager attention adds the mask to the scores: a bool mask (our registered sdpa mask builder)
            # must become additive first, or it is silently added as 0/1 (wrong sliding-window/padding logits)
            attention_mask = torch.zeros(attention_mask.shape, dtype=query.dtype, device=query.device).masked_fill(
                ~attention_mask, torch.finfo(query.dtype).min)
        return eager_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                       scaling=scaling, **kwargs)
    B, H, Tq, _ = query.shape
    Tk = key.shape[2]
    if Tq == 1 and not torch.is_grad_enabled() and (mask is None or mask.shape[1] == 1):
        lengths = torch.full((B,), Tk, dtype=torch.int32, device=query.device)
        key_mask = None if mask is None else mask[:, 0, 0, :].expand(B, Tk)
        out = decode_attention(query, key, value, lengths, scale=scaling, key_mask=key_mask)
    else:
        out = flash_attention(query, key, value, causal=causal, scale=scaling, attn_mask=mask)
    return out.transpose(1, 2).contiguous(), None


_registered = False


def register() -> str:
    """Register "lite" with transformers (idempotent); returns the name."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(NAME, lite_attention_forward)
        AttentionMaskInterface.register(NAME, sdpa_mask)
        _registered = True
    return NAME
