"""Hot plans (litekernels/ops/_launch.py: facts_check, hot_entry, PlanCache.hot): rms_norm and fused_add_rms_norm
first test the plan they took last with one C call (torch's TensorGuards) before building the plan key.

Easy mistakes guarded against: a hot plan taken for inputs whose key differs in one fact (shape, strides, dtype,
device, eps), for inputs that need autograd, under a dispatch mode, after clear_launch_cache; a check that is not the
one torch documents (tested on this torch by facts_check's self-test, and here again); a hot plan rebuilt on every
call when a fact outside the key (Python type, aliasing) alternates.
"""

import pytest
import torch

import litekernels.ops._launch as L
from litekernels import fused_add_rms_norm, reference, rms_norm
from litekernels.ops import rms_norm as RN
from tests.conftest import HAS_CUDA, requires_kernels

needs_guards = pytest.mark.skipif(L._TensorGuards is None, reason="this torch has no usable TensorGuards")


def _dev():
    return "cuda" if HAS_CUDA else "cpu"


class _CountingDict(dict):
    """A plan dict that counts key lookups (the path the hot test skips)."""
    gets = 0

    def get(self, *a):
        type(self).gets += 1
        return super().get(*a)


@pytest.fixture
def counted(monkeypatch):
    L.clear_launch_cache()
    plans = _CountingDict()
    _CountingDict.gets = 0
    monkeypatch.setattr(RN._FWD_PLANS, "plans", plans)
    yield plans
    L.clear_launch_cache()


def _ref_add(x, r, w, eps):
    y, h = reference.fused_add_rms_norm(x.double(), r.double(), w.double(), eps)
    return y.to(torch.promote_types(w.dtype, x.dtype)), h.to(x.dtype)


TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=2e-3, rtol=2e-3),
       torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


def _close(got, want, x_dtype=None):
    """got == want within the tolerance of the output's dtype, or of x's when that is coarser (y of a half x and a
    float32 weight is float32, but its normalised rows were rounded to half)."""
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        tol = TOL[x_dtype if x_dtype is not None and TOL[x_dtype]["atol"] > TOL[g.dtype]["atol"] else g.dtype]
        torch.testing.assert_close(g.float(), w.float(), **tol)


@needs_guards
def test_facts_check_accepts_same_facts_and_rejects_each_changed_one():
    d = _dev()
    x, w = torch.randn(3, 8, device=d), torch.randn(8, device=d)
    check = L.facts_check(x, w)
    assert check is not None
    assert check(torch.zeros(3, 8, device=d), torch.ones(8, device=d)) is True  # other objects, same facts
    changed = [torch.zeros(8, 3, device=d), torch.zeros(8, 3, device=d).t(), torch.zeros(3, 16, device=d)[:, :8],
               torch.zeros(3, 8, dtype=torch.float64, device=d), torch.zeros(3, 8, device="meta"),
               torch.zeros(3, 8, device=d, requires_grad=True),
               torch.nn.Parameter(torch.zeros(3, 8, device=d), requires_grad=False), torch.zeros(24, device=d)]
    if d == "cuda":
        changed.append(torch.zeros(3, 8))  # another device type
    for other in changed:
        assert check(other, w) is False, (other.shape, other.stride(), other.dtype, other.device)
    assert check(x, x) is False and check(w, w) is False  # aliased (and wrong facts)
    assert check("x", w) is False and check(None, w) is False


@needs_guards
def test_facts_check_refuses_subclasses_and_aliases():
    class Sub(torch.Tensor):
        pass

    x = torch.randn(3, 8)
    assert L.facts_check(x.as_subclass(Sub), torch.randn(8)) is None
    assert L.facts_check(x, x) is None  # never passes: no entry made
    assert L.facts_check(torch.nn.Parameter(x), torch.randn(8)) is not None


@requires_kernels()
@needs_guards
def test_hot_plan_is_taken_for_same_facts_and_never_for_a_changed_one(counted):
    d = _dev()
    torch.manual_seed(0)
    x, r, w = torch.randn(2, 3, 24, device=d), torch.randn(2, 3, 24, device=d), torch.randn(24, device=d)
    with torch.no_grad():
        for _ in range(2):  # checked path (plan made), then found by key (hot entry made)
            _close(fused_add_rms_norm(x, r, w, 1e-5), _ref_add(x, r, w, 1e-5))
        assert RN._HOT[1][3] is not None
        gets = _CountingDict.gets
        x2, r2 = torch.randn_like(x), torch.randn_like(r)  # new tensors, same facts: the hot plan, no key lookup
        _close(fused_add_rms_norm(x2, r2, w, 1e-5), _ref_add(x2, r2, w, 1e-5))
        assert _CountingDict.gets == gets
        wide = torch.randn(2, 3, 48, device=d)[..., :24]
        variants = [  # each differs from (x, r, w, 1e-5) in one fact of the key
            (x, r, w, 0.5),
            (torch.randn(2, 4, 24, device=d), torch.randn(2, 4, 24, device=d), w, 1e-5),
            (wide, r, w, 1e-5),
            (x, wide, w, 1e-5),
            (x.half(), r.half(), w, 1e-5),
            (x, r, w.half(), 1e-5),
            (x.half(), r.half(), w.half(), 1e-5),
            (x, r, torch.randn(48, device=d)[::2], 1e-5),
        ]
        for args in variants:
            for _ in range(3):  # each variant becomes the hot plan, then the base must not take it
                _close(fused_add_rms_norm(*args), _ref_add(*args), args[0].dtype)
                _close(fused_add_rms_norm(x, r, w, 1e-5), _ref_add(x, r, w, 1e-5))
        _close(fused_add_rms_norm(x, x, w, 1e-5), _ref_add(x, x, w, 1e-5))  # aliased inputs: right, never hot


