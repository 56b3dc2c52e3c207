"""Launch-setting sweep (GPU): times kernel variants side by side to pick the defaults in litekernels/ops.
Prints one line per variant; writes $OUT/sweep.json. Not part of the library."""

import argparse
import json
import os

import torch
import triton
from triton.testing import do_bench

from litekernels.ops import attention as A
from litekernels.ops import decode_attention as DA
from litekernels.ops import linear as LIN
from litekernels.ops import rms_norm as R

BF16 = torch.bfloat16
out = []


def rec(kind, cfg, ms, nbytes=None, flops=None):
    row = {"kind": kind, "cfg": cfg, "ms": ms}
    if nbytes:
        row["GBps"] = nbytes / ms / 1e6
    if flops:
        row["TFLOPs"] = flops / ms / 1e9
    out.append(row)
    print(row, flush=True)


def bench(fn):
    return do_bench(fn, warmup=20, rep=80, return_mode="median")


def sweep_rms():
    x = torch.randn(16384, 4096, dtype=BF16, device="cuda")
    w = torch.randn(4096, dtype=BF16, device="cuda")
    y = torch.empty_like(x)
    rstd = torch.empty(16384, dtype=torch.float32, device="cuda")
    for rows in (1, 2, 4):
        for warps in (4, 8, 16):
            fn = lambda: R._rms_norm_fwd_kernel[(triton.cdiv(16384, rows),)](
                x, x, w, y, y, rstd, 4096, 4096, 4096, 4096, 16384, 4096, 1e-5, BLOCK=4096, ROWS=rows,
                HAS_RESIDUAL=False, num_warps=warps)
            rec("rms_fwd_kernel", (rows, warps), bench(fn), nbytes=2 * x.numel() * 2)
    rec("rms_fwd_public", "default", bench(lambda: R.rms_norm(x, w, 1e-5)), nbytes=2 * x.numel() * 2)



def sweep_decode():
    for B, L, D in [(1, 32768, 64), (8, 8192, 128)]:
        q = torch.randn(B, 32, 1, D, dtype=BF16, device="cuda")
        k, v = (torch.randn(B, 8, L, D, dtype=BF16, device="cuda") for _ in range(2))
        n = torch.full((B,), L, dtype=torch.int32, device="cuda")
        nbytes = 2 * k.numel() * 2
        for splits in (16, 33, 66, 132):
            for cfg in ((64, 4, 2), (64, 4, 3), (128, 4, 3), (128, 8, 3), (64, 4, 4)):
                rec(f"decode B{B} L{L} D{D}", (splits, *cfg),
                    bench(lambda: DA.decode_attention_fwd(q, k, v, n, 0.1, splits=splits, config=cfg)), nbytes=nbytes)



def sweep_attention():
    for T, D in [(8192, 64), (16384, 128)]:
        q = torch.randn(1, 32, T, D, dtype=BF16, device="cuda")
        k, v = (torch.randn(1, 8, T, D, dtype=BF16, device="cuda") for _ in range(2))
        flops = 4 * 32 * T * T * D / 2
        for cfg in ((128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (128, 64, 8, 4), (128, 128, 8, 2)):
            try:
                rec(f"attn_fwd T{T} D{D}", cfg, bench(lambda: A.attention_fwd(q, k, v, True, 0.1, config=cfg)), flops=flops)
            except Exception as e:  # noqa: BLE001
                print(cfg, "failed", repr(e)[:200])
        o, lse = A.attention_fwd(q, k, v, True, 0.1)
        do = torch.randn_like(o)
        for cfg in ((64, 64, 4, 2), (64, 64, 8, 2), (64, 128, 8, 2), (128, 64, 8, 2), (32, 128, 4, 2), (128, 128, 8, 1),
                    (64, 64, 4, 3), (32, 64, 4, 2)):
            try:
                rec(f"attn_bwd T{T} D{D}", cfg, bench(lambda: A.attention_bwd(do, q, k, v, o, lse, True, 0.1, config=cfg)),
                    flops=flops * 2.5)
            except Exception as e:  # noqa: BLE001
                print(cfg, "failed", repr(e)[:200])



def sweep_linear():
    import torch.nn.functional as F

    for M in (1, 8):
        for name, N, K in [("qkv", 3072, 2048), ("o", 2048, 2048), ("gate_up", 16384, 2048), ("down", 2048, 8192),
                           ("lm_head", 128256, 2048)]:
            x = torch.randn(M, K, dtype=BF16, device="cuda")
            ws = [torch.randn(N, K, dtype=BF16, device="cuda") for _ in range(max(1, 600_000_000 // (N * K * 2)))]
            nbytes = N * K * 2
            it = iter(range(10**9))

            def rot(fn):  # rotate over several weight copies so L2 (50-60 MB) does not serve repeats
                return lambda: fn(ws[next(it) % len(ws)])
            rec(f"linear M{M} {name} {N}x{K}", "cublas", bench(rot(lambda w: F.linear(x, w))), nbytes=nbytes)
            for bn in (16, 32):
                for bk in (256, 512):
                    for warps in (4, 8):
                        for stages in (3, 5):
                            cfg = (bn, bk, warps, stages)
                            with torch.no_grad():
                                ms = bench(rot(lambda w: LIN.decode_linear(x, w, config=cfg)))
                            rec(f"linear M{M} {name} {N}x{K}", cfg, ms, nbytes=nbytes)


def sweep_rms_rows():
    """Rows per program (forward) and rows per iteration (backward) for Llama widths, 16384 rows."""
    for H in (2048, 3072, 4096):
        x = torch.randn(16384, H, dtype=BF16, device="cuda")
        dy = torch.randn_like(x)
        w = torch.randn(H, dtype=BF16, device="cuda")
        y = torch.empty_like(x)
        dx = torch.empty_like(x)
        rstd = torch.empty(16384, dtype=torch.float32, device="cuda")
        block = triton.next_power_of_2(H)
        for rows in (1, 2, 4):
            for warps in (4, 8, 16):
                fwd = lambda: R._rms_norm_fwd_kernel[(triton.cdiv(16384, rows),)](
                    x, x, w, y, y, rstd, H, H, H, H, 16384, H, 1e-5, BLOCK=block, ROWS=rows,
                    HAS_RESIDUAL=False, num_warps=warps)
                rec(f"rms_fwd H{H}", (rows, warps), bench(fwd), nbytes=2 * x.numel() * 2)
                for mult in (1, 2, 4):
                    progs = mult * R.num_sms()
                    rpp = triton.cdiv(16384, progs)
                    part = torch.empty((progs, H), dtype=torch.float32, device="cuda")
                    bwd = lambda: R._rms_norm_bwd_kernel[(progs,)](
                        dy, x, w, rstd, dy, dx, part, H, H, H, H, 16384, H, rpp, BLOCK=block, ROWS=rows,
                        HAS_DH=False, num_warps=warps)
                    rec(f"rms_bwd H{H}", (rows, warps, mult), bench(bwd), nbytes=3 * x.numel() * 2)


p = argparse.ArgumentParser()
p.add_argument("--only", default="rms,decode,attention,linear")
only = p.parse_args().only.split(",")
for part in only:
    {"rms": sweep_rms, "rms_rows": sweep_rms_rows, "decode": sweep_decode, "attention": sweep_attention, "linear": sweep_linear}[part]()

with open(os.path.join(os.environ.get("OUT", "/tmp"), f"sweep-{'-'.join(only)}.json"), "w") as f:
    json.dump(out, f, indent=1)
