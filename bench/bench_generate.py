"""End-to-end generation benchmark (GPU), every provider side by side in one process.

Random bf16 weights at Llama-3.2-1B shape (16 layers, hidden 2048, 32/8 heads, head_dim 64, vocab 128256,
tied embeddings), prompts of 128 random tokens, 256 new tokens, EOS ignored. Providers:
  lite-graph         our runtime, unfused decode step replayed from a CUDA graph (projections: our skinny GEMM)
  lite-graph-cublas  the same with the projections on cuBLAS (F.linear): the unfused step
  lite-graph-default the runtime's default decode step (LlamaRuntime.MEASURED_FUSED: every projection but
                     lm_head fused, with PDL, at 1B batch 1 on an H200; else unfused)
  lite-graph-fused   the fused decode step (ops/decode_fused.py: norm+GEMV kernels with the SiLU*mul and
                     RoPE+cache-write epilogues), the runtime's default for bf16 on CUDA
  lite-graph-fused-pdl  the same with programmatic dependent launch (sm_90+)
  lite-eager         our runtime at its defaults, the decode step launched eagerly
  hf-eager     HF generate, attn_implementation="eager", dynamic cache
  hf-sdpa      HF generate, sdpa, dynamic cache
  hf-static    HF generate, sdpa, cache_implementation="static", disable_compile=True
  hf-lite      HF generate at its defaults (dynamic cache) after apply_lite_llama ("lite" attention)
  hf-liger     HF generate at its defaults after Liger-Kernel's apply_liger_kernel_to_llama (on a copy of the
               model; Liger's global rebinding is undone afterwards), if liger_kernel is importable
  hf-static-compile       HF generate, sdpa, cache_implementation="static" with HF's default compilation
                          (torch.compile mode="reduce-overhead" of the decode step)
  hf-lite-static-compile  the same after apply_lite_llama (our ops are torch.library custom ops in the graph)
The static-compile providers run only for the batches in --compile-batches (each batch size compiles anew;
`--compile-batches ""` skips them). Each row records wall_s, the provider's whole time including compiles.
--train adds a training-step table (B4 T2048 by default, --train-shape): forward+backward of the patched model,
eager and torch.compile(fullgraph=True), next to the unpatched model eager and compiled; tokens/s, peak memory.
plus the HBM roofline for batch 1 (weight bytes / measured copy bandwidth). Prefill ms is timed separately
(a 1-token generate for HF); decode tok/s = batch * (new - 1) / (total - prefill). Also: kernels launched per
decode step and the time per layer. Writes bench/results/generate-<gpu>.json (and $OUT/).

    python -m bench.bench_generate [--batches 1,8,32] [--new 256] [--layers 16] [--compile-batches 1] [--train]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import statistics
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


def bench_hf(model, ids, new, impl, static, compile_=False):
    if impl is not None:
        model.set_attn_implementation(impl)
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    if static:
        kw.update(cache_implementation="static", disable_compile=not compile_)
    if compile_:
        # compile and capture at the timed length (the static cache is sized by it), twice: the first call
        # compiles, the second records the CUDA graphs of the reduce-overhead mode
        for _ in range(2):
            model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)
    model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kw)  # warm-up
    pre, dec = [], []
    for _ in range(REPEATS[0]):  # --repeats: the median of several timed generates (host-bound runs vary)
        t_pre, _ = sync_time(lambda: model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw))
        t_all, out = sync_time(lambda: model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw))
        assert out.shape[1] == ids.shape[1] + new
        pre.append(t_pre)
        dec.append(t_all - t_pre)
    return statistics.median(pre), statistics.median(dec)


REPEATS = [1]  # set from --repeats


def bench_hf_lite(model, ids, new, static=False, compile_=False):
    """HF generate after apply_lite_llama (reverted afterwards, so the next provider sees the plain model)."""
    from litekernels.patches import apply_lite_llama, revert_lite_llama

    apply_lite_llama(model)
    try:
        return bench_hf(model, ids, new, None, static, compile_)
    finally:
        revert_lite_llama(model)


LIGER_CHECK: dict = {}


def bench_hf_liger(model, ids, new):
    """HF generate after Liger-Kernel's instance patch, on a copy of the model: Liger has no revert and rebinds
    module globals of modeling_llama (RoPE, the RMSNorm/MLP classes), which are restored afterwards."""
    from liger_kernel.transformers import apply_liger_kernel_to_llama
    from transformers.models.llama import modeling_llama

    saved = dict(vars(modeling_llama))
    liger_model = copy.deepcopy(model)
    liger_model.set_attn_implementation("sdpa")
    try:
        apply_liger_kernel_to_llama(model=liger_model)
        # proof that the timed model runs Liger's code: its modules whose forward is Liger's, and its RoPE
        patched = sum(type(getattr(m.forward, "__func__", None)).__name__ == "function"
                      and m.forward.__func__.__qualname__.startswith("Liger") for m in liger_model.modules())
        LIGER_CHECK.update(modules_with_liger_forward=patched,
                           rope=getattr(modeling_llama.apply_rotary_pos_emb, "__name__", "?"))
        return bench_hf(liger_model, ids, new, None, False)
    finally:
        for name in set(vars(modeling_llama)) - set(saved):
            delattr(modeling_llama, name)
        for name, value in saved.items():
            if vars(modeling_llama).get(name) is not value:
                setattr(modeling_llama, name, value)
        del liger_model
        torch.cuda.empty_cache()


def bench_train(layers, batch, seq, steps=5, profile=False, providers=None):
    """Forward+backward of the LM loss at batch x seq: unpatched and patched, eager and torch.compile'd. With
    `profile`, also one profiled step (+ fused AdamW) per provider: GPU ms per kernel category and the top
    kernels (bench_train's categories), to show where compiled and eager differ."""
    rows = []
    model = build(layers)
    model.train()
    model.config.use_cache = False
    ids = torch.randint(10, model.config.vocab_size, (batch, seq), device=model.device)
    from litekernels.patches import apply_lite_llama, revert_lite_llama

    for patched in (False, True):
        if patched:
            apply_lite_llama(model)
        for compiled in (False, True):
            name = ("lite" if patched else "hf-sdpa") + ("-compile" if compiled else "")
            if providers and name not in providers:
                continue
            fn = torch.compile(model, fullgraph=True) if compiled else model

            def step(fn=fn):
                loss = fn(input_ids=ids, labels=ids, use_cache=False).loss  # as kernel_profile calls it
                loss.backward()
                model.zero_grad(set_to_none=True)
                return loss

            try:
                t_compile, _ = sync_time(step)  # includes compilation for the compiled providers
                step()
                torch.cuda.reset_peak_memory_stats()
                t, _ = sync_time(lambda: [step() for _ in range(steps)])
                row = {"provider": name, "batch": batch, "seq": seq, "step_ms": 1e3 * t / steps,
                       "tokens_per_s": batch * seq * steps / t, "first_step_s": t_compile,
                       "peak_GB": torch.cuda.max_memory_allocated() / 1e9}
                if profile:
                    from bench.bench_train import kernel_profile

                    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
                    row["profile"] = kernel_profile(fn, opt, ids, "cuda")
                    del opt
            except Exception as e:  # noqa: BLE001 - keep the other providers
                row = {"provider": name, "batch": batch, "seq": seq, "error": repr(e)[:300]}
            print({k: v for k, v in row.items() if k != "profile"}, flush=True)
            if "profile" in row:
                print("   ms by category:", {k: round(v, 2) for k, v in row["profile"].get("categories_ms", {}).items()},
                      flush=True)
            rows.append(row)
            torch._dynamo.reset()
            torch.cuda.empty_cache()
        if patched:
            revert_lite_llama(model)
    return rows


HF_PROVIDERS = {  # name -> (attention implementation, static cache, compile)
    "hf-eager": ("eager", False, False), "hf-sdpa": ("sdpa", False, False), "hf-static": ("sdpa", True, False),
    "hf-static-compile": ("sdpa", True, True)}


LITE_PROVIDERS = {  # name -> (CUDA graph, skinny GEMM, fused decode step, fused_config)
    "lite-graph": (True, True, False, None), "lite-graph-cublas": (True, False, False, None),
    "lite-graph-fused": (True, False, True, None), "lite-graph-fused-pdl": (True, False, True, {"PDL": True}),
    "lite-graph-default": (True, False, None, None), "lite-eager": (False, True, None, None)}


def _set_fused(model, batch, total_len, graph, skinny, fused, fused_config):
    """Build (or reuse) the runtime generate_ids will use and choose its decode step; the runtime is cached on the
    model, so every provider sets this explicitly."""
    from litekernels.generation.api import get_runtime

    rt = get_runtime(model, batch, total_len, use_cuda_graph=graph, skinny_gemm=skinny)
    rt.set_fused_decode(fused, fused_config)
    return rt


def bench_lite(model, prompts, new, graph, skinny=True, fused=None, fused_config=None):
    from litekernels.generation import generate_ids

    kw = dict(use_cuda_graph=graph, skinny_gemm=skinny)
    rt = _set_fused(model, len(prompts), max(map(len, prompts)) + new, graph, skinny, fused, fused_config)
    generate_ids(model, prompts, 8, **kw)  # warm-up: compile, capture
    torch.cuda.synchronize()
    out, t_pre, t_dec = generate_ids(model, prompts, new, **kw)
    if _set_fused(model, len(prompts), max(map(len, prompts)) + new, graph, skinny, fused, fused_config) is not rt:
        raise RuntimeError("the runtime was rebuilt during the run: its decode-step setting was not the one asked")
    assert out.shape == (len(prompts), new)
    return t_pre, t_dec


def step_profile(model, batch, skinny=True, fused=False, fused_config=None):
    """Kernels launched by one eager decode step, and the graph-replayed step time."""
    rt = _set_fused(model, batch, 512, True, skinny, fused, fused_config)
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
    return {"fused_decode": rt.fused_decode, "kernels_per_step": len(kernels), "graph_step_ms": graph_ms,
            "eager_step_ms": eager_ms, "graph_ms_per_layer": graph_ms / len(rt.layers),
            "gpu_time_us_by_kernel": {k: v for k, v in top}}


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--batches", default="1,8,32")
    p.add_argument("--new", type=int, default=256)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--providers", default="lite-graph,lite-graph-cublas,lite-graph-fused,lite-graph-fused-pdl,"
                                          "lite-eager,hf-eager,hf-sdpa,hf-static,hf-lite,hf-liger,"
                                          "hf-static-compile,hf-lite-static-compile")
    p.add_argument("--fused-config", default=None,
                   help="launch settings of the lite-graph-fused providers: a JSON dict (LlamaRuntime fused_config) "
                        "or the path of a bench/sweep_decode_fused.py results file (its best 1B settings per batch)")
    p.add_argument("--profile", default="1-default,8-default,1,8,1-cublas,1-fused,8-fused,1-fused-pdl",
                   help="decode-step profiles: batch[-default|-cublas|-fused|-fused-pdl] (plain: unfused, skinny GEMM)")
    p.add_argument("--compile-batches", default="1", help="batches at which the static-compile providers run")
    p.add_argument("--repeats", type=int, default=1, help="timed generates per HF provider (median)")
    p.add_argument("--train", action="store_true", help="add the training-step table (compiles the 1B model)")
    p.add_argument("--train-providers", default="hf-sdpa,hf-sdpa-compile,lite,lite-compile")
    p.add_argument("--train-profile", action="store_true", help="a kernel-category profile per training provider")
    p.add_argument("--train-shape", default="4,2048", help="batch,seq of the training step")
    p.add_argument("--out", default=None, help="results path (default bench/results/generate-<gpu>.json)")
    args = p.parse_args(argv)
    REPEATS[0] = max(1, args.repeats)
    compile_batches = {int(b) for b in args.compile_batches.split(",") if b}
    from bench.bench_ops import copy_bandwidth

    model = build(args.layers)
    weight_bytes = sum(t.numel() * t.element_size() for t in model.parameters())
    bw = copy_bandwidth()
    meta = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
            "transformers": __import__("transformers").__version__, "copy_GBps": bw, "weight_bytes": weight_bytes,
            "shape": f"Llama-3.2-1B ({args.layers} layers), bf16 random weights", "prompt": args.prompt,
            "new_tokens": args.new, "repeats": args.repeats,
            "roofline_tok_s_batch1": bw * 1e9 / weight_bytes,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    print(meta, flush=True)
    rows = []
    for B in [int(b) for b in args.batches.split(",") if b]:
        g = torch.Generator().manual_seed(B)
        ids = torch.randint(10, 128000, (B, args.prompt), generator=g).cuda()
        prompts = ids.tolist()
        for prov in [p for p in args.providers.split(",") if p]:
            if prov.endswith("static-compile") and B not in compile_batches:
                continue
            t_start = time.perf_counter()
            row_extra = {}
            try:
                if prov.startswith("lite"):
                    graph, skinny, fused, fcfg = LITE_PROVIDERS[prov]
                    if fused and args.fused_config:
                        fcfg = {**fused_config_for(args.fused_config, B), **(fcfg or {})}
                    if fcfg and fcfg.get("PDL") and not _pdl_ok():
                        raise RuntimeError("PDL needs sm_90+ and a Triton with launch_pdl")
                    t_pre, t_dec = bench_lite(model, prompts, args.new, graph, skinny=skinny, fused=fused,
                                              fused_config=fcfg)
                elif prov.startswith("hf-lite"):
                    model.set_attn_implementation("sdpa")
                    static = prov == "hf-lite-static-compile"
                    t_pre, t_dec = bench_hf_lite(model, ids, args.new, static=static, compile_=static)
                elif prov == "hf-liger":
                    t_pre, t_dec = bench_hf_liger(model, ids, args.new)
                    row_extra = dict(LIGER_CHECK)
                else:
                    impl, static, compile_ = HF_PROVIDERS[prov]
                    t_pre, t_dec = bench_hf(model, ids, args.new, impl, static, compile_)
                row = {"batch": B, "provider": prov, "prefill_ms": 1e3 * t_pre,
                       "decode_tok_s": B * (args.new - 1) / t_dec, **row_extra}
                if B == 1:
                    row["pct_of_roofline"] = 100 * row["decode_tok_s"] / meta["roofline_tok_s_batch1"]
            except Exception as e:  # noqa: BLE001 - keep the other providers
                row = {"batch": B, "provider": prov, "error": repr(e)[:300]}
            row["wall_s"] = time.perf_counter() - t_start  # the provider's whole cost here (warm-ups, compiles)
            print({k: v for k, v in row.items() if k != "profile"}, flush=True)
            if "profile" in row:
                print("   ms by category:", {k: round(v, 2) for k, v in row["profile"].get("categories_ms", {}).items()},
                      flush=True)
            rows.append(row)
            torch._dynamo.reset()  # compiled providers: free their graphs before the next one
            torch.cuda.empty_cache()
    print_ratios(rows)
    model.set_attn_implementation("sdpa")
    profile, profile_errors = {}, {}  # errors apart: bench/plot.py reads every profile's fields
    for name in [n for n in args.profile.split(",") if n]:
        B, _, kind = name.partition("-")
        try:
            if kind.endswith("pdl") and not _pdl_ok():
                raise RuntimeError("PDL needs sm_90+ and a Triton with launch_pdl")
            fcfg = {"PDL": True} if kind.endswith("pdl") else {}
            if kind.startswith("fused") and args.fused_config:
                fcfg = {**fused_config_for(args.fused_config, int(B)), **fcfg}
            # "<B>-default": the runtime's default step (fused_decode=None: the measured mix where one exists)
            fused = None if kind == "default" else kind.startswith("fused")
            profile[name] = step_profile(model, int(B), skinny=kind == "", fused=fused, fused_config=fcfg or None)
        except Exception as e:  # noqa: BLE001 - the throughput rows above are still worth writing
            profile_errors[name] = repr(e)[:300]
    print(json.dumps(profile, indent=1), flush=True)
    if profile_errors:
        print("profile errors:", profile_errors, flush=True)
    meta["fused_config"] = args.fused_config
    doc = {"meta": meta, "results": rows, "decode_step": profile}
    if profile_errors:
        doc["decode_step_errors"] = profile_errors
    if args.train:
        tb, ts = (int(v) for v in args.train_shape.split(","))
        del model
        torch.cuda.empty_cache()
        doc["train_step"] = bench_train(args.layers, tb, ts, profile=args.train_profile,
                                        providers=args.train_providers.split(","))
    save_results(doc, "generate", out=args.out)


