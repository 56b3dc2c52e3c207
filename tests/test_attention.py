"""Flash-attention (prefill, fwd+bwd) and flash-decoding against math attention in float64.
Catches: the causal diagonal off by the prefix length, GQA heads mapped to the wrong KV head, dk/dv not summed
over a group, the last partial tile of queries or keys, head_dim 80 (not a power of two), fully masked
(padded) query rows producing NaN, decode lengths ignored or the split combine weighting wrong."""

import pytest
import torch

from litekernels import decode_attention, flash_attention, reference
from tests.conftest import requires_kernels
from tests.helpers import DEVICE, assert_matches, check_op, rand

pytestmark = [requires_kernels(), pytest.mark.usefixtures("poison")]

# A long row: 130 crosses the GPU's 128-row tile; the interpreter's tiles are 16 wide, where 50 (three full
# blocks and a partial one) covers the same cases at a fifth of the cost (130 with 8 heads took ~100 s a test).
# tests/test_gpu_tiles.py runs the GPU's tiles on the CPU at 130-150.
T_LONG = 130 if torch.cuda.is_available() else 50
GQA = [pytest.param((4, 4), id="mha"), pytest.param((3, 1), id="gqa3"), pytest.param((4, 1), id="gqa4"),
       pytest.param((8, 1), id="gqa8")]


def _attn(causal, mask=None, scale=None):
    def ours(q, k, v):
        return flash_attention(q, k, v, causal=causal, attn_mask=mask, scale=scale)

    def ref(q, k, v):
        return reference.attention(q, k, v, causal=causal, attn_mask=mask, scale=scale)

    return ours, ref


@pytest.mark.parametrize("T", [1, 17, T_LONG])
@pytest.mark.parametrize("heads", GQA)
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_flash_attention_fp32(T, heads, causal):
    H, HKV = heads
    q, k, v = (rand(2, h, T, 64, requires_grad=True) for h in (H, HKV, HKV))
    check_op(*_attn(causal), [q, k, v], name=f"attention T={T}")


@pytest.mark.parametrize("D", [64, 80, 128])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_flash_attention_half(D, dtype):
    q, k, v = (rand(1, h, 33, D, dtype=dtype, requires_grad=True) for h in (4, 1, 1))
    check_op(*_attn(True), [q, k, v], name=f"attention {dtype} D={D}")


@pytest.mark.parametrize("T, S", [(1, 40), (17, 50), (5, 130)], ids=["decode-prefix", "chunk-prefix", "short-q"])
def test_flash_attention_with_cached_prefix(T, S):
    q = rand(2, 4, T, 64, requires_grad=True)
    k, v = rand(2, 2, S, 64, requires_grad=True), rand(2, 2, S, 64, requires_grad=True)
    check_op(*_attn(True), [q, k, v], name="prefix")


def test_flash_attention_left_padding_mask():
    B, T = 3, 37
    valid = torch.ones(B, T, dtype=torch.bool, device=DEVICE)
    valid[1, :5] = False
    valid[2, :20] = False
    mask = valid[:, None, None, :]  # key padding, broadcast over heads and queries
    q, k, v = rand(B, 4, T, 64, requires_grad=True), rand(B, 2, T, 64, requires_grad=True), rand(B, 2, T, 64, requires_grad=True)
    check_op(*_attn(True, mask), [q, k, v], name="left padding")


@pytest.mark.parametrize("dtype, D, T, S, causal", [
    (torch.float32, 64, T_LONG, T_LONG, True), (torch.bfloat16, 80, 23, 23, False),
    (torch.float32, 32, 6, 40, True)], ids=["fp32-long-causal", "bf16-d80-full", "fp32-cached-prefix"])
