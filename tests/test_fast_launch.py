"""The direct launch path (litekernels/ops/_launch.py) and the public ops' no-autograd fast paths.

CPU: the specialization key is at least as fine as Triton's own (and equal for equal specializations), the
argument layout and launcher conventions, the dispatch logic against a stand-in kernel, the switch, and the
no-grad path of every op giving the autograd path's outputs. GPU: the direct launch gives bit-identical outputs
to Triton's own launch on awkward inputs (misaligned views, arguments equal to 1, odd sizes), is actually taken,
and steps aside for launch hooks, profilers and CUDA-graph capture.
Easy mistakes this file guards against: a key that merges two specializations (a 16-byte aligned and a
misaligned pointer; an int 1 and an int 17; a bool and an int), passing constexprs to launchers that do not take
them, skipping a profiler's hook, and a no-grad path that drops an output or a check.
"""

import os
import subprocess
import sys
import types

import pytest
import torch

import litekernels.ops._launch as L
from litekernels import apply_rope, decode_attention, flash_attention, fused_add_rms_norm, rms_norm, silu_mul
from tests.conftest import HAS_CUDA, INTERPRET, requires_kernels

BF16 = torch.bfloat16


# ---------------------------------------------------------------------------------------------------------
# the key (pure Python)
# ---------------------------------------------------------------------------------------------------------
def key(*args, **kw):
    return L.spec_key(0, args, kw)[0]


def test_key_separates_what_triton_specializes():
    x = torch.zeros(64, dtype=BF16)
    assert key(x) == key(torch.zeros(8, dtype=BF16))  # same dtype, both 16-byte aligned
    assert key(x) != key(x[1:])  # misaligned pointer
    assert key(x[1:]) == key(x[3:])  # both misaligned
    assert key(x) != key(x.half())  # dtype
    assert key(1) != key(17) and key(1) != key(16) and key(16) != key(17)  # == 1, % 16
    assert key(32) == key(48) and key(17) == key(19) and key(0) == key(16)
    assert key(2**31 - 16) != key(2**31) != key(2**63)  # int32 / int64 / uint64
    assert key(1) != key(True) and key(0) != key(False) and key(True) != key(False)  # bool is not int
    assert key(1) != key(1.0) and key(0.5) == key(1e-6)  # floats are fp32 whatever their value
    assert key(None) != key(0)
    assert key(x, BLOCK=16) != key(x, BLOCK=32) and key(x, BLOCK=16) == key(x, BLOCK=16)
    assert key(x, num_warps=4) != key(x, num_warps=8)
    assert L.spec_key(0, (x,), {})[0] != L.spec_key(1, (x,), {})[0]  # device
    assert key(1, 16) != key(16, 1)  # positions matter
    assert L.spec_key(0, ("a string",), {}) is None and L.spec_key(0, (torch.float32,), {}) is None


def test_key_is_at_least_as_fine_as_tritons_specializer():
    """Every pair of sample arguments that Triton's own specializer tells apart gets different keys, and ints,
    tensors, floats and None that it does not tell apart get equal keys (bools are keyed by value on purpose:
    Triton 3.0-3.2 specializes True as 1)."""
    try:
        from triton._C.libtriton import native_specialize_impl
        from triton.backends.compiler import BaseBackend
    except ImportError:
        pytest.skip("this Triton has no native specializer to compare with")

    def spec(a):
        return native_specialize_impl(BaseBackend, a, False, True, True)

    x = torch.zeros(64, dtype=BF16)
    samples = [x, x[1:], x[8:], x.half(), x.float()[1:], torch.zeros(4, dtype=torch.int32), 0, 1, 2, 15, 16, 17,
               -16, -17, 2**31 - 1, 2**31, 2**31 + 16, -(2**31), -(2**31) - 1, 2**63, 2**63 + 1, 2**40, 0.5, 1.0,
               None, True, False]
    for a in samples:
        for b in samples:
            if spec(a) != spec(b):
                assert key(a) != key(b), (a, b, spec(a), spec(b))
            elif not isinstance(a, bool) and not isinstance(b, bool):
                assert key(a) == key(b), (a, b, spec(a))


