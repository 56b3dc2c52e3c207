"""The tile configurations the GPU picks, run by the interpreter on tiny shapes.

Under TRITON_INTERPRET=1 the ops pick 16x16 tiles (`if INTERPRET:` in their config functions) so the op tests
stay fast; a bound that is wrong only with the GPU's 128x64 attention tiles, its 64-key decode tiles and
split count, its 32x512 skinny-GEMM tiles or its one-program-per-band RMSNorm backward would then pass CI.
The `gpu_tiles` fixture makes the config functions answer as they do on a GPU (their `INTERPRET` flag off
for the duration of the call only; `exact_dot`, which keeps the interpreter's products exact, is untouched).
Sequence lengths are not multiples of any tile. On a GPU every op test already runs these tiles: skipped.
"""

import pytest
import torch

import litekernels.ops.attention as attn
import litekernels.ops.decode_attention as dec
import litekernels.ops.linear as lin
import litekernels.ops.rms_norm as rms
from litekernels import decode_attention, flash_attention, fused_add_rms_norm, reference, rms_norm
from litekernels.functional import decode_linear
from tests.conftest import INTERPRET
from tests.helpers import DEVICE, assert_matches, check_op, rand

pytestmark = [pytest.mark.skipif(not INTERPRET, reason="needs TRITON_INTERPRET=1 (a GPU runs these tiles in "
                                                       "every op test)"), pytest.mark.usefixtures("poison")]


def _as_on_gpu(module, fn):
    def config(*args, **kwargs):
        saved = module.INTERPRET
        module.INTERPRET = False
        try:
            return fn(*args, **kwargs)
        finally:
            module.INTERPRET = saved

    return config


@pytest.fixture
def gpu_tiles(monkeypatch):
    # If an op's launch settings move (new names, a shared module), update this fixture: it must fail, not
    # silently fall back to the interpreter's tiles.
    for module, names in ((attn, ("fwd_config", "bwd_config")), (lin, ("_config",))):
        for name in names:
            assert hasattr(module, name) and hasattr(module, "INTERPRET"), f"{module.__name__}.{name} is gone"
            monkeypatch.setattr(module, name, _as_on_gpu(module, getattr(module, name)))
    # settings and decode plans are cached per shape: start empty so the GPU tiles are chosen anew (and dropped after)
    for module, cache in ((attn, "_settings_cache"), (dec, "_plans")):
        assert hasattr(module, cache), f"{module.__name__}.{cache} is gone"
        monkeypatch.setattr(module, cache, {})
    # decode: its INTERPRET flag only picks the tile (BLOCK_N 64), the split count and warps
    monkeypatch.setattr(dec, "INTERPRET", False)
    # ... but not its PDL default (sm_90+): a launch attribute and gdc intrinsics the interpreter cannot run
    assert hasattr(dec, "HAS_PDL"), "decode's PDL default moved: keep it off here"
    monkeypatch.setattr(dec, "HAS_PDL", False)
    # RMSNorm: row tiles are the same on both; the backward's program count follows the SM count (132 on H100/H200)
    monkeypatch.setattr(rms, "num_sms", lambda *a: 132)
    assert attn.fwd_config(64)["BLOCK_M"] != 16 and lin._config(64, 600)[:2] != (16, 32)
    assert dec.choose_splits(1, 2, 600) > 1


@pytest.mark.parametrize("Tq, Tk, heads, D, causal", [
    (150, 150, (4, 1), 64, True),     # 128x64 forward tiles, 64x64 backward; 150 = 128 + 22
    (70, 201, (2, 2), 80, True),      # cached prefix, head_dim 80 (padded to 128)
    (1, 77, (3, 1), 64, True),        # one query row in a 128-row tile
    (130, 130, (2, 1), 64, False),
], ids=["causal-150-gqa4", "prefix-70-201-d80", "decode-row", "full-130"])
def test_flash_attention_gpu_tiles(gpu_tiles, Tq, Tk, heads, D, causal):
    H, HKV = heads
    q = rand(1, H, Tq, D, requires_grad=True)
    k, v = rand(1, HKV, Tk, D, requires_grad=True), rand(1, HKV, Tk, D, requires_grad=True)
    check_op(lambda a, b, c: flash_attention(a, b, c, causal=causal),
             lambda a, b, c: reference.attention(a, b, c, causal=causal), [q, k, v], name="gpu tiles")


