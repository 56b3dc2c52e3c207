"""Prepared calls (litekernels/ops/_launch.py: PlanCache, PreparedLaunch): a repeated public call reuses the plan
of its input facts and skips the checks; it must never reuse the wrong one.

Each op is called, without autograd, on a sequence of inputs that differ from the previous ones in one fact only
(16-byte alignment: a view at offset 1 element; strides; dtype; shape; device index where there are two GPUs),
twice each (the second call takes the plan), and every result is compared with the PyTorch reference.
Easy mistakes guarded against: a key that misses a fact the launch reads (strides, dtype, a scalar argument such
as eps or scale), a plan stored for input that fails the checks (a later call would skip the error), a plan taken
while autograd or a tracer needs the slow path, the direct launch used for a pointer whose alignment differs from
the one its kernel was compiled for, and plans that outlive the settings they were derived from.
"""

import types

import pytest
import torch

import litekernels.ops._launch as L
from litekernels import apply_rope, decode_attention, flash_attention, fused_add_rms_norm, reference, rms_norm, silu_mul
from litekernels.ops import attention as A
from litekernels.ops import decode_attention as DA
from litekernels.ops import rms_norm as RN
from tests.conftest import HAS_CUDA, requires_kernels

BF16 = torch.bfloat16
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), BF16: dict(atol=2e-2, rtol=2e-2), torch.float16: dict(atol=2e-3,
                                                                                                         rtol=2e-3)}


def _offset(t, k=1):
    """The same values as t, in a tensor whose data pointer is k elements past a fresh allocation (misaligned)."""
    flat = torch.empty(t.numel() + k, dtype=t.dtype, device=t.device)
    out = flat[k:].view(t.shape)
    out.copy_(t)
    return out


def _strided(t):
    """The same values as t, with a row stride twice the row length (a non-contiguous view)."""
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    out = wide[..., : t.shape[-1]]
    out.copy_(t)
    return out


def _close(got, want):
    got = got if isinstance(got, (tuple, list)) else (got,)
    want = want if isinstance(want, (tuple, list)) else (want,)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        torch.testing.assert_close(g.float(), w.float(), **TOL[g.dtype])


def _variants(make, device):
    """(name, inputs) pairs: an fp32 base; one input at a time misaligned, then strided; bf16; another shape; the
    base again."""
    base = make(torch.float32, 0, device)
    out = [("base", base)]
    for i, t in enumerate(base):
        if t.is_floating_point():
            out.append((f"input {i} offset 1", [*base[:i], _offset(t), *base[i + 1:]]))
            if t.dim() > 1:
                out.append((f"input {i} strided", [*base[:i], _strided(t), *base[i + 1:]]))
    return out + [("bf16", make(BF16, 0, device)), ("other shape", make(torch.float32, 1, device)), ("base again", base)]


def _rms(dtype, bigger, d):
    return [torch.randn(3 + bigger, 40, dtype=dtype, device=d), torch.randn(40, dtype=dtype, device=d)]


def _fused(dtype, bigger, d):
    return [torch.randn(2, 3 + bigger, 24, dtype=dtype, device=d), torch.randn(2, 3 + bigger, 24, dtype=dtype,
                                                                              device=d),
            torch.randn(24, dtype=dtype, device=d)]


def _silu(dtype, bigger, d):
    return [torch.randn(3, 50 + bigger, dtype=dtype, device=d), torch.randn(3, 50 + bigger, dtype=dtype, device=d)]


def _rope(dtype, bigger, d):
    T = 5 + bigger
    return [torch.randn(2, 4, T, 8, dtype=dtype, device=d), torch.randn(2, 2, T, 8, dtype=dtype, device=d),
            torch.randn(1, T, 8, dtype=dtype, device=d), torch.randn(1, T, 8, dtype=dtype, device=d)]


def _attn(dtype, bigger, d):
    return [torch.randn(1, 4, 9 + bigger, 16, dtype=dtype, device=d),
            torch.randn(1, 2, 9 + bigger, 16, dtype=dtype, device=d),
            torch.randn(1, 2, 9 + bigger, 16, dtype=dtype, device=d)]


def _decode(dtype, bigger, d):
    return [torch.randn(2, 4, 1, 16, dtype=dtype, device=d), torch.randn(2, 2, 24 + bigger, 16, dtype=dtype, device=d),
            torch.randn(2, 2, 24 + bigger, 16, dtype=dtype, device=d),
            torch.tensor([5, 24 + bigger], dtype=torch.int32, device=d)]


