"""torch.compile of patched Hugging Face models: one graph (fullgraph=True), the litekernels ops inside it as
registered custom ops, forward and backward equal to the uncompiled patched model; HF's static-cache generate
with its compilation gives the uncompiled greedy tokens.

On the CPU the compile tests use the "aot_eager" backend (Dynamo + AOTAutograd with our fake and autograd
registrations, no Inductor codegen, seconds instead of minutes of C++ compiles on 2 cores); one Inductor test is
marked slow. The GPU tests compile with the defaults (Inductor; reduce-overhead CUDA graphs in HF generate).
"""

import inspect

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from litekernels.patches import apply_lite_llama
from litekernels.utils import HAS_CUSTOM_OPS

pytestmark = [pytest.mark.skipif(not HAS_CUSTOM_OPS, reason="torch.library.custom_op needs torch >= 2.4"),
              pytest.mark.filterwarnings("ignore:lite-llama. the model is on cpu")]


def tiny_model(layers=2, **kw):
    cfg = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)
    cfg.update(kw)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    model.generation_config.eos_token_id = None
    return model


class RecordingBackend:
    """aot_eager that remembers the op targets of every graph Dynamo hands it."""

    def __init__(self):
        from torch._dynamo.backends.registry import lookup_backend

        self.inner = lookup_backend("aot_eager")
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append({str(n.target) for n in gm.graph.nodes if n.op == "call_function"})
        return self.inner(gm, example_inputs)

    def __deepcopy__(self, memo):  # HF's CompileConfig.to_dict() deep-copies its backend; keep recording here
        return self

    def targets(self):
        return set().union(*self.graphs)


def _batch(B=2, T=11, vocab=128):
    ids = torch.randint(1, vocab, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :3] = 0  # left padding: HF builds a (B,1,T,T) bool mask, our ops take it as an input
    return ids, mask


def _fwd_bwd(model, ids, mask):
    out = model(ids, attention_mask=mask, labels=ids)
    grads = torch.autograd.grad(out.loss, [p for p in model.parameters() if p.requires_grad])
    logits = None if out.logits is None else out.logits.detach()  # None: the fused cross-entropy (training)
    return logits, out.loss.detach(), grads


@pytest.mark.parametrize("flce", [False, True], ids=["ce", "flce"])
@pytest.mark.parametrize("padding", [True, False], ids=["left-padding", "no-mask"])
def test_compiled_patched_model_fullgraph_forward_backward_match(padding, flce):
    model = tiny_model(layers=1)
    apply_lite_llama(model, fused_linear_cross_entropy=flce)
    ids, mask = _batch(T=9)
    if not padding:
        mask = None
    ref_logits, ref_loss, ref_grads = _fwd_bwd(model, ids, mask)
    backend = RecordingBackend()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    logits, loss, grads = _fwd_bwd(compiled, ids, mask)
    assert len(backend.graphs) == 1  # fullgraph=True would raise on a break; one forward graph
    targets = backend.targets()
    for op in ("rms_norm", "apply_rope", "silu_mul", "flash_attention"):
        assert any(f"litekernels.{op}" in t for t in targets), (op, sorted(t for t in targets if "lite" in t))
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)  # both None in training mode
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_compiled_decode_step_uses_decode_attention():
    """A no-grad one-token step over a cache goes through torch.ops.litekernels.decode_attention in the graph."""
    from transformers import DynamicCache

    model = tiny_model(layers=1).eval()
    apply_lite_llama(model)
    ids = torch.randint(1, 128, (1, 6))
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"  # 5.24 / 5.17
    nxt = torch.randint(1, 128, (1, 1))

    def step(fn):
        cache = DynamicCache(config=model.config)
        model(ids, use_cache=True, **{name: cache})
        return fn(nxt, use_cache=True, **{name: cache}).logits

    backend = RecordingBackend()
    with torch.no_grad():
        ref = step(model)
        out = step(torch.compile(model, backend=backend, fullgraph=True))
    assert any("litekernels.decode_attention" in t for t in backend.targets())
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def _static_generate(model, ids, mask, compile_backend=None, new=4):
    """HF generate with the static cache: uncompiled (compile_backend None) or compiled with that backend."""
    from transformers import CompileConfig

    kw = dict(max_new_tokens=new, do_sample=False, pad_token_id=0, cache_implementation="static")
    if compile_backend is None:
        kw["disable_compile"] = True
    else:
        cfg = CompileConfig(fullgraph=True, backend=compile_backend, mode=None)
        cfg._compile_all_devices = True  # HF compiles only on accelerators unless told (its testing switch)
        kw["compile_config"] = cfg
    return model.generate(ids, attention_mask=mask, **kw)


