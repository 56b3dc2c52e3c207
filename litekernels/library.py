"""torch.library registration of every op: `torch.ops.litekernels.<name>`, listed in `OPS`.

Each op is a `torch.library.custom_op` with a fake (meta) implementation, so torch.compile (Dynamo and
Inductor), torch.export, FakeTensorMode and meta tensors see an opaque op of known output shapes; the
differentiable ones get `register_autograd`, whose backward is itself a registered op, so a compiled backward
graph holds it too. An op's implementation decides where it runs, exactly like the eager path
(`utils.use_triton`): the Triton launcher in `ops/<op>.py` (CUDA, or CPU under TRITON_INTERPRET=1), else the
reference (`reference.py`; the backward ops use the closed-form gradients below, since autograd cannot
record inside an op's implementation).

Who calls these ops: the public functions (`functional.py`, the bottom of each `ops/<op>.py`) check their
inputs, then call `torch.ops.litekernels.<op>` when `utils.tracing()` says a tracer is active, and otherwise
go the cheaper eager route (autograd Function or reference) to the same launchers: the Python custom-op
dispatcher costs more host time per call than an autograd Function (docs/patching.md, "torch.compile").

Why `custom_op` and not `triton_op` + `wrap_triton` (torch >= 2.6): triton_op lets Inductor see and fuse
around the kernels, but its body must launch every kernel through `wrap_triton`, which the launchers (shared
with the eager path and the CUDA-graph runtime) do not, and the same body must also run the reference on CPU.
Inductor treats a custom op as an opaque call, which is what the ops here want (each already is one fused
kernel or a short fixed sequence of them), with one exception: a decode-sized `rms_norm` is decomposed for
Inductor so that it fuses with the residual add before it (`register_inductor_decompositions` below). Needs
torch >= 2.4 (`utils.HAS_CUSTOM_OPS`); on older torch
nothing is registered and the public functions always take the eager route.

Usage: `torch.ops.litekernels.rms_norm(x, weight, 1e-6)` -> (y, rstd).
"""

from __future__ import annotations

import sys

import torch

from . import reference
from .utils import HAS_CUSTOM_OPS, unit_last, use_triton

NAMESPACE = "litekernels"

# name -> schema of every op users can reach (torch.ops.litekernels.<name>); extra outputs (rstd, lse) are what
# the backward needs. Backward ops (not called directly) are in BACKWARD_OPS.
OPS = {
    "rms_norm": "(Tensor x, Tensor weight, float eps) -> (Tensor y, Tensor rstd)",
    "fused_add_rms_norm": "(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor y, Tensor h, Tensor rstd)",
    "apply_rope": "(Tensor q, Tensor k, Tensor cos, Tensor sin) -> (Tensor q_rot, Tensor k_rot)",
    "rope_cache_write": "(Tensor qkv, Tensor cos_table, Tensor sin_table, Tensor positions, Tensor(a!) k_cache, "
                        "Tensor(b!) v_cache, int n_heads, int n_kv_heads) -> Tensor q_rot",
    "silu_mul": "(Tensor gate, Tensor up) -> Tensor",
    "flash_attention": "(Tensor q, Tensor k, Tensor v, Tensor? attn_mask, bool causal, float scale) "
                       "-> (Tensor o, Tensor lse)",
    "decode_attention": "(Tensor q, Tensor k_cache, Tensor v_cache, Tensor lengths, Tensor? key_mask, float scale) "
                        "-> Tensor",
    "decode_linear": "(Tensor x, Tensor weight, Tensor? bias) -> Tensor",
    # Triton backends only (CUDA, interpreter): on the reference path the public function is plain PyTorch,
    # which tracers follow directly. Per-row losses and lse; the public function reduces them in torch.
    "fused_linear_cross_entropy": "(Tensor hidden, Tensor weight, Tensor? bias, Tensor labels, int ignore_index, "
                                  "float label_smoothing, float? softcap, float z_loss) -> (Tensor loss_rows, Tensor lse)",
}
BACKWARD_OPS = ("rms_norm_backward", "fused_add_rms_norm_backward", "apply_rope_backward", "silu_mul_backward",
                "flash_attention_backward", "fused_linear_cross_entropy_backward")


def op(name: str):
    """The registered op `torch.ops.litekernels.<name>` (an OpOverloadPacket)."""
    return getattr(getattr(torch.ops, NAMESPACE), name)


