"""torch.library registration (litekernels/library.py): every op in OPS passes torch.library.opcheck, its fake
implementation propagates shapes under FakeTensorMode and on meta tensors, the public functions route through
the ops while tracing, and the ops' results (and gradients) equal the eager public functions'.

Runs on whichever backend the environment gives: the reference on plain CPU, the Triton kernels under
TRITON_INTERPRET=1 (small shapes), compiled kernels on CUDA.
"""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import litekernels.functional as LF
from litekernels import library
from litekernels.utils import HAS_CUSTOM_OPS

pytestmark = pytest.mark.skipif(not HAS_CUSTOM_OPS, reason="torch.library.custom_op needs torch >= 2.4")

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _r(*shape, grad=False, dtype=torch.float32):
    return torch.randn(*shape, device=DEV, dtype=dtype).requires_grad_(grad)


def op_cases():
    """(op name, args) with awkward small shapes; differentiable inputs require grad."""
    B, H, Hkv, T, D = 2, 4, 2, 5, 16
    cos_sin = torch.randn(2, 1, T, D, device=DEV)
    L = 12
    lengths = torch.tensor([7, 12], dtype=torch.int32, device=DEV)
    key_mask = torch.ones(B, L, dtype=torch.bool, device=DEV)
    key_mask[0, :3] = False
    pad = torch.ones(B, 1, 1, 9, dtype=torch.bool, device=DEV)
    pad[1, ..., :2] = False
    return [
        ("rms_norm", (_r(3, 5, 24, grad=True), _r(24, grad=True), 1e-6)),
        ("fused_add_rms_norm", (_r(3, 5, 24, grad=True), _r(3, 5, 24, grad=True), _r(24, grad=True), 1e-5)),
        ("apply_rope", (_r(B, H, T, D, grad=True), _r(B, Hkv, T, D, grad=True), cos_sin[0], cos_sin[1])),
        ("rope_cache_write", (_r(B, H + 2 * Hkv, D), _r(L, D), _r(L, D),
                              torch.tensor([3, 11], device=DEV), _r(B, Hkv, L, D), _r(B, Hkv, L, D), H, Hkv)),
        ("silu_mul", (_r(3, 7, 40, grad=True), _r(3, 7, 40, grad=True))),
        ("flash_attention", (_r(B, H, T, D, grad=True), _r(B, Hkv, 9, D, grad=True), _r(B, Hkv, 9, D, grad=True),
                             pad, True, 0.25)),
        ("flash_attention", (_r(1, H, T, D, grad=True), _r(1, Hkv, T, D, grad=True), _r(1, Hkv, T, D, grad=True),
                             None, True, 0.3)),
        ("decode_attention", (_r(B, H, 1, D), _r(B, Hkv, L, D), _r(B, Hkv, L, D), lengths, key_mask, 0.25)),
        ("decode_attention", (_r(B, H, 1, D), _r(B, Hkv, L, D), _r(B, Hkv, L, D), lengths, None, 0.25)),
        ("decode_linear", (_r(2, 48), _r(40, 48), _r(40))),
        ("decode_linear", (_r(1, 3, 48), _r(40, 48), None)),
    ]


IDS = ["rms_norm", "fused_add_rms_norm", "apply_rope", "rope_cache_write", "silu_mul", "flash_attention-mask",
       "flash_attention-causal", "decode_attention-keymask", "decode_attention", "decode_linear-bias",
       "decode_linear-3d"]


def test_every_public_op_is_registered():
    expected = {"rms_norm", "fused_add_rms_norm", "apply_rope", "rope_cache_write", "silu_mul", "flash_attention",
                "decode_attention", "decode_linear"}
    assert expected <= set(library.OPS)
    for name in list(library.OPS) + list(library.BACKWARD_OPS):
        assert library.op(name).default._schema.name == f"litekernels::{name}"
    assert {name for name, _ in op_cases()} == expected
    assert set(library.OPS) == expected | {"fused_linear_cross_entropy"}  # tested below, on kernel backends


@pytest.mark.parametrize("index", range(len(IDS)), ids=IDS)
def test_opcheck(index):
    name, args = op_cases()[index]
    torch.library.opcheck(library.op(name).default, args)


@pytest.mark.parametrize("index", range(len(IDS)), ids=IDS)
def test_fake_tensor_shapes_match_real(index):
    name, args = op_cases()[index]
    real = library.op(name)(*[a.detach().clone() if isinstance(a, torch.Tensor) else a for a in args])
    real = real if isinstance(real, tuple) else (real,)
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        fake = library.op(name)(*fake_args)
    fake = fake if isinstance(fake, tuple) else (fake,)
    assert len(fake) == len(real)
    for f, r in zip(fake, real):
        assert (f.shape, f.dtype, f.stride()) == (r.shape, r.dtype, r.stride())


def test_meta_tensors_go_through_the_fake_implementations():
    x = torch.empty(4, 6, 64, device="meta", dtype=torch.bfloat16)
    w = torch.empty(64, device="meta", dtype=torch.float32)
    y, rstd = torch.ops.litekernels.rms_norm(x, w, 1e-6)
    assert y.shape == x.shape and y.dtype == torch.float32 and rstd.shape == (24,)
    q = torch.empty(2, 8, 33, 64, device="meta", dtype=torch.bfloat16)
    k = torch.empty(2, 2, 40, 64, device="meta", dtype=torch.bfloat16)
    o = LF.flash_attention(q, k, k, causal=True)  # the public function on meta tensors
    assert o.shape == q.shape and o.device.type == "meta"
    o, lse = torch.ops.litekernels.flash_attention(q, k, k, None, True, 0.125)  # half inputs: the lse stays fp32
    assert o.dtype == torch.bfloat16 and lse.shape == (2, 8, 33) and lse.dtype == torch.float32


