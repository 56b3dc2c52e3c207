"""Attention launch-setting sweep (GPU, one process, a few minutes): prefill forward and forward+backward over
candidate configs/variants against the best SDPA backend, and decode variants replayed in a CUDA graph against
SDPA and the copy ceiling. Every candidate's output is first compared with SDPA (max abs error); a wrong one is
reported and dropped, not timed. A time budget stops trying further candidates (defaults are always timed).
Writes bench/results/sweep-attn-<gpu>.json (and $OUT/) and prints the best candidate per shape.

    python3 -m bench.sweep_attention                 # GPU, ~5-6 minutes on an H200 (compiles included)
    python3 -m bench.sweep_attention --only decode   # one part: prefill, decode
    python3 -m bench.sweep_attention --only decode,prefill-fwd --candidates phase2 --budget 100
        # phase 2 of issue #9: the TMA/WS/LAZY forward and decode bandwidth variants vs defaults and SDPA,
        # forward only, ~2-2.5 minutes; writes bench/results/sweep-attn-phase2-<gpu>.json
    TRITON_INTERPRET=1 python3 -m bench.sweep_attention --smoke   # CPU: tiny shapes, checks only, no timing
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import tempfile
import time

import torch
import torch.nn.functional as F

from bench.graphs import capture, chained_graph_ms, clean_ms
from litekernels.ops import attention as A
from litekernels.ops import decode_attention as DA

BF16 = torch.bfloat16
PREFILL_SHAPES = [(1, 32, 8, 8192, 64), (1, 32, 8, 16384, 128), (4, 24, 8, 4096, 128)]  # B, H, Hkv, T, D
DECODE_SHAPES = [(1, 32, 8, 32768, 64), (8, 32, 8, 8192, 128), (64, 32, 8, 2048, 64)]  # B, H, Hkv, L, D
SMOKE_PREFILL = [(1, 4, 2, 40, 16), (2, 6, 2, 33, 32)]
SMOKE_DECODE = [(1, 4, 2, 70, 16), (3, 8, 2, 45, 32)]

# Forward candidates (dicts over the table default); "default" is whatever fwd_config picks on this GPU.
FWD_CANDIDATES = [
    {},
    {"REVERSE": True},
    {"BLOCK_PTR": True},
    {"REVERSE": True, "BLOCK_PTR": True},
    {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3, "REVERSE": True},
    {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 4, "REVERSE": True},
    {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3, "REVERSE": True},
    {"BLOCK_M": 128, "BLOCK_N": 32, "num_warps": 4, "num_stages": 4, "REVERSE": True},
    {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3, "REVERSE": True},
    {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3, "REVERSE": True},
]
BWD_CANDIDATES = [
    {},
    {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
    {"BLOCK_M": 64, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2},
    {"BLOCK_M": 32, "BLOCK_N": 128, "num_warps": 4, "num_stages": 2},
    {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 2},
    {"BLOCK_M": 32, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3},
]
DECODE_CANDIDATES = [
    {},
    {"FUSED": True},
    {"WAVES": 8},
    {"WAVES": 8, "FUSED": True},
    {"WAVES": 8, "MIN_CHUNK": 128, "FUSED": True},
    {"SPLITS": 128, "MIN_CHUNK": 64, "FUSED": True},
    {"num_stages": 4, "FUSED": True},
    {"num_stages": 2, "FUSED": True},
    {"BLOCK_N": 128, "num_stages": 3, "FUSED": True},
    {"BLOCK_N": 32, "num_stages": 4, "FUSED": True},
    {"num_warps": 2, "FUSED": True},
    {"num_warps": 8, "FUSED": True},
    {"WAVES": 2, "FUSED": True},
]

# Phase 2 (issue #9): only the new leads plus the defaults. Prefill forward: K/V through tensor descriptors (TMA),
# the warp-specialized key loop (WS), the FlashAttention-3 thresholded rescale (LAZY). Decode (ordered for the
# B1 L32768 target, which is tried first): programmatic dependent launch of the combine (PDL), many more splits
# (WAVES/MAX_SPLITS adapt them per shape: about 132/264 at B1 H8 on an H200, the usual 16 at B64), few long
# splits, bigger/smaller tiles with more stages, scores without tl.dot (MMA=False), cheaper combines.
FWD_PHASE2 = [
    {},
    {"TMA": True},
    {"LAZY": True},
    {"TMA": True, "LAZY": True},
    {"TMA": True, "WS": True, "num_warps": 4},
    {"TMA": True, "WS": True},
    {"WS": True, "num_warps": 4},
    {"TMA": True, "REVERSE": True},
    {"TMA": True, "BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 3},
    {"TMA": True, "LAZY": True, "BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 4},
]
DECODE_PHASE2 = [
    {},
    {"PDL": True},
    {"WAVES": 8, "MAX_SPLITS": 256, "MIN_CHUNK": 64, "COMBINE_WARPS": 8},
    {"WAVES": 16, "MAX_SPLITS": 256, "MIN_CHUNK": 64, "BLOCK_N": 32, "COMBINE_WARPS": 8, "PDL": True},
    {"SPLITS": 16, "num_stages": 4},
    {"SPLITS": 32, "num_stages": 4, "PDL": True},
    {"BLOCK_N": 128, "num_stages": 4},
    {"BLOCK_N": 32, "num_stages": 6},
    {"MMA": False, "BLOCK_N": 32},
    {"MMA": False, "BLOCK_N": 64, "num_warps": 8},
    {"COMBINE_ROWS": 4, "COMBINE_WARPS": 2},
    {"COMBINE_ROWS": 4, "COMBINE_WARPS": 2, "PDL": True, "num_stages": 4},
]
# Phase 3 (decode, timed L2-clean: see bench/graphs.py): the split/tile space again, now that do_bench's dirty-L2
# write-back no longer sits inside every decode time.
DECODE_PHASE3 = [
    {}, {"FUSED": True}, {"PDL": True}, {"num_stages": 4}, {"num_stages": 2}, {"num_warps": 8},
    {"BLOCK_N": 128, "num_stages": 2}, {"BLOCK_N": 128, "num_stages": 3, "num_warps": 8}, {"BLOCK_N": 32, "num_stages": 4},
    {"SPLITS": 16}, {"SPLITS": 32}, {"SPLITS": 33}, {"WAVES": 2}, {"WAVES": 8}, {"WAVES": 8, "MIN_CHUNK": 64},
    {"SPLITS": 32, "num_stages": 4, "PDL": True}, {"WAVES": 2, "FUSED": True}, {"num_warps": 2},
]
# Phase 4: fewer, longer splits (one split: the split kernel writes the output, one launch), PDL at B1.
DECODE_PHASE4 = [
    {}, {"SPLITS": 1}, {"SPLITS": 2}, {"SPLITS": 4}, {"SPLITS": 8}, {"SPLITS": 1, "BLOCK_N": 128, "num_stages": 2},
    {"SPLITS": 2, "BLOCK_N": 128, "num_stages": 2}, {"SPLITS": 4, "PDL": True}, {"SPLITS": 1, "num_warps": 8},
    {"SPLITS": 16, "PDL": True}, {"SPLITS": 32, "PDL": True}, {"SPLITS": 32, "num_stages": 4, "PDL": True},
    {"SPLITS": 64, "PDL": True}, {"SPLITS": 32, "BLOCK_N": 128, "num_stages": 2, "PDL": True},
]
# Phase 5: the fused combine with its one-pass group merge (one launch) against the two-launch default.
DECODE_PHASE5 = [{}, {"FUSED": True}, {"FUSED": True, "num_stages": 4}, {"num_stages": 4}, {"PDL": False},
                 {"FUSED": True, "MIN_CHUNK": 64}, {"MIN_CHUNK": 64}]
# the runtime's own caches at batch 1 (a 1B decode loop allocates max_seq_len slots): short caches, full
PHASE4_SHAPES = [(1, 32, 8, 512, 64), (1, 32, 8, 2048, 64), (1, 32, 8, 8192, 64)]
CANDIDATE_SETS = {
    "phase1": (FWD_CANDIDATES, BWD_CANDIDATES, DECODE_CANDIDATES),
    "phase2": (FWD_PHASE2, [{}], DECODE_PHASE2),
    "phase3": ([{}], [{}], DECODE_PHASE3),
    "phase4": ([{}], [{}], DECODE_PHASE4),
    "phase5": ([{}], [{}], DECODE_PHASE5),
}


def label(cfg: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in cfg.items()) or "default"


class Sweep:
    def __init__(self, smoke: bool, budget_s: float, candidates: str = "phase1", fwd_only: bool = False,
                 clean: bool = False):
        self.smoke, self.budget, self.t0 = smoke, budget_s, time.time()
        self.clean = clean  # time with a read-only L2 flush (bench/graphs.py), and decode also chained
        self.fwd, self.bwd, self.decode = CANDIDATE_SETS[candidates]
        self.fwd_only = fwd_only  # prefill: forward only (no backward candidates, SDPA timed forward only)
        self.part_end = self.t0 + budget_s
        self.checkpoint = lambda: None
        self.dev = "cpu" if smoke else "cuda"
        self.rows: list[dict] = []
        if not smoke:
            from triton.testing import do_bench
            self._do_bench = do_bench

    def start_part(self, share: float):
        """The next part may try candidates until `share` of the remaining budget is spent."""
        now = time.time()
        self.part_end = now + share * max(0.0, self.t0 + self.budget - now)

    def over_budget(self) -> bool:
        return time.time() > self.part_end

    def ms(self, fn, grad_to_none=None):
        """Median ms of fn (do_bench, L2 flushed between runs); None in smoke mode (no timing on the CPU)."""
        if self.smoke:
            fn()
            return None
        if self.clean and grad_to_none is None:
            return clean_ms(fn, rep=60)[1]
        return self._do_bench(fn, warmup=10, rep=60, grad_to_none=grad_to_none, return_mode="median")

    def graph_ms(self, fn):
        """Median ms of replaying fn captured in a CUDA graph (the kernels alone, no host work)."""
        if self.smoke:
            fn()
            return None
        if self.clean:
            return clean_ms(capture(fn, 2).replay, rep=60)[1]
        return self._do_bench(capture(fn, 2).replay, warmup=10, rep=60, return_mode="median")

    def chain_ms(self, make_fn, inputs):
        """ms per call of a graph of back-to-back calls, one per input set (None unless timing clean)."""
        if self.smoke or not self.clean:
            return None
        return chained_graph_ms([make_fn(*x) for x in inputs])

    def add(self, **row):
        row["elapsed_s"] = round(time.time() - self.t0, 1)
        self.rows.append(row)
        show = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "elapsed_s"}
        print(show, flush=True)


def copy_ceiling(sw: Sweep):
    if sw.smoke:
        return None
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = sw.ms(lambda: y.copy_(x))
    return 2 * (1 << 30) / ms / 1e6


def sdpa_fns():
    """name -> callable(q, k, v, causal) for each SDPA backend that exists here; GQA through enable_gqa
    (torch >= 2.5) or, if a backend refuses it, with K/V expanded to every query head."""
    def call(q, k, v, causal):
        try:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        except (TypeError, RuntimeError):
            rep = q.shape[1] // k.shape[1]
            return F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                                  is_causal=causal)
    fns = {"sdpa": call}
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return fns
    for name in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            continue

        def fn(q, k, v, causal, backend=backend):
            with sdpa_kernel(backend):
                return call(q, k, v, causal)
        fns[f"sdpa_{name.split('_')[0].lower()}"] = fn
    return fns


def max_err(a, b):
    return (a.float() - b.float()).abs().max().item()


def sweep_prefill(sw: Sweep):
    shapes = SMOKE_PREFILL if sw.smoke else PREFILL_SHAPES
    dtype = torch.float32 if sw.smoke else BF16
    sdpas = {"sdpa": sdpa_fns()["sdpa"]} if sw.smoke else sdpa_fns()
    if sw.fwd_only and not sw.smoke:  # the backends that won on the H200 (sweep-attn-H200.json): default, cuDNN
        sdpas = {k: f for k, f in sdpas.items() if k in ("sdpa", "sdpa_cudnn")}
    for B, H, HKV, T, D in shapes:
        shape = f"B{B} H{H}/{HKV} T{T} D{D}"
        scale = 1 / math.sqrt(D)
        q = torch.randn(B, H, T, D, dtype=dtype, device=sw.dev, requires_grad=True)
        k = torch.randn(B, HKV, T, D, dtype=dtype, device=sw.dev, requires_grad=True)
        v = torch.randn(B, HKV, T, D, dtype=dtype, device=sw.dev, requires_grad=True)
        do = torch.randn(B, H, T, D, dtype=dtype, device=sw.dev)
        flops = 4 * B * H * T * T * D / 2
        if sw.fwd_only:
            with torch.no_grad():
                ref = sdpas["sdpa"](q, k, v, True)
            ref_grads, gscale = None, 1.0
        else:
            ref = sdpas["sdpa"](q, k, v, True)
            ref_grads = torch.autograd.grad(ref, (q, k, v), do)
            ref = ref.detach()
            gscale = max(1.0, max(g.abs().max().item() for g in ref_grads))
        tol = 1e-4 if sw.smoke else 2e-2
        # SDPA backends: forward and forward+backward
        for name, fn in sdpas.items():
            try:
                with torch.no_grad():
                    t_f = sw.ms(lambda: fn(q, k, v, True))

                def fb():
                    out = fn(q, k, v, True)
                    torch.autograd.backward(out, do)
                t_fb = None if sw.fwd_only else sw.ms(fb, grad_to_none=[q, k, v])
                q.grad = k.grad = v.grad = None
            except Exception as e:  # noqa: BLE001 - a backend that refuses this shape
                sw.add(part="prefill", shape=shape, provider=name, error=repr(e)[:200])
                continue
            sw.add(part="prefill", shape=shape, provider=name, mode="fwd", ms=t_f,
                   TFLOPs=t_f and flops / t_f / 1e9)
            if not sw.fwd_only:
                sw.add(part="prefill", shape=shape, provider=name, mode="fwd+bwd", ms=t_fb,
                       TFLOPs=t_fb and 3.5 * flops / t_fb / 1e9)
        # our forward candidates
        best_fwd = None
        o_lse = None
        for i, cfg in enumerate(sw.fwd):
            if i and sw.over_budget():
                sw.add(part="prefill", shape=shape, provider="lite", config=label(cfg), skipped="time budget")
                continue
            try:
                with torch.no_grad():
                    o, lse = A.attention_fwd(q.detach(), k.detach(), v.detach(), True, scale, config=cfg)
                err = max_err(o, ref)
                if not err <= tol:
                    sw.add(part="prefill", shape=shape, provider="lite", mode="fwd", config=label(cfg), err=err,
                           dropped="wrong output")
                    continue
                with torch.no_grad():
                    t = sw.ms(lambda: A.attention_fwd(q, k, v, True, scale, config=cfg))
            except Exception as e:  # noqa: BLE001 - e.g. out of shared memory for this tile
                sw.add(part="prefill", shape=shape, provider="lite", mode="fwd", config=label(cfg),
                       error=repr(e)[:200])
                continue
            sw.add(part="prefill", shape=shape, provider="lite", mode="fwd", config=label(cfg), err=err, ms=t,
                   TFLOPs=t and flops / t / 1e9)
            if o_lse is None or (t is not None and t < best_fwd[1]):
                best_fwd, o_lse = (cfg, t), (o, lse)
        if o_lse is None or sw.fwd_only:
            if not sw.smoke:
                torch.cuda.empty_cache()
            sw.checkpoint()
            continue
        o, lse = o_lse
        t_fwd = best_fwd[1]
        for i, cfg in enumerate(sw.bwd):
            if i and sw.over_budget():
                sw.add(part="prefill", shape=shape, provider="lite", mode="bwd", config=label(cfg),
                       skipped="time budget")
                continue
            try:
                dq, dk, dv = A.attention_bwd(do, q.detach(), k.detach(), v.detach(), o, lse, True, scale, config=cfg)
                err = max(max_err(a, b) for a, b in zip((dq, dk, dv), ref_grads)) / gscale
                if not err <= (1e-4 if sw.smoke else 5e-2):
                    sw.add(part="prefill", shape=shape, provider="lite", mode="bwd", config=label(cfg), rel_err=err,
                           dropped="wrong gradients")
                    continue
                t = sw.ms(lambda: A.attention_bwd(do, q, k, v, o, lse, True, scale, config=cfg))
            except Exception as e:  # noqa: BLE001
                sw.add(part="prefill", shape=shape, provider="lite", mode="bwd", config=label(cfg),
                       error=repr(e)[:200])
                continue
            total = t and t + t_fwd
            sw.add(part="prefill", shape=shape, provider="lite", mode="fwd+bwd", config=label(cfg),
                   fwd_config=label(best_fwd[0]), rel_err=err, ms=total, bwd_ms=t,
                   TFLOPs=total and 3.5 * flops / total / 1e9)
        if not sw.smoke:
            torch.cuda.empty_cache()
        sw.checkpoint()


def sweep_decode(sw: Sweep, bw):
    shapes = SMOKE_DECODE if sw.smoke else DECODE_SHAPES + (PHASE4_SHAPES if sw.decode in (DECODE_PHASE4, DECODE_PHASE5) else [])
    dtype = torch.float32 if sw.smoke else BF16
    sdpa = sdpa_fns()["sdpa"]
    for B, H, HKV, L, D in shapes:
        shape = f"B{B} H{H}/{HKV} L{L} D{D}"
        scale = 1 / math.sqrt(D)
        q = torch.randn(B, H, 1, D, dtype=dtype, device=sw.dev)
        k = torch.randn(B, HKV, L, D, dtype=dtype, device=sw.dev)
        v = torch.randn(B, HKV, L, D, dtype=dtype, device=sw.dev)
        lengths = torch.full((B,), L, dtype=torch.int32, device=sw.dev)
        nbytes = 2 * B * HKV * L * D * k.element_size()
        # chained timing: distinct caches adding up to >= 400 MB (8x L2), so no call finds its cache in L2
        sets = [(q, k, v)] + [(torch.randn_like(q), torch.randn_like(k), torch.randn_like(v))
                              for _ in range(max(2, -(-400_000_000 // nbytes)) - 1)] if sw.clean else []

        def rate(ms):
            if ms is None:
                return {}
            gbps = nbytes / ms / 1e6
            return {"ms": ms, "GBps": gbps, "pct_copy": bw and 100 * gbps / bw}
        with torch.no_grad():
            ref = sdpa(q, k, v, False)
            sw.add(part="decode", shape=shape, provider="sdpa", mode="eager", **rate(sw.ms(lambda: sdpa(q, k, v, False))))
            try:
                sw.add(part="decode", shape=shape, provider="sdpa", mode="graph",
                       **rate(sw.graph_ms(lambda: sdpa(q, k, v, False))))
            except Exception as e:  # noqa: BLE001
                sw.add(part="decode", shape=shape, provider="sdpa", mode="graph", error=repr(e)[:200])
            if sets:
                sw.add(part="decode", shape=shape, provider="sdpa", mode="chain",
                       **rate(sw.chain_ms(lambda a, b, c: (lambda: sdpa(a, b, c, False)), sets)))
            sw.add(part="decode", shape=shape, provider="lite", mode="public",
                   **rate(sw.ms(lambda: DA.decode_attention(q, k, v, lengths, scale=scale))))
            tol = 1e-4 if sw.smoke else 1e-2
            for i, cfg in enumerate(sw.decode):
                if i and sw.over_budget():
                    sw.add(part="decode", shape=shape, provider="lite", config=label(cfg), skipped="time budget")
                    continue
                try:
                    errs = []
                    for _ in range(3):  # repeated launches: the fused combine's counter must reset each time
                        errs.append(max_err(DA.decode_attention_fwd(q, k, v, lengths, scale, config=cfg), ref))
                    err = max(errs)
                    if not err <= tol:
                        sw.add(part="decode", shape=shape, provider="lite", mode="graph", config=label(cfg),
                               err=err, dropped="wrong output")
                        continue
                    splits = DA._plans[next(reversed(DA._plans))].splits  # the plan this config just made
                    t = sw.graph_ms(lambda: DA.decode_attention_fwd(q, k, v, lengths, scale, config=cfg))
                except Exception as e:  # noqa: BLE001
                    sw.add(part="decode", shape=shape, provider="lite", mode="graph", config=label(cfg),
                           error=repr(e)[:200])
                    continue
                sw.add(part="decode", shape=shape, provider="lite", mode="graph", config=label(cfg), err=err,
                       splits=splits, **rate(t))
                if sets:
                    sw.add(part="decode", shape=shape, provider="lite", mode="chain", config=label(cfg), splits=splits,
                           **rate(sw.chain_ms(lambda a, b, c, cfg=cfg: (
                               lambda: DA.decode_attention_fwd(a, b, c, lengths, scale, config=cfg)), sets)))
        DA.clear_decode_cache()
        if not sw.smoke:
            torch.cuda.empty_cache()


def summary(rows):
    """Best candidate per (part, shape, mode) next to the best SDPA."""
    best: dict = {}
    for r in rows:
        if r.get("ms") is None:
            continue
        key = (r["part"], r["shape"], r.get("mode"), "sdpa" if r["provider"].startswith("sdpa") else "lite")
        if key not in best or r["ms"] < best[key]["ms"]:
            best[key] = r
    lines = []
    for (part, shape, mode, who), r in sorted(best.items(), key=lambda kv: kv[0]):
        if who != "lite":
            continue
        ref_mode = {"graph": "graph", "public": "eager"}.get(mode, mode) if part == "decode" else mode
        s = best.get((part, shape, ref_mode, "sdpa"))
        ratio = s["ms"] / r["ms"] if s else None
        rate = r.get("TFLOPs") or r.get("GBps")
        extra = f" {r['pct_copy']:.0f}% copy" if r.get("pct_copy") else ""
        lines.append(f"{part:8s} {shape:24s} {mode:8s} {r['ms']:.4f} ms {rate:8.1f}{extra} "
                     f"vs {s['provider'] if s else '-'} x{ratio:.2f}  [{r.get('config', '-')}]" if ratio else
                     f"{part:8s} {shape:24s} {mode:8s} {r['ms']:.4f} ms [{r.get('config', '-')}]")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--only", default="prefill,decode",
                   help="comma list of parts: decode, prefill (forward and backward), prefill-fwd (forward only)")
    p.add_argument("--candidates", default="phase1", choices=sorted(CANDIDATE_SETS),
                   help="phase1: the tile/flag sweep of sweep-attn-<gpu>.json; phase2: only the TMA/WS/LAZY forward "
                        "and the decode bandwidth variants plus the defaults (writes sweep-attn-phase2-<gpu>.json)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (TRITON_INTERPRET=1), no timing")
    p.add_argument("--budget", type=float, default=270.0,
                   help="seconds of candidate trials (decode 35%%, prefill the rest); past it only defaults run")
    p.add_argument("--clean", action="store_true",
                   help="time with a read-only L2 flush instead of do_bench's zeroing one (whose dirty lines the "
                        "timed kernel writes back), and decode also as a chain of calls over distinct caches")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.smoke and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("--smoke runs the kernels in the interpreter: set TRITON_INTERPRET=1")
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU (or --smoke with TRITON_INTERPRET=1)")
    only = args.only.split(",")
    unknown = set(only) - {"decode", "prefill", "prefill-fwd"}
    if unknown:
        raise SystemExit(f"--only: unknown parts {sorted(unknown)} (decode, prefill, prefill-fwd)")
    kind = "sweep-attn" if args.candidates == "phase1" else f"sweep-attn-{args.candidates}"
    if args.clean:
        kind += "-clean"
    torch.manual_seed(0)
    fwd_only = "prefill-fwd" in only and "prefill" not in only
    sw = Sweep(args.smoke, args.budget, args.candidates, fwd_only, args.clean)
    import triton
    bw = copy_ceiling(sw)
    meta = {"device": "cpu-interpreter" if args.smoke else torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": triton.__version__, "python": platform.python_version(), "copy_GBps": bw,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    print(meta, flush=True)
    meta["candidates"] = args.candidates
    meta["timing"] = "clean (read-only L2 flush; decode also chained)" if args.clean else "do_bench"
    out = args.out
    if args.smoke and out is None:
        out = os.path.join(tempfile.gettempdir(), f"{kind}-smoke.json")
    from bench.results_io import save_results
    prefill = "prefill" in only or "prefill-fwd" in only
    if "decode" in only:  # first: the smaller part; it gets 35% of the budget when both parts run
        sw.start_part(0.35 if prefill else 1.0)
        sweep_decode(sw, bw)
    if prefill:
        sw.start_part(1.0)
        # partial files after each shape, so an outer timeout keeps what was measured
        sw.checkpoint = lambda: save_results({"meta": {**meta, "partial": True}, "results": sw.rows}, kind, out)
        sw.checkpoint()
        sweep_prefill(sw)
    meta["elapsed_s"] = round(time.time() - sw.t0, 1)
    try:
        lines = summary(sw.rows)
    except Exception as e:  # noqa: BLE001 - never lose the measurements to a formatting bug
        lines = [f"summary failed: {e!r}"]
    print("\n".join(["best per shape (ratio = SDPA ms / ours):"] + lines))
    save_results({"meta": meta, "results": sw.rows, "summary": lines}, kind, out)


if __name__ == "__main__":
    main()
