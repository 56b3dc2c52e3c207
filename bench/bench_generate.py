"""End-to-end generation benchmark (GPU), every provider side by side in one process.

Random bf16 weights at Llama-3.2-1B shape (16 layers, hidden 2048, 32/8 heads, head_dim 64, vocab 128256,
tied embeddings), prompts of 128 random tokens, 256 new tokens, EOS ignored. Providers:
  lite-graph         our runtime, decode replayed from a CUDA graph (projections: our skinny GEMM)
  lite-graph-cublas  the same with the projections on cuBLAS (F.linear), the runtime's default
  lite-eager         our runtime, the same decode step launched eagerly
  hf-eager     HF generate, attn_implementation="eager", dynamic cache
  hf-sdpa      HF generate, sdpa, dynamic cache
  hf-static    HF generate, sdpa, cache_implementation="static", disable_compile=True
plus the HBM roofline for batch 1 (weight bytes / measured copy bandwidth). Prefill ms is timed separately
(a 1-token generate for HF); decode tok/s = batch * (new - 1) / (total - prefill). Also: kernels launched per
decode step and the time per layer. Writes bench/results/generate-<gpu>.json (and $OUT/).

    python -m bench.bench_generate [--batches 1,8,32] [--new 256] [--layers 16]
"""

from __future__ import annotations

import argparse
import datetime
import json
import time

import torch
import triton
from triton.testing import do_bench

from bench.results_io import save_results


def build(layers, vocab=128256):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=2048, intermediate_size=8192, num_hidden_layers=layers,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
                      max_position_embeddings=8192, rope_parameters={
                          "rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def sync_time(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t, out


def bench_hf(model, ids, new, impl, static):
    model.set_attn_implementation(impl)
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    if static:
        kw.update(cache_implementation="static", disable_compile=True)
    model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kw)  # warm-up
    t_pre, _ = sync_time(lambda: model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw))
    t_all, out = sync_time(lambda: model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw))
    assert out.shape[1] == ids.shape[1] + new
    return t_pre, t_all - t_pre


def bench_lite(model, prompts, new, graph, skinny=True):
    from litekernels.generation import generate_ids

    kw = dict(use_cuda_graph=graph, skinny_gemm=skinny)
    generate_ids(model, prompts, 8, **kw)  # warm-up: compile, capture
    torch.cuda.synchronize()
    out, t_pre, t_dec = generate_ids(model, prompts, new, **kw)
    assert out.shape == (len(prompts), new)
    return t_pre, t_dec


def step_profile(model, batch, skinny=True):
    """Kernels launched by one eager decode step, and the graph-replayed step time."""
    from litekernels.generation.api import get_runtime

    rt = get_runtime(model, batch, 512, use_cuda_graph=True, skinny_gemm=skinny)
    tok = torch.zeros(batch, dtype=torch.long, device="cuda")
    pos = torch.full((batch,), 200, dtype=torch.long, device="cuda")
    torch.set_grad_enabled(False)  # as in generate(): decode_linear falls back to F.linear under autograd
    rt._decode_eager(tok, pos)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        rt._decode_eager(tok, pos)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    by_name = {}
    for e in kernels:
        key = e.name[:60]
        by_name[key] = by_name.get(key, 0) + e.device_time_total
    graph_ms = do_bench(lambda: rt.decode(tok, pos), warmup=25, rep=200, return_mode="median")
    eager_ms = do_bench(lambda: rt._decode_eager(tok, pos), warmup=10, rep=100, return_mode="median")
    torch.set_grad_enabled(True)
    top = sorted(by_name.items(), key=lambda kv: -kv[1])[:12]
    return {"kernels_per_step": len(kernels), "graph_step_ms": graph_ms, "eager_step_ms": eager_ms,
            "graph_ms_per_layer": graph_ms / len(rt.layers),
            "gpu_time_us_by_kernel": {k: v for k, v in top}}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--providers", default="lite-graph,lite-graph-cublas,lite-eager,hf-eager,hf-sdpa,hf-static")
    args = p.parse_args(argv)
    from bench.bench_ops import copy_bandwidth

    model = build(args.layers)
    weight_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
    bw = copy_bandwidth()
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "transformers": __import__("transformers").__version__, "copy_GBps": bw, "weight_bytes": weight_bytes,
            "shape": f"Llama-3.2-1B ({args.layers} layers), bf16 random weights", "prompt": args.prompt,
            "new_tokens": args.new,
            "roofline_tok_s_batch1": bw * 1e9 / weight_bytes,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    print(meta, flush=True)
    rows = []
    for B in [int(b) for b in args.batches.split(",")]:
        g = torch.Generator().manual_seed(B)
        ids = torch.randint(10, 128000, (B, args.prompt), generator=g).cuda()
        prompts = ids.tolist()
        for prov in args.providers.split(","):
            try:
                if prov.startswith("lite"):
                    t_pre, t_dec = bench_lite(model, prompts, args.new, prov.startswith("lite-graph"),
                                              skinny=not prov.endswith("cublas"))
                else:
                    impl = "eager" if prov == "hf-eager" else "sdpa"
                    t_pre, t_dec = bench_hf(model, ids, args.new, impl, prov == "hf-static")
                row = {"batch": B, "provider": prov, "prefill_ms": 1e3 * t_pre,
                       "decode_tok_s": B * (args.new - 1) / t_dec}
            except Exception as e:  # noqa: BLE001 - keep the other providers
                row = {"batch": B, "provider": prov, "error": repr(e)[:300]}
            print(row, flush=True)
            rows.append(row)
            torch.cuda.empty_cache()
    model.set_attn_implementation("sdpa")
    try:
        profile = {str(B): step_profile(model, B) for B in (1, 8)}
        profile["1-cublas"] = step_profile(model, 1, skinny=False)
    except Exception as e:  # noqa: BLE001 - the throughput rows above are still worth writing
        profile = {"error": repr(e)[:300]}
    print(json.dumps(profile, indent=1), flush=True)
    doc = {"meta": meta, "results": rows, "decode_step": profile}
    save_results(doc, "generate")


if __name__ == "__main__":
    main()
