"""Training memory: what the patched model keeps for backward, and the in-place SiLU*mul backward in the patch.

Easy mistakes these catch:
  * attention returning a contiguous (B, H, T, D) output for HF's transposed q: the attention saves o and
    o_proj saves a second, transposed copy of it (33.6 MB per layer at Llama-3.2-1B B4 T2048);
  * gradients of q/k/v in a layout the projections cannot view (a copy per projection in backward);
  * the patched MLP's in-place backward overwriting gate/up that something else still needs through
    autograd (must raise, never compute with gradient values), or not being in place at all;
  * in-place reuse going wrong when the generation runtime made gate_proj/up_proj weights views of one buffer.
"""

import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from litekernels import flash_attention, reference
from litekernels.patches import apply_lite_llama
from tests.conftest import requires_kernels
from tests.helpers import DEVICE, assert_matches

pytestmark = requires_kernels()

TINY = dict(hidden_size=64, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2, head_dim=16)


def _tiny_model(dtype=torch.float32, layers=2):
    cfg = LlamaConfig(**TINY, num_hidden_layers=layers, vocab_size=128, max_position_embeddings=64, pad_token_id=0,
                      rms_norm_eps=1e-5, tie_word_embeddings=True)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).to(device=DEVICE, dtype=dtype).train()


