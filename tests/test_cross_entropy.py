"""Fused linear cross-entropy: the op against float64 math, and the causal-LM patch against transformers.

Easy mistakes this file catches: a vocab tail block (V not a multiple of the kernel block) left out of the
log-sum-exp; a last chunk shorter than the others; ignored rows that still get a gradient; a mean over zero
labels that turns into NaN; grad_weight accumulated over only the last chunk; the label shift of causal LMs;
num_items_in_batch ignored; the patch not undone bit for bit.

Comparison (local, since tests/helpers.py is being rewritten): fp32 inputs must match the float64 reference
to 1e-5 of the output's largest magnitude. bf16 inputs follow the "2x PyTorch" rule: our error against the
float64 reference may be at most twice the error of the unfused computation transformers runs in bf16
(lm_head in bf16, logits upcast to fp32, F.cross_entropy), plus a few units in the last place of the output
dtype (outputs in fp32 - the loss - get 1e-5 instead).
"""

import pytest
import torch
import torch.nn.functional as F

from conftest import HAS_CUDA, INTERPRET, requires_kernels
from litekernels import fused_linear_cross_entropy, reference
from litekernels.ops import cross_entropy as ce

ULP = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}


def assert_close(actual, exact, lowp, in_dtype, name):
    assert actual.shape == exact.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(exact.shape)}"
    a, e = actual.detach().double(), exact.detach().double()
    assert torch.isfinite(a).all(), f"{name}: non-finite values"
    scale = max(e.abs().max().item(), 1e-30) if e.numel() else 1.0
    err = (a - e).abs().max().item() if e.numel() else 0.0
    if in_dtype == torch.float32:
        tol = 1e-5 * scale
    else:
        base = (lowp.detach().double() - e).abs().max().item()
        tol = 2 * base + (4 * ULP[actual.dtype] if actual.dtype in ULP else 1e-5) * scale
    assert err <= tol, f"{name}: max error {err:.3g} > tolerance {tol:.3g} (scale {scale:.3g})"


def hf_style(hidden, weight, labels, bias=None, *, ignore_index=-100, reduction="mean", label_smoothing=0.0,
             softcap=None, z_loss=0.0, n_items=None):
    """What transformers computes without the fusion: lm_head in the input dtype, then fp32 loss math."""
    logits = F.linear(hidden, weight, bias).float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    rows = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="none",
                           label_smoothing=label_smoothing)
    valid = labels != ignore_index
    if z_loss:
        rows = rows + z_loss * torch.logsumexp(logits, -1).pow(2) * valid
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    d = valid.sum() if n_items is None else torch.as_tensor(n_items)
    return rows.sum() / d.clamp_min(1)


def make(N, H, V, dtype, *, bias=False, ignore_every=0, device="cpu"):
    hidden = torch.randn(N, H, dtype=dtype, device=device)
    weight = (torch.randn(V, H, dtype=dtype, device=device) / H**0.25).to(dtype)
    b = torch.randn(V, dtype=dtype, device=device) if bias else None
    labels = torch.randint(0, V, (N,), device=device)
    if ignore_every:
        labels[::ignore_every] = -100
    return hidden, weight, b, labels


def run_and_compare(hidden, weight, bias, labels, dtype, name, chunk_size=None, ours=None, **kw):
    """Our loss and gradients vs float64 math (and the bf16 unfused baseline for the tolerance).
    ours: options only our op takes (accumulate_fp32, ...)."""
    leaves = [t for t in (hidden, weight, bias) if t is not None]
    ins = [t.detach().requires_grad_() for t in leaves]  # same storage and strides as given
    ex = [t.detach().double().requires_grad_() for t in leaves]
    lp = [t.clone().requires_grad_() for t in leaves]

    def split(ts):
        return ts[0], ts[1], ts[2] if bias is not None else None

    h, w, b = split(ins)
    loss = fused_linear_cross_entropy(h, w, labels, b, chunk_size=chunk_size, **(ours or {}), **kw)
    assert loss.dtype == torch.float32
    he, we, be = split(ex)
    exact = reference.fused_linear_cross_entropy(he, we, labels, be, **kw)
    hl, wl, bl = split(lp)
    lowp = hf_style(hl, wl, labels, bl, **kw)
    assert_close(loss, exact, lowp, dtype, f"{name} loss")
    g_out = torch.randn_like(loss)
    got = torch.autograd.grad(loss, ins, g_out)
    want = torch.autograd.grad(exact, ex, g_out.double())
    base = torch.autograd.grad(lowp, lp, g_out)
    for which, a, e, lo, t in zip(("hidden", "weight", "bias"), got, want, base, leaves):
        assert a.dtype == t.dtype and a.shape == t.shape
        assert_close(a, e, lo, dtype, f"{name} grad {which}")
    return loss, got