def test_exact_key_is_finer_than_the_specialization_key():
    """The memo in front of the specialization cache: argument types and exact values (never merges what
    spec_key separates), tensors by dtype and alignment only."""
    x = torch.zeros(64, dtype=BF16)

    def ek(*args, **kw):
        return L._exact_key(0, args, kw)[0]
    assert ek(x, 1) != ek(x, True) and ek(x, 1) != ek(x, 1.0) and ek(x, 32) != ek(x, 48)
    assert ek(x, 5) == ek(torch.ones(8, dtype=BF16), 5) and ek(x, 5) != ek(x[1:], 5) and ek(x, 5) != ek(x.half(), 5)
    assert ek(x, None) != ek(x, 0) and ek(x, B=1) != ek(x, B=2) and ek(x, 7) != ek(7, x)
    assert L._exact_key(0, (x, "text"), {}) is None
    samples = [(x, 1), (x, 17), (x, 16), (x[1:], 16), (x, True), (x, 0.5), (x, None), (x.half(), 16)]
    for a in samples:
        for b in samples:
            if key(*a) != key(*b):
                assert ek(*a) != ek(*b), (a, b)


def test_key_values_replace_tensors_by_pointers():
    x = torch.zeros(8)
    _, vals = L.spec_key(0, (x, 3, 0.5, None, True), {"B": 1})
    assert vals == [x.data_ptr(), 3, 0.5, None, True]


# ---------------------------------------------------------------------------------------------------------
# argument layout and launcher conventions (stand-in objects)
# ---------------------------------------------------------------------------------------------------------
def _fake_kernel(names_constexpr, defaults=None):
    defaults = defaults or {}
    params = [types.SimpleNamespace(name=n, is_constexpr=c) for n, c in names_constexpr]
    src = "def fn({}): pass".format(", ".join(f"{n}={defaults[n]!r}" if n in defaults else n
                                              for n, _ in names_constexpr))
    ns = {}
    exec(src, ns)  # noqa: S102 - a signature with defaults for inspect.signature
    return types.SimpleNamespace(params=params, fn=ns["fn"])


def test_tail_gives_constexprs_in_signature_order_with_defaults():
    k = _fake_kernel([("X", False), ("n", False), ("BLOCK", True), ("FLAG", True), ("MODE", True)],
                     defaults={"MODE": 7})
    st = L._KernelState(k)
    assert L._tail(st, 2, {"FLAG": True, "BLOCK": 64, "num_warps": 4}, "all") == (64, True, 7)
    assert L._tail(st, 2, {"FLAG": True, "BLOCK": 64}, "nonconstexpr") == ()
    assert L._tail(st, 2, {"BLOCK": 64}, "all") is None  # FLAG has no value
    assert L._tail(st, 1, {"n": 3, "BLOCK": 1, "FLAG": 1}, "all") is None  # runtime argument by keyword
    assert L._tail(st, 3, {"FLAG": 1}, "all") is None  # constexpr passed positionally


class CudaLauncher:  # the name _direct_launch recognises; records the C-level call
    def __init__(self, **attrs):
        self.__dict__.update(attrs)
        self.calls = []
        self.launch = lambda *a: self.calls.append(("launch", a))

    def __call__(self, *a):
        self.calls.append(("call", a))


@pytest.mark.parametrize("mode, attrs, expected_fixed", [
    ("passthrough", {}, ("F", "P", None, None, None)),
    ("scratch", {"global_scratch_size": 0, "launch_cooperative_grid": False},
     ("F", False, None, "P", None, None, None)),
    ("scratch_pdl", {"global_scratch_size": 0, "launch_cooperative_grid": False, "launch_pdl": True},
     ("F", False, True, None, "P", None, None, None)),
    ("scratch_pdl_profile", {"global_scratch_size": 0, "profile_scratch_size": 0, "launch_cooperative_grid": False,
                             "launch_pdl": False}, ("F", False, False, None, None, "P", None, None, None)),
])
def test_direct_launch_conventions(mode, attrs, expected_fixed):
    """The C launch function gets what the read version's CudaLauncher.__call__ would pass it."""
    launcher = CudaLauncher(**attrs)
    compiled = types.SimpleNamespace(function="F", packed_metadata="P", run=launcher)
    fn, fixed = L._direct_launch(compiled, mode)
    assert fn is launcher.launch and fixed == expected_fixed