def test_flash_attention_gpu_tiles_mask_bf16(gpu_tiles):
    B, T = 2, 140
    mask = torch.rand(B, 1, T, T, device=DEVICE) < 0.7
    mask[..., 0] = True
    mask[1, ..., :30] = False  # plus left padding of sequence 1
    mask[1, :, 30:, 30] = True
    q, k, v = (rand(B, h, T, 64, dtype=torch.bfloat16, requires_grad=True) for h in (2, 1, 1))
    check_op(lambda a, b, c: flash_attention(a, b, c, attn_mask=mask),
             lambda a, b, c: reference.attention(a, b, c, attn_mask=mask), [q, k, v], name="gpu tiles mask")


@pytest.mark.parametrize("Tq", [1, 3])
def test_decode_attention_gpu_tiles(gpu_tiles, Tq):
    B, H, HKV, L, D = 3, 8, 2, 600, 64  # 3 splits of 64-key tiles
    q = rand(B, H, Tq, D, dtype=torch.bfloat16)
    kc, vc = rand(B, HKV, L, D, dtype=torch.bfloat16), rand(B, HKV, L, D, dtype=torch.bfloat16)
    lengths = torch.tensor([Tq, 300, L], dtype=torch.int32, device=DEVICE)
    key_mask = torch.ones(B, L, dtype=torch.bool, device=DEVICE)
    key_mask[2, :70] = False
    out = decode_attention(q, kc, vc, lengths, key_mask=key_mask)
    exact = reference.decode_attention(q.double(), kc.double(), vc.double(), lengths, key_mask=key_mask)
    lowp = reference.decode_attention(q, kc, vc, lengths, key_mask=key_mask)
    assert_matches(out, exact, lowp, name="decode gpu tiles")


@pytest.mark.parametrize("N, K", [(70, 600), (20, 8200)], ids=["32x512", "long-k-16x512"])
@pytest.mark.parametrize("rows", [1, 16])
def test_decode_linear_gpu_tiles(gpu_tiles, rows, N, K):
    x, w, b = rand(rows, K, dtype=torch.bfloat16), rand(N, K, dtype=torch.bfloat16), rand(N, dtype=torch.bfloat16)
    with torch.no_grad():
        out = decode_linear(x, w, b)
        exact = torch.nn.functional.linear(x.double(), w.double(), b.double())
        lowp = torch.nn.functional.linear(x, w, b)
    assert_matches(out, exact, lowp, name="linear gpu tiles")


@pytest.mark.parametrize("rows, hidden", [(37, 576), (100, 128), (3, 2048)])
def test_rms_norm_gpu_program_count(gpu_tiles, rows, hidden):
    x = rand(rows, hidden, requires_grad=True)
    r = rand(rows, hidden, requires_grad=True)
    w = (1 + 0.1 * rand(hidden)).requires_grad_()
    check_op(lambda a, b: rms_norm(a, b, 1e-6), lambda a, b: reference.rms_norm(a, b, 1e-6), [x, w], name="rms gpu")
    check_op(lambda a, b, c: fused_add_rms_norm(a, b, c, 1e-6),
             lambda a, b, c: reference.fused_add_rms_norm(a, b, c, 1e-6), [x, r, w], name="fused gpu")


def test_decode_split_counts(monkeypatch):
    """The split rule on a 132-SM GPU (H200) gives the counts measured best (DECODE_DEFAULTS' comment): about two
    programs per SM, powers of two, one split when the (batch, KV head) pairs fill the GPU or the cache is short."""
    monkeypatch.setattr(dec, "INTERPRET", False)
    monkeypatch.setattr(dec, "num_sms", lambda *a: 132)
    assert dec.choose_splits(1, 8, 32768) == 32
    assert dec.choose_splits(8, 8, 8192) == 4
    assert dec.choose_splits(64, 8, 2048) == 1
    assert dec.choose_splits(1, 8, 256) == 1  # one launch for an eager call on a short cache
    assert dec.choose_splits(1, 8, 512, min_chunk=64) == 8  # the runtime's graph-replayed step
    assert dec.choose_splits(1, 1, 10 ** 6) == 128  # MAX_SPLITS
