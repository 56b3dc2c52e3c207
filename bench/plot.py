"""Turn bench/results/*.json into docs/benchmarks-ops.md (tables) and docs/img/*.png (bar charts).

    python -m bench.plot            # after copying a GPU run's JSON into bench/results/
"""

from __future__ import annotations

import glob
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
DOCS = os.path.join(HERE, "..", "docs")
RESULTS = os.path.join(HERE, "results")
ORDER = ["lite", "liger", "compile", "eager", "sdpa"]


def _metric(p):
    if "TFLOPs" in p:
        return p["TFLOPs"], "TFLOP/s"
    if "GBps" in p:
        return p["GBps"], "GB/s"
    return None, ""


def _slower_than_larger(results) -> set:
    """(op, shape, mode) of rows whose `lite` time exceeds that of a case of the same op, mode and model with
    more tokens: such a number is dominated by something other than the kernel moving its bytes (host work,
    launch latency, a disturbed run) and says nothing about the kernel's bandwidth."""
    import re

    def split(shape):
        m = re.search(r"T=(\d+)", shape)
        return (shape[:m.start()] + shape[m.end():], int(m.group(1))) if m else (shape, None)

    flagged = set()
    for r in results:
        base, t = split(r["shape"])
        ms = r["providers"].get("lite", {}).get("ms")
        if t is None or ms is None:
            continue
        for o in results:
            ob, ot = split(o["shape"])
            oms = o["providers"].get("lite", {}).get("ms")
            if (o["op"], o["mode"], ob) == (r["op"], r["mode"], base) and ot and ot > t and oms and oms < ms:
                flagged.add((r["op"], r["shape"], r["mode"]))
    return flagged


def ops_table(doc) -> str:
    meta = doc["meta"]
    odd = _slower_than_larger(doc["results"])
    lines = [f"Device: **{meta['device']}**, torch {meta['torch']}, triton {meta['triton']}, "
             f"Liger-Kernel {meta.get('liger_kernel')}, measured {meta['timestamp']}. Ceilings measured in the same "
             f"run: copy {meta['copy_GBps']:.0f} GB/s (read+write), bf16 matmul {meta['bf16_matmul_TFLOPs']:.0f} TFLOP/s. "
             "Median of `do_bench` (warm-up 25 ms, 100 ms of repeats); bf16; numbers are GB/s of the bytes the op "
             "must move (or TFLOP/s for attention, causal FLOPs = 2*B*H*T^2*D fwd, x3.5 fwd+bwd); "
             "`x` columns are our speed-up over that provider (time ratio)." + (f" Note: {meta['note']}." if meta.get("note") else ""), ""]
    cur = None
    for r in doc["results"]:
        if r["op"] != cur:
            cur = r["op"]
            provs = [p for p in ORDER if any(p in x["providers"] for x in doc["results"] if x["op"] == cur)]
            unit = _metric(next(v for v in r["providers"].values() if "ms" in v))[1]
            lines += ["", f"### {cur} ({unit})", "",
                      "| shape | mode | " + " | ".join(provs) + " | lite % of copy | " +
                      " | ".join(f"x {p}" for p in provs if p != "lite") + " |",
                      "|" + "---|" * (3 + 2 * len(provs) - 1)]
        cells = []
        for p in provs:
            v = r["providers"].get(p)
            cells.append("—" if not v or "ms" not in v else f"{_metric(v)[0]:.0f}")
        lite = r["providers"].get("lite", {})
        pct = f"{lite['pct_copy_bw']:.0f}%" if "pct_copy_bw" in lite else "—"
        sp = [f"{r.get('speedup_vs', {}).get(p, float('nan')):.2f}" if p in r.get("speedup_vs", {}) else "—"
              for p in provs if p != "lite"]
        mark = " (!)" if (r["op"], r["shape"], r["mode"]) in odd else ""
        lines.append(f"| {r['shape']}{mark} | {r['mode']} | " + " | ".join(cells) + f" | {pct} | " + " | ".join(sp) + " |")
    if odd:
        lines += ["", "(!) this case took longer than a case of the same op and mode with more tokens (same JSON): "
                  "its number is dominated by something other than the kernel (host work, launch latency or a "
                  "disturbed run) and is not a bandwidth measurement; re-measure before quoting it."]
    return "\n".join(lines)


