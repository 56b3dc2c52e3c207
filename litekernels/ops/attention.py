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


import torch

from .. import reference
from .._triton import tl, triton
from ..utils import INTERPRET, check_same_device, check_tensor, unit_last, use_triton
from . import _launch as _L
from ._launch import (LOOKUP_ERRORS, DiscardSlot, PlanCache, PreparedLaunch, _grad_enabled, _is_compiling, _modes,
                      config_key, launch, out_strides)
from ._tl_common import (LOG2E, _dot, _finish_rows, _online_softmax_step, _online_softmax_step_lazy, exact_dot,
                          block_d, default_scale, gpu_arch, merge_config)

_empty_like = torch.empty_like

MAX_HEAD_DIM = 256


@triton.jit
def _query_tile(H, GROUP, Tq, BLOCK_M: tl.constexpr, REVERSE: tl.constexpr):
    """Program (query block, batch*head) -> (batch*head, batch, head, its KV head, first query row).
    REVERSE: the last query block first; under causal attention it has the most keys, so the heavy programs
    start in the first wave and the short ones fill the tail (heavy-first schedule)."""
    pid_bh = tl.program_id(1).to(tl.int64)
    h = pid_bh % H
    pid_m = tl.program_id(0)
    if REVERSE:
        pid_m = tl.cdiv(Tq, BLOCK_M) - 1 - pid_m
    return pid_bh, pid_bh // H, h, h // GROUP, pid_m * BLOCK_M


@triton.jit
def _fwd_tile(acc, m_i, l_i, q, kt, v, n, offs_m, MASK, mask_base, stride_mn, Tk, OFFSET, qk_scale,
              MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, IEEE: tl.constexpr,
              LAZY: tl.constexpr, KEY_MASK: tl.constexpr):
    """Scores of one key tile (keys n), masked when MASKED, folded into the running (acc, max, sum); LAZY: the
    thresholded rescale of _online_softmax_step_lazy. KEY_MASK: the mask is one row of key flags shared by
    every query (a padding mask): a vector per tile, applied to every tile, so the unmasked range stays
    unmasked by causality."""
    s = _dot(q, kt, IEEE) * qk_scale
    if KEY_MASK:
        km = tl.load(MASK + mask_base + n * stride_mn, mask=n < Tk, other=0)
        s = tl.where(km[None, :] != 0, s, float("-inf"))
    if MASKED:
        valid = n[None, :] < Tk
        if CAUSAL:
            valid = valid & (n[None, :] <= offs_m[:, None] + OFFSET)
        if HAS_MASK and not KEY_MASK:
            mk = tl.load(MASK + mask_base + n[None, :] * stride_mn, mask=valid, other=0)
            valid = valid & (mk != 0)
        s = tl.where(valid, s, float("-inf"))
    if LAZY:
        return _online_softmax_step_lazy(acc, m_i, l_i, s, v, 8.0, IEEE)
    else:
        return _online_softmax_step(acc, m_i, l_i, s, v, IEEE)


@triton.jit
def _load_kv(K, V, k_desc, v_desc, k_base, v_base, start_n, n, offs_d, stride_kn, stride_vn, Tk, D,
             TMA: tl.constexpr):
    """K^T (BLOCK_D, BLOCK_N) and V (BLOCK_N, BLOCK_D) of keys n = start_n + [0, BLOCK_N), zero past Tk and D.
    TMA: through the tensor descriptors (bounds handled by the copy engine)."""
    if TMA:
        kt = tl.trans(k_desc.load([start_n, 0]))
        v = v_desc.load([start_n, 0])
    else:
        kt = tl.load(K + k_base + n[None, :] * stride_kn + offs_d[:, None],
                     mask=(n[None, :] < Tk) & (offs_d[:, None] < D), other=0.0)
        v = tl.load(V + v_base + n[:, None] * stride_vn + offs_d[None, :],
                    mask=(n[:, None] < Tk) & (offs_d[None, :] < D), other=0.0)
    return kt, v


