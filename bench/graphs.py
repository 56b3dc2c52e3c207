"""CUDA-graph capture for benchmarks: time kernels without the host work of launching them."""

from __future__ import annotations

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
