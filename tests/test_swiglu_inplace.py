"""silu_mul(..., inplace_backward=True): gradients written over the saved gate/up storage.

What must hold: the same gradients bit for bit as the default backward; the storage really is reused (the
gradient of gate aliases gate); misuse through autograd raises instead of computing with overwritten inputs;
shared or copied inputs fall back to fresh buffers.
"""

import pytest
import torch

from conftest import requires_kernels
from litekernels import silu_mul

pytestmark = requires_kernels()


def _inputs(device, dtype=torch.bfloat16, rows=24, hidden=16, inter=200):
    torch.manual_seed(0)
    x = torch.randn(rows, hidden, device=device, dtype=dtype, requires_grad=True)
    wg = torch.randn(inter, hidden, device=device, dtype=dtype, requires_grad=True)
    wu = torch.randn(inter, hidden, device=device, dtype=dtype, requires_grad=True)
    return x, wg, wu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_same_gradients_and_storage_reused(dtype, device):
    x, wg, wu = _inputs(device, dtype)
    dy = torch.randn(24, 200, device=device, dtype=dtype)

    gate, up = x @ wg.T, x @ wu.T
    ref = torch.autograd.grad(silu_mul(gate, up), (x, wg, wu, gate, up), dy)

    gate, up = x @ wg.T, x @ wu.T
    seen = {}
    gate.register_hook(lambda g: seen.setdefault("gate", g))
    up.register_hook(lambda g: seen.setdefault("up", g))
    gate_ptr, up_ptr = gate.data_ptr(), up.data_ptr()
    out = silu_mul(gate, up, inplace_backward=True)
    del gate, up  # as in an MLP forward: only the op holds them
    got = torch.autograd.grad(out, (x, wg, wu), dy)
    for a, b in zip(got, ref[:3]):
        assert torch.equal(a, b)
    assert torch.equal(seen["gate"], ref[3]) and torch.equal(seen["up"], ref[4])
    assert seen["gate"].data_ptr() == gate_ptr and seen["up"].data_ptr() == up_ptr


def test_second_backward_through_retained_graph_raises(device):
    x, wg, wu = _inputs(device)
    out = silu_mul(x @ wg.T, x @ wu.T, inplace_backward=True)
    out.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace operation"):
        out.sum().backward()


def test_another_autograd_user_of_gate_raises_instead_of_reading_gradients(device):
    x, wg, wu = _inputs(device)
    gate = x @ wg.T
    square = (gate * gate).sum()  # saves gate; created first, so its backward runs after silu_mul's
    both = silu_mul(gate, x @ wu.T, inplace_backward=True).sum() + square
    with pytest.raises(RuntimeError, match="inplace operation"):
        both.backward()  # the square's backward must not read gradient values as gate


def test_shared_storage_falls_back_to_fresh_buffers(device):
    x, wg, _ = _inputs(device)

    def halves():
        h = x @ wg.T
        gu = torch.cat([h, h * 0.5], dim=-1)  # one tensor, two halves: gate and up share its storage
        return gu, gu[:, :200], gu[:, 200:]

    _, gate, up = halves()
    want = torch.autograd.grad(silu_mul(gate, up).sum(), x)[0]
    gu, gate, up = halves()
    snapshot = gu.detach().clone()
    got = torch.autograd.grad(silu_mul(gate, up, inplace_backward=True).sum(), x)[0]
    assert torch.equal(got, want)
    assert torch.equal(gu, snapshot)  # not overwritten
