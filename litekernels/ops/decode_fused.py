"""Fused decode-step GEMVs: RMSNorm (and the residual add) in the prologue, SiLU*mul or RoPE + KV-cache write
in the epilogue, for the batch-1..16 decode step of the generation runtime. Forward only (inference).

At batch 1 a decoder layer of a 1B model reads 2-67 MB of weights per projection, a few microseconds at HBM
speed, so the fixed cost of each kernel (launch gap, ramp-up, tail) is as large as its useful work. These kernels
cut a layer from ~11 launches to 6 (qkv, attention split + combine, o, gate/up, down):

  norm_gemv   prologue: s = x + residual_in (rounded to x's dtype, like torch's add), written by program 0 to a
              SEPARATE residual_out buffer (never in place: the other programs still read residual_in); then
              RMSNorm of s, recomputed by every program (a row is a few KB, read from L2), rounded exactly as
              ops/rms_norm.py does: n = (cast_to_dtype(s_f32 * rstd) * w).to(dtype);
              body: y = n @ W.T over this program's output rows of W (several projections stacked, unit stride),
              streamed in BLOCK_K chunks, fp32 accumulation: tl.dot with the rows padded to 16 (DOT=True, as
              ops/linear.py) or a broadcast multiply + sum (DOT=False), the next W chunk either left to
              Triton's pipeliner or loaded by hand into registers before the current one is used (PREFETCH);
              epilogues (constexpr):
                NONE        y (+ bias) -> out (rows, N)
                SILU_MUL    W = [gate; up] (2*I rows): a program computes gate rows j..j+BN and up rows
                            I+j..I+j+BN, rounds both to the dtype (as the unfused GEMM's output is), and writes
                            silu(g) * u (fp32, one rounding: ops/swiglu.py's order) -> act (rows, I)
                ROPE_CACHE  W = [q; k; v] (H + 2*KV heads of head_dim D, optional bias): a program owns a block of
                            rotary pairs (columns d and d + D/2 of one head), rounds both accumulators to the
                            dtype (the unfused GEMM output), rotates q and k heads in fp32 with cos/sin at
                            positions[b] (HF rotate_half, ops/rope.py's _rope_cache_write_kernel order), writes q
                            -> q_out (rows, H, 1, D), k -> k_cache[b, :, positions[b]], v -> v_cache likewise
  gemv        the same kernel with the prologue off: y = x @ W.T (+ bias) (o and down projections)

PDL (programmatic dependent launch, sm_90+, config PDL=True): a kernel lets the next one launch at once
(gdc_launch_dependents), loads its first weight chunk, and only then waits for the previous grid
(gdc_wait) before it reads any activation or writes anything. Weights are constant during the step, so that
first load is safe; every write comes after the wait, so a buffer the previous kernel still reads (memory the
allocator reused) is never overwritten early.

Launch settings per GPU (decode_fused_config); every launcher takes config= (a dict of FUSED_DEFAULTS keys) so
bench/sweep_decode_fused.py can try others.
Usage: out, s = norm_gemv(x, residual, norm_w, eps, w_qkv, epilogue="rope_cache", rope=RopeCache(...));
       y = gemv(x, w_o)
"""

from __future__ import annotations

import dataclasses

import torch

from .._triton import tl, triton
from ..utils import INTERPRET, check_same_device, check_tensor, use_triton
from ._tl_common import check_pdl, exact_dot, gpu_arch, merge_config

MAX_ROWS = 16
EPILOGUES = {"none": 0, "silu_mul": 1, "rope_cache": 2}


@triton.jit
def _load_w(W, rows, row_ok, k0, K, sw_n, BLOCK_K: tl.constexpr):
    """W[rows, k0:k0+BLOCK_K] (BLOCK_N, BLOCK_K), zero outside."""
    k = k0 + tl.arange(0, BLOCK_K)
    return tl.load(W + rows[:, None] * sw_n + k[None, :], mask=row_ok[:, None] & (k[None, :] < K), other=0.0)