def _rows(x: torch.Tensor) -> int:
    return x.numel() // x.shape[-1] if x.shape[-1] else 0


def _into(proto_like: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """value copied into torch.empty_like(proto_like): the reference path returns the launchers' layout."""
    out = torch.empty_like(proto_like, dtype=value.dtype)
    out.copy_(value)
    return out


def _rstd(x: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.rsqrt(x.float().pow(2).mean(-1) + eps).reshape(-1)


# ---------------------------------------------------------------------------------------------------------
# closed-form gradients of the reference ops (fp32), the CPU fallback of the backward ops
# ---------------------------------------------------------------------------------------------------------
def _ref_rms_norm_bwd(dy, x, weight, rstd, dh=None):
    xf = x.float()
    r = rstd.view(*x.shape[:-1], 1)
    xn = xf * r
    dyf = dy.float()
    dw = (dyf * xn.to(x.dtype).float()).reshape(-1, x.shape[-1]).sum(0).to(weight.dtype)
    g = dyf * weight.float()
    dx = r * (g - xn * (g * xn).mean(-1, keepdim=True))
    if dh is not None:
        dx = dx + dh.float()
    return dx.to(x.dtype).contiguous(), dw


def _ref_rope_bwd(dq, dk, cos, sin):
    # y = x*cos + rotate_half(x)*sin and rotate_half^T = -rotate_half, so dx = dy*cos - rotate_half(dy*sin)
    if cos.dim() == 2:
        cos, sin = cos[None], sin[None]
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return tuple(_into(unit_last(d), d * cos - reference.rotate_half(d * sin)) for d in (dq, dk))


def _ref_silu_mul_bwd(dy, gate, up):
    g, u, d = gate.float(), up.float(), dy.float()
    s = torch.sigmoid(g)
    dg = d * u * s * (1 + g * (1 - s))
    du = d * g * s
    return dg.to(gate.dtype).contiguous(), du.to(up.dtype).contiguous()


def _ref_allowed(B, H, Tq, Tk, causal, attn_mask, device):
    allowed = torch.ones(Tq, Tk, dtype=torch.bool, device=device)
    if causal:
        allowed = allowed.tril(Tk - Tq)
    allowed = allowed.expand(B, H, Tq, Tk)
    return allowed if attn_mask is None else allowed & attn_mask.to(torch.bool)


def _ref_attention_probs(q, k, attn_mask, causal, scale):
    """(probabilities, lse) in fp32, as reference.attention computes them (GQA keys repeated)."""
    B, H, Tq, _ = q.shape
    Tk = k.shape[2]
    kf = k.float().repeat_interleave(H // k.shape[1], dim=1)
    s = torch.matmul(q.float(), kf.transpose(-1, -2)) * scale
    s = s.masked_fill(~_ref_allowed(B, H, Tq, Tk, causal, attn_mask, q.device), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    p = torch.nan_to_num(torch.exp(s - lse[..., None]), nan=0.0)
    return p, lse


def _ref_attention_bwd(do, q, k, v, attn_mask, causal, scale):
    B, H = q.shape[:2]
    Hkv = k.shape[1]
    g = H // Hkv
    p, _ = _ref_attention_probs(q, k, attn_mask, causal, scale)
    dof = do.float()
    vf = v.float().repeat_interleave(g, dim=1)
    kf = k.float().repeat_interleave(g, dim=1)
    dp = torch.matmul(dof, vf.transpose(-1, -2))
    ds = p * (dp - (dp * p).sum(-1, keepdim=True))
    dq = torch.matmul(ds, kf) * scale
    dk = torch.matmul(ds.transpose(-1, -2), q.float()) * scale
    dv = torch.matmul(p.transpose(-1, -2), dof)
    dk = dk.view(B, Hkv, g, *dk.shape[2:]).sum(2)
    dv = dv.view(B, Hkv, g, *dv.shape[2:]).sum(2)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _register() -> None:
    from torch.library import custom_op, register_autograd, register_fake

    from .ops import attention as _attn
    from .ops import cross_entropy as _ce
    from .ops import decode_attention as _dec
    from .ops import linear as _lin
    from .ops import rms_norm as _rms
    from .ops import rope as _rope
    from .ops import swiglu as _swiglu

    def define(name):
        return custom_op(f"{NAMESPACE}::{name}", mutates_args=(), schema=OPS.get(name))

    # ------------------------------------------------------------------ RMSNorm
    @define("rms_norm")
    def rms_norm(x, weight, eps):
        if use_triton(x):
            y, _, rstd = _rms.rms_norm_fwd(x, weight, eps)
            return y, rstd
        return reference.rms_norm(x, weight, eps).contiguous(), _rstd(x, eps)

    @register_fake("litekernels::rms_norm")
    def _(x, weight, eps):
        return (x.new_empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype)),
                x.new_empty((_rows(x),), dtype=torch.float32))

    @custom_op("litekernels::rms_norm_backward", mutates_args=(),
               schema="(Tensor dy, Tensor x, Tensor weight, Tensor rstd) -> (Tensor dx, Tensor dweight)")
    def rms_norm_backward(dy, x, weight, rstd):
        if use_triton(x):
            return _rms.rms_norm_bwd(dy, x, weight, rstd)
        return _ref_rms_norm_bwd(dy, x, weight, rstd)

    @register_fake("litekernels::rms_norm_backward")
    def _(dy, x, weight, rstd):
        return x.new_empty(x.shape), torch.empty_like(weight)

    def rms_setup(ctx, inputs, output):
        x, weight, _ = inputs
        ctx.save_for_backward(x, weight, output[1])

    def rms_bwd(ctx, dy, _drstd):
        x, weight, rstd = ctx.saved_tensors
        dx, dw = torch.ops.litekernels.rms_norm_backward(dy, x, weight, rstd)
        return dx, dw, None

    register_autograd("litekernels::rms_norm", rms_bwd, setup_context=rms_setup)

    @define("fused_add_rms_norm")
    def fused_add_rms_norm(x, residual, weight, eps):
        if use_triton(x):
            return _rms.rms_norm_fwd(x, weight, eps, residual=residual)
        y, h = reference.fused_add_rms_norm(x, residual, weight, eps)
        return y.contiguous(), h.contiguous(), _rstd(h, eps)

    @register_fake("litekernels::fused_add_rms_norm")
    def _(x, residual, weight, eps):
        return (x.new_empty(x.shape, dtype=torch.promote_types(weight.dtype, x.dtype)), x.new_empty(x.shape),
                x.new_empty((_rows(x),), dtype=torch.float32))

    @custom_op("litekernels::fused_add_rms_norm_backward", mutates_args=(),
               schema="(Tensor dy, Tensor? dh, Tensor h, Tensor weight, Tensor rstd) -> (Tensor dx, Tensor dweight)")
    def fused_add_rms_norm_backward(dy, dh, h, weight, rstd):
        if use_triton(h):
            return _rms.rms_norm_bwd(dy, h, weight, rstd, dh=dh)
        return _ref_rms_norm_bwd(dy, h, weight, rstd, dh=dh)

    @register_fake("litekernels::fused_add_rms_norm_backward")
    def _(dy, dh, h, weight, rstd):
        return h.new_empty(h.shape), torch.empty_like(weight)

    def fused_setup(ctx, inputs, output):
        ctx.save_for_backward(output[1], inputs[2], output[2])

    def fused_bwd(ctx, dy, dh, _drstd):
        h, weight, rstd = ctx.saved_tensors
        dx, dw = torch.ops.litekernels.fused_add_rms_norm_backward(dy, dh, h, weight, rstd)
        return dx, dx, dw, None

    register_autograd("litekernels::fused_add_rms_norm", fused_bwd, setup_context=fused_setup)

    # ------------------------------------------------------------------ RoPE
    @define("apply_rope")
    def apply_rope(q, k, cos, sin):
        if use_triton(q):
            return _rope.rope_fwd(q, k, cos, sin)
        qo, ko = reference.apply_rope(q, k, cos, sin)
        return _into(unit_last(q), qo), _into(unit_last(k), ko)

    @register_fake("litekernels::apply_rope")
    def _(q, k, cos, sin):
        return torch.empty_like(unit_last(q)), torch.empty_like(unit_last(k))

    @custom_op("litekernels::apply_rope_backward", mutates_args=(),
               schema="(Tensor dq, Tensor dk, Tensor cos, Tensor sin) -> (Tensor dq_in, Tensor dk_in)")
    def apply_rope_backward(dq, dk, cos, sin):
        if use_triton(dq):
            return _rope.rope_fwd(dq, dk, cos, sin, backward=True)
        return _ref_rope_bwd(dq, dk, cos, sin)

    @register_fake("litekernels::apply_rope_backward")
    def _(dq, dk, cos, sin):
        return torch.empty_like(unit_last(dq)), torch.empty_like(unit_last(dk))

    def rope_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[2], inputs[3])

    def rope_bwd(ctx, dq, dk):
        cos, sin = ctx.saved_tensors
        dq, dk = torch.ops.litekernels.apply_rope_backward(dq, dk, cos, sin)
        return dq, dk, None, None

    register_autograd("litekernels::apply_rope", rope_bwd, setup_context=rope_setup)

    @custom_op("litekernels::rope_cache_write", mutates_args=("k_cache", "v_cache"), schema=OPS["rope_cache_write"])
    def rope_cache_write(qkv, cos_table, sin_table, positions, k_cache, v_cache, n_heads, n_kv_heads):
        if use_triton(qkv):
            return _rope.rope_cache_write_fwd(qkv, cos_table, sin_table, positions, k_cache, v_cache, n_heads,
                                              n_kv_heads)
        q = reference.rope_cache_write(qkv, cos_table, sin_table, positions, k_cache, v_cache, n_heads, n_kv_heads)
        return q.contiguous()

    @register_fake("litekernels::rope_cache_write")
    def _(qkv, cos_table, sin_table, positions, k_cache, v_cache, n_heads, n_kv_heads):
        return qkv.new_empty((qkv.shape[0], n_heads, 1, qkv.shape[2]))

    # ------------------------------------------------------------------ SiLU * mul
    @define("silu_mul")
    def silu_mul(gate, up):
        if use_triton(gate):
            return _swiglu.silu_mul_fwd(gate, up)
        return reference.silu_mul(gate, up).contiguous()

    @register_fake("litekernels::silu_mul")
    def _(gate, up):
        return gate.new_empty(gate.shape)

    @custom_op("litekernels::silu_mul_backward", mutates_args=(),
               schema="(Tensor dy, Tensor gate, Tensor up) -> (Tensor dgate, Tensor dup)")
    def silu_mul_backward(dy, gate, up):
        if use_triton(gate):
            return _swiglu.silu_mul_bwd(dy, gate, up)
        return _ref_silu_mul_bwd(dy, gate, up)

    @register_fake("litekernels::silu_mul_backward")
    def _(dy, gate, up):
        return gate.new_empty(gate.shape), up.new_empty(up.shape)

    def silu_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    def silu_bwd(ctx, dy):
        gate, up = ctx.saved_tensors
        return torch.ops.litekernels.silu_mul_backward(dy, gate, up)

    register_autograd("litekernels::silu_mul", silu_bwd, setup_context=silu_setup)

    # ------------------------------------------------------------------ attention
    @define("flash_attention")
    def flash_attention(q, k, v, attn_mask, causal, scale):
        if use_triton(q):
            return _attn.attention_fwd(q, k, v, causal, scale, attn_mask)
        o = reference.attention(q, k, v, causal=causal, scale=scale, attn_mask=attn_mask)
        _, lse = _ref_attention_probs(q, k, attn_mask, causal, scale)
        return o.contiguous(), lse

    @register_fake("litekernels::flash_attention")
    def _(q, k, v, attn_mask, causal, scale):
        B, H, Tq, _ = q.shape
        return q.new_empty(q.shape), q.new_empty((B, H, Tq), dtype=torch.float32)

    @custom_op("litekernels::flash_attention_backward", mutates_args=(),
               schema="(Tensor do, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor? attn_mask, bool causal, "
                      "float scale) -> (Tensor dq, Tensor dk, Tensor dv)")
    def flash_attention_backward(do, q, k, v, o, lse, attn_mask, causal, scale):
        if use_triton(q):
            return _attn.attention_bwd(do, q, k, v, o, lse, causal, scale, attn_mask)
        dq, dk, dv = _ref_attention_bwd(do, q, k, v, attn_mask, causal, scale)
        return dq.contiguous(), dk.contiguous(), dv.contiguous()

    @register_fake("litekernels::flash_attention_backward")
    def _(do, q, k, v, o, lse, attn_mask, causal, scale):
        return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape))

    def attn_setup(ctx, inputs, output):
        q, k, v, attn_mask, causal, scale = inputs
        ctx.causal, ctx.scale = causal, scale
        ctx.save_for_backward(q, k, v, output[0], output[1], attn_mask)

    def attn_bwd(ctx, do, _dlse):
        q, k, v, o, lse, attn_mask = ctx.saved_tensors
        dq, dk, dv = torch.ops.litekernels.flash_attention_backward(do, q, k, v, o, lse, attn_mask, ctx.causal,
                                                                      ctx.scale)
        return dq, dk, dv, None, None, None

    register_autograd("litekernels::flash_attention", attn_bwd, setup_context=attn_setup)

    @define("decode_attention")
    def decode_attention(q, k_cache, v_cache, lengths, key_mask, scale):
        if use_triton(q):
            # compiled code: no cached scratch (Inductor's CUDA-graph trees account for every pool allocation)
            return _dec.decode_attention_fwd(q, k_cache, v_cache, lengths, scale, key_mask, reuse_scratch=False)
        return reference.decode_attention(q, k_cache, v_cache, lengths, scale=scale, key_mask=key_mask).contiguous()

    @register_fake("litekernels::decode_attention")
    def _(q, k_cache, v_cache, lengths, key_mask, scale):
        return q.new_empty(q.shape)

    # ------------------------------------------------------------------ skinny GEMM (inference only)
    @define("decode_linear")
    def decode_linear(x, weight, bias):
        if use_triton(x) and weight.stride(-1) == 1 and _rows(x) <= _lin.MAX_ROWS:
            return _lin.skinny_gemm(x, weight, bias)
        return torch.nn.functional.linear(x, weight, bias).contiguous()

    @register_fake("litekernels::decode_linear")
    def _(x, weight, bias):
        return x.new_empty((*x.shape[:-1], weight.shape[0]))

    # ------------------------------------------------------------------ fused linear cross-entropy
    @define("fused_linear_cross_entropy")
    def fused_linear_cross_entropy(hidden, weight, bias, labels, ignore_index, label_smoothing, softcap, z_loss):
        if not use_triton(hidden):
            raise NotImplementedError("torch.ops.litekernels.fused_linear_cross_entropy runs the Triton kernels "
                                      "(CUDA or TRITON_INTERPRET=1); on the reference path the public function "
                                      "is plain PyTorch")
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            loss, lse, _ = _ce.flce_fwd(hidden, weight, bias, labels, ignore_index=ignore_index, reduction="none",
                                        label_smoothing=label_smoothing, softcap=softcap, z_loss=z_loss,
                                        n_items=None, chunk_size=None, grad_hidden=False, grad_weight=False,
                                        grad_bias=False)
        return loss, lse

    @register_fake("litekernels::fused_linear_cross_entropy")
    def _(hidden, weight, bias, labels, ignore_index, label_smoothing, softcap, z_loss):
        n = hidden.shape[0]
        return hidden.new_empty((n,), dtype=torch.float32), hidden.new_empty((n,), dtype=torch.float32)

    @custom_op("litekernels::fused_linear_cross_entropy_backward", mutates_args=(),
               schema="(Tensor grad_rows, Tensor hidden, Tensor weight, Tensor? bias, Tensor labels, Tensor lse, "
                      "int ignore_index, float label_smoothing, float? softcap, float z_loss) "
                      "-> (Tensor dhidden, Tensor dweight, Tensor dbias)")
    def fused_linear_cross_entropy_backward(grad_rows, hidden, weight, bias, labels, lse, ignore_index,
                                            label_smoothing, softcap, z_loss):
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            gh, gw, gb = _ce.flce_bwd_recompute(
                grad_rows, hidden, weight, bias, labels, lse, ignore_index=ignore_index,
                label_smoothing=label_smoothing, softcap=softcap, z_loss=z_loss, chunk_size=None,
                grad_hidden=True, grad_weight=True, grad_bias=bias is not None)
        return gh, gw, (gb.to(bias.dtype) if bias is not None else weight.new_empty((0,)))

    @register_fake("litekernels::fused_linear_cross_entropy_backward")
    def _(grad_rows, hidden, weight, bias, labels, lse, ignore_index, label_smoothing, softcap, z_loss):
        return (hidden.new_empty(hidden.shape), weight.new_empty(weight.shape),
                bias.new_empty(bias.shape) if bias is not None else weight.new_empty((0,)))

    def flce_setup(ctx, inputs, output):
        hidden, weight, bias, labels, *scalars = inputs
        ctx.scalars, ctx.has_bias = scalars, bias is not None
        ctx.save_for_backward(hidden, weight, bias, labels, output[1])

    def flce_bwd(ctx, grad_rows, _dlse):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        gh, gw, gb = torch.ops.litekernels.fused_linear_cross_entropy_backward(
            grad_rows, hidden, weight, bias, labels, lse, *ctx.scalars)
        return gh, gw, (gb if ctx.has_bias else None), None, None, None, None, None

    register_autograd("litekernels::fused_linear_cross_entropy", flce_bwd, setup_context=flce_setup)


