"""Kernel launches without Triton's per-call dispatch, once a specialization is compiled.

    launch(kernel, grid, *args, **constexprs_and_options)    # same effect as kernel[grid](*args, **...)

`kernel[grid](...)` re-derives on every call what our launchers already know: it binds the arguments, asks
Triton's specializer about each one, builds a string cache key, looks the compiled kernel up and assembles
launch metadata for hooks. On the H200 machine's CPU that costs ~12 µs of the 23.4 µs a bare launch of an
11-argument kernel takes (bench/results/host-profile-H200.json). `launch` makes the first call of each
specialization through `kernel[grid]` and keeps the CompiledKernel it returns; later calls with the same key
call the compiled kernel's launcher directly, with raw device pointers (the launcher then skips its own
`data_ptr()` call and pointer query per tensor).

The key is at least as fine as Triton's specialization in every version listed in `_VERIFIED`: per tensor its
dtype and whether data_ptr() % 16 == 0; per int whether it is 1, divisible by 16 and which of int32 / int64 /
uint64 holds it; floats, bools (by value) and None by type; the constexpr and option keywords by name and
value; the current CUDA device (`spec_key`). In front of that cache sits a memo keyed by the exact values of
the non-tensor arguments (`_exact_key`, finer still and cheaper to build), so a repeated call skips the
per-int classification. The launch convention (which arguments the launcher takes, where the launch hooks
live) was read from each listed version's runtime/jit.py, compiler/compiler.py and backends/nvidia/driver.py.
Any other version, the interpreter (TRITON_INTERPRET=1), ROCm builds, machines without CUDA, kernels that are
not plain @triton.jit functions, arguments of other types, and calls made while a launch hook (a profiler such
as proton), a pre-run hook or a stage-inspection hook is set take the normal `kernel[grid]` path.

Switch: LITEKERNELS_FAST_LAUNCH=0 in the environment (read at import) or `set_fast_launch(False)`.
Caveat: Triton settings that change compilation at run time (TRITON_DEBUG and the like, read by Triton on each
call) are not part of the key; after changing one, call `clear_launch_cache()`.
"""

from __future__ import annotations

import inspect
import operator
import os

import torch

from .._triton import HAS_TRITON, triton
from ..utils import INTERPRET

# Triton versions whose launch path was read (see the module docstring), and how each passes arguments to the
# launcher: "nonconstexpr" (3.0-3.2: the values of the non-constexpr parameters) or "all" (3.3+: every
# parameter's value in signature order, defaults included). `direct`: the CudaLauncher.__call__ body that
# `_direct_launch` reproduces (it then calls the C launch function itself), or None to call `kernel.run`.
_VERIFIED = {
    "3.0.0": ("nonconstexpr", "class", "passthrough"),
    "3.1.0": ("nonconstexpr", "class", "passthrough"),
    "3.2.0": ("nonconstexpr", "class", "passthrough"),
    "3.3.0": ("all", "class", "scratch"),
    "3.3.1": ("all", "class", "scratch"),
    "3.4.0": ("all", "knobs", "scratch_pdl"),
    "3.5.0": ("all", "chain", "scratch_pdl_profile"),
    "3.5.1": ("all", "chain", "scratch_pdl_profile"),
    "3.6.0": ("all", "chain", "scratch_pdl_profile"),
    "3.7.0": ("all", "chain", None),
    "3.7.1": ("all", "chain", None),
    "3.8.0": ("all", "chain", None),
    "3.9.0": ("all", "chain", None),
}
MAX_ENTRIES_PER_KERNEL = 1024  # a kernel's cache is cleared when it grows past this (many dtype/alignment mixes)


def _setup():
    """(args_mode, hook_family, direct_mode, JITFunction) for this process, or None: normal launches only."""
    if not HAS_TRITON or INTERPRET or getattr(torch.version, "hip", None) or not torch.cuda.is_available():
        return None
    conv = _VERIFIED.get(getattr(triton, "__version__", ""))
    if conv is None:
        return None
    try:
        from triton.runtime.jit import JITFunction
    except ImportError:  # pragma: no cover - a layout we did not read
        return None
    return (*conv, JITFunction)


_SETUP = _setup()
_ENV_ON = os.environ.get("LITEKERNELS_FAST_LAUNCH", "1") != "0"
_on = _SETUP is not None and _ENV_ON
_states: dict = {}  # id(kernel) -> _KernelState


