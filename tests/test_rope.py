"""RoPE against HF's apply_rotary_pos_emb math. Catches: interleaved instead of rotate_half pairs, only the
first half of cos/sin used (wrong for arbitrary cos/sin), a wrong sign in the backward's transpose, head_dim
not a power of two (80, 96), strided q as HF passes it, batch-broadcast cos/sin, heads past the first block."""

import pytest
import torch

from litekernels import apply_rope, reference
from tests.conftest import requires_kernels
from tests.helpers import DEVICE, check_op, rand

pytestmark = [requires_kernels(), pytest.mark.usefixtures("poison")]


def _qk(B, H, HKV, T, D, dtype, transposed=True):
    if transposed:  # HF: view(B, T, H, D).transpose(1, 2)
        q = rand(B, T, H, D, dtype=dtype).transpose(1, 2).requires_grad_()
        k = rand(B, T, HKV, D, dtype=dtype).transpose(1, 2).requires_grad_()
    else:
        q, k = rand(B, H, T, D, dtype=dtype, requires_grad=True), rand(B, HKV, T, D, dtype=dtype, requires_grad=True)
    return q, k


HEADS = {"smollm-9/3": (9, 3), "llama-32/8": (32, 8), "mha-4/4": (4, 4)}
# Every head layout at T = 1 (decode) and 7 (contiguous q/k); the long sequence (130 positions, HF's transposed
# layout) only at Llama's 32/8: the kernel runs one program per (batch, position) over all heads, so the head
# layouts are covered by the shorter cases and T = 130 adds the program count (interpreted bf16 cases take ~3 s).
T_HEADS = [pytest.param(T, HEADS[h], id=f"{T}-{h}") for T in (1, 7) for h in HEADS] + \
    [pytest.param(130, HEADS["llama-32/8"], id="130-llama-32/8")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("D", [64, 80, 96, 128])
@pytest.mark.parametrize("T, heads", T_HEADS)
def test_rope_matches_reference(T, heads, D, dtype):
    H, HKV = heads
    B = 2
    q, k = _qk(B, H, HKV, T, D, dtype, transposed=T != 7)
    cos, sin = rand(1, T, D, dtype=dtype), rand(1, T, D, dtype=dtype)  # arbitrary values: both halves matter
    check_op(lambda a, b, c, s: apply_rope(a, b, c, s), reference.apply_rope, [q, k, cos, sin], name=f"rope {dtype}")


def test_rope_per_batch_cos_and_2d_cos():
    q, k = _qk(3, 4, 2, 5, 64, torch.float32)
    cos, sin = rand(3, 5, 64), rand(3, 5, 64)
    check_op(apply_rope, reference.apply_rope, [q, k, cos, sin], name="per-batch cos")
    check_op(apply_rope, reference.apply_rope, [q, k, cos[0], sin[0]], name="2-D cos")


def test_rope_with_llama3_scaled_hf_cos_sin():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    cfg = LlamaConfig(hidden_size=256, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192,
                      rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 8192})
    rot = LlamaRotaryEmbedding(cfg).to(DEVICE)
    q, k = _qk(2, 4, 2, 9, 64, torch.float32)
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, 6, 7, 8], [100, 2000, 5000, 7000, 8100, 3, 4, 5, 6]], device=DEVICE)
    cos, sin = rot(q, pos)
    ours = apply_rope(q, k, cos, sin)
    theirs = apply_rotary_pos_emb(q, k, cos, sin)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_rope_output_keeps_layout_and_norm():
    q, k = _qk(1, 4, 2, 6, 64, torch.float32)
    t = torch.linspace(0, 3, 32, device=DEVICE)
    freqs = torch.cat([t, t])[None, None].expand(1, 6, 64) * torch.arange(6.0, device=DEVICE)[None, :, None]
    qo, ko = apply_rope(q, k, freqs.cos(), freqs.sin())
    assert qo.stride() == q.stride()
    # a rotation: per-pair norms are preserved
    torch.testing.assert_close(qo.norm(dim=-1), q.norm(dim=-1), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw, exc, words", [
    (dict(k=torch.ones(2, 2, 5, 32)), ValueError, "k has shape"),
    (dict(cos=torch.ones(1, 4, 64)), ValueError, "cos has shape"),
    (dict(q=torch.ones(2, 4, 5, 63), k=torch.ones(2, 2, 5, 63), cos=torch.ones(5, 63), sin=torch.ones(5, 63)),
     ValueError, "even"),
    (dict(k=torch.ones(2, 2, 5, 64, dtype=torch.float16)), TypeError, "k has dtype"),
])
def test_rope_bad_input(kw, exc, words):
    args = dict(q=torch.ones(2, 4, 5, 64), k=torch.ones(2, 2, 5, 64), cos=torch.ones(5, 64), sin=torch.ones(5, 64))
    args.update(kw)
    with pytest.raises(exc, match=words):
        apply_rope(**args)


@pytest.mark.parametrize("heads, D", [((9, 3), 64), ((32, 8), 128), ((4, 1), 80)], ids=["smollm", "llama", "d80"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_rope_cache_write_matches_reference(heads, D, dtype):
    from litekernels.functional import rope_cache_write

    H, KV = heads
    B, L = 3, 40
    qkv = rand(B, H + 2 * KV, D, dtype=dtype)
    ang = torch.rand(L, D // 2, device=DEVICE) * 10
    cos, sin = torch.cat([ang, ang], -1).cos().to(dtype), torch.cat([ang, ang], -1).sin().to(dtype)
    pos = torch.tensor([0, 17, L - 1], device=DEVICE)
    caches = [rand(B + 1, KV, L, D, dtype=dtype) for _ in range(2)]  # one spare row: must stay untouched
    ref_caches = [c.clone() for c in caches]
    q = rope_cache_write(qkv, cos, sin, pos, caches[0][:B], caches[1][:B], H, KV)
    scratch = [c[:B].double() for c in ref_caches]
    q_ref = reference.rope_cache_write(qkv.double(), cos.double(), sin.double(), pos, *scratch, H, KV)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(q.double(), q_ref, **tol)
    reference.rope_cache_write(qkv, cos, sin, pos, ref_caches[0][:B], ref_caches[1][:B], H, KV)
    for got, want in zip(caches, ref_caches):
        torch.testing.assert_close(got, want, **tol)  # written slots right, every other slot and row unchanged
