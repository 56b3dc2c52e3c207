"""Training memory audit on the CPU: what each decoder layer keeps for the backward, per provider.

Runs a Llama model with the real Llama-3.2-1B layer widths (hidden 2048, 32/8 heads, head_dim 64, inter 8192;
a small vocabulary and 3 layers) forward in training mode under `torch.autograd.graph.saved_tensors_hooks`, for
  hf     transformers as built (attn_implementation="sdpa")
  lite   apply_lite_llama(model, attention="ours") (on the CPU the default "auto" is the same; `--lite-attention
         sdpa` keeps HF's attention: apply_lite_llama(attention=False))
  liger  Liger-Kernel's apply_liger_kernel_to_llama(model=m), when importable (its Triton kernels run under the
         interpreter too; its module-level rebinding is undone afterwards)
With TRITON_INTERPRET=1 (set here when there is no GPU) our and Liger's autograd Functions run their real
launchers, so what they save (ctx.save_for_backward and tensors kept as ctx attributes) is what they save on a
GPU. Every saved tensor is listed with the module that saved it, the autograd node, shape, dtype and bytes of
its *storage* (a saved view keeps its whole storage alive); storages are deduplicated across the model (a
storage saved by two ops - e.g. attention's output and o_proj's input - counts once, for the first saver) and
parameters are left out. Then the backward runs under torch.profiler(profile_memory=True) and the audit reports
the highest live memory above the start of the backward, per provider (backward temporaries).

Bytes scale with tokens: the audit runs two token counts and fits bytes = a * tokens + b per layer, then
reports the fit at the 1B training shape (default 4 x 2048 tokens). HF's attention on the CPU is SDPA's CPU
flash kernel, which keeps the same tensors as CUDA SDPA's flash / cuDNN kernels (q, k, v, out, logsumexp; CUDA
adds RNG scalars). The backward figure (peak live bytes above the backward's start: activations' gradients
and parameter gradients, as in a training step) is measured at the token counts run. At the few dozen tokens
the CPU can afford, the parameter gradients (fixed size) dominate it and the peak sits at the end of the
backward, so on the CPU it says little; on a GPU run the audit at the real token count (`--tokens 8192`),
where the peak sits in the first layers' backward as in the real step.

On the CPU these are bytes computed from the tensors autograd holds, not a GPU measurement.

    python3 -m bench.train_memory_audit                     # hf, lite, liger (if importable); ~3-6 min on 2 cores
    python3 -m bench.train_memory_audit --tokens 8192       # on a GPU: the 1B layer at B4 T2048 directly
    python3 -m bench.train_memory_audit --providers lite --tokens 32,64 --detail
    PYTHONPATH=/path/to/liger_site python3 -m bench.train_memory_audit   # Liger installed with --target
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import sys

if "TRITON_INTERPRET" not in os.environ:  # before triton is imported
    try:
        import torch as _t

        if not _t.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"
    except ImportError:  # pragma: no cover
        pass

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")

WIDTHS_1B = dict(hidden_size=2048, intermediate_size=8192, num_attention_heads=32, num_key_value_heads=8,
                 head_dim=64)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def build(layers: int, vocab: int, seed: int = 0, widths=None, device=None):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**(widths or WIDTHS_1B), num_hidden_layers=layers, vocab_size=vocab, tie_word_embeddings=True,
                      max_position_embeddings=8192, rope_parameters=LLAMA3_ROPE, pad_token_id=0,
                      attn_implementation="sdpa", use_cache=False)
    torch.manual_seed(seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device or DEVICE):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    return model.to(torch.bfloat16).train()


def liger_available() -> bool:
    try:
        import liger_kernel.transformers  # noqa: F401

        return True
    except Exception:  # noqa: BLE001 - not installed or broken against this transformers
        return False


LIGER_OPS = ("rms_norm", "rope", "swiglu", "fused_linear_cross_entropy", "cross_entropy")
LIGER_SKIPPED: set = set()  # Liger kernels that failed under the interpreter and were replaced by no-ops


class _TolerantKernel:
    """A Triton kernel that runs under the interpreter when it can and is skipped (outputs left as allocated)
    when the interpreter cannot run it: what an autograd Function saves and what its launcher allocates do
    not depend on the kernel's arithmetic, so the memory accounting stays exact."""

    def __init__(self, name, kernel):
        self.name, self.kernel = name, kernel

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            if self.name in LIGER_SKIPPED:
                return None
            try:
                return self.kernel[grid](*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - triton's InterpreterError and friends
                LIGER_SKIPPED.add(self.name)
                print(f"note: Liger kernel {self.name} does not run in the interpreter ({str(e)[:80]}); skipped",
                      file=sys.stderr)
                return None

        return launch

    def __getattr__(self, name):
        return getattr(self.kernel, name)


def tolerate_liger_kernels():
    """Wrap Liger's Triton kernels (CPU audit only); idempotent."""
    import importlib

    from triton.runtime.jit import (
        KernelInterface,  # JITFunction, or InterpretedFunction under the interpreter
    )

    for op in LIGER_OPS:
        try:
            mod = importlib.import_module(f"liger_kernel.ops.{op}")
        except ImportError:
            continue
        for name, value in list(vars(mod).items()):
            if isinstance(value, KernelInterface):
                setattr(mod, name, _TolerantKernel(f"{op}.{name}", value))


def patch(model, provider: str, lite_attention: str = "ours"):
    """Apply `provider`'s patch; returns an undo callable."""
    if provider == "hf":
        return lambda: None
    if provider == "lite":
        from litekernels.patches import apply_lite_llama, revert_lite_llama

        apply_lite_llama(model, attention="ours" if lite_attention == "ours" else False)
        return lambda: revert_lite_llama(model)
    if provider == "liger":
        from bench.bench_train import LigerPatch

        if not torch.cuda.is_available():
            tolerate_liger_kernels()
        return LigerPatch(model).undo
    raise ValueError(f"unknown provider {provider!r}")


def _calling_module(names: dict) -> str:
    """Name of the innermost module whose forward is on the call stack. Found from the stack, not from module
    hooks: hooks on down_proj would (rightly) make the patched MLP call the module instead of its fused path."""
    f = sys._getframe(2)
    while f is not None:
        obj = f.f_locals.get("self")
        if obj is not None and id(obj) in names and isinstance(obj, torch.nn.Module):
            return names[id(obj)]
        f = f.f_back
    return ""


def _storage_key(t: torch.Tensor):
    s = t.untyped_storage()
    return (s.data_ptr(), s.nbytes())


def _graph_nodes(root):
    seen, stack, out = set(), [root], []
    while stack:
        n = stack.pop()
        if n is None or n in seen:
            continue
        seen.add(n)
        out.append(n)
        stack.extend(f for f, _ in getattr(n, "next_functions", ()))
    return out


def _node_tensors(node):
    """(attribute, tensor) pairs a node holds for backward: built-in nodes' _saved_* and custom Functions'
    saved_tensors and tensor-valued ctx attributes."""
    out = []
    for name in dir(node):
        if name.startswith("_saved_"):
            try:
                v = getattr(node, name)
            except Exception:  # noqa: BLE001 - e.g. already freed
                continue
            vals = v if isinstance(v, (tuple, list)) else (v,)
            out += [(name, x) for x in vals if isinstance(x, torch.Tensor)]
    if hasattr(node, "saved_tensors") and not any(n.startswith("_saved_") for n, _ in out):
        try:
            out += [("saved_tensors", x) for x in node.saved_tensors if isinstance(x, torch.Tensor)]
        except Exception:  # noqa: BLE001
            pass
        for name, v in vars(node).items() if hasattr(node, "__dict__") else ():
            vals = v if isinstance(v, (tuple, list)) else (v,)
            out += [(f"ctx.{name}", x) for x in vals if isinstance(x, torch.Tensor)]
    return out


def audit_once(provider: str, tokens: int, layers: int, vocab: int, lite_attention: str = "ours",
               batch: int = 1, backward: bool = True, widths=None) -> dict:
    """One forward (+ backward under the profiler) at batch x (tokens // batch); returns the saved-tensor list."""
    model = build(layers, vocab, widths=widths)
    undo = patch(model, provider, lite_attention)
    try:
        param_keys = {_storage_key(p) for p in model.parameters()}
        names = {id(m): n for n, m in model.named_modules()}
        packed = []

        def pack(t):
            packed.append((_calling_module(names), t))
            return t

        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, vocab, (batch, tokens // batch), generator=g).to(DEVICE)
        cuda = DEVICE == "cuda"
        prof = _profiler() if backward and not cuda else None
        if prof is not None:
            prof.__enter__()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(input_ids=ids, labels=ids, use_cache=False)
        loss = out.loss
        # which autograd node holds each saved tensor (by storage, shape, strides)
        holder = collections.defaultdict(list)
        ctx_only = []
        for node in _graph_nodes(loss.grad_fn):
            for attr, t in _node_tensors(node):
                key = (t.untyped_storage().data_ptr(), tuple(t.shape), tuple(t.stride()))
                holder[key].append(f"{type(node).__name__}.{attr}")
                if attr.startswith("ctx."):
                    ctx_only.append((node, attr, t))
        rows, seen = [], {}
        entries = [(mod, t) for mod, t in packed]
        # tensors kept as ctx attributes bypass the hooks: add them (module unknown -> the node's class)
        entries += [(f"<ctx of {type(n).__name__}>", t) for n, _, t in ctx_only]
        for mod, t in entries:
            skey = _storage_key(t)
            key = (t.untyped_storage().data_ptr(), tuple(t.shape), tuple(t.stride()))
            is_param = skey in param_keys
            dup_of = seen.get(skey)
            row = {"module": mod, "op": ",".join(sorted(set(holder.get(key, ["?"])))), "shape": list(t.shape),
                   "dtype": str(t.dtype).replace("torch.", ""), "storage_bytes": skey[1], "parameter": is_param,
                   "aliases": dup_of, "counted": not is_param and dup_of is None}
            if dup_of is None:
                seen[skey] = f"{mod} {row['op']} {list(t.shape)}"
            rows.append(row)
        result = {"provider": provider, "tokens": tokens, "rows": rows}
        packed.clear()
        del entries, out, holder, ctx_only
        if backward and cuda:  # on a GPU the allocator's own counters give the same quantities
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            start = torch.cuda.memory_allocated()
            loss.backward()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
            result["backward"] = {"live_at_backward_start": start, "peak_in_backward": peak,
                                  "backward_peak_above_start_bytes": peak - start, "peak_node": None,
                                  "source": "torch.cuda.max_memory_allocated"}
        if prof is not None:
            try:
                with torch.profiler.record_function(BACKWARD_MARK):
                    loss.backward()
            finally:
                prof.__exit__(None, None, None)
            result["backward"] = memory_timeline(prof)
        return result
    finally:
        undo()


def _profiler():
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CPU], profile_memory=True)


