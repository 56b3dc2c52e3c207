"""nn.Module wrappers over the functional ops, with the parameter names of Hugging Face's Llama modules."""

from __future__ import annotations

import torch
from torch import nn

from . import functional as LF
from .ops.swiglu import silu_mul_linear
from .utils import autocast_dtype, tracing


def _local(t):
    """A replicated DTensor parameter (transformers' tensor parallel) as the plain tensor the kernels read."""
    return t.to_local() if hasattr(t, "to_local") else t


class LiteRMSNorm(nn.Module):
    """Drop-in for LlamaRMSNorm: same `weight` parameter and `variance_epsilon`."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.variance_epsilon = eps

    # Also the forward apply_lite_llama binds to Hugging Face's RMSNorm modules (same attribute names).
    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return LF.rms_norm(hidden_states, _local(self.weight), self.variance_epsilon)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.variance_epsilon}"


class LiteMLP(nn.Module):
    """Drop-in for LlamaMLP: gate_proj / up_proj / down_proj, activation fused as silu(gate) * up."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False, device=None, dtype=None):
        super().__init__()
        kw = dict(bias=bias, device=device, dtype=dtype)
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, **kw)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, **kw)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, **kw)

    # Also the forward apply_lite_llama binds to Hugging Face's MLP modules (same attribute names).
    # Training memory (bench/train_memory_audit.py): gate and up exist only inside this call, so the SiLU*mul
    # backward writes their gradients over them (two tokens x intermediate buffers fewer at the backward), and
    # when down_proj is a plain nn.Linear, silu(gate) * up is not kept for the backward but recomputed there
    # (silu_mul_linear: one tokens x intermediate activation less per layer; not while torch.compile traces,
    # where the registered ops are used). Anything else that uses gate or up through autograd raises instead
    # (version counters); a forward hook on gate_proj/up_proj that keeps their outputs would see them
    # overwritten by the backward.
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_proj(x), self.up_proj(x)
        down = self.down_proj
        if not tracing() and gate.requires_grad and _plain_linear(down) \
                and autocast_dtype(gate.device.type) is None:  # autocast: nn.Linear's dtype would differ
            return silu_mul_linear(gate, up, _local(down.weight), None if down.bias is None else _local(down.bias))
        return down(LF.silu_mul(gate, up, inplace_backward=True))


def _plain_linear(m) -> bool:
    """An nn.Linear whose call is exactly F.linear: no subclass (LoRA, quantized), no hooks of any kind (accelerate
    offloading, PEFT, user hooks), no replaced forward, plain tensor weights (not DTensor)."""
    return (type(m) is nn.Linear and not (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                                          or getattr(m, "_backward_pre_hooks", None))
            and "forward" not in m.__dict__ and not _global_module_hooks()
            and type(m.weight) in (nn.Parameter, torch.Tensor))


def _global_module_hooks() -> bool:
    g = torch.nn.modules.module
    return any(getattr(g, name, None) for name in ("_global_forward_hooks", "_global_forward_pre_hooks",
                                                   "_global_backward_hooks", "_global_backward_pre_hooks"))
