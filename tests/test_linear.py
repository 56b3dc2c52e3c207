"""decode_linear (skinny GEMM for decode) against float64 matmul; falls back to F.linear outside its range."""

import pytest
import torch
import torch.nn.functional as F

from litekernels.functional import decode_linear
from tests.conftest import requires_kernels
from tests.helpers import assert_matches, rand

pytestmark = [requires_kernels(), pytest.mark.usefixtures("poison")]


@pytest.mark.parametrize("rows", [1, 3, 16])
@pytest.mark.parametrize("N, K", [(48, 64), (100, 72), (33, 130)], ids=["even", "odd-n", "odd-k"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_decode_linear_matches_matmul(rows, N, K, dtype, bias):
    x, w = rand(rows, 1, K, dtype=dtype), rand(N, K, dtype=dtype)
    b = rand(N, dtype=dtype) if bias else None
    with torch.no_grad():
        out = decode_linear(x, w, b)
        exact = F.linear(x.double(), w.double(), None if b is None else b.double())
        lowp = F.linear(x, w, b)
    assert out.shape == (rows, 1, N)
    assert_matches(out, exact, lowp, name="decode_linear")


def test_decode_linear_falls_back_for_many_rows_and_grad():
    x, w = rand(17, 32), rand(8, 32)
    torch.testing.assert_close(decode_linear(x, w), F.linear(x, w))
    xg = rand(2, 32, requires_grad=True)
    decode_linear(xg, w).sum().backward()  # autograd works through the fallback
    assert xg.grad is not None


def test_decode_linear_bad_input():
    with pytest.raises(ValueError, match="in_features"):
        decode_linear(torch.ones(1, 8), torch.ones(4, 9))
    with pytest.raises(TypeError, match="weight has dtype"):
        decode_linear(torch.ones(1, 8), torch.ones(4, 8, dtype=torch.float16))
