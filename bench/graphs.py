"""CUDA-graph capture and L2-clean timing for benchmarks: time kernels without the host work of launching them,
and without the cost that triton.testing.do_bench's cache flush leaves behind.

do_bench flushes L2 between runs by zeroing a 256 MB buffer. That leaves L2 (50 MB on an H100/H200) full of dirty
lines, and the timed kernel's first reads evict them: up to 50 MB of write-back lands inside its time. For a
memory-bound kernel that reads tens of MB (decode attention over a long cache) this inflates the time by up to
(read + 50 MB) / read. `clean_ms` flushes by READING a buffer instead (the lines it leaves are clean), and
`chained_graph_ms` replays several back-to-back calls over distinct inputs with no flush at all (the steady state
of a decode loop); both are reported next to do_bench so the difference shows in the results.
"""

from __future__ import annotations

import statistics

import torch


def capture(fn, warmup_calls: int = 3) -> torch.cuda.CUDAGraph:
    """fn captured in a CUDA graph, after `warmup_calls` eager calls on a side stream (JIT, autotuning and lazy
    allocations happen there, outside the capture); replayed once before it is returned."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(warmup_calls):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    return graph


_FLUSH: dict = {}


def _read_flush(device) -> None:
    """Evict L2 with clean lines: read (sum) a 256 MB buffer; nothing dirty is left for the next kernel."""
    buf = _FLUSH.get(device)
    if buf is None:
        buf = _FLUSH[device] = torch.ones(64 << 20, dtype=torch.float32, device=device)
    buf.sum()


def clean_ms(fn, warmup: int = 10, rep: int = 100, quantiles=(0.2, 0.5, 0.8)) -> list[float]:
    """[p20, median, p80] ms of fn, each run after a read-only L2 flush, timed with CUDA events around fn alone.
    The flush (tens of microseconds of GPU work) is queued before fn, so fn's host work overlaps it, as in
    do_bench: this is GPU time, not host time."""
    device = torch.device("cuda", torch.cuda.current_device())
    for _ in range(warmup):
        fn()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(rep)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(rep)]
    for i in range(rep):
        _read_flush(device)
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    times = sorted(s.elapsed_time(e) for s, e in zip(starts, ends))
    return [times[min(len(times) - 1, int(q * len(times)))] for q in quantiles]


def chained_graph_ms(fns, rounds: int = 20) -> float:
    """Median ms per call of a CUDA graph that runs every fn of `fns` back to back (one call each, typically the
    same op over distinct inputs whose total is several times L2, so no call reads what the previous left in
    L2): the launch gaps inside a graph, no flush, as the kernels run in a replayed decode step."""
    def all_calls():
        for fn in fns:
            fn()
    graph = capture(all_calls)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    per_call = []
    for _ in range(rounds):
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        per_call.append(start.elapsed_time(end) / len(fns))
    return statistics.median(per_call)