# ------------------------------------------------------------------------------------------------------------
# the op (Triton kernels: CUDA, or the interpreter on CPU)
# ------------------------------------------------------------------------------------------------------------
CASES = [
    pytest.param(dict(), id="plain"),
    pytest.param(dict(reduction="sum"), id="sum"),
    pytest.param(dict(reduction="none"), id="none"),
    pytest.param(dict(label_smoothing=0.1), id="smoothing"),
    pytest.param(dict(softcap=4.0), id="softcap"),
    pytest.param(dict(z_loss=1e-3), id="zloss"),
    pytest.param(dict(n_items=50), id="n_items"),
    pytest.param(dict(reduction="none", label_smoothing=0.2, softcap=3.0, z_loss=1e-2), id="none-all-options"),
]


@pytest.fixture
def small_block(monkeypatch):
    """Force several vocab blocks per row (V=203 -> 4 blocks of 64, the last one ragged)."""
    monkeypatch.setattr(ce, "MAX_BLOCK", 64)


@requires_kernels()
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("kw", CASES)
def test_matches_reference(dtype, kw, small_block, device):
    # 37 rows in chunks of 8 (last chunk 5 rows), every 4th label ignored, bias on
    hidden, weight, bias, labels = make(37, 48, 203, dtype, bias=True, ignore_every=4, device=device)
    run_and_compare(hidden, weight, bias, labels, dtype, str(kw), chunk_size=8, **kw)


@requires_kernels()
def test_default_chunking_without_bias_and_3d_input(device):
    # default chunk size: 45 rows fit one chunk (64 rows); hidden (B, T, H), labels (B, T)
    hidden, weight, _, labels = make(45, 32, 300, torch.float32, ignore_every=7, device=device)
    assert ce.chunk_rows(45, 300, 32, 4) == 64
    loss, _ = run_and_compare(hidden, weight, None, labels, torch.float32, "2d")
    loss3 = fused_linear_cross_entropy(hidden.view(5, 9, 32), weight, labels.view(5, 9))
    torch.testing.assert_close(loss3, loss, rtol=0, atol=0)
    per_token = fused_linear_cross_entropy(hidden.view(5, 9, 32), weight, labels.view(5, 9), reduction="none")
    assert per_token.shape == (5, 9) and (per_token.view(-1)[::7] == 0).all()


@requires_kernels()
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_strided_inputs_fp32_accumulation_and_every_output_written(dtype, poison, device):
    # hidden is a column slice (row stride 40), labels every other element; NaN-poisoned allocations
    big = torch.randn(29, 40, dtype=dtype, device=device)
    hidden = big[:, 3:35]
    weight = (torch.randn(77, 32, device=device) / 32**0.25).to(dtype)
    bias = torch.randn(77, device=device).to(dtype)
    labels = torch.randint(0, 77, (58,), device=device)[::2]
    labels[5] = -100
    assert not hidden.is_contiguous() and not labels.is_contiguous()
    run_and_compare(hidden, weight, bias, labels, dtype, "strided", chunk_size=4, ours=dict(accumulate_fp32=True))


def test_chunk_rows():
    # Llama-3.2-1B / 8B at 4 x 2048 tokens: GEMM_ROWS (2048) rows, 525 MB of bf16 logits per chunk (four chunks)
    assert ce.chunk_rows(8192, 128256, 2048) == 2048
    assert ce.chunk_rows(8192, 128256, 4096) == 2048
    assert ce.chunk_rows(8192, 128256, 4096, 4) == 2048  # fp32: 2048 rows are 1.05 GB, under 1 GiB (1.07 GB)
    assert ce.chunk_rows(8192, 262144, 4096, 4) == 1024  # a 262144 vocab in fp32: 1024 rows are 1 GiB
    # many tokens: never fewer rows than the hidden-states-sized chunk (1M / 63 -> 16645 -> 32768)
    assert ce.chunk_rows(1 << 20, 128256, 2048) == 32768
    assert ce.chunk_rows(3, 128256, 2048) == 4  # one chunk
    assert ce.chunk_rows(1, 10, 4096) == 1
    # no grad_weight to accumulate (frozen head, inference): the hidden-states-sized chunk, 8192 / 63 -> 256
    assert ce.chunk_rows(8192, 128256, 2048, grad_weight=False) == 256
    assert ce.chunk_rows(100, 10, 4096) == 128  # small vocab: one chunk


