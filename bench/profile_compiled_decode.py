"""Where the time of HF's compiled static-cache decode goes, patched (apply_lite_llama) vs unpatched (sdpa).

One process, one shot (about 2-3 minutes on an H200): random bf16 weights at Llama-3.2-1B shape (bench_generate's
build()), batch 1, prompt 128, 128 new tokens, `generate(cache_implementation="static")` with HF's default
compilation (torch.compile of the decode step, mode="reduce-overhead": Inductor + CUDA-graph trees), with the
compile caches off. For each provider ("hf-static-compile" unpatched, "hf-lite-static-compile" patched,
"hf-lite-static-compile-opaque" patched with litekernels.rms_norm kept opaque to Inductor), in this order,
after a torch._dynamo.reset():
  * decode tok/s as bench_generate measures it: batch * (new - 1) / (t(generate new) - t(generate 1)), --repeats times (median);
  * what the compile produced: graph breaks, unique graphs, recompiles, CUDA-graph skips (with the logged
    reasons), Inductor kernels generated, CUDA-graph-tree nodes recorded, and the post-grad graph's op counts
    (aten / litekernels ops, clones, copies, auto_functionalized);
  * a torch.profiler trace of a short generate (`--steps` decode steps, each bracketed by the host-side call of
    HF's compiled forward): per decode step the wall time (HF syncs the host every step, so the steps do not
    overlap), GPU-busy time (union of kernel intervals) and the gap, kernels, CUDA-graph launches, host time
    inside the compiled call (Dynamo guards + CUDA-graph-tree replay), and the top 20 kernels by GPU time.
Writes bench/results/compiled-decode-<gpu>.json (and $OUT/); with $OUT set also the two Chrome traces there.

    python -m bench.profile_compiled_decode                  # GPU (the numbers above)
    python -m bench.profile_compiled_decode --cpu --tiny     # smoke test of every code path on the CPU (Inductor
                                                             # C++; no CUDA graphs, no kernels to profile)
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import statistics
import tempfile
import time
from collections import Counter

import torch

from bench.results_io import save_results

# hf-lite-static-compile-opaque: patched, with litekernels.rms_norm kept opaque (its Inductor decomposition for
# decode sizes removed while this provider compiles): what that decomposition is worth.
PROVIDERS = ("hf-static-compile", "hf-lite-static-compile", "hf-lite-static-compile-opaque")


class _NoRmsNormDecomposition:
    def __enter__(self):
        from torch._inductor import decomposition as d

        self.table, self.key = d.decompositions, torch.ops.litekernels.rms_norm.default
        self.saved = self.table.pop(self.key, None)
        self._clear()

    def __exit__(self, *exc):
        if self.saved is not None:
            self.table[self.key] = self.saved
        self._clear()

    @staticmethod
    def _clear():
        from torch._inductor import decomposition as d

        if hasattr(getattr(d, "fast_random_decomps", None), "cache_clear"):
            d.fast_random_decomps.cache_clear()


# ------------------------------------------------------------------------------------------------ model
def build_model(args, device):
    if device == "cuda" and not args.tiny:
        from bench.bench_generate import build

        return build(args.layers)
    from transformers import LlamaConfig, LlamaForCausalLM

    if args.tiny:
        cfg = dict(vocab_size=512, hidden_size=64, intermediate_size=160, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16)
    else:  # the 1B widths (CPU: a few layers)
        cfg = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_attention_heads=32,
                   num_key_value_heads=8, head_dim=64)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=args.layers, max_position_embeddings=4096,
                                             tie_word_embeddings=True, **cfg))
    model = model.to(torch.bfloat16 if device == "cuda" else torch.float32).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    return model


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------ probes
class CompiledCallProbe:
    """Wraps model.get_compiled_call: every call of HF's compiled forward is timed on the host (no sync) and
    bracketed by a profiler range "decode_step"."""

    def __init__(self, model):
        self.model, self.original = model, model.get_compiled_call
        self.host_s: list[float] = []
        self.active = False

    def __enter__(self):
        original = self.original

        def get_compiled_call(compile_config):
            fn = original(compile_config)

            def call(*args, **kwargs):
                if not self.active:
                    return fn(*args, **kwargs)
                with torch.profiler.record_function("decode_step"):
                    t = time.perf_counter()
                    out = fn(*args, **kwargs)
                    self.host_s.append(time.perf_counter() - t)
                return out

            return call

        self.model.get_compiled_call = get_compiled_call
        return self

    def __exit__(self, *exc):
        self.model.__dict__.pop("get_compiled_call", None)


class LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        try:
            self.messages.append(record.getMessage()[:500])
        except Exception:  # noqa: BLE001
            pass


def post_grad_recorder(store: list):
    def record(graph):
        try:
            store.append(Counter(str(n.target) for n in graph.nodes if n.op == "call_function"))
        except Exception:  # noqa: BLE001 - diagnostics only
            pass

    return record


def cudagraph_tree_nodes() -> int | None:
    """CUDA-graph-tree nodes recorded on the current device (None: no tree manager)."""
    try:
        from torch._inductor import cudagraph_trees

        mgr = cudagraph_trees.get_container(torch.cuda.current_device()).tree_manager
        if mgr is None:
            return None
        seen, todo = 0, list(mgr.get_roots())
        while todo:
            node = todo.pop()
            seen += 1
            for children in node.children.values():
                todo.extend(children)
        return seen
    except Exception:  # noqa: BLE001 - the tree's internals differ between torch versions
        return None


# ------------------------------------------------------------------------------------------------ profile
def _union_us(intervals):
    total, end = 0.0, None
    for s, e in sorted(intervals):
        if end is None or s > end:
            total += e - s
            end = e
        elif e > end:
            total += e - end
            end = e
    return total


def profile_steps(model, ids, kw, probe, steps, new, trace_path=None, skip=8):
    """Profile a generate of `new` tokens (the compiled length: a shorter generate sizes the static cache anew,
    which recompiles and re-records the CUDA graphs); per-step numbers for `steps` decode calls after the
    first `skip` (steady state: every step one replay of the recorded graph)."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    probe.host_s.clear()
    probe.active = True
    try:
        with torch.profiler.profile(activities=acts) as prof:
            with torch.profiler.record_function("generate"):
                model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)
            sync()
    finally:
        probe.active = False
    if trace_path:
        try:
            prof.export_chrome_trace(trace_path)
        except Exception as e:  # noqa: BLE001
            print("trace export failed:", repr(e)[:200])
    events = list(prof.events())
    ranges = sorted((e.time_range.start, e.time_range.end) for e in events if e.name == "decode_step")
    gen = [e for e in events if e.name == "generate"]
    end_all = gen[0].time_range.end if gen else max(e.time_range.end for e in events)
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    launches = [e for e in events if "GraphLaunch" in e.name]
    kernel_launch_calls = [e for e in events if e.name.startswith("cudaLaunchKernel") or e.name.startswith("cuLaunchKernel")]
    per_step, by_name = [], Counter()
    skip = max(0, min(skip, len(ranges) - steps))
    n = min(steps, len(ranges) - skip)
    for i in range(skip, skip + n):
        lo = ranges[i][0]
        hi = ranges[i + 1][0] if i + 1 < len(ranges) else end_all
        ks = [k for k in kernels if lo <= k.time_range.start < hi]
        busy = _union_us([(k.time_range.start, k.time_range.end) for k in ks])
        for k in ks:
            by_name[k.name[:90]] += k.time_range.elapsed_us()
        per_step.append({
            "wall_us": hi - lo, "gpu_busy_us": busy, "gap_us": (hi - lo) - busy, "kernels": len(ks),
            "graph_launches": sum(lo <= e.time_range.start < hi for e in launches),
            "kernel_launch_calls": sum(lo <= e.time_range.start < hi for e in kernel_launch_calls),
            "compiled_call_host_us": 1e6 * probe.host_s[i] if i < len(probe.host_s) else None})
    mean = {k: sum(s[k] for s in per_step) / max(1, len(per_step)) for k in
            ("wall_us", "gpu_busy_us", "gap_us", "kernels", "graph_launches", "kernel_launch_calls")}
    host = [s["compiled_call_host_us"] for s in per_step if s["compiled_call_host_us"] is not None]
    mean["compiled_call_host_us"] = sum(host) / len(host) if host else None
    top = [{"kernel": k, "us_per_step": v / max(1, n)} for k, v in by_name.most_common(20)]
    return {"steps": per_step, "mean": mean, "top_kernels": top, "decode_calls_seen": len(ranges),
            "skipped_steps": skip}


