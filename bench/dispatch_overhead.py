"""Host (CPU) time per call of the two routes a public function can take, on tiny CPU tensors.

Measures dispatch only, not kernels: every route runs the same trivial or reference body.
  * custom-op vs autograd.Function with a `clone()` body: the cost of torch.library's Python dispatcher
    (what `torch.ops.litekernels.<op>` pays per call) against an autograd Function (the eager route);
  * the public functions on the reference path (checks + reference) against `torch.ops.litekernels.<op>` and
    the bare reference, for rms_norm, silu_mul and apply_rope.
Why the public functions call the registered ops only while tracing (litekernels/library.py). Writes
bench/results/dispatch-cpu.json.

    python -m bench.dispatch_overhead
"""

from __future__ import annotations

import datetime
import platform
import time

import torch

import litekernels.functional as LF
from litekernels import reference
from bench.results_io import save_results


def per_call_us(fn, n=4000, repeats=5) -> float:
    for _ in range(200):
        fn()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t) / n * 1e6)
    return best


@torch.library.custom_op("litekernels_bench::clone", mutates_args=())
def _clone_op(x: torch.Tensor) -> torch.Tensor:
    return x.clone()


_clone_op.register_fake(lambda x: torch.empty_like(x))
_clone_op.register_autograd(lambda ctx, g: g, setup_context=lambda ctx, inputs, output: None)


class _CloneFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g


def main():
    torch.set_num_threads(1)
    rows = {}
    x = torch.randn(1, 1, 64)
    xg = x.clone().requires_grad_()
    rows["clone (no dispatch layer)"] = per_call_us(lambda: x.clone())
    rows["custom_op clone"] = per_call_us(lambda: torch.ops.litekernels_bench.clone(x))
    rows["autograd.Function clone"] = per_call_us(lambda: _CloneFunction.apply(x))
    rows["custom_op clone, input requires grad"] = per_call_us(lambda: torch.ops.litekernels_bench.clone(xg))
    rows["autograd.Function clone, input requires grad"] = per_call_us(lambda: _CloneFunction.apply(xg))
    w = torch.randn(64)
    g, u = torch.randn(1, 1, 128), torch.randn(1, 1, 128)
    q, k, cs = torch.randn(1, 4, 1, 16), torch.randn(1, 2, 1, 16), torch.randn(1, 1, 16)
    cases = {
        "rms_norm": (lambda: LF.rms_norm(x, w, 1e-6), lambda: torch.ops.litekernels.rms_norm(x, w, 1e-6),
                     lambda: reference.rms_norm(x, w, 1e-6)),
        "silu_mul": (lambda: LF.silu_mul(g, u), lambda: torch.ops.litekernels.silu_mul(g, u),
                     lambda: reference.silu_mul(g, u)),
        "apply_rope": (lambda: LF.apply_rope(q, k, cs, cs), lambda: torch.ops.litekernels.apply_rope(q, k, cs, cs),
                       lambda: reference.apply_rope(q, k, cs, cs)),
    }
    for name, (public, op, ref) in cases.items():
        rows[f"{name}: public function (eager route, checks + reference)"] = per_call_us(public)
        rows[f"{name}: torch.ops.litekernels (custom-op route, reference body)"] = per_call_us(op)
        rows[f"{name}: reference alone"] = per_call_us(ref)
    meta = {"device": "cpu", "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "threads": 1, "what": "host microseconds per call (best of 5 x 4000), CPU tensors, dispatch only",
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    for k, v in rows.items():
        print(f"{v:8.2f} us  {k}")
    save_results({"meta": meta, "results": rows}, "dispatch")


if __name__ == "__main__":
    main()
