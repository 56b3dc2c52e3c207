"""Concurrent generation on one model: throughput with 1 thread against 8 threads, and the per-call cost of the
stale-weights check.

Each request is one prompt (random tokens) completed with `generate_ids` (greedy, EOS ignored). The same list
of requests runs with 1 thread and with N threads sharing one model; calls on one model are serialized by its
lock (docs/generation.md, "Threads"), so N threads should match 1 thread, not beat it: the numbers show what
the lock costs and that nothing breaks. Also timed: `get_runtime` when nothing changed (the weight check, one
pass over the model's parameter slots) and a stream() token against a generate_ids token.

    python -m bench.bench_concurrency                    # GPU: Llama-3.2-1B shape, bf16, CUDA graphs
    python -m bench.bench_concurrency --cpu --out /tmp/c.json   # tiny model on the CPU: checks the code paths

Writes bench/results/concurrency-<gpu>.json (and $OUT/ on the device machine), or --out.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import threading
import time

import torch

from bench.results_io import save_results


def build(cpu: bool, layers: int):
    if not cpu:
        from bench.bench_generate import build as build_1b

        return build_1b(layers)
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    model.generation_config.eos_token_id = None
    return model


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def run_requests(model, requests, new, threads, graph):
    """Wall time of all requests over `threads` worker threads; returns (seconds, outputs in request order)."""
    from litekernels.generation import generate_ids

    outs = [None] * len(requests)
    errors = []

    def worker(k):
        try:
            for i in range(k, len(requests), threads):
                outs[i] = generate_ids(model, [requests[i]], new, use_cuda_graph=graph)[0].tolist()
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            errors.append(e)

    _sync()
    t0 = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    _sync()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0, outs


def check_cost_us(model, reps=200):
    """Median microseconds of get_runtime() when nothing changed (the weight check included)."""
    from litekernels.generation.api import get_runtime

    get_runtime(model, 1, 64)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        get_runtime(model, 1, 64)
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--cpu", action="store_true", help="tiny model on the CPU (code-path check, not a measurement)")
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--requests", type=int, default=32)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new", type=int, default=128)
    p.add_argument("--threads", default="1,8")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        p.error("no CUDA GPU: pass --cpu for the tiny CPU run")
    model = build(args.cpu, args.layers)
    graph = not args.cpu
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    requests = torch.randint(10, vocab - 1, (args.requests, args.prompt), generator=g).tolist()
    n_params = sum(1 for _ in model.parameters())
    meta = {"device": "cpu" if args.cpu else torch.cuda.get_device_name(), "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "shape": ("tiny CPU Llama" if args.cpu else "Llama-3.2-1B") + f" ({args.layers} layers)",
            "parameters": n_params, "requests": args.requests, "prompt": args.prompt, "new_tokens": args.new,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    print(meta, flush=True)
    run_requests(model, requests[:2], 4, 1, graph)  # warm-up: JIT, capture
    rows, reference = [], None
    for n in [int(t) for t in args.threads.split(",")]:
        secs, outs = run_requests(model, requests, args.new, n, graph)
        reference = reference or outs
        rows.append({"threads": n, "seconds": secs, "tok_s": args.requests * args.new / secs,
                     "same_tokens_as_first": outs == reference})
        print(f"threads {n:2d}: {rows[-1]['tok_s']:9.1f} tok/s  ({secs:.2f} s)  same tokens: "
              f"{rows[-1]['same_tokens_as_first']}", flush=True)
    check = check_cost_us(model)
    print(f"get_runtime with the weight check: {check:.1f} us per call ({n_params} parameters)")
    doc = {"meta": meta, "rows": rows, "check_us": check}
    if args.cpu and args.out is None:
        print("(--cpu without --out: not saved)")
        return doc
    save_results(doc, "concurrency", out=args.out)
    return doc


if __name__ == "__main__":
    main()