def fast_launch_enabled() -> bool:
    """True when `launch` may bypass Triton's dispatch in this process (switch on, verified Triton, not the
    interpreter)."""
    return _on


def set_fast_launch(enabled: bool) -> bool:
    """Turn the direct path on or off at run time (on only where it is supported); returns the previous state."""
    global _on
    previous = _on
    _on = bool(enabled) and _SETUP is not None
    return previous


def clear_launch_cache() -> None:
    """Forget every remembered compiled kernel (the next call of each specialization goes through Triton) and
    the discard buffers."""
    _states.clear()
    _discard.clear()


# ---------------------------------------------------------------------------------------------------------
# launch hooks: where each Triton version keeps them, and whether one is set
# ---------------------------------------------------------------------------------------------------------
def _hooks_idle_class():
    from triton.compiler.compiler import CompiledKernel
    return CompiledKernel.launch_enter_hook is None and CompiledKernel.launch_exit_hook is None


def _hooks_idle_knobs():
    from triton import knobs
    rt = knobs.runtime
    return (rt.launch_enter_hook is None and rt.launch_exit_hook is None
            and getattr(rt, "add_stages_inspection_hook", None) is None)


def _make_hooks_idle_chain():
    from triton import knobs
    from triton.knobs import HookChain

    def idle():
        rt = knobs.runtime
        enter, exit_ = rt.launch_enter_hook, rt.launch_exit_hook
        # an empty HookChain calls nothing: Triton would pass it (and the launch metadata it builds) for nothing
        return ((enter is None or (type(enter) is HookChain and not enter.calls))
                and (exit_ is None or (type(exit_) is HookChain and not exit_.calls))
                and getattr(rt, "add_stages_inspection_hook", None) is None)
    return idle


def _hooks_idle_fn(family):
    if family == "class":
        return _hooks_idle_class
    if family == "knobs":
        return _hooks_idle_knobs
    return _make_hooks_idle_chain()


_hooks_idle = _hooks_idle_fn(_SETUP[1]) if _SETUP is not None else (lambda: False)


# ---------------------------------------------------------------------------------------------------------
# the key
# ---------------------------------------------------------------------------------------------------------
_I32_MIN, _I32_MAX = -(2 ** 31), 2 ** 31 - 1
_TENSOR_TYPES = frozenset((torch.Tensor, torch.nn.Parameter))  # a set test is cheaper than isinstance


def _wide_int_class(a: int) -> str:
    """Class of an int outside int32 (Triton passes it as uint64 when in [2**63, 2**64), else int64)."""
    if 2 ** 63 <= a <= 2 ** 64 - 1:
        return "uD" if a % 16 == 0 else "uN"
    return "lD" if a % 16 == 0 else "lN"


def spec_key(device: int, args: tuple, kw: dict):
    """(key, values) for a launch, or None when an argument has a type we do not specialize (then the normal path
    runs). values: args with every tensor replaced by its data_ptr(). Each argument adds to the key one element
    that fixes its kind (a tensor's dtype; a string class for ints, floats and bools; None), tensors one more
    (16-byte alignment), so keys of different argument kinds never compare equal."""
    key = [device, tuple(kw.items())]
    add = key.append
    vals = list(args)
    i = 0
    for a in args:
        t = type(a)
        if t is int:
            if a == 1:
                add("1")
            elif _I32_MIN <= a <= _I32_MAX:
                add("N" if a & 15 else "D")
            else:
                add(_wide_int_class(a))
        elif t in _TENSOR_TYPES or (t is not float and t is not bool and a is not None
                                    and isinstance(a, torch.Tensor)):
            p = a.data_ptr()
            vals[i] = p
            add(a.dtype)
            add(not p & 15)
        elif t is float:
            add("f")
        elif t is bool:
            add("T" if a else "F")
        elif a is None:
            add(None)
        else:
            return None
        i += 1
    return tuple(key), vals


