"""Launch settings, input checks and the one place that decides where an op runs.

Where an op runs (`use_triton`):
  * CUDA tensors                                   -> compiled Triton kernels (the product);
  * CPU tensors with TRITON_INTERPRET=1 at import  -> the same Triton kernels, interpreted (tests, CI);
  * anything else                                  -> the plain PyTorch code in `litekernels/reference.py`.
"""

from __future__ import annotations

import functools
import os

import torch

from ._triton import HAS_TRITON, triton

# Read once: Triton decides at decoration time whether @triton.jit functions are interpreted.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Set when this process built the transformers-free model of generation/lite_model.py (the CLI's fast start):
# `import litekernels.patches` (the runtime reads the Architecture table there) then skips its import-time
# registration with transformers, which would import transformers' model code (seconds of CPU);
# apply_lite_llama still registers on use.
DEFER_HF_REGISTRATION = False
MAX_FUSED_BYTES = 65536  # one row of a row-wise kernel must fit one program's registers


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when the Triton kernels can run on these tensors (CUDA, or CPU under the interpreter)."""
    if not HAS_TRITON:
        return False
    t = tensors[0]
    if t.is_cuda:  # an attribute read; `.device` builds a Python object per call (host time, issue #9)
        return True
    return INTERPRET and t.device.type == "cpu"


# torch.library custom ops (litekernels/library.py) need torch >= 2.4; older torch only has the eager path.
HAS_CUSTOM_OPS = hasattr(torch.library, "custom_op") and hasattr(torch.library, "register_autograd")
_dispatch_modes = getattr(torch._C, "_len_torch_dispatch_stack", None)


def tracing() -> bool:
    """True under torch.compile / torch.export, or inside a dispatch mode (FakeTensorMode, make_fx, ...).

    The public functions then call `torch.ops.litekernels.<op>`, which tracers understand; otherwise they take
    the cheaper eager route (reference or autograd Function) to the same launchers. Under Dynamo the first test
    is a constant True, so the second is never traced.
    """
    if not HAS_CUSTOM_OPS:
        return False
    return torch.compiler.is_compiling() or (_dispatch_modes is not None and _dispatch_modes() > 0)


def autocast_dtype(device_type: str):
    """The dtype autocast computes matmuls in on this device type, or None when autocast is off there."""
    try:
        if torch.is_autocast_enabled(device_type):
            return torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError):  # torch < 2.4: no device_type argument, per-device getters
        if device_type == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
        if device_type == "cpu" and torch.is_autocast_cpu_enabled():
            return torch.get_autocast_cpu_dtype()
    return None


def backend_name(device: torch.device | str | None = None) -> str:
    """'triton' (compiled), 'triton-interpreter' or 'reference', for `device` (default: CUDA if present)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    probe = torch.empty(0, device=device)
    if not use_triton(probe):
        return "reference"
    return "triton" if probe.is_cuda else "triton-interpreter"


@functools.lru_cache(maxsize=None)
def num_sms(device_index: int = 0) -> int:
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(device_index).multi_processor_count
    return 4  # interpreter: a few programs keep the partial-sum paths exercised


def row_settings(n_cols: int, element_size: int) -> tuple[int, int]:
    """BLOCK_SIZE (next power of two of the row) and num_warps for a one-row-per-program kernel."""
    block = triton.next_power_of_2(n_cols) if HAS_TRITON else n_cols
    if block * element_size > MAX_FUSED_BYTES:
        raise ValueError(
            f"rows of {n_cols} elements ({block * element_size} bytes padded) exceed the {MAX_FUSED_BYTES}-byte "
            "limit of one program"
        )
    if block >= 32768:
        warps = 32
    elif block >= 8192:
        warps = 16
    elif block >= 2048:
        warps = 8
    else:
        warps = 4
    return block, warps


# ---------------------------------------------------------------------------------------------------------
# input checks: every public op calls these first, so bad input fails here, named, not inside a kernel
# ---------------------------------------------------------------------------------------------------------
def check_tensor(name: str, t, *, ndim: int | tuple[int, ...] | None = None, dtypes=SUPPORTED_DTYPES) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} has dtype {t.dtype}; supported: {names}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if t.dim() not in allowed:
            raise ValueError(f"{name} must have {' or '.join(map(str, allowed))} dimensions, got shape {tuple(t.shape)}")


def _check_same(attr: str, exc, message: str, tensors: dict) -> None:
    """Every non-None tensor's `attr` equals the first one's, else `exc(message.format(...))`."""
    def get(t):
        value = getattr(t, attr)
        return tuple(value) if isinstance(value, torch.Size) else value

    items = [(k, v) for k, v in tensors.items() if v is not None]
    first_name, first = items[0]
    for name, t in items[1:]:
        if get(t) != get(first):
            raise exc(message.format(name=name, value=get(t), first=first_name, first_value=get(first)))


def check_same_device(**tensors: torch.Tensor) -> None:
    _check_same("device", ValueError, "{name} is on {value} but {first} is on {first_value}; put them on one device",
                tensors)


def check_same_dtype(**tensors: torch.Tensor) -> None:
    _check_same("dtype", TypeError, "{name} has dtype {value} but {first} has {first_value}; they must match", tensors)


def check_same_shape(**tensors: torch.Tensor) -> None:
    _check_same("shape", ValueError, "{name} has shape {value} but {first} has {first_value}", tensors)


def unit_last(t: torch.Tensor) -> torch.Tensor:
    """t itself if its last dimension has unit stride (what the kernels index), else a contiguous copy."""
    return t if t.stride(-1) == 1 else t.contiguous()


def rows_of(t: torch.Tensor, n_cols: int):
    """(tensor indexable as rows of n_cols with unit column stride, its row stride, n_rows): t itself when it is
    contiguous (no view built: the launchers' hot path), else as_rows(t)."""
    if n_cols and t.is_contiguous():
        return t, n_cols, t.numel() // n_cols
    t2 = as_rows(t)
    return t2, t2.stride(0), t2.shape[0]


def rows_view(t: torch.Tensor, n_cols: int) -> torch.Tensor:
    """t itself when rows_of(t, n_cols) needs no copy (its rows view has t's data pointer), else a dense copy:
    what a launcher passes so that its kernel reads t's own memory."""
    t2 = rows_of(t, n_cols)[0]
    return t if t2.data_ptr() == t.data_ptr() else t2.view(t.shape)


def on_same_device(a: torch.Tensor, b: torch.Tensor) -> bool:
    """a.device == b.device, cheaper on the common path (two CUDA tensors: compares device indices)."""
    return (a.is_cuda and b.is_cuda and a.get_device() == b.get_device()) or a.device == b.device


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """View x as (rows, last_dim) with unit stride in the last dim; copies only when no such view exists."""
    x = unit_last(x)
    try:
        return x.view(-1, x.shape[-1])
    except RuntimeError:
        return x.reshape(-1, x.shape[-1])
