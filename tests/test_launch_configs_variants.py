"""The phase-2 attention variants compile for sm_90 (H100/H200) with Triton's compile API, on the CPU, and fit its
shared memory: prefill forward through tensor descriptors (TMA), the warp-specialized loop (WS) and the
thresholded rescale (LAZY); decode without tl.dot (MMA=False), several rows per combine program, and the
programmatic-dependent-launch pair (PDL), which the interpreter cannot run, so this compile is its only CPU check.
Catches: a descriptor or gdc intrinsic this Triton rejects, a variant whose tiles overflow shared memory.
Also the default tables of every part compiled WITH the divisibility-by-16 specialization of a real launch
(test_table_settings_fit_when_pipelined): without it the loads are not pipelined and the shared memory the
compiler reports is far below what the GPU needs (decode split on sm_90 D64: 18 KB unhinted, 36 KB as launched).
Skipped like tests/test_launch_configs.py (interpreter, Triton < 3.2, no NVIDIA backend)."""

import pytest

from litekernels.ops import attention as A
from litekernels.ops import decode_attention as DA
from litekernels.ops._tl_common import HAS_PDL

# first: its module-level skips (interpreter, old Triton, no backend) apply here too
from tests.test_launch_configs import ARCHS, ASTSource, GPUTarget, _bd, _check, triton

SM90 = ARCHS["sm90"]

try:
    from triton.backends.compiler import BaseBackend
    _DIV16 = BaseBackend.parse_attr("D")  # what the JIT attaches to an argument divisible by 16
except Exception:  # noqa: BLE001 - older Tritons describe specializations differently
    _DIV16 = None


def _compile_as_launched(fn, arch, ptr_types, consts, num_warps, num_stages):
    """_compile, plus the divisibility-by-16 specialization a real launch gives 16-byte aligned pointers and
    strides (the stride arguments, named s<tensor>_<dim>). Without it the compiler cannot prove the loads
    aligned, does not pipeline them through shared memory (no cp.async), and the shared memory it reports is
    that of an unpipelined kernel: smaller than what the GPU will need."""
    if _DIV16 is None:
        pytest.skip("this Triton has no BaseBackend.parse_attr; cannot mark arguments divisible by 16")
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name in ptr_types:
            sig[name], attrs[(i,)] = ptr_types[name], _DIV16
        elif "scale" in name:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
            if name[0] == "s" and "_" in name:
                attrs[(i,)] = _DIV16
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    target = GPUTarget("cuda", arch[0] * 10 + arch[1], 32)
    return triton.compile(src, target=target, options=dict(num_warps=num_warps, num_stages=num_stages))


def _fwd(D, flags):
    c = dict(A.fwd_config(D, SM90, 2))
    c.update(flags)
    w, st = c.pop("num_warps"), c.pop("num_stages")
    consts = dict(CAUSAL=True, HAS_MASK=False, BLOCK_D=_bd(D), IEEE=False, **c)
    t = "*bf16"
    k = _compile_as_launched(A._attn_fwd_kernel, SM90, dict(Q=t, K=t, V=t, O=t, LSE="*fp32", MASK=t), consts, w, st)
    _check(k, SM90, f"forward D={D} {flags}")
    return k


@pytest.mark.skipif(not A.HAS_TMA, reason="this Triton has no tl.make_tensor_descriptor")
def test_prefill_tma_compiles_sm90():
    k = _fwd(128, {"TMA": True, "LAZY": True})
    # the two descriptors live in the launch's global workspace (triton's allocator provides it)
    assert getattr(k.metadata, "global_scratch_size", 1) > 0


@pytest.mark.slow
@pytest.mark.parametrize("flags", [{"TMA": True}, {"WS": True}, {"TMA": True, "WS": True}, {"LAZY": True}],
                         ids=["tma", "ws", "tma-ws", "lazy"])
@pytest.mark.parametrize("D", [64, 128])
def test_prefill_variants_compile_sm90(D, flags):
    if flags.get("TMA") and not A.HAS_TMA:
        pytest.skip("this Triton has no tl.make_tensor_descriptor")
    if flags.get("WS") and not A.HAS_WS:
        pytest.skip("this Triton's tl.range has no warp_specialize")
    _fwd(D, flags)