# ---------------------------------------------------------------------------------------------------------
# Inductor: decode-sized RMSNorm as plain aten ops
# ---------------------------------------------------------------------------------------------------------
# In a decoder layer the norm's input is `residual + sublayer(x)`. Inductor cannot fuse anything into an opaque
# op, so the patched decode step paid an extra kernel (and a round trip through memory) per norm for the add;
# for a few rows Inductor's own fused add + RMSNorm is one kernel, as fast as ours. So, in Inductor's
# decomposition table only (aot_eager, export and eager keep the op), `litekernels.rms_norm` with at most
# INDUCTOR_DECOMPOSE_MAX_ROWS rows (static shapes) becomes the reference math; larger inputs (prefill,
# training) and symbolic shapes keep our kernel. The backward stays `rms_norm_backward` (the rstd output is
# the same quantity).
INDUCTOR_DECOMPOSE_MAX_ROWS = 64


def _decode_sized(x: torch.Tensor) -> bool:
    rows = 1
    for s in x.shape[:-1]:
        if not isinstance(s, int):  # a SymInt: dynamic shapes keep the op
            return False
        rows *= s
    return isinstance(x.shape[-1], int) and rows <= INDUCTOR_DECOMPOSE_MAX_ROWS


def _rms_norm_decomposition(x, weight, eps):
    if not _decode_sized(x):
        return NotImplemented
    return reference.rms_norm(x, weight, eps), _rstd(x, eps)


