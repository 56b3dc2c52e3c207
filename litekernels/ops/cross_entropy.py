"""Fused linear cross-entropy: loss = cross_entropy(hidden @ weight.T (+ bias), labels), without the full logits.

The (tokens x vocab) logits of a language-model head are the largest tensors of a training step (4 x 2048
tokens x 128256 vocab in fp32 is 4.2 GB, and their gradient as much again). Here the tokens are processed in
chunks; for each chunk of C rows:
    1. logits_c = hidden_c @ weight.T (+ bias)           cuBLAS (torch.mm), in the input dtype, (C, V) buffer
    2. one Triton program per row: online log-sum-exp over the vocab in fp32, the row's loss, and (training)
       d loss / d logits written IN PLACE over the row's logits
    3. grad_hidden_c = dlogits_c @ weight; grad_weight += dlogits_c.T @ hidden_c; grad_bias += sum(dlogits_c)
The gradients are therefore produced during the forward pass and stored; backward only multiplies them by the
incoming (scalar) gradient. The chunk size is a power of two, by default 2048 rows where that chunk's logits fit
in 1 GiB (525 MB of bf16 logits at a 128256 vocab): every chunk re-reads and re-writes grad_weight, which at
Liger-Kernel's smaller chunks (logits about the size of the hidden states, 256 rows at Llama-3.2-1B) costs more
than the GEMMs' own time saved (see GEMM_ROWS). Peak memory grows by one chunk of logits, not by N x V.
Per-token losses (reduction="none") cannot use stored gradients (grad_weight depends on every row's upstream
gradient), so that mode saves the per-row log-sum-exp and recomputes the chunks in backward.

Math of one row, logits x (after the optional softcap z = cap * tanh(x / cap)), label y, vocab V, fp32:
    lse   = log(sum_j exp(z_j))
    loss  = lse - (1 - eps) * z_y - (eps / V) * sum_j z_j + zl * lse^2       (eps: label smoothing, zl: z-loss)
    dz_j  = softmax(z)_j * (1 + 2 * zl * lse) - eps / V - (1 - eps) * [j == y]
    dx_j  = dz_j * (1 - (z_j / cap)^2)            (softcap only; tanh' = 1 - tanh^2)
    each row's dx is multiplied by its scale: 1 / divisor for mean, 1 for sum, the upstream gradient for none.
Rows whose label is ignore_index have loss 0 and a zero gradient. With reduction="mean" the divisor is the
number of non-ignored labels (or `n_items` when given); when it is 0 (every row ignored) the loss is 0, not
NaN as in F.cross_entropy, and every gradient is zero.

Precision: logits and their gradient live in the input dtype (bf16 logits, as in Hugging Face's lm_head; the
gradient is rounded once, as HF's `.float()` backward rounds it). All softmax math is fp32. grad_weight is
accumulated across chunks by cuBLAS (fp32 inside each GEMM, rounded to the weight dtype between chunks, like
Liger-Kernel); `accumulate_fp32=True` keeps an fp32 accumulator instead (more memory, V x H x 4 bytes).

Label checks: labels that are neither ignore_index nor in [0, V) raise ValueError. That needs one host sync
per call (a device-side any() read back); `check_labels=False` skips it (and it is skipped during CUDA-graph
capture). Unchecked out-of-range labels never read or write out of bounds: such a row behaves as if its target
logit were absent (loss = lse).

Design after Liger-Kernel's fused_linear_cross_entropy (gradients in the forward, in-place dlogits); the code
is our own. Usage: loss = fused_linear_cross_entropy(hidden, lm_head.weight, labels)
"""

from __future__ import annotations

import math

import torch

from .. import reference
from .._triton import tl, triton
from ..utils import check_same_device, check_same_dtype, check_tensor, tracing, use_triton

MAX_BLOCK = 8192  # vocab columns per loop iteration of the row kernel (not tuned on a GPU yet)
REDUCTIONS = ("mean", "sum", "none")


@triton.jit
def _softcapped(x, softcap, HAS_SOFTCAP: tl.constexpr):
    if HAS_SOFTCAP:
        # cap * tanh(x / cap), with tanh(a) = 2 * sigmoid(2a) - 1 (no tanh in every Triton version's tl)
        x = softcap * (2.0 * tl.sigmoid(2.0 * x / softcap) - 1.0)
    return x