@requires_kernels()
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_rows_ignored_gives_zero_loss_and_zero_grads(reduction, device):
    hidden, weight, bias, _ = make(10, 16, 70, torch.float32, bias=True, device=device)
    labels = torch.full((10,), -100, device=device)
    h, w, b = (t.requires_grad_() for t in (hidden, weight, bias))
    loss = fused_linear_cross_entropy(h, w, labels, b, reduction=reduction, chunk_size=4)
    assert torch.isfinite(loss).all() and (loss == 0).all()
    grads = torch.autograd.grad(loss.sum(), (h, w, b))
    assert all(torch.isfinite(g).all() and (g == 0).all() for g in grads)


@requires_kernels()
def test_ignored_rows_get_no_gradient_and_custom_ignore_index(device):
    hidden, weight, _, labels = make(12, 16, 50, torch.float32, device=device)
    labels[3] = labels[8] = 7  # ignore_index=7 here
    h = hidden.requires_grad_()
    loss = fused_linear_cross_entropy(h, weight, labels, ignore_index=7, chunk_size=4)
    (gh,) = torch.autograd.grad(loss, h)
    assert (gh[3] == 0).all() and (gh[8] == 0).all() and (gh[0] != 0).any()
    keep = labels != 7
    torch.testing.assert_close(loss, F.cross_entropy(hidden.detach() @ weight.T, labels, ignore_index=7))
    assert keep.sum() == 10


@requires_kernels()
def test_n_items_tensor_and_zero_items(device):
    hidden, weight, _, labels = make(9, 16, 40, torch.float32, ignore_every=3, device=device)
    total = fused_linear_cross_entropy(hidden, weight, labels, reduction="sum")
    loss = fused_linear_cross_entropy(hidden, weight, labels, n_items=torch.tensor(25, device=device))
    torch.testing.assert_close(loss, total / 25)
    labels[:] = -100
    assert fused_linear_cross_entropy(hidden, weight, labels, n_items=0).item() == 0.0


@requires_kernels()
def test_no_grad_and_inputs_without_grad(device):
    hidden, weight, _, labels = make(11, 16, 40, torch.float32, device=device)
    with torch.no_grad():
        a = fused_linear_cross_entropy(hidden.requires_grad_(), weight, labels)
    assert not a.requires_grad
    w = weight.clone().requires_grad_()
    b = fused_linear_cross_entropy(hidden.detach(), w, labels)  # only the weight needs a gradient
    (gw,) = torch.autograd.grad(b, w)
    torch.testing.assert_close(a, b.detach())
    wd = weight.detach().double().requires_grad_()
    (ref,) = torch.autograd.grad(F.cross_entropy(hidden.detach().double() @ wd.T, labels), wd)
    torch.testing.assert_close(gw.double(), ref, rtol=1e-5, atol=1e-7)


@requires_kernels()
def test_second_backward_through_the_same_graph_raises(device):
    hidden, weight, _, labels = make(6, 16, 40, torch.float32, device=device)
    h = hidden.requires_grad_()
    loss = fused_linear_cross_entropy(h, weight, labels)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


@requires_kernels()
def test_unchecked_out_of_range_label_is_contained(device):
    hidden, weight, _, labels = make(5, 16, 40, torch.float32, device=device)
    labels[2] = 1000
    rows = fused_linear_cross_entropy(hidden, weight, labels, reduction="none", check_labels=False)
    logits = hidden @ weight.T
    torch.testing.assert_close(rows[2], torch.logsumexp(logits[2], -1))  # no target term, no stray read
    ok = labels != 1000
    torch.testing.assert_close(rows[ok], F.cross_entropy(logits[ok], labels[ok], reduction="none"))


def test_reference_agrees_with_torch_cross_entropy():
    hidden, weight, bias, labels = make(20, 8, 30, torch.float64, bias=True, ignore_every=3)
    logits = F.linear(hidden, weight, bias)
    for red in ("mean", "sum", "none"):
        want = F.cross_entropy(logits, labels, reduction=red, label_smoothing=0.1)
        got = reference.fused_linear_cross_entropy(hidden, weight, labels, bias, reduction=red, label_smoothing=0.1)
        torch.testing.assert_close(got, want)