def register_inductor_decompositions() -> bool:
    """Put the decompositions above into Inductor's table (idempotent); False if there is no Inductor.

    Importing Inductor takes seconds, so `import litekernels` does this only when Inductor is already loaded;
    `litekernels.patches` (which imports transformers, which loads it) always calls it."""
    if not HAS_CUSTOM_OPS:
        return False
    try:
        from torch._inductor import decomposition as inductor_decomp
    except Exception:  # noqa: BLE001 - a torch build without Inductor: the ops stay opaque
        return False
    table = getattr(inductor_decomp, "decompositions", None)
    if not isinstance(table, dict):
        return False
    key = op("rms_norm").default
    if table.get(key) is not _rms_norm_decomposition:
        try:
            # The decomposition declines (NotImplemented) above INDUCTOR_DECOMPOSE_MAX_ROWS rows, and Inductor then
            # lowers the op to a fallback kernel call; its make_fallback asserts that an op with a decomposition
            # has no fallback unless told so (torch 2.11 on an H200: "both a fallback and a decomp for same op").
            # Register that fallback first, explicitly allowed; without it the decomposition is not installed.
            from torch._inductor import lowering

            if key not in getattr(lowering, "lowerings", {}):
                lowering.make_fallback(key, override_decomp=True)
        except Exception:  # noqa: BLE001 - an Inductor without this API: keep the op opaque (always correct)
            return False
        table[key] = _rms_norm_decomposition
        cached = getattr(inductor_decomp, "fast_random_decomps", None)
        if hasattr(cached, "cache_clear"):  # a copy of the table cached by an earlier compile
            cached.cache_clear()
    return True


if HAS_CUSTOM_OPS:
    _register()
    if "torch._inductor.decomposition" in sys.modules:
        register_inductor_decompositions()

__all__ = ["NAMESPACE", "OPS", "BACKWARD_OPS", "INDUCTOR_DECOMPOSE_MAX_ROWS", "op", "register_inductor_decompositions"]