@triton.jit
def _attn_fwd_inner(acc, m_i, l_i, q, K, V, MASK, k_desc, v_desc, k_base, v_base, mask_base, stride_kn, stride_vn,
                    stride_mn, offs_m, offs_n, offs_d, lo, hi, Tk, D, OFFSET, qk_scale,
                    MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr, BLOCK_PTR: tl.constexpr,
                    TMA: tl.constexpr, WS: tl.constexpr, LAZY: tl.constexpr, KEY_MASK: tl.constexpr):
    """Keys [lo, hi) in BLOCK_N tiles. MASKED: apply the key-range, causal and boolean masks (the diagonal band);
    else every key of the range is visible. BLOCK_PTR: load K and V through tl.make_block_ptr (bounds checked
    by the block pointer) instead of pointer arithmetic; TMA: through tensor descriptors; WS: the loop is
    warp-specialized by the compiler (tl.range(warp_specialize=True), Triton >= 3.4)."""
    if WS:
        for start_n in tl.range(lo, hi, BLOCK_N, warp_specialize=True):
            n = start_n + offs_n
            kt, v = _load_kv(K, V, k_desc, v_desc, k_base, v_base, start_n, n, offs_d, stride_kn, stride_vn, Tk, D,
                             TMA)
            acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, kt, v, n, offs_m, MASK, mask_base, stride_mn, Tk, OFFSET,
                                      qk_scale, MASKED, CAUSAL, HAS_MASK, IEEE, LAZY, KEY_MASK)
    elif BLOCK_PTR:
        kt_ptr = tl.make_block_ptr(K + k_base, shape=(D, Tk), strides=(1, stride_kn), offsets=(0, lo),
                                   block_shape=(BLOCK_D, BLOCK_N), order=(0, 1))
        v_ptr = tl.make_block_ptr(V + v_base, shape=(Tk, D), strides=(stride_vn, 1), offsets=(lo, 0),
                                  block_shape=(BLOCK_N, BLOCK_D), order=(1, 0))
        for start_n in range(lo, hi, BLOCK_N):
            n = start_n + offs_n
            kt = tl.load(kt_ptr, boundary_check=(0, 1), padding_option="zero")
            v = tl.load(v_ptr, boundary_check=(0, 1), padding_option="zero")
            acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, kt, v, n, offs_m, MASK, mask_base, stride_mn, Tk, OFFSET,
                                      qk_scale, MASKED, CAUSAL, HAS_MASK, IEEE, LAZY, KEY_MASK)
            kt_ptr = tl.advance(kt_ptr, (0, BLOCK_N))
            v_ptr = tl.advance(v_ptr, (BLOCK_N, 0))
    else:
        for start_n in range(lo, hi, BLOCK_N):
            n = start_n + offs_n
            kt, v = _load_kv(K, V, k_desc, v_desc, k_base, v_base, start_n, n, offs_d, stride_kn, stride_vn, Tk, D,
                             TMA)
            acc, m_i, l_i = _fwd_tile(acc, m_i, l_i, q, kt, v, n, offs_m, MASK, mask_base, stride_mn, Tk, OFFSET,
                                      qk_scale, MASKED, CAUSAL, HAS_MASK, IEEE, LAZY, KEY_MASK)
    return acc, m_i, l_i


@triton.jit
def _attn_fwd_kernel(Q, K, V, O, LSE, MASK,
                     sq_b, sq_h, sq_m, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, so_b, so_h, so_m,
                     smk_b, smk_h, smk_m, smk_n,
                     H, GROUP, Tq, Tk, D, qk_scale,
                     CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_D: tl.constexpr, IEEE: tl.constexpr, REVERSE: tl.constexpr, BLOCK_PTR: tl.constexpr,
                     TMA: tl.constexpr = False, WS: tl.constexpr = False, LAZY: tl.constexpr = False,
                     KEY_MASK: tl.constexpr = False):
    pid_bh, b, h, kvh, m_start = _query_tile(H, GROUP, Tq, BLOCK_M, REVERSE)
    OFFSET = Tk - Tq
    offs_m = m_start + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    q = tl.load(Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_m + offs_d[None, :],
                mask=(offs_m[:, None] < Tq) & (offs_d[None, :] < D), other=0.0)
    k_base = b * sk_b + kvh * sk_h
    v_base = b * sv_b + kvh * sv_h
    if KEY_MASK:  # one row of key flags per batch
        mask_base = b * smk_b
    else:
        mask_base = b * smk_b + h * smk_h + offs_m[:, None] * smk_m
    k_desc = K  # placeholders unless TMA (never used then)
    v_desc = V
    if TMA:
        # one 2-D descriptor per (batch, KV head): rows past Tk and columns past D read as zero, so no tile ever
        # reaches into the next head; needs 16-byte aligned bases and row strides (checked by the launcher)
        k_desc = tl.make_tensor_descriptor(K + k_base, shape=[Tk, D], strides=[sk_n, 1],
                                           block_shape=[BLOCK_N, BLOCK_D])
        v_desc = tl.make_tensor_descriptor(V + v_base, shape=[Tk, D], strides=[sv_n, 1],
                                           block_shape=[BLOCK_N, BLOCK_D])
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
    if HAS_MASK and not KEY_MASK:  # an arbitrary mask: every tile is masked (a key mask applies to all anyway)
        full_hi = 0
    full_hi = tl.maximum(full_hi, 0)
    acc, m_i, l_i = _attn_fwd_inner(acc, m_i, l_i, q, K, V, MASK, k_desc, v_desc, k_base, v_base, mask_base,
                                    sk_n, sv_n, smk_n, offs_m, offs_n, offs_d, 0, full_hi, Tk, D, OFFSET, qk_scale,
                                    False, CAUSAL, HAS_MASK, BLOCK_N, BLOCK_D, IEEE, BLOCK_PTR, TMA, WS, LAZY, KEY_MASK)
    acc, m_i, l_i = _attn_fwd_inner(acc, m_i, l_i, q, K, V, MASK, k_desc, v_desc, k_base, v_base, mask_base,
                                    sk_n, sv_n, smk_n, offs_m, offs_n, offs_d, full_hi, hi, Tk, D, OFFSET, qk_scale,
                                    True, CAUSAL, HAS_MASK, BLOCK_N, BLOCK_D, IEEE, BLOCK_PTR, TMA, WS, LAZY, KEY_MASK)
    # an empty row stores lse = +inf, so the backward's exp2(s - lse) is 0 there
    out, lse = _finish_rows(acc, m_i, l_i, float("inf"))
    row_ok = offs_m < Tq
    tl.store(LSE + pid_bh * Tq + offs_m, lse, mask=row_ok)
    tl.store(O + b * so_b + h * so_h + offs_m[:, None] * so_m + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=row_ok[:, None] & (offs_d[None, :] < D))