@pytest.mark.parametrize("mode, attrs", [
    (None, {}),
    ("scratch", {"global_scratch_size": 128, "launch_cooperative_grid": False}),  # needs a scratch allocation
    ("scratch_pdl_profile", {"global_scratch_size": 0, "profile_scratch_size": 64, "launch_cooperative_grid": False,
                             "launch_pdl": False}),
])
def test_direct_launch_falls_back_to_run(mode, attrs):
    launcher = CudaLauncher(**attrs)
    compiled = types.SimpleNamespace(function="F", packed_metadata="P", run=launcher)
    fn, fixed = L._direct_launch(compiled, mode)
    assert fn is launcher and fixed == ("F", "P", None, None, None)


# ---------------------------------------------------------------------------------------------------------
# dispatch logic against a stand-in JIT function (no GPU needed)
# ---------------------------------------------------------------------------------------------------------
class FakeJIT:
    def __init__(self):
        self.params = [types.SimpleNamespace(name=n, is_constexpr=c) for n, c in
                       (("X", False), ("n", False), ("BLOCK", True), ("FLAG", True))]

        def fn(X, n, BLOCK, FLAG=False):
            pass
        self.fn = fn
        self.pre_run_hooks = []
        self.used_global_vals = {}
        self.jit_calls = []
        self.run_calls = []
        self.compiled = types.SimpleNamespace(function="F", packed_metadata="P",
                                              run=lambda *a: self.run_calls.append(a))

    def __getitem__(self, grid):
        def call(*args, **kw):
            self.jit_calls.append((grid, args, kw))
            return self.compiled
        return call


@pytest.fixture
def fake_env(monkeypatch):
    monkeypatch.setattr(L, "_SETUP", ("all", "chain", None, FakeJIT))
    monkeypatch.setattr(L, "_on", True)
    monkeypatch.setattr(L, "_get_device", lambda: 0)
    monkeypatch.setattr(L, "_get_stream", lambda device: 1234)
    hooks = {"idle": True}
    monkeypatch.setattr(L, "_hooks_idle", lambda: hooks["idle"])
    monkeypatch.setattr(L, "_states", {})
    return hooks


def test_launch_remembers_and_then_calls_the_launcher(fake_env):
    k = FakeJIT()
    x = torch.zeros(32)
    L.launch(k, (3,), x, 17, BLOCK=16, num_warps=4)
    assert len(k.jit_calls) == 1 and not k.run_calls
    L.launch(k, (3, 2), x, 33, BLOCK=16, num_warps=4)  # same specialization (17 and 33: int32, not % 16)
    assert len(k.jit_calls) == 1
    assert k.run_calls == [(3, 2, 1, 1234, "F", "P", None, None, None, x.data_ptr(), 33, 16, False)]
    L.launch(k, (3,), x[1:], 33, BLOCK=16, num_warps=4)  # misaligned: a new specialization
    L.launch(k, (3,), x, 32, BLOCK=16, num_warps=4)  # divisible by 16
    L.launch(k, (3,), x, 1, BLOCK=16, num_warps=4)  # equal to 1
    L.launch(k, (3,), x, 33, BLOCK=32, num_warps=4)  # another constexpr
    L.launch(k, (3,), x, 33, BLOCK=16, num_warps=8)  # another option
    assert len(k.jit_calls) == 6 and len(k.run_calls) == 1


