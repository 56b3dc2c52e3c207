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


class _NoFLinear:
    """Stands in for torch.nn.functional inside ops/linear.py: any fallback to F.linear raises."""

    def linear(self, *a, **k):
        raise AssertionError("decode_linear fell back to F.linear")


def test_decode_linear_runs_the_kernel_up_to_16_rows(monkeypatch):
    import litekernels.ops.linear as lin

    monkeypatch.setattr(lin, "F", _NoFLinear())
    x, w = rand(16, 96), rand(40, 96)
    with torch.no_grad():
        out = decode_linear(x, w)
    assert_matches(out, x.double() @ w.double().T, name="16 rows")


def test_decode_linear_falls_back_for_many_rows_and_grad(monkeypatch):
    import litekernels.ops.linear as lin

    calls = []
    real = lin.F.linear
    monkeypatch.setattr(lin.F, "linear", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, w = rand(17, 32), rand(8, 32)
    assert_matches(decode_linear(x, w), x.double() @ w.double().T, name="17 rows")
    assert calls, "more than 16 rows must take F.linear"
    xg = rand(2, 32, requires_grad=True)
    decode_linear(xg, w).sum().backward()  # autograd works through the fallback
    torch.testing.assert_close(xg.grad, w.sum(0).expand(2, 32))
    assert len(calls) == 2, "a call that needs grad must take F.linear"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_decode_linear_strided_weight_rows_and_x(dtype):
    """A weight whose rows are longer than K (a column slice of a wider matrix: row stride 200 > K = 72) and
    x rows of a wider buffer: both read with their row strides."""
    wide = rand(50, 200, dtype=dtype)
    w = wide[:, 10:82]
    assert w.stride() == (200, 1)
    x = rand(5, 300, dtype=dtype)[:, 7:79]
    b = rand(50, dtype=dtype)
    with torch.no_grad():
        out = decode_linear(x, w, b)
        exact = torch.nn.functional.linear(x.double(), w.double(), b.double())
        lowp = torch.nn.functional.linear(x, w, b)
    assert_matches(out, exact, lowp, name="strided")


def test_decode_linear_bad_input():
    with pytest.raises(ValueError, match="in_features"):
        decode_linear(torch.ones(1, 8), torch.ones(4, 9))
    with pytest.raises(TypeError, match="weight has dtype"):
        decode_linear(torch.ones(1, 8), torch.ones(4, 8, dtype=torch.float16))
