"""Sweep of the fused decode kernels (litekernels/ops/decode_fused.py) against the unfused sequences they replace.

For the Llama-3.2-1B and Llama-3.1-8B layer shapes at batch 1 and 8 (bf16, random weights):
  1. step: the runtime's CUDA-graph decode step on a model of a few such layers (small vocab, so the layers
     dominate), unfused (cuBLAS + our separate kernels, the runtime's previous default) vs fused (default launch
     settings) vs fused with PDL; reported per layer, with the layer's weight GB/s;
  2. kernels: each fused kernel (qkv + RoPE + cache write, o, gate/up + SiLU*mul, down, final norm + lm_head)
     over a short list of launch settings, next to the unfused ops it replaces (fused_add_rms_norm + F.linear +
     rope_cache_write / silu_mul);
  3. after each (shape, batch) of 2, the step again with its best settings per kernel (and PDL on top; the
     lm_head folded where its fused GEMV beat add+RMSNorm + cuBLAS).
Every timing replays a CUDA graph (bench/graphs.py) that calls the kernel on enough distinct weight copies to
exceed the L2 cache (each layer of a real model reads its own weights), so GB/s is HBM traffic, not L2 hits;
times are per call; each setting's output is first checked against the unfused ops (max error over 5% of the
output's scale: marked wrong, never best). GB/s counts weight bytes only (activations are KB); the copy bandwidth of the same run is
the ceiling. --budget caps the whole run (compiles included): work is ordered by priority (1B batch 1 first)
and what does not fit is skipped and listed. Writes bench/results/sweep-decode-fused-<gpu>.json (and $OUT/).

    python -m bench.sweep_decode_fused [--budget 200] [--shapes 1B,8B] [--batches 1,8]
    TRITON_INTERPRET=1 python -m bench.sweep_decode_fused --cpu      # code-path check on tiny shapes, no timing
"""

from __future__ import annotations

import argparse
import datetime
import math
import time

import torch
import torch.nn.functional as F

from litekernels import functional as LF
from litekernels.ops import _tl_common as TLC
from litekernels.ops import decode_fused as DF

# (hidden, intermediate, heads, kv heads, head_dim, vocab)
SHAPES = {"1B": (2048, 8192, 32, 8, 64, 128256), "8B": (4096, 14336, 32, 8, 128, 128256),
          "tiny": (64, 96, 4, 2, 16, 256)}
L2_BYTES = 400e6  # weight bytes each timed graph streams (> H200's 50 MB L2, with margin)
CACHE_LEN = 1024  # cache slots of the kernel-level timings (the attention is not part of them)
STEP_POS = 512  # position of the step timings (flash-decoding reads 512 cached tokens per sequence)
RESERVE = 25.0  # seconds of the budget kept for the best-settings step timing of each (shape, batch)


def candidates(kind: str, batch: int) -> list[dict]:
    """Launch settings tried per kernel (the default first): tl.dot tiles of 16-32 columns, the hand-prefetched
    loop, and multiply + sum tiles of 2-16 columns (batch 1: no padding of the single row to 16)."""
    paired = kind in ("qkv", "gate_up")
    dot = [dict(BLOCK_N=16, BLOCK_K=256, num_warps=4, num_stages=4),
           dict(BLOCK_N=16, BLOCK_K=512, num_warps=4, num_stages=1, PREFETCH=True)]
    if not paired:
        dot.append(dict(BLOCK_N=32, BLOCK_K=512, num_warps=4, num_stages=3) if kind == "down"
                   else dict(BLOCK_N=16, BLOCK_K=512, num_warps=4, num_stages=4))
    red = [dict(BLOCK_N=n, BLOCK_K=k, num_warps=w, num_stages=1, DOT=False, PREFETCH=True)
           for n, k, w in ((4, 512, 4), (8, 512, 4), (4, 1024, 4), (2, 1024, 4))]
    if batch > 4:  # the broadcast product is rows x columns x BLOCK_K registers: keep it small
        red = [c for c in red if c["BLOCK_N"] * c["BLOCK_K"] <= 2048]
    # several tiles per program: one RMSNorm pass and about one wave of programs
    dot.append(dict(BLOCK_N=16, BLOCK_K=512, num_warps=4, num_stages=3, TILES=4))
    red.append(dict(red[0], TILES=4))
    return [{}] + dot + red