def test_launch_steps_aside(fake_env, monkeypatch):
    k = FakeJIT()
    x = torch.zeros(32)
    L.launch(k, (1,), x, 5, BLOCK=16)
    fake_env["idle"] = False  # a launch hook (profiler) is set
    L.launch(k, (1,), x, 5, BLOCK=16)
    fake_env["idle"] = True
    k.pre_run_hooks.append(lambda *a, **kw: None)
    L.launch(k, (1,), x, 5, BLOCK=16)
    k.pre_run_hooks.clear()
    L.launch(k, (1,), x, "not a kernel argument type", BLOCK=16)
    L.launch(k, lambda meta: (1,), x, 5, BLOCK=16)  # a callable grid
    L.set_fast_launch(False)
    try:
        L.launch(k, (1,), x, 5, BLOCK=16)
    finally:
        L.set_fast_launch(True)
    assert len(k.jit_calls) == 6 and not k.run_calls
    L.launch(k, (1,), x, 5, BLOCK=16)
    assert len(k.run_calls) == 1


def test_launch_rechecks_triton_globals(fake_env):
    """Triton raises when a global a kernel read at compile time has changed; the direct path leaves that to it."""
    k = FakeJIT()
    g = {"SCALE": 1}
    k.used_global_vals = {("SCALE", id(g)): (1, g)}
    x = torch.zeros(32)
    L.launch(k, (1,), x, 5, BLOCK=16)
    L.launch(k, (1,), x, 5, BLOCK=16)
    g["SCALE"] = 2
    L.launch(k, (1,), x, 5, BLOCK=16)
    assert len(k.jit_calls) == 2 and len(k.run_calls) == 1


def test_nothing_is_remembered_without_a_compiled_kernel(fake_env):
    k = FakeJIT()
    k.compiled = None  # a JIT hook asked Triton to skip the launch
    L.launch(k, (1,), torch.zeros(4), 5, BLOCK=16)
    L.launch(k, (1,), torch.zeros(4), 5, BLOCK=16)
    assert len(k.jit_calls) == 2