@triton.jit
def _attn_bwd_delta_kernel(O, DO, DELTA, so_b, so_h, so_m, sdo_b, sdo_h, sdo_m, H, Tq, D,
                           BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """delta = rowsum(dO * O) per query row, fp32, (B, H, Tq); read once, no O-sized fp32 temporaries."""
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    msk = (offs_m[:, None] < Tq) & (offs_d[None, :] < D)
    o = tl.load(O + b * so_b + h * so_h + offs_m[:, None] * so_m + offs_d[None, :], mask=msk, other=0.0)
    do = tl.load(DO + b * sdo_b + h * sdo_h + offs_m[:, None] * sdo_m + offs_d[None, :], mask=msk, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + pid_bh * Tq + offs_m, delta, mask=offs_m < Tq)


@triton.jit
def _scores_bwd(q, kt, lse, offs_m, n, MASK, mask_base, stride_mn, Tq, Tk, OFFSET, qk_scale,
                CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, IEEE: tl.constexpr, KEY_MASK: tl.constexpr):
    """p (BLOCK_M, BLOCK_N) of the forward, recomputed from q, k and the saved lse; invalid entries are 0.
    KEY_MASK: mask_base is the batch's row of key flags (a vector load), else the tile's (rows, keys) base."""
    s = _dot(q, kt, IEEE) * qk_scale
    valid = (n[None, :] < Tk) & (offs_m[:, None] < Tq)
    if CAUSAL:
        valid = valid & (n[None, :] <= offs_m[:, None] + OFFSET)
    if KEY_MASK:
        km = tl.load(MASK + mask_base + n * stride_mn, mask=n < Tk, other=0)
        valid = valid & (km[None, :] != 0)
    elif HAS_MASK:
        mk = tl.load(MASK + mask_base + n[None, :] * stride_mn, mask=valid, other=0)
        valid = valid & (mk != 0)
    return tl.where(valid, tl.math.exp2(s - lse[:, None]), 0.0)


@triton.jit
def _attn_bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, MASK,
                          sq_b, sq_h, sq_m, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, sdo_b, sdo_h, sdo_m,
                          sdk_b, sdk_h, sdk_n, sdv_b, sdv_h, sdv_n, smk_b, smk_h, smk_m, smk_n,
                          H, HKV, GROUP, Tq, Tk, D, scale, qk_scale,
                          CAUSAL: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr,
                          KEY_MASK: tl.constexpr = False):
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
            if KEY_MASK:
                mask_base = b * smk_b
            else:
                mask_base = b * smk_b + h * smk_h + offs_m[:, None] * smk_m
            p = _scores_bwd(q, kt, lse, offs_m, n, MASK, mask_base, smk_n, Tq, Tk, OFFSET, qk_scale, CAUSAL, HAS_MASK,
                            IEEE, KEY_MASK)
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
                        BLOCK_D: tl.constexpr, IEEE: tl.constexpr, KEY_MASK: tl.constexpr = False):
    pid_bh, b, h, kvh, m_start = _query_tile(H, GROUP, Tq, BLOCK_M, False)
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
    if KEY_MASK:
        mask_base = b * smk_b
    else:
        mask_base = b * smk_b + h * smk_h + offs_m[:, None] * smk_m
    for start_n in range(0, hi, BLOCK_N):
        n = start_n + offs_nb
        kv_mask = (n[:, None] < Tk) & (offs_d[None, :] < D)
        k = tl.load(K + b * sk_b + kvh * sk_h + n[:, None] * sk_n + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + b * sv_b + kvh * sv_h + n[:, None] * sv_n + offs_d[None, :], mask=kv_mask, other=0.0)
        p = _scores_bwd(q, tl.trans(k), lse, offs_m, n, MASK, mask_base, smk_n, Tq, Tk, OFFSET, qk_scale,
                        CAUSAL, HAS_MASK, IEEE, KEY_MASK)
        ds = p * (_dot(do, tl.trans(v), IEEE) - delta[:, None])
        dq += _dot(ds.to(k.dtype), k, IEEE)
    tl.store(DQ + b * sdq_b + h * sdq_h + offs_m[:, None] * sdq_m + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty),
             mask=row_mask)


