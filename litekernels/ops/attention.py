"""Flash-attention for prefill and training: causal, GQA, arbitrary boolean masks, forward and backward.

Shapes: q (B, H, Tq, D); k, v (B, Hkv, Tk, D) with H % Hkv == 0. Query head h reads KV head h // (H // Hkv)
inside the kernel (no repeat_kv copy). Causal attention is bottom-right aligned: query i sees keys
j <= i + (Tk - Tq), so a cached prefix (Tk > Tq) is visible to every query. An optional boolean mask,
broadcastable to (B, H, Tq, Tk) with True = attend, covers left padding and anything HF builds; a key-padding
mask (B, Tk) is that with two broadcast dimensions. A query row with no key to attend outputs zeros.

Math, per query row, in float32 with an online softmax (scores in log2 units, log2(e) folded into the scale):
    s_j = scale * q . k_j ;  m = max_j s_j ;  l = sum_j exp(s_j - m) ;  o = sum_j exp(s_j - m) v_j / l
Forward saves lse = m + log l. Backward (FlashAttention-2): with p_j = exp(s_j - lse) and
delta = rowsum(dO * O):  dv_j = sum_i p_ij dO_i ;  ds_ij = p_ij (dO_i . v_j - delta_i) ;
dq_i = scale * sum_j ds_ij k_j ;  dk_j = scale * sum_i ds_ij q_i, summed over the query heads of a KV group
inside one program (no atomics, deterministic).

The forward splits the key loop into blocks every query of the tile sees (no mask arithmetic) and the band
on the diagonal; blocks past the band are never loaded. Ideas from the Triton fused-attention tutorial and
FlashAttention-2 (Dao, 2023); the code is our own.
Usage: o = flash_attention(q, k, v, causal=True)
"""

from __future__ import annotations

import math

import torch

from .. import reference
from .._triton import tl, triton
from ..utils import INTERPRET, check_same_device, check_tensor, unit_last, use_triton

LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    """tl.dot with fp32 accumulation; IEEE: exact fp32 products (no tf32), operands upcast first."""
    if IEEE:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _online_softmax_step(acc, m_i, l_i, s, v, IEEE: tl.constexpr):
    """Fold one tile of log2-scaled scores s (rows x keys, -inf = masked) and its values v into the running
    (acc, max, sum); rows that have seen only -inf keep max -inf and sum 0."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.math.exp2(m_i - m_safe)
    p = tl.math.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
    return acc, m_new, l_i


@triton.jit
def _finish_rows(acc, m_i, l_i, EMPTY_LSE):
    """(output, log2-sum-exp) of the finished rows; a row with no key gets output 0 and lse EMPTY_LSE."""
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    return acc / l_safe[:, None], tl.where(empty, EMPTY_LSE, m_i + tl.math.log2(l_safe))


@triton.jit
def _query_tile(H, GROUP, BLOCK_M: tl.constexpr):
    """Program (query block, batch*head) -> (batch*head, batch, head, its KV head, first query row)."""
    pid_bh = tl.program_id(1).to(tl.int64)
    h = pid_bh % H
    return pid_bh, pid_bh // H, h, h // GROUP, tl.program_id(0) * BLOCK_M


@triton.jit
def _attn_fwd_inner(acc, m_i, l_i, q, K, V, MASK, k_base, v_base, mask_base, stride_kn, stride_vn, stride_mn,
                    offs_m, offs_n, offs_d, lo, hi, Tk, D, OFFSET, qk_scale,
                    MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
                    BLOCK_N: tl.constexpr, IEEE: tl.constexpr):
    for start_n in range(lo, hi, BLOCK_N):
        n = start_n + offs_n
        kt = tl.load(K + k_base + n[None, :] * stride_kn + offs_d[:, None],
                     mask=(n[None, :] < Tk) & (offs_d[:, None] < D), other=0.0)
        s = _dot(q, kt, IEEE) * qk_scale
        if MASKED:
            valid = n[None, :] < Tk
            if CAUSAL:
                valid = valid & (n[None, :] <= offs_m[:, None] + OFFSET)
            if HAS_MASK:
                mk = tl.load(MASK + mask_base + n[None, :] * stride_mn, mask=valid, other=0)
                valid = valid & (mk != 0)
            s = tl.where(valid, s, float("-inf"))
        v = tl.load(V + v_base + n[:, None] * stride_vn + offs_d[None, :],
                    mask=(n[:, None] < Tk) & (offs_d[None, :] < D), other=0.0)
        acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, s, v, IEEE)
    return acc, m_i, l_i


@triton.jit
def _attn_fwd_kernel(Q, K, V, O, LSE, MASK,
                     sq_b, sq_h, sq_m, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, so_b, so_h, so_m,
                     smk_b, smk_h, smk_m, smk_n,
                     H, GROUP, Tq, Tk, D, qk_scale,
                     CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    pid_bh, b, h, kvh, m_start = _query_tile(H, GROUP, BLOCK_M)
    OFFSET = Tk - Tq
    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = tl.load(Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_m + offs_d[None, :],
                mask=(offs_m[:, None] < Tq) & (offs_d[None, :] < D), other=0.0)
    k_base = b * sk_b + kvh * sk_h
    v_base = b * sv_b + kvh * sv_h
    mask_base = b * smk_b + h * smk_h + offs_m[:, None] * smk_m
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    # keys [0, full_hi) are visible to every query of this tile; [full_hi, hi) need the mask
    if CAUSAL:
        hi = tl.minimum(Tk, m_start + BLOCK_M + OFFSET)
        full_hi = tl.minimum((m_start + OFFSET + 1) // BLOCK_N * BLOCK_N, Tk // BLOCK_N * BLOCK_N)
    else:
        hi = Tk
        full_hi = Tk // BLOCK_N * BLOCK_N
    if HAS_MASK:
        full_hi = 0
    full_hi = tl.maximum(full_hi, 0)
    acc, m_i, l_i = _attn_fwd_inner(acc, m_i, l_i, q, K, V, MASK, k_base, v_base, mask_base, sk_n, sv_n, smk_n,
                                    offs_m, offs_n, offs_d, 0, full_hi, Tk, D, OFFSET, qk_scale,
                                    False, CAUSAL, HAS_MASK, BLOCK_N, IEEE)
    acc, m_i, l_i = _attn_fwd_inner(acc, m_i, l_i, q, K, V, MASK, k_base, v_base, mask_base, sk_n, sv_n, smk_n,
                                    offs_m, offs_n, offs_d, full_hi, hi, Tk, D, OFFSET, qk_scale,
                                    True, CAUSAL, HAS_MASK, BLOCK_N, IEEE)
    # an empty row stores lse = +inf, so the backward's exp2(s - lse) is 0 there
    out, lse = _finish_rows(acc, m_i, l_i, float("inf"))
    row_ok = offs_m < Tq
    tl.store(LSE + pid_bh * Tq + offs_m, lse, mask=row_ok)
    tl.store(O + b * so_b + h * so_h + offs_m[:, None] * so_m + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d[None, :] < D))


@triton.jit
def _scores_bwd(q, kt, lse, offs_m, n, MASK, mask_base, stride_mn, Tq, Tk, OFFSET, qk_scale,
                CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, IEEE: tl.constexpr):
    """p (BLOCK_M, BLOCK_N) of the forward, recomputed from q, k and the saved lse; invalid entries are 0."""
    s = _dot(q, kt, IEEE) * qk_scale
    valid = (n[None, :] < Tk) & (offs_m[:, None] < Tq)
    if CAUSAL:
        valid = valid & (n[None, :] <= offs_m[:, None] + OFFSET)
    if HAS_MASK:
        mk = tl.load(MASK + mask_base + n[None, :] * stride_mn, mask=valid, other=0)
        valid = valid & (mk != 0)
    return tl.where(valid, tl.math.exp2(s - lse[:, None]), 0.0)


@triton.jit
def _attn_bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, MASK,
                          sq_b, sq_h, sq_m, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, sdo_b, sdo_h, sdo_m,
                          sdk_b, sdk_h, sdk_n, sdv_b, sdv_h, sdv_n, smk_b, smk_h, smk_m, smk_n,
                          H, HKV, GROUP, Tq, Tk, D, scale, qk_scale,
                          CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // HKV
    kvh = pid_bh % HKV
    OFFSET = Tk - Tq
    n_start = pid_n * BLOCK_N
    n = n_start + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_mb = tl.arange(0, BLOCK_M)
    kv_mask = (n[:, None] < Tk) & (offs_d[None, :] < D)
    k = tl.load(K + b * sk_b + kvh * sk_h + n[:, None] * sk_n + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + b * sv_b + kvh * sv_h + n[:, None] * sv_n + offs_d[None, :], mask=kv_mask, other=0.0)
    kt = tl.trans(k)
    vt = tl.trans(v)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    lo = 0
    if CAUSAL:
        lo = tl.maximum(n_start - OFFSET, 0) // BLOCK_M * BLOCK_M
    for g in range(0, GROUP):
        h = kvh * GROUP + g
        for m_start in range(lo, Tq, BLOCK_M):
            offs_m = m_start + offs_mb
            row_mask = (offs_m[:, None] < Tq) & (offs_d[None, :] < D)
            q = tl.load(Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_m + offs_d[None, :], mask=row_mask, other=0.0)
            do = tl.load(DO + b * sdo_b + h * sdo_h + offs_m[:, None] * sdo_m + offs_d[None, :], mask=row_mask,
                         other=0.0)
            lse = tl.load(LSE + (b * H + h) * Tq + offs_m, mask=offs_m < Tq, other=float("inf"))
            delta = tl.load(DELTA + (b * H + h) * Tq + offs_m, mask=offs_m < Tq, other=0.0)
            p = _scores_bwd(q, kt, lse, offs_m, n, MASK, b * smk_b + h * smk_h + offs_m[:, None] * smk_m, smk_n,
                            Tq, Tk, OFFSET, qk_scale, CAUSAL, HAS_MASK, IEEE)
            dv += _dot(tl.trans(p.to(do.dtype)), do, IEEE)
            ds = p * (_dot(do, vt, IEEE) - delta[:, None])
            dk += _dot(tl.trans(ds.to(q.dtype)), q, IEEE)
    tl.store(DK + b * sdk_b + kvh * sdk_h + n[:, None] * sdk_n + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty),
             mask=kv_mask)
    tl.store(DV + b * sdv_b + kvh * sdv_h + n[:, None] * sdv_n + offs_d[None, :], dv.to(DV.dtype.element_ty),
             mask=kv_mask)


@triton.jit
def _attn_bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, MASK,
                        sq_b, sq_h, sq_m, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, sdo_b, sdo_h, sdo_m,
                        sdq_b, sdq_h, sdq_m, smk_b, smk_h, smk_m, smk_n,
                        H, GROUP, Tq, Tk, D, scale, qk_scale,
                        CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    pid_bh, b, h, kvh, m_start = _query_tile(H, GROUP, BLOCK_M)
    OFFSET = Tk - Tq
    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_nb = tl.arange(0, BLOCK_N)
    row_mask = (offs_m[:, None] < Tq) & (offs_d[None, :] < D)
    q = tl.load(Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_m + offs_d[None, :], mask=row_mask, other=0.0)
    do = tl.load(DO + b * sdo_b + h * sdo_h + offs_m[:, None] * sdo_m + offs_d[None, :], mask=row_mask, other=0.0)
    lse = tl.load(LSE + pid_bh * Tq + offs_m, mask=offs_m < Tq, other=float("inf"))
    delta = tl.load(DELTA + pid_bh * Tq + offs_m, mask=offs_m < Tq, other=0.0)
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    hi = Tk
    if CAUSAL:
        hi = tl.maximum(tl.minimum(Tk, m_start + BLOCK_M + OFFSET), 0)
    mask_base = b * smk_b + h * smk_h + offs_m[:, None] * smk_m
    for start_n in range(0, hi, BLOCK_N):
        n = start_n + offs_nb
        kv_mask = (n[:, None] < Tk) & (offs_d[None, :] < D)
        k = tl.load(K + b * sk_b + kvh * sk_h + n[:, None] * sk_n + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + b * sv_b + kvh * sv_h + n[:, None] * sv_n + offs_d[None, :], mask=kv_mask, other=0.0)
        p = _scores_bwd(q, tl.trans(k), lse, offs_m, n, MASK, mask_base, smk_n, Tq, Tk, OFFSET, qk_scale,
                        CAUSAL, HAS_MASK, IEEE)
        ds = p * (_dot(do, tl.trans(v), IEEE) - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, IEEE)
    tl.store(DQ + b * sdq_b + h * sdq_h + offs_m[:, None] * sdq_m + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=row_mask)


def exact_dot(dtype) -> bool:
    """fp32 inputs get IEEE products; so does everything under the interpreter, whose bf16 tl.dot is wrong
    (triton 3.9: it multiplies the raw bits), after the operands were rounded to their dtype as on the GPU."""
    return dtype == torch.float32 or INTERPRET


def _fwd_config(D):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for the forward (bench/sweep.py, H200, bf16 causal)."""
    if INTERPRET:
        return 16, 16, 1, 1
    if D <= 64:
        return 128, 64, 8, 4
    if D <= 128:
        return 128, 64, 8, 3
    return 64, 32, 8, 2


