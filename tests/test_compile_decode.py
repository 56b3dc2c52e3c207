"""The compiled decode step of a patched model (HF static cache + torch.compile): what Inductor gets to see.

* decode-sized `litekernels.rms_norm` is decomposed in Inductor's table only (so Inductor fuses the residual add
  into the norm, one kernel, as it does for an unpatched model); larger inputs and other backends keep the op;
* the one-token attention under tracing reads the true lengths (one past the last attendable slot of HF's
  static-cache mask), not the whole max_cache_len buffer;
* no op of ours is functionalized (no clone of a cache or scratch buffer): none of the HF-path ops mutates.

CPU, fast: AOTAutograd with Inductor's decomposition table and no code generation (the Inductor C++ compile of
the same model is tests/test_compile.py's slow test).
"""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from litekernels import library
from litekernels.patches import apply_lite_llama
from litekernels.utils import HAS_CUSTOM_OPS, use_triton
from tests.test_compile import _static_generate as static_generate

pytestmark = [pytest.mark.skipif(not HAS_CUSTOM_OPS, reason="torch.library.custom_op needs torch >= 2.4"),
              pytest.mark.filterwarnings("ignore:lite-llama. the model is on cpu")]


def tiny_model(layers=2):
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=96,
                                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                                         max_position_embeddings=128, pad_token_id=0)).eval()
    model.generation_config.eos_token_id = None
    return model


class InductorDecompBackend:
    """AOTAutograd with Inductor's decomposition table (what Inductor lowers), graphs recorded, run eagerly."""

    def __init__(self):
        self.graphs = []
        self.clones = []  # output shapes of every clone

    def __call__(self, gm, example_inputs):
        from torch._dynamo.backends.common import aot_autograd
        from torch._inductor.decomposition import select_decomp_table

        def record(g, _inputs):
            nodes = [n for n in g.graph.nodes if n.op == "call_function"]
            self.graphs.append([str(n.target) for n in nodes])
            self.clones.extend(tuple(n.meta["val"].shape) for n in nodes
                               if "clone" in str(n.target) and "val" in n.meta)
            return g

        return aot_autograd(fw_compiler=record, bw_compiler=record,
                            decompositions=select_decomp_table())(gm, example_inputs)

    def __deepcopy__(self, memo):  # HF's CompileConfig.to_dict() deep-copies its backend
        return self

    def count(self, name):
        return sum(name in t for g in self.graphs for t in g)


def _static_generate(model, ids, mask, backend=None, new=5):
    return static_generate(model, ids, mask, compile_backend=backend, new=new)