@triton.jit
def _cross_entropy_rows_kernel(X, LABELS, LOSS, LSE, SCALE, stride_x, stride_label, stride_scale, n_cols,
                               ignore_index, label_smoothing, z_loss, softcap,
                               BLOCK: tl.constexpr, HAS_SOFTCAP: tl.constexpr, HAS_SMOOTHING: tl.constexpr,
                               HAS_Z_LOSS: tl.constexpr, LSE_GIVEN: tl.constexpr, WRITE_LOSS: tl.constexpr,
                               WRITE_GRAD: tl.constexpr):
    """One program per row of the logits chunk X (row-major, input dtype).

    Pass 1 (unless LSE_GIVEN): online max / sum-exp over the row in fp32 -> lse, the loss, stored in LOSS/LSE.
    Pass 2 (WRITE_GRAD): d loss / d x times the row's scale (SCALE[row * stride_scale]), stored over X.
    """
    row = tl.program_id(0).to(tl.int64)
    x_row = X + row * stride_x
    label = tl.load(LABELS + row * stride_label).to(tl.int64)
    ignored = label == ignore_index
    has_target = (label >= 0) & (label < n_cols) & (label != ignore_index)
    cols0 = tl.arange(0, BLOCK)

    if LSE_GIVEN:
        lse = tl.load(LSE + row)
    else:
        m = float("-inf")
        s = 0.0
        sum_z = 0.0
        for start in range(0, n_cols, BLOCK):
            cols = start + cols0
            mask = cols < n_cols
            z = _softcapped(tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32), softcap, HAS_SOFTCAP)
            if HAS_SMOOTHING:
                sum_z += tl.sum(tl.where(mask, z, 0.0), axis=0)
            z = tl.where(mask, z, float("-inf"))
            m_new = tl.maximum(m, tl.max(z, axis=0))
            s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
            m = m_new
        lse = m + tl.log(s)
        # the target logit (a masked scalar load: an unchecked out-of-range label reads nothing)
        z_y = tl.load(x_row + tl.where(has_target, label, 0), mask=has_target, other=0.0).to(tl.float32)
        z_y = tl.where(has_target, _softcapped(z_y, softcap, HAS_SOFTCAP), 0.0)
        loss = lse - (1.0 - label_smoothing) * z_y
        if HAS_SMOOTHING:
            loss -= label_smoothing / n_cols * sum_z
        if HAS_Z_LOSS:
            loss += z_loss * lse * lse
        if WRITE_LOSS:
            tl.store(LOSS + row, tl.where(ignored, 0.0, loss))
            tl.store(LSE + row, lse)

    if WRITE_GRAD:
        scale = tl.load(SCALE + row * stride_scale).to(tl.float32)
        scale = tl.where(ignored, 0.0, scale)
        p_scale = 1.0
        if HAS_Z_LOSS:
            p_scale = 1.0 + 2.0 * z_loss * lse
        for start in range(0, n_cols, BLOCK):
            cols = start + cols0
            mask = cols < n_cols
            z = _softcapped(tl.load(x_row + cols, mask=mask, other=0.0).to(tl.float32), softcap, HAS_SOFTCAP)
            g = tl.exp(z - lse) * p_scale
            if HAS_SMOOTHING:
                g -= label_smoothing / n_cols
            g -= tl.where(cols == label, 1.0 - label_smoothing, 0.0)
            if HAS_SOFTCAP:
                t = z / softcap
                g *= 1.0 - t * t
            tl.store(x_row + cols, (g * scale).to(X.dtype.element_ty), mask=mask)


