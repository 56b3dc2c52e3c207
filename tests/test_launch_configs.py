"""Every launch setting the attention launchers would pick for sm_80 (A100, 163 KB shared memory), sm_89
(L4 / RTX 4090, 99 KB) and sm_90 (H100/H200, 227 KB) compiles for that target and fits its shared memory.

Compiles ahead of time with Triton's compile API (`triton.compile(ASTSource(...), target=GPUTarget(...))`), which
needs no GPU: ptxas ships with Triton's NVIDIA backend, so this runs on the CPU machines and in CI. Catches: a
tile/stage choice that only fits an H200 ("out of resources: shared memory" on a smaller part), a kernel whose
signature drifted from what the launchers pass. Skipped, with the reason, when the compiler API differs (Triton
< 3.2 keyed signatures by argument index) or when TRITON_INTERPRET=1 (kernels are interpreted then).
"""

import inspect
import os

import pytest

triton = pytest.importorskip("triton")

if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("TRITON_INTERPRET=1: @triton.jit functions are interpreted, not compiled; run without it",
                allow_module_level=True)

try:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
except ImportError as e:  # pragma: no cover - very old Triton
    pytest.skip(f"this Triton has no ASTSource/GPUTarget compile API ({e})", allow_module_level=True)

_VER = tuple(int(x) for x in triton.__version__.split(".")[:2])
if _VER < (3, 2):
    pytest.skip(f"triton {triton.__version__}: ASTSource signatures are keyed by index before 3.2; not handled",
                allow_module_level=True)
try:  # the compiler itself (ptxas) must be there
    from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
except Exception as e:  # noqa: BLE001
    pytest.skip(f"Triton's NVIDIA backend is unavailable here ({e!r})", allow_module_level=True)

from litekernels.ops import attention as A  # noqa: E402
from litekernels.ops import decode_attention as DA  # noqa: E402
from litekernels.ops._tl_common import SMEM_LIMIT  # noqa: E402

ARCHS = {"sm80": (8, 0, SMEM_LIMIT[(8, 0)]), "sm89": (8, 9, SMEM_LIMIT[(8, 9)]), "sm90": (9, 0, SMEM_LIMIT[(9, 0)])}
HEAD_DIMS = [64, 128, 256]


def _cases():
    """(arch, head_dim, element type): every head_dim bucket in bf16 (fp16 tiles are the same size), and fp32
    (IEEE dots, twice the bytes) at the two larger buckets off sm_90. sm_90 settings also run on the GPU in the
    op tests, so their compile check is marked slow (CI time); sm_80/sm_89 have no other check."""
    out = []
    for arch in ARCHS:
        marks = [pytest.mark.slow] if arch == "sm90" else []
        for D in HEAD_DIMS:
            out.append(pytest.param(arch, D, "bf16", marks=marks, id=f"{arch}-D{D}-bf16"))
            if arch != "sm90" and D >= 128:
                out.append(pytest.param(arch, D, "fp32", id=f"{arch}-D{D}-fp32"))
    return out


CASES = _cases()


def _compile(fn, arch, ptr_types, consts, num_warps, num_stages):
    """Compile fn for arch; pointer arguments typed by ptr_types (name -> '*bf16'...), every other runtime
    argument an i32 (fp32 for the scale). Returns the compiled kernel."""
    # constexpr parameters with a default (variant switches the launchers may leave out) take that default
    for name, prm in inspect.signature(fn.fn).parameters.items():
        if name not in consts and prm.default is not inspect.Parameter.empty and "constexpr" in str(prm.annotation):
            consts = {**consts, name: prm.default}
    sig = {}
    for name in fn.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name in ptr_types:
            sig[name] = ptr_types[name]
        elif "scale" in name:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    missing = set(consts) - set(fn.arg_names)
    assert not missing, f"{fn.__name__} has no parameters {missing}"
    src = ASTSource(fn=fn, signature=sig, constexprs=consts)
    target = GPUTarget("cuda", arch[0] * 10 + arch[1], 32)
    return triton.compile(src, target=target, options=dict(num_warps=num_warps, num_stages=num_stages))


