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
from ..utils import SUPPORTED_DTYPES, check_same_device, check_tensor, on_same_device, tracing, unit_last, use_triton
from . import _launch as _L
from ._launch import (LOOKUP_ERRORS, PlanCache, PreparedLaunch, _grad_enabled, _is_compiling, _modes, hot_entry, launch,
                      out_strides)

_empty_like = torch.empty_like


@triton.jit
def _rotate_rows(x_ptr, o_ptr, sx_h, so_h, n_heads, c1, c2, s1, s2,
                 HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, BACKWARD: tl.constexpr):
    """Rotate n_heads rows of head_dim 2*HALF starting at x_ptr (row stride sx_h) into o_ptr (stride so_h)."""
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    mask = (h[:, None] < n_heads) & (d[None, :] < HALF)
    xp = x_ptr + h[:, None] * sx_h + d[None, :]
    op = o_ptr + h[:, None] * so_h + d[None, :]
    x1 = tl.load(xp, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(xp + HALF, mask=mask, other=0.0).to(tl.float32)
    if BACKWARD:
        o1 = x1 * c1 + x2 * s2
        o2 = x2 * c2 - x1 * s1
    else:
        o1 = x1 * c1 - x2 * s1
        o2 = x2 * c2 + x1 * s2
    tl.store(op, o1.to(o_ptr.dtype.element_ty), mask=mask)
    tl.store(op + HALF, o2.to(o_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _load_cos_sin(cos_ptr, sin_ptr, HALF: tl.constexpr, BLOCK_D: tl.constexpr):
    d = tl.arange(0, BLOCK_D)
    dmask = d < HALF
    c1 = tl.load(cos_ptr + d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    c2 = tl.load(cos_ptr + HALF + d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    s1 = tl.load(sin_ptr + d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    s2 = tl.load(sin_ptr + HALF + d, mask=dmask, other=0.0).to(tl.float32)[None, :]
    return c1, c2, s1, s2


@triton.jit
def _rope_kernel(Q, K, QO, KO, COS, SIN, sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sqo_b, sqo_h, sqo_t,
                 sko_b, sko_h, sko_t, sc_b, sc_t, ss_b, ss_t, n_tokens, n_q_heads, n_k_heads,
                 HALF: tl.constexpr, BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_D: tl.constexpr,
                 BACKWARD: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = pid // n_tokens
    t = pid % n_tokens
    c1, c2, s1, s2 = _load_cos_sin(COS + b * sc_b + t * sc_t, SIN + b * ss_b + t * ss_t, HALF, BLOCK_D)
    _rotate_rows(Q + b * sq_b + t * sq_t, QO + b * sqo_b + t * sqo_t, sq_h, sqo_h, n_q_heads, c1, c2, s1, s2,
                 HALF, BLOCK_HQ, BLOCK_D, BACKWARD)
    _rotate_rows(K + b * sk_b + t * sk_t, KO + b * sko_b + t * sko_t, sk_h, sko_h, n_k_heads, c1, c2, s1, s2,
                 HALF, BLOCK_HK, BLOCK_D, BACKWARD)


@triton.jit
def _rope_cache_write_kernel(QKV, POS, COS, SIN, QO, KC, VC, s_qkv_b, s_cos_t, sqo_b, sqo_h,
                             skc_b, skc_h, skc_t, svc_b, svc_h, svc_t, n_q_heads, n_k_heads,
                             HALF: tl.constexpr, D: tl.constexpr, BLOCK_HQ: tl.constexpr,
                             BLOCK_HK: tl.constexpr, BLOCK_D: tl.constexpr):
    """Decode: one program per sequence b. qkv row = [q heads | k heads | v heads] x head_dim (contiguous);
    rotates q into QO, rotates k into the cache slot POS[b], copies v into its slot: one launch per layer."""
    b = tl.program_id(0).to(tl.int64)
    pos = tl.load(POS + b).to(tl.int64)
    c1, c2, s1, s2 = _load_cos_sin(COS + pos * s_cos_t, SIN + pos * s_cos_t, HALF, BLOCK_D)
    row = QKV + b * s_qkv_b
    _rotate_rows(row, QO + b * sqo_b, D, sqo_h, n_q_heads, c1, c2, s1, s2, HALF, BLOCK_HQ, BLOCK_D, False)
    _rotate_rows(row + n_q_heads * D, KC + b * skc_b + pos * skc_t, D, skc_h, n_k_heads, c1, c2, s1, s2,
                 HALF, BLOCK_HK, BLOCK_D, False)
    h = tl.arange(0, BLOCK_HK)
    d = tl.arange(0, 2 * BLOCK_D)
    mask = (h[:, None] < n_k_heads) & (d[None, :] < D)
    v = tl.load(row + (n_q_heads + n_k_heads) * D + h[:, None] * D + d[None, :], mask=mask, other=0.0)
    tl.store(VC + b * svc_b + pos * svc_t + h[:, None] * svc_h + d[None, :], v.to(VC.dtype.element_ty), mask=mask)


def _cos_strides(c, B):
    """(c with unit last stride, batch stride, token stride) of cos/sin (T, D) or (1|B, T, D): the strides of
    its view expanded to (B, T, D), without building the view (a size-1 batch broadcast to B > 1: stride 0)."""
    c = unit_last(c)
    st = c.stride()
    if len(st) == 2:  # (T, D): unsqueeze(0) gives batch stride T * stride_t
        return c, (c.shape[0] * st[0] if B == 1 else 0), st[0]
    return c, (st[0] if c.shape[0] == B else 0), st[1]


def _fwd_key(q, k, cos, sin, backward=False):
    """The plan key of a launch: every fact of the inputs that the checks, the settings and the launch read."""
    return (q.shape, q.stride(), q.dtype, q.device, k.shape, k.stride(), k.dtype, k.device,
            cos.shape, cos.stride(), cos.dtype, cos.device, sin.shape, sin.stride(), sin.dtype, sin.device, backward)


_FWD_PLANS = PlanCache(_fwd_key, hot_slots=1)
_HOT = _FWD_PLANS.hot  # [apply_rope]: the forward plan the public call took last (hot_entry), tested by one C call


class _RopePlan:
    """The launch for q, k, cos, sin of one plan key (all with unit last stride)."""
    __slots__ = ("launch", "hot", "hot_builds")

    def __init__(self, q, k, cos, sin, backward):
        _check(q, k, cos, sin)  # a plan exists only for valid inputs: its key proves a later call's checks
        self.hot, self.hot_builds = None, 0  # hot_entry's tuple for this plan, and how often it was made
        B, HQ, T, D = q.shape
        HK = k.shape[1]
        _, scb, sct = _cos_strides(cos, B)
        _, ssb, sst = _cos_strides(sin, B)
        half, block_hq, block_hk, block_d, warps = _settings(HQ, HK, D)
        sq, sk = q.stride(), k.stride()
        sqo, sko = out_strides(True, q, None), out_strides(True, k, None)  # what __call__'s empty_like outputs get
        self.launch = None if not B * T else PreparedLaunch(
            _rope_kernel, (B * T,),
            (sq[0], sq[1], sq[2], sk[0], sk[1], sk[2], sqo[0], sqo[1], sqo[2], sko[0], sko[1], sko[2],
             scb, sct, ssb, sst, T, HQ, HK),
            dict(HALF=half, BLOCK_HQ=block_hq, BLOCK_HK=block_hk, BLOCK_D=block_d, BACKWARD=backward, num_warps=warps))

    def __call__(self, q, k, cos, sin):
        qo, ko = _empty_like(q), _empty_like(k)  # same strides as the inputs (dense views stay dense)
        if self.launch is not None:
            self.launch(q, k, qo, ko, cos, sin)
        return qo, ko


def _plan_of(q, k, cos, sin):
    """_FWD_PLANS.lookup(q, k, cos, sin) in one frame: the same tests and the key of _fwd_key (backward=False), after
    the hot plan's one-call test (as rms_norm's: facts_check covers every tensor fact of the key)."""
    if not _L._plans_on or _is_compiling() or (_modes is not None and _modes()):
        return None
    try:
        check, _, grad_test, hot = _HOT[0]
        if check(q, k, cos, sin) and not (grad_test and _grad_enabled()):
            return hot
        if _grad_enabled() and (q.requires_grad or k.requires_grad or cos.requires_grad or sin.requires_grad):
            return None
        plan = _FWD_PLANS.plans.get((q.shape, q.stride(), q.dtype, q.device, k.shape, k.stride(), k.dtype, k.device,
                                     cos.shape, cos.stride(), cos.dtype, cos.device,
                                     sin.shape, sin.stride(), sin.dtype, sin.device, False))
        if plan is not None:
            _HOT[0] = hot_entry(plan, plan, 0.0, q, k, cos, sin)  # no scalar argument: a constant stands for eps
        return plan
    except LOOKUP_ERRORS:
        return None  # not a tensor, unhashable, no strides: the checked path names the problem


def rope_fwd(q, k, cos, sin, backward=False):
    """Rotate q (B,H,T,D) and k (B,Hkv,T,D); `backward=True` applies the transpose (used for gradients)."""
    q, k, cos, sin = unit_last(q), unit_last(k), unit_last(cos), unit_last(sin)
    key = _fwd_key(q, k, cos, sin, backward)
    plan = _FWD_PLANS.get_or_build(key, _RopePlan, q, k, cos, sin, backward)
    return plan(q, k, cos, sin)


_SETTINGS: dict = {}


def _settings(HQ, HK, D):
    """(HALF, BLOCK_HQ, BLOCK_HK, BLOCK_D, num_warps) of the rope kernel, cached per head counts and head_dim."""
    key = (HQ, HK, D)
    s = _SETTINGS.get(key)
    if s is None:
        half = D // 2
        s = _SETTINGS[key] = (half, triton.next_power_of_2(HQ), triton.next_power_of_2(HK),
                              triton.next_power_of_2(half), 4 if HQ * half <= 2048 else 8)
    return s


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
    T = torch.Tensor
    # one compound test on the common path; the named checks below run only when it fails
    if (isinstance(q, T) and isinstance(k, T) and isinstance(cos, T) and isinstance(sin, T)
            and q.dim() == 4 and k.dim() == 4 and q.dtype in SUPPORTED_DTYPES and k.dtype == q.dtype
            and cos.dtype in SUPPORTED_DTYPES and sin.dtype in SUPPORTED_DTYPES
            and on_same_device(k, q) and on_same_device(cos, q) and on_same_device(sin, q)):
        qs, ks, cs, ss = q.shape, k.shape, cos.shape, sin.shape
        if (ks[0] == qs[0] and ks[2] == qs[2] and ks[3] == qs[3] and qs[3] % 2 == 0
                and cs[-2:] == qs[2:] and ss[-2:] == qs[2:]
                and (len(cs) == 2 or (len(cs) == 3 and cs[0] in (1, qs[0])))
                and (len(ss) == 2 or (len(ss) == 3 and ss[0] in (1, qs[0])))):
            return
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
    plan = _plan_of(q, k, cos, sin)  # a repeated call without autograd: its inputs passed the checks
    if plan is not None:
        return plan(q, k, cos, sin)
    _check(q, k, cos, sin)
    return _apply_rope(q, k, cos, sin)


def apply_rope_unchecked(q, k, cos, sin):
    """`apply_rope` without the input checks, for callers whose tensors are valid by construction (the HF patch)."""
    plan = _plan_of(q, k, cos, sin)
    if plan is not None:
        return plan(q, k, cos, sin)
    return _apply_rope(q, k, cos, sin)


def _apply_rope(q, k, cos, sin):
    if tracing():
        return tuple(torch.ops.litekernels.apply_rope(q, k, cos, sin))
    if not use_triton(q):
        return reference.apply_rope(q, k, cos, sin)
    if not (torch.is_grad_enabled()
            and (q.requires_grad or k.requires_grad or cos.requires_grad or sin.requires_grad)):
        return rope_fwd(q, k, cos, sin)  # no autograd node needed
    return LiteRoPEFunction.apply(q, k, cos, sin)


def rope_cache_write_fwd(qkv, cos_table, sin_table, positions, k_cache, v_cache, n_heads: int, n_kv_heads: int):
    """Launch the decode-step kernel (inputs already checked by `rope_cache_write`)."""
    B, _, D = qkv.shape
    qkv = qkv if qkv.stride(-1) == 1 and qkv.stride(1) == D else qkv.contiguous()
    q = torch.empty((B, n_heads, 1, D), dtype=qkv.dtype, device=qkv.device)
    half = D // 2
    launch(_rope_cache_write_kernel, (B,),
           qkv, positions, cos_table, sin_table, q, k_cache, v_cache, qkv.stride(0), cos_table.stride(0),
           q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
           v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), n_heads, n_kv_heads,
           HALF=half, D=D, BLOCK_HQ=triton.next_power_of_2(n_heads), BLOCK_HK=triton.next_power_of_2(n_kv_heads),
           BLOCK_D=triton.next_power_of_2(half), num_warps=4)
    return q


def rope_cache_write(qkv, cos_table, sin_table, positions, k_cache, v_cache, n_heads: int, n_kv_heads: int):
    """Decode step: rotate q and k of one new token per sequence and write k, v into the static cache.

    qkv: (B, H + 2*Hkv, D), the fused projection's output (q heads, then k heads, then v heads);
    cos_table, sin_table: (L, D), cos/sin per position; positions: (B,) int64 on the device, the slot of
    each sequence's new token; k_cache, v_cache: (B, Hkv, L, D). Returns q rotated, (B, H, 1, D). No autograd.
    """
    check_tensor("qkv", qkv, ndim=3)
    B, n_rows, D = qkv.shape
    if n_rows != n_heads + 2 * n_kv_heads:
        raise ValueError(f"qkv has {n_rows} head rows; expected n_heads + 2 * n_kv_heads = {n_heads + 2 * n_kv_heads}")
    if k_cache.shape[0] < B or k_cache.shape[1] != n_kv_heads or k_cache.shape[3] != D or k_cache.shape != v_cache.shape:
        raise ValueError(f"caches of shape {tuple(k_cache.shape)}/{tuple(v_cache.shape)} do not fit qkv {tuple(qkv.shape)}")
    if tracing():
        return torch.ops.litekernels.rope_cache_write(qkv, cos_table, sin_table, positions, k_cache, v_cache, n_heads,
                                                      n_kv_heads)
    if not use_triton(qkv):
        return reference.rope_cache_write(qkv, cos_table, sin_table, positions, k_cache, v_cache, n_heads, n_kv_heads)
    return rope_cache_write_fwd(qkv, cos_table, sin_table, positions, k_cache, v_cache, n_heads, n_kv_heads)