# ------------------------------------------------------------------------------------------------ providers
def generate_kwargs(device):
    kw = dict(do_sample=False, pad_token_id=0, eos_token_id=None, cache_implementation="static")
    if device == "cpu":  # HF compiles only on accelerators unless told; no CUDA graphs on the CPU
        from transformers import CompileConfig

        cfg = CompileConfig(mode=None)
        cfg._compile_all_devices = True
        kw["compile_config"] = cfg
    return kw


def time_decode(model, ids, new, kw):
    """(prefill ms, decode tok/s) as bench_generate measures them: t(generate new) - t(generate 1)."""
    sync()
    t = time.perf_counter()
    model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
    sync()
    t_pre = time.perf_counter() - t
    t = time.perf_counter()
    out = model.generate(ids, max_new_tokens=new, min_new_tokens=new, **kw)
    sync()
    t_all = time.perf_counter() - t
    assert out.shape[1] == ids.shape[1] + new
    return {"prefill_ms": 1e3 * t_pre, "decode_tok_s": ids.shape[0] * (new - 1) / max(t_all - t_pre, 1e-9)}


def paired_runs(model, ids, args, device):
    """Unpatched and patched compiled decode timed in alternation: each provider on its own model (the patched
    one a deep copy with apply_lite_llama), both compiled and recorded first, then --paired rounds of one timed
    generate each, the order flipped every round. The host speed of the GPU machine drifts between and within
    runs (the same provider measured 211-393 tok/s in earlier sequential runs), so the ratio is taken per round
    (both sides under the same conditions) and its median reported."""
    import copy

    from litekernels.patches import apply_lite_llama

    torch._dynamo.reset()
    model.set_attn_implementation("sdpa")
    kw = generate_kwargs(device)
    for name in ("_compiled_call", "_last_compile_config"):  # HF caches its compiled __call__ on the model; a
        model.__dict__.pop(name, None)  # copy would inherit (and time) the original's
    models = {"hf-static-compile": model, "hf-lite-static-compile": apply_lite_llama(copy.deepcopy(model))}
    t0 = time.perf_counter()
    for m in models.values():
        for _ in range(2):  # compile, then record the CUDA graphs, at the timed length
            m.generate(ids, max_new_tokens=args.new, min_new_tokens=args.new, **kw)
        m.generate(ids, max_new_tokens=4, min_new_tokens=4, **kw)
    sync()
    compile_s = time.perf_counter() - t0
    rounds = []
    names = list(models)
    for r in range(args.paired):
        order = names if r % 2 == 0 else names[::-1]
        rounds.append({name: time_decode(models[name], ids, args.new, kw)["decode_tok_s"] for name in order})
        print("paired round", r, {k: round(v, 1) for k, v in rounds[-1].items()}, flush=True)
    ratios = [x["hf-lite-static-compile"] / x["hf-static-compile"] for x in rounds]
    out = {"rounds": rounds, "compile_s": compile_s, "ratio_per_round": ratios,
           "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
           "median_tok_s": {n: statistics.median(x[n] for x in rounds) for n in names},
           "cudagraph_tree_nodes": cudagraph_tree_nodes() if device == "cuda" else None}
    del models
    torch._dynamo.reset()
    return out