def _bwd_config(D):
    if INTERPRET:
        return 16, 16, 1, 1
    if D <= 64:
        return 64, 64, 4, 3
    if D <= 128:
        return 64, 64, 4, 2
    return 32, 32, 8, 1


def _mask_args(attn_mask, B, H, Tq, Tk):
    """Broadcast a bool mask to (B, H, Tq, Tk) as a zero-copy uint8 view; strides 0 on broadcast dimensions."""
    if attn_mask is None:
        return None, (0, 0, 0, 0)
    m = attn_mask
    while m.dim() < 4:
        m = m.unsqueeze(0)
    m = m.expand(B, H, Tq, Tk)
    m = m.view(torch.uint8) if m.dtype == torch.bool else (m != 0).view(torch.uint8)
    return m, tuple(m.stride())


def attention_fwd(q, k, v, causal, scale, attn_mask=None, config=None):
    q, k, v = unit_last(q), unit_last(k), unit_last(v)
    B, H, Tq, D = q.shape
    HKV, Tk = k.shape[1], k.shape[2]
    o = torch.empty((B, H, Tq, D), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, Tq), dtype=torch.float32, device=q.device)
    mask, ms = _mask_args(attn_mask, B, H, Tq, Tk)
    BM, BN, warps, stages = config or _fwd_config(D)
    BD = max(16, triton.next_power_of_2(D))
    grid = (triton.cdiv(Tq, BM), B * H)
    _attn_fwd_kernel[grid](q, k, v, o, lse, mask if mask is not None else q,
                           q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                           v.stride(0), v.stride(1), v.stride(2), o.stride(0), o.stride(1), o.stride(2),
                           *ms, H, H // HKV, Tq, Tk, D, scale * LOG2E,
                           CAUSAL=causal, HAS_MASK=mask is not None, BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=BD,
                           IEEE=exact_dot(q.dtype), num_warps=warps, num_stages=stages)
    return o, lse


