"""Where the host time of one public op call goes (GPU machine): cProfile of N back-to-back calls per op on tiny
inputs, the top functions by own time, next to the floors: a bare Triton launch of a trivial kernel, the same launch
through litekernels' `launch` and through a `PreparedLaunch` (what a planned public call uses), torch.add and
torch.empty_like. Complements `bench_ops --only host` (which reports only the per-call total).

    python -m bench.host_profile [--calls 300] [--out PATH]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import time

import torch

from litekernels._triton import tl, triton


@triton.jit
def _noop_kernel(X, Y, n, s0, s1, s2, s3, s4, s5, s6, s7, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Y + i, tl.load(X + i, mask=i < n), mask=i < n)


def per_call_us(fn, n):
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    dt = time.perf_counter() - t
    torch.cuda.synchronize()
    return dt / n * 1e6


def profile(fn, n, top=14):
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    pr = cProfile.Profile()
    pr.enable()
    for _ in range(n):
        fn()
    pr.disable()
    torch.cuda.synchronize()
    s = io.StringIO()
    st = pstats.Stats(pr, stream=s)
    rows = []
    for (file, line, func), (cc, nc, tt, ct, _) in sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:top]:
        rows.append({"func": f"{file.split('site-packages/')[-1].split('/work/')[-1]}:{line}:{func}",
                     "calls_per_op": nc / n, "own_us_per_op": tt / n * 1e6, "cum_us_per_op": ct / n * 1e6})
    return rows


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--calls", type=int, default=300)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    from bench.host_cases import host_inputs, op_calls
    from litekernels.ops import _launch
    from litekernels.ops._launch import PreparedLaunch, fast_launch_enabled, launch

    t = host_inputs("cuda")
    x, r = t["x"], t["r"]
    y = torch.empty_like(x)
    prepared = PreparedLaunch(_noop_kernel, (1,), (16, 1, 2, 3, 4, 5, 6, 7, 8), dict(BLOCK=16))
    cases = {
        "triton_noop_launch": lambda: _noop_kernel[(1,)](x, y, 16, 1, 2, 3, 4, 5, 6, 7, 8, BLOCK=16),
        # the same launch through litekernels' direct path (ops/_launch.py; Triton's path where it is off)
        "litekernels_launch_noop": lambda: launch(_noop_kernel, (1,), x, y, 16, 1, 2, 3, 4, 5, 6, 7, 8, BLOCK=16),
        # the same launch as a planned public call makes it (all but the tensors fixed in advance)
        "litekernels_prepared_noop": lambda: prepared(x, y),
        "torch_add": lambda: torch.add(x, r),
        "torch_empty_like": lambda: torch.empty_like(x),
        **op_calls(t),
    }
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "fast_launch": fast_launch_enabled(), "prepared_calls": _launch._plans_on, "ops": {}}
    with torch.no_grad():
        for name, fn in cases.items():
            us = per_call_us(fn, args.calls)
            rows = profile(fn, args.calls)
            out["ops"][name] = {"host_us_per_call": us, "top_by_own_time": rows}
            print(f"== {name}: {us:.1f} us/call", flush=True)
            for row in rows[:10]:
                print(f"   {row['own_us_per_op']:7.2f} own {row['cum_us_per_op']:7.2f} cum  x{row['calls_per_op']:.0f}  "
                      f"{row['func'][-90:]}")
    path = args.out or "host-profile.json"
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()
