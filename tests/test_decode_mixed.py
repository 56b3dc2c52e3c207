"""The mixed fused decode step: per projection, fused_config {"<kind>": {"unfused": True}} keeps the unfused ops
for that projection inside the fused step (used where its fused kernel measured slower). Each mix must give the
unfused runtime's greedy tokens and logits (interpreter on the CPU, compiled kernels on CUDA)."""

from __future__ import annotations

import pytest
import torch

from litekernels.ops import decode_fused as DF
from tests.test_decode_fused import _greedy, _tiny

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() or DF.INTERPRET),
                                reason="Triton kernels need CUDA or TRITON_INTERPRET=1")


@pytest.mark.parametrize("mix", [("gate_up", "lm_head"), ("qkv", "o", "down")])
def test_runtime_mixed_step_equals_unfused(mix):
    from litekernels.generation import LlamaRuntime

    model = _tiny("llama")
    prompts = [[5, 6, 7, 8, 9], [12, 13, 14]]
    cfg = {k: {"unfused": True} for k in mix}
    mixed = LlamaRuntime(model, max_batch=2, max_seq_len=32, use_cuda_graph=False, fused_config=cfg)
    assert mixed.fused_decode and mixed._unfused_kinds == set(mix)
    unfused = LlamaRuntime(model, max_batch=2, max_seq_len=32, use_cuda_graph=False, fused_decode=False)
    t_m, l_m = _greedy(mixed, prompts, 8)
    t_u, l_u = _greedy(unfused, prompts, 8)
    assert torch.equal(t_m, t_u), "greedy tokens differ"
    scale = l_u.abs().max().item()
    assert (l_m - l_u).abs().max().item() <= 0.02 * scale  # same tolerance as test_decode_fused's full step


def test_measured_default_only_where_measured(monkeypatch):
    """The GPU default: the measured step on sm_90 for hidden <= 2048 and intermediate <= 8192, else unfused."""
    import litekernels.generation.runtime as runtime_mod
    from litekernels.generation import LlamaRuntime

    model = _tiny("llama")
    rt = LlamaRuntime(model, max_batch=2, max_seq_len=32, use_cuda_graph=False, fused_decode=False)
    if rt.device.type == "cpu":
        assert rt.measured_fused_config() is None  # nothing measured on a CPU
    monkeypatch.setattr(rt, "device", torch.device("cuda", 0))
    for cap, hidden, want in [((9, 0), 40, True), ((9, 0), 4096, False), ((8, 0), 40, False), ((8, 9), 40, False)]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, cap=cap: cap)
        monkeypatch.setattr(rt.config, "hidden_size", hidden)
        cfg = rt.measured_fused_config()
        assert (cfg is not None) == want, (cap, hidden)
        if cfg is not None:
            assert cfg["max_rows"] == 1 and cfg["lm_head"] == {"unfused": True}
            assert bool(cfg.get("PDL")) == runtime_mod.HAS_PDL  # PDL wherever this Triton can launch it
            assert not cfg["gate_up"].get("unfused") and cfg["gate_up"]["TILES"] > 1
            cfg["qkv"]["BLOCK_N"] = 64  # a copy: the table itself is not changed
            assert rt.measured_fused_config()["qkv"]["BLOCK_N"] == 2
    # a Triton without programmatic dependent launch gets the same settings without PDL (else a ValueError)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(rt.config, "hidden_size", 40)
    inter = rt.config.intermediate_size
    monkeypatch.setattr(rt.config, "intermediate_size", 8960)  # e.g. Qwen2.5-1.5B: unmeasured, unfused
    assert rt.measured_fused_config() is None
    monkeypatch.setattr(rt.config, "intermediate_size", inter)
    monkeypatch.setattr(runtime_mod, "HAS_PDL", False)
    cfg = rt.measured_fused_config()
    assert "PDL" not in cfg and not any("PDL" in v for v in cfg.values() if isinstance(v, dict))
    assert cfg["gate_up"]["TILES"] > 1


def test_measured_default_settings_equal_unfused():
    """The launch settings of the GPU default step (LlamaRuntime.MEASURED_FUSED: whole rows in one load, several
    tiles per program for gate/up and down, multiply-reduce body; PDL is a no-op in the interpreter) give the
    unfused step's tokens and logits."""
    from litekernels.generation import LlamaRuntime

    model = _tiny("llama")
    prompts = [[5, 6, 7, 8, 9]]  # batch 1: the measured default's max_rows
    cfg = LlamaRuntime.MEASURED_FUSED[(9, 0)]["config"]
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in cfg.items()}
    mixed = LlamaRuntime(model, max_batch=1, max_seq_len=32, use_cuda_graph=False, fused_decode=True,
                         fused_config=cfg)
    unfused = LlamaRuntime(model, max_batch=1, max_seq_len=32, use_cuda_graph=False, fused_decode=False)
    t_m, l_m = _greedy(mixed, prompts, 8)
    t_u, l_u = _greedy(unfused, prompts, 8)
    assert torch.equal(t_m, t_u), "greedy tokens differ"
    assert (l_m - l_u).abs().max().item() <= 0.02 * l_u.abs().max().item()