def attention_bwd(do, q, k, v, o, lse, causal, scale, attn_mask=None, config=None):
    do, q, k, v = unit_last(do), unit_last(q), unit_last(k), unit_last(v)
    B, H, Tq, D = q.shape
    HKV, Tk = k.shape[1], k.shape[2]
    delta = (do.float() * o.float()).sum(-1)  # (B, H, Tq)
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    mask, ms = _mask_args(attn_mask, B, H, Tq, Tk)
    BM, BN, warps, stages = config or _bwd_config(D)
    BD = max(16, triton.next_power_of_2(D))
    common = dict(CAUSAL=causal, HAS_MASK=mask is not None, BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=BD,
                  IEEE=exact_dot(q.dtype), num_warps=warps, num_stages=stages)
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2))
    mask_ptr = mask if mask is not None else q
    _attn_bwd_dkdv_kernel[(triton.cdiv(Tk, BN), B * HKV)](
        q, k, v, do, lse, delta, dk, dv, mask_ptr, *strides,
        dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2), *ms,
        H, HKV, H // HKV, Tq, Tk, D, scale, scale * LOG2E, **common)
    _attn_bwd_dq_kernel[(triton.cdiv(Tq, BM), B * H)](
        q, k, v, do, lse, delta, dq, mask_ptr, *strides, dq.stride(0), dq.stride(1), dq.stride(2), *ms,
        H, H // HKV, Tq, Tk, D, scale, scale * LOG2E, **common)
    return dq, dk, dv


class LiteAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale, attn_mask):
        o, lse = attention_fwd(q, k, v, causal, scale, attn_mask)
        ctx.save_for_backward(q, k, v, o, lse, attn_mask)
        ctx.causal, ctx.scale = causal, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, attn_mask = ctx.saved_tensors
        dq, dk, dv = attention_bwd(do, q, k, v, o, lse, ctx.causal, ctx.scale, attn_mask)
        return dq, dk, dv, None, None, None