def wide_candidates(kind: str, batch: int) -> list[dict]:
    """Batch 1, multiply + sum with the hand prefetch: the measured default (2 columns x 1024, 4 warps) and its
    neighbours in columns per program (1-8), chunk (1024, 2048: a K=2048 row in one load) and warps (2-8)."""
    if batch != 1:
        return candidates(kind, batch)
    red = dict(num_stages=1, DOT=False, PREFETCH=True)
    grid = [(2, 1024, 4), (2, 1024, 2), (2, 1024, 8), (2, 2048, 4), (2, 2048, 8), (4, 1024, 8), (4, 2048, 4),
            (4, 2048, 8), (1, 1024, 4), (1, 2048, 4), (1, 2048, 2), (8, 1024, 8)]
    return [dict(red, BLOCK_N=n, BLOCK_K=k, num_warps=w) for n, k, w in grid]


def resident_candidates(kind: str, batch: int) -> list[dict]:
    """Batch 1, whole rows in one load (BLOCK_K >= K, decode_fused's ONE_CHUNK path): a program requests its
    first tile before it waits for the previous kernel (gdc_wait), so with PDL=True a grid that fits on the GPU
    at once streams its weights while the previous kernel runs; with TILES > 1 a program keeps the next tile in
    flight during each multiply. Chained calls of one kernel (each call's weights load during the previous call),
    next to the measured default; bench/results/sweep-decode-fused-resident-H200.json has the first round."""
    if batch != 1:
        return candidates(kind, batch)
    base = dict(num_stages=1, DOT=False, PREFETCH=True, BLOCK_N=2, BLOCK_K=1024, num_warps=4)
    k = 8192 if kind == "down" else 2048
    # (BLOCK_N, num_warps, TILES): PDL settings around the best of the previous rounds (the runtime's
    # MEASURED_FUSED: qkv 2/1/1, o 2/2/1, gate_up 1/2/8, down 2/4/4; sweep-decode-fused-resident3-H200.json). A
    # kernel variant that kept two tiles in flight (both requested before the wait) was slower at every setting
    # (gate_up 1/2/8 27.0 vs 19.4 us, step 0.943 vs 0.888 ms; sweep-decode-fused-twoahead-H200.json) and was dropped
    grid = {"qkv": [(2, 1, 1), (2, 2, 1), (4, 4, 1), (1, 1, 2)],
            "o": [(2, 2, 1), (4, 4, 1), (1, 2, 2), (2, 1, 1)],
            "gate_up": [(1, 2, 8), (2, 4, 8), (1, 2, 4), (2, 2, 8)],
            "down": [(2, 4, 4), (2, 8, 2), (1, 4, 8), (1, 2, 4)]}.get(kind, [(2, 4, 1)])
    return [base] + [dict(num_stages=1, DOT=False, PREFETCH=False, BLOCK_N=n, BLOCK_K=k, num_warps=w, TILES=t,
                          PDL=True) for n, w, t in grid]


class Timer:
    """GPU: median ms of a CUDA graph of `fn` called once per weight copy (do_bench), per call. CPU
    (interpreter): runs fn once per copy and reports wall ms (a code-path check, not a measurement)."""

    def __init__(self, cpu: bool, deadline: float):
        self.cpu, self.deadline = cpu, deadline

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def __call__(self, fn, copies: int) -> float:
        if self.cpu:
            t = time.perf_counter()
            for c in range(copies):
                fn(c)
            return 1e3 * (time.perf_counter() - t) / copies
        from triton.testing import do_bench

        from bench.graphs import capture

        graph = capture(lambda: [fn(c) for c in range(copies)], warmup_calls=2)
        ms = do_bench(graph.replay, warmup=5, rep=40, return_mode="median")
        del graph
        return ms / copies


def _rand(*shape, device, dtype=torch.bfloat16, std=1.0):
    return (torch.randn(*shape, device=device, dtype=torch.float32) * std).to(dtype)


