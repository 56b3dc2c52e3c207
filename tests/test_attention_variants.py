"""Every launch variant of the attention kernels (the `config=` of attention_fwd / attention_bwd /
decode_attention_fwd that bench/sweep_attention.py tries) against the float64 reference, on tiny shapes.
Catches: heavy-first (REVERSE) query blocks mapped to the wrong rows, block-pointer loads past the head or the
head_dim, the delta preprocess kernel wrong on padded rows, the fused decode combine (last-program counter) not
resetting between launches or merging before every split has written, cached decode scratch reused with stale
partials, split counts that leave cache entries unread, unknown config keys accepted silently."""

import math

import pytest
import torch

from litekernels import reference
from litekernels.ops import attention as A
from litekernels.ops import decode_attention as DA
from tests.conftest import requires_kernels
from tests.helpers import DEVICE, assert_matches, rand

pytestmark = [requires_kernels(), pytest.mark.usefixtures("poison")]

FWD_VARIANTS = [
    pytest.param({}, id="default"),
    pytest.param({"REVERSE": True}, id="heavy-first"),
    pytest.param({"BLOCK_M": 32, "BLOCK_N": 16, "REVERSE": True}, id="m32n16-rev"),
    pytest.param({"BLOCK_M": 16, "BLOCK_N": 32}, id="m16n32"),
    pytest.param({"BLOCK_PTR": True}, id="block-ptr",
                 marks=pytest.mark.skipif(not A.HAS_BLOCK_PTR, reason="this Triton removed tl.make_block_ptr")),
    pytest.param({"BLOCK_PTR": True, "REVERSE": True, "BLOCK_N": 32}, id="block-ptr-rev-n32",
                 marks=pytest.mark.skipif(not A.HAS_BLOCK_PTR, reason="this Triton removed tl.make_block_ptr")),
]
_NO_TMA = pytest.mark.skipif(not A.HAS_TMA, reason="this Triton has no tl.make_tensor_descriptor/set_allocator")
_NO_WS = pytest.mark.skipif(not A.HAS_WS, reason="this Triton's tl.range has no warp_specialize")
FWD_VARIANTS += [
    pytest.param({"TMA": True}, id="tma", marks=_NO_TMA),
    pytest.param({"TMA": True, "REVERSE": True, "BLOCK_M": 32, "BLOCK_N": 16}, id="tma-rev-m32n16",
                 marks=[_NO_TMA, pytest.mark.slow]),  # slow: CI time; "tma" covers the descriptor path
    pytest.param({"LAZY": True}, id="lazy-rescale"),
    pytest.param({"LAZY": True, "TMA": True, "WS": True}, id="lazy-tma-ws", marks=[_NO_TMA, _NO_WS]),
    pytest.param({"WS": True, "BLOCK_N": 32}, id="ws-n32", marks=[_NO_WS, pytest.mark.slow]),
]
BWD_VARIANTS = [pytest.param({}, id="default"), pytest.param({"BLOCK_M": 32, "BLOCK_N": 16}, id="m32n16"),
                pytest.param({"BLOCK_M": 16, "BLOCK_N": 32}, id="m16n32")]


def _prefill(q, k, v, causal, mask, fwd_cfg, bwd_cfg, do):
    scale = 1 / math.sqrt(q.shape[-1])
    o, lse = A.attention_fwd(q, k, v, causal, scale, mask, config=fwd_cfg)
    grads = A.attention_bwd(do, q, k, v, o, lse, causal, scale, mask, config=bwd_cfg)
    return o, grads


def _check_prefill(q, k, v, causal, mask, fwd_cfg, bwd_cfg, name):
    do = torch.randn_like(q)
    o, grads = _prefill(q, k, v, causal, mask, fwd_cfg, bwd_cfg, do)
    outs = {}
    for tag, dt in (("exact", torch.float64), ("lowp", q.dtype)):
        ins = [t.detach().to(dt).requires_grad_() for t in (q, k, v)]
        r = reference.attention(*ins, causal=causal, attn_mask=mask, scale=1 / math.sqrt(q.shape[-1]))
        outs[tag] = (r, torch.autograd.grad(r, ins, do.to(dt)))
    assert_matches(o, outs["exact"][0], outs["lowp"][0], name=f"{name} output")
    for i, g in enumerate(grads):
        assert_matches(g, outs["exact"][1][i], outs["lowp"][1][i], name=f"{name} grad {'qkv'[i]}")