OPS = {
    "rms_norm": (_rms, lambda x, w: rms_norm(x, w, 1e-5), lambda x, w: reference.rms_norm(x, w, 1e-5)),
    "fused_add_rms_norm": (_fused, lambda x, r, w: fused_add_rms_norm(x, r, w, 1e-5),
                           lambda x, r, w: reference.fused_add_rms_norm(x, r, w, 1e-5)),
    "silu_mul": (_silu, silu_mul, reference.silu_mul),
    "apply_rope": (_rope, apply_rope, reference.apply_rope),
    "flash_attention": (_attn, lambda q, k, v: flash_attention(q, k, v, causal=True),
                        lambda q, k, v: reference.attention(q, k, v, causal=True)),
    "decode_attention": (_decode, decode_attention, reference.decode_attention),
}


def _ref(ref, inputs):
    """The reference in float64 (the op's dtype after), on contiguous copies."""
    out = ref(*[t.double().contiguous() if t.is_floating_point() else t for t in inputs])
    dtype = inputs[0].dtype
    return tuple(o.to(dtype) for o in out) if isinstance(out, tuple) else out.to(dtype)


def _dev():
    return "cuda" if HAS_CUDA else "cpu"


@requires_kernels()
@pytest.mark.parametrize("op", list(OPS))
def test_inputs_differing_in_one_fact_never_share_a_wrong_plan(op):
    make, call, ref = OPS[op]
    torch.manual_seed(0)
    with torch.no_grad():
        for name, inputs in _variants(make, _dev()):
            want = _ref(ref, inputs)
            for _ in range(2):  # the second call takes the plan the first one made
                try:
                    _close(call(*inputs), want)
                except AssertionError as e:
                    raise AssertionError(f"{op}, {name}: {e}") from None


@requires_kernels()
def test_a_repeated_call_skips_the_checks_and_a_changed_one_does_not(monkeypatch):
    calls = []
    real = RN._check
    monkeypatch.setattr(RN, "_check", lambda *a: calls.append(1) or real(*a))
    L.clear_launch_cache()  # no plan yet
    x, w = torch.randn(3, 40, device=_dev()), torch.randn(40, device=_dev())
    with torch.no_grad():
        rms_norm(x, w, 1e-5)
        n = len(calls)
        assert n >= 1
        rms_norm(x, w, 1e-5)
        assert len(calls) == n, "the second call did not take the plan"
        _close(rms_norm(x, w, 1e-4), reference.rms_norm(x.double(), w.double(), 1e-4).float())  # eps is keyed
        assert len(calls) > n
    x.requires_grad_(True)
    n = len(calls)
    y = rms_norm(x, w, 1e-5)  # autograd needed: the checked path and an autograd node
    assert len(calls) > n and y.requires_grad


@requires_kernels()
def test_bad_input_raises_every_time_even_after_a_good_call():
    d = _dev()
    x, w = torch.randn(3, 8, device=d), torch.randn(8, device=d)
    q, kc = torch.randn(2, 4, 1, 16, device=d), torch.randn(2, 2, 24, 16, device=d)
    n = torch.tensor([5, 24], dtype=torch.int32, device=d)
    with torch.no_grad():
        rms_norm(x, w)
        decode_attention(q, kc, kc, n)
        for _ in range(2):
            with pytest.raises(ValueError, match="weight has 7 elements"):
                rms_norm(x, torch.randn(7, device=d))
            with pytest.raises(TypeError, match="residual"):
                fused_add_rms_norm(x, x.half(), w)
            with pytest.raises(ValueError, match="lengths must have shape"):
                decode_attention(q, kc, kc, n[:1])
            with pytest.raises(TypeError, match="attn_mask must be a bool"):
                flash_attention(q, kc, kc, attn_mask=torch.ones(24, device=d))
            with pytest.raises(TypeError, match="must be a torch.Tensor"):
                rms_norm(x.tolist(), w)


@requires_kernels()
def test_strided_weight_and_lengths_are_read_right():
    """The kernels read weight and lengths with unit stride: strided ones are copied first (wrong before)."""
    d = _dev()
    x, w = torch.randn(3, 40, device=d), torch.randn(80, device=d)[::2]
    with torch.no_grad():
        for _ in range(2):
            _close(rms_norm(x, w, 1e-5), reference.rms_norm(x.double(), w.double(), 1e-5).float())
        q, kc, vc = torch.randn(2, 4, 1, 16, device=d), torch.randn(2, 2, 24, 16, device=d), torch.randn(2, 2, 24, 16,
                                                                                                           device=d)
        n = torch.tensor([5, 0, 24, 0], dtype=torch.int64, device=d)[::2]
        for _ in range(2):
            _close(decode_attention(q, kc, vc, n), reference.decode_attention(q, kc, vc, n.contiguous()))