def kernel_cases(shape: str, B: int, device):
    """name -> (weight bytes per call, copies, fused(cfg) -> fn(copy), unfused fn(copy)) for each kernel."""
    hidden, inter, H, KV, D, vocab = SHAPES[shape]
    eps = 1e-5
    h = _rand(B, hidden, device=device)
    r = _rand(B, hidden, device=device)
    nw = (1 + 0.1 * _rand(hidden, device=device, dtype=torch.float32)).to(torch.bfloat16)
    cos = _rand(CACHE_LEN, D, device=device)
    sin = _rand(CACHE_LEN, D, device=device)
    pos = torch.randint(0, CACHE_LEN, (B,), device=device)
    out = {}

    def add(name, rows, K, make_fused, make_unfused):
        nbytes = rows * K * 2
        copies = max(1, min(64, math.ceil(L2_BYTES / nbytes))) if device.type == "cuda" else 2
        ws = [_rand(rows, K, device=device, std=K ** -0.5) for _ in range(copies)]
        out[name] = (nbytes, copies, lambda cfg: make_fused(ws, cfg), make_unfused(ws))

    def qkv_f(ws, cfg):
        kc = torch.zeros(B, KV, CACHE_LEN, D, dtype=torch.bfloat16, device=device)
        vc = torch.zeros_like(kc)
        rope = DF.RopeCache(pos, cos, sin, kc, vc, H, KV)
        return lambda c: DF.norm_gemv(h, r, nw, eps, ws[c], epilogue="rope_cache", rope=rope, config=cfg)

    def qkv_u(ws):
        kc = torch.zeros(B, KV, CACHE_LEN, D, dtype=torch.bfloat16, device=device)
        vc = torch.zeros_like(kc)

        def fn(c):
            x, _ = LF.fused_add_rms_norm(h, r, nw, eps)
            return LF.rope_cache_write(F.linear(x, ws[c]).view(B, H + 2 * KV, D), cos, sin, pos, kc, vc, H, KV)
        return fn

    def gu_f(ws, cfg):
        return lambda c: DF.norm_gemv(h, r, nw, eps, ws[c], epilogue="silu_mul", config=cfg)

    def gu_u(ws):
        def fn(c):
            x, _ = LF.fused_add_rms_norm(h, r, nw, eps)
            g, u = F.linear(x, ws[c]).split(inter, dim=-1)
            return LF.silu_mul(g, u)
        return fn

    def plain_f(x):
        return lambda ws, cfg: (lambda c: DF.gemv(x, ws[c], config=cfg))

    def plain_u(x):
        return lambda ws: (lambda c: F.linear(x, ws[c]))

    def head_f(ws, cfg):
        return lambda c: DF.norm_gemv(h, r, nw, eps, ws[c], config=cfg)

    def head_u(ws):
        def fn(c):
            x, _ = LF.fused_add_rms_norm(h, r, nw, eps)
            return F.linear(x, ws[c])
        return fn

    o_in = _rand(B, H * D, device=device)
    act = _rand(B, inter, device=device)
    add("qkv", (H + 2 * KV) * D, hidden, qkv_f, qkv_u)
    add("o", hidden, H * D, plain_f(o_in), plain_u(o_in))
    add("gate_up", 2 * inter, hidden, gu_f, gu_u)
    add("down", hidden, inter, plain_f(act), plain_u(act))
    add("lm_head", vocab, hidden, head_f, head_u)
    return out


