"""Per-op microbenchmarks on the GPU, every provider side by side in one process.

For each case: median time (triton.testing.do_bench, quantiles 0.2/0.5/0.8), the bytes the op must move at
least (or its FLOPs), achieved GB/s or TFLOP/s, and the ratio to the measured copy bandwidth (or matmul rate)
and to each baseline: torch eager (reference.py = HF's math), torch.compile of it, Liger-Kernel if installed,
torch SDPA for attention. Writes bench/results/ops-<gpu>.json (and $OUT/ when set).

    python -m bench.bench_ops [--quick] [--only rms_norm,swiglu,rope,attention,decode,host,decode_graph]

host: CPU time per public call on tiny inputs (N back-to-back calls timed with time.perf_counter, the GPU idle
before and synchronized only after), next to the GPU time of one call. decode_graph: the decode kernels alone,
captured in a CUDA graph and replayed, next to SDPA captured the same way and the copy ceiling of this run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

from bench.graphs import capture, chained_graph_ms, clean_ms
from bench.results_io import save_results
from litekernels import reference
from litekernels.ops.attention import flash_attention
from litekernels.ops.decode_attention import decode_attention, decode_attention_fwd
from litekernels.ops.rms_norm import fused_add_rms_norm, rms_norm
from litekernels.ops.rope import apply_rope
from litekernels.ops.swiglu import silu_mul

BF16 = torch.bfloat16
LLAMA = {"1B": dict(hidden=2048, inter=8192, heads=32, kv=8, hd=64),
         "3B": dict(hidden=3072, inter=8192, heads=24, kv=8, hd=128),
         "8B": dict(hidden=4096, inter=14336, heads=32, kv=8, hd=128)}


def liger():
    try:
        from importlib.metadata import version

        from liger_kernel.ops.rms_norm import LigerRMSNormFunction
        from liger_kernel.ops.rope import LigerRopeFunction
        from liger_kernel.ops.swiglu import LigerSiLUMulFunction
        return dict(version=version("liger-kernel"),
                    rms_norm=lambda x, w, eps: LigerRMSNormFunction.apply(x, w, eps, 0.0, "llama", False),
                    swiglu=LigerSiLUMulFunction.apply,
                    rope=lambda q, k, c, s: LigerRopeFunction.apply(q, k, c, s, None, 1))
    except Exception as e:  # noqa: BLE001 - report, run without it
        print(f"liger-kernel unavailable: {e!r}")
        return None


def timed(fn, grad_to_none=None):
    q = do_bench(fn, warmup=25, rep=100, quantiles=[0.2, 0.5, 0.8], grad_to_none=grad_to_none)
    return {"ms": q[1], "ms_p20": q[0], "ms_p80": q[2]}


def copy_bandwidth():
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), warmup=25, rep=200, return_mode="median")
    return 2 * x.numel() / ms / 1e6  # GB/s, read + write


def matmul_tflops():
    a, b = torch.randn(8192, 8192, dtype=BF16, device="cuda"), torch.randn(8192, 8192, dtype=BF16, device="cuda")
    ms = do_bench(lambda: a @ b, warmup=25, rep=100, return_mode="median")
    return 2 * 8192**3 / ms / 1e9


def compiled(fn):
    return torch.compile(fn, dynamic=False)


def run_case(results, op, shape, mode, providers, make, nbytes=None, flops=None, ceiling=None, clean=False):
    """providers: name -> callable(*inputs) returning output(s); make() -> (inputs, grad_inputs, upstream).
    clean (forward only): also time each provider after a read-only L2 flush (bench/graphs.py: do_bench's zeroing
    flush leaves dirty lines that a memory-bound kernel writes back inside its time) as ms_clean / GBps_clean."""
    row = {"op": op, "shape": shape, "mode": mode, "providers": {}}
    for name, fn in providers.items():
        if fn is None:
            continue
        try:
            inputs, needs_grad, upstream = make()
            if mode == "fwd":
                with torch.no_grad():
                    t = timed(lambda: fn(*inputs))
                    if clean:
                        t["ms_clean"] = clean_ms(lambda: fn(*inputs))[1]
            else:
                def step():
                    out = fn(*inputs)
                    outs = out if isinstance(out, tuple) else (out,)
                    torch.autograd.backward(outs, [upstream(o) for o in outs])
                t = timed(step, grad_to_none=needs_grad)
        except Exception as e:  # noqa: BLE001 - one failing provider must not hide the others
            row["providers"][name] = {"error": repr(e)[:300]}
            continue
        if nbytes:
            t["GBps"] = nbytes / t["ms"] / 1e6
            if ceiling:
                t["pct_copy_bw"] = 100 * t["GBps"] / ceiling
            if "ms_clean" in t:
                t["GBps_clean"] = nbytes / t["ms_clean"] / 1e6
                if ceiling:
                    t["pct_copy_bw_clean"] = 100 * t["GBps_clean"] / ceiling
        if flops:
            t["TFLOPs"] = flops / t["ms"] / 1e9
        row["providers"][name] = t
        torch.cuda.empty_cache()
    ours = row["providers"].get("lite", {}).get("ms")
    if ours:
        row["speedup_vs"] = {k: v["ms"] / ours for k, v in row["providers"].items() if "ms" in v and k != "lite"}
    ours = row["providers"].get("lite", {}).get("ms_clean")
    if ours:
        row["speedup_vs_clean"] = {k: v["ms_clean"] / ours for k, v in row["providers"].items()
                                   if "ms_clean" in v and k != "lite"}
    results.append(row)
    print(json.dumps({k: row[k] for k in ("op", "shape", "mode")}),
          {k: round(v.get("GBps", v.get("TFLOPs", 0)) or v.get("ms", 0), 1) for k, v in row["providers"].items()
           if "ms" in v}, flush=True)


def bench_rms_norm(res, lg, bw, quick):
    tokens = [4096, 16384] if quick else [1, 4096, 16384]
    for name, cfg in LLAMA.items():
        for T in tokens:
            H = cfg["hidden"]

            def make(T=T, H=H):
                x = torch.randn(T, H, dtype=BF16, device="cuda", requires_grad=True)
                w = (1 + 0.1 * torch.randn(H, dtype=BF16, device="cuda")).requires_grad_()
                return (x, w, 1e-5), [x, w], torch.randn_like
            for mode in ("fwd", "fwd+bwd"):
                provs = {"lite": rms_norm, "eager": reference.rms_norm,
                         "compile": compiled(reference.rms_norm) if T == 16384 else None,
                         "liger": lg and lg["rms_norm"]}
                es = 2
                nbytes = (2 if mode == "fwd" else 5) * T * H * es
                run_case(res, "rms_norm", f"{name} T={T} H={H}", mode, provs, make, nbytes=nbytes, ceiling=bw)


def bench_swiglu(res, lg, bw, quick):
    tokens = [4096, 16384] if quick else [1, 4096, 16384]
    for name, cfg in LLAMA.items():
        for T in tokens:
            I = cfg["inter"]

            def make(T=T, I=I):
                g = torch.randn(T, I, dtype=BF16, device="cuda", requires_grad=True)
                u = torch.randn(T, I, dtype=BF16, device="cuda", requires_grad=True)
                return (g, u), [g, u], torch.randn_like
            for mode in ("fwd", "fwd+bwd"):
                provs = {"lite": silu_mul, "eager": reference.silu_mul,
                         "compile": compiled(reference.silu_mul) if T == 16384 else None,
                         "liger": lg and lg["swiglu"]}
                nbytes = (3 if mode == "fwd" else 8) * T * I * 2
                run_case(res, "swiglu", f"{name} T={T} I={I}", mode, provs, make, nbytes=nbytes, ceiling=bw)


def bench_rope(res, lg, bw, quick):
    cases = [(4, 4096, "8B"), (1, 4096, "1B"), (1, 1, "8B"), (8, 1, "1B")]
    for B, T, name in cases:
        cfg = LLAMA[name]
        H, KV, D = cfg["heads"], cfg["kv"], cfg["hd"]

        def make(B=B, T=T, H=H, KV=KV, D=D):
            q = torch.randn(B, T, H, D, dtype=BF16, device="cuda").transpose(1, 2).requires_grad_()
            k = torch.randn(B, T, KV, D, dtype=BF16, device="cuda").transpose(1, 2).requires_grad_()
            ang = torch.rand(1, T, D // 2, device="cuda") * 100
            emb = torch.cat([ang, ang], -1)
            return (q, k, emb.cos().to(BF16), emb.sin().to(BF16)), [q, k], torch.randn_like
        for mode in ("fwd", "fwd+bwd"):
            provs = {"lite": apply_rope, "eager": reference.apply_rope,
                     "compile": compiled(reference.apply_rope) if T > 1 else None, "liger": lg and lg["rope"]}
            qk = B * T * (H + KV) * D * 2
            cs = 2 * T * D * 2
            nbytes = (2 * qk + cs) * (1 if mode == "fwd" else 2)
            run_case(res, "rope", f"B={B} T={T} H={H}/{KV} D={D}", mode, provs, make, nbytes=nbytes, ceiling=bw)


def sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)


def bench_attention(res, mm, quick):
    cases = [(1, 32, 8, 8192, 64), (1, 32, 8, 16384, 128), (4, 24, 8, 4096, 128), (4, 32, 8, 2048, 64),
             (2, 32, 8, 4096, 128)]  # the first three: issue 9's shapes
    if quick:
        cases = cases[:2]
    for B, H, KV, T, D in cases:
        def make(B=B, H=H, KV=KV, T=T, D=D):
            q = torch.randn(B, H, T, D, dtype=BF16, device="cuda", requires_grad=True)
            k = torch.randn(B, KV, T, D, dtype=BF16, device="cuda", requires_grad=True)
            v = torch.randn(B, KV, T, D, dtype=BF16, device="cuda", requires_grad=True)
            return (q, k, v), [q, k, v], torch.randn_like
        fwd_flops = 4 * B * H * T * T * D / 2
        for mode, mult in (("fwd", 1.0), ("fwd+bwd", 3.5)):
            provs = {"lite": lambda q, k, v: flash_attention(q, k, v, causal=True), "sdpa": sdpa}
            run_case(res, "attention", f"B={B} H={H}/{KV} T={T} D={D}", mode, provs, make, flops=fwd_flops * mult)
    # left padding (a batch of prompts of different lengths): our key-padding path (a (B,1,1,T) bool mask,
    # read as one key row per tile) vs what transformers gives SDPA for it (causal & padding as a (B,1,T,T) mask)
    B, H, KV, T, D = (4, 32, 8, 2048, 64)
    pad = torch.tensor([0, T // 8, T // 4, T // 2], device="cuda")
    keys = torch.arange(T, device="cuda")[None, :] >= pad[:, None]  # (B, T) True = real token
    causal = torch.ones(T, T, dtype=torch.bool, device="cuda").tril()
    full = causal[None, None] & keys[:, None, None, :]

    def make_padded():
        q = torch.randn(B, H, T, D, dtype=BF16, device="cuda", requires_grad=True)
        k = torch.randn(B, KV, T, D, dtype=BF16, device="cuda", requires_grad=True)
        v = torch.randn(B, KV, T, D, dtype=BF16, device="cuda", requires_grad=True)
        return (q, k, v), [q, k, v], torch.randn_like

    from types import SimpleNamespace

    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    module = SimpleNamespace(is_causal=True, num_key_value_groups=H // KV, training=False)
    provs = {"lite": lambda q, k, v: flash_attention(q, k, v, causal=True, attn_mask=keys[:, None, None, :]),
             "sdpa": lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=full, enable_gqa=True),
             # what transformers runs for it (on CUDA it repeats K/V for masked GQA instead of enable_gqa)
             "sdpa-hf": lambda q, k, v: sdpa_attention_forward(module, q, k, v, full)[0]}
    flops = 4 * B * H * T * T * D / 2  # the causal count, padded keys included (both sides skip or mask them)
    for mode, mult in (("fwd", 1.0), ("fwd+bwd", 3.5)):
        run_case(res, "attention", f"B={B} H={H}/{KV} T={T} D={D} left-padded", mode, provs, make_padded,
                 flops=flops * mult)


def bench_decode(res, bw, quick):
    for B, H, KV, L, D in [(1, 32, 8, 32768, 64), (8, 32, 8, 8192, 128), (64, 32, 8, 2048, 64), (1, 32, 8, 4096, 64)]:
        def make(B=B, H=H, KV=KV, L=L, D=D):
            q = torch.randn(B, H, 1, D, dtype=BF16, device="cuda")
            k = torch.randn(B, KV, L, D, dtype=BF16, device="cuda")
            v = torch.randn(B, KV, L, D, dtype=BF16, device="cuda")
            lengths = torch.full((B,), L, dtype=torch.int32, device="cuda")
            return (q, k, v, lengths), None, None
        provs = {"lite": lambda q, k, v, n: decode_attention(q, k, v, n),
                 "sdpa": lambda q, k, v, n: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)}
        nbytes = 2 * B * KV * L * D * 2
        run_case(res, "decode", f"B={B} H={H}/{KV} L={L} D={D}", "fwd", provs, make, nbytes=nbytes, ceiling=bw,
                 clean=True)


def host_us_per_call(fn, n=200, repeats=5):
    """(CPU µs per call, wall µs per call including the GPU) of n back-to-back calls, median of `repeats`.
    The queue is drained before each batch, so the CPU never waits on the GPU inside the timed loop
    (n calls x 1-2 launches stay below the launch-queue depth)."""
    import statistics
    import time

    for _ in range(10):
        fn()
    cpu, wall = [], []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        t1 = time.perf_counter()
        torch.cuda.synchronize()
        t2 = time.perf_counter()
        cpu.append((t1 - t0) / n * 1e6)
        wall.append((t2 - t0) / n * 1e6)
    return statistics.median(cpu), statistics.median(wall)


def bench_host(res):
    """Host overhead of every public op on tiny inputs (issue target: <= 20 µs per call). Rows go to the
    results file's "host_overhead" list (no throughput metric, so not in the op tables/plots)."""
    from bench.host_cases import host_inputs, op_calls

    t = host_inputs("cuda", BF16)
    q, k, qd, kc, vc = t["q"], t["k"], t["qd"], t["kc"], t["vc"]
    baselines = {
        "rms_norm": lambda: reference.rms_norm(t["x"], t["w"], 1e-5),
        "apply_rope": lambda: reference.apply_rope(q, k, t["cos"], t["sin"]),
        "silu_mul": lambda: reference.silu_mul(t["g"], t["u"]),
        "flash_attention": lambda: F.scaled_dot_product_attention(q, k, k, is_causal=True, enable_gqa=True),
        "decode_attention": lambda: F.scaled_dot_product_attention(qd, kc, vc, enable_gqa=True),
    }
    cases = {name: (fn, baselines.get(name)) for name, fn in op_calls(t).items()}
    with torch.no_grad():
        for name, (ours, base) in cases.items():
            row = {"op": "host", "shape": name, "mode": "host", "providers": {}}
            for prov, fn in (("lite", ours), ("torch", base)):
                if fn is None:
                    continue
                try:
                    cpu, wall = host_us_per_call(fn)
                    gpu_ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
                except Exception as e:  # noqa: BLE001
                    row["providers"][prov] = {"error": repr(e)[:300]}
                    continue
                row["providers"][prov] = {"host_us": cpu, "wall_us_per_call": wall, "ms": gpu_ms,
                                          "gpu_us_do_bench": gpu_ms * 1e3}
                try:  # the GPU work alone: do_bench of a tiny op still includes launch latency
                    row["providers"][prov]["gpu_us_graph"] = graph_ms(fn) * 1e3
                except Exception as e:  # noqa: BLE001
                    row["providers"][prov]["graph_error"] = repr(e)[:200]
            res.append(row)
            print(json.dumps({"host": name}), {p: {k: round(v.get(k, -1), 1) for k in ("host_us", "gpu_us_graph")}
                                              for p, v in row["providers"].items()}, flush=True)