def run_provider(model, prov, ids, args, device, logs):
    from litekernels.patches import apply_lite_llama, revert_lite_llama

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    try:
        from torch._inductor import metrics

        metrics.reset()
    except Exception:  # noqa: BLE001
        metrics = None
    logs.messages.clear()
    post_grad: list = []
    import torch._inductor.config as icfg

    saved_pass = icfg.post_grad_custom_post_pass
    icfg.post_grad_custom_post_pass = post_grad_recorder(post_grad)
    model.set_attn_implementation("sdpa")
    patched = prov.startswith("hf-lite-static-compile")
    opaque = _NoRmsNormDecomposition() if prov.endswith("-opaque") else None
    if patched:
        apply_lite_llama(model)
    if opaque is not None:
        opaque.__enter__()
    kw = generate_kwargs(device)
    row = {"provider": prov, "batch": ids.shape[0]}
    t_start = time.perf_counter()
    try:
        with CompiledCallProbe(model) as probe:
            for _ in range(2):  # compile, then record the CUDA graphs, at the timed length (sizes the cache)
                model.generate(ids, max_new_tokens=args.new, min_new_tokens=args.new, **kw)
            sync()
            row["compile_s"] = time.perf_counter() - t_start
            model.generate(ids, max_new_tokens=4, min_new_tokens=4, **kw)
            runs = [time_decode(model, ids, args.new, kw) for _ in range(args.repeats)]
            row["runs"] = runs
            row["decode_tok_s"] = statistics.median(r["decode_tok_s"] for r in runs)
            c = torch._dynamo.utils.counters
            row["compile_info"] = {
                "graph_breaks": sum(c["graph_break"].values()), "graph_break_reasons": dict(c["graph_break"]),
                "unique_graphs": c["stats"]["unique_graphs"], "recompiles": dict(c.get("recompiles", {})),
                "cudagraph_skips": c["inductor"]["cudagraph_skips"],
                "inductor_kernels_generated": getattr(metrics, "generated_kernel_count", None) if metrics else None,
                "cudagraph_tree_nodes": cudagraph_tree_nodes() if device == "cuda" else None,
                "log_messages": [m for m in logs.messages
                                 if any(w in m.lower() for w in ("cudagraph", "graph break", "recompil"))][:20]}
            if post_grad:
                ops = post_grad[-1]
                row["post_grad_graph"] = {
                    "graphs": len(post_grad), "call_function_nodes": sum(ops.values()),
                    "litekernels_ops": {k: v for k, v in ops.items() if "litekernels" in k},
                    "copies": {k: v for k, v in ops.items()
                               if any(w in k for w in ("clone", "copy", "_to_copy", "contiguous"))},
                    "auto_functionalized": sum(v for k, v in ops.items() if "auto_functionalized" in k),
                    "top_ops": dict(ops.most_common(25))}
            trace = os.path.join(os.environ["OUT"], f"trace-{prov}.json") if os.environ.get("OUT") else None
            row["profile"] = profile_steps(model, ids, kw, probe, args.steps, args.new, trace)
    except Exception as e:  # noqa: BLE001 - keep the other provider's numbers
        import traceback

        traceback.print_exc()
        row["error"] = repr(e)[:500]
    finally:
        icfg.post_grad_custom_post_pass = saved_pass
        if opaque is not None:
            opaque.__exit__(None, None, None)
        if patched:
            revert_lite_llama(model)
    row["wall_s"] = time.perf_counter() - t_start
    return row