def ops_plot(doc, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # throughput plots only make sense where the op moves real data: skip the 1-token (latency) cases
    big = [r for r in doc["results"] if "T=1 " not in r["shape"] + " " and "ms" in r["providers"].get("lite", {})]
    ops = list(dict.fromkeys(r["op"] for r in big))
    fig, axes = plt.subplots(len(ops), 1, figsize=(11, 2.6 * len(ops)))
    for ax, op in zip(axes, ops):
        rows = [r for r in big if r["op"] == op]
        provs = [p for p in ORDER if any(p in r["providers"] for r in rows)]
        width = 0.8 / len(provs)
        for i, p in enumerate(provs):
            vals = [(_metric(r["providers"][p])[0] if "ms" in r["providers"].get(p, {}) else 0) for r in rows]
            ax.bar([j + i * width for j in range(len(rows))], vals, width, label=p)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(rows))])
        ax.set_xticklabels([f"{r['shape']}\n{r['mode']}" for r in rows], fontsize=6, rotation=15)
        unit = _metric(rows[0]["providers"]["lite"])[1]
        if unit == "GB/s":
            ax.axhline(doc["meta"]["copy_GBps"], color="k", ls="--", lw=0.8, label="copy ceiling")
        ax.set_ylabel(unit)
        ax.set_title(op, fontsize=9)
        ax.legend(fontsize=6, ncol=6)
    fig.suptitle(f"lite-llama ops vs baselines — {doc['meta']['device']}", fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)


def _compiled_decode_note() -> str:
    """HF's static+compile batch-1 speeds as the compiled-decode results files have them (their runs drift)."""
    import statistics

    parts = []
    seq = os.path.join(RESULTS, "compiled-decode-H200.json")
    if os.path.exists(seq):
        with open(seq) as f:
            row = next((r for r in json.load(f)["results"] if r["provider"] == "hf-static-compile"), None)
        runs = [r["decode_tok_s"] for r in (row or {}).get("runs", [])]
        if runs:
            parts.append(f"{min(runs):.0f}-{max(runs):.0f} over {len(runs)} runs in `compiled-decode-H200.json` "
                         f"(median {statistics.median(runs):.1f})")
    paired = os.path.join(RESULTS, "compiled-decode-paired-H200.json")
    if os.path.exists(paired):
        with open(paired) as f:
            p = json.load(f)["paired"]
        parts.append(f"a median of {p['median_tok_s']['hf-static-compile']:.1f} over {len(p['rounds'])} paired rounds "
                     "in `compiled-decode-paired-H200.json`")
    return (", " + " and ".join(parts)) if parts else ""