@requires_kernels()
def test_no_plan_is_taken_while_tracing():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
            self.ops.append(func)
            return func(*args, **(kwargs or {}))

    x, w = torch.randn(3, 40, device=_dev()), torch.randn(40, device=_dev())
    with torch.no_grad():
        rms_norm(x, w)
        rms_norm(x, w)
        assert RN._FWD_PLANS.lookup(x, w, 1e-6) is not None
        with Seen() as mode:
            assert RN._FWD_PLANS.lookup(x, w, 1e-6) is None
            y = rms_norm(x, w)  # the registered op, which the mode sees
        assert any("litekernels" in str(f) for f in mode.ops)
    _close(y, reference.rms_norm(x.double(), w.double(), 1e-6).float())
    assert RN._FWD_PLANS.lookup("not a tensor", w, 1e-6) is None


@requires_kernels()
def test_plans_follow_the_settings_they_came_from(monkeypatch):
    d = _dev()
    q, k = torch.randn(1, 2, 5, 16, device=d), torch.randn(1, 1, 5, 16, device=d)
    with torch.no_grad():
        flash_attention(q, k, k)
        flash_attention(q, k, k)
        assert A._FWD_PLANS.lookup(q, k, k, True, None, None) is not None
        monkeypatch.setattr(A, "_settings_cache", {})  # what tests/test_gpu_tiles.py does
        assert A._FWD_PLANS.lookup(q, k, k, True, None, None) is None
        qd, n = q[:, :, :1], torch.tensor([5], device=d)
        decode_attention(qd, k, k, n)
        assert DA._CALLS.lookup(qd, k, k, n, None, None) is not None
        monkeypatch.setattr(DA, "_plans", {})
        assert DA._CALLS.lookup(qd, k, k, n, None, None) is None
        L.clear_launch_cache()
        assert not RN._FWD_PLANS.plans


def test_switch_turns_the_lookup_off(monkeypatch):
    monkeypatch.setattr(L, "_plans_on", True)
    cache = L.PlanCache(lambda x: (x.shape, x.dtype))
    x = torch.zeros(3)
    cache.put(cache.key_of(x), "plan")
    with torch.no_grad():
        assert cache.lookup(x) == "plan"
        assert L.set_prepared_calls(False) is True
        try:
            assert cache.lookup(x) is None
        finally:
            L.set_prepared_calls(True)
        assert cache.lookup(torch.zeros(3, dtype=torch.float64)) is None
    assert cache.lookup(x.requires_grad_(True)) is None  # autograd needed
    L._plan_caches.remove(cache)


# ---------------------------------------------------------------------------------------------------------
# PreparedLaunch against a stand-in JIT function (no GPU needed)
# ---------------------------------------------------------------------------------------------------------
class FakeJIT:
    """Stands in for a @triton.jit kernel (X, Y, n, BLOCK constexpr): records Triton launches and direct ones."""

    def __init__(self):
        self.params = [types.SimpleNamespace(name=n, is_constexpr=c) for n, c in
                       (("X", False), ("Y", False), ("n", False), ("BLOCK", True))]

        def fn(X, Y, n, BLOCK):
            pass
        self.fn = fn
        self.pre_run_hooks = []
        self.used_global_vals = {}
        self.jit_calls, self.run_calls = [], []
        self.compiled = types.SimpleNamespace(function="F", packed_metadata="P",
                                              run=lambda *a: self.run_calls.append(a))

    def __getitem__(self, grid):
        return lambda *args, **kw: self.jit_calls.append((grid, args, kw)) or self.compiled


@pytest.fixture
def fake_env(monkeypatch):
    monkeypatch.setattr(L, "_SETUP", ("all", "chain", None, FakeJIT))
    monkeypatch.setattr(L, "_on", True)
    device = {"index": 0, "idle": True}
    monkeypatch.setattr(L, "_get_device", lambda: device["index"])
    monkeypatch.setattr(L, "_get_stream", lambda index: 1000 + index)
    monkeypatch.setattr(L, "_hooks_idle", lambda: device["idle"])
    monkeypatch.setattr(L, "_states", {})
    return device


