"""Plain-PyTorch versions of every op: the tests' oracle and the CPU fallback.

Each function follows Hugging Face's Llama modeling code operation for operation, so that on the fallback path
a patched model gives the same numbers as an unpatched one. Tests call them on float32/float64 copies of
their inputs to get the "true" answer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF LlamaRMSNorm: variance in float32, normalised x cast back to x.dtype, then times weight."""
    in_dtype = x.dtype
    x32 = x.to(torch.float32) if x.dtype != torch.float64 else x
    var = x32.pow(2).mean(-1, keepdim=True)
    xn = x32 * torch.rsqrt(var + eps)
    return weight * xn.to(in_dtype)


def fused_add_rms_norm(x, residual, weight, eps):
    """(rms_norm(x + residual), x + residual): the residual stream update of a decoder layer."""
    h = x + residual
    return rms_norm(h, weight, eps), h


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(q, k, cos, sin):
    """HF apply_rotary_pos_emb with unsqueeze_dim=1: q (B,H,T,D), k (B,Hkv,T,D), cos/sin (B|1,T,D) or (T,D)."""
    if cos.dim() == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def rope_cache_write(qkv, cos_table, sin_table, positions, k_cache, v_cache, n_heads, n_kv_heads):
    """Decode step: q, k, v of one token per sequence from the fused projection; k (rotated) and v go to
    cache slot positions[b] of row b; returns rotated q (B, H, 1, D)."""
    B = qkv.shape[0]
    q, k, v = qkv.split([n_heads, n_kv_heads, n_kv_heads], dim=1)  # (B, heads, D)
    cos, sin = cos_table[positions][:, None], sin_table[positions][:, None]  # (B, 1, D)
    q, k = apply_rope(q[:, :, None], k[:, :, None], cos, sin)
    rows = torch.arange(B, device=qkv.device)
    k_cache[rows, :, positions] = k[:, :, 0].to(k_cache.dtype)
    v_cache[rows, :, positions] = v.to(v_cache.dtype)
    return q


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, as HF's LlamaMLP computes it."""
    return F.silu(gate) * up


def attention(q, k, v, *, causal=True, scale=None, attn_mask=None):
    """Math attention. q (B,H,Tq,D); k, v (B,Hkv,Tk,D) with H % Hkv == 0.

    causal: query i attends keys j <= i + (Tk - Tq) (bottom-right aligned, so a cached prefix is visible).
    attn_mask: bool, broadcastable to (B,H,Tq,Tk), True = attend. Rows with no key to attend give zeros.
    """
    B, H, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    g = H // Hkv
    k = k.repeat_interleave(g, dim=1)
    v = v.repeat_interleave(g, dim=1)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    allowed = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device)
    if causal:
        allowed = torch.ones(Tq, Tk, dtype=torch.bool, device=q.device).tril(Tk - Tq)
    allowed = allowed.expand(B, H, Tq, Tk)
    if attn_mask is not None:
        allowed = allowed & attn_mask.to(torch.bool)
    s = s.masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1)
    p = torch.nan_to_num(p, nan=0.0)  # rows with nothing to attend
    return torch.matmul(p, v)


def decode_attention(q, k_cache, v_cache, lengths, *, scale=None, key_mask=None):
    """Attention of Tq new queries per sequence over a static cache.

    q (B,H,Tq,D); k_cache, v_cache (B,Hkv,L,D); lengths (B,) int: valid cache entries per sequence, the new
    tokens included (they sit at positions lengths-Tq .. lengths-1). Query t sees keys j < lengths - Tq + t + 1.
    key_mask: optional bool (B,L), False marks cache slots to skip (left padding).
    """
    B, H, Tq, D = q.shape
    L = k_cache.shape[2]
    pos = torch.arange(L, device=q.device)
    limit = lengths.view(B, 1, 1) - Tq + 1 + torch.arange(Tq, device=q.device).view(1, Tq, 1)  # (B,Tq,1)
    allowed = (pos.view(1, 1, L) < limit).unsqueeze(1)  # (B,1,Tq,L)
    if key_mask is not None:
        allowed = allowed & key_mask.to(torch.bool).view(B, 1, 1, L)
    return attention(q, k_cache, v_cache, causal=False, scale=scale, attn_mask=allowed)


def fused_linear_cross_entropy(hidden, weight, labels, bias=None, *, ignore_index=-100, reduction="mean",
                               label_smoothing=0.0, softcap=None, z_loss=0.0, n_items=None):
    """cross_entropy(F.linear(hidden, weight, bias), labels) with the full logits, in float32 (float64 inputs
    stay float64). Same conventions as litekernels.fused_linear_cross_entropy: fp32 result; softcap
    cap*tanh(x/cap) before the loss; z_loss * logsumexp^2 per non-ignored row; mean divides by n_items or the
    number of non-ignored labels, and a mean over zero items is 0."""
    dt = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    logits = F.linear(hidden.to(dt), weight.to(dt), None if bias is None else bias.to(dt))
    logits = logits.reshape(-1, weight.shape[0])
    flat = labels.reshape(-1)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    rows = F.cross_entropy(logits, flat, ignore_index=ignore_index, reduction="none", label_smoothing=label_smoothing)
    valid = flat != ignore_index
    if z_loss:
        rows = rows + z_loss * torch.logsumexp(logits, dim=-1).pow(2) * valid
    if reduction == "none":
        return rows.view(labels.shape)
    total = rows.sum()
    if reduction == "sum":
        return total
    divisor = valid.sum() if n_items is None else torch.as_tensor(n_items, device=total.device)
    divisor = divisor.to(dt)
    return total / torch.where(divisor > 0, divisor, torch.ones_like(divisor))
