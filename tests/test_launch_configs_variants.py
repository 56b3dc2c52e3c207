"""The phase-2 attention variants compile for sm_90 (H100/H200) with Triton's compile API, on the CPU, and fit its
shared memory: prefill forward through tensor descriptors (TMA), the warp-specialized loop (WS) and the
thresholded rescale (LAZY); decode without tl.dot (MMA=False), several rows per combine program, and the
programmatic-dependent-launch pair (PDL), which the interpreter cannot run, so this compile is its only CPU check.
Catches: a descriptor or gdc intrinsic this Triton rejects, a variant whose tiles overflow shared memory.
Skipped like tests/test_launch_configs.py (interpreter, Triton < 3.2, no NVIDIA backend)."""

import pytest

from tests.test_launch_configs import ARCHS, _bd, _check, _compile  # noqa: E402 - skips propagate from there

from litekernels.ops import attention as A  # noqa: E402
from litekernels.ops import decode_attention as DA  # noqa: E402

SM90 = ARCHS["sm90"]


def _fwd(D, flags):
    c = dict(A.fwd_config(D, SM90, 2))
    c.update(flags)
    w, st = c.pop("num_warps"), c.pop("num_stages")
    consts = dict(CAUSAL=True, HAS_MASK=False, BLOCK_D=_bd(D), IEEE=False, **c)
    t = "*bf16"
    k = _compile(A._attn_fwd_kernel, SM90, dict(Q=t, K=t, V=t, O=t, LSE="*fp32", MASK=t), consts, w, st)
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
    k = _compile(DA._decode_split_kernel, SM90, ptrs, consts, c["num_warps"], c["num_stages"])
    _check(k, SM90, f"decode split D={D} {cfg}")
    k = _compile(DA._decode_combine_kernel, SM90, dict(O_PART="*fp32", LSE_PART="*fp32", O=t),
                 dict(BLOCK_S=256, BLOCK_D=_bd(D), ROWS=c["COMBINE_ROWS"], PDL=c["PDL"]), c["COMBINE_WARPS"], 1)
    _check(k, SM90, f"decode combine D={D} {cfg}")


@pytest.mark.skipif(not DA.HAS_PDL, reason="this Triton has no launch_pdl / gdc intrinsics")
def test_decode_pdl_compiles_sm90():
    _decode(64, {"PDL": True, "COMBINE_ROWS": 4, "COMBINE_WARPS": 8})


@pytest.mark.slow
@pytest.mark.parametrize("cfg", [{"MMA": False, "BLOCK_N": 32}, {"MMA": False, "BLOCK_N": 64, "num_warps": 8},
                                 {"BLOCK_N": 128, "num_stages": 4}, {"BLOCK_N": 32, "num_stages": 6}],
                         ids=["no-mma-n32", "no-mma-n64-w8", "n128-s4", "n32-s6"])
@pytest.mark.parametrize("D", [64, 128])
def test_decode_variants_compile_sm90(D, cfg):
    _decode(D, cfg)
