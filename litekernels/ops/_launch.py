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

Prepared calls (`PreparedLaunch`, `PlanCache`): a public op keeps, per set of input facts (shapes, strides, dtypes,
devices and scalar arguments: its "plan key"), a plan holding what depends only on them - checks passed, grid,
strides, constexprs and one `PreparedLaunch` per kernel. A repeated call without autograd builds the key, finds
the plan and runs it: allocate the outputs, call the compiled kernel's launcher with the tensors' data pointers.
A plan exists only for keys whose inputs passed the op's full checks, so a hit needs none. Plans hold no tensors
(outputs are fresh each call; scratch follows `discard_buffer`'s rules). A PreparedLaunch takes the direct path
only under `launch`'s conditions (switch on, no hooks, the current device it was compiled for) and while every
tensor that was 16-byte aligned when it was compiled still is; otherwise it calls `launch` (same results).
Hot plans (`facts_check`, `hot_entry`, `PlanCache.hot`): an op may keep the plan it found by key last and test it
first with one C call (torch's TensorGuards.check: every tensor fact of the key and more) plus its scalar arguments;
a miss takes the key path.

Switches: LITEKERNELS_FAST_LAUNCH=0 in the environment (read at import) turns off both the direct path and the
plan lookup in front of the public ops' checks (the launchers still use their plans: same results); at run time
`set_fast_launch(False)` and `set_prepared_calls(False)` turn off one each.
Caveat: Triton settings that change compilation at run time (TRITON_DEBUG and the like, read by Triton on each
call) are not part of the key; after changing one, call `clear_launch_cache()`.
"""

from __future__ import annotations

import inspect
import math
import operator
import os

import torch

from .._triton import HAS_TRITON, triton
from ..utils import HAS_CUSTOM_OPS, INTERPRET

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
_plans_on = _ENV_ON  # public calls look their plan up before the checks (also under the interpreter)
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


def set_prepared_calls(enabled: bool) -> bool:
    """Turn the public ops' plan lookup (before their checks) on or off at run time; returns the previous state."""
    global _plans_on
    previous = _plans_on
    _plans_on = bool(enabled)
    return previous


def clear_launch_cache() -> None:
    """Forget every remembered compiled kernel (the next call of each specialization goes through Triton) and
    the discard buffers and every op's plans (hot plans included)."""
    _states.clear()
    _discard.clear()
    for cache in _plan_caches:
        cache.plans.clear()
        cache.cool()


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

    has_stages = hasattr(knobs.runtime, "add_stages_inspection_hook")  # a version without it never reads it

    def idle():
        rt = knobs.runtime
        enter, exit_ = rt.launch_enter_hook, rt.launch_exit_hook
        # an empty HookChain calls nothing: Triton would pass it (and the launch metadata it builds) for nothing
        return ((enter is None or (type(enter) is HookChain and not enter.calls))
                and (exit_ is None or (type(exit_) is HookChain and not exit_.calls))
                and (not has_stages or rt.add_stages_inspection_hook is None))
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


def stream_key(device: torch.device):
    """A key for per-stream reuse of a buffer on `device`: its current stream's id on the GPU, "cpu" off it, None
    while that stream captures a CUDA graph (then nothing may be reused or cached)."""
    if device.type != "cuda":
        return "cpu"
    return stream_key_at(device.index if device.index is not None else _get_device())


def stream_key_at(index: int):
    """stream_key of CUDA device `index`, or "cpu" for index -1 (what a CPU tensor's get_device() says): for plans,
    which keep their device's index (only CUDA and CPU tensors get plans), so no device object is built per call."""
    if index < 0:
        return "cpu"
    if _get_stream is None or _capturing is None:  # an older torch: the public (slower) calls
        return None if torch.cuda.is_current_stream_capturing() else torch.cuda.current_stream(index).cuda_stream
    if _capturing():
        return None
    return _get_stream(index)


def discard_buffer(numel: int, like: torch.Tensor) -> torch.Tensor:
    """An fp32 buffer of at least `numel` elements on like's device, for a kernel output the caller ignores.

    Reused per (device, current stream), so consecutive writers are ordered by the stream and a grown buffer's
    old memory is only handed to later work on that stream; never cached while a CUDA graph is captured (the
    graph gets its own from its pool), nor off the GPU. Concurrent writers (two threads on one stream) race
    only on values nobody reads."""
    return discard_at(like.get_device() if like.is_cuda else -1, numel, like.device)


def discard_at(index: int, numel: int, device) -> torch.Tensor:
    """discard_buffer(numel, like) for a `like` on `device` whose CUDA index is `index` (-1: not a CUDA tensor):
    what a plan calls, with both kept from when it was made."""
    if index < 0 or numel > DISCARD_MAX_ELEMENTS:
        return torch.empty(numel, dtype=torch.float32, device=device)
    if _capturing is not None and _get_stream is not None:  # stream_key_at, without its frame
        stream = None if _capturing() else _get_stream(index)
    else:
        stream = stream_key_at(index)
    if stream is None:  # capturing
        return torch.empty(numel, dtype=torch.float32, device=device)
    key = (index, stream)  # raw stream 0 (the default stream) has one id on every device
    buf = _discard.get(key)
    if buf is None or buf.numel() < numel:
        buf = _discard[key] = torch.empty(max(numel, 4096), dtype=torch.float32, device=device)
    return buf


class DiscardSlot:
    """`discard_at(index, numel, device)` for one plan: remembers the buffer it got for the last stream, so a
    repeated call on that stream skips the dict lookup (same rules: a fresh buffer off the GPU, for large requests
    and while a CUDA graph is captured; the remembered one is only reused on the stream it was taken for, whose
    order makes reuse safe, and is kept alive by the plan even after `_discard` replaced it with a larger one)."""
    __slots__ = ("buf", "device", "index", "numel", "stream")

    def __init__(self, index: int, numel: int, device):
        self.index, self.numel, self.device = index, numel, device
        self.stream = self.buf = None

    def __call__(self) -> torch.Tensor:
        index = self.index
        if index < 0:  # off the GPU: a fresh buffer (discard_at's rule, without its frame)
            return torch.empty(self.numel, dtype=torch.float32, device=self.device)
        if self.numel > DISCARD_MAX_ELEMENTS or _capturing is None or _get_stream is None:
            return discard_at(index, self.numel, self.device)
        if _capturing():
            return torch.empty(self.numel, dtype=torch.float32, device=self.device)
        stream = _get_stream(index)
        if stream == self.stream:
            return self.buf
        buf = self.buf = discard_at(index, self.numel, self.device)
        self.stream = stream
        return buf


# ---------------------------------------------------------------------------------------------------------
# prepared calls: what depends only on the inputs' facts, computed once per op and key (module docstring)
# ---------------------------------------------------------------------------------------------------------
MAX_PLANS = 1024  # an op's plans are cleared when they grow past this (many shapes: not a host-bound workload)
_plan_caches: list = []
_grad_enabled = torch.is_grad_enabled
# utils.tracing()'s two tests, called from PlanCache.lookup without its frame (both off where it is always False)
_is_compiling = torch.compiler.is_compiling if HAS_CUSTOM_OPS else (lambda: False)
_modes = getattr(torch._C, "_len_torch_dispatch_stack", None) if HAS_CUSTOM_OPS else None
_and = operator.and_
_data_ptr = torch.Tensor.data_ptr
_gcd = math.gcd  # of all pointers: a multiple of 16 exactly when every one is 16-byte aligned
# what building a plan key from arguments that are not valid tensors may raise (then: the checked path)
LOOKUP_ERRORS = (AttributeError, TypeError, RuntimeError, ValueError, IndexError, ArithmeticError)


def _globals_unchanged(globals_used) -> bool:
    """The globals a kernel read when it was compiled still have those values (else Triton raises: let it)."""
    return all(globals_dict.get(name, _MISSING) == value for (name, _), (value, globals_dict) in globals_used)


# ---------------------------------------------------------------------------------------------------------
# hot plans: the facts of a plan's key tested by one C call (torch's TensorGuards, what torch.compile's guards use)
# ---------------------------------------------------------------------------------------------------------
try:
    from torch._C._dynamo.guards import TensorGuards as _TensorGuards
except Exception:  # pragma: no cover - a torch build without Dynamo's guards
    _TensorGuards = None


def facts_check(*tensors):
    """`check(*ts) -> bool`, True only when ts are as many distinct tensor objects as `tensors`, each with the same
    Python type, dtype, device (the dispatch keys name its type, the index is compared), requires_grad, sizes and
    strides as the tensor in the same position has now, under the same dispatch TLS (inference mode and the like)
    - every tensor fact a plan key holds, plus more. One C call (TensorGuards.check) instead of ~4 attribute reads
    per tensor, a tuple, its hash and its comparison. None where torch has no such check or it fails its self-test
    (`_facts_check_ok`), for arguments that are not plain tensors or Parameters, and for aliased ones."""
    if _TensorGuards is None or not all(type(t) in _TENSOR_TYPES for t in tensors):
        return None  # a subclass may answer .shape and the like from Python: only plain tensors and Parameters
    try:
        check = _TensorGuards(*tensors, dynamic_dims_sizes=[list(t.shape) for t in tensors],
                              dynamic_dims_strides=[list(t.stride()) for t in tensors]).check
        return check if check(*tensors) is True else None  # False for aliased arguments: those never pass
    except Exception:
        return None


_CPU32 = dict(device="cpu", dtype=torch.float32)  # explicit: not the ambient default device/dtype


def _facts_check_ok() -> bool:
    """facts_check accepts the tensors it was made for and rejects every single-fact change a plan key sees (a
    private torch API: its meaning is tested here, on this torch, before any plan relies on it)."""
    try:
        with torch.inference_mode(False):  # (imported under inference mode: test what later plain calls see)
            a, b = torch.zeros(2, 3, **_CPU32), torch.zeros(3, **_CPU32)
            check = facts_check(a, b)
            if check is None or check(torch.ones(2, 3, **_CPU32), b) is not True:
                return False
            others = [torch.zeros(3, 2, **_CPU32), torch.zeros(3, 2, **_CPU32).t(),
                      torch.zeros(2, 3, dtype=torch.float64, device="cpu"), torch.zeros(2, 6, **_CPU32)[:, :3],
                      torch.zeros(2, 3, 2, **_CPU32)[..., 0], torch.zeros(2, 3, device="meta", dtype=torch.float32),
                      torch.zeros(2, 3, requires_grad=True, **_CPU32),
                      torch.nn.Parameter(torch.zeros(2, 3, **_CPU32), requires_grad=False), torch.zeros(6, **_CPU32),
                      b, "a", None]
            return all(check(o, b) is False for o in others) and check(a, a) is False
    except Exception:  # pragma: no cover
        return False


if _TensorGuards is not None and not _facts_check_ok():  # pragma: no cover - another meaning in some torch version
    _TensorGuards = None


def _cold(*args) -> bool:
    return False


COLD = (_cold, None, True, None)  # a hot slot's entry before its first plan: never taken


def hot_entry(plan, run, eps, *tensors):
    """(check, eps, grad_test, run) for a hot slot (PlanCache.hot): a later call with tensors that pass `check`
    (facts_check: every fact of the plan key, requires_grad included) and an eps equal to this one has this plan's
    key, and needs no autograd node when no input required grad here or grad mode is off (grad_test: some did).
    (check, eps, grad_test) is kept on the plan (`plan.hot`; not `run`, which is the plan or its bound method: no
    reference cycle keeps a dropped plan and its buffers alive), rebuilt at most HOT_REBUILDS times when a call with
    the plan's key no longer passes it (a fact outside the key changed: Python type, aliasing, dispatch TLS). COLD
    when none can be made. A slot is one tuple, read and written whole (no torn entry across threads)."""
    entry = plan.hot
    if entry is not None and entry[0](*tensors) and eps == entry[1]:
        return (*entry, run)
    if plan.hot_builds >= HOT_REBUILDS or type(eps) is not float:
        return COLD
    plan.hot_builds += 1
    check = facts_check(*tensors)
    if check is None:
        return COLD
    entry = plan.hot = (check, eps, any(t.requires_grad for t in tensors))
    return (*entry, run)


HOT_REBUILDS = 4


class PlanCache:
    """One op's plans: key (built by `key_of` from the public call's arguments) -> plan (any callable object).

    `lookup` is the public function's first step: the plan for these arguments, or None when the call must take
    the checked path (prepared calls off, a tracer or dispatch mode active, an input needing autograd, arguments
    that are not tensors or not hashable, or no plan yet). The launcher `put`s a plan after the full checks
    passed, so only valid keys have one; a key therefore holds every fact the op's checks read.
    tied_to=(module globals, name): the plans were derived from that module-level cache of settings; when the
    name is rebound (a test swapping the settings), they are dropped."""
    __slots__ = ("plans", "key_of", "tied_to", "source", "hot")

    def __init__(self, key_of, tied_to=None, hot_slots=0):
        self.plans, self.key_of, self.tied_to = {}, key_of, tied_to
        self.source = tied_to[0][tied_to[1]] if tied_to else None
        # hot[i]: entry point i's last plan found by key, as hot_entry's tuple (COLD before one); reset by `cool`
        self.hot = [COLD] * hot_slots
        _plan_caches.append(self)

    def cool(self):
        """Forget the hot entries (with the plans: clear_launch_cache, stale settings)."""
        self.hot[:] = [COLD] * len(self.hot)

    def lookup(self, *args):
        # tracing() inlined (same tests, same order: under Dynamo the first is a constant True)
        if not _plans_on or _is_compiling() or (_modes is not None and _modes()):
            return None
        try:
            if _grad_enabled():  # grad mode off (inference, HF generate): no requires_grad read at all
                for a in args:
                    if getattr(a, "requires_grad", False):
                        return None
            plan = self.plans.get(self.key_of(*args))
        except LOOKUP_ERRORS:
            return None  # not a tensor (or a tracer's proxy), unhashable, no strides (sparse), a 0-d tensor: the
            # checked path, which names the problem
        tied = self.tied_to
        if tied is not None and plan is not None and tied[0][tied[1]] is not self.source:
            return None  # the checked path's `get` drops the stale plans
        return plan

    def get(self, key):
        tied = self.tied_to
        if tied is not None and tied[0][tied[1]] is not self.source:
            self.plans.clear()
            self.cool()
            self.source = tied[0][tied[1]]
        return self.plans.get(key)

    def put(self, key, plan):
        if len(self.plans) >= MAX_PLANS:
            self.plans.clear()
        self.plans[key] = plan
        return plan

    def get_or_build(self, key, build, *args):
        """The plan for key, built as build(*args) (which runs the op's checks) on a miss."""
        plan = self.get(key)
        return plan if plan is not None else self.put(key, build(*args))


def config_key(config):
    """A hashable form of a launcher's config= (None, a tuple/list of settings, or a dict)."""
    if config is None:
        return None
    if isinstance(config, (tuple, list)):
        return tuple(config)
    return tuple(sorted(config.items()))


def contiguous_strides(shape) -> tuple:
    """The strides torch.empty(shape) gets."""
    strides, acc = [], 1
    for n in reversed(tuple(shape)):
        strides.append(acc)
        acc *= max(n, 1)
    return tuple(reversed(strides))


def empty_like_if(like: bool, t: torch.Tensor, shape, dtype) -> torch.Tensor:
    """An output: torch.empty_like(t) when `like` (a plan's precomputed choice: t's layout, or t dense
    contiguous with that shape and dtype, where it is the same tensor with less argument parsing), else
    torch.empty(shape, dtype=dtype, device=t.device)."""
    return torch.empty_like(t) if like else torch.empty(shape, dtype=dtype, device=t.device)


def out_strides(like: bool, t: torch.Tensor, shape) -> tuple:
    """The strides empty_like_if(like, t, shape, ...) will give, for a plan (nothing allocated)."""
    return torch.empty_like(t, device="meta").stride() if like else contiguous_strides(shape)


class PreparedLaunch:
    """`launch(kernel, grid, *tensors, *scalars, **kw)` with all but the tensors fixed; called with the tensors.

    The kernel's tensor parameters must come first in its signature (all of ours do). The first call (and any
    call the direct path must not take) goes through `launch`; once that has compiled and remembered the
    specialization, later calls with the same device and the same alignment of every tensor call its launcher
    directly (module docstring); a call with another one goes through `launch` and is followed from then on."""
    __slots__ = ("kernel", "grid", "scalars", "kw", "direct")

    def __init__(self, kernel, grid: tuple, scalars: tuple, kw: dict):
        self.kernel, self.grid, self.scalars, self.kw = kernel, grid, scalars, kw
        # (device, launcher, grid as 3 ints, fixed args, args after the pointers, alignment masks, misaligned
        # positions, globals read at compile time), for the last specialization this launch was resolved to
        self.direct = None

    def __call__(self, *tensors):
        d = self.direct
        follow = d is None
        if not follow and _on and not self.kernel.pre_run_hooks and _hooks_idle():
            device, fn, grid3, fixed, back, masks, unaligned, globals_used = d
            ptrs = list(map(_data_ptr, tensors))
            # the specialization compiled for this launch: same device, same 16-byte alignment of every tensor;
            # when it was compiled for all of them aligned (the usual case, masks all 15), one gcd tests them all
            if unaligned:
                follow = (_get_device() != device or any(map(_and, ptrs, masks))
                          or not all(ptrs[i] & 15 for i in unaligned))
            else:
                follow = _get_device() != device or _gcd(*ptrs) & 15
            if not follow and (not globals_used or _globals_unchanged(globals_used)):
                fn(*grid3, _get_stream(device), *fixed, *ptrs, *back)
                return
        launch(self.kernel, self.grid, *tensors, *self.scalars, **self.kw)
        if follow and _on:  # first call, or another device or alignment: go direct for this one from now on
            self._resolve(tensors)

    def _resolve(self, tensors):
        """Find what `launch` remembered for this specialization (nothing when it went through Triton only)."""
        state = _states.get(id(self.kernel))
        if state is None or type(self.grid) is not tuple:
            return
        device = _get_device()
        sk = spec_key(device, (*tensors, *self.scalars), self.kw)
        try:
            entry = state.cache.get(sk[0]) if sk is not None else None
        except TypeError:  # an unhashable constexpr value: `launch` never remembers those
            return
        if entry is None:
            return
        fn, fixed, tail = entry
        g = self.grid
        grid3 = (g[0], g[1] if len(g) > 1 else 1, g[2] if len(g) > 2 else 1)
        ptrs = [t.data_ptr() for t in tensors]
        masks = tuple(0 if p & 15 else 15 for p in ptrs)  # aligned ones must stay aligned
        unaligned = tuple(i for i, p in enumerate(ptrs) if p & 15)  # and these misaligned (another kernel)
        self.direct = (device, fn, grid3, fixed, (*self.scalars, *tail), masks, unaligned, state.globals_used)


_pre_run_hooks = operator.attrgetter("pre_run_hooks")


def _picker(positions):
    """positions -> a function taking a sequence to the tuple of its items there (None: the sequence itself)."""
    if positions is None:
        return None
    positions = tuple(positions)
    if len(positions) == 1:
        index = positions[0]
        return lambda s: (s[index],)
    return operator.itemgetter(*positions)


class PreparedLaunches:
    """PreparedLaunch objects called back to back on one list of tensors: member i gets the tensors at positions
    picks[i] (None: all of them). Same effect as calling the members in order (each then takes its own direct or
    Triton path). Once every member has resolved a direct launch for the same device, a call checks the launch
    hooks, the pre-run hooks, the current device, the alignment of every tensor and the kernels' globals once for
    all members, reads each data pointer and the stream once, and calls the launchers; when any of those checks
    fails, the members are called one by one (which is exactly what each would do on its own)."""
    __slots__ = ("launches", "picks", "direct", "sources")

    def __init__(self, *members):
        """members: (PreparedLaunch, positions or None) pairs, in launch order."""
        self.launches = tuple(m[0] for m in members)
        self.picks = tuple(_picker(m[1]) for m in members)
        self.direct = None
        self.sources = None  # the members' `direct` tuples `direct` was combined from

    def __call__(self, *tensors):
        d = self.direct
        if d is not None and _on and _hooks_idle():
            device, members, masks, unaligned, kernels, globals_used = d
            if not any(map(_pre_run_hooks, kernels)):
                ptrs = list(map(_data_ptr, tensors))
                if (_get_device() == device and not any(map(_and, ptrs, masks))
                        and (not unaligned or all(ptrs[i] & 15 for i in unaligned))
                        and (not globals_used or _globals_unchanged(globals_used))):
                    stream = _get_stream(device)
                    for fn, grid3, fixed, pick, back in members:
                        fn(*grid3, stream, *fixed, *(ptrs if pick is None else pick(ptrs)), *back)
                    return
        for member, pick in zip(self.launches, self.picks):
            member(*(tensors if pick is None else pick(tensors)))
        sources = tuple(m.direct for m in self.launches)
        if sources != self.sources:
            self.sources = sources
            self.direct = self._combine(sources, len(tensors))

    def _combine(self, sources, n):
        """One direct tuple for all members (the conjunction of their conditions), or None when a member has no
        direct launch, two were resolved for different devices, or their alignments contradict each other."""
        if any(s is None for s in sources) or len({s[0] for s in sources}) != 1:
            return None
        masks, unaligned, members, globals_used = [0] * n, set(), [], []
        for s, pick in zip(sources, self.picks):
            _, fn, grid3, fixed, back, m, un, g = s
            where = range(n) if pick is None else pick(range(n))
            for j, i in enumerate(where):
                masks[i] |= m[j]
                if j in un:
                    unaligned.add(i)
            members.append((fn, grid3, fixed, pick, back))
            globals_used.extend(g)
        if any(masks[i] for i in unaligned):  # one member needs aligned what another needs misaligned
            return None
        return (sources[0][0], tuple(members), tuple(masks), tuple(sorted(unaligned)),
                tuple(m.kernel for m in self.launches), tuple(globals_used))
