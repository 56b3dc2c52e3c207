"""RMSNorm and fused add+RMSNorm against reference.py. Easy mistakes this catches: variance not in fp32,
the weight applied before the cast back to x's dtype (HF applies it after), dw summed in low precision or
only over the first program's rows, a last row or column left unwritten, strided rows read as contiguous."""

import pytest
import torch

from litekernels import fused_add_rms_norm, reference, rms_norm
from tests.conftest import requires_kernels
from tests.helpers import DEVICE, check_op, rand

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
    # HF rounds the normalised x to bf16 before the fp32 weight. Triton's interpreter (3.9) truncates in that
    # fp32->bf16 cast where the GPU rounds to nearest, so on the CPU one bf16 ulp (2^-8 relative) may differ.
    tol = 2.0**-8 if not y.is_cuda else 1e-6
    torch.testing.assert_close(y, reference.rms_norm(x, w, 1e-6), atol=tol * y.abs().max().item(), rtol=tol)


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
