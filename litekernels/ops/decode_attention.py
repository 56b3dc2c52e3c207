"""Flash-decoding: a few new query tokens per sequence attend over a static KV cache, split along the cache.

Shapes: q (B, H, Tq, D) with small Tq (1 for plain decode, a few for speculative decoding); k_cache, v_cache
(B, Hkv, L, D), the static buffers; lengths (B,) int32/int64 on the device: valid entries per sequence, the new
tokens included (they sit at lengths-Tq .. lengths-1). Query t sees cache positions j < lengths - Tq + t + 1.
key_mask (B, L) bool, optional: False marks slots to skip (left padding in a batch).

Two launches (one when the cache is not split, see below), both with fixed grids so a CUDA graph can replay them
while lengths grow:
  1. split: program (split s, batch b, KV head g) reads the lengths[b] valid entries of its share of the cache
     (lengths[b] / SPLITS, rounded to the tile), once, for all Tq x (H/Hkv) query rows of group g (one tile
     of K/V serves every query head of the group), and writes an un-normalised partial output, its running
     max and sum (as a log2-sum-exp) to fp32 scratch;
  2. combine: program (b, h, t) rescales the SPLITS partials by exp2(lse_s - max) and normalises.
With one split (a short cache, or a batch whose (batch, KV head) pairs fill the GPU) the split kernel normalises
and writes the output itself (DIRECT): one launch, no partials.
Math as in `attention.py`. Inference only (no backward: decode runs under no_grad).
Usage: o = decode_attention(q, k_cache, v_cache, lengths)
"""

from __future__ import annotations


import torch

from .. import reference
from .._triton import tl, triton
from ..utils import INTERPRET, check_tensor, num_sms, on_same_device, unit_last, use_triton
from . import _launch as _L
from ._launch import (PlanCache, PreparedLaunch, PreparedLaunches, _grad_enabled, _is_compiling, _modes,
                      config_key, hot_entry, out_strides, stream_key, stream_key_at)
from ._tl_common import (HAS_PDL, LOG2E, _dot, _finish_rows, _online_softmax_step, check_pdl, exact_dot, gpu_arch,
                         block_d, default_scale, merge_config)
from .attention import DEFAULT_SCALES, check_attention_inputs