def test_hf_static_cache_compiled_generate_matches_uncompiled():
    model = tiny_model(layers=1).eval()
    ids, mask = _batch(T=7)
    unpatched = _static_generate(model, ids, mask)
    apply_lite_llama(model)
    eager = _static_generate(model, ids, mask)
    backend = RecordingBackend()
    compiled = _static_generate(model, ids, mask, compile_backend=backend)
    assert backend.graphs, "HF generate did not compile the decode step"
    assert any("litekernels.decode_attention" in t for t in backend.targets())
    assert torch.equal(eager, unpatched)
    assert torch.equal(compiled, eager)


def test_compiled_prefill_gets_no_mask_or_a_key_row_not_a_square_mask():
    """Under torch.compile HF materializes a (B, 1, T, T) causal mask even without padding (its skip reads mask
    values), which sends every tile through the kernels' general masked path (2.5-3.6x slower attention in
    the compiled 1B training step, bench/results/train-compile-profile-H200.json). lite_mask gives the
    kernel None without padding and, with padding, the padding row viewed with stride 0 over queries."""
    model = tiny_model(layers=1)
    apply_lite_llama(model, fused_linear_cross_entropy=False)
    masks = []

    def backend(gm, example_inputs):
        for n in gm.graph.nodes:
            if n.op == "call_function" and "flash_attention" in str(n.target):
                masks.append(n.args[3] if len(n.args) > 3 else n.kwargs.get("attn_mask"))
        return gm.forward

    ids, mask = _batch()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    compiled(ids, labels=ids)
    assert masks and masks[-1] is None
    compiled(ids, attention_mask=mask, labels=ids)
    val = masks[-1].meta["example_value"]
    assert val.shape == (ids.shape[0], 1, ids.shape[1], ids.shape[1]) and val.stride(2) == 0, val.stride()
    torch._dynamo.reset()


def test_running_a_patched_model_does_not_recompile_a_compiled_unpatched_one():
    """The RoPE dispatcher reads a thread-local depth; Dynamo guards on it when it traces an unpatched model.
    That guard must not flip when a patched model first runs on the thread (it did: "no attribute yet" ->
    "attribute 0", one recompile of every unpatched compiled model). A fresh thread starts from a fresh
    thread-local, as a new serving thread would."""
    import copy
    import threading

    base = tiny_model(layers=1).eval()
    patched = apply_lite_llama(copy.deepcopy(base))
    ids, mask = _batch(T=5)
    torch._dynamo.reset()
    compiled = torch.compile(base, backend="eager", fullgraph=True)
    errors = []

    def body():
        try:
            with torch.no_grad():
                compiled(ids, attention_mask=mask)
                patched(ids, attention_mask=mask)
                with torch._dynamo.config.patch(error_on_recompile=True):
                    compiled(ids, attention_mask=mask)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    torch._dynamo.reset()
    assert not errors, repr(errors[0])[:500]


