"""Triton helpers shared by the attention kernels (prefill, decode) and the skinny GEMM, plus the launch-target
query they use to pick settings per GPU. Every op module imports from here; no op imports another's private names.

  _dot                  tl.dot with fp32 accumulation; IEEE=True gives exact fp32 products (interpreter, fp32)
  _online_softmax_step  fold one tile of log2-scaled scores and its values into the running (acc, max, sum)
  _online_softmax_step_lazy  the same with a lazily moved reference max (rescale skipped when no row moved)
  _finish_rows          normalise the accumulator and give each row's log2-sum-exp
  exact_dot(dtype)      the IEEE switch for a launch
  LOG2E                 scores are kept in log2 units: exp(x) = exp2(x * LOG2E), folded into the scale
  gpu_arch(device)      (compute capability major, minor, shared memory per block opt-in) of the launch device
  HAS_PDL               this Triton can launch with programmatic dependent launch (launch_pdl + gdc_* intrinsics)
  merge_config, check_pdl  a launch's config= dict over the defaults; the PDL=True precondition check
  block_d(D), default_scale(D)  the head_dim tile (power of two, >= 16); softmax's default 1/sqrt(head_dim)
"""

from __future__ import annotations

import functools
import math

import torch

from .._triton import tl, triton
from ..utils import INTERPRET

LOG2E = 1.4426950408889634

# What the launch-setting tables assume when there is no GPU (interpreter): an H200-like sm_90 part.
DEFAULT_ARCH = (9, 0, 232448)
# Shared memory per block (opt-in) of the parts the tables are written for; test_launch_configs.py checks them.
SMEM_LIMIT = {(8, 0): 166912, (8, 6): 101376, (8, 9): 101376, (9, 0): 232448}


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
def _online_softmax_step_lazy(acc, m_i, l_i, s, v, TAU: tl.constexpr, IEEE: tl.constexpr):
    """_online_softmax_step with the rescale trick of FlashAttention-3: a row's reference max m_i moves only when
    a score exceeds it by more than TAU (log2 units), and the tile skips the accumulator rescale when no row
    moved. Exact: numerator and denominator use the same reference, so o = acc / l and lse = m_i + log2(l) are
    unchanged; terms p = exp2(s - m_i) stay <= 2^TAU (TAU = 8: 256, far inside bf16/fp16 and fp32 sums)."""
    m_tile = tl.max(s, 1)
    grow = m_tile > m_i + TAU  # -inf + TAU = -inf: a row's first finite score always moves its reference
    m_new = tl.where(grow, m_tile, m_i)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s - m_safe[:, None])
    if tl.max(grow.to(tl.int32), 0) > 0:
        alpha = tl.math.exp2(m_i - m_safe)
        l_i = l_i * alpha
        acc = acc * alpha[:, None]
    l_i = l_i + tl.sum(p, 1)
    acc = acc + _dot(p.to(v.dtype), v, IEEE)
    return acc, m_new, l_i


@triton.jit
def _finish_rows(acc, m_i, l_i, EMPTY_LSE):
    """(output, log2-sum-exp) of the finished rows; a row with no key gets output 0 and lse EMPTY_LSE."""
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    return acc / l_safe[:, None], tl.where(empty, EMPTY_LSE, m_i + tl.math.log2(l_safe))


def exact_dot(dtype) -> bool:
    """fp32 inputs get IEEE products; so does everything under the interpreter, whose bf16 tl.dot is wrong
    (triton 3.9: it multiplies the raw bits), after the operands were rounded to their dtype as on the GPU."""
    return dtype == torch.float32 or INTERPRET


@functools.lru_cache(maxsize=None)
def _arch_of(index: int) -> tuple[int, int, int]:
    p = torch.cuda.get_device_properties(index)
    smem = getattr(p, "shared_memory_per_block_optin", 0) or SMEM_LIMIT.get((p.major, p.minor), 101376)
    return p.major, p.minor, int(smem)


def gpu_arch(device: torch.device | None = None) -> tuple[int, int, int]:
    """(major, minor, shared memory bytes per block, opt-in) of a CUDA device; DEFAULT_ARCH off the GPU."""
    if device is None or device.type != "cuda":
        return DEFAULT_ARCH
    return _arch_of(device.index if device.index is not None else torch.cuda.current_device())


def _has_pdl() -> bool:
    """Triton can launch with programmatic dependent launch (launch_pdl option) and has the gdc_* intrinsics."""
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
        from triton.language.extra import cuda as tl_cuda
    except Exception:  # noqa: BLE001 - no NVIDIA backend, or an older layout
        return False
    fields = getattr(CUDAOptions, "__dataclass_fields__", {})
    return "launch_pdl" in fields and hasattr(tl_cuda, "gdc_wait") and hasattr(tl_cuda, "gdc_launch_dependents")


HAS_PDL = _has_pdl()


def block_d(D: int) -> int:
    """The head_dim tile: the next power of two, at least 16 (tl.dot's minimum)."""
    return max(16, triton.next_power_of_2(D))


def default_scale(head_dim: int) -> float:
    """The attention scale when the caller gives none: 1/sqrt(head_dim)."""
    return 1.0 / math.sqrt(head_dim)


def merge_config(defaults: dict, config: dict | None, what: str) -> dict:
    """defaults updated with a launch's config= dict (in place, returned); ValueError naming unknown keys."""
    if config:
        unknown = set(config) - set(defaults)
        if unknown:
            raise ValueError(f"unknown {what} config keys {sorted(unknown)}; known: {sorted(defaults)}")
        defaults.update(config)
    return defaults


def check_pdl(what: str, device) -> None:
    """ValueError unless a PDL=True launch can run here (Triton with launch_pdl, compute capability >= 9.0)."""
    if not HAS_PDL:
        raise ValueError(f"{what} config PDL=True needs triton's launch_pdl option and gdc intrinsics (triton "
                         f"{triton.__version__} lacks them)")
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 9:
        raise ValueError(f"{what} config PDL=True needs compute capability 9.0 or newer")