@pytest.mark.parametrize("fwd_cfg", FWD_VARIANTS)
@pytest.mark.parametrize("case", [
    pytest.param((2, 4, 1, 37, 37, 64, True), id="gqa4-T37-causal"),
    pytest.param((1, 3, 1, 21, 50, 80, True), id="gqa3-prefix29-D80"),
    pytest.param((1, 8, 1, 19, 19, 96, False), id="gqa8-full-D96"),
    pytest.param((1, 2, 2, 33, 33, 128, True), id="mha-D128"),
])
def test_prefill_variants_fp32(case, fwd_cfg):
    B, H, HKV, Tq, Tk, D, causal = case
    q, k, v = rand(B, H, Tq, D), rand(B, HKV, Tk, D), rand(B, HKV, Tk, D)
    _check_prefill(q, k, v, causal, None, fwd_cfg, None, f"fwd {fwd_cfg}")


@pytest.mark.parametrize("bwd_cfg", BWD_VARIANTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_prefill_variants_half_left_padding(dtype, bwd_cfg):
    """Left padding through a (B,1,1,Tk) key mask plus causal: the padded query rows see no key at all (output 0,
    gradients 0), T not a multiple of any tile, GQA 3."""
    B, H, HKV, T, D = 2, 3, 1, 23, 64
    q, k, v = (rand(B, h, T, D, dtype=dtype) for h in (H, HKV, HKV))
    mask = torch.ones(B, 1, 1, T, dtype=torch.bool, device=DEVICE)
    mask[1, ..., :9] = False  # sequence 1 is left-padded by 9
    _check_prefill(q, k, v, True, mask, {"REVERSE": True}, bwd_cfg, f"half {dtype} {bwd_cfg}")


def test_prefill_head_dim_256_heavy_first():
    q, k, v = rand(1, 2, 17, 256, dtype=torch.bfloat16), rand(1, 1, 17, 256, dtype=torch.bfloat16), \
        rand(1, 1, 17, 256, dtype=torch.bfloat16)
    _check_prefill(q, k, v, True, None, {"REVERSE": True, "BLOCK_M": 16, "BLOCK_N": 16}, None, "D256")


def test_delta_kernel_matches_rowsum():
    """delta = rowsum(dO * O) in fp32 from the preprocess kernel, non-contiguous O/dO, Tq not a tile multiple."""
    B, H, T, D = 2, 3, 21, 80
    o = rand(B, T, H, D, dtype=torch.bfloat16).transpose(1, 2)
    do = rand(B, T, H, D, dtype=torch.bfloat16).transpose(1, 2)
    delta = torch.empty((B, H, T), dtype=torch.float32, device=DEVICE)
    A._attn_bwd_delta_kernel[(2, B * H)](o, do, delta, *o.stride()[:3], *do.stride()[:3], H, T, D,
                                         BLOCK_M=16, BLOCK_D=128, num_warps=1)
    want = (o.double() * do.double()).sum(-1)
    assert (delta.double() - want).abs().max().item() <= 1e-5 * max(1.0, want.abs().max().item())


def test_config_errors():
    q = rand(1, 2, 8, 16)
    with pytest.raises(ValueError, match="unknown attention config keys"):
        A.attention_fwd(q, q, q, True, 0.25, config={"BLOCK_Q": 64})
    with pytest.raises(ValueError, match="unknown decode config keys"):
        DA.decode_attention_fwd(q[:, :, :1], q, q, torch.tensor([8], device=DEVICE), 0.25, config={"SPLIT": 2})
    with pytest.raises(ValueError, match="COMBINE_ROWS"):
        DA.decode_attention_fwd(q[:, :, :1], q, q, torch.tensor([8], device=DEVICE), 0.25, config={"COMBINE_ROWS": 0})
    if not A.HAS_BLOCK_PTR:
        with pytest.raises(ValueError, match="make_block_ptr"):
            A.attention_fwd(q, q, q, True, 0.25, config={"BLOCK_PTR": True})


DECODE_VARIANTS = [
    pytest.param({}, id="default"),
    pytest.param({"FUSED": True}, id="fused"),
    pytest.param({"SPLITS": 5, "FUSED": True}, id="fused-5splits"),
    # 16-wide split tile: one-pass merge of the group at D <= 64, row by row at D128 x 8 rows (> 8192 partials)
    pytest.param({"SPLITS": 9, "FUSED": True}, id="fused-9splits"),
    pytest.param({"SPLITS": 1}, id="one-split"),
    pytest.param({"SPLITS": 7, "BLOCK_N": 32}, id="7splits-n32"),
    pytest.param({"MMA": False}, id="no-mma"),
    pytest.param({"MMA": False, "SPLITS": 5, "BLOCK_N": 32}, id="no-mma-5splits-n32"),
    pytest.param({"COMBINE_ROWS": 3, "SPLITS": 7}, id="combine-3rows"),
]


def _decode_ref(q, k, v, lengths, key_mask, dtype):
    ins = [t.to(dtype) for t in (q, k, v)]
    return reference.decode_attention(*ins, lengths, scale=1 / math.sqrt(q.shape[-1]), key_mask=key_mask)


@pytest.mark.parametrize("cfg", DECODE_VARIANTS)
@pytest.mark.parametrize("case", [
    pytest.param((2, 8, 2, 1, 70, 64, torch.float32), id="gqa4-fp32"),
    pytest.param((3, 3, 1, 2, 45, 80, torch.bfloat16), id="gqa3-Tq2-D80-bf16"),
    pytest.param((1, 8, 1, 1, 40, 128, torch.float16), id="gqa8-D128-fp16"),
])
def test_decode_variants(case, cfg):
    """Several calls on one cached plan with fresh inputs and different lengths each time: a stale scratch
    buffer or an unreset fused-combine counter shows up on the second and third call."""
    B, H, HKV, Tq, L, D, dtype = case
    k, v = rand(B, HKV, L, D, dtype=dtype), rand(B, HKV, L, D, dtype=dtype)
    key_mask = torch.ones(B, L, dtype=torch.bool, device=DEVICE)
    key_mask[-1, :5] = False  # left padding of the last sequence
    scale = 1 / math.sqrt(D)
    for step in range(3):
        q = rand(B, H, Tq, D, dtype=dtype)
        lengths = torch.tensor([L - 7 * step - b for b in range(B)], dtype=torch.int32, device=DEVICE)
        mask = key_mask if step == 1 else None
        o = DA.decode_attention_fwd(q, k, v, lengths, scale, mask, config=cfg)
        exact = _decode_ref(q, k, v, lengths, mask, torch.float64)
        lowp = None if dtype == torch.float32 else _decode_ref(q, k, v, lengths, mask, dtype)
        assert_matches(o, exact, lowp, name=f"decode {cfg} call {step}")


def test_decode_fully_masked_row_and_short_length():
    """A sequence whose visible keys are all masked outputs 0 (not NaN); a length shorter than one split's
    share leaves most splits empty."""
    B, H, HKV, L, D = 2, 4, 2, 64, 64
    q, k, v = rand(B, H, 1, D), rand(B, HKV, L, D), rand(B, HKV, L, D)
    lengths = torch.tensor([3, 64], dtype=torch.int32, device=DEVICE)
    key_mask = torch.ones(B, L, dtype=torch.bool, device=DEVICE)
    key_mask[0, :3] = False
    for cfg in ({"SPLITS": 4}, {"SPLITS": 4, "FUSED": True}):
        o = DA.decode_attention_fwd(q, k, v, lengths, 0.125, key_mask, config=cfg)
        assert torch.isfinite(o).all()
        assert o[0].abs().max().item() == 0.0
        want = reference.decode_attention(q.double(), k.double(), v.double(), lengths, scale=0.125,
                                          key_mask=key_mask)
        assert_matches(o[1], want[1], name=f"decode {cfg}")


def test_decode_one_split_is_one_launch():
    """One split (a short cache, or a batch that fills the GPU on its own): the split kernel writes the output
    itself, so the call is one launch and the partial scratch is never written (poisoned, it stays NaN)."""
    B, H, HKV, L, D = 2, 8, 2, 40, 64
    q, k, v = rand(B, H, 1, D), rand(B, HKV, L, D), rand(B, HKV, L, D)
    lengths = torch.tensor([40, 17], dtype=torch.int32, device=DEVICE)
    DA.clear_decode_cache()
    o = DA.decode_attention_fwd(q, k, v, lengths, 0.125, config={"SPLITS": 1})
    (call,) = DA._CALLS.plans.values()
    assert call.p.direct and len(call.launches.launches) == 1
    for buf in next(iter(call.p.scratch.values()))[:2]:
        buf.fill_(float("nan"))
    o = DA.decode_attention_fwd(q, k, v, lengths, 0.125, config={"SPLITS": 1})
    assert all(torch.isnan(buf).all() for buf in next(iter(call.p.scratch.values()))[:2])
    want = reference.decode_attention(q.double(), k.double(), v.double(), lengths, scale=0.125)
    assert_matches(o, want, name="decode one split")
    # several splits: two launches (split + combine), as before
    DA.decode_attention_fwd(q, k, v, lengths, 0.125, config={"SPLITS": 3})
    assert [len(c.launches.launches) for c in DA._CALLS.plans.values()] == [1, 2]


@pytest.mark.gpu
@pytest.mark.parametrize("cfg", [{}, {"SPLITS": 1}, {"FUSED": True}, {"FUSED": True, "SPLITS": 64},
                                 {"PDL": True, "SPLITS": 256, "MIN_CHUNK": 16, "COMBINE_ROWS": 4},
                                 {"MMA": False, "BLOCK_N": 32, "PDL": True}],
                         ids=["two-launch", "one-split", "fused", "fused-64splits", "pdl-256splits-4rows", "no-mma-pdl"])
def test_decode_variants_cuda_graph_replay(cfg):
    """On the GPU: the decode launch captured in a CUDA graph and replayed while lengths grow in place gives the
    reference result every time (eager calls on the same stream in between share no scratch with the graph). A
    captured fused call zeroes its fresh counters inside the graph, so the kernel's own counter reset is tested by
    the repeated eager calls of test_decode_variants, not here."""
    B, H, HKV, L, D = 2, 32, 8, 4096, 64
    dt = torch.bfloat16
    q = torch.randn(B, H, 1, D, dtype=dt, device="cuda")
    k, v = (torch.randn(B, HKV, L, D, dtype=dt, device="cuda") for _ in range(2))
    lengths = torch.tensor([1000, 3000], dtype=torch.int32, device="cuda")
    fn = lambda: DA.decode_attention_fwd(q, k, v, lengths, 0.125, config=cfg)  # noqa: E731
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    for step in range(4):
        lengths += 17 * step
        q.normal_()
        g.replay()
        eager = fn()  # an eager call between replays, same stream
        want = reference.decode_attention(q.double(), k.double(), v.double(), lengths, scale=0.125)
        lowp = reference.decode_attention(q, k, v, lengths, scale=0.125)
        assert_matches(out, want, lowp, name=f"graph replay {step} {cfg}")
        assert_matches(eager, want, lowp, name=f"eager {step} {cfg}")


@pytest.mark.parametrize("cfg", [pytest.param({"LAZY": True}, id="lazy"),
                                 pytest.param({"LAZY": True, "TMA": True}, id="lazy-tma", marks=_NO_TMA)])
def test_prefill_lazy_rescale_moving_max(cfg):
    """The thresholded rescale (LAZY) with scores that grow along the keys by far more than its threshold (2^8),
    so the reference max moves on most tiles, plus left padding (fully masked rows) in bf16: output, lse-based
    gradients and empty rows must match the reference exactly as without the trick."""
    B, H, HKV, T, D = 2, 2, 1, 37, 64
    q = rand(B, H, T, D) * 3
    k = rand(B, HKV, T, D) * torch.linspace(0.2, 4.0, T, device=DEVICE)[:, None]
    v = rand(B, HKV, T, D)
    _check_prefill(q, k, v, True, None, {**cfg, "BLOCK_M": 16, "BLOCK_N": 16}, None, f"lazy fp32 {cfg}")
    qh, kh, vh = (t.to(torch.bfloat16) for t in (q, k, v))
    mask = torch.ones(B, 1, 1, T, dtype=torch.bool, device=DEVICE)
    mask[1, ..., :20] = False
    _check_prefill(qh, kh, vh, True, mask, cfg, None, f"lazy bf16 padded {cfg}")


def test_tma_config_errors():
    """TMA refuses what tensor descriptors cannot describe, with the reason: a key stride that is not a multiple
    of 16 bytes (head_dim 6 in fp32 = 24 bytes), and Tritons without the API."""
    q = rand(1, 2, 8, 6)
    if not A.HAS_TMA:
        with pytest.raises(ValueError, match="make_tensor_descriptor"):
            A.attention_fwd(q, q, q, True, 0.25, config={"TMA": True})
        return
    with pytest.raises(ValueError, match="16-byte"):
        A.attention_fwd(q, q, q, True, 0.25, config={"TMA": True})
    with pytest.raises(ValueError, match="BLOCK_PTR"):
        A.attention_fwd(q, q, q, True, 0.25, config={"WS": True, "BLOCK_PTR": True})