def test_prepared_launch_goes_direct_only_for_what_was_compiled(fake_env):
    k = FakeJIT()
    x, y = torch.zeros(64), torch.zeros(64)
    p = L.PreparedLaunch(k, (3, 2), (17,), dict(BLOCK=16))
    p(x, y)
    assert len(k.jit_calls) == 1 and not k.run_calls
    p(x, y)
    assert k.run_calls == [(3, 2, 1, 1000, "F", "P", None, None, None, x.data_ptr(), y.data_ptr(), 17, 16)]
    fake_env["idle"] = False  # a launch hook
    p(x, y)
    fake_env["idle"] = True
    k.pre_run_hooks.append(lambda *a, **kw: None)
    p(x, y)
    k.pre_run_hooks.clear()
    L.set_fast_launch(False)
    try:
        p(x, y)
    finally:
        L.set_fast_launch(True)
    assert len(k.jit_calls) == 4 and len(k.run_calls) == 1
    p(x, y)
    assert len(k.run_calls) == 2
    fake_env["index"] = 1  # another current device: Triton's path, then direct for that device
    p(x, y)
    assert len(k.jit_calls) == 5
    p(x, y)
    assert len(k.run_calls) == 3 and k.run_calls[-1][3] == 1001


def test_prepared_launch_follows_the_alignment(fake_env):
    """A pointer aligned differently from the last resolved call never reaches that call's compiled code."""
    k = FakeJIT()
    x, y = torch.zeros(64), torch.zeros(64)
    p = L.PreparedLaunch(k, (1,), (5,), dict(BLOCK=16))
    p(x, y)
    p(x, y)
    assert len(k.jit_calls) == 1 and len(k.run_calls) == 1
    p(x[1:], y)  # misaligned X: another specialization, compiled through Triton's path
    assert len(k.jit_calls) == 2 and len(k.run_calls) == 1
    p(x[1:], y)  # now direct, with the misaligned one
    assert len(k.run_calls) == 2 and k.run_calls[-1][9] == x[1:].data_ptr()
    p(x, y)  # aligned again: launch's own cache has that specialization (direct there), then followed here
    assert len(k.jit_calls) == 2 and len(k.run_calls) == 3
    p(x, y)
    assert len(k.run_calls) == 4 and p.direct[5] == (15, 15) and p.direct[6] == ()
    assert len(L._states[id(k)].cache) == 2


def test_prepared_launch_rechecks_triton_globals(fake_env):
    k = FakeJIT()
    g = {"SCALE": 1}
    k.used_global_vals = {("SCALE", id(g)): (1, g)}
    x = torch.zeros(32)
    p = L.PreparedLaunch(k, (1,), (5,), dict(BLOCK=16))
    p(x, x)
    p(x, x)
    g["SCALE"] = 2
    p(x, x)
    assert len(k.jit_calls) == 2 and len(k.run_calls) == 1


# ---------------------------------------------------------------------------------------------------------
# GPU: alignment and device specializations are real there
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("op", list(OPS))
def test_gpu_aligned_and_misaligned_calls_in_both_orders(op):
    """Same shapes and strides, only the 16-byte alignment differs: one plan, two compiled specializations."""
    make, call, ref = OPS[op]
    torch.manual_seed(1)
    L.clear_launch_cache()
    with torch.no_grad():
        base = make(BF16, 0, "cuda")
        mis = [_offset(t) if t.is_floating_point() else t for t in base]
        assert any(t.data_ptr() % 16 for t in mis)
        for order in ((base, mis), (mis, base)):
            L.clear_launch_cache()
            for inputs in (*order, *order):
                _close(call(*inputs), _ref(ref, inputs))


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("op", list(OPS))
def test_gpu_same_facts_on_another_device(op):
    make, call, ref = OPS[op]
    torch.manual_seed(2)
    with torch.no_grad():
        for index in (0, 1, 0, 1):
            with torch.cuda.device(index):
                inputs = make(BF16, 0, f"cuda:{index}")
                got = call(*inputs)
                assert got[0].device.index == index if isinstance(got, tuple) else got.device.index == index
                _close(got, _ref(ref, inputs))


# ---------------------------------------------------------------------------------------------------------
# PreparedLaunches (decode's split + combine as one call object) against stand-in JIT functions
# ---------------------------------------------------------------------------------------------------------
def _fake_jit3():
    """A FakeJIT with three tensor parameters: (X, Y, Z, n, BLOCK constexpr)."""
    k = FakeJIT()
    k.params = [types.SimpleNamespace(name=n, is_constexpr=c) for n, c in
                (("X", False), ("Y", False), ("Z", False), ("n", False), ("BLOCK", True))]

    def fn(X, Y, Z, n, BLOCK):
        pass
    k.fn = fn
    return k