def _hf_layout(B, T, H, D, dtype):
    """(B, H, T, D) views of (B, T, H, D) buffers, as HF's projections give them."""
    return torch.randn(B, T, H, D, device=DEVICE, dtype=dtype).transpose(1, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_attention_output_and_gradients_follow_the_input_layout(dtype):
    B, T, H, HKV, D = 2, 37, 4, 2, 16
    q = _hf_layout(B, T, H, D, dtype).requires_grad_()
    k = _hf_layout(B, T, HKV, D, dtype).requires_grad_()
    v = _hf_layout(B, T, HKV, D, dtype).requires_grad_()
    o = flash_attention(q, k, v, causal=True)
    assert o.stride() == q.stride() and o.transpose(1, 2).is_contiguous()  # o_proj's reshape is a view
    do = torch.randn_like(o)
    dq, dk, dv = torch.autograd.grad(o, (q, k, v), do)
    assert (dq.stride(), dk.stride(), dv.stride()) == (q.stride(), k.stride(), v.stride())
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref = reference.attention(q64, k64, v64, causal=True)
    rq, rk, rv = torch.autograd.grad(ref, (q64, k64, v64), do.double())
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(o.double(), ref, **tol)
    for got, want in ((dq, rq), (dk, rk), (dv, rv)):
        torch.testing.assert_close(got.double(), want, **tol)


def test_attention_with_contiguous_inputs_stays_contiguous():
    q, k, v = (torch.randn(1, 2, 9, 16, device=DEVICE, requires_grad=True) for _ in range(3))
    o = flash_attention(q, k, v, causal=True)
    assert o.is_contiguous()
    assert all(g.is_contiguous() for g in torch.autograd.grad(o.sum(), (q, k, v)))


def test_patched_layer_keeps_the_attention_output_once():
    """Every tensor the patched decoder layer saves, by storage: no second copy of o, and exactly the bytes of
    Liger-Kernel's layer less down_proj's input (recomputed in backward): norm inputs + rstd, projection inputs,
    q/k/v/o/lse, gate/up."""
    from bench.train_memory_audit import audit_once, summarize

    T, hidden, inter = 16, TINY["hidden_size"], TINY["intermediate_size"]
    H, HKV, D = TINY["num_attention_heads"], TINY["num_key_value_heads"], TINY["head_dim"]
    res = audit_once("lite", T, layers=3, vocab=64, backward=False, widths=TINY)
    o_proj = [r for r in res["rows"] if r["module"] == "model.layers.1.self_attn.o_proj"]
    assert o_proj and not any(r["counted"] for r in o_proj), o_proj  # only the weight and an alias of o
    per_layer = summarize(res, 3)["per_layer"][1]
    bf16, f32 = 2, 4
    want = T * (2 * (hidden * bf16 + f32)                                # two norms: input + rstd
                + hidden * bf16                                        # q/k/v projections' input (one)
                + (2 * H * D + 2 * HKV * D) * bf16 + H * f32           # q, o, k, v, lse
                + hidden * bf16 + 2 * inter * bf16)                    # gate/up input, gate, up (not their product)
    assert sum(per_layer.values()) == want, per_layer


def _grads(model, ids):
    loss = model(input_ids=ids, labels=ids).loss
    return loss, torch.autograd.grad(loss, list(model.parameters()))


def test_inplace_silu_mul_backward_of_the_patched_mlp_with_runtime_fused_weights():
    """The runtime makes gate_proj/up_proj weights views of one buffer; the activations stay separate, so the
    patched MLP's backward still writes d gate / d up over gate / up, and every gradient equals HF's."""
    from litekernels.generation.runtime import LlamaRuntime

    model = _tiny_model()
    ref = copy.deepcopy(model)
    LlamaRuntime(model, max_batch=1, max_seq_len=32)
    mlp = model.model.layers[0].mlp
    assert mlp.gate_proj.weight.untyped_storage().data_ptr() == mlp.up_proj.weight.untyped_storage().data_ptr()
    apply_lite_llama(model)
    seen = {}

    def keep_ptr(name):
        def hook(_, __, out):
            ptr = out.data_ptr()
            out.register_hook(lambda g: seen.__setitem__(name, g.data_ptr() == ptr))  # returns None: g kept
        return hook

    mlp.gate_proj.register_forward_hook(keep_ptr("gate"))
    mlp.up_proj.register_forward_hook(keep_ptr("up"))
    ids = torch.randint(1, 128, (2, 13), device=DEVICE)
    loss, got = _grads(model, ids)
    ref_loss, want = _grads(ref, ids)
    assert seen == {"gate": True, "up": True}  # the gradients live in gate's and up's own storage
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    for (name, _), a, b in zip(model.named_parameters(), got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"grad of {n}: {m}")


def test_patched_mlp_raises_when_gate_is_needed_elsewhere():
    """An auxiliary loss on gate_proj's output (through a forward hook) needs gate's values in its backward,
    after the SiLU*mul backward overwrote them: autograd must refuse, not use gradient values."""
    model = _tiny_model()
    apply_lite_llama(model)
    aux = []
    model.model.layers[1].mlp.gate_proj.register_forward_hook(lambda m, i, out: aux.append(out.square().mean()))
    ids = torch.randint(1, 128, (1, 11), device=DEVICE)
    loss = model(input_ids=ids, labels=ids).loss + aux[0]
    with pytest.raises(RuntimeError, match="inplace operation"):
        loss.backward()


@pytest.mark.parametrize("dtype,bias", [(torch.float32, False), (torch.float32, True), (torch.bfloat16, True)],
                         ids=["fp32", "fp32-bias", "bf16-bias"])
def test_silu_mul_linear_matches_float64(dtype, bias):
    """down_proj(silu(gate) * up) with the product recomputed in backward: output and every gradient (gate, up,
    weight, bias) against float64 autograd; odd sizes, a strided (transposed-batch) gate."""
    from litekernels.ops.swiglu import silu_mul_linear

    rows, inter, hidden = 23, 72, 40
    x = torch.randn(rows, 16, device=DEVICE, dtype=dtype, requires_grad=True)
    wg, wu = (torch.randn(inter, 16, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(2))
    w = (torch.randn(hidden, inter, device=DEVICE, dtype=dtype) * 0.1).requires_grad_()
    b = torch.randn(hidden, device=DEVICE, dtype=dtype, requires_grad=True) if bias else None
    leaves = [t for t in (x, wg, wu, w, b) if t is not None]
    dout = torch.randn(rows, hidden, device=DEVICE, dtype=dtype)

    def run(fn, cast):
        ls = [t.detach().to(cast).requires_grad_() for t in leaves]
        xx, g_w, u_w, ww = ls[:4]
        out = fn(xx @ g_w.T, xx @ u_w.T, ww, ls[4] if bias else None)
        return out, torch.autograd.grad(out, ls, dout.to(cast))

    def torch_mlp(g, u, ww, bb):
        return torch.nn.functional.linear(torch.nn.functional.silu(g) * u, ww, bb)

    out, grads = run(silu_mul_linear, dtype)
    ref, ref_grads = run(torch_mlp, torch.float64)
    low, low_grads = run(torch_mlp, dtype)  # PyTorch's own error in this dtype bounds ours (tests/helpers.py)
    names = ["out", "d x", "d w_gate", "d w_up", "d w_down", "d bias"]
    for name, got, want, lowp in zip(names, (out, *grads), (ref, *ref_grads), (low, *low_grads)):
        assert_matches(got, want, lowp, name=name, rtol32=1e-5)


def test_patched_mlp_does_not_keep_the_product_but_falls_back_with_a_down_proj_hook():
    """Plain down_proj: the MLP saves gate and up only (down_proj's input is recomputed). A hook on down_proj
    (accelerate, PEFT, a user's) must still run, so the MLP then calls the module: same gradients either way."""
    from bench.train_memory_audit import audit_once

    def mlp_saved(res):
        return sum(r["storage_bytes"] for r in res["rows"] if r["counted"] and r["module"].startswith(
            "model.layers.1.mlp"))

    T, inter = 16, TINY["intermediate_size"]
    plain = audit_once("lite", T, layers=3, vocab=64, backward=False, widths=TINY)
    assert not [r for r in plain["rows"] if r["counted"] and r["module"] == "model.layers.1.mlp.down_proj"]

    model = _tiny_model()
    ref = copy.deepcopy(model)
    apply_lite_llama(model)
    calls = []
    model.model.layers[0].mlp.down_proj.register_forward_hook(lambda *a: calls.append(1))
    ids = torch.randint(1, 128, (2, 9), device=DEVICE)
    loss, got = _grads(model, ids)
    ref_loss, want = _grads(ref, ids)
    assert calls == [1]
    torch.testing.assert_close(loss, ref_loss, atol=1e-5, rtol=1e-5)
    for (name, _), a, b in zip(model.named_parameters(), got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=lambda m, n=name: f"grad of {n}: {m}")
    assert mlp_saved(plain) == T * (TINY["hidden_size"] + 2 * inter) * 2  # gate_proj input, gate, up (bf16)


@pytest.mark.parametrize("frozen", ["weight", "inputs"])
def test_silu_mul_linear_partial_grads(frozen):
    """Only the inputs' or only the weight's gradient asked: the backward's two paths (dy reused for the
    recomputed product, or the product recomputed alone) against float64."""
    from litekernels.ops.swiglu import silu_mul_linear

    torch.manual_seed(3)
    g, u = (torch.randn(2, 9, 48, device=DEVICE) for _ in range(2))
    w = torch.randn(20, 48, device=DEVICE) * 0.1
    dout = torch.randn(2, 9, 20, device=DEVICE)
    leaves = (g, u) if frozen == "weight" else (w,)

    def grads(fn, cast):
        ls = [t.detach().to(cast).requires_grad_(any(t is x for x in leaves)) for t in (g, u, w)]
        gg, uu = (t * 1 for t in ls[:2])  # intermediates, as in the MLP (the backward overwrites them)
        out = fn(gg, uu, ls[2], None)
        return torch.autograd.grad(out, [t for t in ls if t.requires_grad], dout.to(cast))

    got = grads(silu_mul_linear, torch.float32)
    want = grads(lambda a, b, ww, bb: torch.nn.functional.linear(torch.nn.functional.silu(a) * b, ww, bb),
                 torch.float64)
    assert len(got) == len(want) == len(leaves)
    for x, y in zip(got, want):
        torch.testing.assert_close(x.double(), y, rtol=1e-5, atol=1e-5)