def fused_config_for(spec: str, batch: int) -> dict:
    """--fused-config: a JSON dict, or a sweep_decode_fused results file (best settings at the 1B shape)."""
    import os

    if os.path.exists(spec):
        from bench.sweep_decode_fused import best_fused_config

        with open(spec) as f:
            return best_fused_config(json.load(f), "1B", batch) or {}
    return json.loads(spec)


def _pdl_ok() -> bool:
    from litekernels.ops._tl_common import HAS_PDL

    return HAS_PDL and torch.cuda.get_device_capability()[0] >= 9


def print_ratios(rows):
    """The issue-#10 ratios per batch: patched HF generate over Liger and unpatched; static+compile patched over
    unpatched."""
    by = {(r["batch"], r["provider"]): r.get("decode_tok_s") for r in rows}
    for B in sorted({r["batch"] for r in rows}):
        for num, den in (("lite-graph-fused", "lite-graph-cublas"), ("lite-graph-fused-pdl", "lite-graph-cublas"),
                         ("hf-lite", "hf-liger"), ("hf-lite", "hf-sdpa"),
                         ("hf-lite-static-compile", "hf-static-compile")):
            a, b = by.get((B, num)), by.get((B, den))
            if a and b:
                print(f"batch {B}: {num} / {den} = {a / b:.2f}x", flush=True)


if __name__ == "__main__":
    main()
