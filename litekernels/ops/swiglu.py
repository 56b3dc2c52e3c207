"""Fused SiLU(gate) * up, forward and backward (the activation of the Llama MLP).

Math, in float32, one rounding at the end:
    y  = silu(g) * u = g * sigmoid(g) * u
    dg = dy * u * sigmoid(g) * (1 + g * (1 - sigmoid(g)))
    du = dy * silu(g)
Only g and u are saved; sigmoid is recomputed in backward. Gradients go to fresh buffers (the inputs are never
overwritten, so a caller may still hold them) - unless the caller opts in with `inplace_backward=True`: then
dg and du are written over the saved g and u (each element is read before the same program overwrites it),
which saves two (rows x cols) allocations at the moment of the backward. Safe only when nothing else needs g
and u after the forward: the caller must not keep them (nor a forward hook capture them). Autograd users of
them are protected: their version counters are bumped, so another node that saved them, or a second backward
through a retained graph, raises torch's "modified by an inplace operation" error instead of using gradients.
Falls back to fresh buffers when g and u share storage or need a copy to be row-indexed.

`silu_mul_linear(gate, up, weight, bias)` is the MLP's `down_proj(silu_mul(gate, up))` without keeping
silu(gate) * up for the backward: it saves gate and up (which the SiLU*mul backward needs anyway) and recomputes
the product in the backward for down_proj's weight gradient (the SiLU*mul backward kernel writes it over its dy
buffer in the same pass, so the recomputation costs one more write of rows x cols per layer, no extra read). That is one (rows x intermediate) activation less per MLP from the forward to the backward - 134 MB per
layer at Llama-3.2-1B, 4 x 2048 tokens, bf16 (bench/train_memory_audit.py). Its backward writes d gate / d up
over gate / up like `inplace_backward=True`.

Grid: (rows, column blocks), int64 row offsets; inputs may be strided along rows (for example the two halves
of a fused gate_up projection). Usage: y = silu_mul(gate, up); out = silu_mul_linear(gate, up, w_down)
"""

from __future__ import annotations

import torch

from .. import reference
from .._triton import tl, triton
from ..utils import (SUPPORTED_DTYPES, as_rows, check_same_device, check_same_dtype, check_same_shape, check_tensor,
                     on_same_device, rows_of, rows_view, tracing, use_triton)
from ._launch import PlanCache, PreparedLaunch, empty_like_if, launch

BLOCK = 1024


