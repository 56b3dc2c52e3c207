"""Numerical error of attention forward and backward against a float64 reference (GPU): ours vs SDPA's backends.

For each shape: random bf16 q, k, v (N(0, 1), causal, GQA) and upstream gradient; the float64 result of the same
math is the reference. Reported per provider and output (o, dq, dk, dv): the relative RMS error
||x - ref|| / ||ref|| and the max abs error. Providers: lite (flash_attention), sdpa-cudnn / sdpa-flash /
sdpa-efficient (torch SDPA restricted to one backend, where it runs), eager (Hugging Face's eager attention:
bf16 matmuls, fp32 softmax). A kernel whose error is on par with SDPA's backends adds no more rounding than
what users already run. Writes bench/results/attention-error-<gpu>.json.

    python -m bench.attention_error [--shapes 2,32,8,2048,64 ...]
"""

from __future__ import annotations

import argparse
import datetime

import torch
import torch.nn.functional as F

from bench.results_io import save_results
from litekernels.ops.attention import flash_attention


def eager(q, k, v):
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    s = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    T = q.shape[2]
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    return torch.softmax(s.float(), -1).to(q.dtype) @ v


def sdpa_backend(name):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION}[name]

    def fn(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return fn


def run(fn, q, k, v, do, dtype):
    qq, kk, vv = (t.detach().to(dtype).requires_grad_() for t in (q, k, v))
    o = fn(qq, kk, vv)
    o.backward(do.to(dtype))
    return [o.detach(), qq.grad, kk.grad, vv.grad]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="*", default=["2,32,8,2048,64", "1,32,8,4096,128"])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    providers = {"lite": lambda q, k, v: flash_attention(q, k, v, causal=True), "eager": eager,
                 "sdpa-cudnn": sdpa_backend("cudnn"), "sdpa-flash": sdpa_backend("flash"),
                 "sdpa-efficient": sdpa_backend("efficient")}
    rows = []
    for spec in args.shapes:
        B, H, KV, T, D = map(int, spec.split(","))
        torch.manual_seed(args.seed)
        q = torch.randn(B, H, T, D, device="cuda").bfloat16()
        k = torch.randn(B, KV, T, D, device="cuda").bfloat16()
        v = torch.randn(B, KV, T, D, device="cuda").bfloat16()
        do = torch.randn(B, H, T, D, device="cuda").bfloat16()
        ref = run(eager, q, k, v, do, torch.float64)
        for name, fn in providers.items():
            try:
                got = run(fn, q, k, v, do, torch.bfloat16)
            except Exception as e:  # noqa: BLE001 - a backend this GPU/torch lacks
                rows.append({"shape": spec, "provider": name, "error": repr(e)[:200]})
                continue
            row = {"shape": spec, "provider": name}
            for out, x, r in zip(("o", "dq", "dk", "dv"), got, ref):
                d = x.double() - r
                row[f"{out}_rel_rms"] = float(d.norm() / r.norm())
                row[f"{out}_max_abs"] = float(d.abs().max())
            rows.append(row)
            print({k: (round(v, 7) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
            del got
        del ref
        torch.cuda.empty_cache()
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    save_results({"meta": meta, "results": rows}, "attention-error")


if __name__ == "__main__":
    main()