def _pair():
    """Two fake kernels chained like decode's split (all tensors) and combine (tensors 1 and 2)."""
    a, b = _fake_jit3(), FakeJIT()
    pa, pb = L.PreparedLaunch(a, (4, 2), (7,), dict(BLOCK=16)), L.PreparedLaunch(b, (3,), (9,), dict(BLOCK=32))
    return a, b, L.PreparedLaunches((pa, None), (pb, (1, 2)))


def test_prepared_launches_equal_their_members_called_in_order(fake_env):
    a, b, chain = _pair()
    x, y, z = torch.zeros(64), torch.zeros(64), torch.zeros(64)
    chain(x, y, z)  # both through Triton's path (first call), then resolved
    # the first fake kernel takes (X, Y, Z, n, BLOCK) and gets x, y, z; the second (X, Y, n, BLOCK) gets y, z
    assert [c[1] for c in a.jit_calls] == [(x, y, z, 7)] and [c[1] for c in b.jit_calls] == [(y, z, 9)]
    assert chain.direct is not None
    chain(x, y, z)
    assert a.run_calls == [(4, 2, 1, 1000, "F", "P", None, None, None, x.data_ptr(), y.data_ptr(), z.data_ptr(), 7,
                            16)]
    assert b.run_calls == [(3, 1, 1, 1000, "F", "P", None, None, None, y.data_ptr(), z.data_ptr(), 9, 32)]


def test_prepared_launches_take_the_members_paths_when_a_check_fails(fake_env):
    a, b, chain = _pair()
    x, y, z = torch.zeros(64), torch.zeros(64), torch.zeros(64)
    chain(x, y, z)
    chain(x, y, z)
    assert len(a.run_calls) == len(b.run_calls) == 1
    fake_env["idle"] = False  # a launch hook: Triton's path for both
    chain(x, y, z)
    fake_env["idle"] = True
    assert len(a.jit_calls) == len(b.jit_calls) == 2
    b.pre_run_hooks.append(lambda *args, **kw: None)  # a pre-run hook on the second kernel only
    chain(x, y, z)
    b.pre_run_hooks.clear()
    assert len(a.run_calls) == 2 and len(b.jit_calls) == 3  # the first member still goes direct on its own
    chain(x, y, z)
    assert len(a.run_calls) == 3 and len(b.run_calls) == 2
    chain(x, y[1:], z)  # y misaligned: read by both kernels, each resolves its misaligned specialization
    assert len(a.jit_calls) == 3 and len(b.jit_calls) == 4
    chain(x, y[1:], z)
    assert len(a.run_calls) == 4 and len(b.run_calls) == 3 and b.run_calls[-1][9] == y[1:].data_ptr()
    chain(x, y, z)  # aligned again: `launch` has that specialization remembered, the members follow it
    chain(x, y, z)
    assert len(a.jit_calls) == 3 and len(b.jit_calls) == 4 and b.run_calls[-1][9] == y.data_ptr()
    fake_env["index"] = 1  # another current device
    chain(x, y, z)
    assert len(a.jit_calls) == 4 and len(b.jit_calls) == 5
    chain(x, y, z)
    assert a.run_calls[-1][3] == 1001 and b.run_calls[-1][3] == 1001


def test_prepared_launches_recheck_both_kernels_globals(fake_env):
    a, b, chain = _pair()
    g = {"SCALE": 1}
    b.used_global_vals = {("SCALE", id(g)): (1, g)}
    x = torch.zeros(32)
    chain(x, x, x)
    chain(x, x, x)
    assert len(a.run_calls) == len(b.run_calls) == 1
    g["SCALE"] = 2  # Triton raises for this on the second kernel: its own path must run
    chain(x, x, x)
    assert len(b.jit_calls) == 2 and len(b.run_calls) == 1


def test_prepared_launches_with_contradicting_alignments_never_combine(fake_env):
    """A tensor that one member resolved as aligned and another as misaligned (two calls with different views):
    no combined direct call, each member keeps deciding alone."""
    _, _, chain = _pair()
    x, y, z = torch.zeros(64), torch.zeros(64), torch.zeros(64)
    pa, pb = chain.launches
    pa(x, y, z)
    pb(y[1:], z)
    pa(x, y, z)
    pb(y[1:], z)
    assert pa.direct is not None and pb.direct is not None
    assert chain._combine((pa.direct, pb.direct), 3) is None


