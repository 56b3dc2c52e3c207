"""Rotary position embedding on q and k, forward and backward, with Hugging Face's cos/sin.

Math (HF apply_rotary_pos_emb, rotate_half convention, unsqueeze_dim=1): with x = [x1, x2] split in halves
and cos = [c1, c2], sin = [s1, s2] likewise,
    out1 = x1 * c1 - x2 * s1
    out2 = x2 * c2 + x1 * s2
The map is linear in x, so the gradient is its transpose:
    dx1 = do1 * c1 + do2 * s2
    dx2 = do2 * c2 - do1 * s1
Both halves of cos/sin are read, so any cos/sin HF produces (llama3 / yarn / dynamic scaling, any position ids,
attention scaling folded in) is applied exactly as given. cos/sin carry no gradient.

One program per (batch, token) rotates every q head and every k head of that token, so cos/sin are read once
per token. Inputs may be strided views (HF passes q as a transposed view); outputs keep the input's layout.
Usage: q_rot, k_rot = apply_rope(q, k, cos, sin)
"""

from __future__ import annotations

import torch

from .. import reference
from .._triton import tl, triton
from ..utils import check_same_device, check_tensor, use_triton


@triton.jit
def _rotate_heads(X, O, sx_b, sx_h, sx_t, so_b, so_h, so_t, b, t, n_heads, c1, c2, s1, s2,
                  HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, BACKWARD: tl.constexpr):
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    mask = (h[:, None] < n_heads) & (d[None, :] < HALF)
    x_ptr = X + b * sx_b + t * sx_t + h[:, None] * sx_h + d[None, :]
    o_ptr = O + b * so_b + t * so_t + h[:, None] * so_h + d[None, :]
    x1 = tl.load(x_ptr, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + HALF, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:
        o1 = x1 * c1 + x2 * s2
        o2 = x2 * c2 - x1 * s1
    else:
        o1 = x1 * c1 - x2 * s1
        o2 = x2 * c2 + x1 * s2
    tl.store(o_ptr, o1.to(O.dtype.element_ty), mask=mask)
    tl.store(o_ptr + HALF, o2.to(O.dtype.element_ty), mask=mask)


@triton.jit
def _rope_kernel(Q, K, QO, KO, COS, SIN, sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sqo_b, sqo_h, sqo_t,
                 sko_b, sko_h, sko_t, sc_b, sc_t, ss_b, ss_t, n_tokens, n_q_heads, n_k_heads,
                 HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_D: tl.constexpr,
                 BACKWARD: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // n_tokens
    t = pid % n_tokens
    d = tl.arange(0, BLOCK_D)
    dmask = d < HALF
    cos_ptr = COS + b * sc_b + t * sc_t + d
    sin_ptr = SIN + b * ss_b + t * ss_t + d
    c1 = tl.load(cos_ptr, mask=dmask, other=0.0).to(tl.float32)[None, :]
    c2 = tl.load(cos_ptr + HALF, mask=dmask, other=0.0).to(tl.float32)[None, :]
    s1 = tl.load(sin_ptr, mask=dmask, other=0.0).to(tl.float32)[None, :]
    s2 = tl.load(sin_ptr + HALF, mask=dmask, other=0.0).to(tl.float32)[None, :]
    _rotate_heads(Q, QO, sq_b, sq_h, sq_t, sqo_b, sqo_h, sqo_t, b, t, n_q_heads, c1, c2, s1, s2,
                  HALF, BLOCK_HQ, BLOCK_D, BACKWARD)
    _rotate_heads(K, KO, sk_b, sk_h, sk_t, sko_b, sko_h, sko_t, b, t, n_k_heads, c1, c2, s1, s2,
                  HALF, BLOCK_HK, BLOCK_D, BACKWARD)


def _unit_last(t):
    return t if t.stride(-1) == 1 else t.contiguous()


def _broadcast_cos(c, B, T, D):
    if c.dim() == 2:
        c = c.unsqueeze(0)
    return _unit_last(c).expand(B, T, D)


def rope_fwd(q, k, cos, sin, backward=False):
    """Rotate q (B,H,T,D) and k (B,Hkv,T,D); `backward=True` applies the transpose (used for gradients)."""
    q, k = _unit_last(q), _unit_last(k)
    B, HQ, T, D = q.shape
    HK = k.shape[1]
    cos, sin = _broadcast_cos(cos, B, T, D), _broadcast_cos(sin, B, T, D)
    qo, ko = torch.empty_like(q), torch.empty_like(k)  # same strides as the inputs (dense views stay dense)
    half = D // 2
    if B * T:
        _rope_kernel[(B * T,)](
            q, k, qo, ko, cos, sin,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            qo.stride(0), qo.stride(1), qo.stride(2), ko.stride(0), ko.stride(1), ko.stride(2),
            cos.stride(0), cos.stride(1), sin.stride(0), sin.stride(1), T, HQ, HK,
            HALF=half, BLOCK_HQ=triton.next_power_of_2(HQ), BLOCK_HK=triton.next_power_of_2(HK),
            BLOCK_D=triton.next_power_of_2(half), BACKWARD=backward, num_warps=4 if HQ * half <= 2048 else 8)
    return qo, ko


class LiteRoPEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, cos, sin):
        ctx.save_for_backward(cos, sin)
        return rope_fwd(q, k, cos, sin)

    @staticmethod
    def backward(ctx, dq, dk):
        cos, sin = ctx.saved_tensors
        dq, dk = rope_fwd(dq, dk, cos, sin, backward=True)
        return dq, dk, None, None


def _check(q, k, cos, sin):
    check_tensor("q", q, ndim=4)
    check_tensor("k", k, ndim=4)
    check_tensor("cos", cos, ndim=(2, 3))
    check_tensor("sin", sin, ndim=(2, 3))
    check_same_device(q=q, k=k, cos=cos, sin=sin)
    if q.dtype != k.dtype:
        raise TypeError(f"k has dtype {k.dtype} but q has {q.dtype}; they must match")
    B, _, T, D = q.shape
    if k.shape[0] != B or k.shape[2] != T or k.shape[3] != D:
        raise ValueError(f"k has shape {tuple(k.shape)}, expected (B={B}, Hkv, T={T}, D={D}) to match q {tuple(q.shape)}")
    if D % 2:
        raise ValueError(f"head_dim must be even for rotate_half RoPE, got {D}")
    for name, c in (("cos", cos), ("sin", sin)):
        if c.shape[-2:] != (T, D) or (c.dim() == 3 and c.shape[0] not in (1, B)):
            raise ValueError(f"{name} has shape {tuple(c.shape)}; expected (B|1, T={T}, D={D}) or (T, D)")


def apply_rope(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """(q_rot, k_rot) with HF's rotate_half RoPE; q (B,H,T,D), k (B,Hkv,T,D), cos/sin (B|1,T,D) or (T,D).

    Outputs have q's dtype and layout. Differentiable in q and k.
    """
    _check(q, k, cos, sin)
    if not use_triton(q):
        return reference.apply_rope(q, k, cos, sin)
    return LiteRoPEFunction.apply(q, k, cos, sin)
