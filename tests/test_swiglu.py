"""silu(gate) * up. Catches: sigmoid's derivative wrong, gradients written into the inputs, the last column
block unwritten, strided gate/up halves of a fused projection read as contiguous."""

import pytest
import torch

from litekernels import LiteMLP, reference, silu_mul
from tests.conftest import requires_kernels
from tests.helpers import DEVICE, check_op, rand

pytestmark = [requires_kernels(), pytest.mark.usefixtures("poison")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", [(1, 1536), (7, 1000), (130, 2048), (2, 3, 8192)],
                         ids=["decode-1536", "odd-1000", "prefill-2048", "3d-8192"])
def test_silu_mul_matches_reference(shape, dtype):
    g, u = rand(*shape, dtype=dtype, requires_grad=True), rand(*shape, dtype=dtype, requires_grad=True)
    check_op(silu_mul, reference.silu_mul, [g, u], name=f"silu_mul {dtype}")


def test_silu_mul_strided_halves_of_fused_projection():
    gate_up = rand(9, 2 * 300, requires_grad=True)
    g, u = gate_up.chunk(2, dim=-1)
    check_op(silu_mul, reference.silu_mul, [g, u], name="fused halves")


def test_inputs_are_not_modified_by_backward():
    g, u = rand(4, 256, requires_grad=True), rand(4, 256, requires_grad=True)
    g0, u0 = g.detach().clone(), u.detach().clone()
    silu_mul(g, u).sum().backward()
    assert torch.equal(g.detach(), g0) and torch.equal(u.detach(), u0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_zeros_and_saturated_gates(dtype):
    """Exact zeros among random gates give exactly 0 (silu(0) = 0, no NaN); gates of +-30 and +-90 saturate
    the sigmoid (exp overflows in a naive formula) and must stay finite, forward and backward."""
    g = rand(6, 300)
    g[0, :40] = 30.0 * torch.sign(rand(40))
    g[1, :40] = 90.0 * torch.sign(rand(40))
    g[:, ::7] = 0.0
    g, u = g.to(dtype).requires_grad_(), rand(6, 300, dtype=dtype, requires_grad=True)
    check_op(silu_mul, reference.silu_mul, [g, u], name=f"saturated {dtype}")
    y = silu_mul(g, u)
    assert torch.equal(y[:, ::7], torch.zeros_like(y[:, ::7]))


def test_lite_mlp_matches_hf_mlp():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    cfg = LlamaConfig(hidden_size=64, intermediate_size=160)
    hf = LlamaMLP(cfg).to(DEVICE)
    ours = LiteMLP(64, 160).to(DEVICE)
    ours.load_state_dict(hf.state_dict())
    x = rand(3, 5, 64)
    torch.testing.assert_close(ours(x), hf(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("g, u, exc, words", [
    (torch.ones(2, 8), torch.ones(2, 9), ValueError, "up has shape"),
    (torch.ones(2, 8), torch.ones(2, 8, dtype=torch.float16), TypeError, "up has dtype"),
    (torch.ones(2, 8), torch.ones(2, 8, device="meta"), ValueError, "up is on meta"),
])
def test_silu_mul_bad_input(g, u, exc, words):
    with pytest.raises(exc, match=words):
        silu_mul(g, u)