def test_flash_attention_key_mask_fast_path(dtype, D, T, S, causal):
    """A padding mask given as one row of key flags per batch (stride 0 over heads and queries, what the
    patched model's mask builder hands the kernel) takes the KEY_MASK path, which applies it to every tile
    and leaves causal attention's unmasked tiles unmasked: the diagonal, the tiles before it, a cached prefix
    (Tq < Tk, bottom-right causal) and fully masked rows (batch 2's first queries see only padding)."""
    B, H, HKV = 3, 4, 1
    valid = torch.ones(B, S, dtype=torch.bool, device=DEVICE)
    valid[1, : S // 3] = False
    valid[2, : S - T + min(T - 1, 20)] = False  # with causal, batch 2's first queries have no key at all
    valid[0, S // 2] = False  # a hole in the middle (not padding HF builds, but a key mask all the same)
    mask = valid[:, None, None, :].expand(B, 1, T, S)
    q = rand(B, H, T, D, dtype=dtype, requires_grad=True)
    k, v = (rand(B, HKV, S, D, dtype=dtype, requires_grad=True) for _ in range(2))
    check_op(*_attn(causal, mask), [q, k, v], name=f"key mask causal={causal}")


@pytest.mark.parametrize("dtype, shape, causal", [(torch.float32, "per-query", True),
                                                   (torch.bfloat16, "per-head-query", False)],
                         ids=["fp32-per-query-causal", "bf16-per-head-query-full"])
def test_flash_attention_per_query_mask(dtype, shape, causal):
    """A mask that differs per query row (and per head): a kernel that reads the mask with the key stride only,
    or ignores the query/head strides, passes every key-padding test but fails this one."""
    B, H, HKV, T = 2, 4, 2, 21
    mshape = (B, 1, T, T) if shape == "per-query" else (B, H, T, T)
    mask = torch.rand(mshape, device=DEVICE) < 0.6
    mask[..., 0] = True  # every row keeps a key (fully masked rows have their own test)
    q, k, v = (rand(B, h, T, 32, dtype=dtype, requires_grad=True) for h in (H, HKV, HKV))
    check_op(*_attn(causal, mask), [q, k, v], name=f"{shape} mask causal={causal}")


def test_flash_attention_fully_masked_rows_are_zero_not_nan():
    mask = torch.zeros(1, 1, 20, 20, dtype=torch.bool, device=DEVICE)
    mask[..., 10:, :] = True
    q, k, v = (rand(1, 2, 20, 32, requires_grad=True) for _ in range(3))
    o = flash_attention(q, k, v, causal=False, attn_mask=mask)
    assert torch.equal(o[:, :, :10], torch.zeros_like(o[:, :, :10]))
    o.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_flash_attention_custom_scale_and_strided_input():
    q = rand(1, 17, 4, 64).transpose(1, 2).requires_grad_()  # HF layout
    k, v = rand(1, 17, 2, 64).transpose(1, 2).requires_grad_(), rand(1, 17, 2, 64).transpose(1, 2).requires_grad_()
    check_op(*_attn(True, scale=0.3), [q, k, v], name="scale")


@pytest.mark.parametrize("Tq", [1, 3])
@pytest.mark.parametrize("heads, D", [((4, 1), 64), ((9, 3), 80), ((8, 2), 128)], ids=["gqa4-64", "smollm-80", "gqa4-128"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_decode_attention(Tq, heads, D, dtype):
    H, HKV = heads
    B, L = 3, 70
    q = rand(B, H, Tq, D, dtype=dtype)
    kc, vc = rand(B, HKV, L, D, dtype=dtype), rand(B, HKV, L, D, dtype=dtype)
    lengths = torch.tensor([Tq, 33, L], dtype=torch.int32, device=DEVICE)
    key_mask = torch.ones(B, L, dtype=torch.bool, device=DEVICE)
    key_mask[1, :4] = False  # left padding of sequence 1
    for km in (None, key_mask):
        out = decode_attention(q, kc, vc, lengths, key_mask=km)
        exact = reference.decode_attention(q.double(), kc.double(), vc.double(), lengths, key_mask=km)
        lowp = reference.decode_attention(q, kc, vc, lengths, key_mask=km)
        assert_matches(out, exact, lowp, name=f"decode mask={km is not None}")


def test_decode_attention_equals_prefill_last_row():
    q, k, v = rand(2, 8, 30, 64), rand(2, 2, 30, 64), rand(2, 2, 30, 64)
    full = flash_attention(q, k, v, causal=True)
    last = decode_attention(q[:, :, -1:], k, v, torch.tensor([30, 30], device=DEVICE))
    torch.testing.assert_close(last, full[:, :, -1:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("call, exc, words", [
    (lambda: flash_attention(torch.ones(1, 5, 4, 64), torch.ones(1, 2, 4, 64), torch.ones(1, 2, 4, 64)),
     ValueError, "cannot be grouped"),
    (lambda: flash_attention(torch.ones(1, 2, 4, 320), torch.ones(1, 2, 4, 320), torch.ones(1, 2, 4, 320)),
     ValueError, "head_dim 320"),
    (lambda: flash_attention(torch.ones(1, 2, 4, 64), torch.ones(1, 2, 4, 64, dtype=torch.float16),
                             torch.ones(1, 2, 4, 64)), TypeError, "k has dtype"),
    (lambda: flash_attention(torch.ones(1, 2, 4, 64), torch.ones(1, 2, 4, 64), torch.ones(1, 2, 4, 64),
                             attn_mask=torch.ones(1, 1, 4, 4)), TypeError, "attn_mask must be a bool"),
    (lambda: decode_attention(torch.ones(2, 2, 1, 64), torch.ones(2, 2, 8, 64), torch.ones(2, 2, 8, 64),
                              torch.tensor([3])), ValueError, "lengths must have shape"),
    (lambda: decode_attention(torch.ones(1, 2, 1, 64), torch.ones(1, 2, 8, 64), torch.ones(1, 2, 8, 64),
                              torch.tensor([3.0])), TypeError, "lengths has dtype"),
])
def test_attention_bad_input(call, exc, words):
    with pytest.raises(exc, match=words):
        call()
