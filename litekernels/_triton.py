"""Import Triton when it exists; otherwise a stand-in so the package still imports.

Triton ships with CUDA builds of PyTorch on Linux. On a CPU-only machine without it (macOS, Windows), the
kernels below are never launched: `litekernels.utils.use_triton` sends every call to `reference.py`. The
stand-in only lets the `@triton.jit` decorators and `tl.constexpr` annotations evaluate at import time.
"""

try:
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - exercised only where triton is absent
    HAS_TRITON = False

    class _Absent:
        def __getattr__(self, name):
            return _Absent()

        def __call__(self, *args, **kwargs):
            # `@triton.jit` gives back the function; `triton.autotune(...)(fn)` likewise.
            if len(args) == 1 and callable(args[0]) and not kwargs:
                return args[0]
            return _Absent()

    triton = _Absent()
    tl = _Absent()

__all__ = ["triton", "tl", "HAS_TRITON"]