@triton.jit
def _scale_inplace_kernel(X, SCALE, n, BLOCK: tl.constexpr):
    """X[i] *= SCALE[0], the product in fp32 (a 0-d tensor multiply would round the scale to X's dtype)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    s = tl.load(SCALE).to(tl.float32)
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(X + offs, (x * s).to(X.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------------------------
# launchers
# ------------------------------------------------------------------------------------------------------------
SCALE_BLOCK = 4096


def scale_inplace(t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """t *= scale (a one-element fp32 device tensor), in place, no host sync; t must be contiguous."""
    n = t.numel()
    if n:
        _scale_inplace_kernel[(triton.cdiv(n, SCALE_BLOCK),)](t, scale, n, BLOCK=SCALE_BLOCK, num_warps=8)
    return t


# Rows per chunk the default aims for. Every chunk costs one read and one write of grad_weight (V x H) by its
# accumulating GEMM, besides 6 * rows * V * H flops of the chunk's three GEMMs: the extra time relative to the
# GEMMs is about (4 bytes * V * H / bandwidth) / (6 * rows * V * H / flop rate) = 0.67 * (flops/byte) / rows,
# 116 / rows on an H200 (~700 TFLOP/s, ~4 TB/s): 45% at 256 rows, 6% at 2048. bench/bench_train.py measures it
# (providers lite-ce<rows>).
GEMM_ROWS = 2048
# ... as long as one chunk's logits stay under this many bytes (the transient buffer of the forward).
MAX_CHUNK_BYTES = 1 << 30


def chunk_rows(n_rows: int, vocab: int, hidden: int, element_size: int = 2, grad_weight: bool = True) -> int:
    """Rows per chunk: a power of two, never fewer than n_rows / ceil(vocab / hidden) (the rows whose logits are
    about as large as the (n_rows x hidden) hidden states) and, when grad_weight is accumulated (the cost that
    GEMM_ROWS is about), at least GEMM_ROWS if those rows' (rows x vocab) logits fit in MAX_CHUNK_BYTES; at least
    1, at most next_pow2(n_rows). Without grad_weight (a frozen head, no autograd) the smaller buffer is kept."""
    ratio = max(1, math.ceil(vocab / max(hidden, 1)))
    lean = triton.next_power_of_2(max(1, math.ceil(n_rows / ratio)))
    if not grad_weight:
        return max(1, min(lean, triton.next_power_of_2(max(n_rows, 1))))
    fit = MAX_CHUNK_BYTES // max(1, vocab * element_size)
    fast = min(GEMM_ROWS, 1 << max(0, fit.bit_length() - 1))  # largest power of two <= fit, capped
    rows = max(lean, fast)
    return max(1, min(rows, triton.next_power_of_2(max(n_rows, 1))))


def _row_launch(buf, labels, loss, lse, scale, *, scale_stride, n_cols, ignore_index, label_smoothing, z_loss,
                softcap, lse_given, write_loss, write_grad):
    block = min(MAX_BLOCK, triton.next_power_of_2(n_cols))
    warps = 16 if block >= 8192 else 8 if block >= 2048 else 4
    _cross_entropy_rows_kernel[(buf.shape[0],)](
        buf, labels, loss, lse, scale,
        stride_x=buf.stride(0), stride_label=labels.stride(0), stride_scale=scale_stride,
        n_cols=n_cols, ignore_index=ignore_index, label_smoothing=float(label_smoothing), z_loss=float(z_loss),
        softcap=float(softcap or 1.0),
        BLOCK=block, HAS_SOFTCAP=softcap is not None, HAS_SMOOTHING=label_smoothing != 0.0,
        HAS_Z_LOSS=z_loss != 0.0, LSE_GIVEN=lse_given, WRITE_LOSS=write_loss, WRITE_GRAD=write_grad,
        num_warps=warps)


def _chunk_logits(out, h, weight, bias):
    if bias is None:
        torch.mm(h, weight.t(), out=out)
    else:
        torch.addmm(bias, h, weight.t(), out=out)
    return out


def _mean_divisor(labels, ignore_index, n_items):
    """fp32 device scalar: n_items if given, else the count of non-ignored labels; 0 is replaced by 1 (loss 0)."""
    if n_items is None:
        d = (labels != ignore_index).sum().to(torch.float32)
    elif torch.is_tensor(n_items):
        d = n_items.detach().to(device=labels.device, dtype=torch.float32).reshape(())
    else:
        d = torch.tensor(float(n_items), dtype=torch.float32, device=labels.device)
    return torch.where(d > 0, d, torch.ones_like(d))


def _accumulate_grads(buf, h, weight, gh, gw, gb, first):
    """From one chunk's dlogits (buf): grad_hidden rows, and grad_weight / grad_bias accumulated."""
    if gh is not None:
        torch.mm(buf, weight, out=gh)
    if gw is not None:
        if gw.dtype == buf.dtype:
            if first:
                torch.mm(buf.t(), h, out=gw)
            else:
                gw.addmm_(buf.t(), h)
        else:  # fp32 accumulator for low-precision inputs
            if first:
                gw.zero_()
            _addmm_fp32(gw, buf.t(), h)
    if gb is not None:
        gb.add_(buf.sum(0, dtype=torch.float32))