def _fast_launch_enabled():
    """Whether ops launch kernels directly once compiled (litekernels/ops/_launch.py), or through Triton's path."""
    try:
        from litekernels.ops._launch import fast_launch_enabled
    except ImportError:
        return None
    return fast_launch_enabled()


def graph_ms(fn):
    """Median ms of replaying fn captured in a CUDA graph (warmed up on a side stream first)."""
    return do_bench(capture(fn, 3).replay, warmup=25, rep=100, return_mode="median")


def bench_decode_graph(res, bw):
    """Decode kernels alone (CUDA-graph replay) vs SDPA captured the same way; GB/s of KV read vs copy. Three
    timings per provider: `ms` do_bench of one replay (its zeroing L2 flush leaves dirty lines that the kernel
    writes back inside its time), `ms_clean` one replay after a read-only flush, `ms_chain` per call of a graph of
    calls over distinct caches (>= 400 MB in all) back to back, as in a replayed decode step (bench/graphs.py)."""
    for B, H, KV, L, D in [(1, 32, 8, 32768, 64), (8, 32, 8, 8192, 128), (64, 32, 8, 2048, 64)]:
        nbytes = 2 * B * KV * L * D * 2
        lengths = torch.full((B,), L, dtype=torch.int32, device="cuda")
        scale = D ** -0.5
        sets = [(torch.randn(B, H, 1, D, dtype=BF16, device="cuda"), torch.randn(B, KV, L, D, dtype=BF16, device="cuda"),
                 torch.randn(B, KV, L, D, dtype=BF16, device="cuda")) for _ in range(max(2, -(-400_000_000 // nbytes)))]

        def sdpa_dec(q, k, v):
            try:
                return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
            except TypeError:  # torch < 2.5: no enable_gqa
                return F.scaled_dot_product_attention(q, k.repeat_interleave(H // KV, 1),
                                                      v.repeat_interleave(H // KV, 1))
        row = {"op": "decode_graph", "shape": f"B={B} H={H}/{KV} L={L} D={D}", "mode": "graph", "providers": {}}
        provs = {"lite": lambda q, k, v: decode_attention_fwd(q, k, v, lengths, scale),
                 "lite_fused": lambda q, k, v: decode_attention_fwd(q, k, v, lengths, scale, config={"FUSED": True}),
                 "lite_nopdl": lambda q, k, v: decode_attention_fwd(q, k, v, lengths, scale, config={"PDL": False}),
                 "sdpa": sdpa_dec}
        with torch.no_grad():
            for name, fn in provs.items():
                try:
                    one = capture(lambda: fn(*sets[0]), 3)
                    t = {"ms": do_bench(one.replay, warmup=25, rep=100, return_mode="median"),
                         "ms_clean": clean_ms(one.replay)[1],
                         "ms_chain": chained_graph_ms([lambda x=x: fn(*x) for x in sets])}
                except Exception as e:  # noqa: BLE001
                    row["providers"][name] = {"error": repr(e)[:300]}
                    continue
                for m in ("", "_clean", "_chain"):
                    t["GBps" + m] = nbytes / t["ms" + m] / 1e6
                    t["pct_copy_bw" + m] = 100 * t["GBps" + m] / bw
                row["providers"][name] = t
        for m in ("", "_clean", "_chain"):
            ours = row["providers"].get("lite", {}).get("ms" + m)
            if ours:
                row["speedup_vs" + m] = {k2: v2["ms" + m] / ours for k2, v2 in row["providers"].items()
                                         if "ms" + m in v2 and k2 != "lite"}
        res.append(row)
        print(json.dumps({"decode_graph": row["shape"]}),
              {k2: [round(v2.get("pct_copy_bw" + m, -1), 1) for m in ("", "_clean", "_chain")]
               for k2, v2 in row["providers"].items()}, flush=True)
        del sets
        torch.cuda.empty_cache()


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default="rms_norm,swiglu,rope,attention,decode,host,decode_graph")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    only = set(args.only.split(","))
    torch.manual_seed(0)
    lg = liger()
    bw, mm = copy_bandwidth(), matmul_tflops()
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "liger_kernel": lg and lg["version"], "python": platform.python_version(),
            "copy_GBps": bw, "bf16_matmul_TFLOPs": mm, "fast_launch": _fast_launch_enabled(),
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    print(meta, flush=True)
    res = []
    if "rms_norm" in only:
        bench_rms_norm(res, lg, bw, args.quick)
    if "swiglu" in only:
        bench_swiglu(res, lg, bw, args.quick)
    if "rope" in only:
        bench_rope(res, lg, bw, args.quick)
    if "attention" in only:
        bench_attention(res, mm, args.quick)
    if "decode" in only:
        bench_decode(res, bw, args.quick)
    if "decode_graph" in only:
        bench_decode_graph(res, bw)
    host = []
    if "host" in only:
        bench_host(host)
    doc = {"meta": meta, "results": res, "host_overhead": host}
    save_results(doc, "ops", args.out)


if __name__ == "__main__":
    main()