def print_row(row):
    if "error" in row:
        print(f"{row['provider']:24s} ERROR {row['error']}", flush=True)
        return
    m = row["profile"]["mean"]
    ci = row["compile_info"]
    host = m["compiled_call_host_us"]
    print(f"{row['provider']:24s} {row['decode_tok_s']:8.1f} tok/s | per step: wall {m['wall_us']:8.1f} us, "
          f"GPU busy {m['gpu_busy_us']:8.1f}, gap {m['gap_us']:8.1f}, kernels {m['kernels']:6.1f}, "
          f"graph launches {m['graph_launches']:.1f}, host in compiled call "
          f"{'-' if host is None else f'{host:.0f}'} us | breaks {ci['graph_breaks']}, graphs {ci['unique_graphs']}, "
          f"cudagraph skips {ci['cudagraph_skips']}, tree nodes {ci['cudagraph_tree_nodes']}", flush=True)
    for k in row["profile"]["top_kernels"][:8]:
        print(f"    {k['us_per_step']:8.1f} us  {k['kernel']}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu", action="store_true", help="run on the CPU (smoke test: Inductor C++, no CUDA graphs)")
    p.add_argument("--tiny", action="store_true", help="a tiny Llama instead of the 1B widths")
    p.add_argument("--layers", type=int, default=None, help="default 16 (GPU), 2 (CPU)")
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=8, help="decode steps in the profile (steady state)")
    p.add_argument("--repeats", type=int, default=3, help="timed generates per provider (median)")
    p.add_argument("--providers", default=",".join(PROVIDERS), help="sequential runs with profiles ('' for none)")
    p.add_argument("--paired", type=int, default=0,
                   help="rounds of unpatched/patched timed in alternation, each on its own model (0: off)")
    p.add_argument("--out", default=None, help="results path (default bench/results/compiled-decode-<gpu>.json; "
                                               "--cpu: a temporary file)")
    args = p.parse_args(argv)
    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    if args.layers is None:
        args.layers = 16 if device == "cuda" else 2
    if device == "cpu":
        torch.set_num_threads(1)  # a shared CPU: spinning OpenMP threads make each step 10x slower
        if args.out is None:
            args.out = os.path.join(tempfile.gettempdir(), "compiled-decode-cpu.json")
    try:  # fresh compiles: a cached artifact would skip the post-grad pass and could predate a code change
        import torch._functorch.config as fcfg
        import torch._inductor.config as icfg

        icfg.fx_graph_cache = False
        if hasattr(fcfg, "enable_autograd_cache"):
            fcfg.enable_autograd_cache = False
    except Exception as e:  # noqa: BLE001
        print("could not switch the compile caches off:", repr(e)[:200])
    logs = LogCapture()
    try:  # the reasons behind graph breaks, recompiles and CUDA-graph skips, into the JSON
        torch._logging.set_logs(graph_breaks=True, recompiles=True, cudagraphs=True)
        for name in ("torch._dynamo", "torch._inductor"):
            logging.getLogger(name).addHandler(logs)
        for name in ("torch._inductor.cudagraph_utils.__cudagraphs", "torch._dynamo.__graph_breaks",
                     "torch._dynamo.__recompiles"):
            logging.getLogger(name).addHandler(logs)
    except Exception as e:  # noqa: BLE001
        print("log capture unavailable:", repr(e)[:200])

    import transformers
    import triton

    model = build_model(args, device)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, min(model.config.vocab_size, 128000), (args.batch, args.prompt), generator=g).to(device)
    meta = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
            "triton": triton.__version__, "transformers": transformers.__version__,
            "shape": ("tiny Llama" if args.tiny else "Llama-3.2-1B widths") + f" ({args.layers} layers), "
                     f"{'bf16' if device == 'cuda' else 'fp32'} random weights",
            "batch": args.batch, "prompt": args.prompt, "new_tokens": args.new, "profiled_steps": args.steps,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    print(meta, flush=True)
    rows = []
    for prov in [s for s in args.providers.split(",") if s]:
        row = run_provider(model, prov, ids, args, device, logs)
        rows.append(row)
        print_row(row)
        if device == "cuda":
            torch.cuda.empty_cache()
    by = {r["provider"]: r.get("decode_tok_s") for r in rows}
    ratio = None
    if by.get("hf-lite-static-compile") and by.get("hf-static-compile"):
        ratio = by["hf-lite-static-compile"] / by["hf-static-compile"]
        print(f"hf-lite-static-compile / hf-static-compile = {ratio:.2f}x (target >= 1.1x)", flush=True)
    if by.get("hf-lite-static-compile-opaque") and by.get("hf-static-compile"):
        print(f"hf-lite-static-compile-opaque / hf-static-compile = "
              f"{by['hf-lite-static-compile-opaque'] / by['hf-static-compile']:.2f}x", flush=True)
    doc = {"meta": meta, "results": rows, "ratio_patched_over_unpatched": ratio}
    if args.paired:
        doc["paired"] = paired_runs(model, ids, args, device)
        p = doc["paired"]
        print(f"paired ({args.paired} rounds): hf-lite-static-compile / hf-static-compile median "
              f"{p['ratio_median']:.2f}x (min {p['ratio_min']:.2f}, max {p['ratio_max']:.2f}); median tok/s "
              f"{ {k: round(v, 1) for k, v in p['median_tok_s'].items()} }", flush=True)
    save_results(doc, "compiled-decode", out=args.out)
    print(json.dumps({r["provider"]: r.get("compile_info") for r in rows}, indent=1, default=str)[:4000])


if __name__ == "__main__":
    main()