@triton.jit
def _silu_mul_fwd_kernel(G, U, Y, stride_g, stride_u, stride_y, n_cols, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    g = tl.load(G + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
    y = g * tl.sigmoid(g) * u
    tl.store(Y + row * stride_y + cols, y.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _silu_mul_bwd_kernel(DY, G, U, DG, DU, stride_dy, stride_g, stride_u, stride_dg, stride_du, n_cols,
                         BLOCK: tl.constexpr, WRITE_Y: tl.constexpr):
    """dg, du from dy, g, u; WRITE_Y: also silu(g) * u, stored over DY (each element read first, same program)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    dy = tl.load(DY + row * stride_dy + cols, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + row * stride_g + cols, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(U + row * stride_u + cols, mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(g)
    silu = g * sig
    tl.store(DG + row * stride_dg + cols, (dy * u * sig * (1.0 + g * (1.0 - sig))).to(DG.dtype.element_ty),
             mask=mask)
    tl.store(DU + row * stride_du + cols, (dy * silu).to(DU.dtype.element_ty), mask=mask)
    if WRITE_Y:
        tl.store(DY + row * stride_dy + cols, (silu * u).to(DY.dtype.element_ty), mask=mask)


def _grid(n_rows, n_cols):
    return (n_rows, triton.cdiv(n_cols, BLOCK))


def _fwd_key(gate, up):
    """The plan key of a forward: every fact of the inputs that the checks, the settings and the launch read."""
    return (gate.shape, gate.stride(), gate.dtype, gate.device, up.shape, up.stride(), up.dtype, up.device)


_FWD_PLANS = PlanCache(_fwd_key)


class _FwdPlan:
    """The forward launch for gate and up of one plan key (both usable as rows without a copy)."""
    __slots__ = ("shape", "dtype", "like", "launch")

    def __init__(self, gate, up):
        _check(gate, up)  # a plan exists only for valid inputs: its key proves a later call's checks
        shape = self.shape = tuple(gate.shape)
        n_cols = shape[-1]
        _, sg, n_rows = rows_of(gate, n_cols)
        su = rows_of(up, n_cols)[1]
        self.dtype = gate.dtype
        self.like = gate.is_contiguous()  # empty_like(gate) is then dense (row stride n_cols), like torch.empty
        grid = (n_rows, (n_cols + BLOCK - 1) // BLOCK)
        self.launch = (PreparedLaunch(_silu_mul_fwd_kernel, grid, (sg, su, n_cols, n_cols),
                                      dict(BLOCK=BLOCK, num_warps=4)) if n_rows * n_cols else None)

    def __call__(self, gate, up):
        y = empty_like_if(self.like, gate, self.shape, self.dtype)
        if self.launch is not None:
            self.launch(gate, up, y)
        return y


def silu_mul_fwd(gate, up):
    n_cols = gate.shape[-1]
    gate, up = rows_view(gate, n_cols), rows_view(up, n_cols)
    key = _fwd_key(gate, up)
    plan = _FWD_PLANS.get_or_build(key, _FwdPlan, gate, up)
    return plan(gate, up)


def silu_mul_bwd(dy, gate, up, inplace=False, write_y=False):
    """Returns (dgate, dup); with inplace=True they are written over gate's and up's storage. write_y: dy is
    overwritten with silu(gate) * up (the forward's output, recomputed in the same pass); dy must then be a
    contiguous buffer of the caller's own."""
    shape = gate.shape
    d, g, u = as_rows(dy), as_rows(gate), as_rows(up)
    if write_y and not dy.is_contiguous():  # rows of a strided or broadcast dy could overlap
        raise ValueError("silu_mul_bwd(write_y=True) needs a contiguous dy (it is overwritten)")
    if inplace:
        dg, du = g, u
    else:
        dg = torch.empty(g.shape, dtype=gate.dtype, device=gate.device)
        du = torch.empty(g.shape, dtype=up.dtype, device=gate.device)
    if dg.numel():
        launch(_silu_mul_bwd_kernel, _grid(*g.shape), d, g, u, dg, du, d.stride(0), g.stride(0), u.stride(0),
               dg.stride(0), du.stride(0), g.shape[1], BLOCK=BLOCK, WRITE_Y=bool(write_y), num_warps=4)
    return dg.view(shape), du.view(shape)


_increment_version = getattr(getattr(torch.autograd, "graph", None), "increment_version", None)


def _can_overwrite(gate, up) -> bool:
    """gate and up may receive their own gradients: separate storages, rows indexable without a copy, and a
    torch that can bump their version counters (so misuse raises instead of computing with gradients)."""
    return (_increment_version is not None and gate.stride(-1) == 1 and up.stride(-1) == 1
            and gate.untyped_storage().data_ptr() != up.untyped_storage().data_ptr())


def _silu_mul_grads(dy, gate, up, inplace, write_y=False):
    inplace = inplace and _can_overwrite(gate, up)
    dg, du = silu_mul_bwd(dy, gate, up, inplace=inplace, write_y=write_y)
    if inplace:
        _increment_version(gate)
        _increment_version(up)
    return dg, du


class LiteSiLUMulFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up, inplace_backward=False):
        ctx.save_for_backward(gate, up)
        ctx.inplace_backward = inplace_backward
        return silu_mul_fwd(gate, up)

    @staticmethod
    def backward(ctx, dy):
        gate, up = ctx.saved_tensors
        dg, du = _silu_mul_grads(dy, gate, up, ctx.inplace_backward)
        return dg, du, None


class LiteSiLUMulLinearFunction(torch.autograd.Function):
    """out = linear(silu(gate) * up, weight, bias), saving gate, up and weight (not the product)."""

    @staticmethod
    def forward(ctx, gate, up, weight, bias):
        y = silu_mul_fwd(gate, up)
        out = torch.nn.functional.linear(y, weight, bias)
        ctx.save_for_backward(gate, up, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, dout):
        gate, up, weight = ctx.saved_tensors
        need_g, need_u, need_w, need_b = ctx.needs_input_grad
        d2 = dout.reshape(-1, dout.shape[-1])
        dw = db = dg = du = None
        if need_b:
            db = d2.sum(0, dtype=torch.float32).to(dout.dtype)
        if need_g or need_u:
            # dy is our own buffer: the SiLU*mul backward writes the recomputed product over it (one pass over
            # gate and up for both), then down_proj's weight gradient reads it
            dy = d2.mm(weight).view(gate.shape)
            dg, du = _silu_mul_grads(dy, gate, up, True, write_y=need_w)
            if need_w:
                dw = d2.t().mm(dy.view(-1, dy.shape[-1]))
        elif need_w:
            y = silu_mul_fwd(gate, up)  # recomputed: the forward did not keep it
            dw = d2.t().mm(y.reshape(-1, y.shape[-1]))
        return dg, du, dw, db if ctx.has_bias else None


def silu_mul_linear(gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor, bias=None) -> torch.Tensor:
    """linear(silu(gate) * up, weight, bias) - the Llama MLP's down_proj over SiLU*mul - without saving the
    product for the backward (recomputed there). Only for callers that do not use gate and up afterwards: the
    backward writes their gradients over them (see the module docstring). Without the Triton path (reference
    fallback, tracing) it is the plain composition."""
    check_tensor("gate", gate)
    check_tensor("up", up)
    check_same_device(gate=gate, up=up, weight=weight)
    check_same_dtype(gate=gate, up=up, weight=weight)
    check_same_shape(gate=gate, up=up)
    if gate.dim() == 0 or weight.dim() != 2 or weight.shape[1] != gate.shape[-1]:
        raise ValueError(f"weight of shape {tuple(weight.shape)} does not take inputs of shape {tuple(gate.shape)}")
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != weight.dtype):
        raise ValueError(f"bias must be ({weight.shape[0]},) of dtype {weight.dtype}; got {tuple(bias.shape)} {bias.dtype}")
    if tracing() or not use_triton(gate):
        return torch.nn.functional.linear(silu_mul(gate, up), weight, bias)
    return LiteSiLUMulLinearFunction.apply(gate, up, weight, bias)


def silu_mul(gate: torch.Tensor, up: torch.Tensor, *, inplace_backward: bool = False) -> torch.Tensor:
    """silu(gate) * up elementwise; same shape and dtype as the inputs. Differentiable in both.

    inplace_backward: the backward writes the gradients over gate's and up's storage (less memory); only for
    callers that do not use gate and up after this call (see the module docstring)."""
    plan = _FWD_PLANS.lookup(gate, up)  # a repeated call without autograd: checks already passed
    if plan is not None:
        return plan(gate, up)
    T = torch.Tensor
    if not (isinstance(gate, T) and isinstance(up, T) and gate.dim() > 0 and gate.dtype in SUPPORTED_DTYPES
            and up.dtype == gate.dtype and up.shape == gate.shape
            and on_same_device(up, gate)):
        _check(gate, up)  # the common path passes the compound test above; this names what is wrong
    if tracing():
        return torch.ops.litekernels.silu_mul(gate, up)
    if not use_triton(gate):
        return reference.silu_mul(gate, up)
    if not (torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad)):
        return silu_mul_fwd(gate, up)  # no autograd node needed
    return LiteSiLUMulFunction.apply(gate, up, bool(inplace_backward))


def _check(gate, up):
    check_tensor("gate", gate)
    check_tensor("up", up)
    check_same_device(gate=gate, up=up)
    check_same_dtype(gate=gate, up=up)
    check_same_shape(gate=gate, up=up)
    if gate.dim() == 0:
        raise ValueError("gate and up must have at least one dimension")
