"""Comparison rules shared by the op tests.

float32: our output must match the float64 reference to ~1e-5 (relative to the output's scale).
float16/bfloat16: the "2x PyTorch" rule from flash-attention's tests: our error against the float64 reference
must be at most twice the error of the same reference computed by PyTorch in the low-precision dtype, plus
a floor of a few units in the last place (both implementations round the output once, so a tie can differ by
one ulp). That adapts the tolerance to each op's numerics instead of one loose global number.
"""

import torch

# Op tests run on the GPU when there is one (compiled kernels), else on the CPU (interpreter or reference).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

ULP = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def _first_mismatches(actual, expected, tol, n=5):
    bad = ((actual - expected).abs() > tol).nonzero()[:n]
    return "; ".join(f"{tuple(i.tolist())}: got {actual[tuple(i)].item():.6g}, want {expected[tuple(i)].item():.6g}"
                     for i in bad)


def assert_matches(actual, exact, lowp=None, name="output", rtol32=1e-5):
    """actual: our result; exact: float64 reference; lowp: the reference computed in actual's dtype."""
    assert actual.shape == exact.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(exact.shape)}"
    a, e = actual.detach().double(), exact.detach().double()
    assert torch.isfinite(a).all(), f"{name}: non-finite values (unwritten output?) at {(~torch.isfinite(a)).nonzero()[:5].tolist()}"
    # Inputs are O(1) random values, so 1.0 is the floor of the scale: a reference that is exactly zero
    # (dq of a one-key softmax) is then held to rounding noise of O(1) inputs, not to 0.
    scale = max(e.abs().max().item(), 1.0)
    err = (a - e).abs().max().item()
    if actual.dtype in (torch.float32, torch.float64):
        tol = rtol32 * scale
    else:
        assert lowp is not None, "half-precision checks need the low-precision reference"
        base = (lowp.detach().double() - e).abs().max().item()
        tol = 2 * base + 4 * ULP[actual.dtype] * scale
    assert err <= tol, (f"{name}: max error {err:.3g} > tolerance {tol:.3g} (scale {scale:.3g}); "
                        + _first_mismatches(a, e, tol))


def rand(*shape, dtype=torch.float32, device=DEVICE, requires_grad=False):
    return torch.randn(*shape, dtype=dtype, device=device).requires_grad_(requires_grad)


def grads(out, inputs, grad_out):
    return torch.autograd.grad(out, inputs, grad_out, allow_unused=False)


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def check_op(ours, ref, inputs, *, name, backward=True):
    """Run `ours` and `ref` on the same inputs; compare every output and every input gradient.

    The reference runs twice: on float64 copies (the truth) and on copies in the inputs' own dtype (the
    low-precision baseline of the 2x rule). Inputs that require grad get gradients from one random
    upstream gradient per output.
    """
    out = _as_tuple(ours(*inputs))
    ex_in = [t.detach().double().requires_grad_(t.requires_grad) if t.is_floating_point() else t for t in inputs]
    lp_in = [t.detach().clone().requires_grad_(t.requires_grad) if t.is_floating_point() else t for t in inputs]
    exact, lowp = _as_tuple(ref(*ex_in)), _as_tuple(ref(*lp_in))
    for i, (o, e, lp) in enumerate(zip(out, exact, lowp)):
        assert o.dtype == lp.dtype, f"{name} output {i}: dtype {o.dtype}, reference gives {lp.dtype}"
        assert_matches(o, e, lp, name=f"{name} output {i}")
    if not backward:
        return
    diff = [j for j, t in enumerate(inputs) if t.requires_grad]
    g_out = [torch.randn_like(o) for o in out]
    g = grads(out, [inputs[j] for j in diff], g_out)
    g_ex = grads(exact, [ex_in[j] for j in diff], [t.double() for t in g_out])
    g_lp = grads(lowp, [lp_in[j] for j in diff], g_out)
    for j, a, e, lp in zip(diff, g, g_ex, g_lp):
        assert a.dtype == inputs[j].dtype, f"{name} grad of input {j}: dtype {a.dtype}"
        assert_matches(a, e, lp, name=f"{name} grad of input {j}")