@requires_kernels()
def test_zero_dim_and_zero_head_dim_inputs_keep_their_errors():
    """The plan key reads q.shape[-1] for the default scale: a 0-d or head_dim-0 input must still reach the named
    checks (not an IndexError or ZeroDivisionError from the key)."""
    d = _dev()
    k = torch.randn(1, 2, 5, 16, device=d)
    with torch.no_grad():
        for _ in range(2):
            with pytest.raises((TypeError, ValueError)):
                flash_attention(torch.tensor(1.0, device=d), k, k)
            with pytest.raises(ValueError, match="head_dim 0"):
                flash_attention(torch.randn(1, 2, 5, 0, device=d), k[..., :0], k[..., :0])
            with pytest.raises((TypeError, ValueError)):
                decode_attention(torch.tensor(1.0, device=d), k, k, torch.tensor([5], device=d))
    assert A.DEFAULT_SCALES[64] == 0.125 and A.DEFAULT_SCALES[0] is None


def test_discard_at_reuses_per_device_and_stream_and_never_while_capturing(monkeypatch):
    """The plans' discard buffer (discard_at: device index and device kept by the plan), with the CUDA stream
    queries stood in for: one buffer per (index, stream), grown when too small, fresh while capturing, off the GPU
    (index -1) and above DISCARD_MAX_ELEMENTS."""
    state = {"capturing": False, "stream": 7}
    monkeypatch.setattr(L, "_capturing", lambda: state["capturing"])
    monkeypatch.setattr(L, "_get_stream", lambda index: state["stream"] + 100 * index)
    monkeypatch.setattr(L, "_discard", {})
    a = L.discard_at(0, 10, "cpu")
    assert L.discard_at(0, 10, "cpu") is a and L.discard_at(0, 4096, "cpu") is a
    assert L.discard_at(1, 10, "cpu") is not a  # another device index
    state["stream"] = 8
    b = L.discard_at(0, 10, "cpu")
    assert b is not a and L.discard_at(0, 10, "cpu") is b  # another stream
    big = L.discard_at(0, 5000, "cpu")
    assert big is not b and big.numel() >= 5000 and L.discard_at(0, 10, "cpu") is big  # grown, then reused
    state["capturing"] = True
    assert L.discard_at(0, 10, "cpu") is not big
    state["capturing"] = False
    assert L.discard_at(-1, 10, "cpu") is not L.discard_at(-1, 10, "cpu")
    n = L.DISCARD_MAX_ELEMENTS + 1
    assert L.discard_at(0, n, "cpu") is not L.discard_at(0, n, "cpu")
    assert L.stream_key_at(-1) == "cpu" and L.stream_key_at(0) == 8 and L.stream_key_at(1) == 108