def _check(kernel, arch, what):
    shared = kernel.metadata.shared
    assert shared <= arch[2], f"{what}: needs {shared} bytes of shared memory, sm_{arch[0]}{arch[1]} has {arch[2]}"


def _bd(D):
    return max(16, triton.next_power_of_2(D))


@pytest.mark.parametrize("arch,D,ty", CASES)
def test_prefill_forward_fits(arch, D, ty):
    a = ARCHS[arch]
    c = dict(A.fwd_config(D, a, 4 if ty == "fp32" else 2))
    w, st = c.pop("num_warps"), c.pop("num_stages")
    t = "*" + ty
    consts = dict(CAUSAL=True, HAS_MASK=False, BLOCK_D=_bd(D), IEEE=ty == "fp32", **c)
    k = _compile(A._attn_fwd_kernel, a, dict(Q=t, K=t, V=t, O=t, LSE="*fp32", MASK=t), consts, w, st)
    _check(k, a, f"forward D={D} {c} warps={w} stages={st}")


@pytest.mark.parametrize("arch,D,ty", CASES)
def test_prefill_backward_fits(arch, D, ty):
    a = ARCHS[arch]
    c = dict(A.bwd_config(D, a, 4 if ty == "fp32" else 2))
    w, st = c.pop("num_warps"), c.pop("num_stages")
    t = "*" + ty
    consts = dict(CAUSAL=True, HAS_MASK=False, BLOCK_D=_bd(D), IEEE=ty == "fp32", **c)
    ptrs = dict(Q=t, K=t, V=t, DO=t, LSE="*fp32", DELTA="*fp32", DK=t, DV=t, DQ=t, MASK="*u8")
    for fn in (A._attn_bwd_dkdv_kernel, A._attn_bwd_dq_kernel):
        k = _compile(fn, a, ptrs, consts, w, st)
        _check(k, a, f"{fn.__name__} D={D} {c} warps={w} stages={st}")
    k = _compile(A._attn_bwd_delta_kernel, a, dict(O=t, DO=t, DELTA="*fp32"),
                 dict(BLOCK_M=max(1, min(128, 8192 // _bd(D))), BLOCK_D=_bd(D)), 4, 1)
    _check(k, a, f"delta D={D}")


@pytest.mark.parametrize("fused", [False, True], ids=["two-launch", "fused"])
@pytest.mark.parametrize("arch,D,ty", CASES)
def test_decode_fits(arch, D, ty, fused):
    a = ARCHS[arch]
    c = DA.decode_config(D, a, 4 if ty == "fp32" else 2)
    t = "*" + ty
    # fused: the one-pass merge of a 4-row group at the largest split tile the launcher allows it (8192 partials)
    consts = dict(HAS_KEYMASK=True, BLOCK_M=16, BLOCK_N=c["BLOCK_N"], BLOCK_D=_bd(D), IEEE=ty == "fp32", FUSED=fused,
                  BLOCK_S=max(2, 2048 // _bd(D)) if fused else 128, BLOCK_R=4 if fused else 0)
    ptrs = dict(Q=t, K=t, V=t, LENGTHS="*i32", KEYMASK="*u8", O_PART="*fp32", LSE_PART="*fp32", O=t,
                COUNTER="*i32")
    k = _compile(DA._decode_split_kernel, a, ptrs, consts, c["num_warps"], c["num_stages"])
    _check(k, a, f"decode split D={D} {c}")
    if not fused:
        k = _compile(DA._decode_combine_kernel, a, dict(O_PART="*fp32", LSE_PART="*fp32", O=t),
                     dict(BLOCK_S=128, BLOCK_D=_bd(D)), 4, 1)
        _check(k, a, f"decode combine D={D}")