# Launch settings: (BLOCK_M, BLOCK_N, num_warps, num_stages) per compute capability and head_dim bucket.
# sm_90: bench/sweep.py on an H200 (bench/results/sweep-H200.json, bf16 causal). sm_80 (163 KB shared memory) and
# sm_89 (99 KB): chosen to fit; tests/test_launch_configs.py compiles each for its target and checks the
# shared memory. Smaller-memory parts get fewer stages / smaller tiles, never a kernel that fails to launch.
_FWD_TABLE = {
    90: {64: (128, 64, 8, 4), 128: (128, 64, 8, 3), 256: (64, 32, 8, 2)},
    80: {64: (128, 64, 4, 3), 128: (128, 64, 8, 2), 256: (64, 32, 8, 2)},
    89: {64: (128, 64, 4, 2), 128: (64, 64, 4, 2), 256: (64, 32, 4, 1)},
}
_BWD_TABLE = {
    90: {64: (64, 64, 4, 3), 128: (64, 64, 4, 2), 256: (32, 32, 8, 1)},
    80: {64: (64, 64, 4, 2), 128: (64, 64, 4, 2), 256: (32, 32, 8, 1)},
    89: {64: (64, 64, 4, 2), 128: (32, 64, 4, 2), 256: (32, 32, 4, 1)},
}
# Variant switches a forward config may set (constexpr, default False): REVERSE heavy-first query blocks,
# BLOCK_PTR block-pointer loads, TMA K/V through device-side tensor descriptors (tl.make_tensor_descriptor; TMA
# copies on sm_90+), WS the key loop warp-specialized by the compiler (tl.range(warp_specialize=True)), LAZY the
# FlashAttention-3 thresholded rescale (_online_softmax_step_lazy). None is on by default: on the H200 sweep
# (bench/results/sweep-attn-H200.json) BLOCK_PTR was slower and REVERSE a wash; TMA/WS/LAZY await their sweep.
FWD_FLAGS = ("REVERSE", "BLOCK_PTR", "TMA", "WS", "LAZY")
# tl.make_block_ptr exists up to Triton 3.6 (the GPU machine); later versions keep the name but raise
# NotImplementedError ("removed in favor of the tensor descriptor API"), so BLOCK_PTR is refused there.
HAS_BLOCK_PTR = hasattr(tl, "make_block_ptr") and "removed" not in (getattr(tl.make_block_ptr, "__doc__", "") or "")
# Device-side tensor descriptors (Triton >= 3.4-ish); their TMA descriptor lives in a global-memory workspace that
# the launch asks triton's allocator for (triton.set_allocator), so both must exist.
HAS_TMA = hasattr(tl, "make_tensor_descriptor") and hasattr(triton, "set_allocator")


def _has_ws() -> bool:
    try:
        import inspect
        return "warp_specialize" in inspect.signature(tl.range).parameters
    except (TypeError, ValueError):
        return False


HAS_WS = _has_ws()


def _table_key(arch) -> int:
    """90 for sm_90 and newer, 80 for sm_80/87, 89 for the 99-KB parts (sm_86, sm_89) and anything smaller."""
    major, minor, smem = arch
    if major >= 9 and smem >= 200 * 1024:
        return 90
    if major == 8 and minor in (0, 7) and smem >= 160 * 1024:
        return 80
    return 89


def _bucket(D: int) -> int:
    return 64 if D <= 64 else 128 if D <= 128 else 256