@requires_kernels()
def test_a_plan_made_without_autograd_serves_the_autograd_path_too():
    """The no-autograd entry points (norm, add_norm, infer) and the autograd Functions share one plan per key: after
    plan-hit calls under no_grad, a call that needs autograd gets the saved rstd / lse right (gradients match)."""
    d = _dev()
    torch.manual_seed(3)
    x, r, w = torch.randn(3, 40, device=d), torch.randn(3, 40, device=d), torch.randn(40, device=d)
    q, k = torch.randn(1, 2, 7, 16, device=d), torch.randn(1, 1, 7, 16, device=d)
    cases = [
        (lambda x, r, w: rms_norm(x, w, 1e-5), lambda x, r, w: reference.rms_norm(x, w, 1e-5), (x, r, w)),
        (lambda x, r, w: sum(fused_add_rms_norm(x, r, w, 1e-5)),
         lambda x, r, w: sum(reference.fused_add_rms_norm(x, r, w, 1e-5)), (x, r, w)),
        (lambda q, k: flash_attention(q, k, k), lambda q, k: reference.attention(q, k, k, causal=True), (q, k)),
    ]
    for fn, ref, inputs in cases:
        with torch.no_grad():
            fn(*inputs)
            fn(*inputs)  # the plan's no-autograd entry point
        got_in = [t.clone().requires_grad_(True) for t in inputs]
        want_in = [t.double().requires_grad_(True) for t in inputs]
        out, want = fn(*got_in), ref(*want_in)
        grad = torch.randn_like(out)
        out.backward(grad)
        want.backward(grad.double())
        _close(out.detach(), want.detach().float())
        for g, wg in zip(got_in, want_in):
            assert (g.grad is None) == (wg.grad is None)  # rms_norm leaves r alone
            if wg.grad is not None:
                torch.testing.assert_close(g.grad, wg.grad.float(), atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------------------
# second trim: the public functions look their plans up inline (rms_norm, fused_add_rms_norm) or through one
# module function (rope._plan_of, attention._plan_of) instead of PlanCache.lookup; same tests, same key
# ---------------------------------------------------------------------------------------------------------
class _PassThrough(torch.utils._python_dispatch.TorchDispatchMode):
    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@requires_kernels()
def test_inlined_lookups_use_the_same_key_and_tests_as_plan_cache_lookup(monkeypatch):
    """Each public function, once its launcher stored a plan under _fwd_key, takes it (its launcher function is not
    called again) exactly where PlanCache.lookup would return it (same object), and not while prepared calls are
    off, a dispatch mode is active or an input needs autograd; a stale attention plan (settings replaced) is not
    taken; a bad argument still gets its named error."""
    from litekernels.ops import rope as P

    calls = []

    def spy(module, name):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, **kw: (calls.append(name), real(*a, **kw))[1])

    spy(RN, "rms_norm_fwd")
    spy(P, "rope_fwd")
    spy(A, "attention_fwd")
    d = _dev()
    x, r, w = torch.randn(3, 40, device=d), torch.randn(3, 40, device=d), torch.randn(40, device=d)
    q, k = torch.randn(1, 2, 5, 16, device=d), torch.randn(1, 1, 5, 16, device=d)
    cos, sin = torch.randn(1, 5, 16, device=d), torch.randn(1, 5, 16, device=d)
    cases = [  # (lookup args of PlanCache.lookup, public call of the first input)
        (RN._FWD_PLANS, lambda x: (x, w, 1e-5), lambda x: rms_norm(x, w, 1e-5), x),
        (RN._FWD_PLANS, lambda x: (x, w, 1e-5, r), lambda x: fused_add_rms_norm(x, r, w, 1e-5), x),
        (P._FWD_PLANS, lambda q: (q, k, cos, sin), lambda q: apply_rope(q, k, cos, sin), q),
        (P._FWD_PLANS, lambda q: (q, k, cos, sin), lambda q: P.apply_rope_unchecked(q, k, cos, sin), q),
        (A._FWD_PLANS, lambda q: (q, k, k, True, None, None), lambda q: flash_attention(q, k, k), q),
        (A._FWD_PLANS, lambda q: (q, k, k, True, 0.25, None), lambda q: A.flash_attention_unchecked(q, k, k, True, 0.25), q),
        (A._FWD_PLANS, lambda q: (q, k, k, False, 0.3, None), lambda q: flash_attention(q, k, k, causal=False, scale=0.3), q),
    ]

    def hit(call, first):
        n = len(calls)
        out = call(first)
        return len(calls) == n, out

    for cache, args, call, first in cases:
        with torch.no_grad():
            want = call(first)
            assert cache.lookup(*args(first)) is not None
            took, got = hit(call, first)
            assert took
            _close(got, want)
            assert L.set_prepared_calls(False) is True
            try:
                assert not hit(call, first)[0]
            finally:
                L.set_prepared_calls(True)
            with _PassThrough():
                assert not hit(call, first)[0]
            other = first.to(torch.float64)
            assert cache.lookup(*args(other)) is None
        assert hit(call, first)[0]  # grad mode on, nothing requires grad: no autograd node needed
        assert not hit(call, first.clone().requires_grad_(True))[0]
    with monkeypatch.context() as m:
        m.setattr(A, "_settings_cache", {})  # what tests/test_gpu_tiles.py does
        with torch.no_grad():
            assert not hit(lambda q: flash_attention(q, k, k), q)[0]
    with torch.no_grad():
        with pytest.raises(ValueError, match="shape"):
            fused_add_rms_norm(x, r[:2], w)
        with pytest.raises(ValueError, match="sin has shape"):
            apply_rope(q, k, cos, sin[:, :4])
        with pytest.raises(TypeError, match="v"):
            flash_attention(q, k, k.half())
        with pytest.raises(TypeError):
            apply_rope(q, k, cos, [1.0])


