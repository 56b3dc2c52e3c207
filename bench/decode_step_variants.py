"""Decode-step variants of the runtime at the Llama-3.2-1B shape (GPU, one process, ~1-2 minutes): the
graph-replayed step time, kernels per step and per-kernel GPU time of one step for each variant, and decode
tok/s of a real generate with it. The variants are fused_config settings of LlamaRuntime.set_fused_decode on
top of the measured default (MEASURED_FUSED), so a winner becomes a default by editing that table.

    python3 -m bench.decode_step_variants [--batch 1] [--new 128] [--only default,cublas,...]
"""

from __future__ import annotations

import argparse
import datetime
import json

import torch
import triton

from bench.bench_generate import bench_lite, build, step_profile
from bench.results_io import save_results


def _measured(model):
    from litekernels.generation.runtime import LlamaRuntime

    return LlamaRuntime.MEASURED_FUSED[(9, 0)]["config"]


def _with(base: dict, **kinds) -> dict:
    cfg = json.loads(json.dumps(base))
    for k, v in kinds.items():
        cfg[k] = v if not isinstance(v, dict) or not isinstance(cfg.get(k), dict) else {**cfg[k], **v}
    return cfg


# The default step before the PDL default (MEASURED_FUSED until 2026-11-29; "default" in
# bench/results/decode-steps-H200.json and decode-steps-attncfg-H200.json): q/k/v, o and down fused with 2 columns
# x 1024 per program and the hand prefetch, no PDL; gate/up and lm_head on cuBLAS. The older variants below are
# built on it, so their names keep meaning what they measured.
_G = {"BLOCK_N": 2, "BLOCK_K": 1024, "num_warps": 4, "num_stages": 1, "DOT": False, "PREFETCH": True}
PREVIOUS = {"max_rows": 1, "qkv": _G, "o": _G, "down": _G, "gate_up": {"unfused": True}, "lm_head": {"unfused": True}}


def variants(model) -> dict:
    """name -> (fused_decode, skinny GEMM, fused_config)."""
    m = PREVIOUS
    bk = {**_G, "BLOCK_K": 2048}
    return {
        "default": (None, False, None),
        "cublas": (False, False, None),
        "previous": (True, False, PREVIOUS),
        "default-attn-1split": (True, False, _with(_measured(model), attention={"SPLITS": 1})),
        "attn-1split": (True, False, _with(m, attention={"SPLITS": 1})),
        "attn-fused": (True, False, _with(m, attention={"MIN_CHUNK": 64, "FUSED": True})),
        "pdl-tiles4": (True, False, _with(m, PDL=True, qkv={"TILES": 4}, o={"TILES": 4}, down={"TILES": 4})),
        "pdl-tiles8": (True, False, _with(m, PDL=True, qkv={"TILES": 8}, o={"TILES": 8}, down={"TILES": 8})),
        "tiles4": (True, False, _with(m, qkv={"TILES": 4}, o={"TILES": 4}, down={"TILES": 4})),
        "pdl": (True, False, _with(m, PDL=True)),
        "pdl-attn-1split": (True, False, _with(m, PDL=True, attention={"SPLITS": 1})),
        "bk2048": (True, False, _with(m, qkv=bk, o=bk, down=bk)),
        "bk2048-attn-1split": (True, False, _with(m, qkv=bk, o=bk, down=bk, attention={"SPLITS": 1})),
        "gu-fused-bk2048": (True, False, _with(m, qkv=bk, o=bk, down=bk, gate_up={**bk, "unfused": False},
                                               attention={"SPLITS": 1})),
        "bn4-bk2048": (True, False, _with(m, qkv={**bk, "BLOCK_N": 4}, o={**bk, "BLOCK_N": 4},
                                          down={**bk, "BLOCK_N": 4}, attention={"SPLITS": 1})),
    }


def sweep_variants(model, path: str) -> dict:
    """Variants from a bench/sweep_decode_fused.py results file: the fastest PDL setting of each swept kernel of
    the 1B shape at batch 1 (chained timings) over the measured default, PDL in the attention too ("sweep-pdl");
    with gate/up on its fused kernel as well where it was swept ("sweep-pdl-gu")."""
    with open(path) as f:
        doc = json.load(f)
    chosen = {r["kind"]: r["config"] for r in doc.get("best_pdl", []) if r["shape"] == "1B" and r["batch"] == 1}
    m = _measured(model)
    out = {}
    small = {k: v for k, v in chosen.items() if k in ("qkv", "o", "down")}
    if small:
        out["sweep-pdl"] = (True, False, _with(m, PDL=True, **small))
    if "gate_up" in chosen:
        gu = {**chosen["gate_up"], "unfused": False}
        out["sweep-pdl-gu"] = (True, False, _with(m, PDL=True, **small, gate_up=gu))
        out["sweep-pdl-gu-1split"] = (True, False, _with(m, PDL=True, **small, gate_up=gu,
                                                         attention={"SPLITS": 1, "PDL": True}))
    if small:
        out["sweep-pdl-1split"] = (True, False, _with(m, PDL=True, **small, attention={"SPLITS": 1, "PDL": True}))
    return out


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--only", default=None, help="comma list of variant names")
    p.add_argument("--out", default=None)
    p.add_argument("--from-sweep", default=None,
                   help="a sweep_decode_fused results file: adds its best PDL settings as variants (sweep_variants)")
    args = p.parse_args(argv)
    from bench.bench_ops import copy_bandwidth

    model = build(16)
    weight_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
    bw = copy_bandwidth()
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "copy_GBps": bw, "weight_bytes": weight_bytes, "batch": args.batch, "new_tokens": args.new,
            "prompt": args.prompt, "roofline_tok_s_batch1": bw * 1e9 / weight_bytes,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    print(meta, flush=True)
    ids = torch.randint(10, 128000, (args.batch, args.prompt), generator=torch.Generator().manual_seed(1))
    prompts = ids.tolist()
    rows = []
    vs = variants(model)
    if args.from_sweep:
        vs.update(sweep_variants(model, args.from_sweep))
    names = args.only.split(",") if args.only else list(vs)
    for name in names:
        fused, skinny, cfg = vs[name]
        row = {"variant": name, "fused_config": cfg}
        try:
            _, t_dec = bench_lite(model, prompts, args.new, True, skinny=skinny, fused=fused, fused_config=cfg)
            row["decode_tok_s"] = args.batch * (args.new - 1) / t_dec
            row["pct_of_roofline"] = 100 * row["decode_tok_s"] / meta["roofline_tok_s_batch1"] / args.batch
            row["step"] = step_profile(model, args.batch, skinny=skinny, fused=fused, fused_config=cfg)
        except Exception as e:  # noqa: BLE001 - keep the other variants
            row["error"] = repr(e)[:300]
        rows.append(row)
        st = row.get("step", {})
        print(f"{name:22s} tok/s {row.get('decode_tok_s', 0):7.1f}  step {st.get('graph_step_ms', 0):.4f} ms  "
              f"kernels {st.get('kernels_per_step', '-')}  {row.get('error', '')}", flush=True)
    save_results({"meta": meta, "results": rows}, "decode-steps", out=args.out)


if __name__ == "__main__":
    main()
