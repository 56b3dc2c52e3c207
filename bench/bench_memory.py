"""Peak GPU memory and decode speed of the generation runtime (issue #12: no weight copies).

For each model shape (random bf16 weights; Llama-3.2-1B and Llama-3.1-8B shapes by default), in one process:
  * memory: torch.cuda.max_memory_allocated over `generate_ids` at batch 1, prompt 128 + 256 new tokens, split
    into weights, KV cache, and the rest ("overhead" = peak - weights - KV cache; the target is <= 1.5 GB).
    Measured twice: the first call (builds the runtime: fuses q/k/v and gate/up in place, captures the decode
    graph) and a second call (steady state). HF generate (sdpa, dynamic cache) is measured the same way for
    comparison, after ours.
  * speed: decode tok/s of `generate_ids` (CUDA graph, cuBLAS projections: the runtime's defaults) at batch 1
    and 8, decode tok/s = batch * (new - 1) / decode time, as in bench/bench_generate.py; and the
    graph-replayed decode step time with the fused q/k/v and gate/up GEMMs vs one GEMM per projection
    (fuse_weights=False).
Writes bench/results/memory-<gpu>.json (and $OUT/).

    python -m bench.bench_memory [--shapes 1B,8B] [--batches 1,8] [--prompt 128] [--new 256] [--no-hf]
    python -m bench.bench_memory --tiny        # every code path on a tiny model (CPU too), nothing written
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import time

import torch
from litekernels.generation.api import _state, release_runtime

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
SHAPES = {
    "1B": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
               num_attention_heads=32, num_key_value_heads=8, head_dim=64, tie_word_embeddings=True,
               max_position_embeddings=8192, rope_parameters={**LLAMA3_ROPE, "factor": 32.0}),
    "8B": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=8, head_dim=128, tie_word_embeddings=False,
               max_position_embeddings=131072, rope_parameters={**LLAMA3_ROPE, "factor": 8.0}),
    "tiny": dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False,
                 max_position_embeddings=1024),
}
GB = 1e9


def build(shape: str, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = LlamaForCausalLM._from_config(LlamaConfig(**SHAPES[shape]), dtype=dtype).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def _cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def _sync(device):
    if _cuda(device):
        torch.cuda.synchronize()


def _reset_peak(device) -> int:
    """Start a peak measurement; returns the bytes allocated now."""
    if not _cuda(device):
        return 0
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def _peak(device) -> int:
    if not _cuda(device):
        return 0
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated()


def measure_memory(model, prompts, new: int, device: str) -> dict:
    """Peak memory of two generate_ids calls (first: builds the runtime; second: steady state)."""
    from litekernels.generation import generate_ids

    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    out = {"batch": len(prompts), "prompt": len(prompts[0]), "new_tokens": new, "weights_GB": weights / GB}
    release_runtime(model)
    graph = _cuda(device)
    for call in ("first_call", "second_call"):
        base = _reset_peak(device)
        generate_ids(model, prompts, new, use_cuda_graph=graph)
        peak = _peak(device)
        rt = _state(model).runtime
        kv = sum(t.numel() * t.element_size() for t in (rt.k_cache, rt.v_cache))
        out["kv_cache_GB"] = kv / GB
        out["kv_cache_shape"] = list(rt.k_cache.shape)
        out[call] = {"peak_GB": peak / GB, "allocated_before_GB": base / GB,
                     "overhead_GB": (peak - weights - kv) / GB,
                     "reserved_GB": (torch.cuda.max_memory_reserved() / GB) if graph else 0.0}
    out["target_overhead_GB"] = 1.5
    out["meets_target"] = max(out[c]["overhead_GB"] for c in ("first_call", "second_call")) <= 1.5
    # where the runtime's tensors live: every weight tensor must share storage with a parameter
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    own = [n for n, t in rt.runtime_tensors().items()
           if n not in ("k_cache", "v_cache", "cos", "sin") and t.untyped_storage().data_ptr() not in params]
    out["runtime_tensors_with_own_storage"] = own
    return out


def measure_hf_memory(model, prompts, new: int, device: str) -> dict:
    """The same generation through HF generate (sdpa, dynamic cache), for comparison."""
    model.set_attn_implementation("sdpa")
    ids = torch.tensor(prompts, device=device)
    base = _reset_peak(device)
    model.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0,
                   eos_token_id=None)
    return {"peak_GB": _peak(device) / GB, "allocated_before_GB": base / GB}


def measure_speed(model, prompts, new: int, device: str) -> dict:
    from litekernels.generation import generate_ids

    graph = _cuda(device)
    generate_ids(model, prompts, 8, use_cuda_graph=graph)  # warm-up: JIT, capture
    _sync(device)
    out, t_pre, t_dec = generate_ids(model, prompts, new, use_cuda_graph=graph)
    assert out.shape == (len(prompts), new)
    B = len(prompts)
    return {"batch": B, "prefill_ms": 1e3 * t_pre, "decode_tok_s": B * (new - 1) / t_dec}


def step_fused_vs_split(model, batch: int, device: str) -> dict:
    """Decode step time (graph replay on CUDA) with fused q/k/v + gate/up GEMMs vs one GEMM per projection."""
    from litekernels.generation import LlamaRuntime

    res = {}
    tok = torch.zeros(batch, dtype=torch.long, device=device)
    pos = torch.full((batch,), 200, dtype=torch.long, device=device)
    for name, fuse in (("fused", True), ("split", False)):
        rt = LlamaRuntime(model, max_batch=batch, max_seq_len=512, fuse_weights=fuse)
        rt.capture(batch)
        with torch.no_grad():
            if _cuda(device):
                from triton.testing import do_bench
                res[f"{name}_step_ms"] = do_bench(lambda: rt.decode(tok, pos), warmup=25, rep=200,
                                                  return_mode="median")
            else:
                t = time.perf_counter()
                rt.decode(tok, pos)
                res[f"{name}_step_ms"] = 1e3 * (time.perf_counter() - t)
        rt = None  # free its cache and graph before the next one
    return res


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--shapes", default="1B,8B")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--no-hf", action="store_true", help="skip the HF generate memory comparison")
    p.add_argument("--tiny", action="store_true", help="tiny model, CPU allowed, writes nothing")
    args = p.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.tiny:
        args.shapes, args.prompt, args.new = "tiny", 9, 6
    elif device != "cuda":
        raise SystemExit("bench_memory needs a CUDA GPU (or --tiny for a CPU smoke run)")
    import transformers
    import triton

    meta = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
            "triton": triton.__version__, "transformers": transformers.__version__,
            "dtype": "bfloat16" if device == "cuda" else "float32", "prompt": args.prompt,
            "new_tokens": args.new,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    print(meta, flush=True)
    batches = [int(b) for b in args.batches.split(",")]
    results = {}
    for shape in args.shapes.split(","):
        model = build(shape, device)
        g = torch.Generator().manual_seed(0)
        vocab = SHAPES[shape]["vocab_size"]
        prompt_ids = torch.randint(10, vocab - 1, (max(batches), args.prompt), generator=g).tolist()
        row = {"config": {k: v for k, v in SHAPES[shape].items() if k != "rope_parameters"}}
        row["memory"] = measure_memory(model, prompt_ids[:1], args.new, device)
        print(shape, "memory", json.dumps(row["memory"]), flush=True)
        row["speed"], row["step"] = [], {}
        for B in batches:
            try:
                row["speed"].append(measure_speed(model, prompt_ids[:B], args.new, device))
            except Exception as e:  # noqa: BLE001 - keep the other rows
                row["speed"].append({"batch": B, "error": repr(e)[:300]})
            print(shape, "speed", row["speed"][-1], flush=True)
        release_runtime(model)
        for B in batches:
            try:
                row["step"][str(B)] = step_fused_vs_split(model, B, device)
            except Exception as e:  # noqa: BLE001
                row["step"][str(B)] = {"error": repr(e)[:300]}
            print(shape, "step", B, row["step"][str(B)], flush=True)
        if not args.no_hf:
            try:
                row["hf_sdpa_memory_batch1"] = measure_hf_memory(model, prompt_ids[:1], args.new, device)
            except Exception as e:  # noqa: BLE001
                row["hf_sdpa_memory_batch1"] = {"error": repr(e)[:300]}
            print(shape, "hf", row["hf_sdpa_memory_batch1"], flush=True)
        results[shape] = row
        del model
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    print(f"\n{'shape':6} {'weights GB':>10} {'KV GB':>7} {'peak GB':>8} {'overhead GB':>11} "
          f"{'HF peak GB':>10}  tok/s")
    for shape, r in results.items():
        m = r["memory"]
        hf = r.get("hf_sdpa_memory_batch1", {}).get("peak_GB", float("nan"))
        speeds = ", ".join(f"b{s['batch']}: {s.get('decode_tok_s', float('nan')):.0f}" for s in r["speed"])
        print(f"{shape:6} {m['weights_GB']:10.2f} {m['kv_cache_GB']:7.3f} {m['second_call']['peak_GB']:8.2f} "
              f"{max(m['first_call']['overhead_GB'], m['second_call']['overhead_GB']):11.2f} "
              f"{hf:10.2f}  {speeds}")
    doc = {"meta": meta, "results": results}
    if args.tiny:
        print("--tiny: nothing written")
        return doc
    from bench.results_io import save_results

    save_results(doc, "memory")
    return doc


if __name__ == "__main__":
    main()
