"""nn.Module wrappers over the functional ops, with the parameter names of Hugging Face's Llama modules."""

from __future__ import annotations

import torch
from torch import nn

from . import functional as LF


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
    # gate and up exist only inside this call, so the SiLU*mul backward may write their gradients over them
    # (inplace_backward: two tokens x intermediate buffers fewer at the backward; bench/train_memory_audit.py).
    # Anything else that uses them through autograd raises instead (version counters); a forward hook on
    # gate_proj/up_proj that keeps their outputs would see them overwritten by the backward.
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(LF.silu_mul(self.gate_proj(x), self.up_proj(x), inplace_backward=True))