@triton.jit
def _act_chunk(X, R, NW, m, M, k0, K, sx_m, sr_m, rstd, ADD: tl.constexpr, NORM: tl.constexpr,
               BLOCK_K: tl.constexpr):
    """Rows m of the GEMV input at columns k0..k0+BLOCK_K in x's dtype: x, or RMSNorm(x + r) (zero past M, K)."""
    k = k0 + tl.arange(0, BLOCK_K)
    ok = (m[:, None] < M) & (k[None, :] < K)
    x = tl.load(X + m[:, None] * sx_m + k[None, :], mask=ok, other=0.0)
    if ADD:
        r = tl.load(R + m[:, None] * sr_m + k[None, :], mask=ok, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(X.dtype.element_ty)
    if NORM:
        xn = (x.to(tl.float32) * rstd[:, None]).to(X.dtype.element_ty).to(tl.float32)
        w = tl.load(NW + k, mask=k < K, other=0.0).to(tl.float32)
        x = (xn * w[None, :]).to(X.dtype.element_ty)
    return x


@triton.jit
def _mac(acc, a, w, DOT: tl.constexpr, IEEE: tl.constexpr):
    """acc (BLOCK_M, BLOCK_N) += a (BLOCK_M, BLOCK_K) @ w (BLOCK_N, BLOCK_K).T in fp32."""
    if DOT:
        if IEEE:
            acc += tl.dot(a.to(tl.float32), tl.trans(w.to(tl.float32)), input_precision="ieee")
        else:
            acc += tl.dot(a, tl.trans(w))
    else:
        acc += tl.sum(a.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)
    return acc


@triton.jit
def _tile_rows(tile, n_valid, N_OUT, N_HALF, EPILOGUE: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr):
    """Output columns j of a tile, j < n_valid (<= N_OUT), (head, d) of each rotary pair, and the W rows of the
    two accumulators (rows_b: the up rows, or the second half of each head; unused without a paired epilogue)."""
    j = tile.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    if EPILOGUE == 2:
        head = j // (HEAD_DIM // 2)
        d = j % (HEAD_DIM // 2)
        rows_a = head * HEAD_DIM + d
        rows_b = rows_a + HEAD_DIM // 2
    else:
        head = j
        d = j
        rows_a = j
        rows_b = j + N_HALF
    return j, (j < n_valid) & (j < N_OUT), head, d, rows_a, rows_b


@triton.jit
def _decode_gemv_kernel(X, R, RO, NW, W, BIAS, Y, POS, COS, SIN, KC, VC,
                        M, K, N_OUT, N_HALF, eps, sx_m, sr_m, sro_m, sw_n, sy_m, sy_h, sc_t,
                        skc_b, skc_h, skc_t, svc_b, svc_h, svc_t, n_q_heads, n_kv_heads,
                        ADD: tl.constexpr, NORM: tl.constexpr, EPILOGUE: tl.constexpr, HAS_BIAS: tl.constexpr,
                        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, DOT: tl.constexpr, PREFETCH: tl.constexpr, IEEE: tl.constexpr,
                        PDL: tl.constexpr, TILES: tl.constexpr = 1, ONE_CHUNK: tl.constexpr = False):
    """One program: TILES tiles of BLOCK_N output columns j (NONE: rows j of W; SILU_MUL: gate rows j and up rows
    N_HALF + j; ROPE_CACHE: rotary pairs j = head * D/2 + d, rows head * D + d and head * D + d + D/2) for all M
    rows. Several tiles per program share one RMSNorm pass, and each tile's first W chunk is requested before the
    previous tile's epilogue.
    ONE_CHUNK (BLOCK_K >= K: a row of W in one load): the input row (normalised) is computed once and kept in
    registers for every tile, and the next tile's W is requested before this tile's multiply, so a program always
    has a tile in flight; with PDL the whole first tile (and the norm weight) loads before the wait."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    pid = tl.program_id(0)
    tile0 = pid * TILES
    PAIRED: tl.constexpr = EPILOGUE != 0
    HALF: tl.constexpr = HEAD_DIM // 2
    j, j_ok, head, d, rows_a, rows_b = _tile_rows(tile0, N_OUT, N_OUT, N_HALF, EPILOGUE, HEAD_DIM, BLOCK_N)
    m = tl.arange(0, BLOCK_M)
    # weights do not depend on the previous kernel: the first chunk is requested before the wait
    wa = _load_w(W, rows_a, j_ok, 0, K, sw_n, BLOCK_K)
    if PAIRED:
        wb = _load_w(W, rows_b, j_ok, 0, K, sw_n, BLOCK_K)
    if ONE_CHUNK and NORM:
        k_all = tl.arange(0, BLOCK_K)
        nw_all = tl.load(NW + k_all, mask=k_all < K, other=0.0).to(tl.float32)
    if PDL:
        tl.extra.cuda.gdc_wait()
    rstd = tl.zeros([BLOCK_M], dtype=tl.float32)
    if ONE_CHUNK:
        # the whole input row in one load: s = x (+ r), then (NORM) its RMSNorm, rounded as _act_chunk does
        a_all = _act_chunk(X, R, NW, m, M, 0, K, sx_m, sr_m, rstd, ADD, False, BLOCK_K)
        if NORM:
            if ADD:
                k = tl.arange(0, BLOCK_K)
                tl.store(RO + m[:, None] * sro_m + k[None, :], a_all,
                         mask=(m[:, None] < tl.where(pid == 0, M, 0)) & (k[None, :] < K))
            sf = a_all.to(tl.float32)
            rstd = 1.0 / tl.sqrt(tl.sum(sf * sf, axis=1) / K + eps)
            xn = (sf * rstd[:, None]).to(X.dtype.element_ty).to(tl.float32)
            a_all = (xn * nw_all[None, :]).to(X.dtype.element_ty)
    elif NORM:
        # pass 1 over the row(s): sum of squares of s = x (+ r); program 0 writes s to the residual output
        ssq = tl.zeros([BLOCK_M], dtype=tl.float32)
        m_write = tl.where(pid == 0, M, 0)  # rows program 0 writes to the residual output (others: none)
        for k0 in range(0, K, BLOCK_K):
            s = _act_chunk(X, R, NW, m, M, k0, K, sx_m, sr_m, rstd, ADD, False, BLOCK_K)
            if ADD:
                k = k0 + tl.arange(0, BLOCK_K)
                tl.store(RO + m[:, None] * sro_m + k[None, :], s,
                         mask=(m[:, None] < m_write) & (k[None, :] < K))
            sf = s.to(tl.float32)
            ssq += tl.sum(sf * sf, axis=1)
        rstd = 1.0 / tl.sqrt(ssq / K + eps)
    m_ok = m < M
    for t in range(TILES):
        j, j_ok, head, d, rows_a, rows_b = _tile_rows(tile0 + t, N_OUT, N_OUT, N_HALF, EPILOGUE, HEAD_DIM, BLOCK_N)
        acc_a = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        acc_b = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
        n_next = tl.where(t + 1 < TILES, N_OUT, 0)
        _, jn_ok, _, _, rn_a, rn_b = _tile_rows(tile0 + t + 1, n_next, N_OUT, N_HALF, EPILOGUE, HEAD_DIM, BLOCK_N)
        if ONE_CHUNK:
            if TILES > 1:  # the next tile's W is requested before this tile's multiply (none after the last)
                na = _load_w(W, rn_a, jn_ok, 0, K, sw_n, BLOCK_K)
                if PAIRED:
                    nb = _load_w(W, rn_b, jn_ok, 0, K, sw_n, BLOCK_K)
            acc_a = _mac(acc_a, a_all, wa, DOT, IEEE)
            if PAIRED:
                acc_b = _mac(acc_b, a_all, wb, DOT, IEEE)
            if TILES > 1:
                wa = na
                if PAIRED:
                    wb = nb
        elif PREFETCH:
            # the next chunk is requested by hand before this one is used (register double buffer): the
            # compiler's pipeliner does not stage loads that feed no tl.dot (DOT=False) and may not stage these
            for k0 in range(0, K, BLOCK_K):
                na = _load_w(W, rows_a, j_ok, k0 + BLOCK_K, K, sw_n, BLOCK_K)
                if PAIRED:
                    nb = _load_w(W, rows_b, j_ok, k0 + BLOCK_K, K, sw_n, BLOCK_K)
                a = _act_chunk(X, R, NW, m, M, k0, K, sx_m, sr_m, rstd, ADD, NORM, BLOCK_K)
                acc_a = _mac(acc_a, a, wa, DOT, IEEE)
                wa = na
                if PAIRED:
                    acc_b = _mac(acc_b, a, wb, DOT, IEEE)
                    wb = nb
        else:
            # chunk 0 from the registers loaded earlier, the rest in a plain loop the compiler may pipeline
            a = _act_chunk(X, R, NW, m, M, 0, K, sx_m, sr_m, rstd, ADD, NORM, BLOCK_K)
            acc_a = _mac(acc_a, a, wa, DOT, IEEE)
            if PAIRED:
                acc_b = _mac(acc_b, a, wb, DOT, IEEE)
            for k0 in range(BLOCK_K, K, BLOCK_K):
                a = _act_chunk(X, R, NW, m, M, k0, K, sx_m, sr_m, rstd, ADD, NORM, BLOCK_K)
                acc_a = _mac(acc_a, a, _load_w(W, rows_a, j_ok, k0, K, sw_n, BLOCK_K), DOT, IEEE)
                if PAIRED:
                    acc_b = _mac(acc_b, a, _load_w(W, rows_b, j_ok, k0, K, sw_n, BLOCK_K), DOT, IEEE)
        if not ONE_CHUNK:
            # the next tile's first chunk, in flight during this tile's epilogue (none after the last tile)
            wa = _load_w(W, rn_a, jn_ok, 0, K, sw_n, BLOCK_K)
            if PAIRED:
                wb = _load_w(W, rn_b, jn_ok, 0, K, sw_n, BLOCK_K)
        if HAS_BIAS:
            acc_a += tl.load(BIAS + rows_a, mask=j_ok, other=0.0).to(tl.float32)[None, :]
            if PAIRED:
                acc_b += tl.load(BIAS + rows_b, mask=j_ok, other=0.0).to(tl.float32)[None, :]
        out_ok = m_ok[:, None] & j_ok[None, :]
        if EPILOGUE == 0:
            tl.store(Y + m[:, None] * sy_m + j[None, :], acc_a.to(Y.dtype.element_ty), mask=out_ok)
        elif EPILOGUE == 1:
            # the unfused path rounds gate and up (GEMM outputs) to the dtype, then silu_mul computes in fp32
            g = acc_a.to(Y.dtype.element_ty).to(tl.float32)
            u = acc_b.to(Y.dtype.element_ty).to(tl.float32)
            tl.store(Y + m[:, None] * sy_m + j[None, :], (g * tl.sigmoid(g) * u).to(Y.dtype.element_ty),
                     mask=out_ok)
        else:
            x1 = acc_a.to(Y.dtype.element_ty).to(tl.float32)
            x2 = acc_b.to(Y.dtype.element_ty).to(tl.float32)
            pos = tl.load(POS + m, mask=m_ok, other=0).to(tl.int64)
            cs = pos[:, None] * sc_t + d[None, :]
            c1 = tl.load(COS + cs, mask=out_ok, other=0.0).to(tl.float32)
            c2 = tl.load(COS + cs + HALF, mask=out_ok, other=0.0).to(tl.float32)
            s1 = tl.load(SIN + cs, mask=out_ok, other=0.0).to(tl.float32)
            s2 = tl.load(SIN + cs + HALF, mask=out_ok, other=0.0).to(tl.float32)
            rot = (head < n_q_heads + n_kv_heads)[None, :]
            o1 = tl.where(rot, x1 * c1 - x2 * s1, x1)
            o2 = tl.where(rot, x2 * c2 + x1 * s2, x2)
            is_q = (head < n_q_heads)[None, :]
            is_k = ((head >= n_q_heads) & (head < n_q_heads + n_kv_heads))[None, :]
            is_v = (head >= n_q_heads + n_kv_heads)[None, :]
            yq = Y + m[:, None] * sy_m + (tl.minimum(head, n_q_heads - 1) * sy_h + d)[None, :]
            tl.store(yq, o1.to(Y.dtype.element_ty), mask=out_ok & is_q)
            tl.store(yq + HALF, o2.to(Y.dtype.element_ty), mask=out_ok & is_q)
            hk = tl.minimum(tl.maximum(head - n_q_heads, 0), n_kv_heads - 1)
            kp = KC + m[:, None] * skc_b + pos[:, None] * skc_t + (hk * skc_h + d)[None, :]
            tl.store(kp, o1.to(KC.dtype.element_ty), mask=out_ok & is_k)
            tl.store(kp + HALF, o2.to(KC.dtype.element_ty), mask=out_ok & is_k)
            hv = tl.minimum(tl.maximum(head - n_q_heads - n_kv_heads, 0), n_kv_heads - 1)
            vp = VC + m[:, None] * svc_b + pos[:, None] * svc_t + (hv * svc_h + d)[None, :]
            tl.store(vp, o1.to(VC.dtype.element_ty), mask=out_ok & is_v)
            tl.store(vp + HALF, o2.to(VC.dtype.element_ty), mask=out_ok & is_v)


# ------------------------------------------------------------------------------------------------------------
# launch settings
# ------------------------------------------------------------------------------------------------------------
# BLOCK_N: output columns per program (pairs for the paired epilogues: each pair streams two rows of W);
# BLOCK_K: chunk of the input dimension per step; DOT: tl.dot (rows padded to 16) or multiply + sum (rows
# padded to a power of two); PREFETCH: the next W chunk loaded into registers by hand before the current one is
# used (else a plain loop that Triton's pipeliner may stage through shared memory, num_stages); PDL:
# programmatic dependent launch (sm_90+, Triton with launch_pdl); TILES: tiles of BLOCK_N columns per program
# (one RMSNorm pass and one launch wave for several tiles; the grid shrinks by that factor).
# The defaults follow ops/linear.py's measured skinny-GEMM settings (bench/results/sweep-linear-H200.json:
# 32 x 512, 4 warps, 3 stages; 16 columns and 5 stages at K >= 8192), with half the columns for the paired
# epilogues (two W tiles per step); bench/sweep_decode_fused.py measures the alternatives. Stages shrink until
# the estimated shared memory fits the part (sm_80: 163 KB, sm_86/89: 99 KB, sm_90: 227 KB);
# tests/test_launch_configs_fused.py compiles every chosen setting for those targets.
FUSED_DEFAULTS = dict(BLOCK_N=32, BLOCK_K=512, num_warps=4, num_stages=3, DOT=True, PREFETCH=False, PDL=False,
                      TILES=1)


def decode_fused_config(epilogue: str, n_out: int, K: int, arch=None, element_size: int = 2) -> dict:
    """Default settings for a launch with n_out output columns (pairs when paired) over K inputs on arch
    (major, minor, smem bytes); keys as FUSED_DEFAULTS."""
    c = dict(FUSED_DEFAULTS)
    if INTERPRET:
        c.update(BLOCK_N=16, BLOCK_K=32, num_warps=1, num_stages=1)
        return c
    paired = epilogue != "none"
    if K >= 8192:
        c.update(BLOCK_N=16, num_stages=5)
    elif paired:
        c.update(BLOCK_N=16)
    if element_size > 2:
        c["BLOCK_K"] = 256
    smem = (arch or gpu_arch())[2]
    # a stage holds the W tile(s) and the activation chunks; "+ 8 rows" is calibrated on what the compiler
    # reports for these kernels (sm_80/89/90, Triton 3.9: 2 stages of the paired prologue kernel 83 KB, 3 stages
    # 150 KB); tests/test_launch_configs_fused.py compiles every chosen setting as a real launch specializes it
    per_stage = ((2 if paired else 1) * c["BLOCK_N"] + 8) * c["BLOCK_K"] * element_size
    while c["num_stages"] > 1 and c["num_stages"] * per_stage > smem * 0.95:
        c["num_stages"] -= 1
    return c


def _resolve(config, epilogue, n_out, K, dtype, device) -> dict:
    c = merge_config(decode_fused_config(epilogue, n_out, K, gpu_arch(device), dtype.itemsize), config,
                     "decode_fused")
    if c["PDL"] and not INTERPRET:  # the interpreter runs one grid at a time: PDL is a no-op there
        check_pdl("decode_fused", device)
    if int(c["TILES"]) < 1:
        raise ValueError(f"decode_fused config TILES must be >= 1, got {c['TILES']}")
    bn, bk = int(c["BLOCK_N"]), int(c["BLOCK_K"])
    if bn < 1 or bn & (bn - 1) or bk < 16 or bk & (bk - 1) or (c["DOT"] and bn < 16):
        raise ValueError(f"decode_fused config BLOCK_N={bn}, BLOCK_K={bk}: powers of two, BLOCK_K >= 16 and "
                         "BLOCK_N >= 16 with DOT=True")
    return c


# ------------------------------------------------------------------------------------------------------------
# launchers
# ------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RopeCache:
    """What the ROPE_CACHE epilogue needs: positions (B,) int on the device (slot of row b's new token),
    cos, sin (L, D) tables indexed by position, k_cache, v_cache (>= B, n_kv_heads, L, D) with unit stride in
    D, and the head counts."""

    positions: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    n_heads: int
    n_kv_heads: int


def _check_rows(name, x, K):
    check_tensor(name, x, ndim=2)
    if x.shape[0] > MAX_ROWS or x.shape[0] < 1:
        raise ValueError(f"{name} has {x.shape[0]} rows; the fused decode GEMVs take 1..{MAX_ROWS} (one token per "
                         "sequence)")
    if x.shape[1] != K:
        raise ValueError(f"{name} has {x.shape[1]} columns; the weight's in_features is {K}")
    if x.stride(1) != 1:
        raise ValueError(f"{name} needs unit stride in its last dimension, got strides {x.stride()}")


def _check_common(x, weight, bias, extra: dict):
    check_tensor("weight", weight, ndim=2, dtypes=(x.dtype,))
    _check_rows("x", x, weight.shape[1])
    if weight.stride(1) != 1:
        raise ValueError(f"weight needs unit stride in its last dimension, got strides {weight.stride()}")
    if bias is not None:
        check_tensor("bias", bias, ndim=1, dtypes=(x.dtype,))
        if bias.shape[0] != weight.shape[0] or bias.stride(0) != 1:
            raise ValueError(f"bias must be contiguous with {weight.shape[0]} elements, got {tuple(bias.shape)}")
    check_same_device(x=x, weight=weight, bias=bias, **extra)
    if not use_triton(x):
        raise RuntimeError("the fused decode GEMVs run on CUDA tensors (or on the CPU under TRITON_INTERPRET=1); "
                           f"got {x.device} (the runtime falls back to the unfused step there)")
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias, *extra.values())):
        raise RuntimeError("the fused decode GEMVs are inference-only (no backward): call them under "
                           "torch.no_grad() / inference_mode, or detach the inputs")


def _launch(x, weight, bias, y, *, epilogue, n_out, n_half=0, residual=None, res_out=None, norm_weight=None,
            eps=0.0, rope: RopeCache | None = None, sy_h=0, config=None):
    M, K = x.shape
    c = _resolve(config, epilogue, n_out, K, x.dtype, x.device)
    pdl = bool(c["PDL"]) and not INTERPRET
    dot = bool(c["DOT"])
    block_m = 16 if dot else max(1, triton.next_power_of_2(M))
    r = residual if residual is not None else x
    ro = res_out if res_out is not None else x
    nw = norm_weight if norm_weight is not None else weight
    if rope is not None:
        pos, cos, sin, kc, vc = rope.positions, rope.cos, rope.sin, rope.k_cache, rope.v_cache
        skc, svc, sc_t, hq, hkv, hd = kc.stride(), vc.stride(), cos.stride(0), rope.n_heads, rope.n_kv_heads, cos.shape[1]
    else:
        pos, cos, sin, kc, vc = x, x, x, x, x
        skc = svc = (0, 0, 0, 0)
        sc_t, hq, hkv, hd = 0, 0, 0, 2
    extra = {"launch_pdl": True} if pdl else {}
    tiles = int(c["TILES"])
    _decode_gemv_kernel[(triton.cdiv(triton.cdiv(n_out, int(c["BLOCK_N"])), tiles),)](
        x, r, ro, nw, weight, bias if bias is not None else weight, y, pos, cos, sin, kc, vc,
        M=M, K=K, N_OUT=n_out, N_HALF=n_half, eps=float(eps), sx_m=x.stride(0), sr_m=r.stride(0),
        sro_m=ro.stride(0), sw_n=weight.stride(0), sy_m=y.stride(0), sy_h=sy_h, sc_t=sc_t,
        skc_b=skc[0], skc_h=skc[1], skc_t=skc[2], svc_b=svc[0], svc_h=svc[1], svc_t=svc[2],
        n_q_heads=hq, n_kv_heads=hkv,
        ADD=residual is not None, NORM=norm_weight is not None, EPILOGUE=EPILOGUES[epilogue],
        HAS_BIAS=bias is not None, HEAD_DIM=hd, BLOCK_M=block_m, BLOCK_N=int(c["BLOCK_N"]),
        BLOCK_K=int(c["BLOCK_K"]), DOT=dot, PREFETCH=bool(c["PREFETCH"]), IEEE=exact_dot(x.dtype), PDL=pdl,
        TILES=tiles, ONE_CHUNK=int(c["BLOCK_K"]) >= K,
        num_warps=int(c["num_warps"]), num_stages=int(c["num_stages"]), **extra)


def _check_rope(rope: RopeCache, x, weight):
    hq, hkv = int(rope.n_heads), int(rope.n_kv_heads)
    if hq < 1 or hkv < 1:
        raise ValueError(f"n_heads and n_kv_heads must be >= 1, got {hq}, {hkv}")
    check_tensor("cos", rope.cos, ndim=2, dtypes=(x.dtype,))
    check_tensor("sin", rope.sin, ndim=2, dtypes=(x.dtype,))
    D = rope.cos.shape[1]
    if D % 2 or D < 2:
        raise ValueError(f"head_dim must be even, got cos of shape {tuple(rope.cos.shape)}")
    if rope.sin.shape != rope.cos.shape or rope.sin.stride() != rope.cos.stride() or rope.cos.stride(1) != 1:
        raise ValueError(f"cos and sin must be (L, D) tables with one layout and unit stride in D, got "
                         f"{tuple(rope.cos.shape)} {rope.cos.stride()} and {tuple(rope.sin.shape)} {rope.sin.stride()}")
    if weight.shape[0] != (hq + 2 * hkv) * D:
        raise ValueError(f"weight has {weight.shape[0]} rows; the q/k/v projection needs (n_heads + 2 * "
                         f"n_kv_heads) * head_dim = {(hq + 2 * hkv) * D}")
    M = x.shape[0]
    check_tensor("positions", rope.positions, ndim=1, dtypes=(torch.int32, torch.int64))
    if rope.positions.shape[0] != M:
        raise ValueError(f"positions has shape {tuple(rope.positions.shape)}; expected ({M},), one per row of x")
    for name, c in (("k_cache", rope.k_cache), ("v_cache", rope.v_cache)):
        check_tensor(name, c, ndim=4, dtypes=(x.dtype,))
        if c.shape[0] < M or c.shape[1] != hkv or c.shape[3] != D or c.stride(3) != 1:
            raise ValueError(f"{name} has shape {tuple(c.shape)} (strides {c.stride()}); expected (>= {M}, {hkv}, "
                             f"L, {D}) with unit stride in head_dim")
        if c.shape[2] > rope.cos.shape[0]:
            raise ValueError(f"{name} has {c.shape[2]} slots but cos/sin only {rope.cos.shape[0]} positions")
    if rope.k_cache.shape != rope.v_cache.shape:
        raise ValueError(f"k_cache {tuple(rope.k_cache.shape)} and v_cache {tuple(rope.v_cache.shape)} differ")
    return dict(positions=rope.positions, cos=rope.cos, sin=rope.sin, k_cache=rope.k_cache, v_cache=rope.v_cache)


def norm_gemv(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
              weight: torch.Tensor, bias: torch.Tensor | None = None, *, epilogue: str = "none",
              rope: RopeCache | None = None, config: dict | None = None):
    """RMSNorm(x + residual) @ weight.T (+ bias) with a fused epilogue, for 1..16 rows of x (B, K).

    Returns (out, s): s = x + residual in x's dtype (a new tensor; x itself when residual is None), and out:
      epilogue="none"        (B, N) with N = weight rows;
      epilogue="silu_mul"    (B, I): silu(gate) * up with weight = [gate; up] of 2*I rows;
      epilogue="rope_cache"  q (B, H, 1, D) rotated; k (rotated) and v written into rope.k_cache /
                             rope.v_cache at slot rope.positions[b] of row b; weight = [q; k; v] heads.
    Rounds where the unfused ops round (fused_add_rms_norm, F.linear, silu_mul / rope_cache_write). No autograd.
    """
    if epilogue not in EPILOGUES:
        raise ValueError(f"epilogue must be one of {sorted(EPILOGUES)}, got {epilogue!r}")
    extra = {"norm_weight": norm_weight, "residual": residual}
    if rope is not None:
        extra.update(positions=rope.positions, cos=rope.cos, sin=rope.sin, k_cache=rope.k_cache,
                     v_cache=rope.v_cache)
    _check_common(x, weight, bias, {k: v for k, v in extra.items() if v is not None})
    K = weight.shape[1]
    check_tensor("norm_weight", norm_weight, ndim=1, dtypes=(x.dtype,))
    if norm_weight.shape[0] != K or norm_weight.stride(0) != 1:
        raise ValueError(f"norm_weight must be contiguous with {K} elements, got {tuple(norm_weight.shape)}")
    if residual is not None:
        check_tensor("residual", residual, ndim=2, dtypes=(x.dtype,))
        if residual.shape != x.shape or residual.stride(1) != 1:
            raise ValueError(f"residual has shape {tuple(residual.shape)} (strides {residual.stride()}); expected "
                             f"{tuple(x.shape)} with unit stride in the last dimension")
    M, N = x.shape[0], weight.shape[0]
    s = torch.empty_like(x) if residual is not None else x
    if epilogue == "rope_cache":
        if rope is None:
            raise ValueError("epilogue='rope_cache' needs rope=RopeCache(...)")
        _check_rope(rope, x, weight)
        D = rope.cos.shape[1]
        out = torch.empty((M, rope.n_heads, 1, D), dtype=x.dtype, device=x.device)
        _launch(x, weight, bias, out, epilogue=epilogue, n_out=N // 2, residual=residual, res_out=s,
                norm_weight=norm_weight, eps=eps, rope=rope, sy_h=out.stride(1), config=config)
    else:
        if rope is not None:
            raise ValueError(f"rope= is only used by epilogue='rope_cache', not {epilogue!r}")
        if epilogue == "silu_mul":
            if N % 2:
                raise ValueError(f"epilogue='silu_mul' needs weight = [gate; up] with an even row count, got {N}")
            n_out, half = N // 2, N // 2
        else:
            n_out, half = N, 0
        out = torch.empty((M, n_out), dtype=x.dtype, device=x.device)
        _launch(x, weight, bias, out, epilogue=epilogue, n_out=n_out, n_half=half, residual=residual, res_out=s,
                norm_weight=norm_weight, eps=eps, config=config)
    return out, s


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, config: dict | None = None):
    """y = x @ weight.T (+ bias) for 1..16 rows of x (B, K): the fused kernel with its prologue off. No autograd."""
    _check_common(x, weight, bias, {})
    y = torch.empty((x.shape[0], weight.shape[0]), dtype=x.dtype, device=x.device)
    _launch(x, weight, bias, y, epilogue="none", n_out=weight.shape[0], config=config)
    return y