def test_static_cache_prefill_without_mask_reads_only_the_written_keys():
    """No padding: HF passes no mask for a static-cache prefill (top-left causal over a mostly empty buffer)."""
    model = tiny_model().eval()
    ids = torch.randint(1, 128, (1, 8))
    kw = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, cache_implementation="static", disable_compile=True)
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    apply_lite_llama(model)
    assert torch.equal(model.generate(ids, attention_mask=torch.ones_like(ids), **kw), ref)


@pytest.mark.slow
def test_inductor_fullgraph_compile_cpu():
    """Inductor (C++ codegen on the CPU) around the opaque litekernels ops: forward and backward."""
    model = tiny_model(layers=1)
    apply_lite_llama(model, fused_linear_cross_entropy=False)
    ids, mask = _batch()
    ref_logits, ref_loss, ref_grads = _fwd_bwd(model, ids, mask)
    logits, loss, grads = _fwd_bwd(torch.compile(model, fullgraph=True), ids, mask)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------------ GPU
def _bf16_model(layers):
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = tiny_model(layers=layers, vocab_size=1024, hidden_size=512, intermediate_size=1408,
                           num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=1024)
    return model.to(torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("flce", [False, True], ids=["ce", "flce"])
def test_gpu_compiled_patched_model_forward_backward_parity(flce):
    model = _bf16_model(layers=3)
    apply_lite_llama(model, fused_linear_cross_entropy=flce)
    ids = torch.randint(1, 1024, (2, 200), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :17] = 0
    ref_logits, ref_loss, ref_grads = _fwd_bwd(model, ids, mask)
    logits, loss, grads = _fwd_bwd(torch.compile(model, fullgraph=True), ids, mask)
    # Inductor fuses the glue between our ops (residual adds, casts, the loss) differently from eager, so bf16
    # results differ by rounding: compare at bf16 tolerances, relative to each gradient's scale.
    if not flce:  # the fused cross-entropy returns no logits in training
        torch.testing.assert_close(logits[0], ref_logits[0], atol=3e-2, rtol=3e-2)
        torch.testing.assert_close(logits[1, 17:], ref_logits[1, 17:], atol=3e-2, rtol=3e-2)
    torch.testing.assert_close(loss, ref_loss, atol=1e-2, rtol=1e-2)
    for a, b in zip(grads, ref_grads):
        scale = b.float().abs().max().clamp_min(1e-6)
        assert ((a.float() - b.float()).abs().max() / scale) < 5e-2


def _assert_same_greedy(got, want, prompt_len, tie=2e-2):
    """Equal greedy tokens; a divergence is accepted only where the reference's top two logits were a near tie
    (random bf16 weights: Inductor's glue, e.g. its own sin/cos for the rotary tables, rounds differently)."""
    a, b = got.sequences[:, prompt_len:], want.sequences[:, prompt_len:]
    if torch.equal(a, b):
        return
    step = int((a != b).any(0).nonzero()[0])
    top2 = want.logits[step].float().topk(2, dim=-1).values
    gap = (top2[:, 0] - top2[:, 1])[(a[:, step] != b[:, step])]
    assert bool((gap < tie).all()), f"tokens differ at step {step} without a near tie (top-2 gaps {gap.tolist()})"


@pytest.mark.gpu
def test_gpu_hf_static_cache_default_compile_generate_matches_uncompiled():
    model = _bf16_model(layers=2).eval()
    ids = torch.randint(1, 1024, (2, 24), device="cuda")
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    apply_lite_llama(model)
    kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=0, cache_implementation="static",
              return_dict_in_generate=True, output_logits=True)
    eager = model.generate(ids, attention_mask=mask, disable_compile=True, **kw)
    torch._dynamo.reset()
    compiled = model.generate(ids, attention_mask=mask, **kw)  # HF's default: compiled decode, reduce-overhead
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1, "HF generate did not compile"
    again = model.generate(ids, attention_mask=mask, **kw)  # replays the captured graphs
    _assert_same_greedy(compiled, eager, ids.shape[1])
    assert torch.equal(again.sequences, compiled.sequences)