def _addmm_fp32(acc, a, b):
    """acc (fp32) += a @ b with low-precision a, b: one cuBLAS call with an fp32 output where torch has it."""
    if acc.is_cuda:
        try:
            torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)
            return
        except (TypeError, RuntimeError):
            pass
    acc.add_(torch.mm(a, b).float())


def flce_fwd(hidden, weight, bias, labels, *, ignore_index, reduction, label_smoothing, softcap, z_loss,
             n_items, chunk_size, grad_hidden, grad_weight, grad_bias, accumulate_fp32=False):
    """The chunked forward. hidden (N, H), weight (V, H), bias (V,) or None, labels (N,).

    Returns (loss, lse, grads): loss is a 0-d fp32 tensor (mean/sum) or (N,) fp32 (none); lse (N,) fp32;
    grads = (grad_hidden, grad_weight, grad_bias) unscaled by the upstream gradient, each None when not asked.
    """
    n, h_dim = hidden.shape
    vocab = weight.shape[0]
    dev = hidden.device
    rows = chunk_size or chunk_rows(n, vocab, h_dim, hidden.element_size(), bool(grad_weight))
    loss_rows = torch.empty(n, dtype=torch.float32, device=dev)
    lse = torch.empty(n, dtype=torch.float32, device=dev)
    if reduction == "mean":
        divisor = _mean_divisor(labels, ignore_index, n_items)
        scale = (1.0 / divisor).reshape(1)
    else:
        divisor, scale = None, torch.ones(1, dtype=torch.float32, device=dev)
    gh = torch.empty(hidden.shape, dtype=hidden.dtype, device=dev) if grad_hidden else None
    gw_dtype = torch.float32 if accumulate_fp32 else weight.dtype
    gw = (torch.zeros(weight.shape, dtype=gw_dtype, device=dev) if n == 0 else
          torch.empty(weight.shape, dtype=gw_dtype, device=dev)) if grad_weight else None
    gb = torch.zeros(vocab, dtype=torch.float32, device=dev) if grad_bias else None
    write_grad = grad_hidden or grad_weight or grad_bias
    buf = torch.empty((min(rows, n), vocab), dtype=hidden.dtype, device=dev)
    for s in range(0, n, rows):
        e = min(s + rows, n)
        h = hidden[s:e]
        b = _chunk_logits(buf[: e - s], h, weight, bias)
        _row_launch(b, labels[s:e], loss_rows[s:e], lse[s:e], scale, scale_stride=0, n_cols=vocab,
                    ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss, softcap=softcap,
                    lse_given=False, write_loss=True, write_grad=write_grad)
        if write_grad:
            _accumulate_grads(b, h, weight, gh[s:e] if gh is not None else None, gw, gb, first=s == 0)
    del buf
    if reduction == "none":
        loss = loss_rows
    elif reduction == "sum":
        loss = loss_rows.sum()
    else:
        loss = loss_rows.sum() / divisor
    return loss, lse, (gh, gw, gb)


def flce_bwd_recompute(grad_rows, hidden, weight, bias, labels, lse, *, ignore_index, label_smoothing, softcap,
                       z_loss, chunk_size, grad_hidden, grad_weight, grad_bias):
    """Backward of reduction="none": recompute each chunk's logits, scale row i's gradient by grad_rows[i]."""
    n, h_dim = hidden.shape
    vocab = weight.shape[0]
    dev = hidden.device
    rows = chunk_size or chunk_rows(n, vocab, h_dim, hidden.element_size(), bool(grad_weight))
    g_rows = grad_rows.to(torch.float32)
    gh = torch.empty(hidden.shape, dtype=hidden.dtype, device=dev) if grad_hidden else None
    alloc = torch.zeros if n == 0 else torch.empty
    gw = alloc(weight.shape, dtype=weight.dtype, device=dev) if grad_weight else None
    gb = torch.zeros(vocab, dtype=torch.float32, device=dev) if grad_bias else None
    buf = torch.empty((min(rows, n), vocab), dtype=hidden.dtype, device=dev)
    for s in range(0, n, rows):
        e = min(s + rows, n)
        h = hidden[s:e]
        b = _chunk_logits(buf[: e - s], h, weight, bias)
        _row_launch(b, labels[s:e], lse[s:e], lse[s:e], g_rows[s:e], scale_stride=g_rows.stride(0),
                    n_cols=vocab, ignore_index=ignore_index, label_smoothing=label_smoothing, z_loss=z_loss,
                    softcap=softcap, lse_given=True, write_loss=False, write_grad=True)
        _accumulate_grads(b, h, weight, gh[s:e] if gh is not None else None, gw, gb, first=s == 0)
    return gh, gw, gb