def generate_table(doc) -> str:
    m = doc["meta"]
    provs = list(dict.fromkeys(r["provider"] for r in doc["results"]))
    batches = list(dict.fromkeys(r["batch"] for r in doc["results"]))
    get = {(r["batch"], r["provider"]): r for r in doc["results"]}
    # our runtime's default step: "lite-graph" in older files, "lite-graph-default" once the fused step existed
    ours_p = next((p for p in ("lite-graph", "lite-graph-default") if p in provs), None)
    has_hf = any(p.startswith("hf") for p in provs)
    ratio_col = bool(ours_p and has_hf)
    lines = [f"Device: **{m['device']}**, torch {m['torch']}, triton {m['triton']}, transformers {m['transformers']}, "
             f"measured {m['timestamp']}. {m['shape']}; prompt {m['prompt']} tokens, {m['new_tokens']} new tokens "
             f"(EOS ignored). Copy bandwidth measured in the same run: {m['copy_GBps']:.0f} GB/s; weights "
             f"{m['weight_bytes'] / 1e9:.2f} GB, so the batch-1 HBM roofline is "
             f"**{m['roofline_tok_s_batch1']:.0f} tok/s**.", "",
             "Decode tokens/s (all sequences together; higher is better):", "",
             "| batch | " + " | ".join(provs) + (f" | {ours_p} / best HF run here |" if ratio_col else " |"),
             "|---|" + "---|" * (len(provs) + ratio_col)]
    for b in batches:
        vals = [get.get((b, p), {}).get("decode_tok_s") for p in provs]
        hf = [v for p, v in zip(provs, vals) if p.startswith("hf") and v]
        ours = get.get((b, ours_p), {}).get("decode_tok_s")
        ratio = f"{ours / max(hf):.1f}x" if ours and hf else "—"
        lines.append(f"| {b} | " + " | ".join("—" if v is None else f"{v:.0f}" for v in vals)
                     + (f" | {ratio} |" if ratio_col else " |"))
    if ratio_col and "hf-static-compile" not in provs:
        lines += ["", "The HF settings in this run are not HF's fastest: " + ("`hf-static` is the static cache with "
                  "`disable_compile=True`, and " if "hf-static" in provs else "") + "no HF run here uses torch.compile. "
                  "HF's static cache with its own compilation reached 443 tok/s at batch 1 on an H200 (reported in "
                  "issue 15, not in a results file), 393 in `generate-issue10-H200.json`" + _compiled_decode_note()
                  + " (all 128 new tokens), so the last column is not a ratio to HF's best setting."]
    for b in batches:
        liger, plain = (get.get((b, p), {}).get("decode_tok_s") for p in ("hf-liger", "hf-sdpa"))
        proof = get.get((b, "hf-liger"), {}).get("modules_with_liger_forward")
        if liger and plain and proof:
            lines += ["", f"`hf-liger` at batch {b}: {liger:.1f} vs unpatched {plain:.1f} tok/s, with Liger's code "
                      f"verified active in this row ({proof} modules with Liger's forward, rope "
                      f"`{get[(b, 'hf-liger')].get('rope')}`)."]
        elif liger and plain and liger < 1.05 * plain:
            lines += ["", f"`hf-liger` ran at the unpatched speed here (batch {b}: {liger:.1f} vs {plain:.1f} tok/s); "
                      "in issue 10's earlier run Liger reached 48.0 tok/s at batch 1 (not in a results file), so "
                      "hf-lite / hf-liger in this file overstates our lead over Liger."]
    lines += ["", "Prefill ms (prompt of the whole batch):", "", "| batch | " + " | ".join(provs) + " |",
              "|---|" + "---|" * len(provs)]
    for b in batches:
        vals = [get.get((b, p), {}).get("prefill_ms") for p in provs]
        lines.append(f"| {b} | " + " | ".join("—" if v is None else f"{v:.1f}" for v in vals) + " |")
    prof = doc.get("decode_step", {})
    if "1" in prof:
        lines += ["", "One decode step (our runtime, profiled eagerly, timed as a graph replay):", "",
                  "| batch | kernels / step | graph step ms | ms / layer | eager step ms |", "|---|---|---|---|---|"]
        for b, p in prof.items():
            lines.append(f"| {b} | {p['kernels_per_step']} | {p['graph_step_ms']:.3f} | {p['graph_ms_per_layer']:.4f} "
                         f"| {p['eager_step_ms']:.2f} |")
        lines += ["", "GPU time per kernel in one batch-1 step (µs, summed over layers):", "", "| kernel | µs |",
                  "|---|---|"]
        if not any("skinny" in k for k in prof["1"]["gpu_time_us_by_kernel"]):
            lines[-4] = ("GPU time per kernel in one batch-1 step (µs, summed over layers). The `1` profile was meant to "
                         "run our skinny GEMM, but it lists cuBLAS kernels (`nvjet`, `splitKreduce`) and no "
                         "`_skinny_gemm_kernel`: `decode_linear` fell back to F.linear, which it does whenever autograd "
                         "is on (the profiled eager step ran with grad enabled). This kernel list, and the eager step "
                         "time of row `1`, are therefore a cuBLAS step like `1-cublas`; only rows measured inside "
                         "generate() (no_grad) ran the skinny GEMM:")
        lines += [f"| `{k}` | {v:.0f} |" for k, v in prof["1"]["gpu_time_us_by_kernel"].items()]
    elif prof:
        lines += ["", "One decode step (our runtime, profiled eagerly, timed as a graph replay):", "",
                  "| step | kernels / step | graph step ms | ms / layer | eager step ms |", "|---|---|---|---|---|"]
        for b, p in prof.items():
            lines.append(f"| {b} | {p['kernels_per_step']} | {p['graph_step_ms']:.3f} | {p['graph_ms_per_layer']:.4f} "
                         f"| {p['eager_step_ms']:.2f} |")
        for b, p in prof.items():
            lines += ["", f"GPU time per kernel in one `{b}` step (µs, summed over layers):", "", "| kernel | µs |",
                      "|---|---|"]
            lines += [f"| `{k}` | {v:.0f} |" for k, v in p["gpu_time_us_by_kernel"].items()]
    return "\n".join(lines)


