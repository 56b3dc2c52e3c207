"""RMSNorm and fused add+RMSNorm against reference.py. Easy mistakes this catches: variance not in fp32,
the weight applied before the cast back to x's dtype (HF applies it after), dw summed in low precision or
only over the first program's rows, a last row or column left unwritten, strided rows read as contiguous."""

import pytest
import torch

from litekernels import fused_add_rms_norm, reference, rms_norm
from tests.conftest import requires_kernels
from tests.helpers import DEVICE, assert_rounds_like, check_op, rand

pytestmark = [requires_kernels(), pytest.mark.usefixtures("poison")]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
HIDDEN = [pytest.param(576, id="smollm-576"), pytest.param(2048, id="llama1b-2048"),
          pytest.param(4096, id="llama8b-4096"), pytest.param(1000, id="odd-1000")]
TOKENS = [pytest.param(1, id="decode-1"), pytest.param(7, id="prefill-7"), pytest.param(130, id="prefill-130")]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("tokens", TOKENS)
def test_rms_norm_matches_reference(tokens, hidden, dtype):
    x = rand(2, tokens, hidden, dtype=dtype, requires_grad=True)
    w = (1 + 0.1 * rand(hidden, dtype=dtype)).requires_grad_()
    check_op(lambda a, b: rms_norm(a, b, 1e-6), lambda a, b: reference.rms_norm(a, b, 1e-6), [x, w],
             name=f"rms_norm {dtype}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("hidden", [576, 1000])
@pytest.mark.parametrize("tokens", [1, 130])
def test_fused_add_rms_norm_matches_reference(tokens, hidden, dtype):
    x = rand(tokens, hidden, dtype=dtype, requires_grad=True)
    r = rand(tokens, hidden, dtype=dtype, requires_grad=True)
    w = (1 + 0.1 * rand(hidden, dtype=dtype)).requires_grad_()
    check_op(lambda a, b, c: fused_add_rms_norm(a, b, c, 1e-5), lambda a, b, c: reference.fused_add_rms_norm(a, b, c, 1e-5),
             [x, r, w], name=f"fused_add_rms_norm {dtype}")


def test_fp32_weight_with_bf16_input_promotes_like_hf():
    x = rand(3, 64, dtype=torch.bfloat16)
    w = rand(64)
    y = rms_norm(x, w, 1e-6)
    assert y.dtype == torch.float32
    # HF rounds the normalised x to bf16, then multiplies by the fp32 weight in fp32: ours must round at the
    # same point (tests/conftest.py makes the interpreter's fp32->bf16 cast round to nearest, as the GPU does);
    # a different summation order of mean(x^2) may move a tie by one bf16 ulp of x*rstd, hence 2^-8 relative.
    ref = reference.rms_norm(x, w, 1e-6)
    assert ((y - ref).abs() <= 2.0**-8 * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True))).abs()
            * w.abs()).all()
    assert (y == ref).float().mean() >= 0.98


def _hf_rms_norm(hidden, eps, weight):
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    m = LlamaRMSNorm(hidden, eps=eps).to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        m.weight.copy_(weight)
    return m


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_output_rounds_where_hf_rounds(dtype):
    """Ours equals HF's LlamaRMSNorm in bf16/fp16 bit for bit, up to a tie moved by summation order (<= 1 ulp,
    few elements). Rounding earlier or later than HF (e.g. weight applied before the cast) fails here even
    though it can be *closer* to float64, which the PyTorch-error rule cannot see. In fp16 a tie moved in
    x*rstd (1 ulp there) times a weight above 1 can land 2 ulps away in the output's binade, hence 2."""
    hidden = 1000
    x = rand(3, 11, hidden, dtype=dtype)
    w = 1 + 0.3 * rand(hidden, dtype=dtype)
    with torch.no_grad():
        hf = _hf_rms_norm(hidden, 1e-5, w)(x)
        ours = rms_norm(x, w, 1e-5)
        ulps = 1 if dtype == torch.bfloat16 else 2
        assert_rounds_like(ours, hf, name=f"rms_norm {dtype}", max_ulps=ulps)
        r = rand(3, 11, hidden, dtype=dtype)
        y, h = fused_add_rms_norm(x, r, w, 1e-5)
        assert torch.equal(h, x + r), "h must be x + residual rounded once to the input dtype, as torch does"
        assert_rounds_like(y, _hf_rms_norm(hidden, 1e-5, w)(x + r), name=f"fused_add_rms_norm {dtype}", max_ulps=ulps)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("eps", [1e-6, 1e-5])