# ------------------------------------------------------------------------------------------------------------
# autograd
# ------------------------------------------------------------------------------------------------------------
class LiteFusedLinearCrossEntropyFunction(torch.autograd.Function):
    """Inputs: hidden (N, H), weight (V, H), bias (V,) or None, labels (N,), n_items, options (dict).
    mean/sum: gradients computed in forward, scaled in place by the upstream scalar in backward (so backward can
    run once: a second call raises). none: per-row lse saved, chunks recomputed in backward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, n_items, opts):
        need = (hidden.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)
        need = tuple(x and opts["grad_enabled"] for x in need)
        ctx.opts, ctx.bias_dtype = opts, None if bias is None else bias.dtype
        common = dict(ignore_index=opts["ignore_index"], label_smoothing=opts["label_smoothing"],
                      softcap=opts["softcap"], z_loss=opts["z_loss"], chunk_size=opts["chunk_size"])
        if opts["reduction"] == "none":
            loss, lse, _ = flce_fwd(hidden, weight, bias, labels, reduction="none", n_items=None,
                                    grad_hidden=False, grad_weight=False, grad_bias=False, **common)
            ctx.save_for_backward(hidden, weight, bias, labels, lse)
            ctx.need = need
            return loss
        loss, _, grads = flce_fwd(hidden, weight, bias, labels, reduction=opts["reduction"], n_items=n_items,
                                  grad_hidden=need[0], grad_weight=need[1], grad_bias=need[2],
                                  accumulate_fp32=opts["accumulate_fp32"], **common)
        ctx.grads = grads
        ctx.weight_dtype = weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        opts = ctx.opts
        if opts["reduction"] == "none":
            hidden, weight, bias, labels, lse = ctx.saved_tensors
            gh, gw, gb = flce_bwd_recompute(
                grad_loss, hidden, weight, bias, labels, lse, ignore_index=opts["ignore_index"],
                label_smoothing=opts["label_smoothing"], softcap=opts["softcap"], z_loss=opts["z_loss"],
                chunk_size=opts["chunk_size"], grad_hidden=ctx.need[0], grad_weight=ctx.need[1],
                grad_bias=ctx.need[2])
        else:
            if ctx.grads is None:
                raise RuntimeError("fused_linear_cross_entropy: backward ran twice through the same graph; its "
                                   "gradients are computed in forward and scaled in place by the first backward")
            gh, gw, gb = ctx.grads
            ctx.grads = None
            go = grad_loss.detach().to(torch.float32).reshape(1).contiguous()
            # in place: these buffers belong to this node only (no extra V x H allocation at the backward peak)
            if gh is not None:
                scale_inplace(gh, go)
            if gw is not None:
                gw = scale_inplace(gw, go).to(ctx.weight_dtype)
            if gb is not None:
                gb = gb.mul_(go)
        if gb is not None:
            gb = gb.to(ctx.bias_dtype)
        return gh, gw, gb, None, None, None


# ------------------------------------------------------------------------------------------------------------
# public entry point
# ------------------------------------------------------------------------------------------------------------
def _check_labels_range(labels, vocab, ignore_index):
    """Raise ValueError for a label outside [0, vocab) that is not ignore_index (one host sync on CUDA)."""
    if labels.numel() == 0:
        return
    if tracing():  # first: torch.compile / export cannot branch on data, nor trace the capture query below
        return
    if labels.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= vocab))
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(f"labels[{i}] = {int(labels[i])} is out of range for a vocabulary of {vocab} and is not "
                         f"ignore_index ({ignore_index})")


def fused_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                               bias: torch.Tensor | None = None, *, ignore_index: int = -100,
                               reduction: str = "mean", label_smoothing: float = 0.0, softcap: float | None = None,
                               z_loss: float = 0.0, n_items=None, chunk_size: int | None = None,
                               check_labels: bool = True, accumulate_fp32: bool = False) -> torch.Tensor:
    """cross_entropy(hidden @ weight.T + bias, labels) without materialising the (tokens x vocab) logits.

    hidden (..., H) and labels (...) with the same leading shape; weight (V, H); bias (V,) or None; hidden,
    weight and bias share one dtype (fp32, fp16 or bf16) and device. Returns an fp32 loss: a 0-d tensor for
    reduction "mean"/"sum", per-token losses shaped like labels for "none" (0 at ignored tokens).
    label_smoothing follows F.cross_entropy; softcap applies cap * tanh(logits / cap) first (Gemma-style);
    z_loss adds z_loss * logsumexp(logits)^2 per non-ignored token. n_items (int or tensor, "mean" only): the
    divisor instead of the count of non-ignored labels (Hugging Face's num_items_in_batch for gradient
    accumulation). A mean over zero items is 0 (with zero gradients), not NaN.
    chunk_size: rows per chunk (default: see chunk_rows). check_labels: raise on out-of-range labels (one host
    sync). accumulate_fp32: accumulate grad_weight in fp32 across chunks (V x H x 4 extra bytes).
    Differentiable in hidden, weight and bias.
    """
    check_tensor("hidden", hidden)
    check_tensor("weight", weight, ndim=2)
    if bias is not None:
        check_tensor("bias", bias, ndim=1)
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    check_same_device(hidden=hidden, weight=weight, labels=labels, bias=bias)
    check_same_dtype(hidden=hidden, weight=weight, bias=bias)
    if hidden.dim() == 0:
        raise ValueError("hidden must have at least one dimension (..., hidden_size)")
    if hidden.shape[-1] != weight.shape[1]:
        raise ValueError(f"hidden's last dimension is {hidden.shape[-1]} but weight has shape {tuple(weight.shape)} "
                         "(vocab, hidden)")
    if bias is not None and bias.shape[0] != weight.shape[0]:
        raise ValueError(f"bias has {bias.shape[0]} elements but weight has {weight.shape[0]} rows (vocab)")
    if tuple(labels.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(f"labels has shape {tuple(labels.shape)} but hidden's leading shape is "
                         f"{tuple(hidden.shape[:-1])}; they must match (one label per row of hidden)")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if n_items is not None and reduction != "mean":
        raise ValueError("n_items is the divisor of reduction='mean'; it cannot be used with reduction="
                         f"{reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if softcap is not None and not softcap > 0:
        raise ValueError(f"softcap must be positive or None, got {softcap}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    vocab = weight.shape[0]
    if check_labels:
        _check_labels_range(labels, vocab, ignore_index)
    if not use_triton(hidden):
        return reference.fused_linear_cross_entropy(
            hidden, weight, labels, bias, ignore_index=ignore_index, reduction=reduction,
            label_smoothing=label_smoothing, softcap=softcap, z_loss=z_loss, n_items=n_items)
    lead = labels.shape
    h2 = hidden.reshape(-1, hidden.shape[-1])
    lab = labels.reshape(-1)
    if tracing():  # torch.compile / export: per-row losses from the registered op, reduced here in torch
        rows, _ = torch.ops.litekernels.fused_linear_cross_entropy(
            h2, weight, bias, lab, int(ignore_index), float(label_smoothing),
            None if softcap is None else float(softcap), float(z_loss))
        if reduction == "none":
            return rows.view(lead)
        total = rows.sum()
        return total if reduction == "sum" else total / _mean_divisor(lab, ignore_index, n_items)
    opts = dict(ignore_index=int(ignore_index), reduction=reduction, label_smoothing=float(label_smoothing),
                softcap=None if softcap is None else float(softcap), z_loss=float(z_loss), chunk_size=chunk_size,
                accumulate_fp32=bool(accumulate_fp32) and weight.dtype != torch.float32,
                grad_enabled=torch.is_grad_enabled())
    # the GEMMs run in the inputs' dtype even under autocast (the kernel writes into their output in place)
    with torch.autocast(device_type=hidden.device.type, enabled=False):
        loss = LiteFusedLinearCrossEntropyFunction.apply(h2, weight, bias, lab, n_items, opts)
    return loss.view(lead) if reduction == "none" else loss