def _lookup(table, D, arch, element_size):
    if INTERPRET:
        return 16, 16, 1, 1
    key = _table_key(arch or gpu_arch())
    bm, bn, w, st = table[key][_bucket(D)]
    if element_size > 2 and key != 90:
        # fp32 tiles are twice the bytes: halve them and drop pipelining off sm_90 (measured to fit by
        # tests/test_launch_configs.py; fp32 attention is for tests and checks, not speed)
        bm, bn, st = max(16, bm // 2), max(16, bn // 2), 1
    return bm, bn, w, st


def fwd_config(D: int, arch=None, element_size: int = 2) -> dict:
    """Forward launch settings for head_dim D on `arch` = (major, minor, smem) (default: sm_90) as a dict:
    BLOCK_M, BLOCK_N, num_warps, num_stages and the variant flags."""
    bm, bn, w, st = _lookup(_FWD_TABLE, D, arch, element_size)
    return dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=st, **{f: False for f in FWD_FLAGS})


def bwd_config(D: int, arch=None, element_size: int = 2) -> dict:
    bm, bn, w, st = _lookup(_BWD_TABLE, D, arch, element_size)
    return dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=st)


def _as_config(config, default: dict) -> dict:
    """A config given as a tuple (BLOCK_M, BLOCK_N, num_warps, num_stages) or a (partial) dict, over `default`."""
    if config is None:
        return default
    if isinstance(config, (tuple, list)):
        config = dict(zip(("BLOCK_M", "BLOCK_N", "num_warps", "num_stages"), config))
    if config.get("BLOCK_PTR") and not HAS_BLOCK_PTR:
        raise ValueError(f"config BLOCK_PTR=True needs tl.make_block_ptr, which triton {triton.__version__} removed")
    if config.get("TMA") and not HAS_TMA:
        raise ValueError(f"config TMA=True needs tl.make_tensor_descriptor and triton.set_allocator, which triton "
                         f"{triton.__version__} lacks")
    if config.get("WS") and not HAS_WS:
        raise ValueError(f"config WS=True needs tl.range(warp_specialize=...), which triton {triton.__version__} lacks")
    if config.get("WS") and config.get("BLOCK_PTR"):
        raise ValueError("config WS=True does not combine with BLOCK_PTR=True (use TMA=True for descriptor loads)")
    return merge_config(dict(default), config, "attention")


def _tma_workspace(size: int, alignment: int, stream):
    """triton allocator for the descriptors' global workspace: a byte tensor from torch's caching allocator (from
    the graph's pool while a CUDA graph is captured)."""
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _prepare_tma(q, k, v):
    """Check what device-side tensor descriptors need and make sure triton has an allocator for their workspace
    (ours, unless the user already set one)."""
    if q.device.type == "cuda" and torch.cuda.get_device_capability(q.device)[0] < 9:
        raise ValueError("config TMA=True needs a GPU with TMA (compute capability 9.0 or newer)")
    isz = k.element_size()
    for name, t in (("k", k), ("v", v)):
        if t.data_ptr() % 16 or any((st * isz) % 16 for st in t.stride()[:3]):
            raise ValueError(f"config TMA=True needs {name} 16-byte aligned with 16-byte multiple strides in batch, "
                             f"head and sequence; got strides {tuple(t.stride())} of {isz}-byte elements")
    if INTERPRET or q.device.type != "cuda":
        return
    try:
        from triton.runtime import _allocation
        current = _allocation._allocator.get()
        if not isinstance(current, _allocation.NullAllocator):
            return
    except (ImportError, AttributeError):  # another layout of triton's internals: set ours
        pass
    triton.set_allocator(_tma_workspace)


_settings_cache: dict = {}


def _settings(which, D, dtype, device, config):
    """Launch settings (which: fwd_config or bwd_config), cached per (head_dim, dtype, device) when no explicit
    config is given."""
    if config is None:
        key = (which, D, dtype, device)
        hit = _settings_cache.get(key)
        if hit is None:
            hit = _settings_cache[key] = which(D, gpu_arch(device), dtype.itemsize)
        return hit
    return _as_config(config, which(D, gpu_arch(device), dtype.itemsize))


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


def _key_mask(mask, ms, H: int, Tq: int) -> bool:
    """True when the (B, H, Tq, Tk) mask view (strides ms) is one row of key flags per batch element: stride 0
    (or size 1) over heads and queries, e.g. a (B, 1, 1, Tk) padding mask or its expand. The kernels then load
    a vector per key tile and keep causal attention's unmasked tiles unmasked. A materialized (B, 1, Tq, Tk)
    mask, even one whose rows happen to be equal, takes the general path."""
    return mask is not None and (ms[1] == 0 or H == 1) and (ms[2] == 0 or Tq == 1)


