"""Skinny GEMM for decode: y = x @ W^T (+ b) with few rows in x (one per sequence), read-bandwidth bound.

At batch 1-16 a decode projection reads the whole weight once and does almost no arithmetic, so its floor is
weight bytes / HBM bandwidth. cuBLAS picks tiles for larger M and leaves bandwidth unused on the small
q/k/v and o projections of a 1B model (bench/results/generate-*.json). Here each program owns BLOCK_N output
columns, streams its [BLOCK_N, K] slab of W in BLOCK_K chunks (software-pipelined loads), and multiplies with
tl.dot against x padded to 16 rows; no split-K, so no reduction pass. Forward only (decode runs under no_grad).
Measured (H200, bench/results/sweep-linear-H200.json): per projection, best config vs cuBLAS, 0.98-1.10x at
batch 1 but 0.51x on the batch-8 o projection (the default config: 0.18x); inside the graph-replayed decode
step of a 1B model it ties (batch 1) or trails by 3% (batch 8; generate-H200.json), so the generation
runtime keeps cuBLAS by default and takes this with skinny_gemm=True.
Usage: y = decode_linear(x, weight, bias)      # x (..., K) with at most 16 rows in all
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._triton import tl, triton
from ..utils import INTERPRET, check_same_device, check_tensor, unit_last, use_triton
from ._launch import launch
from ._tl_common import _dot, exact_dot

MAX_ROWS = 16


@triton.jit
def _skinny_gemm_kernel(X, W, B, Y, M, N, K, sx_m, sw_n, sy_m, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr):
    n = tl.program_id(0).to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    m = tl.arange(0, BLOCK_M)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(X + m[:, None] * sx_m + k[None, :], mask=(m[:, None] < M) & (k[None, :] < K), other=0.0)
        w = tl.load(W + n[:, None] * sw_n + k[None, :], mask=(n[:, None] < N) & (k[None, :] < K), other=0.0)
        acc += _dot(x, tl.trans(w), IEEE)
    if HAS_BIAS:
        acc += tl.load(B + n, mask=n < N, other=0.0).to(tl.float32)[None, :]
    tl.store(Y + m[:, None] * sy_m + n[None, :], acc.to(Y.dtype.element_ty), mask=(m[:, None] < M) & (n[None, :] < N))


def _config(N: int, K: int):
    """(BLOCK_N, BLOCK_K, num_warps, num_stages), from bench/sweep.py --only linear (H200, Llama-3.2-1B shapes,
    bench/results/sweep-linear-H200.json): (32, 512, 4, 3) was best or within 5% for every shape at M=1
    except the long-K down projection, which preferred 16 columns and 5 stages (at M=8 it is 5.5x slower than
    cuBLAS on the 2048x2048 o projection)."""
    if INTERPRET:
        return 16, 32, 1, 1
    if K >= 8192:
        return 16, 512, 4, 5
    return 32, 512, 4, 3


def skinny_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, config=None):
    """Launch the skinny GEMM: y = x @ weight.T (+ bias) for at most MAX_ROWS rows (unit-stride weight rows)."""
    K, N = weight.shape[1], weight.shape[0]
    rows = x.numel() // max(K, 1)
    x2 = unit_last(x.reshape(rows, K))
    y = torch.empty((rows, N), dtype=x.dtype, device=x.device)
    BN, BK, warps, stages = config or _config(N, K)
    launch(_skinny_gemm_kernel, (triton.cdiv(N, BN),),
        x2, weight, bias if bias is not None else weight, y, rows, N, K, x2.stride(0), weight.stride(0), y.stride(0),
        HAS_BIAS=bias is not None, BLOCK_M=16, BLOCK_N=BN, BLOCK_K=BK, IEEE=exact_dot(x.dtype),
        num_warps=warps, num_stages=stages)
    return y.view(*x.shape[:-1], N)


from ..utils import tracing  # kept next to its one user, the public function (a local edit)


def decode_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, config=None):
    """F.linear for at most 16 rows of x, tuned for reading the weight at HBM speed. Falls back to F.linear
    when there are more rows, when the tensors are not on CUDA/the interpreter, or when grad is needed."""
    check_tensor("x", x)
    check_tensor("weight", weight, ndim=2, dtypes=(x.dtype,))
    check_same_device(x=x, weight=weight, bias=bias)
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x's last dimension {x.shape[-1]} != weight's in_features {weight.shape[1]}")
    rows = x.numel() // max(x.shape[-1], 1)
    if (rows > MAX_ROWS or not use_triton(x) or weight.stride(-1) != 1
            or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
        return F.linear(x, weight, bias)
    if tracing() and config is None:
        return torch.ops.litekernels.decode_linear(x, weight, bias)
    return skinny_gemm(x, weight, bias, config)
