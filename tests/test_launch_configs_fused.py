"""The fused decode GEMV (ops/decode_fused.py) compiles for sm_80, sm_89 and sm_90 with the settings
decode_fused_config picks, and fits each part's shared memory when compiled as a real launch specializes it
(pointers and strides divisible by 16, so the weight loads are pipelined through shared memory).

Cases: every kernel of the fused decode step (q/k/v with the RoPE + cache epilogue, o, gate/up with SiLU*mul,
down, the lm_head with the final norm) at the Llama-3.2-1B and Llama-3.1-8B shapes, bf16 and fp32 (IEEE dots,
twice the bytes per stage). Also the variants the sweep tries on sm_90: PDL (the interpreter cannot run the gdc
intrinsics, so this is their only CPU check) and DOT=False. Catches: a stage count that only fits an H200, a
constexpr-branch construct the compiler rejects (the interpreter runs plain Python and would accept it).
Skipped like tests/test_launch_configs.py (interpreter, Triton < 3.2, no NVIDIA backend)."""

import pytest

from litekernels.ops import _tl_common as TLC
from litekernels.ops import decode_fused as DF

# its module-level skips (interpreter, old Triton, no backend) apply here too
from tests.test_launch_configs import ARCHS, ASTSource, GPUTarget, _check, triton

try:
    from triton.backends.compiler import BaseBackend
    _DIV16 = BaseBackend.parse_attr("D")
except Exception:  # noqa: BLE001 - older Tritons describe specializations differently
    _DIV16 = None

# (hidden, intermediate, heads, kv heads, head_dim, vocab)
SHAPES = {"1B": (2048, 8192, 32, 8, 64, 128256), "8B": (4096, 14336, 32, 8, 128, 128256)}
PTRS = ("X", "R", "RO", "NW", "W", "BIAS", "Y", "COS", "SIN", "KC", "VC")


def _compile(arch, ty, consts, num_warps, num_stages):
    if _DIV16 is None:
        pytest.skip("this Triton has no BaseBackend.parse_attr; cannot mark arguments divisible by 16")
    fn = DF._decode_gemv_kernel
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name in PTRS:
            sig[name], attrs[(i,)] = "*" + ty, _DIV16
        elif name == "POS":
            sig[name], attrs[(i,)] = "*i64", _DIV16
        elif name == "eps":
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
            # strides and the sizes of these shapes (multiples of 16): a real launch specializes them, which
            # vectorizes and pipelines the weight loads; without the hint the shared memory is far too small
            if (name[0] == "s" and "_" in name) or name in ("K", "N_OUT", "N_HALF"):
                attrs[(i,)] = _DIV16
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    target = GPUTarget("cuda", arch[0] * 10 + arch[1], 32)
    return triton.compile(src, target=target, options=dict(num_warps=num_warps, num_stages=num_stages))


def _kinds(shape):
    hidden, inter, H, KV, D, vocab = SHAPES[shape]
    # name: (epilogue, output columns (pairs when paired), K, prologue on, head_dim)
    return {"qkv": ("rope_cache", (H + 2 * KV) * D // 2, hidden, True, D),
            "o": ("none", hidden, H * D, False, 2), "gate_up": ("silu_mul", inter, hidden, True, 2),
            "down": ("none", hidden, inter, False, 2), "lm_head": ("none", vocab, hidden, True, 2)}


def _consts(kind, shape, c, ty):
    epi, _, _, norm, hd = _kinds(shape)[kind]
    return dict(ADD=norm, NORM=norm, EPILOGUE=DF.EPILOGUES[epi], HAS_BIAS=kind == "qkv", HEAD_DIM=hd,
                BLOCK_M=16 if c["DOT"] else 1, BLOCK_N=c["BLOCK_N"], BLOCK_K=c["BLOCK_K"], DOT=c["DOT"],
                PREFETCH=bool(c["PREFETCH"]), IEEE=ty == "fp32", PDL=bool(c["PDL"]), TILES=int(c["TILES"]))


def _table_cases():
    out, seen = [], set()
    for arch in ARCHS:
        for ty in ("bf16", "fp32"):
            for shape in SHAPES:
                for kind in _kinds(shape):
                    epi, n_out, K, _, _ = _kinds(shape)[kind]
                    c = DF.decode_fused_config(epi, n_out, K, ARCHS[arch], 4 if ty == "fp32" else 2)
                    key = (arch, ty, kind if kind in ("qkv", "gate_up") else "plain", tuple(sorted(c.items())))
                    if key in seen:  # same kernel and settings: compiled once
                        continue
                    seen.add(key)
                    fast = arch == "sm89" and ty == "bf16"  # the tightest part; the rest are slow (CI time)
                    out.append(pytest.param(arch, ty, shape, kind, marks=[] if fast else [pytest.mark.slow],
                                            id=f"{arch}-{ty}-{shape}-{kind}"))
    return out


@pytest.mark.parametrize("arch,ty,shape,kind", _table_cases())
def test_fused_table_settings_fit(arch, ty, shape, kind):
    a = ARCHS[arch]
    epi, n_out, K, _, _ = _kinds(shape)[kind]
    c = DF.decode_fused_config(epi, n_out, K, a, 4 if ty == "fp32" else 2)
    k = _compile(a, ty, _consts(kind, shape, c, ty), c["num_warps"], c["num_stages"])
    _check(k, a, f"decode_fused {kind} {shape} {ty} on {arch}: {c}")


@pytest.mark.parametrize("kind", ["qkv", "gate_up", "down"])
@pytest.mark.parametrize("variant", [  # PDL: the only CPU check of the gdc intrinsics; the rest are slow (CI time)
    {"PDL": True},
    pytest.param({"PREFETCH": True, "num_stages": 1}, marks=pytest.mark.slow),
    pytest.param({"DOT": False, "PREFETCH": True, "BLOCK_N": 8, "BLOCK_K": 256}, marks=pytest.mark.slow),
    pytest.param({"DOT": False, "PREFETCH": True, "PDL": True, "BLOCK_N": 4, "num_warps": 2}, marks=pytest.mark.slow),
    pytest.param({"TILES": 4, "PDL": True}, marks=pytest.mark.slow),
], ids=["pdl", "dot-prefetch", "reduce", "reduce-pdl", "tiles-pdl"])
def test_fused_variants_compile_sm90(kind, variant):
    if variant.get("PDL") and not TLC.HAS_PDL:
        pytest.skip("this Triton has no launch_pdl / gdc intrinsics")
    a = ARCHS["sm90"]
    epi, n_out, K, _, _ = _kinds("1B")[kind]
    c = {**DF.decode_fused_config(epi, n_out, K, a, 2), **variant}
    k = _compile(a, "bf16", _consts(kind, "1B", c, "bf16"), c["num_warps"], c["num_stages"])
    _check(k, a, f"decode_fused {kind} {c}")
