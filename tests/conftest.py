"""Shared fixtures: per-test seeds, NaN-poisoned allocations, GPU skips with reasons, hypothesis profiles,
and the interpreter's float32 -> bfloat16 cast made to round like the GPU."""

import os

import numpy as np
import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def _round_bf16_to_nearest_in_interpreter():
    """Triton's interpreter (3.9) converts float32 -> bfloat16 by truncating the mantissa; the GPU (PTX
    cvt.rn.bf16.f32) rounds to nearest even, as torch does. Without this, every bf16 output under the
    interpreter carries up to 1 ulp of error where the GPU has 0.5, which forces loose tolerances and hides
    rounding-point bugs. Only the float32 -> bfloat16 cast changes; every other cast is Triton's own."""
    try:
        import triton.language as tl
        from triton.runtime import interpreter as ti
    except ImportError:
        return
    builder = getattr(ti, "InterpreterBuilder", None)
    if builder is None or getattr(builder, "_lite_rtne", False) or not hasattr(builder, "cast_impl"):
        return
    original = builder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            f32 = torch.from_numpy(np.ascontiguousarray(src.data, dtype=np.float32))
            bits = f32.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
            return ti.TensorHandle(bits.reshape(np.shape(src.data)), dst_type.scalar)
        return original(self, src, dst_type)

    builder.cast_impl = cast_impl
    builder._lite_rtne = True


if INTERPRET:
    _round_bf16_to_nearest_in_interpreter()

try:  # property tests (tests/test_properties.py): HYPOTHESIS_PROFILE=thorough for a long run
    from hypothesis import HealthCheck, Phase, settings

    # ci: the same examples every run (derandomize), no example database, no shrinking (shrinking interpreted
    # kernels takes minutes; the failing example is printed as drawn)
    settings.register_profile("ci", max_examples=20, deadline=None, derandomize=True, print_blob=True, database=None,
                              phases=[Phase.explicit, Phase.generate],
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    settings.register_profile("thorough", max_examples=300, deadline=None, print_blob=True,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    pass


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m gpu` on the GPU machine)")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)


@pytest.fixture(autouse=True)
def _seed(request):
    """A different, reproducible seed per test (from its node id), so tests never share one random stream."""
    seed = sum(map(ord, request.node.nodeid)) % (2**31)
    torch.manual_seed(seed)
    return seed


@pytest.fixture
def poison(monkeypatch):
    """Fill every new float tensor with NaN, so a kernel that leaves an element unwritten fails the comparison."""
    empty, empty_like = torch.empty, torch.empty_like

    def nan_fill(t):
        if t.is_floating_point():
            t.fill_(float("nan"))
        return t

    monkeypatch.setattr(torch, "empty", lambda *a, **k: nan_fill(empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: nan_fill(empty_like(*a, **k)))


@pytest.fixture
def device():
    return "cuda" if HAS_CUDA else "cpu"


def requires_kernels():
    """Skip marker for tests that must exercise the Triton kernels (CUDA, or CPU under TRITON_INTERPRET=1)."""
    return pytest.mark.skipif(not (HAS_CUDA or INTERPRET),
                              reason="Triton kernels need CUDA or TRITON_INTERPRET=1 (else the reference runs)")