# ------------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case, exc, match", [
    ("labels-shape", ValueError, "labels has shape"),
    ("label-out-of-range", ValueError, r"labels\[3\] = 40 is out of range"),
    ("negative-label", ValueError, r"labels\[1\] = -5 is out of range"),
    ("float-labels", TypeError, "integer"),
    ("dtype-mismatch", TypeError, "weight has dtype"),
    ("hidden-size", ValueError, "last dimension"),
    ("bias-size", ValueError, "bias has 39 elements"),
    ("reduction", ValueError, "reduction must be one of"),
    ("n_items-with-sum", ValueError, "n_items"),
    ("device", ValueError, "on meta"),
    ("int-hidden", TypeError, "hidden has dtype"),
])
def test_bad_input_raises_clearly(case, exc, match):
    hidden, weight, _, labels = make(6, 16, 40, torch.float32)
    kw, bias = {}, None
    if case == "labels-shape":
        labels = labels[:5]
    elif case == "label-out-of-range":
        labels[3] = 40
    elif case == "negative-label":
        labels[1] = -5
    elif case == "float-labels":
        labels = labels.float()
    elif case == "dtype-mismatch":
        weight = weight.bfloat16()
    elif case == "hidden-size":
        hidden = hidden[:, :15]
    elif case == "bias-size":
        bias = torch.zeros(39)
    elif case == "reduction":
        kw = dict(reduction="avg")
    elif case == "n_items-with-sum":
        kw = dict(reduction="sum", n_items=3)
    elif case == "device":
        weight = weight.to("meta")
    elif case == "int-hidden":
        hidden = hidden.long()
    with pytest.raises(exc, match=match):
        fused_linear_cross_entropy(hidden, weight, labels, bias, **kw)


# ------------------------------------------------------------------------------------------------------------
# the causal-LM patch (kernels or reference; only the loss path is patched, to isolate it)
# ------------------------------------------------------------------------------------------------------------
transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from litekernels.patches import apply_lite_llama, lite_llama_summary, revert_lite_llama  # noqa: E402

ONLY_CE = dict(rms_norm=False, rope=False, swiglu=False, attention=False)


def tiny_model(**kw):
    base = dict(vocab_size=250, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)
    base.update(kw)
    return LlamaForCausalLM(LlamaConfig(**base)).train()


def batch(B=2, T=13, vocab=250):
    ids = torch.randint(1, vocab, (B, T))
    labels = ids.clone()
    labels[0, :4] = -100  # a masked prompt
    return ids, labels


def loss_and_grads(model, **inputs):
    out = model(**inputs)
    return out, torch.autograd.grad(out.loss, [p for p in model.parameters() if p.requires_grad])


def compare_grads(got, ref, model, tol=1e-5):
    for (name, _), a, b in zip(model.named_parameters(), got, ref):
        torch.testing.assert_close(a, b, atol=tol, rtol=1e-4, msg=lambda m, n=name: f"grad of {n}: {m}")


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_patched_loss_and_grads_match_hf_and_logits_are_none(tied):
    model = tiny_model(tie_word_embeddings=tied)
    ids, labels = batch()
    ref, ref_g = loss_and_grads(model, input_ids=ids, labels=labels)
    apply_lite_llama(model, **ONLY_CE)
    assert lite_llama_summary(model)["fused_linear_cross_entropy"] is True
    out, g = loss_and_grads(model, input_ids=ids, labels=labels)
    assert out.logits is None and ref.logits is not None
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)
    compare_grads(g, ref_g, model)


def test_patch_honours_num_items_shift_labels_and_return_dict():
    model = tiny_model()
    ids, labels = batch()
    n = torch.tensor(30)
    ref = model(ids, labels=labels, num_items_in_batch=n).loss
    shift = torch.nn.functional.pad(labels, (0, 1), value=-100)[:, 1:].contiguous()
    ref_shift = model(ids, shift_labels=shift, labels=labels).loss
    apply_lite_llama(model, **ONLY_CE)
    torch.testing.assert_close(model(ids, labels=labels, num_items_in_batch=n).loss, ref, atol=1e-5, rtol=1e-5)
    got_shift = model(ids, shift_labels=shift, labels=labels)
    assert got_shift.logits is None
    torch.testing.assert_close(got_shift.loss, ref_shift, atol=1e-5, rtol=1e-5)
    as_tuple = model(ids, None, None, labels=labels, return_dict=False)  # positional arguments too
    assert isinstance(as_tuple, tuple) and as_tuple[0].dim() == 0
    torch.testing.assert_close(as_tuple[0], model(input_ids=ids, labels=labels).loss)