def test_switch_from_the_environment():
    """LITEKERNELS_FAST_LAUNCH=0 turns the direct path off at import; the ops still run."""
    code = ("import torch, litekernels.ops._launch as L; from litekernels import rms_norm; "
            "assert not L.fast_launch_enabled(); x = torch.randn(3, 8); w = torch.ones(8); "
            "torch.testing.assert_close(rms_norm(x, w), torch.nn.functional.rms_norm(x, (8,), w, 1e-6)); print('ok')")
    env = dict(os.environ, LITEKERNELS_FAST_LAUNCH="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, check=False,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_interpreter_never_takes_the_direct_path():
    if INTERPRET:
        assert not L.fast_launch_enabled()
    assert L.set_fast_launch(L.fast_launch_enabled()) == L.fast_launch_enabled()


def test_discard_buffer_off_the_gpu_is_fresh():
    x = torch.zeros(3)
    a, b = L.discard_buffer(10, x), L.discard_buffer(10, x)
    assert a.numel() == 10 and a.dtype == torch.float32 and a.data_ptr() != b.data_ptr()


# ---------------------------------------------------------------------------------------------------------
# the no-autograd fast paths give the autograd path's outputs (interpreter or GPU), and keep every check
# ---------------------------------------------------------------------------------------------------------
def _dev():
    return "cuda" if HAS_CUDA else "cpu"


def _both(fn, tensors):
    """fn's outputs without autograd (no_grad) and through the autograd Function (inputs requiring grad)."""
    with torch.no_grad():
        fast = fn(*tensors)
    slow = fn(*[t.detach().requires_grad_(t.is_floating_point()) for t in tensors])
    return fast, slow


def _same(a, b):
    a = a if isinstance(a, (tuple, list)) else (a,)
    b = b if isinstance(b, (tuple, list)) else (b,)
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert not x.requires_grad
        assert x.shape == y.shape and x.dtype == y.dtype and x.stride() == y.stride()
        assert torch.equal(x, y.detach())


@requires_kernels()
@pytest.mark.parametrize("dtype", [torch.float32, BF16])
def test_no_grad_paths_match_autograd_paths(dtype):
    d = _dev()
    x, r = torch.randn(2, 3, 40, device=d, dtype=dtype), torch.randn(2, 3, 40, device=d, dtype=dtype)
    w = torch.randn(40, device=d, dtype=dtype)
    _same(*_both(lambda a, b: rms_norm(a, b, 1e-5), [x[:, 1:], w]))  # a strided view: rows copied
    _same(*_both(lambda a, b, c: fused_add_rms_norm(a, b, c, 1e-5), [x, r, w]))
    g = torch.randn(3, 2, 50, device=d, dtype=dtype)
    _same(*_both(silu_mul, [g, torch.randn_like(g)]))
    _same(*_both(silu_mul, [g[:, :, :25], g[:, :, 25:]]))  # halves of one tensor: row stride 50
    q = torch.randn(2, 5, 4, 8, device=d, dtype=dtype).transpose(1, 2)  # HF's layout: a transposed view
    k = torch.randn(2, 2, 5, 8, device=d, dtype=dtype)
    for cos in (torch.randn(1, 5, 8, device=d, dtype=dtype), torch.randn(5, 8, device=d, dtype=dtype),
                torch.randn(2, 5, 8, device=d, dtype=dtype)):
        _same(*_both(apply_rope, [q, k, cos, torch.randn_like(cos)]))
    qa, ka, va = (torch.randn(1, h, 19, 16, device=d, dtype=dtype) for h in (4, 2, 2))
    _same(*_both(lambda a, b, c: flash_attention(a, b, c, causal=True), [qa, ka, va]))


@requires_kernels()
def test_rope_cos_strides_match_the_expanded_view():
    from litekernels.ops.rope import _cos_strides
    for B in (1, 3):
        for c in (torch.randn(5, 8), torch.randn(1, 5, 8), torch.randn(B, 5, 8), torch.randn(5, 16)[:, :8],
                  torch.randn(8, 5).t()):
            view = (c.unsqueeze(0) if c.dim() == 2 else c)
            view = (view if view.stride(-1) == 1 else view.contiguous()).expand(B, 5, 8)
            t, sb, st = _cos_strides(c, B)
            assert (sb, st) == view.stride()[:2] and t.stride(-1) == 1


@requires_kernels()
def test_decode_attention_fast_checks_keep_results_and_errors():
    d = _dev()
    q = torch.randn(2, 4, 1, 16, device=d)
    kc, vc = torch.randn(2, 2, 24, 16, device=d), torch.randn(2, 2, 24, 16, device=d)
    lengths = torch.tensor([5, 24], device=d, dtype=torch.int32)
    from litekernels import reference
    torch.testing.assert_close(decode_attention(q, kc, vc, lengths),
                               reference.decode_attention(q, kc, vc, lengths), atol=1e-5, rtol=1e-5)
    with pytest.raises(TypeError, match="lengths"):
        decode_attention(q, kc, vc, lengths.float())
    with pytest.raises(ValueError, match="lengths must have shape"):
        decode_attention(q, kc, vc, lengths[:1])
    with pytest.raises(ValueError, match="do not fit"):
        decode_attention(torch.randn(2, 4, 25, 16, device=d), kc, vc, lengths)


@pytest.mark.parametrize("call, exc, words", [
    (lambda: rms_norm(torch.randn(2, 8), torch.randn(7)), ValueError, "weight has 7 elements"),
    (lambda: rms_norm(torch.randn(2, 8).int(), torch.randn(8)), TypeError, "x has dtype"),
    (lambda: fused_add_rms_norm(torch.randn(2, 8), torch.randn(2, 8).half(), torch.randn(8)), TypeError, "residual"),
    (lambda: fused_add_rms_norm(torch.randn(2, 8), torch.randn(3, 8), torch.randn(8)), ValueError, "residual"),
    (lambda: silu_mul(torch.randn(2, 8), torch.randn(2, 9)), ValueError, "shape"),
    (lambda: silu_mul(torch.randn(2, 8), torch.randn(2, 8).half()), TypeError, "dtype"),
    (lambda: silu_mul(torch.randn(()), torch.randn(())), ValueError, "at least one dimension"),
    (lambda: apply_rope(torch.randn(1, 2, 3, 8), torch.randn(1, 1, 3, 8), torch.randn(3, 6), torch.randn(3, 8)),
     ValueError, "cos has shape"),
    (lambda: apply_rope(torch.randn(1, 2, 3, 7), torch.randn(1, 1, 3, 7), torch.randn(3, 7), torch.randn(3, 7)),
     ValueError, "even"),
    (lambda: apply_rope(torch.randn(1, 2, 3, 8), torch.randn(1, 1, 3, 8).half(), torch.randn(3, 8),
                        torch.randn(3, 8)), TypeError, "k has dtype"),
])
def test_compound_checks_keep_the_named_errors(call, exc, words):
    with pytest.raises(exc, match=words):
        call()


# ---------------------------------------------------------------------------------------------------------
# GPU: direct launch vs Triton's launch
# ---------------------------------------------------------------------------------------------------------
def _misaligned(*shape, dtype=BF16):
    """A bf16 tensor whose data pointer is 2 bytes past a 16-byte boundary (not what a fresh tensor gets)."""
    n = 1
    for s in shape:
        n *= s
    t = torch.randn(n + 1, device="cuda", dtype=dtype)[1:].view(*shape)
    assert t.data_ptr() % 16
    return t


def _gpu_cases():
    mis = _misaligned
    c = {}
    c["rms_norm misaligned odd"] = lambda: (lambda x, w: rms_norm(x, w, 1e-5), [mis(3, 37, 77), mis(77)])
    c["rms_norm one row"] = lambda: (lambda x, w: rms_norm(x, w, 1e-5), [mis(1, 1, 16), mis(16)])
    c["fused_add misaligned"] = lambda: (lambda x, r, w: fused_add_rms_norm(x, r, w, 1e-6),
                                         [mis(5, 33), mis(5, 33), mis(33)])
    c["silu_mul one column"] = lambda: (silu_mul, [mis(7, 1), mis(7, 1)])
    c["silu_mul misaligned halves"] = lambda: (lambda a: silu_mul(a[..., :1001], a[..., 1001:]), [mis(3, 2002)])
    c["rope one token one head"] = lambda: (apply_rope, [mis(1, 1, 1, 64), mis(1, 1, 1, 64), mis(1, 64), mis(1, 64)])
    c["rope transposed misaligned"] = lambda: (apply_rope, [mis(2, 13, 3, 80).transpose(1, 2),
                                                            mis(2, 13, 1, 80).transpose(1, 2), mis(1, 13, 80),
                                                            mis(2, 13, 80)])
    c["flash_attention misaligned"] = lambda: (lambda q, k, v: flash_attention(q, k, v, causal=True),
                                               [mis(1, 3, 17, 64), mis(1, 1, 17, 64), mis(1, 1, 17, 64)])
    c["flash_attention one query"] = lambda: (lambda q, k, v: flash_attention(q, k, v, causal=False),
                                              [mis(2, 4, 1, 80), mis(2, 2, 9, 80), mis(2, 2, 9, 80)])
    c["decode_attention"] = lambda: (lambda q, k, v, n: decode_attention(q, k, v, n),
                                     [mis(1, 8, 1, 64), mis(1, 1, 300, 64), mis(1, 1, 300, 64),
                                      torch.tensor([257], device="cuda", dtype=torch.int32)])
    c["decode_attention batch"] = lambda: (lambda q, k, v, n: decode_attention(q, k, v, n),
                                           [mis(3, 4, 2, 128), mis(3, 2, 50, 128), mis(3, 2, 50, 128),
                                            torch.tensor([2, 17, 50], device="cuda", dtype=torch.int64)])
    return c


GPU_CASES = list(_gpu_cases())


def _kernels():
    from litekernels.ops import attention, decode_attention as da, rms_norm as rn, rope, swiglu
    return [rn._rms_norm_fwd_kernel, swiglu._silu_mul_fwd_kernel, rope._rope_kernel, attention._attn_fwd_kernel,
            da._decode_split_kernel, da._decode_combine_kernel]


@pytest.fixture
def count_jit(monkeypatch):
    """Counts launches that went through Triton's JITFunction.run (the normal path)."""
    calls = []
    for k in _kernels():
        original = k.run

        def counted(*a, _orig=original, **kw):
            calls.append(1)
            return _orig(*a, **kw)
        monkeypatch.setattr(k, "run", counted)
    return calls


@pytest.mark.gpu
@pytest.mark.parametrize("case", GPU_CASES)
def test_direct_launch_is_bit_identical_to_triton_launch(case, count_jit):
    if not L.fast_launch_enabled():
        pytest.skip(f"direct launch not supported here (triton {L.triton.__version__})")
    fn, inputs = _gpu_cases()[case]()
    with torch.no_grad():
        previous = L.set_fast_launch(False)
        try:
            want = fn(*inputs)
        finally:
            L.set_fast_launch(previous)
        first = fn(*inputs)  # fills the cache (through Triton)
        count_jit.clear()
        got = fn(*inputs)  # direct
        torch.cuda.synchronize()
    assert not count_jit, f"{len(count_jit)} launch(es) still went through Triton's JIT dispatch"
    _same(want, got)
    _same(want, first)


@pytest.mark.gpu
def test_profiler_session_sees_every_kernel():
    """torch.profiler with CUDA activity: results unchanged and the kernels recorded, direct path or not."""
    x, w = _misaligned(4, 256), _misaligned(256)
    with torch.no_grad():
        want = rms_norm(x, w)
        rms_norm(x, w)
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            got = rms_norm(x, w)
            o = decode_attention(_misaligned(1, 4, 1, 64), _misaligned(1, 1, 64, 64), _misaligned(1, 1, 64, 64),
                                 torch.tensor([64], device="cuda"))
            torch.cuda.synchronize()
    names = " ".join(e.name for e in prof.events())
    assert torch.equal(want, got) and o.isfinite().all()
    assert "_rms_norm_fwd_kernel" in names and "_decode_split_kernel" in names


def _install_enter_hook(fn):
    """Set a Triton launch-enter hook where this version keeps it; returns the undo function."""
    import triton
    ver = tuple(int(p) for p in triton.__version__.split(".")[:2])
    if ver <= (3, 3):
        from triton.compiler.compiler import CompiledKernel
        CompiledKernel.launch_enter_hook = fn
        return lambda: setattr(CompiledKernel, "launch_enter_hook", None)
    from triton import knobs
    hook = knobs.runtime.launch_enter_hook
    if hook is not None and hasattr(hook, "add"):
        hook.add(fn)
        return lambda: hook.remove(fn)
    knobs.runtime.launch_enter_hook = fn
    return lambda: setattr(knobs.runtime, "launch_enter_hook", None)


@pytest.mark.gpu
def test_launch_hook_sees_launches_after_the_cache_is_warm():
    x, w = _misaligned(4, 256), _misaligned(256)
    seen = []
    with torch.no_grad():
        want = rms_norm(x, w)
        rms_norm(x, w)  # the cache is warm: the next call would go direct without the hook
        undo = _install_enter_hook(lambda metadata: seen.append(metadata))
        try:
            got = rms_norm(x, w)
        finally:
            undo()
        torch.cuda.synchronize()
    assert len(seen) == 1 and torch.equal(want, got)


@pytest.mark.gpu
def test_cuda_graph_capture_of_the_no_grad_paths():
    x, r, w = _misaligned(8, 512), _misaligned(8, 512), _misaligned(512)
    q, k = _misaligned(1, 4, 8, 64), _misaligned(1, 2, 8, 64)
    with torch.no_grad():
        eager = (fused_add_rms_norm(x, r, w), flash_attention(q, k, k))
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            fused_add_rms_norm(x, r, w)
            flash_attention(q, k, k)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            captured = (fused_add_rms_norm(x, r, w), flash_attention(q, k, k))
        g.replay()
        torch.cuda.synchronize()
    _same(eager[0], captured[0])
    _same(eager[1], captured[1])