def test_discard_slot_reuses_its_stream_buffer_and_follows_discard_at_rules(monkeypatch):
    """DiscardSlot (a plan's discard buffer): the buffer discard_at gives for the current stream, remembered, so
    the same stream gets it again without the dict; another stream gets discard_at's buffer for it; fresh while
    capturing, off the GPU (index -1) and above DISCARD_MAX_ELEMENTS; its buffer stays big enough even after
    discard_at grew (replaced) the shared one."""
    state = {"capturing": False, "stream": 7}
    monkeypatch.setattr(L, "_capturing", lambda: state["capturing"])
    monkeypatch.setattr(L, "_get_stream", lambda index: state["stream"] + 100 * index)
    monkeypatch.setattr(L, "_discard", {})
    slot = L.DiscardSlot(0, 10, "cpu")
    a = slot()
    assert a is L.discard_at(0, 10, "cpu") and slot() is a and a.numel() >= 10 and a.dtype == torch.float32
    L.discard_at(0, 5000, "cpu")  # another op grows the shared buffer of this stream
    assert slot() is a  # still this stream's (older, big enough) buffer: ordered by the stream
    state["stream"] = 8
    b = slot()
    assert b is not a and b is L.discard_at(0, 10, "cpu") and slot() is b
    state["capturing"] = True
    c1, c2 = slot(), slot()
    assert c1 is not b and c2 is not c1 and c1.numel() == 10
    state["capturing"] = False
    assert slot() is b
    off = L.DiscardSlot(-1, 10, "cpu")
    assert off() is not off() and off().numel() == 10
    big = L.DiscardSlot(0, L.DISCARD_MAX_ELEMENTS + 1, "cpu")
    assert big() is not big()


@requires_kernels()
def test_plan_entry_points_chosen_per_plan_match_the_reference():
    """The plan-hit entry points picked once per plan (fused_add_rms_norm: both outputs empty_like(x), or the
    general path for another output dtype or a strided x; flash_attention: with or without the general path for
    a strided q), each called twice (the second takes the plan)."""
    d = _dev()
    torch.manual_seed(5)
    x, r = torch.randn(3, 40, dtype=BF16, device=d), torch.randn(3, 40, dtype=BF16, device=d)
    for w in (torch.randn(40, dtype=BF16, device=d), torch.randn(40, device=d)):  # y bf16, then y float32
        for xx in (x, _strided(x)):
            want = reference.fused_add_rms_norm(xx.double(), r.double(), w.double(), 1e-5)
            for _ in range(2):
                with torch.no_grad():
                    y, h = fused_add_rms_norm(xx, r, w, 1e-5)
                assert y.dtype == torch.promote_types(w.dtype, BF16) and h.dtype == BF16
                for got, ref in zip((y, h), want):  # bf16 inputs (h, and x*rstd, rounded to bf16): bf16 tolerance
                    torch.testing.assert_close(got.float(), ref.float(), **TOL[BF16])
    q, k = torch.randn(1, 2, 6, 16, device=d), torch.randn(1, 1, 6, 16, device=d)
    for qq in (q, q.transpose(1, 2).contiguous().transpose(1, 2)):
        want = reference.attention(qq.double(), k.double(), k.double(), causal=True).float()
        for _ in range(2):
            with torch.no_grad():
                _close(flash_attention(qq, k, k), want)


def test_prepared_launch_all_aligned_test_catches_any_misaligned_pointer(fake_env):
    """Compiled with every tensor aligned, the direct path tests them all at once (their gcd): a pointer 4, 8 or 12
    bytes off in either position, or in both, never reaches that compiled code (`launch` takes it, and the
    PreparedLaunch follows the new alignment); all aligned again goes direct to the first one."""
    k = FakeJIT()
    x, y = torch.zeros(64), torch.zeros(64)
    p = L.PreparedLaunch(k, (1,), (5,), {"BLOCK": 16})
    p(x, y)
    p(x, y)
    assert len(k.jit_calls) == 1 and len(k.run_calls) == 1 and p.direct[6] == ()
    aligned = p.direct
    for off in (1, 2, 3):  # float32 elements: 4, 8, 12 bytes
        for bad in ((x[off:], y), (x, y[off:]), (x[off:], y[off:])):
            p.direct = aligned  # the all-aligned resolution
            p(*bad)  # the direct path would return leaving p.direct as it is; the followed one resolves anew
            assert p.direct is not aligned and p.direct[6], f"offset {off}: the aligned code got a misaligned pointer"
    p.direct = aligned
    runs, jit = len(k.run_calls), len(k.jit_calls)
    p(x, y)
    assert len(k.jit_calls) == jit and len(k.run_calls) == runs + 1
    assert k.run_calls[-1][9:11] == (x.data_ptr(), y.data_ptr())
