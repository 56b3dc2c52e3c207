"""Flash-decoding: a few new query tokens per sequence attend over a static KV cache, split along the cache.

Shapes: q (B, H, Tq, D) with small Tq (1 for plain decode, a few for speculative decoding); k_cache, v_cache
(B, Hkv, L, D), the static buffers; lengths (B,) int32/int64 on the device: valid entries per sequence, the new
tokens included (they sit at lengths-Tq .. lengths-1). Query t sees cache positions j < lengths - Tq + t + 1.
key_mask (B, L) bool, optional: False marks slots to skip (left padding in a batch).

Two launches, both with fixed grids so a CUDA graph can replay them while lengths grow:
  1. split: program (split s, batch b, KV head g) reads the lengths[b] valid entries of its share of the cache
     (lengths[b] / SPLITS, rounded to the tile), once, for all Tq x (H/Hkv) query rows of group g (one tile
     of K/V serves every query head of the group), and writes an un-normalised partial output, its running
     max and sum (as a log2-sum-exp) to fp32 scratch;
  2. combine: program (b, h, t) rescales the SPLITS partials by exp2(lse_s - max) and normalises.
Math as in `attention.py`. Inference only (no backward: decode runs under no_grad).
Usage: o = decode_attention(q, k_cache, v_cache, lengths)
"""

from __future__ import annotations

import math

import torch

from .. import reference
from .._triton import tl, triton
from ..utils import INTERPRET, check_tensor, num_sms, unit_last, use_triton
from .attention import LOG2E, _dot, _finish_rows, _online_softmax_step, check_attention_inputs, exact_dot