class _DefaultScales(dict):
    """head_dim -> default_scale(head_dim), filled on first use, so a plan key reads the default scale with one
    subscript; head_dims outside 1..MAX_HEAD_DIM are not stored (0 gives None: no such plan exists)."""

    def __missing__(self, head_dim):
        if not 0 < head_dim <= MAX_HEAD_DIM:
            return default_scale(head_dim) if head_dim else None
        value = self[head_dim] = default_scale(head_dim)
        return value


DEFAULT_SCALES = _DefaultScales()


def _fwd_key(q, k, v, causal, scale, attn_mask=None, config=None, like_inputs=False):
    """The plan key of a forward: every fact of the inputs and arguments that the checks, the settings and the
    launch read (scale None: the public default, computed as the public function does)."""
    m = attn_mask
    qs = q.shape
    return (qs, q.stride(), q.dtype, q.device, k.shape, k.stride(), k.dtype, k.device,
            v.shape, v.stride(), v.dtype, v.device,
            None if m is None else (m.shape, m.stride(), m.dtype, m.device),
            causal, DEFAULT_SCALES[qs[-1]] if scale is None else scale,
            None if config is None else config_key(config), like_inputs)


_FWD_PLANS = PlanCache(_fwd_key, tied_to=(globals(), "_settings_cache"))