# ---------------------------------------------------------------------------------------------------------
# per kernel: the argument layout and the remembered compiled kernels
# ---------------------------------------------------------------------------------------------------------
class _KernelState:
    """cache: specialization key (spec_key) -> (launch function, fixed arguments, constexpr tail); exact: the
    same entries under the exact key of `_exact_key` (cheaper to build), filled on use."""
    __slots__ = ("cache", "exact", "params", "defaults", "globals_used", "kernel")

    def __init__(self, kernel):
        self.kernel = kernel
        self.cache = {}
        self.exact = {}
        self.params = [(p.name, bool(p.is_constexpr)) for p in kernel.params]
        sig = inspect.signature(kernel.fn)
        self.defaults = {n: p.default for n, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}
        self.globals_used = ()


def _tail(state: _KernelState, n_args: int, kw: dict, args_mode: str):
    """Values the launcher takes after the positional ones, or None when this call's layout is not one we
    reproduce (a runtime argument passed by keyword or left to its default, a constexpr passed positionally)."""
    params = state.params
    if n_args > len(params) or any(is_c for _, is_c in params[:n_args]):
        return None
    names = {n for n, _ in params}
    for name in kw:
        if name in names and not dict(params)[name]:
            return None
    tail = []
    for name, is_constexpr in params[n_args:]:
        if not is_constexpr:
            return None
        if name in kw:
            value = kw[name]
        elif name in state.defaults:
            value = state.defaults[name]
        else:
            return None
        tail.append(value)
    return tuple(tail) if args_mode == "all" else ()


def _direct_launch(compiled, mode):
    """(callable, fixed arguments after the stream) to launch `compiled`: its CudaLauncher's C function where
    the launcher's __call__ was read (mode, see _VERIFIED) and needs no scratch buffers, else `compiled.run`."""
    function, packed = compiled.function, compiled.packed_metadata
    launcher = compiled.run
    hooks = (None, None, None)  # launch_metadata, enter hook, exit hook: only used while no hook is set
    inner = getattr(launcher, "launch", None)
    if mode is None or inner is None or type(launcher).__name__ != "CudaLauncher":
        return launcher, (function, packed, *hooks)
    if mode == "passthrough":  # 3.0-3.2: __call__(*args) is self.launch(*args)
        return inner, (function, packed, *hooks)
    if getattr(launcher, "global_scratch_size", 1) != 0:
        return launcher, (function, packed, *hooks)
    if mode == "scratch":  # 3.3
        return inner, (function, launcher.launch_cooperative_grid, None, packed, *hooks)
    if mode == "scratch_pdl":  # 3.4
        return inner, (function, launcher.launch_cooperative_grid, launcher.launch_pdl, None, packed, *hooks)
    if mode == "scratch_pdl_profile" and getattr(launcher, "profile_scratch_size", 1) == 0:  # 3.5-3.6
        return inner, (function, launcher.launch_cooperative_grid, launcher.launch_pdl, None, None, packed, *hooks)
    return launcher, (function, packed, *hooks)


def _remember(kernel, key, compiled, n_args, kw):
    if compiled is None or hasattr(compiled, "result"):  # skipped by a JIT hook, or an asynchronous compile
        return
    if not all(hasattr(compiled, a) for a in ("function", "packed_metadata", "run")):
        return
    state = _states.get(id(kernel))
    if state is None:
        try:
            state = _states[id(kernel)] = _KernelState(kernel)
        except (AttributeError, TypeError, ValueError):
            return
    args_mode, _, direct_mode, _ = _SETUP
    tail = _tail(state, n_args, kw, args_mode)
    if tail is None:
        return
    state.globals_used = tuple(getattr(kernel, "used_global_vals", {}).items())
    if len(state.cache) >= MAX_ENTRIES_PER_KERNEL:
        state.cache.clear()
        state.exact.clear()
    fn, fixed = _direct_launch(compiled, direct_mode)
    state.cache[key] = (fn, fixed, tail)


_MISSING = object()
_get_device = getattr(torch._C, "_cuda_getDevice", None)
_get_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)


_layouts: dict = {}  # tuple of argument types -> (tensor positions, getter of the other arguments) or None


def _layout(types: tuple):
    """Where the tensors are in an argument list of these types, and an itemgetter of everything else; None when
    a type is one spec_key does not handle."""
    tensors, others = [], []
    for i, t in enumerate(types):
        if t in _TENSOR_TYPES or (isinstance(t, type) and issubclass(t, torch.Tensor)):
            tensors.append(i)
        elif t in (int, float, bool, type(None)):
            others.append(i)
        else:
            return None
    if len(_layouts) > 4096:
        _layouts.clear()
    if not others:
        getter = _no_others
    elif len(others) == 1:
        index = others[0]
        getter = lambda a: (a[index],)  # noqa: E731 - a one-element tuple, like itemgetter's for several
    else:
        getter = operator.itemgetter(*others)
    lay = _layouts[types] = (tuple(tensors), getter)
    return lay