def test_tiny_rows_where_eps_matters(dtype, eps):
    """Rows whose mean square is around eps (and one all-zero row): eps dropped or misplaced changes the output
    by O(1) there, while random O(1) rows would not notice it."""
    x = torch.cat([1e-3 * rand(3, 300), (eps ** 0.5) * rand(2, 300), torch.zeros(1, 300, device=DEVICE),
                   rand(1, 300)]).to(dtype).requires_grad_()
    w = (1 + 0.1 * rand(300, dtype=dtype)).requires_grad_()
    check_op(lambda a, b: rms_norm(a, b, eps), lambda a, b: reference.rms_norm(a, b, eps), [x, w],
             name=f"tiny rows {dtype}")
    r = (1e-3 * rand(7, 300)).to(dtype).requires_grad_()
    check_op(lambda a, b, c: fused_add_rms_norm(a, b, c, eps), lambda a, b, c: reference.fused_add_rms_norm(a, b, c, eps),
             [x, r, w], name=f"fused tiny rows {dtype}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_row_strided_input_and_residual(dtype):
    """Rows of a wider buffer (row stride > width, unit column stride): read in place with the row stride."""
    base = rand(40, 2 * 96 + 5, dtype=dtype)
    x = base[:, 3:99].detach().requires_grad_()  # a view is a leaf only after detach; strides are kept
    assert x.stride() == (197, 1)
    rbase = rand(40, 150, dtype=dtype)
    r = rbase[:, :96].detach().requires_grad_()
    w = (1 + 0.1 * rand(96, dtype=dtype)).requires_grad_()
    check_op(lambda a, b: rms_norm(a, b, 1e-6), lambda a, b: reference.rms_norm(a, b, 1e-6), [x, w], name="row strided")
    check_op(lambda a, b, c: fused_add_rms_norm(a, b, c, 1e-6), lambda a, b, c: reference.fused_add_rms_norm(a, b, c, 1e-6),
             [x, r, w], name="fused row strided")


def test_non_contiguous_input():
    base = rand(8, 2 * 96, requires_grad=True)
    x = base[:, ::2]  # stride 2 in the last dim
    w = rand(96, requires_grad=True)
    check_op(lambda a, b: rms_norm(a, b, 1e-6), lambda a, b: reference.rms_norm(a, b, 1e-6), [x, w], name="strided")


def test_output_has_unit_rms_before_weight():
    x = 5 * rand(4, 256)
    y = rms_norm(x, torch.ones(256, device=DEVICE), 0.0)
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(4, device=DEVICE), atol=1e-4, rtol=1e-4)


def test_dw_is_deterministic():
    x = rand(37, 128, requires_grad=True)
    w = rand(128, requires_grad=True)
    g = torch.randn(37, 128, device=DEVICE)
    dws = [torch.autograd.grad(rms_norm(x, w, 1e-6), w, g)[0] for _ in range(2)]
    assert torch.equal(dws[0], dws[1])


@pytest.mark.parametrize("bad, exc, words", [
    (dict(w=torch.ones(63)), ValueError, "weight has 63"),
    (dict(w=torch.ones(64, dtype=torch.float64)), TypeError, "weight has dtype torch.float64"),
    (dict(x=torch.ones(2, 64, dtype=torch.int32)), TypeError, "x has dtype torch.int32"),
    (dict(w=torch.ones(64, device="meta")), ValueError, "weight is on meta"),
    (dict(w=torch.ones(2, 64)), ValueError, "weight must have 1 dimensions"),
])
def test_bad_input_is_named(bad, exc, words):
    x, w = bad.get("x", torch.ones(2, 64)), bad.get("w", torch.ones(64))
    with pytest.raises(exc, match=words):
        rms_norm(x, w)


def test_fused_add_shape_mismatch():
    with pytest.raises(ValueError, match="residual has shape"):
        fused_add_rms_norm(torch.ones(2, 64), torch.ones(3, 64), torch.ones(64))