class _FwdPlan:
    """The forward launch for inputs of one plan key (q, k, v with unit last stride, attn_mask None or bool)."""
    __slots__ = ("o_shape", "o_like", "lse_shape", "lse_numel", "tma", "launch", "device", "discard", "infer")

    def __init__(self, q, k, v, causal, scale, attn_mask, config, like_inputs):
        check_attention_inputs(q, k, v, attn_mask)  # a plan exists only for valid inputs
        B, H, Tq, D = q.shape
        HKV, Tk = k.shape[1], k.shape[2]
        self.o_shape, self.lse_shape, self.lse_numel = (B, H, Tq, D), (B, H, Tq), B * H * Tq
        self.o_like = like_inputs or q.is_contiguous()  # then empty_like(q) is o (dense), with less parsing
        self.device = q.device  # the key holds it: kept, so a call builds no device object
        self.discard = DiscardSlot(q.get_device() if q.is_cuda else -1, self.lse_numel, q.device)
        so = out_strides(self.o_like, q, self.o_shape)
        _, ms = _mask_args(attn_mask, B, H, Tq, Tk)
        c = _settings(fwd_config, D, q.dtype, q.device, config)
        self.tma = bool(c["TMA"])
        sq, sk, sv = q.stride(), k.stride(), v.stride()
        self.launch = PreparedLaunch(
            _attn_fwd_kernel, (triton.cdiv(Tq, c["BLOCK_M"]), B * H),
            (sq[0], sq[1], sq[2], sk[0], sk[1], sk[2], sv[0], sv[1], sv[2], so[0], so[1], so[2],
             *ms, H, H // HKV, Tq, Tk, D, scale * LOG2E),
            dict(CAUSAL=causal, HAS_MASK=attn_mask is not None, KEY_MASK=_key_mask(attn_mask, ms, H, Tq),
                 BLOCK_D=block_d(D), IEEE=exact_dot(q.dtype), **c))
        # the plan-hit path of flash_attention, chosen once: no branches per call in the common case
        self.infer = self._infer_plain if self.o_like and not self.tma else self._infer_general

    def __call__(self, q, k, v, attn_mask, need_lse):
        if not need_lse:
            return self.infer(q, k, v, attn_mask), None
        o = torch.empty_like(q) if self.o_like else torch.empty(self.o_shape, dtype=q.dtype, device=self.device)
        lse = torch.empty(self.lse_shape, dtype=torch.float32, device=self.device)
        if self.tma:
            _prepare_tma(q, k, v)
        # the mask is read as bytes: its uint8 view (same memory; the strides of its broadcast are in the plan)
        self.launch(q, k, v, o, lse, q if attn_mask is None else attn_mask.view(torch.uint8))
        return o, lse

    def _infer_plain(self, q, k, v, attn_mask):
        """infer for o = empty_like(q) without TMA descriptors."""
        o = _empty_like(q)
        self.launch(q, k, v, o, self.discard(), q if attn_mask is None else attn_mask.view(torch.uint8))
        return o

    def _infer_general(self, q, k, v, attn_mask):
        """o without autograd (lse to the discard buffer)."""
        o = torch.empty_like(q) if self.o_like else torch.empty(self.o_shape, dtype=q.dtype, device=self.device)
        if self.tma:
            _prepare_tma(q, k, v)
        self.launch(q, k, v, o, self.discard(), q if attn_mask is None else attn_mask.view(torch.uint8))
        return o


def attention_fwd(q, k, v, causal, scale, attn_mask=None, config=None, need_lse=True, like_inputs=False):
    """Launch the forward; config: None (the table for this GPU), a tuple (BLOCK_M, BLOCK_N, num_warps,
    num_stages) or a dict of those plus the variant flags FWD_FLAGS (REVERSE heavy-first query blocks,
    BLOCK_PTR, TMA, WS, LAZY; see FWD_FLAGS). need_lse=False (no autograd): lse goes to a discard buffer and
    None is returned for it.
    like_inputs: o gets q's memory layout (torch.empty_like) instead of a contiguous (B, H, Tq, D) buffer. For
    HF's q, a (B, Tq, H, D) buffer seen transposed, o.transpose(1, 2) is then already contiguous, so the
    caller's reshape for o_proj is a view and autograd keeps one copy of o, not two (o_proj saves its input)."""
    q, k, v = unit_last(q), unit_last(k), unit_last(v)
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        attn_mask = attn_mask != 0
    key = _fwd_key(q, k, v, causal, scale, attn_mask, config, like_inputs)
    plan = _FWD_PLANS.get_or_build(key, _FwdPlan, q, k, v, causal, scale, attn_mask, config, like_inputs)
    return plan(q, k, v, attn_mask, need_lse)


def attention_bwd(do, q, k, v, o, lse, causal, scale, attn_mask=None, config=None, like_inputs=False):
    """Launch the backward; returns (dq, dk, dv), contiguous, or with like_inputs=True in the memory layouts of
    q, k and v (so HF's transposed projections receive gradients they can view without a copy)."""
    do, q, k, v, o = unit_last(do), unit_last(q), unit_last(k), unit_last(v), unit_last(o)
    B, H, Tq, D = q.shape
    HKV, Tk = k.shape[1], k.shape[2]
    BD = block_d(D)
    delta = torch.empty((B, H, Tq), dtype=torch.float32, device=q.device)
    DM = 16 if INTERPRET else max(1, min(128, 8192 // BD))
    launch(_attn_bwd_delta_kernel, (triton.cdiv(Tq, DM), B * H),
           o, do, delta, o.stride(0), o.stride(1), o.stride(2), do.stride(0), do.stride(1), do.stride(2), H, Tq, D,
           BLOCK_M=DM, BLOCK_D=BD, num_warps=1 if INTERPRET else 4)
    fmt = torch.preserve_format if like_inputs else torch.contiguous_format
    dq = torch.empty_like(q, memory_format=fmt)
    dk = torch.empty_like(k, memory_format=fmt)
    dv = torch.empty_like(v, memory_format=fmt)
    mask, ms = _mask_args(attn_mask, B, H, Tq, Tk)
    c = _settings(bwd_config, D, q.dtype, q.device, config)
    common = dict(CAUSAL=causal, HAS_MASK=mask is not None, KEY_MASK=_key_mask(mask, ms, H, Tq), BLOCK_D=BD,
                  IEEE=exact_dot(q.dtype), **c)
    BM, BN = c["BLOCK_M"], c["BLOCK_N"]
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2), do.stride(0), do.stride(1), do.stride(2))
    mask_ptr = mask if mask is not None else q
    launch(_attn_bwd_dkdv_kernel, (triton.cdiv(Tk, BN), B * HKV),
           q, k, v, do, lse, delta, dk, dv, mask_ptr, *strides,
           dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2), *ms,
           H, HKV, H // HKV, Tq, Tk, D, scale, scale * LOG2E, **common)
    launch(_attn_bwd_dq_kernel, (triton.cdiv(Tq, BM), B * H),
           q, k, v, do, lse, delta, dq, mask_ptr, *strides, dq.stride(0), dq.stride(1), dq.stride(2), *ms,
           H, H // HKV, Tq, Tk, D, scale, scale * LOG2E, **common)
    return dq, dk, dv


class LiteAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal, scale, attn_mask):
        # o and the gradients follow the inputs' layouts (like_inputs): with HF's transposed q/k/v neither the
        # output nor the gradients need a layout copy, and o is saved once (bench/train_memory_audit.py)
        o, lse = attention_fwd(q, k, v, causal, scale, attn_mask, like_inputs=True)
        ctx.save_for_backward(q, k, v, o, lse, attn_mask)
        ctx.causal, ctx.scale = causal, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, attn_mask = ctx.saved_tensors
        dq, dk, dv = attention_bwd(do, q, k, v, o, lse, ctx.causal, ctx.scale, attn_mask, like_inputs=True)
        return dq, dk, dv, None, None, None


_ATTN_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_attention_inputs(q, k, v, attn_mask=None):
    """Shared by prefill and decode: shapes, dtypes, devices, head grouping and head_dim limits.
    One compound test on the common path (valid input costs a few attribute reads, it runs on every decode
    step of every layer); only when it fails do the named checks below run to say what is wrong."""
    T = torch.Tensor
    if (isinstance(q, T) and isinstance(k, T) and isinstance(v, T) and q.dtype in _ATTN_DTYPES
            and k.dtype == q.dtype and v.dtype == q.dtype and q.dim() == 4 and k.dim() == 4 and v.dim() == 4):
        dev = q.device
        qs, ks = q.shape, k.shape
        if (k.device == dev and v.device == dev and (attn_mask is None or attn_mask.device == dev)
                and ks == v.shape and ks[0] == qs[0] and ks[3] == qs[3] and ks[1] > 0 and qs[1] % ks[1] == 0
                and 1 <= qs[3] <= MAX_HEAD_DIM):
            return
    _check_attention_inputs_named(q, k, v, attn_mask)
    raise ValueError(f"invalid attention inputs q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")


def _check_attention_inputs_named(q, k, v, attn_mask=None):
    check_tensor("q", q, ndim=4, dtypes=_ATTN_DTYPES)
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


def _plan_of(q, k, v, causal, scale, attn_mask):
    """_FWD_PLANS.lookup(q, k, v, causal, scale, attn_mask) in one frame: the same tests and the key of _fwd_key
    (config None, like_inputs False), including the drop of plans derived from a replaced _settings_cache."""
    if not _L._plans_on or _is_compiling() or (_modes is not None and _modes()):
        return None
    try:
        if _grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad
                                or getattr(attn_mask, "requires_grad", False)):
            return None
        qs, m = q.shape, attn_mask
        plan = _FWD_PLANS.plans.get((qs, q.stride(), q.dtype, q.device, k.shape, k.stride(), k.dtype, k.device,
                                     v.shape, v.stride(), v.dtype, v.device,
                                     None if m is None else (m.shape, m.stride(), m.dtype, m.device),
                                     causal, DEFAULT_SCALES[qs[-1]] if scale is None else scale, None, False))
    except LOOKUP_ERRORS:
        return None  # not a tensor, unhashable, no strides: the checked path names the problem
    if plan is not None and _settings_cache is not _FWD_PLANS.source:
        return None  # the checked path's `get` drops the stale plans
    return plan