def _no_others(args):
    return ()


def _exact_key(device, args, kw):
    """(key, values) like spec_key, but with every int, float, bool and None by value (finer than Triton's
    specialization, so it can stand in front of the spec_key cache) and the argument types as one tuple: built
    mostly by C-level calls. None for an unsupported argument type."""
    types = tuple(map(type, args))
    lay = _layouts.get(types)
    if lay is None:
        lay = _layout(types)
        if lay is None:
            return None
    tensors, others = lay
    vals = list(args)
    tk = []
    add = tk.append
    for i in tensors:
        a = args[i]
        p = a.data_ptr()
        vals[i] = p
        add(a.dtype)
        add(not p & 15)
    return (device, tuple(kw.items()), types, others(args), tuple(tk)), vals


def launch(kernel, grid, *args, **kw):
    """Launch `kernel` on `grid` (a tuple of 1-3 ints) like `kernel[grid](*args, **kw)`; see the module
    docstring. Positional args are the kernel's runtime arguments in order; keywords its constexprs and launch
    options (num_warps, num_stages, ...)."""
    if not _on or type(kernel) is not _SETUP[3] or type(grid) is not tuple or _get_stream is None:
        kernel[grid](*args, **kw)
        return
    device = _get_device()
    ek = _exact_key(device, args, kw)
    if ek is None:
        kernel[grid](*args, **kw)
        return
    ekey, vals = ek
    state = _states.get(id(kernel))
    key = None
    try:
        entry = state.exact.get(ekey) if state is not None else None
        if entry is None:
            key = spec_key(device, args, kw)[0]
            entry = state.cache.get(key) if state is not None else None
            if entry is not None:
                if len(state.exact) >= MAX_ENTRIES_PER_KERNEL:
                    state.exact.clear()
                state.exact[ekey] = entry
    except TypeError:  # an unhashable constexpr value: Triton's path handles (or rejects) it
        kernel[grid](*args, **kw)
        return
    if entry is None:  # first call of this specialization: Triton compiles (or finds) it, we keep it
        _remember(kernel, key, kernel[grid](*args, **kw), len(args), kw)
        return
    if kernel.pre_run_hooks or not _hooks_idle():
        kernel[grid](*args, **kw)
        return
    for (name, _), (value, globals_dict) in state.globals_used:
        if globals_dict.get(name, _MISSING) != value:  # Triton raises for this; let it
            kernel[grid](*args, **kw)
            return
    fn, fixed, tail = entry
    n = len(grid)
    fn(grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1, _get_stream(device), *fixed, *vals, *tail)


# ---------------------------------------------------------------------------------------------------------
# a buffer for kernel outputs that nobody reads (rstd / lse of a forward without autograd)
# ---------------------------------------------------------------------------------------------------------
DISCARD_MAX_ELEMENTS = 1 << 20  # larger requests get a fresh buffer (their calls are not host-bound)
_discard: dict = {}
_capturing = getattr(torch._C, "_cuda_isCurrentStreamCapturing", None)


def discard_buffer(numel: int, like: torch.Tensor) -> torch.Tensor:
    """An fp32 buffer of at least `numel` elements on like's device, for a kernel output the caller ignores.

    Reused per (device, current stream), so consecutive writers are ordered by the stream and a grown buffer's
    old memory is only handed to later work on that stream; never cached while a CUDA graph is captured (the
    graph gets its own from its pool), nor off the GPU. Concurrent writers (two threads on one stream) race
    only on values nobody reads."""
    if not like.is_cuda or numel > DISCARD_MAX_ELEMENTS or _capturing is None or _get_stream is None or _capturing():
        return torch.empty(numel, dtype=torch.float32, device=like.device)
    index = like.get_device()
    key = (index, _get_stream(index))
    buf = _discard.get(key)
    if buf is None or buf.numel() < numel:
        buf = _discard[key] = torch.empty(max(numel, 4096), dtype=torch.float32, device=like.device)
    return buf