def test_public_functions_trace_to_the_registered_ops():
    """Under make_fx (a dispatch mode, as export uses) every public call is one litekernels op in the graph."""
    from torch.fx.experimental.proxy_tensor import make_fx

    def f(x, w, gate, up, q, k, cos, sin):
        y = LF.rms_norm(x, w)
        qr, kr = LF.apply_rope(q, k, cos, sin)
        return y, LF.silu_mul(gate, up), LF.flash_attention(qr, kr, kr, causal=True)

    args = (_r(3, 16), _r(16), _r(3, 20), _r(3, 20), _r(1, 4, 5, 16), _r(1, 2, 5, 16), _r(1, 5, 16), _r(1, 5, 16))
    gm = make_fx(f, tracing_mode="fake")(*args)
    targets = {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}
    for name in ("rms_norm", "apply_rope", "silu_mul", "flash_attention"):
        assert f"litekernels.{name}.default" in targets, targets


@pytest.mark.parametrize("index", [0, 1, 2, 4, 5, 6], ids=[IDS[i] for i in (0, 1, 2, 4, 5, 6)])
def test_op_gradients_equal_the_eager_public_functions(index):
    """The registered backward (a litekernels op too) against the eager path's autograd, same inputs."""
    name, args = op_cases()[index]
    tensors = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    public = {"rms_norm": lambda x, w, eps: LF.rms_norm(x, w, eps),
              "fused_add_rms_norm": lambda x, r, w, eps: LF.fused_add_rms_norm(x, r, w, eps),
              "apply_rope": LF.apply_rope, "silu_mul": LF.silu_mul,
              "flash_attention": lambda q, k, v, m, c, s: LF.flash_attention(q, k, v, causal=c, scale=s, attn_mask=m)}
    n_out = {"rms_norm": 1, "fused_add_rms_norm": 2, "apply_rope": 2, "silu_mul": 1, "flash_attention": 1}[name]

    def outputs(fn):
        out = fn(*args)
        out = out if isinstance(out, tuple) else (out,)
        return out[:n_out]

    got = outputs(library.op(name))
    want = outputs(public[name])
    grads_out = [torch.randn_like(o) for o in want]
    g_got = torch.autograd.grad(got, tensors, grads_out)
    g_want = torch.autograd.grad(want, tensors, grads_out)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_rope_cache_write_op_mutates_the_caches_like_the_public_function():
    _, args = op_cases()[3]
    a = [x.clone() if isinstance(x, torch.Tensor) else x for x in args]
    b = [x.clone() if isinstance(x, torch.Tensor) else x for x in args]
    q_op = torch.ops.litekernels.rope_cache_write(*a)
    q_pub = LF.rope_cache_write(*b)
    torch.testing.assert_close(q_op, q_pub)
    torch.testing.assert_close(a[4], b[4])
    torch.testing.assert_close(a[5], b[5])


def test_torch_export_keeps_the_ops():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(16))

        def forward(self, x, q, k):
            return LF.silu_mul(LF.rms_norm(x, self.w), x), LF.flash_attention(q, k, k, causal=True)

    block = Block().to(DEV)
    args = (_r(3, 16), _r(1, 4, 6, 16), _r(1, 2, 6, 16))
    exported = torch.export.export(block, args)
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    for name in ("rms_norm", "silu_mul", "flash_attention"):
        assert f"litekernels.{name}.default" in targets, targets
    for a, b in zip(exported.module()(*args), block(*args)):
        torch.testing.assert_close(a, b)


KERNELS = torch.cuda.is_available() or __import__("litekernels.utils", fromlist=["INTERPRET"]).INTERPRET


def _flce_args(bias):
    N, H, V = 10, 32, 50
    labels = torch.randint(0, V, (N,), device=DEV)
    labels[3] = -100
    b = _r(V, grad=True) if bias else None
    return (_r(N, H, grad=True), _r(V, H, grad=True), b, labels, -100, 0.1, None if bias else 20.0, 1e-3)


@pytest.mark.skipif(not KERNELS, reason="the op runs the Triton kernels only (CUDA or TRITON_INTERPRET=1)")
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias+smoothing"])
def test_fused_linear_cross_entropy_op(bias):
    args = _flce_args(bias)
    torch.library.opcheck(torch.ops.litekernels.fused_linear_cross_entropy.default, args)
    # per-row losses, reduced in torch, against the public function's eager route (its autograd Function)
    hidden, weight, b, labels, ignore, smooth, cap, z = args
    rows, _ = torch.ops.litekernels.fused_linear_cross_entropy(*args)
    want = LF.fused_linear_cross_entropy(hidden, weight, labels, b, ignore_index=ignore, label_smoothing=smooth,
                                         softcap=cap, z_loss=z, reduction="sum")
    torch.testing.assert_close(rows.sum(), want, atol=1e-4, rtol=1e-4)
    params = [t for t in (hidden, weight, b) if t is not None]
    got_g = torch.autograd.grad(rows.sum(), params)
    want_g = torch.autograd.grad(want, params)
    for x, y in zip(got_g, want_g):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(KERNELS, reason="reference path only")
def test_fused_linear_cross_entropy_op_refuses_the_reference_path():
    with pytest.raises(NotImplementedError, match="Triton kernels"):
        torch.ops.litekernels.fused_linear_cross_entropy(*[a.detach() if isinstance(a, torch.Tensor) else a
                                                           for a in _flce_args(False)])