def rel_error(fused_out, unfused_out) -> float:
    """max |fused - unfused| / max |unfused| of the first output (norm_gemv returns (out, residual))."""
    a = (fused_out[0] if isinstance(fused_out, tuple) else fused_out).float()
    b = unfused_out.float()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def build_model(shape: str, layers: int, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, inter, H, KV, D, _ = SHAPES[shape]
    cfg = LlamaConfig(vocab_size=1024, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=H, num_key_value_heads=KV, head_dim=D, max_position_embeddings=2048,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    return model


def layer_bytes(shape: str) -> int:
    hidden, inter, H, KV, D, _ = SHAPES[shape]
    return 2 * hidden * ((H + 2 * KV) * D + H * D + 3 * inter)


def time_step(rt, B, timer, variants, rows, shape):
    """The runtime's decode step (a CUDA graph on the GPU) per variant: (fused, fused_config)."""
    dev = rt.device
    tok = torch.zeros(B, dtype=torch.long, device=dev)
    pos = torch.full((B,), min(STEP_POS, rt.max_seq_len - 1), dtype=torch.long, device=dev)
    nl = len(rt.layers)
    for name, (fused, cfg) in variants.items():
        if timer.left() < 3:
            rows.append({"what": "step", "shape": shape, "batch": B, "variant": name, "skipped": "budget"})
            continue
        try:
            rt.set_fused_decode(fused, cfg)
            with torch.no_grad():
                if timer.cpu:
                    ms = timer(lambda c: rt.decode(tok, pos), 1)
                else:
                    from triton.testing import do_bench

                    rt.decode(tok, pos)  # capture
                    ms = do_bench(lambda: rt.decode(tok, pos), warmup=10, rep=100, return_mode="median")
            row = {"what": "step", "shape": shape, "batch": B, "variant": name, "config": cfg, "step_ms": ms,
                   "us_per_layer": 1e3 * ms / nl, "layer_GBps": layer_bytes(shape) * nl / ms / 1e6}
        except Exception as e:  # noqa: BLE001 - keep the other variants
            row = {"what": "step", "shape": shape, "batch": B, "variant": name, "error": repr(e)[:300]}
        rows.append(row)
        print(row, flush=True)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--budget", type=float, default=200.0, help="seconds for the whole run (compiles included)")
    p.add_argument("--shapes", default="1B,8B")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--cpu", action="store_true", help="tiny shapes on the CPU (TRITON_INTERPRET=1): code paths only")
    p.add_argument("--kinds", default=",".join(DF_KINDS),
                   help="kernels to sweep (the others stay on the unfused ops in the best-settings steps)")
    p.add_argument("--candidates", default="base", choices=("base", "wide", "resident"),
                   help="wide: the batch-1 neighbourhood of the measured default (wide_candidates); resident: "
                        "whole-row loads with and without PDL (resident_candidates)")
    p.add_argument("--out", default=None, help="results path (default bench/results/sweep-decode-fused-<gpu>.json)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    cpu = args.cpu or not torch.cuda.is_available()
    if cpu and not DF.INTERPRET:
        raise SystemExit("no GPU: run with TRITON_INTERPRET=1 and --cpu (a code-path check)")
    device = torch.device("cpu" if cpu else "cuda")
    timer = Timer(cpu, t0 + args.budget)
    shapes = ["tiny"] if cpu else [s for s in args.shapes.split(",") if s]
    batches = [int(b) for b in args.batches.split(",") if b]
    meta = {"device": "cpu-interpreter" if cpu else torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": __import__("triton").__version__, "budget_s": args.budget, "pdl_available": TLC.HAS_PDL,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if not cpu:
        from bench.bench_ops import copy_bandwidth

        meta["copy_GBps"] = copy_bandwidth()
        meta["sm"] = "{}.{}".format(*torch.cuda.get_device_capability())
    print(meta, flush=True)
    pdl_ok = TLC.HAS_PDL and (cpu or torch.cuda.get_device_capability()[0] >= 9)
    kinds = [k for k in args.kinds.split(",") if k]
    rows, best, best_pdl = [], {}, {}  # fastest setting per (shape, batch, kind) without / with PDL
    work = [(s, b) for s in shapes for b in batches]
    # 1. the whole step, default settings (the headline), for every shape and batch first
    runtimes = {}
    for shape, B in work:
        if timer.left() < RESERVE + 20:
            rows.append({"what": "step", "shape": shape, "batch": B, "skipped": "budget"})
            continue
        from litekernels.generation import LlamaRuntime

        if shape not in runtimes:
            layers = 2 if cpu else max(2, min(8, math.ceil(L2_BYTES / layer_bytes(shape))))
            model = build_model(shape, layers, device)
            runtimes[shape] = (model, LlamaRuntime(model, max_batch=max(batches), max_seq_len=STEP_POS * 2 if not cpu
                                                   else 32, use_cuda_graph=not cpu))
        rt = runtimes[shape][1]
        variants = {"unfused": (False, None), "fused": (True, None)}
        if pdl_ok:
            variants["fused-pdl"] = (True, {"PDL": True})
        variants["fused-fold-lm-head"] = (True, {"fold_lm_head": True})
        time_step(rt, B, timer, variants, rows, shape)
    # 2. per kernel: unfused sequence, then the candidate settings (+ PDL on the default); 3. right after each
    # (shape, batch), the step with each kernel's best settings (and PDL on top): RESERVE seconds are kept for it
    unfused_ms = {}
    for shape, B in work:
        if timer.left() < RESERVE + 15:
            rows.append({"what": "kernels", "shape": shape, "batch": B, "skipped": "budget"})
            continue
        cases = kernel_cases(shape, B, device)
        copy_gbps = meta.get("copy_GBps")
        for kind, (nbytes, copies, make_fused, unfused) in cases.items():
            if kind not in kinds:
                continue
            base = {"what": "kernel", "shape": shape, "batch": B, "kind": kind, "weight_MB": nbytes / 1e6,
                    "copies": copies}
            key = (shape, B, kind)
            with torch.no_grad():
                try:
                    ms = timer(unfused, copies)
                    unfused_ms[key] = ms
                    rows.append({**base, "variant": "unfused", "us": 1e3 * ms, "GBps": nbytes / ms / 1e6})
                    print(rows[-1], flush=True)
                except Exception as e:  # noqa: BLE001
                    rows.append({**base, "variant": "unfused", "error": repr(e)[:300]})
                pick = {"wide": wide_candidates, "resident": resident_candidates}.get(args.candidates, candidates)
                cands = pick(kind, B) if not cpu else [{}, dict(DOT=False, PREFETCH=True, BLOCK_N=8)]
                if pdl_ok and args.candidates != "resident":
                    cands = cands[:1] + [{"PDL": True}] + cands[1:]
                elif not pdl_ok:
                    cands = [c for c in cands if not c.get("PDL")]
                for cfg in cands:
                    if timer.left() < RESERVE:
                        rows.append({**base, "variant": "fused", "config": cfg, "skipped": "budget"})
                        continue
                    try:
                        fn = make_fused(cfg or None)
                        err = rel_error(fn(0), unfused(0))  # a fast but wrong setting must not win
                        ms = timer(fn, copies)
                        row = {**base, "variant": "fused", "config": cfg, "us": 1e3 * ms, "GBps": nbytes / ms / 1e6,
                               "rel_err_vs_unfused": err}
                        if copy_gbps:
                            row["pct_of_copy"] = 100 * row["GBps"] / copy_gbps
                        if err > 0.05:
                            row["wrong"] = True
                        elif not cfg.get("PDL") and (key not in best or ms < best[key][0]):
                            best[key] = (ms, cfg)
                        elif cfg.get("PDL") and (key not in best_pdl or ms < best_pdl[key][0]):
                            best_pdl[key] = (ms, cfg)
                    except Exception as e:  # noqa: BLE001 - keep the other settings
                        row = {**base, "variant": "fused", "config": cfg, "error": repr(e)[:300]}
                    rows.append(row)
                    print(row, flush=True)
        del cases
        if not cpu:
            torch.cuda.empty_cache()
        if shape not in runtimes:
            continue
        per_kind = {k: (best[(shape, B, k)][1] or None) for k in DF_KINDS if (shape, B, k) in best}
        if not per_kind:
            continue
        # kernels not swept here stay on the unfused ops in every best-settings step
        per_kind.update({k: {"unfused": True} for k in DF_KINDS if k not in kinds})
        head = (shape, B, "lm_head")
        if head in best and head in unfused_ms and best[head][0] < unfused_ms[head]:
            per_kind["fold_lm_head"] = True  # the folded lm_head GEMV beat add+RMSNorm + cuBLAS here
        variants = {"measured-default": (None, None), "fused-best": (True, per_kind)}
        # mixed: each projection on its fused kernel only where that beat the unfused ops it replaces
        mixed = {k: (v if (shape, B, k) in unfused_ms and best[(shape, B, k)][0] < unfused_ms[(shape, B, k)]
                     else {"unfused": True}) for k, v in per_kind.items() if k in DF_KINDS}
        mixed = {k: v for k, v in mixed.items() if v is not None}
        if per_kind.get("fold_lm_head"):
            mixed["fold_lm_head"] = True
        variants["fused-mixed"] = (True, mixed)
        if pdl_ok:
            variants["fused-best-pdl"] = (True, {"PDL": True, **per_kind})
            variants["fused-mixed-pdl"] = (True, {"PDL": True, **mixed})
            chosen = {k: best_pdl[(shape, B, k)][1] for k in DF_KINDS if (shape, B, k) in best_pdl}
            if chosen:  # the fastest PDL setting of each swept kernel (chained timings), PDL in the attention too
                variants["fused-best-of-pdl"] = (True, {"PDL": True, **per_kind, **chosen})
        time_step(runtimes[shape][1], B, timer, variants, rows, shape)
    summarize(rows, meta)
    for shape, B in work:
        cfg = best_fused_config({"best": [{"shape": s, "batch": b, "kind": k, "config": v[1]}
                                          for (s, b, k), v in best.items()]}, shape, B)
        if cfg:
            print(f"fused_config for {shape} batch {B} (LlamaRuntime(..., fused_config=...)): {cfg}")
    doc = {"meta": {**meta, "wall_s": time.perf_counter() - t0},
           "best": [{"shape": s, "batch": b, "kind": k, "us": 1e3 * v[0], "config": v[1]} for (s, b, k), v in best.items()],
           "best_pdl": [{"shape": s, "batch": b, "kind": k, "us": 1e3 * v[0], "config": v[1]}
                        for (s, b, k), v in best_pdl.items()],
           "results": rows}
    if cpu:
        if args.out:
            import json

            with open(args.out, "w") as f:
                json.dump(doc, f, indent=1, default=str)
        print(f"code paths ok ({time.perf_counter() - t0:.0f} s); no results written without a GPU"
              + (f" except {args.out}" if args.out else ""))
        return
    from bench.results_io import save_results

    save_results(doc, "sweep-decode-fused", out=args.out)


DF_KINDS = ("qkv", "o", "gate_up", "down", "lm_head")


def best_fused_config(doc: dict, shape: str, batch: int) -> dict | None:
    """The per-kernel best settings of a sweep results document as a runtime fused_config, for `shape` at `batch`
    (or the nearest batch swept); None if the document has none for that shape."""
    rows = [r for r in doc.get("best", []) if r["shape"] == shape]
    if not rows:
        return None
    near = min({r["batch"] for r in rows}, key=lambda b: (abs(b - batch), b))
    return {r["kind"]: (r["config"] or None) for r in rows if r["batch"] == near}


def summarize(rows, meta):
    """One line per (shape, batch, kernel): unfused us, default fused us, best fused us and its settings."""
    print("\nstep (per layer):")
    for r in rows:
        if r.get("what") == "step" and "us_per_layer" in r:
            print(f"  {r['shape']:>3} B{r['batch']:<2} {r['variant']:<20} {r['us_per_layer']:8.2f} us/layer  "
                  f"{r['layer_GBps']:7.0f} GB/s")
    print(f"kernels (copy bandwidth {meta.get('copy_GBps', float('nan')):.0f} GB/s):")
    groups = {}
    for r in rows:
        if r.get("what") == "kernel" and "us" in r:
            groups.setdefault((r["shape"], r["batch"], r["kind"]), []).append(r)
    for (s, b, k), rs in groups.items():
        unf = [r for r in rs if r["variant"] == "unfused"]
        fus = [r for r in rs if r["variant"] == "fused"]
        dflt = [r for r in fus if not r["config"]]
        top = min(fus, key=lambda r: r["us"]) if fus else None
        line = f"  {s:>3} B{b:<2} {k:<8}"
        if unf:
            line += f" unfused {unf[0]['us']:7.2f} us {unf[0]['GBps']:6.0f} GB/s |"
        if dflt:
            line += f" default {dflt[0]['us']:7.2f} us |"
        if top:
            line += f" best {top['us']:7.2f} us {top['GBps']:6.0f} GB/s {top['config']}"
        print(line)


if __name__ == "__main__":
    main()