BACKWARD_MARK = "train_memory_audit.backward"


def memory_timeline(prof) -> dict:
    """Live CPU bytes over the step from the profiler's allocation events (forward and backward both profiled,
    so frees of saved activations are seen): the live bytes when the backward starts, the peak during the
    backward and the peak overall, all relative to the start of the forward."""
    all_events = prof.profiler.kineto_results.events()
    t_backward = min(e.start_ns() for e in all_events if e.name() == BACKWARD_MARK)
    events = [e for e in all_events if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    live = peak = peak_bwd = 0
    at_bwd = t_peak = None
    for e in events:
        if at_bwd is None and e.start_ns() >= t_backward:
            at_bwd = peak_bwd = live
        live += e.nbytes()
        peak = max(peak, live)
        if at_bwd is not None and live > peak_bwd:
            peak_bwd, t_peak = live, e.start_ns()
    at_bwd = live if at_bwd is None else at_bwd
    # the backward node running at the peak (innermost autograd "evaluate_function" range around it)
    node = None
    if t_peak is not None:
        around = [e for e in all_events if e.name().startswith("autograd::engine::evaluate_function")
                  and e.start_ns() <= t_peak <= e.start_ns() + e.duration_ns()]
        if around:
            node = max(around, key=lambda e: e.start_ns()).name().split(": ", 1)[-1]
    return {"live_at_backward_start": at_bwd, "peak_in_backward": peak_bwd,
            "backward_peak_above_start_bytes": peak_bwd - at_bwd, "peak_node": node, "peak_overall": peak,
            "live_at_end": live}


def summarize(result: dict, layers: int) -> dict:
    """Counted bytes per group: each decoder layer by sub-module, plus the rest (embedding, final norm, loss)."""
    per_layer = [collections.Counter() for _ in range(layers)]
    other = collections.Counter()
    for r in result["rows"]:
        if not r["counted"]:
            continue
        parts = r["module"].split(".")
        if len(parts) >= 3 and parts[1] == "layers" and parts[2].isdigit():
            sub = ".".join(parts[3:]) or "(layer)"
            per_layer[int(parts[2])][sub] += r["storage_bytes"]
        else:
            other[r["module"] or "(top)"] += r["storage_bytes"]
    return {"per_layer": [dict(c) for c in per_layer], "other": dict(other)}


def fit(points: dict[int, float], target: int) -> float:
    """Linear fit through (tokens, bytes) points, evaluated at `target` tokens."""
    xs = sorted(points)
    if len(xs) == 1:
        return points[xs[0]] * target / xs[0]
    x0, x1 = xs[0], xs[-1]
    a = (points[x1] - points[x0]) / (x1 - x0)
    return points[x0] + a * (target - x0)


def run(providers, token_counts, layers, vocab, target_tokens, lite_attention="ours", detail=False,
        backward=True, widths=None):
    mid = layers // 2  # a layer with a layer on each side: its residual input is saved by its own norm
    raw, report = {}, {}
    for prov in providers:
        label = prov if prov != "lite" or lite_attention == "ours" else "lite(sdpa attention)"
        raw[label] = {}
        for n in token_counts:
            res = audit_once(prov, n, layers, vocab, lite_attention, backward=backward, widths=widths)
            raw[label][n] = {"summary": summarize(res, layers), "backward": res.get("backward"),
                             "rows": res["rows"] if detail else None}
            print(f"{label} tokens={n}: layer {mid}: {sum(raw[label][n]['summary']['per_layer'][mid].values()):,} B"
                  f" saved; backward {res.get('backward')}", flush=True)
        subs = sorted({s for n in token_counts for s in raw[label][n]["summary"]["per_layer"][mid]})
        layer_fit = {s: fit({n: raw[label][n]["summary"]["per_layer"][mid].get(s, 0) for n in token_counts},
                            target_tokens) for s in subs}
        entry = {"layer_bytes_at_target": sum(layer_fit.values()), "layer_by_module_at_target": layer_fit}
        if backward:  # not extrapolated (see the module docstring): the largest token count run
            n = max(token_counts)
            entry["backward_peak_above_start"] = {"tokens": n, **raw[label][n]["backward"]}
        report[label] = entry
    return raw, report


def print_table(report: dict, target_tokens: int) -> str:
    labels = list(report)
    subs = sorted({s for r in report.values() for s in r["layer_by_module_at_target"]})
    lines = [f"saved for backward per decoder layer at {target_tokens} tokens (MB = 1e6 bytes; computed on the CPU)",
             "| module | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for s in subs:
        lines.append(f"| {s} | " + " | ".join(f"{report[p]['layer_by_module_at_target'].get(s, 0) / 1e6:.1f}"
                                              for p in labels) + " |")
    lines.append("| **layer total** | " + " | ".join(f"**{report[p]['layer_bytes_at_target'] / 1e6:.1f}**"
                                                    for p in labels) + " |")
    if all("backward_peak_above_start" in r for r in report.values()):
        b = {p: report[p]["backward_peak_above_start"] for p in labels}
        n = b[labels[0]]["tokens"]
        lines.append(f"| backward peak above its start, whole model incl. parameter grads, at {n} tokens (not "
                     "extrapolated) | " + " | ".join(f"{b[p]['backward_peak_above_start_bytes'] / 1e6:.1f}"
                                                     for p in labels) + " |")
    text = "\n".join(lines)
    print(text)
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--providers", default="hf,lite,liger")
    p.add_argument("--tokens", default="32,64", help="token counts to run (batch 1), comma-separated")
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--vocab", type=int, default=1024)
    p.add_argument("--target-tokens", type=int, default=4 * 2048)
    p.add_argument("--lite-attention", choices=("ours", "sdpa"), default="ours")
    p.add_argument("--no-backward", action="store_true", help="skip the backward profile (faster)")
    p.add_argument("--detail", action="store_true", help="keep every saved tensor in the JSON")
    p.add_argument("--out", default=None, help="default bench/results/train-memory-audit-<cpu|gpu name>.json")
    args = p.parse_args(argv)
    providers = [x for x in args.providers.split(",") if x != "liger" or liger_available()]
    if "liger" in args.providers and "liger" not in providers:
        print("note: Liger-Kernel not importable; its column is skipped", file=sys.stderr)
    tokens = [int(x) for x in args.tokens.split(",")]
    raw, report = run(providers, tokens, args.layers, args.vocab, args.target_tokens, args.lite_attention,
                      args.detail, backward=not args.no_backward)
    table = print_table(report, args.target_tokens)
    import transformers
    import triton

    where = "computed on the CPU (not a GPU measurement)" if DEVICE == "cpu" else torch.cuda.get_device_name()
    doc = {"meta": {"what": f"bytes autograd keeps for backward, {where}", "device": DEVICE,
                    "widths": WIDTHS_1B, "layers": args.layers, "vocab": args.vocab, "token_counts": tokens,
                    "target_tokens": args.target_tokens, "torch": torch.__version__, "triton": triton.__version__,
                    "transformers": transformers.__version__, "interpreter": os.environ.get("TRITON_INTERPRET"),
                    "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
           "report": report, "table": table, "raw": raw}
    if args.out is None:
        tag = "cpu" if DEVICE == "cpu" else torch.cuda.get_device_name().replace("NVIDIA ", "").replace(" ", "-")
        args.out = os.path.join(RESULTS, f"train-memory-audit-{tag}.json")
    if args.out:
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1, default=str)
        print("wrote", args.out)
    return doc


if __name__ == "__main__":
    main()