@triton.jit
def _combine_row(O_PART, LSE_PART, O, part_row, out_ptrs, D, SPLITS, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """Merge the SPLITS partial results of one query row (scratch row part_row) into out_ptrs."""
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    lse = tl.load(LSE_PART + part_row * SPLITS + s, mask=s < SPLITS, other=float("-inf"), cache_modifier=".cg")
    m = tl.max(lse, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.math.exp2(lse - m_safe)
    total = tl.sum(w, 0)
    parts = tl.load(O_PART + (part_row * SPLITS + s[:, None]) * D + d[None, :],
                    mask=(s[:, None] < SPLITS) & (d[None, :] < D), other=0.0, cache_modifier=".cg")
    out = tl.sum(parts * w[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    tl.store(out_ptrs + d, out.to(O.dtype.element_ty), mask=d < D)


@triton.jit
def _combine_group(O_PART, LSE_PART, O, part0, o_base, so_h, so_t, GROUP, Tq, D, SPLITS, BLOCK_R: tl.constexpr,
                   BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    """Merge the SPLITS partials of the GROUP * Tq query rows of one (batch, KV head) at once (scratch rows
    part0 + r, r = g * Tq + t; output o_base + g * so_h + t * so_t): one load of every partial, so the merge costs
    one memory round trip, not one per row (the fused combine runs in the last split program, on the tail)."""
    r = tl.arange(0, BLOCK_R)
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    r_ok = r < GROUP * Tq
    rs = (part0 + r)[:, None] * SPLITS + s[None, :]
    rs_ok = r_ok[:, None] & (s[None, :] < SPLITS)
    lse = tl.load(LSE_PART + rs, mask=rs_ok, other=float("-inf"), cache_modifier=".cg")
    parts = tl.load(O_PART + rs[:, :, None] * D + d[None, None, :],
                    mask=rs_ok[:, :, None] & (d < D)[None, None, :], other=0.0, cache_modifier=".cg")
    m = tl.max(lse, 1)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.math.exp2(lse - m_safe[:, None])
    total = tl.sum(w, 1)
    out = tl.sum(parts * w[:, :, None], 1) / tl.where(total == 0.0, 1.0, total)[:, None]
    g = r // Tq
    t = r % Tq
    tl.store(o_base + (g * so_h + t * so_t)[:, None] + d[None, :], out.to(O.dtype.element_ty),
             mask=r_ok[:, None] & (d < D)[None, :])


@triton.jit
def _decode_load_kv(k_base, v_base, n, hi, offs_d, sk_n, sv_n, D):
    """K and V rows n (BLOCK_N, BLOCK_D) of one (batch, KV head), zero at n >= hi and past D."""
    ok = (n[:, None] < hi) & (offs_d[None, :] < D)
    k = tl.load(k_base + n[:, None] * sk_n + offs_d[None, :], mask=ok, other=0.0)
    v = tl.load(v_base + n[:, None] * sv_n + offs_d[None, :], mask=ok, other=0.0)
    return k, v


@triton.jit
def _decode_mask(s, n, n_ok, limit, KEYMASK, km_base, HAS_KEYMASK: tl.constexpr):
    """-inf where key n is out of this split, not yet visible to the row (n >= limit) or masked out."""
    valid = n_ok[None, :] & (n[None, :] < limit[:, None])
    if HAS_KEYMASK:
        km = tl.load(KEYMASK + km_base + n, mask=n_ok, other=0)
        valid = valid & (km != 0)[None, :]
    return tl.where(valid, s, float("-inf"))


@triton.jit
def _decode_split_kernel(Q, K, V, LENGTHS, KEYMASK, O_PART, LSE_PART, O, COUNTER,
                         sq_b, sq_h, sq_t, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, skm_b, so_b, so_h, so_t,
                         HKV, GROUP, Tq, D, qk_scale, SPLITS,
                         HAS_KEYMASK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_D: tl.constexpr, IEEE: tl.constexpr, FUSED: tl.constexpr, BLOCK_S: tl.constexpr,
                         MMA: tl.constexpr = True, PDL: tl.constexpr = False, DIRECT: tl.constexpr = False,
                         BLOCK_R: tl.constexpr = 0, WAIT: tl.constexpr = False):
    """DIRECT (one split): the program owns the whole cache of its (batch, KV head), so it writes the normalised
    output itself; no partials, no combine launch.
    MMA=False: q.k and p.v as broadcast products summed in fp32 (tl.sum) instead of tl.dot, so BLOCK_M is the
    group's rows rounded up to a power of two, not an MMA tile of 16 that is mostly padding at GROUP * Tq = 4.
    PDL: let the next kernel (the combine, or the output's consumer) launch (programmatic dependent launch) as
    soon as every split program has started; it waits for this grid's completion (gdc_wait) before reading.
    WAIT: this grid was itself launched early (launch_pdl): wait for the previous kernel (which writes q and the
    new token's K/V) before reading anything."""
    if WAIT:
        tl.extra.cuda.gdc_wait()
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
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
    if MMA:
        for start_n in range(lo, hi, BLOCK_N):
            n = start_n + offs_n
            n_ok = n < hi
            # both tiles are requested before the dot, so the V load overlaps the scores
            kt = tl.load(k_base + n[None, :] * sk_n + offs_d[:, None], mask=n_ok[None, :] & (offs_d[:, None] < D),
                         other=0.0)
            v = tl.load(v_base + n[:, None] * sv_n + offs_d[None, :], mask=n_ok[:, None] & (offs_d[None, :] < D),
                        other=0.0)
            s = _decode_mask(_dot(q, kt, IEEE) * qk_scale, n, n_ok, limit, KEYMASK, b * skm_b, HAS_KEYMASK)
            acc, m_i, l_i = _online_softmax_step(acc, m_i, l_i, s, v, IEEE)
    else:
        # No tl.dot: the compiler's pipeliner does not stage these loads through shared memory (they feed no
        # MMA), so the next tile is requested by hand before this one is used (register double buffer).
        qf = q.to(tl.float32)
        k_nx, v_nx = _decode_load_kv(k_base, v_base, lo + offs_n, hi, offs_d, sk_n, sv_n, D)
        for start_n in range(lo, hi, BLOCK_N):
            n = start_n + offs_n
            n_ok = n < hi
            k, v = k_nx, v_nx
            k_nx, v_nx = _decode_load_kv(k_base, v_base, n + BLOCK_N, hi, offs_d, sk_n, sv_n, D)
            s = tl.sum(qf[:, None, :] * k.to(tl.float32)[None, :, :], 2) * qk_scale
            s = _decode_mask(s, n, n_ok, limit, KEYMASK, b * skm_b, HAS_KEYMASK)
            # the online-softmax step with p kept in fp32 and p.v as a broadcast sum
            m_new = tl.maximum(m_i, tl.max(s, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.math.exp2(m_i - m_safe)
            p = tl.math.exp2(s - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v.to(tl.float32)[None, :, :], 1)
            m_i = m_new
    out, lse = _finish_rows(acc, m_i, l_i, float("-inf"))
    if DIRECT:
        tl.store(O + b * so_b + h[:, None] * so_h + t[:, None] * so_t + offs_d[None, :],
                 out.to(O.dtype.element_ty), mask=row_ok[:, None] & (offs_d[None, :] < D))
    else:
        # scratch layout: O_PART (B, H, Tq, SPLITS, D), LSE_PART (B, H, Tq, SPLITS)
        part = (b * HKV * GROUP + h) * Tq + t
        row = part * SPLITS + split
        tl.store(LSE_PART + row, lse, mask=row_ok)
        tl.store(O_PART + row[:, None] * D + offs_d[None, :], out,
                 mask=row_ok[:, None] & (offs_d[None, :] < D))
        if FUSED:
            # The last split of this (batch, KV head) to finish merges the group's rows. The barrier orders every
            # thread's partial stores before the (single-thread) atomic, whose acq_rel GPU-scope semantics publish
            # them (cumulatively) and, for the last program, acquire every other program's; its merge then reads
            # through L2 (.cg loads), never a stale L1 line.
            tl.debug_barrier()
            done = tl.atomic_add(COUNTER + pid_bh, 1)
            if done == SPLITS - 1:
                if BLOCK_R > 0:  # every row of the group in one pass (when its partials fit the registers)
                    _combine_group(O_PART, LSE_PART, O, (b * HKV + kvh) * GROUP * Tq,
                                   O + b * so_b + kvh * GROUP * so_h, so_h, so_t, GROUP, Tq, D, SPLITS, BLOCK_R,
                                   BLOCK_S, BLOCK_D)
                else:
                    for rr in range(0, GROUP * Tq):
                        hh = kvh * GROUP + rr // Tq
                        tt = rr % Tq
                        _combine_row(O_PART, LSE_PART, O, (b * HKV * GROUP + hh) * Tq + tt,
                                     O + b * so_b + hh * so_h + tt * so_t, D, SPLITS, BLOCK_S, BLOCK_D)
                tl.atomic_xchg(COUNTER + pid_bh, 0)  # ready for the next launch on this stream / graph replay


@triton.jit
def _decode_combine_kernel(O_PART, LSE_PART, O, so_b, so_h, so_t, H, Tq, D, SPLITS, N_ROWS,
                           BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, ROWS: tl.constexpr = 1,
                           PDL: tl.constexpr = False):
    """Program p merges query rows p * ROWS .. p * ROWS + ROWS - 1 of the N_ROWS = B * H * Tq rows
    (row = (b * H + h) * Tq + t). PDL: launched early (programmatic dependent launch); gdc_wait blocks until the
    split grid has finished and its writes are visible; the next kernel may launch at once (it waits in turn)."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    for i in tl.static_range(ROWS):
        pid = tl.program_id(0).to(tl.int64) * ROWS + i
        t = pid % Tq
        h = (pid // Tq) % H
        b = pid // (Tq * H)
        if pid < N_ROWS:
            _combine_row(O_PART, LSE_PART, O, pid, O + b * so_b + h * so_h + t * so_t, D, SPLITS, BLOCK_S, BLOCK_D)


# Launch settings per compute capability: BLOCK_N, num_warps, num_stages of the split kernel. sm_90 from
# bench/sweep.py (H200, bench/results/sweep-H200.json); sm_80/sm_89: fewer stages where a stage of K and V at
# head_dim 256 would not fit (tests/test_launch_configs.py compiles them for those targets).
# Phase-2 variant keys (defaults = the measured behaviour): MMA=False scores without tl.dot (tiny groups),
# COMBINE_ROWS query rows per combine program, COMBINE_WARPS its warps, PDL programmatic dependent launch (None:
# on where it exists, sm_90+ with a Triton that has launch_pdl; ignored by the interpreter, which has no second grid
# to overlap): the split grid and the combine launch early and wait (gdc_wait) for their predecessor, and each lets
# the next kernel launch early (a consumer launched with PDL waits in turn; any other starts after completion).
# Split count (choose_splits): WAVES programs per SM over all (batch, KV head) pairs, each split at least MIN_CHUNK
# cache entries. From bench/results/sweep-attn-phase4-clean-H200.json (H200, bf16, L2-clean chained timing): about
# two programs per SM with the longest chunks won at every shape (B1 L32768: 32 splits 66.7% of copy vs 64.3% at
# the old 66; B8 L8192 D128: 4 splits 88.5-90.1% vs 85.7% at 16; B64 L2048: 1 split 93.7% vs 82.4% at 8), and PDL
# took 0.6 us off a short cache's two launches (B1 L512, 8 active splits: 4.62 vs 5.19 us) while staying within the
# run-to-run spread on the long ones. MIN_CHUNK 256 keeps caches of <= 256 entries in one split (one launch: an
# eager caller's host time); graph-replayed callers (the generation runtime) pass a smaller one.
DECODE_DEFAULTS = dict(BLOCK_N=64, num_warps=4, num_stages=3, SPLITS=None, WAVES=2, MIN_CHUNK=256, MAX_SPLITS=128,
                       FUSED=False, MMA=True, COMBINE_ROWS=1, COMBINE_WARPS=4, PDL=None)


def _auto_pdl(arch) -> bool:
    """PDL's default: on where it exists (a Triton with launch_pdl, an NVIDIA GPU of compute capability >= 9.0)."""
    return bool(HAS_PDL and arch[0] >= 9 and torch.version.hip is None and not INTERPRET)


def decode_config(D: int, arch=None, element_size: int = 2) -> dict:
    """Default decode settings for head_dim D on arch (major, minor, smem); keys as DECODE_DEFAULTS."""
    c = dict(DECODE_DEFAULTS)
    if INTERPRET:
        c.update(BLOCK_N=16, num_warps=1, num_stages=1, PDL=False)
        return c
    arch = arch or gpu_arch()
    c["PDL"] = _auto_pdl(arch)
    smem = arch[2]
    bd = block_d(D)
    if element_size > 2:
        c["BLOCK_N"] = 32
    per_stage = 2 * c["BLOCK_N"] * bd * element_size  # one K and one V tile
    while c["num_stages"] > 1 and c["num_stages"] * per_stage + 16 * bd * 4 > smem * 0.9:
        c["num_stages"] -= 1
    return c


def choose_splits(batch: int, kv_heads: int, max_len: int, block_n: int = 64, waves: int = 2,
                  min_chunk: int = 256, max_splits: int = 128) -> int:
    """Splits so the batch * kv_heads * splits programs are about `waves` per SM (a power of two, so long caches
    split into equal chunks of whole tiles), fewer where a split would get under min_chunk cache entries (that cap
    need not be a power of two); one split when the pairs alone fill the GPU. Fixed per cache shape, so a captured
    graph stays valid. See DECODE_DEFAULTS for the measurements."""
    if INTERPRET:
        return max(1, min(3, triton.cdiv(max_len, 16)))
    want = max(1, int(triton.cdiv(waves * num_sms(), batch * kv_heads)))
    want = 1 << (want.bit_length() - 1)  # the power of two at or below
    return int(max(1, min(want, triton.cdiv(max_len, max(min_chunk, block_n)), max_splits)))


class _Plan:
    """Everything a decode launch needs that depends only on the shapes, dtype, device and config."""
    __slots__ = ("grid", "cgrid", "consts", "cconsts", "splits", "part_shape", "lse_shape", "counter_len",
                 "scratch", "B", "H", "Tq", "D", "HKV", "GROUP", "fused", "direct")


_plans: dict = {}


def _make_plan(B, H, HKV, L, D, Tq, dtype, device, has_mask, config, splits) -> _Plan:
    c = decode_config(D, gpu_arch(device), dtype.itemsize)
    if isinstance(config, (tuple, list)):
        config = dict(zip(("BLOCK_N", "num_warps", "num_stages"), config))
    c = merge_config(c, config, "decode")
    if c["PDL"] is None:  # asked for explicitly: the default, as DECODE_DEFAULTS documents
        c["PDL"] = _auto_pdl(gpu_arch(device))
    if c["PDL"]:
        check_pdl("decode", device)
    if int(c["COMBINE_ROWS"]) < 1 or int(c["COMBINE_WARPS"]) < 1:
        raise ValueError(f"decode config COMBINE_ROWS and COMBINE_WARPS must be >= 1, got {c['COMBINE_ROWS']}, "
                         f"{c['COMBINE_WARPS']}")
    p = _Plan()
    p.splits = int(splits or c["SPLITS"] or choose_splits(B, HKV, L, c["BLOCK_N"], c["WAVES"], c["MIN_CHUNK"],
                                                         c["MAX_SPLITS"]))
    group = H // HKV
    bd = block_d(D)
    bs = max(2, triton.next_power_of_2(p.splits))
    p.B, p.H, p.Tq, p.D, p.HKV, p.GROUP = B, H, Tq, D, HKV, group
    # the fused combine merges the group's rows in one pass when their partials are <= 8192 fp32 values (64 per
    # thread at 4 warps), else row by row
    block_r = triton.next_power_of_2(group * Tq)
    block_r = block_r if block_r * bs * bd <= 8192 else 0
    p.direct = p.splits == 1  # one split: the split kernel writes the output (one launch, no scratch traffic)
    p.fused = bool(c["FUSED"]) and not p.direct
    rows = int(c["COMBINE_ROWS"])
    # PDL: the split kernel lets the next launch start early (the combine, or after one split the consumer of
    # the output, which waits for this grid if it was launched with PDL); a separate combine waits for the splits
    trigger = bool(c["PDL"]) and not INTERPRET
    pdl = trigger and not p.fused and not p.direct
    p.grid = (p.splits, B * HKV)
    p.cgrid = (triton.cdiv(B * H * Tq, rows),)
    mma = bool(c["MMA"])
    p.consts = dict(HAS_KEYMASK=has_mask, BLOCK_M=max(16 if mma else 2, triton.next_power_of_2(group * Tq)),
                    BLOCK_N=c["BLOCK_N"], BLOCK_D=bd, IEEE=exact_dot(dtype), FUSED=p.fused, BLOCK_S=bs,
                    BLOCK_R=block_r,
                    num_warps=c["num_warps"], num_stages=c["num_stages"], MMA=mma, PDL=trigger, DIRECT=p.direct,
                    WAIT=trigger)
    p.cconsts = dict(BLOCK_S=bs, BLOCK_D=bd, ROWS=rows, PDL=pdl,
                     num_warps=1 if INTERPRET else int(c["COMBINE_WARPS"]))
    if trigger:  # the split grid launches early too and waits for its predecessor (WAIT)
        p.consts["launch_pdl"] = True
    if pdl:
        p.cconsts["launch_pdl"] = True
    p.part_shape = (B, H, Tq, p.splits, D)
    p.lse_shape = (B, H, Tq, p.splits)
    p.counter_len = B * HKV
    p.scratch = {}
    return p


def _scratch(p: _Plan, device, reuse: bool = True):
    """(o_part, lse_part, counter) for this launch. Reused per (plan, stream): launches on one stream run in
    order, so the next call's writes cannot overtake this call's reads. Two streams get separate buffers; calls
    made while a CUDA graph is being captured get fresh buffers from the graph's pool (never cached), so a
    replay never shares scratch with eager calls. NOT safe: the same plan used concurrently from two threads
    on one stream (calls are then not ordered) - use separate streams."""
    return _scratch_at(p, stream_key(device) if reuse else None, device)


def _scratch_at(p: _Plan, key, device):
    """_scratch with the stream key already taken (None: fresh buffers, not cached)."""
    buf = None if key is None else p.scratch.get(key)
    if buf is None:
        buf = (torch.empty(p.part_shape, dtype=torch.float32, device=device),
               torch.empty(p.lse_shape, dtype=torch.float32, device=device),
               # the fused combine's arrival counters must start at zero; unfused, the slot is unused (no memset)
               torch.zeros(p.counter_len, dtype=torch.int32, device=device) if p.fused
               else torch.empty(1, dtype=torch.int32, device=device))
        if key is not None:
            p.scratch[key] = buf
    return buf


def _call_key(q, k_cache, v_cache, lengths, scale, key_mask=None, splits=None, config=None, reuse_scratch=True):
    """The key of a prepared call: every fact of the inputs and arguments that the checks, the plan and the
    launches read (scale None: the public default)."""
    qs = q.shape
    return (qs, q.stride(), q.dtype, q.device, k_cache.shape, k_cache.stride(), k_cache.dtype, k_cache.device,
            v_cache.shape, v_cache.stride(), v_cache.dtype, v_cache.device,
            lengths.shape, lengths.stride(), lengths.dtype, lengths.device,
            None if key_mask is None else (key_mask.shape, key_mask.stride(), key_mask.dtype, key_mask.device),
            DEFAULT_SCALES[qs[-1]] if scale is None else scale, splits,
            None if config is None else config_key(config), reuse_scratch)


_CALLS = PlanCache(_call_key, tied_to=(globals(), "_plans"), hot_slots=1)
# (check, scale, grad_test, plan): the call plan the public functions took last without a key mask
_HOT = _CALLS.hot


def _lookup(q, k_cache, v_cache, lengths, scale, key_mask):
    """_CALLS.lookup after the hot plan's one-call test (rms_norm's: facts_check covers every tensor fact of the
    key; the scale is compared; only calls without a key mask, as facts_check takes tensors only). The slot is one
    tuple with the scale inside, read and written whole, so threads never pair one call's plan with another's
    scale."""
    if (key_mask is None and _L._plans_on and _plans is _CALLS.source and not _is_compiling()
            and (_modes is None or not _modes())):
        check, hot_scale, grad_test, hot = _HOT[0]
        if check(q, k_cache, v_cache, lengths) and scale == hot_scale and not (grad_test and _grad_enabled()):
            return hot
    plan = _CALLS.lookup(q, k_cache, v_cache, lengths, scale, key_mask)
    if plan is not None and key_mask is None:
        # 0.0 for hot_entry's eps: the scale is compared from the slot
        check, _, grad_test, run = hot_entry(plan, plan, 0.0, q, k_cache, v_cache, lengths)
        _HOT[0] = (check, scale, grad_test, run)
    return plan


class _Call:
    """The launches (split, and combine unless FUSED or one split) of a decode call for inputs of one key, over its
    shape plan `p`, as one PreparedLaunches (one hook, device, stream and pointer step for both)."""
    __slots__ = ("p", "o_shape", "o_like", "reuse", "launches", "device", "index", "hot", "hot_builds")

    def __init__(self, q, k_cache, v_cache, lengths, scale, key_mask, splits, config, reuse_scratch):
        _check(q, k_cache, v_cache, lengths, key_mask)  # a plan exists only for valid inputs
        self.hot, self.hot_builds = None, 0  # hot_entry's tuple for this call plan, and how often it was made
        B, H, Tq, D = q.shape
        L = k_cache.shape[2]
        has_mask = key_mask is not None
        pkey = (B, H, k_cache.shape[1], L, D, Tq, q.dtype, q.device, has_mask, config_key(config), splits)
        p = self.p = _plans.get(pkey)
        if p is None:
            p = self.p = _plans[pkey] = _make_plan(B, H, k_cache.shape[1], L, D, Tq, q.dtype, q.device, has_mask,
                                                   config, splits)
        self.reuse = reuse_scratch
        self.device = q.device
        self.index = q.get_device() if q.is_cuda else -1  # stream_key_at's argument
        self.o_shape = (B, H, Tq, D)
        self.o_like = q.is_contiguous()  # then empty_like(q) is a dense o, with less argument parsing
        so = out_strides(self.o_like, q, self.o_shape)
        skm = key_mask.stride(0) if key_mask is not None else 0
        sq, sk, sv = q.stride(), k_cache.stride(), v_cache.stride()
        split = PreparedLaunch(
            _decode_split_kernel, p.grid,
            (sq[0], sq[1], sq[2], sk[0], sk[1], sk[2], sv[0], sv[1], sv[2], skm, so[0], so[1], so[2],
             p.HKV, p.GROUP, Tq, D, scale * LOG2E, p.splits), p.consts)
        # tensors: q, k_cache, v_cache, lengths, key mask, o_part, lse_part, o, counter (the split's arguments);
        # the combine reads o_part, lse_part, o
        self.launches = PreparedLaunches((split, None)) if p.fused or p.direct else PreparedLaunches(
            (split, None),
            (PreparedLaunch(_decode_combine_kernel, p.cgrid, (so[0], so[1], so[2], H, Tq, D, p.splits, B * H * Tq),
                            p.cconsts), (5, 6, 7)))

    def __call__(self, q, k_cache, v_cache, lengths, key_mask):
        p = self.p
        key = stream_key_at(self.index) if self.reuse else None
        # a hit in the per-stream cache, else _scratch_at's fresh buffers (never stored under None)
        o_part, lse_part, counter = p.scratch.get(key) or _scratch_at(p, key, self.device)
        o = torch.empty_like(q) if self.o_like else torch.empty(self.o_shape, dtype=q.dtype, device=self.device)
        # KEYMASK is unused without a mask: lengths stands in
        self.launches(q, k_cache, v_cache, lengths, lengths if key_mask is None else key_mask.view(torch.uint8),
                      o_part, lse_part, o, counter)
        return o


def decode_attention_fwd(q, k_cache, v_cache, lengths, scale, key_mask=None, splits=None, config=None,
                         reuse_scratch: bool = True):
    """Launch split (+ combine unless FUSED or one split). config: None (defaults for this GPU), a tuple (BLOCK_N,
    num_warps, num_stages) or a dict of DECODE_DEFAULTS keys (SPLITS, WAVES, MIN_CHUNK, MAX_SPLITS pick the split count;
    FUSED merges the partials in the split kernel's last program instead of a second launch; MMA, COMBINE_ROWS,
    COMBINE_WARPS, PDL: see DECODE_DEFAULTS). reuse_scratch=False: fresh scratch for this call (the registered
    op, whose memory torch.compile's CUDA-graph trees manage: a cached buffer allocated in their pool during
    warm-up would outlive it)."""
    q, lengths = unit_last(q), unit_last(lengths)  # the kernel reads lengths[b] with unit stride
    if key_mask is not None:
        key_mask = unit_last(key_mask)
    key = _call_key(q, k_cache, v_cache, lengths, scale, key_mask, splits, config, reuse_scratch)
    call = _CALLS.get_or_build(key, _Call, q, k_cache, v_cache, lengths, scale, key_mask, splits, config, reuse_scratch)
    return call(q, k_cache, v_cache, lengths, key_mask)


def _check(q, k_cache, v_cache, lengths, key_mask=None):
    """The checks of a public call (on the Triton path): attention shapes, lengths, key_mask, cache layout."""
    check_attention_inputs(q, k_cache, v_cache, key_mask)
    B, L = q.shape[0], k_cache.shape[2]
    if not (isinstance(lengths, torch.Tensor) and lengths.dtype in _LENGTH_DTYPES and lengths.dim() == 1
            and lengths.shape[0] == B and q.shape[2] <= L
            and on_same_device(lengths, q)):  # the common path passes this compound test
        check_tensor("lengths", lengths, ndim=1, dtypes=_LENGTH_DTYPES)
        if lengths.shape[0] != B or lengths.device != q.device:
            raise ValueError(f"lengths must have shape ({B},) on {q.device}, got {tuple(lengths.shape)} on "
                             f"{lengths.device}")
        if q.shape[2] > L:
            raise ValueError(f"{q.shape[2]} new tokens do not fit a cache of length {L}")
    if key_mask is not None:
        check_tensor("key_mask", key_mask, ndim=2, dtypes=(torch.bool,))
        if tuple(key_mask.shape) != (B, L):
            raise ValueError(f"key_mask must have shape ({B}, {L}), got {tuple(key_mask.shape)}")
    if use_triton(q) and (k_cache.stride(-1) != 1 or v_cache.stride(-1) != 1):
        raise ValueError("k_cache and v_cache need unit stride in head_dim (a static cache is allocated that way)")


from ..utils import tracing  # kept next to its one user, the public function (a local edit)


_LENGTH_DTYPES = (torch.int32, torch.int64)


def decode_attention(q, k_cache, v_cache, lengths, *, scale: float | None = None, key_mask=None):
    """Attention of the Tq newest tokens per sequence over a static cache; returns (B,H,Tq,D). Inference only.

    lengths: (B,) int tensor on the cache's device; entries [0, lengths[b]) are valid and include the new tokens.
    key_mask: optional bool (B, L); False skips a slot (e.g. the left padding of a shorter prompt).
    """
    plan = _lookup(q, k_cache, v_cache, lengths, scale, key_mask)  # a repeated call: checks already passed
    if plan is not None:
        return plan(q, k_cache, v_cache, lengths, key_mask)
    _check(q, k_cache, v_cache, lengths, key_mask)
    if key_mask is not None:
        key_mask = unit_last(key_mask)
    scale = default_scale(q.shape[-1]) if scale is None else float(scale)
    return _decode_attention(q, k_cache, v_cache, lengths, scale, key_mask)


def decode_attention_unchecked(q, k_cache, v_cache, lengths, scale: float, key_mask=None):
    """`decode_attention` after its checks (float scale, unit-stride caches and key_mask): for callers whose
    inputs are valid by construction (the HF attention function). Traced code gets the registered op."""
    plan = _lookup(q, k_cache, v_cache, lengths, scale, key_mask)
    if plan is not None:
        return plan(q, k_cache, v_cache, lengths, key_mask)
    return _decode_attention(q, k_cache, v_cache, lengths, scale, key_mask)


def _decode_attention(q, k_cache, v_cache, lengths, scale: float, key_mask=None):
    if tracing():
        return torch.ops.litekernels.decode_attention(q, k_cache, v_cache, lengths, key_mask, scale)
    if not use_triton(q):
        return reference.decode_attention(q, k_cache, v_cache, lengths, scale=scale, key_mask=key_mask)
    return decode_attention_fwd(q, k_cache, v_cache, lengths, scale, key_mask)


def clear_decode_cache() -> None:
    """Drop the cached launch plans and their scratch buffers (they hold device memory per shape and stream)."""
    _plans.clear()
    _CALLS.plans.clear()
    _CALLS.cool()