@requires_kernels()
@needs_guards
def test_hot_plan_of_rms_norm_follows_eps_and_shape(counted):
    d = _dev()
    x, w = torch.randn(3, 40, device=d), torch.randn(40, device=d)
    ref = lambda x, w, eps: reference.rms_norm(x.double(), w.double(), eps).to(x.dtype)  # noqa: E731
    with torch.no_grad():
        for eps in (1e-5, 1e-5, 1e-5, 0.5, 0.5, 1e-5, 0.5):
            torch.testing.assert_close(rms_norm(x, w, eps), ref(x, w, eps), atol=1e-5, rtol=1e-5)
        gets = _CountingDict.gets
        torch.testing.assert_close(rms_norm(x, w, 0.5), ref(x, w, 0.5), atol=1e-5, rtol=1e-5)
        assert _CountingDict.gets == gets  # the hot plan
        y = x[:2]
        torch.testing.assert_close(rms_norm(y, w, 0.5), ref(y, w, 0.5), atol=1e-5, rtol=1e-5)
        assert _CountingDict.gets > gets


class _PassThrough(torch.utils._python_dispatch.TorchDispatchMode):
    def __torch_dispatch__(self, func, types_, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@requires_kernels()
@needs_guards
def test_hot_plan_needs_no_autograd_and_no_tracer(counted):
    d = _dev()
    x, r = torch.randn(3, 16, device=d), torch.randn(3, 16, device=d)
    w = torch.nn.Parameter(torch.randn(16, device=d))  # requires grad, as in a model
    with torch.no_grad():
        for _ in range(3):
            fused_add_rms_norm(x, r, w, 1e-5)
    check, eps, grad_test, run = RN._HOT[1]
    assert grad_test is True  # grad mode must be read: the weight requires grad
    taken = []
    RN._HOT[1] = (check, eps, grad_test, lambda *a: taken.append(1) or run(*a))  # a spy on the hot plan
    with torch.no_grad():
        _close(fused_add_rms_norm(x, r, w, 1e-5), _ref_add(x, r, w.detach(), 1e-5))
    assert taken == [1]
    y, h = fused_add_rms_norm(x, r, w, 1e-5)  # grad mode on: an autograd node, not the hot plan
    assert taken == [1] and y.requires_grad
    y.sum().backward()
    assert w.grad is not None
    x.requires_grad_(True)  # another requires_grad: not the hot plan even with grad mode off
    with torch.no_grad():
        _close(fused_add_rms_norm(x, r, w, 1e-5), _ref_add(x.detach(), r, w.detach(), 1e-5))
    x.requires_grad_(False)
    RN._HOT[1] = (check, eps, grad_test, lambda *a: taken.append(1) or run(*a))
    with torch.no_grad():
        with _PassThrough():
            fused_add_rms_norm(x, r, w, 1e-5)
        assert taken == [1]
        assert L.set_prepared_calls(False) is True
        try:
            fused_add_rms_norm(x, r, w, 1e-5)
        finally:
            L.set_prepared_calls(True)
        assert taken == [1]
        fused_add_rms_norm(x, r, w, 1e-5)
        assert taken == [1, 1]


@requires_kernels()
@needs_guards
def test_clear_launch_cache_cools_the_hot_plans(counted):
    d = _dev()
    x, w = torch.randn(3, 40, device=d), torch.randn(40, device=d)
    with torch.no_grad():
        for _ in range(3):
            rms_norm(x, w, 1e-5)
    assert RN._HOT[0] is not L.COLD
    L.clear_launch_cache()
    assert RN._HOT[0] is L.COLD and RN._HOT[1] is L.COLD


@requires_kernels()
@needs_guards
def test_alternating_facts_outside_the_key_rebuild_a_bounded_number_of_times(counted):
    d = _dev()
    x, r = torch.randn(3, 16, device=d), torch.randn(3, 16, device=d)
    w = torch.randn(16, device=d)
    wp = torch.nn.Parameter(w.clone(), requires_grad=False)  # same key, another Python type
    with torch.no_grad():
        for i in range(20):
            weight = w if i % 2 else wp
            _close(fused_add_rms_norm(x, r, weight, 1e-5), _ref_add(x, r, w, 1e-5))
    plan = RN._HOT[1][3].__self__ if RN._HOT[1] is not L.COLD else next(iter(counted.values()))
    assert plan.hot_builds == L.HOT_REBUILDS  # rebuilt while the type alternated, then no more


@requires_kernels()
@needs_guards
def test_inference_mode_calls_stay_right():
    d = _dev()
    x, r, w = torch.randn(3, 16, device=d), torch.randn(3, 16, device=d), torch.randn(16, device=d)
    with torch.no_grad():
        for _ in range(3):
            _close(fused_add_rms_norm(x, r, w, 1e-5), _ref_add(x, r, w, 1e-5))
    with torch.inference_mode():
        xi, ri = x.clone(), r.clone()
        for _ in range(3):
            _close(fused_add_rms_norm(xi, ri, w, 1e-5), _ref_add(x, r, w, 1e-5))
            _close(fused_add_rms_norm(x, r, w, 1e-5), _ref_add(x, r, w, 1e-5))


@requires_kernels()
@needs_guards
def test_rope_hot_plan(monkeypatch):
    """apply_rope's hot plan: taken for new tensors with the same facts (no key lookup), never for a changed fact
    or for inputs that need autograd."""
    from litekernels import apply_rope
    from litekernels.ops import rope as RP

    L.clear_launch_cache()
    plans = _CountingDict()
    _CountingDict.gets = 0
    monkeypatch.setattr(RP._FWD_PLANS, "plans", plans)
    d = _dev()

    def args(B=1, T=5, dtype=torch.float32):
        return (torch.randn(B, 4, T, 16, device=d, dtype=dtype), torch.randn(B, 2, T, 16, device=d, dtype=dtype),
                torch.randn(B, T, 16, device=d, dtype=dtype), torch.randn(B, T, 16, device=d, dtype=dtype))

    def ref(q, k, c, s):
        return [t.to(q.dtype) for t in reference.apply_rope(q.double(), k.double(), c.double(), s.double())]

    with torch.no_grad():
        base = args()
        for _ in range(2):
            _close(apply_rope(*base), ref(*base))
        assert RP._HOT[0][3] is not None
        gets = _CountingDict.gets
        fresh = args()
        _close(apply_rope(*fresh), ref(*fresh))
        assert _CountingDict.gets == gets  # the hot plan, no key lookup
        for other in (args(T=6), args(B=2), args(dtype=torch.float16)):
            for _ in range(2):
                _close(apply_rope(*other), ref(*other))
                _close(apply_rope(*base), ref(*base))
    q, k, c, s = args()
    q.requires_grad_(True)
    qr, _ = apply_rope(q, k, c, s)
    assert qr.grad_fn is not None  # inputs that need autograd never take the hot plan
    L.clear_launch_cache()


@requires_kernels()
@needs_guards
def test_decode_hot_plan(monkeypatch):
    """decode_attention's hot plan: taken for new tensors with the same facts and scale, never for another shape,
    scale or key mask, and dropped with the plans (clear_decode_cache, swapped settings)."""
    from litekernels import decode_attention
    from litekernels.ops import decode_attention as DA

    DA.clear_decode_cache()
    plans = _CountingDict()
    _CountingDict.gets = 0
    monkeypatch.setattr(DA._CALLS, "plans", plans)
    d = _dev()

    def args(L=40, B=2):
        return (torch.randn(B, 4, 1, 16, device=d), torch.randn(B, 2, L, 16, device=d),
                torch.randn(B, 2, L, 16, device=d), torch.tensor([L, L - 9][:B], dtype=torch.int32, device=d))

    def ref(q, k, v, n, scale=None, key_mask=None):
        out = reference.decode_attention(q.double(), k.double(), v.double(), n, scale=scale, key_mask=key_mask)
        return [out.float()]

    base = args()
    for _ in range(2):
        _close([decode_attention(*base)], ref(*base))
    assert DA._HOT[0][3] is not None
    gets = _CountingDict.gets
    fresh = args()
    _close([decode_attention(*fresh)], ref(*fresh))
    assert _CountingDict.gets == gets  # the hot plan, no key lookup
    mask = torch.ones(2, 40, dtype=torch.bool, device=d)
    mask[1, :3] = False
    for _ in range(2):
        for other, kw in ((args(L=48), {}), (args(B=1), {}), (base, {"scale": 0.5}), (base, {"key_mask": mask})):
            _close([decode_attention(*other, **kw)], ref(*other, **kw))
            _close([decode_attention(*base)], ref(*base))
    # swapped settings (a test rebinding the settings table): the hot plan is not taken, the key path drops the plans
    _close([decode_attention(*base)], ref(*base))
    gets = _CountingDict.gets
    monkeypatch.setattr(DA, "_plans", {})
    _close([decode_attention(*base)], ref(*base))
    assert _CountingDict.gets > gets and DA._HOT[0][3] is None  # key path; the stale plans dropped, slot cooled
    DA.clear_decode_cache()
    assert DA._HOT[0][3] is None
    _close([decode_attention(*base)], ref(*base))