def generate_plot(doc, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    provs = list(dict.fromkeys(r["provider"] for r in doc["results"]))
    batches = list(dict.fromkeys(r["batch"] for r in doc["results"]))
    get = {(r["batch"], r["provider"]): r.get("decode_tok_s", 0) for r in doc["results"]}
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(provs)
    for i, p in enumerate(provs):
        ax.bar([j + i * width for j in range(len(batches))], [get.get((b, p), 0) for b in batches], width, label=p)
    ax.set_yscale("log")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(batches))])
    ax.set_xticklabels([f"batch {b}" for b in batches])
    ax.axhline(doc["meta"]["roofline_tok_s_batch1"], color="k", ls="--", lw=0.8, label="batch-1 HBM roofline")
    ax.set_ylabel("decode tokens/s (log)")
    ax.set_title(f"{doc['meta']['shape']} — {doc['meta']['device']}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def write_docs(kind: str, title: str, script: str, plot, table, note: str = "") -> None:
    """docs/benchmarks-<kind>.md and docs/img/<kind>-<gpu>.png from every bench/results/<kind>-*.json."""
    parts = [f"# {title}", "", f"Generated by `python -m bench.plot` from `bench/results/{kind}-*.json` (written on "
             f"the GPU by `python -m {script}`). Do not edit by hand.", ""]
    for path in sorted(glob.glob(os.path.join(HERE, "results", f"{kind}-*.json"))):
        with open(path) as f:
            doc = json.load(f)
        name = os.path.basename(path)[:-5]
        if not doc.get("results"):     # e.g. ops-host-*.json: a `bench_ops --only host` run, no table to draw
            print(f"skipped {os.path.basename(path)}: no results")
            continue
        plot(doc, os.path.join(DOCS, "img", f"{name}.png"))
        parts += [f"## {doc['meta']['device']} (`{os.path.basename(path)}`)", "", f"![{name}](img/{name}.png)", "",
                  table(doc), ""]
    if note:
        parts += [note, ""]
    with open(os.path.join(DOCS, f"benchmarks-{kind}.md"), "w") as f:
        f.write("\n".join(parts))
    print(f"wrote docs/benchmarks-{kind}.md")


# Hand-written, appended to benchmarks-ops.md (the generated tables above time the public calls; the notes quote
# sweeps, L2-clean timings and issue targets): kept in bench/ops_notes.md so a regeneration keeps them.
with open(os.path.join(HERE, "ops_notes.md")) as _f:
    OPS_NOTE = _f.read().rstrip()


def main():
    write_docs("ops", "Op microbenchmarks", "bench.bench_ops", ops_plot, ops_table, note=OPS_NOTE)
    write_docs("generate", "End-to-end generation benchmark", "bench.bench_generate", generate_plot, generate_table)


if __name__ == "__main__":
    main()
