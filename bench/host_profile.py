"""Where the host time of one public op call goes (GPU machine): cProfile of N back-to-back calls per op on tiny
inputs, the top functions by own time, next to the floors: a bare Triton launch of a trivial kernel, the same launch
through litekernels' `launch`, through a `PreparedLaunch` (what a planned public call uses) and two of them through
one `PreparedLaunches` (what decode_attention's split + combine use), torch.add and torch.empty_like. Complements
`bench_ops --only host` (which reports only the per-call total).

The per-call time is the median over --repeats batches of --calls back-to-back calls (min recorded too), the
load average before and after is recorded: the host is shared, compare ops only with the floors of the same run.

    python -m bench.host_profile [--calls 300] [--repeats 7] [--out PATH]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import time

import torch

from litekernels._triton import tl, triton


@triton.jit
def _noop_kernel(X, Y, n, s0, s1, s2, s3, s4, s5, s6, s7, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Y + i, tl.load(X + i, mask=i < n), mask=i < n)


def per_call_us(fn, n, repeats=1):
    """(median, min) over `repeats` batches of n back-to-back calls, µs of host time per call (the GPU is synced
    before each batch, not inside it)."""
    for _ in range(20):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        times.append((time.perf_counter() - t) / n * 1e6)
        torch.cuda.synchronize()
    return statistics.median(times), min(times)


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
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    from bench.host_cases import host_inputs, op_calls
    from litekernels.ops import _launch
    from litekernels.ops._launch import PreparedLaunch, fast_launch_enabled, launch

    PreparedLaunches = getattr(_launch, "PreparedLaunches", None)  # absent in older checkouts

    t = host_inputs("cuda")
    x, r = t["x"], t["r"]
    y = torch.empty_like(x)
    prepared = PreparedLaunch(_noop_kernel, (1,), (16, 1, 2, 3, 4, 5, 6, 7, 8), dict(BLOCK=16))
    if PreparedLaunches is not None:
        pair = PreparedLaunches((PreparedLaunch(_noop_kernel, (1,), (16, 1, 2, 3, 4, 5, 6, 7, 8), dict(BLOCK=16)),
                                 (0, 1)),
                                (PreparedLaunch(_noop_kernel, (1,), (16, 1, 2, 3, 4, 5, 6, 7, 8), dict(BLOCK=16)),
                                 (2, 1)))
    cases = {
        "triton_noop_launch": lambda: _noop_kernel[(1,)](x, y, 16, 1, 2, 3, 4, 5, 6, 7, 8, BLOCK=16),
        # the same launch through litekernels' direct path (ops/_launch.py; Triton's path where it is off)
        "litekernels_launch_noop": lambda: launch(_noop_kernel, (1,), x, y, 16, 1, 2, 3, 4, 5, 6, 7, 8, BLOCK=16),
        # the same launch as a planned public call makes it (all but the tensors fixed in advance)
        "litekernels_prepared_noop": lambda: prepared(x, y),
        **({} if PreparedLaunches is None else {
            # two launches as decode_attention makes them: one PreparedLaunches, the second reading 2 of 3 tensors
            "litekernels_prepared_pair_noop": lambda: pair(x, y, r)}),
        "torch_add": lambda: torch.add(x, r),
        "torch_empty_like": lambda: torch.empty_like(x),
        **op_calls(t),
    }
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "fast_launch": fast_launch_enabled(), "prepared_calls": _launch._plans_on,
           "calls": args.calls, "repeats": args.repeats, "cores": os.cpu_count(), "loadavg_before": os.getloadavg(),
           "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "ops": {}}
    with torch.no_grad():
        for name, fn in cases.items():
            us, best = per_call_us(fn, args.calls, args.repeats)
            rows = profile(fn, args.calls)
            out["ops"][name] = {"host_us_per_call": us, "host_us_min": best, "top_by_own_time": rows}
            print(f"== {name}: {us:.1f} us/call (median of {args.repeats}, min {best:.1f})", flush=True)
            for row in rows[:10]:
                print(f"   {row['own_us_per_op']:7.2f} own {row['cum_us_per_op']:7.2f} cum  x{row['calls_per_op']:.0f}  "
                      f"{row['func'][-90:]}")
    out["loadavg_after"] = os.getloadavg()
    print(f"load average before {out['loadavg_before'][0]:.2f}, after {out['loadavg_after'][0]:.2f} "
          f"({os.cpu_count()} cores)")
    path = args.out or "host-profile.json"
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()