def test_compiled_static_decode_step_graph():
    """HF static cache + compile, left padding: same tokens; the decode graph Inductor lowers holds our
    attention and RoPE ops, no rms_norm op (decomposed: decode-sized), nothing functionalized or cloned."""
    torch._dynamo.reset()
    model = tiny_model()
    ids = torch.randint(1, 128, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    apply_lite_llama(model)
    eager = _static_generate(model, ids, mask)
    backend = InductorDecompBackend()
    compiled = _static_generate(model, ids, mask, backend)
    assert torch.equal(compiled, eager)
    assert len(backend.graphs) == 1  # one decode graph (fullgraph=True), compiled once
    layers = model.config.num_hidden_layers
    assert backend.count("litekernels.decode_attention") == layers
    assert backend.count("litekernels.apply_rope") == layers
    assert backend.count("litekernels.silu_mul") == layers
    assert backend.count("litekernels.rms_norm") == 0
    assert backend.count("auto_functionalized") == 0
    # clones only of the small rotary tables (HF's own code), never of a cache-sized buffer
    cache_len = compiled.shape[1] - 1
    assert all(cache_len not in shape for shape in backend.clones), backend.clones


def test_rms_norm_decomposition_only_for_decode_sizes():
    """Rows <= INDUCTOR_DECOMPOSE_MAX_ROWS: aten math (fusable); more rows: our op, forward and backward."""
    from torch._inductor.decomposition import select_decomp_table

    assert torch.ops.litekernels.rms_norm.default in select_decomp_table()
    w = torch.randn(32, requires_grad=True)
    for rows, decomposed in ((3, True), (library.INDUCTOR_DECOMPOSE_MAX_ROWS + 1, False)):
        torch._dynamo.reset()
        backend = InductorDecompBackend()
        x = torch.randn(1, rows, 32, requires_grad=True)
        fn = torch.compile(lambda x, w: torch.ops.litekernels.rms_norm(x, w, 1e-6)[0], backend=backend,
                           fullgraph=True)
        y = fn(x, w)
        ref = torch.ops.litekernels.rms_norm(x, w, 1e-6)[0]
        torch.testing.assert_close(y, ref, atol=1e-6, rtol=1e-6)
        dy = torch.randn_like(y)
        torch.testing.assert_close(torch.autograd.grad(y, (x, w), dy), torch.autograd.grad(ref, (x, w), dy),
                                   atol=1e-5, rtol=1e-5)
        fwd = backend.graphs[0]
        assert (not any("litekernels.rms_norm.default" in t for t in fwd)) == decomposed, fwd
        assert any("litekernels.rms_norm_backward" in t for t in backend.graphs[1])  # our backward either way


def test_traced_decode_reads_only_the_written_prefix():
    """Under tracing the one-token path passes lengths = one past the last attendable slot of the mask."""
    from litekernels.patches import attention as lite_attention

    B, L = 3, 10
    key_mask = torch.zeros(B, L, dtype=torch.bool)
    key_mask[0, :4] = True          # prompt of 4, tail unwritten
    key_mask[1, 2:9] = True         # left padding 2, written up to slot 8
    key_mask[2, :] = True           # full buffer
    lengths = lite_attention._traced_lengths(key_mask, B, L, key_mask.device)
    assert lengths.dtype == torch.int32 and lengths.tolist() == [4, 9, 10]
    assert lite_attention._traced_lengths(None, B, L, key_mask.device).tolist() == [L] * B

    class Module:
        num_key_value_groups, is_causal, training = 2, True, False

    q, k, v = torch.randn(B, 4, 1, 16), torch.randn(B, 2, L, 16), torch.randn(B, 2, L, 16)
    if use_triton(q):  # the kernel (interpreter): an unwritten tail it must not read (NaN leaks via 0 * NaN)
        k[0, :, 4:] = float("nan")
        v[0, :, 4:] = float("nan")
    mask = key_mask[:, None, None, :]
    with torch.no_grad():
        eager = lite_attention.lite_attention_forward(Module(), q, k.nan_to_num(), v.nan_to_num(), mask, scaling=0.25)[0]
        torch._dynamo.reset()
        traced = torch.compile(lambda q, k, v, m: lite_attention.lite_attention_forward(Module(), q, k, v, m,
                                                                                         scaling=0.25)[0],
                               backend="aot_eager", fullgraph=True)(q, k, v, mask)
    torch.testing.assert_close(traced, eager, atol=1e-5, rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_static_compile_decode_is_one_cuda_graph():
    """HF's default compilation (Inductor, reduce-overhead) of the patched decode step: no graph break, no
    recompile, no CUDA-graph skip, and greedy tokens equal to the uncompiled patched model."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(LlamaConfig(vocab_size=1024, hidden_size=512, intermediate_size=1408,
                                             num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2,
                                             max_position_embeddings=1024, pad_token_id=0))
    model = model.to(torch.bfloat16).eval()
    model.generation_config.eos_token_id = None
    apply_lite_llama(model)
    ids = torch.randint(1, 1024, (1, 40), device="cuda")
    kw = dict(max_new_tokens=16, do_sample=False, pad_token_id=0, cache_implementation="static",
              return_dict_in_generate=True, output_logits=True)
    eager = model.generate(ids, disable_compile=True, **kw)
    for _ in range(3):  # compile, record the CUDA graph, replay
        compiled = model.generate(ids, **kw)
    c = torch._dynamo.utils.counters
    assert c["stats"]["unique_graphs"] == 1, dict(c["stats"])
    assert sum(c["graph_break"].values()) == 0, dict(c["graph_break"])
    assert c["inductor"]["cudagraph_skips"] == 0
    # random bf16 weights: Inductor's fused glue rounds differently from eager, so tokens may part at a near tie
    # of the eager top-2 logits, nowhere else
    got, want = compiled.sequences[0, ids.shape[1]:], eager.sequences[0, ids.shape[1]:]
    if not torch.equal(got, want):
        step = int((got != want).nonzero()[0])
        top2 = eager.logits[step][0].float().topk(2).values
        assert float(top2[0] - top2[1]) < 2e-2, f"tokens differ at step {step} without a near tie"
