"""How fast the `lite-llama generate` command starts: time to the first token, total wall time and CPU time.

    python -m bench.cli_start                       # 5 runs of the CLI in this checkout, bundled model, 1 new token
    python -m bench.cli_start --compare /other/checkout --compare-label before --runs 5
                                                    # runs alternate between the two checkouts (same load)

Each run is a fresh `python -m litekernels generate "What is the capital of France?" --max-new-tokens 1` started
from `--root` (a checkout: its own litekernels/ is imported, not the installed one). Measured per run: the wall
time until the first byte of the answer reaches stdout (after the `>>> prompt` line), the total wall time, the
child's user + system CPU time (os.wait4), and the 1-minute load average before the run. On a shared machine the
wall times follow the load; CPU time is the steadier figure (it still grows somewhat with load: caches and
memory bandwidth are shared too). The first run converts the GGUF file if the cache is empty: run once before
measuring second runs (`--warm`, the default, does that and does not count it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "What is the capital of France?"


def one_run(root: str, extra: list[str], env: dict) -> dict:
    cmd = [sys.executable, "-m", "litekernels", "generate", PROMPT, "--max-new-tokens", "1", *extra]
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    header = f">>> {PROMPT}\n".encode()
    seen = b""
    first = None
    fd = p.stdout.fileno()
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        seen += chunk
        if first is None and len(seen) > len(header) and seen.startswith(header):
            first = time.perf_counter() - t0
    err = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({p.returncode}):\n{err.decode(errors='replace')[-2000:]}")
    return {"first_token_s": first, "wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime,
            "user_s": usage.ru_utime, "sys_s": usage.ru_stime, "load_before": load,
            "load_after": os.getloadavg()[0], "answer": seen[len(header):].decode(errors="replace").strip()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default=HERE, help="checkout whose litekernels/ runs (default: this one)")
    ap.add_argument("--label", default="this checkout")
    ap.add_argument("--compare", default=None, help="a second checkout; its runs alternate with --root's")
    ap.add_argument("--compare-label", default="compared checkout")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--no-warm", dest="warm", action="store_false", help="count the first run too")
    ap.add_argument("--json", default=None, help="write the runs here (default: bench/results/cli-start-cpu.json, "
                                                  "appending to what is there)")
    ap.add_argument("cli_args", nargs="*", help="extra CLI arguments after --, e.g. -- --threads 2")
    args = ap.parse_args(argv)
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the CLI's own path on a CPU: the reference ops
    roots = [(args.root, args.label)] + ([(args.compare, args.compare_label)] if args.compare else [])
    envs = {root: dict(env, PYTHONPATH=root) for root, _ in roots}  # the checkout's package, not an installed one
    if args.warm:
        for root, _ in roots:
            one_run(root, args.cli_args, envs[root])
    runs = {root: [] for root, _ in roots}
    for _ in range(args.runs):
        for root, _ in roots[::-1]:
            runs[root].append(one_run(root, args.cli_args, envs[root]))
    series = []
    for root, label in roots:
        rs = runs[root]
        print(f"{label} ({root}): {' '.join(args.cli_args)}")
        print("  first token s | wall s | cpu s (user+sys) | load avg before")
        for r in rs:
            print(f"  {r['first_token_s']:13.2f} | {r['wall_s']:6.2f} | {r['cpu_s']:16.2f} | {r['load_before']:.2f}")
        med = {k: statistics.median(r[k] for r in rs) for k in ("first_token_s", "wall_s", "cpu_s", "load_before")}
        print(f"  median: first token {med['first_token_s']:.2f} s, wall {med['wall_s']:.2f} s, "
              f"cpu {med['cpu_s']:.2f} s, load {med['load_before']:.2f}")
        series.append({"label": label, "root": root, "cli_args": args.cli_args,
                       "time": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": rs, "median": med})
    path = args.json or os.path.join(HERE, "bench", "results", "cli-start-cpu.json")
    doc = {"meta": {"device": "cpu", "cores": len(os.sched_getaffinity(0)), "machine": platform.processor() or
                    platform.machine(), "python": platform.python_version()}, "series": []}
    if os.path.exists(path):
        with open(path) as f:
            doc = json.load(f)
    doc["series"].extend(series)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