def check_attention_inputs(q, k, v, attn_mask=None):
    """Shared by prefill and decode: shapes, dtypes, devices, head grouping and head_dim limits."""
    check_tensor("q", q, ndim=4, dtypes=(torch.float16, torch.bfloat16, torch.float32))
    check_tensor("k", k, ndim=4, dtypes=(q.dtype,))
    check_tensor("v", v, ndim=4, dtypes=(q.dtype,))
    check_same_device(q=q, k=k, v=v, attn_mask=attn_mask)
    B, H, _, D = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    if k.shape[0] != B or k.shape[3] != D:
        raise ValueError(f"k has shape {tuple(k.shape)}; expected (B={B}, Hkv, S, D={D}) to match q {tuple(q.shape)}")
    if H % k.shape[1]:
        raise ValueError(f"{H} query heads cannot be grouped over {k.shape[1]} key/value heads (H % Hkv != 0)")
    if D > MAX_HEAD_DIM or D < 1:
        raise ValueError(f"head_dim {D} is not supported (1..{MAX_HEAD_DIM})")


from ..utils import tracing  # kept next to its one user, the public function (a local edit)


def flash_attention(q, k, v, *, causal: bool = True, scale: float | None = None, attn_mask=None):
    """Attention of q (B,H,Tq,D) over k, v (B,Hkv,Tk,D); returns (B,H,Tq,D) in q's dtype. Differentiable.

    causal: bottom-right aligned (a prefix of Tk - Tq cached keys is visible to all queries).
    attn_mask: optional bool tensor broadcastable to (B,H,Tq,Tk), True = attend (e.g. (B,1,1,Tk) key padding).
    """
    check_attention_inputs(q, k, v, attn_mask)
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        raise TypeError(f"attn_mask must be a bool tensor (True = attend), got {attn_mask.dtype}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return flash_attention_unchecked(q, k, v, bool(causal), scale, attn_mask)


def flash_attention_unchecked(q, k, v, causal: bool, scale: float, attn_mask=None):
    """`flash_attention` after its checks (bool causal, float scale): for callers whose inputs are valid by
    construction (the HF attention function). Traced code gets the registered op (litekernels/library.py)."""
    if tracing():
        return torch.ops.litekernels.flash_attention(q, k, v, attn_mask, causal, scale)[0]
    if not use_triton(q):
        return reference.attention(q, k, v, causal=causal, scale=scale, attn_mask=attn_mask)
    return LiteAttentionFunction.apply(q, k, v, causal, scale, attn_mask)