@triton.jit
def _decode_split_kernel(Q, K, V, LENGTHS, KEYMASK, O_PART, LSE_PART,
                         sq_b, sq_h, sq_t, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, skm_b,
                         HKV, GROUP, Tq, D, qk_scale, SPLITS,
                         HAS_KEYMASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    split = tl.program_id(0)
    pid_bh = tl.program_id(1).to(tl.int64)
    b = pid_bh // HKV
    kvh = pid_bh % HKV
    length = tl.load(LENGTHS + b).to(tl.int32)
    # rows of the tile: r = g * Tq + t  (query head kvh * GROUP + g, new token t)
    r = tl.arange(0, BLOCK_M)
    g = r // Tq
    t = r % Tq
    row_ok = r < GROUP * Tq
    h = kvh * GROUP + g
    offs_d = tl.arange(0, BLOCK_D)
    q = tl.load(Q + b * sq_b + h[:, None] * sq_h + t[:, None] * sq_t + offs_d[None, :],
                mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
    limit = length - Tq + 1 + t  # query row sees keys j < limit
    chunk = tl.cdiv(tl.cdiv(length, SPLITS), BLOCK_N) * BLOCK_N
    lo = split * chunk
    hi = tl.minimum(lo + chunk, length)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    k_base = K + b * sk_b + kvh * sk_h
    v_base = V + b * sv_b + kvh * sv_h
    for start_n in range(lo, hi, BLOCK_N):
        n = start_n + offs_n
        n_ok = n < hi
        kt = tl.load(k_base + n[None, :] * sk_n + offs_d[:, None], mask=n_ok[None, :] & (offs_d[:, None] < D),
                     other=0.0)
        s = _dot(q, kt, IEEE) * qk_scale
        valid = n_ok[None, :] & (n[None, :] < limit[:, None])
        if HAS_KEYMASK:
            km = tl.load(KEYMASK + b * skm_b + n, mask=n_ok, other=0)
            valid = valid & (km != 0)[None, :]
        s = tl.where(valid, s, float("-inf"))
        v = tl.load(v_base + n[:, None] * sv_n + offs_d[None, :], mask=n_ok[:, None] & (offs_d[None, :] < D),
                    other=0.0)
        acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, s, v, IEEE)
    out, lse = _finish_rows(acc, m_i, l_i, float("-inf"))
    # scratch layout: O_PART (B, H, Tq, SPLITS, D), LSE_PART (B, H, Tq, SPLITS)
    row = ((b * HKV * GROUP + h) * Tq + t) * SPLITS + split
    tl.store(LSE_PART + row, lse, mask=row_ok)
    tl.store(O_PART + row[:, None] * D + offs_d[None, :], out,
             mask=row_ok[:, None] & (offs_d[None, :] < D))


@triton.jit
def _decode_combine_kernel(O_PART, LSE_PART, O, so_b, so_h, so_t, H, Tq, D, SPLITS,
                           BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)  # (b * H + h) * Tq + t
    t = pid % Tq
    h = (pid // Tq) % H
    b = pid // (Tq * H)
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    lse = tl.load(LSE_PART + pid * SPLITS + s, mask=s < SPLITS, other=float("-inf"))
    m = tl.max(lse, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.math.exp2(lse - m_safe)
    total = tl.sum(w, 0)
    parts = tl.load(O_PART + (pid * SPLITS + s[:, None]) * D + d[None, :],
                    mask=(s[:, None] < SPLITS) & (d[None, :] < D), other=0.0)
    out = tl.sum(parts * w[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    tl.store(O + b * so_b + h * so_h + t * so_t + d, out.to(O.dtype.element_ty), mask=d < D)


def choose_splits(batch: int, kv_heads: int, max_len: int, block_n: int = 64) -> int:
    """Splits so batch * kv_heads * splits programs fill the GPU about 4 times (at least 16 splits, each at
    least 256 cache entries); fixed per cache shape, so a captured graph stays valid. bench/sweep.py, H200."""
    if INTERPRET:
        return max(1, min(3, triton.cdiv(max_len, 16)))
    want = max(16, triton.cdiv(4 * num_sms(), batch * kv_heads))
    return int(max(1, min(want, triton.cdiv(max_len, 256), 128)))


def decode_attention_fwd(q, k_cache, v_cache, lengths, scale, key_mask=None, splits=None, config=None):
    q = unit_last(q)
    B, H, Tq, D = q.shape
    HKV, L = k_cache.shape[1], k_cache.shape[2]
    group = H // HKV
    BN, warps, stages = (16, 1, 1) if INTERPRET else (config or (64, 4, 3))
    splits = splits or choose_splits(B, HKV, L, BN)
    BM = max(16, triton.next_power_of_2(group * Tq))
    BD = max(16, triton.next_power_of_2(D))
    o_part = torch.empty((B, H, Tq, splits, D), dtype=torch.float32, device=q.device)
    lse_part = torch.empty((B, H, Tq, splits), dtype=torch.float32, device=q.device)
    km = key_mask.view(torch.uint8) if key_mask is not None else lengths
    _decode_split_kernel[(splits, B * HKV)](
        q, k_cache, v_cache, lengths, km, o_part, lse_part,
        q.stride(0), q.stride(1), q.stride(2), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), km.stride(0) if key_mask is not None else 0,
        HKV, group, Tq, D, scale * LOG2E, splits,
        HAS_KEYMASK=key_mask is not None, BLOCK_M=BM, BLOCK_N=BN, BLOCK_D=BD, IEEE=exact_dot(q.dtype),
        num_warps=warps, num_stages=stages)
    o = torch.empty((B, H, Tq, D), dtype=q.dtype, device=q.device)
    _decode_combine_kernel[(B * H * Tq,)](o_part, lse_part, o, o.stride(0), o.stride(1), o.stride(2), H, Tq, D,
                                          splits, BLOCK_S=max(2, triton.next_power_of_2(splits)), BLOCK_D=BD,
                                          num_warps=1 if INTERPRET else 4)
    return o


from ..utils import tracing  # kept next to its one user, the public function (a local edit)


def decode_attention(q, k_cache, v_cache, lengths, *, scale: float | None = None, key_mask=None):
    """Attention of the Tq newest tokens per sequence over a static cache; returns (B,H,Tq,D). Inference only.

    lengths: (B,) int tensor on the cache's device; entries [0, lengths[b]) are valid and include the new tokens.
    key_mask: optional bool (B, L); False skips a slot (e.g. the left padding of a shorter prompt).
    """
    check_attention_inputs(q, k_cache, v_cache, key_mask)
    check_tensor("lengths", lengths, ndim=1, dtypes=(torch.int32, torch.int64))
    B, L = q.shape[0], k_cache.shape[2]
    if lengths.shape[0] != B or lengths.device != q.device:
        raise ValueError(f"lengths must have shape ({B},) on {q.device}, got {tuple(lengths.shape)} on {lengths.device}")
    if q.shape[2] > L:
        raise ValueError(f"{q.shape[2]} new tokens do not fit a cache of length {L}")
    if key_mask is not None:
        check_tensor("key_mask", key_mask, ndim=2, dtypes=(torch.bool,))
        if tuple(key_mask.shape) != (B, L):
            raise ValueError(f"key_mask must have shape ({B}, {L}), got {tuple(key_mask.shape)}")
        key_mask = unit_last(key_mask)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if use_triton(q) and (k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1):
        raise ValueError("k_cache and v_cache need unit stride in head_dim (a static cache is allocated that way)")
    return decode_attention_unchecked(q, k_cache, v_cache, lengths, scale, key_mask)


def decode_attention_unchecked(q, k_cache, v_cache, lengths, scale: float, key_mask=None):
    """`decode_attention` after its checks (float scale, unit-stride caches and key_mask): for callers whose
    inputs are valid by construction (the HF attention function). Traced code gets the registered op."""
    if tracing():
        return torch.ops.litekernels.decode_attention(q, k_cache, v_cache, lengths, key_mask, scale)
    if not use_triton(q):
        return reference.decode_attention(q, k_cache, v_cache, lengths, scale=scale, key_mask=key_mask)
    return decode_attention_fwd(q, k_cache, v_cache, lengths, scale, key_mask)