def test_patch_keeps_hf_path_without_labels_in_eval_and_with_logits_to_keep():
    model = tiny_model()
    ids, labels = batch()
    with torch.no_grad():
        ref = model(ids).logits
        ref_eval = model.eval()(ids, labels=labels)
    model.train()
    ref_keep = model(ids, labels=labels[:, -5:], logits_to_keep=5).loss
    apply_lite_llama(model, **ONLY_CE)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref)  # no labels: HF's forward
        model.eval()
        ev = model(ids, labels=labels)  # eval: HF's forward, logits for metrics
        assert torch.equal(ev.logits, ref_eval.logits) and torch.equal(ev.loss, ref_eval.loss)
    model.train()
    keep = model(ids, labels=labels[:, -5:], logits_to_keep=5)
    assert keep.logits is None
    torch.testing.assert_close(keep.loss, ref_keep, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="labels"):
        model(ids, labels=labels, logits_to_keep=5)  # transformers fails here too (13 labels for 5 positions)


def test_full_patch_training_matches_and_revert_is_bit_exact():
    model = tiny_model()
    ids, labels = batch()
    ref, ref_g = loss_and_grads(model, input_ids=ids, labels=labels)
    forward_before = model.__dict__.get("forward")
    apply_lite_llama(model)  # every kernel, fused loss included
    out, g = loss_and_grads(model, input_ids=ids, labels=labels)
    assert out.logits is None
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-5, rtol=1e-5)
    compare_grads(g, ref_g, model, tol=2e-5)
    revert_lite_llama(model)
    assert model.__dict__.get("forward") is forward_before and "forward" not in model.__dict__
    again, again_g = loss_and_grads(model, input_ids=ids, labels=labels)
    assert torch.equal(again.logits, ref.logits) and torch.equal(again.loss, ref.loss)
    assert all(torch.equal(a, b) for a, b in zip(again_g, ref_g))


def test_option_off_keeps_hf_loss_path():
    model = tiny_model()
    ids, labels = batch()
    apply_lite_llama(model, fused_linear_cross_entropy=False, **ONLY_CE)
    assert "fused_linear_cross_entropy" not in lite_llama_summary(model)
    assert model(ids, labels=labels).logits is not None


def test_class_patching_installs_and_reverts_the_forward():
    from transformers.models.llama import modeling_llama

    original = modeling_llama.LlamaForCausalLM.forward
    ids, labels = batch()
    try:
        apply_lite_llama(**ONLY_CE)
        assert modeling_llama.LlamaForCausalLM.forward is not original
        model = tiny_model()
        out = model(ids, labels=labels)
        assert out.logits is None and torch.isfinite(out.loss)
    finally:
        revert_lite_llama()
    assert modeling_llama.LlamaForCausalLM.forward is original
    assert model(ids, labels=labels).logits is not None


def test_trainer_steps_lower_the_loss(tmp_path):
    from torch.utils.data import Dataset
    from transformers import Trainer, TrainingArguments

    model = tiny_model(num_hidden_layers=1)
    apply_lite_llama(model, **ONLY_CE)  # the loss path only: the other kernels are interpreted slowly on CPU
    torch.manual_seed(0)
    data = torch.randint(1, 250, (8, 16))

    class Repeat(Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"input_ids": data[i], "labels": data[i]}

    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], save_strategy="no",
                             per_device_train_batch_size=4, gradient_accumulation_steps=2, max_steps=5,
                             learning_rate=3e-3, logging_steps=1, disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=Repeat())
    assert trainer.model_accepts_loss_kwargs  # so num_items_in_batch reaches our forward
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 5 and all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.1, losses
    assert lite_llama_summary(model)["fused_linear_cross_entropy"] is True


# ------------------------------------------------------------------------------------------------------------
# GPU: real sizes (Llama-3.2-1B head: vocab 128256, hidden 2048, 4096 tokens, bf16)
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("kw", [dict(), dict(label_smoothing=0.1, z_loss=1e-4), dict(softcap=30.0)],
                         ids=["plain", "smoothing-zloss", "softcap"])
