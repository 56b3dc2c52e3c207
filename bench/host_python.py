"""The Python part of each public op's host path, measured on the CPU (no GPU needed).

Runs every public op on small CPU tensors with the Triton path forced on (`use_triton` patched to True) and the
kernel launch itself replaced by a no-op, so what is timed is our Python: checks, settings, allocations, the
autograd decision, and (with litekernels/ops/_launch.py present) the direct-launch dispatch up to the C launcher
call, which a stand-in takes. With prepared calls (PlanCache in ops/_launch.py), a repeated call is the plan
lookup, the output allocation and the PreparedLaunch dispatch; CPU tensors get no cached discard buffer (the GPU
reuses one), so rms_norm, fused_add_rms_norm and flash_attention pay one more small allocation here than there;
the launch-hook test, the device and stream queries are stand-ins here (C calls or Triton's knobs on the GPU).
Two extra rows time that discard buffer's GPU logic alone (device index 0, stream query stubbed, CPU memory):
`discard_at` and, where it exists, a plan's `DiscardSlot`.
Without ops/_launch.py (an older checkout) `kernel[grid]` is the no-op: Triton's own dispatch is then NOT counted,
so a before/after comparison favours "before".
Timed under torch.no_grad, median of --repeats batches of --calls back-to-back calls; the machine's load average
is recorded (other processes share the cores). Reference points on the same CPU: torch.add and torch.empty.

    python -m bench.host_python [--calls 2000] [--repeats 7] [--dispatch live|stub] [--out PATH]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import statistics
import time
import types

import torch

OP_MODULES = ("rms_norm", "rope", "swiglu", "attention", "decode_attention")


class _StubKernel:
    """Stands in for a @triton.jit kernel: `[grid](...)` does nothing and returns a stand-in compiled kernel
    whose launcher does nothing; carries the real kernel's parameters for ops/_launch.py's bookkeeping."""

    def __init__(self, real):
        self.params = getattr(real, "params", [])
        self.fn = getattr(real, "fn", lambda: None)
        self.pre_run_hooks = []
        self.used_global_vals = {}
        self.compiled = types.SimpleNamespace(function=0, packed_metadata=0, run=lambda *a: None)

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.compiled


def patch_ops(dispatch: str = "live"):
    """Force the Triton path on CPU tensors and stub every kernel; returns a description of what is measured.
    dispatch="stub": ops/_launch.py's direct path off, so `launch` goes straight to the no-op `kernel[grid]`
    (the same cut as an older checkout, for a like-for-like comparison of the ops' own Python)."""
    for name in OP_MODULES:
        mod = importlib.import_module(f"litekernels.ops.{name}")
        mod.use_triton = lambda *tensors: True
        for attr in list(vars(mod)):
            if attr.startswith("_") and attr.endswith("_kernel"):
                setattr(mod, attr, _StubKernel(getattr(mod, attr)))
    try:
        L = importlib.import_module("litekernels.ops._launch")
    except ImportError:
        return "kernel[grid] stubbed (no ops/_launch.py: Triton's dispatch not counted)"
    if dispatch == "stub":
        L._on = False
        return "ops/_launch.py present, its dispatch off: kernel[grid] stubbed"
    L._SETUP = ("all", "chain", None, _StubKernel)
    L._on = True
    L._get_device = lambda: 0
    L._get_stream = lambda device: 0
    L._capturing = lambda: False  # for the discard-buffer rows (CPU tensors never reach it: their index is -1)
    L._hooks_idle = lambda: True
    L._states.clear()
    return "ops/_launch.py dispatch live, C launcher stubbed"


def per_call_us(fn, calls, repeats):
    for _ in range(50):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - t) / calls * 1e6)
    return statistics.median(times), min(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--dispatch", choices=("live", "stub"), default="live",
                   help="live: ops/_launch.py's dispatch runs (C launcher stubbed); stub: kernel[grid] is the no-op")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("run without TRITON_INTERPRET=1 (the launch settings would be the interpreter's)")
    mode = patch_ops(args.dispatch)
    from bench.host_cases import host_inputs, op_calls

    bf = torch.bfloat16
    t = host_inputs("cpu", bf)
    cases = {
        "torch_add (reference)": lambda: torch.add(t["x"], t["r"]),
        "torch_empty (reference)": lambda: torch.empty((4, 2048), dtype=bf),
        "torch_empty_like (reference)": lambda: torch.empty_like(t["x"]),
        **op_calls(t),
    }
    if mode.endswith("C launcher stubbed"):
        # the plans' discard buffer on the GPU path (rstd / lse nobody reads): CPU tensors take a fresh allocation
        # instead (module docstring), so its GPU logic is timed on its own, stream query stubbed, CPU memory
        L = importlib.import_module("litekernels.ops._launch")
        cases["discard_at GPU path (stubbed stream)"] = lambda: L.discard_at(0, 4, t["x"].device)
        if hasattr(L, "DiscardSlot"):  # a plan's remembered buffer (second trim)
            slot = L.DiscardSlot(0, 4, t["x"].device)
            cases["DiscardSlot GPU path (stubbed stream)"] = slot
    load_before = os.getloadavg()
    rows = {}
    with torch.no_grad():
        for name, fn in cases.items():
            med, best = per_call_us(fn, args.calls, args.repeats)
            rows[name] = {"python_us_median": med, "python_us_min": best}
            print(f"{name:26s} {med:7.2f} µs/call (min {best:.2f})", flush=True)
    load_after = os.getloadavg()
    print(f"load average before {load_before[0]:.2f}, after {load_after[0]:.2f} ({os.cpu_count()} cores); {mode}")
    import litekernels
    meta = {"device": "CPU", "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version(), "litekernels": litekernels.__file__,
            "mode": mode, "prepared_calls": getattr(importlib.import_module("litekernels.ops._launch"), "_plans_on", None),
            "loadavg_before": load_before, "loadavg_after": load_after,
            "calls": args.calls, "repeats": args.repeats,
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    doc = {"meta": meta, "ops": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)
        print("wrote", args.out)
    else:
        from bench.results_io import save_results
        save_results(doc, "host-python")


if __name__ == "__main__":
    main()