def flash_attention(q, k, v, *, causal: bool = True, scale: float | None = None, attn_mask=None):
    """Attention of q (B,H,Tq,D) over k, v (B,Hkv,Tk,D); returns (B,H,Tq,D) in q's dtype. Differentiable.

    causal: bottom-right aligned (a prefix of Tk - Tq cached keys is visible to all queries).
    attn_mask: optional bool tensor broadcastable to (B,H,Tq,Tk), True = attend (e.g. (B,1,1,Tk) key padding).
    """
    plan = _plan_of(q, k, v, causal, scale, attn_mask)  # a repeated call without autograd: checks passed before
    if plan is not None:
        return plan.infer(q, k, v, attn_mask)
    check_attention_inputs(q, k, v, attn_mask)
    if attn_mask is not None and attn_mask.dtype != torch.bool:
        raise TypeError(f"attn_mask must be a bool tensor (True = attend), got {attn_mask.dtype}")
    scale = default_scale(q.shape[-1]) if scale is None else float(scale)
    return _flash_attention(q, k, v, bool(causal), scale, attn_mask)


def flash_attention_unchecked(q, k, v, causal: bool, scale: float, attn_mask=None):
    """`flash_attention` after its checks (bool causal, float scale): for callers whose inputs are valid by
    construction (the HF attention function). Traced code gets the registered op (litekernels/library.py)."""
    plan = _plan_of(q, k, v, causal, scale, attn_mask)
    if plan is not None:
        return plan.infer(q, k, v, attn_mask)
    return _flash_attention(q, k, v, causal, scale, attn_mask)


def _flash_attention(q, k, v, causal: bool, scale: float, attn_mask=None):
    if tracing():
        return torch.ops.litekernels.flash_attention(q, k, v, attn_mask, causal, scale)[0]
    if not use_triton(q):
        return reference.attention(q, k, v, causal=causal, scale=scale, attn_mask=attn_mask)
    if not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)):
        return attention_fwd(q, k, v, causal, scale, attn_mask, need_lse=False)[0]  # no autograd node needed
    return LiteAttentionFunction.apply(q, k, v, causal, scale, attn_mask)
