"""Shared fixtures: per-test seeds, NaN-poisoned allocations, GPU skips with reasons."""

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


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