def test_gpu_real_size_matches_fp32_logits(kw):
    torch.manual_seed(0)
    N, H, V = 4096, 2048, 128256
    hidden = torch.randn(N, H, device="cuda", dtype=torch.bfloat16)
    weight = (torch.randn(V, H, device="cuda") * 0.02).bfloat16()
    labels = torch.randint(0, V, (N,), device="cuda")
    labels[::11] = -100
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = fused_linear_cross_entropy(h, w, labels, **kw)
    gh, gw = torch.autograd.grad(loss, (h, w))
    # float64 truth is too big here (V x N); fp32 from bf16 inputs is exact to ~1e-6, far below bf16 error
    he, we = hidden.float().requires_grad_(), weight.float().requires_grad_()
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the reference must be true fp32
    try:
        exact = reference.fused_linear_cross_entropy(he, we, labels, **kw)
        eg = torch.autograd.grad(exact, (he, we))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    del he, we
    hl, wl = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    lowp = hf_style(hl, wl, labels, **kw)
    lg = torch.autograd.grad(lowp, (hl, wl))
    assert_close(loss, exact, lowp, torch.bfloat16, "loss")
    assert_close(gh, eg[0], lg[0], torch.bfloat16, "grad hidden")
    assert_close(gw, eg[1], lg[1], torch.bfloat16, "grad weight")


@pytest.mark.gpu
def test_gpu_peak_memory_below_unfused():
    torch.manual_seed(0)
    N, H, V = 4096, 2048, 128256
    hidden = torch.randn(N, H, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = (torch.randn(V, H, device="cuda") * 0.02).bfloat16().requires_grad_()
    labels = torch.randint(0, V, (N,), device="cuda")

    def peak(fn):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn().backward()
        torch.cuda.synchronize()
        hidden.grad = weight.grad = None
        return torch.cuda.max_memory_allocated() - base

    fused = peak(lambda: fused_linear_cross_entropy(hidden, weight, labels))
    unfused = peak(lambda: F.cross_entropy(F.linear(hidden, weight).float(), labels))
    # unfused holds bf16 + fp32 logits and their gradients (>= 4096 x 128256 x 6 bytes = 3.1 GB)
    assert fused < unfused / 3, (fused / 2**30, unfused / 2**30)
    # fused: grad_weight (maybe copied once more by AccumulateGrad), one chunk of logits, grad_hidden
    allowance = 2 * V * H * 2 + ce.chunk_rows(N, V, H) * V * 2 + 2 * N * H * 2
    assert fused < 1.1 * allowance, (fused / 2**30, allowance / 2**30)


@pytest.mark.gpu
def test_gpu_patched_1b_shape_layers_loss_matches_hf():
    torch.manual_seed(0)
    cfg = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=2,
               num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).to("cuda", torch.bfloat16).train()
    ids = torch.randint(0, 128256, (2, 1024), device="cuda")
    ref = model(ids, labels=ids).loss.float()
    apply_lite_llama(model, **ONLY_CE)
    out = model(ids, labels=ids)
    assert out.logits is None
    # same bf16 logits feed both losses; only the fp32 summation order differs
    torch.testing.assert_close(out.loss, ref, atol=2e-3, rtol=2e-3)
    out.loss.backward()
    assert torch.isfinite(model.lm_head.weight.grad).all()


@pytest.mark.skipif(HAS_CUDA, reason="checks the CPU fallback (no CUDA here)")
def test_cpu_without_interpreter_uses_reference(monkeypatch):
    import litekernels.ops.cross_entropy as mod

    monkeypatch.setattr(mod, "use_triton", lambda *t: False)
    hidden, weight, _, labels = make(7, 8, 20, torch.float32, ignore_every=3)
    got = fused_linear_cross_entropy(hidden, weight, labels)
    torch.testing.assert_close(got, F.cross_entropy(hidden @ weight.T, labels))


@pytest.mark.slow
@pytest.mark.skipif(INTERPRET, reason="checks the bench's code paths; interpreted kernels would take minutes")
def test_bench_train_smoke_runs(tmp_path):
    """bench/bench_train.py's code paths on a tiny model (CPU or GPU), JSON to tmp_path."""
    from bench import bench_train

    doc, paths = bench_train.main(["--smoke", "--providers", "hf,lite", "--out", str(tmp_path / "train.json")])
    assert [r["provider"] for r in doc["results"]] == ["hf", "lite"]
    assert all("tok_s" in r for r in doc["results"]), doc["results"]
    assert doc["loss_curve_max_abs_diff"] < 1e-2
    assert all("fwd_bwd_ms" in v for v in doc["op"]["providers"].values())
