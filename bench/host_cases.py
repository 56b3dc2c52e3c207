"""The tiny inputs and public-op calls that the host-overhead benchmarks time (bench_ops --only host,
host_profile.py on the GPU, host_python.py on the CPU): one definition, so their rows stay comparable."""

from __future__ import annotations

import torch


def host_inputs(device="cuda", dtype=torch.bfloat16) -> dict:
    """Inputs small enough that a call's cost is its host work: 4 rows of a 1B layer, a 4-token attention."""
    x = torch.randn(4, 2048, dtype=dtype, device=device)
    return dict(
        x=x, r=torch.randn_like(x), w=torch.randn(2048, dtype=dtype, device=device),
        g=torch.randn(4, 8192, dtype=dtype, device=device), u=torch.randn(4, 8192, dtype=dtype, device=device),
        q=torch.randn(1, 32, 4, 64, dtype=dtype, device=device), k=torch.randn(1, 8, 4, 64, dtype=dtype, device=device),
        cos=torch.randn(1, 4, 64, dtype=dtype, device=device), sin=torch.randn(1, 4, 64, dtype=dtype, device=device),
        qd=torch.randn(1, 32, 1, 64, dtype=dtype, device=device),
        kc=torch.randn(1, 8, 256, 64, dtype=dtype, device=device), vc=torch.randn(1, 8, 256, 64, dtype=dtype, device=device),
        lengths=torch.full((1,), 200, dtype=torch.int32, device=device))


def op_calls(t: dict) -> dict:
    """name -> zero-argument call of each public op on host_inputs()'s tensors (imports resolved at call time,
    after any patching a benchmark does)."""
    from litekernels import (
        apply_rope,
        decode_attention,
        flash_attention,
        fused_add_rms_norm,
        rms_norm,
        silu_mul,
    )

    return {
        "rms_norm": lambda: rms_norm(t["x"], t["w"], 1e-5),
        "fused_add_rms_norm": lambda: fused_add_rms_norm(t["x"], t["r"], t["w"], 1e-5),
        "apply_rope": lambda: apply_rope(t["q"], t["k"], t["cos"], t["sin"]),
        "silu_mul": lambda: silu_mul(t["g"], t["u"]),
        "flash_attention": lambda: flash_attention(t["q"], t["k"], t["k"], causal=True),
        "decode_attention": lambda: decode_attention(t["qd"], t["kc"], t["vc"], t["lengths"]),
    }
