"""Property tests (hypothesis): every op against the float64 reference over drawn shapes, strides, lengths,
masks, GQA ratios, dtypes, eps and magnitudes, with the PyTorch-error rule of tests/helpers.py.

The example-based tests pin the shapes we know matter; these look for the ones we did not think of: widths
of 1, a head_dim of 2, rows around eps, huge rows, cos/sin per batch, strided views of every input, masks that
differ per query, decode lengths at 1 and at the cache's end. Sizes stay tiny (the interpreter runs every
kernel). Profiles in tests/conftest.py: "ci" (default, a dozen derandomized examples per op, ~1-2 min) and
"thorough" (HYPOTHESIS_PROFILE=thorough, 300 random examples per op, for a long run after a kernel change).
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from litekernels import apply_rope, decode_attention, flash_attention, fused_add_rms_norm, reference, rms_norm, silu_mul
from litekernels.functional import decode_linear, rope_cache_write
from tests.conftest import requires_kernels
from tests.helpers import DEVICE, assert_matches, check_op

pytestmark = [requires_kernels(), pytest.mark.usefixtures("poison")]

DTYPES = st.sampled_from([torch.float32, torch.float16, torch.bfloat16])
SEEDS = st.integers(0, 2**31 - 1)
GQA = st.sampled_from([(1, 1), (2, 1), (3, 1), (4, 2), (6, 3), (8, 1)])


def _tensor(shape, dtype, scale=1.0, layout="contiguous", requires_grad=False):
    """Random values of the given scale in one of three memory layouts with the same logical shape:
    contiguous, 'rows' (a slice of a wider last dimension: row stride > width) or 'cols' (every other column:
    last-dim stride 2, which the ops must copy or read correctly)."""
    *lead, n = shape
    if layout == "rows":
        t = (scale * torch.randn(*lead, n + 3, device=DEVICE)).to(dtype)[..., 2:2 + n]
    elif layout == "cols":
        t = (scale * torch.randn(*lead, 2 * n, device=DEVICE)).to(dtype)[..., ::2]
    else:
        t = (scale * torch.randn(*shape, device=DEVICE)).to(dtype)
    return t.detach().requires_grad_(requires_grad)


LAYOUTS = st.sampled_from(["contiguous", "rows", "cols"])
# magnitudes: rows far below eps, around it, O(1), large
MAGNITUDES = st.sampled_from([1e-4, 3e-3, 1.0, 300.0])


@given(seed=SEEDS, dtype=DTYPES, rows=st.integers(1, 9), hidden=st.sampled_from([1, 7, 64, 100, 576, 1500]),
       scale=MAGNITUDES, eps=st.sampled_from([1e-6, 1e-5, 1e-2]), layout=LAYOUTS, fused=st.booleans())
def test_rms_norm_properties(seed, dtype, rows, hidden, scale, eps, layout, fused):
    torch.manual_seed(seed)
    x = _tensor((rows, hidden), dtype, scale, layout, requires_grad=True)
    w = (1 + 0.2 * torch.randn(hidden, device=DEVICE)).to(dtype).requires_grad_()
    if fused:
        r = _tensor((rows, hidden), dtype, scale, layout, requires_grad=True)
        check_op(lambda a, b, c: fused_add_rms_norm(a, b, c, eps),
                 lambda a, b, c: reference.fused_add_rms_norm(a, b, c, eps), [x, r, w], name="fused_add_rms_norm")
    else:
        check_op(lambda a, b: rms_norm(a, b, eps), lambda a, b: reference.rms_norm(a, b, eps), [x, w], name="rms_norm")


@given(seed=SEEDS, dtype=DTYPES, B=st.integers(1, 2), heads=GQA, T=st.integers(1, 12),
       D=st.sampled_from([2, 16, 64, 80]), hf_layout=st.booleans(), cos_shape=st.sampled_from(["1TD", "BTD", "TD"]),
       scale=st.sampled_from([1e-3, 1.0, 100.0]))
def test_rope_properties(seed, dtype, B, heads, T, D, hf_layout, cos_shape, scale):
    torch.manual_seed(seed)
    H, HKV = heads
    if hf_layout:  # (B, T, H, D).transpose(1, 2), as HF passes q and k
        q = (scale * torch.randn(B, T, H, D, device=DEVICE)).to(dtype).transpose(1, 2).requires_grad_()
        k = (scale * torch.randn(B, T, HKV, D, device=DEVICE)).to(dtype).transpose(1, 2).requires_grad_()
    else:
        q = (scale * torch.randn(B, H, T, D, device=DEVICE)).to(dtype).requires_grad_()
        k = (scale * torch.randn(B, HKV, T, D, device=DEVICE)).to(dtype).requires_grad_()
    lead = {"1TD": (1,), "BTD": (B,), "TD": ()}[cos_shape]
    cos, sin = torch.randn(*lead, T, D, device=DEVICE).to(dtype), torch.randn(*lead, T, D, device=DEVICE).to(dtype)
    check_op(apply_rope, reference.apply_rope, [q, k, cos, sin], name="apply_rope")


@given(seed=SEEDS, dtype=DTYPES, rows=st.integers(1, 4), cols=st.sampled_from([1, 5, 300, 1030]),
       scale=st.sampled_from([1e-3, 1.0, 12.0]), fused_halves=st.booleans())
def test_silu_mul_properties(seed, dtype, rows, cols, scale, fused_halves):
    torch.manual_seed(seed)
    if fused_halves:  # the gate and up halves of one fused projection: row stride 2 * cols
        gu = (scale * torch.randn(rows, 2 * cols, device=DEVICE)).to(dtype)
        g, u = (t.detach().requires_grad_() for t in gu.chunk(2, dim=-1))
    else:
        g = (scale * torch.randn(rows, cols, device=DEVICE)).to(dtype).requires_grad_()
        u = torch.randn(rows, cols, device=DEVICE).to(dtype).requires_grad_()
    check_op(silu_mul, reference.silu_mul, [g, u], name="silu_mul")


@given(seed=SEEDS, dtype=DTYPES, B=st.integers(1, 2), heads=GQA, Tq=st.integers(1, 24), prefix=st.integers(0, 20),
       D=st.sampled_from([16, 32, 48, 80]), causal=st.booleans(),
       mask_kind=st.sampled_from(["none", "none", "key-padding", "per-query", "per-head"]),
       q_scale=st.sampled_from([0.1, 1.0, 4.0]), hf_layout=st.booleans())
def test_flash_attention_properties(seed, dtype, B, heads, Tq, prefix, D, causal, mask_kind, q_scale, hf_layout):
    torch.manual_seed(seed)
    H, HKV = heads
    Tk = Tq + prefix

    def make(h, T, s=1.0):
        if hf_layout:
            return (s * torch.randn(B, T, h, D, device=DEVICE)).to(dtype).transpose(1, 2).requires_grad_()
        return (s * torch.randn(B, h, T, D, device=DEVICE)).to(dtype).requires_grad_()

    q, k, v = make(H, Tq, q_scale), make(HKV, Tk), make(HKV, Tk)
    mask = None
    if mask_kind == "key-padding":
        valid = torch.ones(B, Tk, dtype=torch.bool, device=DEVICE)
        valid[0, : torch.randint(0, Tk, ()).item()] = False  # left padding (may leave a row nothing: zeros)
        mask = valid[:, None, None, :]
    elif mask_kind in ("per-query", "per-head"):
        mask = torch.rand(B, H if mask_kind == "per-head" else 1, Tq, Tk, device=DEVICE) < 0.6
    check_op(lambda a, b, c: flash_attention(a, b, c, causal=causal, attn_mask=mask),
             lambda a, b, c: reference.attention(a, b, c, causal=causal, attn_mask=mask), [q, k, v],
             name=f"flash_attention {mask_kind}")


@given(seed=SEEDS, dtype=DTYPES, B=st.integers(1, 3), heads=GQA, Tq=st.integers(1, 3), L=st.integers(4, 90),
       D=st.sampled_from([16, 64, 80]), use_mask=st.booleans(), data=st.data())
def test_decode_attention_properties(seed, dtype, B, heads, Tq, L, D, use_mask, data):
    torch.manual_seed(seed)
    H, HKV = heads
    lengths = torch.tensor(data.draw(st.lists(st.integers(Tq, L), min_size=B, max_size=B)), device=DEVICE)
    q = torch.randn(B, H, Tq, D, device=DEVICE).to(dtype)
    kc, vc = (torch.randn(B, HKV, L, D, device=DEVICE).to(dtype) for _ in range(2))
    key_mask = None
    if use_mask:
        key_mask = torch.rand(B, L, device=DEVICE) < 0.7
    out = decode_attention(q, kc, vc, lengths, key_mask=key_mask)
    exact = reference.decode_attention(q.double(), kc.double(), vc.double(), lengths, key_mask=key_mask)
    lowp = reference.decode_attention(q, kc, vc, lengths, key_mask=key_mask)
    assert_matches(out, exact, lowp, name="decode_attention")


@given(seed=SEEDS, dtype=DTYPES, rows=st.integers(1, 16), N=st.integers(1, 80), K=st.integers(1, 200),
       bias=st.booleans(), w_layout=st.sampled_from(["contiguous", "rows"]), x_layout=LAYOUTS)
def test_decode_linear_properties(seed, dtype, rows, N, K, bias, w_layout, x_layout):
    torch.manual_seed(seed)
    x = _tensor((rows, K), dtype, 1.0, x_layout)
    w = _tensor((N, K), dtype, 1.0, w_layout)
    b = torch.randn(N, device=DEVICE).to(dtype) if bias else None
    with torch.no_grad():
        out = decode_linear(x, w, b)
        exact = torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())
        lowp = torch.nn.functional.linear(x, w, b)
    assert_matches(out, exact, lowp, name="decode_linear")


@given(seed=SEEDS, dtype=DTYPES, B=st.integers(1, 3), heads=GQA, D=st.sampled_from([2, 16, 64, 80]),
       L=st.integers(2, 40), spare_rows=st.integers(0, 2), data=st.data())
def test_rope_cache_write_properties(seed, dtype, B, heads, D, L, spare_rows, data):
    torch.manual_seed(seed)
    H, KV = heads
    pos = torch.tensor(data.draw(st.lists(st.integers(0, L - 1), min_size=B, max_size=B)), device=DEVICE)
    qkv = torch.randn(B, H + 2 * KV, D, device=DEVICE).to(dtype)
    ang = torch.rand(L, D // 2, device=DEVICE) * 10
    cos, sin = torch.cat([ang, ang], -1).cos().to(dtype), torch.cat([ang, ang], -1).sin().to(dtype)
    caches = [torch.randn(B + spare_rows, KV, L, D, device=DEVICE).to(dtype) for _ in range(2)]
    ref_caches = [c.clone() for c in caches]
    q = rope_cache_write(qkv, cos, sin, pos, caches[0][:B], caches[1][:B], H, KV)
    exact_caches = [c[:B].double() for c in ref_caches]
    q_exact = reference.rope_cache_write(qkv.double(), cos.double(), sin.double(), pos, *exact_caches, H, KV)
    q_lowp = reference.rope_cache_write(qkv, cos, sin, pos, ref_caches[0][:B], ref_caches[1][:B], H, KV)
    assert_matches(q, q_exact, q_lowp, name="rope_cache_write q")
    rows = torch.arange(B, device=DEVICE)
    for got, want, exact, name in zip(caches, ref_caches, exact_caches, ("k", "v")):
        # the written slots match the reference; every other slot and the spare rows are untouched
        assert_matches(got[rows, :, pos], exact[rows, :, pos], want[rows, :, pos], name=f"{name} slot")
        untouched = torch.ones_like(got, dtype=torch.bool)
        untouched[rows, :, pos] = False
        assert torch.equal(got[untouched], want[untouched]), f"{name} cache: a slot other than positions[b] changed"