def _decode(D, cfg):
    c = DA.decode_config(D, SM90, 2)
    c.update(cfg)
    t = "*bf16"
    consts = dict(HAS_KEYMASK=False, BLOCK_M=16 if c["MMA"] else 4, BLOCK_N=c["BLOCK_N"], BLOCK_D=_bd(D),
                  IEEE=False, FUSED=False, BLOCK_S=256, MMA=c["MMA"], PDL=c["PDL"])
    ptrs = dict(Q=t, K=t, V=t, LENGTHS="*i32", KEYMASK="*u8", O_PART="*fp32", LSE_PART="*fp32", O=t, COUNTER="*i32")
    k = _compile_as_launched(DA._decode_split_kernel, SM90, ptrs, consts, c["num_warps"], c["num_stages"])
    _check(k, SM90, f"decode split D={D} {cfg}")
    k = _compile_as_launched(DA._decode_combine_kernel, SM90, dict(O_PART="*fp32", LSE_PART="*fp32", O=t),
                 dict(BLOCK_S=256, BLOCK_D=_bd(D), ROWS=c["COMBINE_ROWS"], PDL=c["PDL"]), c["COMBINE_WARPS"], 1)
    _check(k, SM90, f"decode combine D={D} {cfg}")


@pytest.mark.skipif(not HAS_PDL, reason="this Triton has no launch_pdl / gdc intrinsics")
def test_decode_pdl_compiles_sm90():
    _decode(64, {"PDL": True, "COMBINE_ROWS": 4, "COMBINE_WARPS": 8})


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [{"MMA": False, "BLOCK_N": 32}, {"MMA": False, "BLOCK_N": 64, "num_warps": 8},
                                 {"BLOCK_N": 128, "num_stages": 4}, {"BLOCK_N": 32, "num_stages": 6}],
                         ids=["no-mma-n32", "no-mma-n64-w8", "n128-s4", "n32-s6"])
@pytest.mark.parametrize("D", [64, 128])
def test_decode_variants_compile_sm90(D, cfg):
    _decode(D, cfg)


def _table_cases():
    out = []
    for arch in ARCHS:
        for D in (64, 128, 256):
            for ty in ("bf16", "fp32"):
                fast = (arch, D, ty) == ("sm89", 256, "bf16")  # the tightest fit; the rest are slow (CI time)
                out.append(pytest.param(arch, D, ty, marks=[] if fast else [pytest.mark.slow],
                                        id=f"{arch}-D{D}-{ty}"))
    return out


@pytest.mark.parametrize("arch,D,ty", _table_cases())
def test_table_settings_fit_when_pipelined(arch, D, ty):
    """The default tables' settings (forward, both backward kernels, decode split) compiled as a real launch
    specializes them, so the pipelined K/V buffers count against the part's shared memory."""
    a = ARCHS[arch]
    es = 4 if ty == "fp32" else 2
    t = "*" + ty
    common = dict(CAUSAL=True, HAS_MASK=False, BLOCK_D=_bd(D), IEEE=ty == "fp32")
    c = dict(A.fwd_config(D, a, es))
    w, st = c.pop("num_warps"), c.pop("num_stages")
    k = _compile_as_launched(A._attn_fwd_kernel, a, dict(Q=t, K=t, V=t, O=t, LSE="*fp32", MASK=t), {**common, **c},
                             w, st)
    _check(k, a, f"forward {arch} D={D} {ty} {c} warps={w} stages={st}")
    c = dict(A.bwd_config(D, a, es))
    w, st = c.pop("num_warps"), c.pop("num_stages")
    ptrs = dict(Q=t, K=t, V=t, DO=t, LSE="*fp32", DELTA="*fp32", DK=t, DV=t, DQ=t, MASK="*u8")
    for fn in (A._attn_bwd_dkdv_kernel, A._attn_bwd_dq_kernel):
        k = _compile_as_launched(fn, a, ptrs, {**common, **c}, w, st)
        _check(k, a, f"{fn.__name__} {arch} D={D} {ty} {c} warps={w} stages={st}")
    c = DA.decode_config(D, a, es)
    consts = dict(HAS_KEYMASK=True, BLOCK_M=16, BLOCK_N=c["BLOCK_N"], BLOCK_D=_bd(D), IEEE=ty == "fp32", FUSED=False,
                  BLOCK_S=128, MMA=True, PDL=False)
    ptrs = dict(Q=t, K=t, V=t, LENGTHS="*i32", KEYMASK="*u8", O_PART="*fp32", LSE_PART="*fp32", O=t, COUNTER="*i32")
    k = _compile_as_launched(DA._decode_split_kernel, a, ptrs, consts, c["num_warps"], c["num_stages"])
    _check(k, a, f"decode split {arch} D={D} {ty} {c}")
