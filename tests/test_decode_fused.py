"""The fused decode GEMVs (ops/decode_fused.py) and the runtime's fused decode step.

Kernels: each epilogue against a float64 composition of the reference ops (reference.py) on fresh random
inputs, with the PyTorch-error rule of tests/helpers.py (the same composition in the inputs' dtype is the
baseline); awkward sizes: K not a multiple of BLOCK_K, output columns not a multiple of BLOCK_N, batch 1/3/8,
head_dim 16/32/64, GQA ratios 1/2/4, biases on and off, a different position per row, both MAC paths (tl.dot and
multiply + sum) and both load schedules. Outputs are NaN-poisoned, so an unwritten element fails; the cache
slots the step must not touch are checked to be untouched. The residual output must equal torch's x + residual
bit for bit.

Runtime: fused decode == unfused decode (logits close, greedy tokens equal for 16 steps) on a tiny random Llama
and a tiny Qwen2 with q/k/v biases, eager, in bf16. GPU: graph fused == eager fused == unfused greedy tokens at
the Llama-3.2-1B layer shape (random weights, 2 layers), also with PDL where the GPU and Triton have it.

Easy mistakes this catches: the residual written in place (other programs then read the sum), RMSNorm rounded
in a different place than ops/rms_norm.py (the RMS rule), RoPE applied to v heads or to the wrong half, the
cache written at the wrong slot or row, gate/up halves swapped, a bias added twice or only to one half.
"""

import pytest
import torch
import torch.nn.functional as F
from helpers import DEVICE, assert_matches, graph_step_settings

from litekernels import reference as R
from litekernels.ops import _tl_common as TLC
from litekernels.ops import decode_fused as DF

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() or DF.INTERPRET),
                                reason="Triton kernels need CUDA or TRITON_INTERPRET=1")

# small settings so the interpreter covers several chunks and a partial last chunk / block
SMALL = dict(BLOCK_N=16, BLOCK_K=16, num_warps=1, num_stages=1)
MODES = {"dot": dict(DOT=True), "dot-prefetch-tiles": dict(DOT=True, PREFETCH=True, TILES=2),
         "reduce-tiles": dict(DOT=False, PREFETCH=True, BLOCK_N=8, TILES=3),
         "reduce-plain": dict(DOT=False, BLOCK_N=4),
         # BLOCK_K >= K: the one-chunk path (input row computed once, next tile requested before the multiply)
         "reduce-one-chunk-tiles": dict(DOT=False, BLOCK_N=4, BLOCK_K=128, TILES=3),
         "dot-one-chunk": dict(DOT=True, BLOCK_K=128, TILES=2)}


def _inputs(M, K, dtype, residual):
    x = torch.randn(M, K, dtype=dtype, device=DEVICE)
    r = torch.randn(M, K, dtype=dtype, device=DEVICE) if residual else None
    nw = (1 + 0.3 * torch.randn(K, device=DEVICE)).to(dtype)
    return x, r, nw


def _normed(x, r, nw, eps, dtype):
    """RMSNorm(x + r) by the reference ops in `dtype` (float64: the truth; the input dtype: PyTorch's rounding)."""
    x = x.to(dtype)
    if r is not None:
        x = x + r.to(dtype)
    return R.rms_norm(x, nw.to(dtype), eps)


def _linear(a, w, b, dtype):
    return F.linear(a, w.to(dtype), None if b is None else b.to(dtype))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("M,K,N,residual,bias,dtype", [
    (1, 40, 48, True, False, torch.bfloat16),
    (3, 72, 40, True, True, torch.float16),
    (8, 33, 17, False, False, torch.bfloat16),
    (5, 64, 64, True, False, torch.float32),
], ids=["b1-bf16", "b3-fp16-bias", "b8-no-residual", "b5-fp32"])
def test_norm_gemv_none(M, K, N, residual, bias, dtype, mode, poison):
    x, r, nw = _inputs(M, K, dtype, residual)
    w = torch.randn(N, K, dtype=dtype, device=DEVICE) / K ** 0.5
    b = torch.randn(N, dtype=dtype, device=DEVICE) if bias else None
    with torch.no_grad():
        out, s = DF.norm_gemv(x, r, nw, 1e-5, w, b, config={**SMALL, **MODES[mode]})
    if residual:
        assert s is not x and torch.equal(s, x + r), "residual output must be torch's x + residual"
    else:
        assert s is x
    d64 = torch.float64
    exact = _linear(_normed(x, r, nw, 1e-5, d64), w, b, d64)
    lowp = _linear(_normed(x, r, nw, 1e-5, dtype), w, b, dtype) if dtype != torch.float32 else None
    assert_matches(out, exact, lowp, name="norm_gemv")


@pytest.mark.parametrize("mode", ["dot", "reduce-tiles", "reduce-one-chunk-tiles"])
@pytest.mark.parametrize("M,K,inter,bias,dtype", [(1, 40, 24, False, torch.bfloat16), (3, 48, 40, True, torch.bfloat16),
                                                  (8, 24, 16, False, torch.float16)],
                         ids=["b1", "b3-bias", "b8-fp16"])
def test_norm_gemv_silu_mul(M, K, inter, bias, dtype, mode, poison):
    x, r, nw = _inputs(M, K, dtype, True)
    w = torch.randn(2 * inter, K, dtype=dtype, device=DEVICE) / K ** 0.5 * 3
    b = torch.randn(2 * inter, dtype=dtype, device=DEVICE) if bias else None
    with torch.no_grad():
        act, s = DF.norm_gemv(x, r, nw, 1e-6, w, b, epilogue="silu_mul", config={**SMALL, **MODES[mode]})
    assert torch.equal(s, x + r)

    def ref(dt):
        g, u = _linear(_normed(x, r, nw, 1e-6, dt), w, b, dt).split(inter, dim=-1)
        return R.silu_mul(g, u)

    assert_matches(act, ref(torch.float64), ref(dtype), name="silu_mul epilogue")


@pytest.mark.parametrize("mode", ["dot", "reduce-tiles", "reduce-one-chunk-tiles"])
@pytest.mark.parametrize("M,H,KV,D,bias,residual", [
    (1, 4, 1, 16, False, True), (3, 4, 2, 32, True, True), (2, 2, 2, 16, True, False), (3, 2, 1, 64, False, True),
], ids=["b1-gqa4-d16", "b3-gqa2-d32-bias", "b2-mha-d16-nores", "b3-gqa2-d64"])
def test_norm_gemv_rope_cache(M, H, KV, D, bias, residual, mode, poison):
    dtype, K, L, rows = torch.bfloat16, 40, 12, M + 1
    x, r, nw = _inputs(M, K, dtype, residual)
    N = (H + 2 * KV) * D
    w = torch.randn(N, K, dtype=dtype, device=DEVICE) / K ** 0.5
    b = torch.randn(N, dtype=dtype, device=DEVICE) if bias else None
    cos = torch.randn(L, D, device=DEVICE).to(dtype)  # any table: the kernel must apply what it is given
    sin = torch.randn(L, D, device=DEVICE).to(dtype)
    positions = torch.randperm(L, device=DEVICE)[:M]  # a different slot per row
    kc = torch.full((rows, KV, L, D), float("nan"), dtype=dtype, device=DEVICE)
    vc = torch.full((rows, KV, L, D), float("nan"), dtype=dtype, device=DEVICE)
    rope = DF.RopeCache(positions, cos, sin, kc, vc, H, KV)
    with torch.no_grad():
        q, s = DF.norm_gemv(x, r, nw, 1e-5, w, b, epilogue="rope_cache", rope=rope,
                            config={**SMALL, **MODES[mode]})
    assert q.shape == (M, H, 1, D)
    assert torch.equal(s, x + r) if residual else s is x

    def ref(dt):
        qkv = _linear(_normed(x, r, nw, 1e-5, dt), w, b, dt).view(M, H + 2 * KV, D)
        k2 = torch.zeros((rows, KV, L, D), dtype=dt, device=DEVICE)
        v2 = torch.zeros_like(k2)
        q2 = R.rope_cache_write(qkv, cos.to(dt), sin.to(dt), positions, k2, v2, H, KV)
        rr = torch.arange(M, device=DEVICE)
        return q2, k2[rr, :, positions], v2[rr, :, positions]

    (q64, k64, v64), (ql, kl, vl) = ref(torch.float64), ref(dtype)
    rr = torch.arange(M, device=DEVICE)
    assert_matches(q, q64, ql, name="q")
    assert_matches(kc[rr, :, positions], k64, kl, name="k cache slot")
    assert_matches(vc[rr, :, positions], v64, vl, name="v cache slot")
    written = torch.zeros((rows, KV, L, D), dtype=torch.bool, device=DEVICE)
    written[rr, :, positions] = True
    assert kc[~written].isnan().all() and vc[~written].isnan().all(), "wrote outside the rows' cache slots"


@pytest.mark.parametrize("mode", ["dot", "reduce-tiles", "reduce-one-chunk-tiles"])
@pytest.mark.parametrize("M,K,N,bias,dtype", [(1, 56, 24, False, torch.bfloat16), (3, 40, 33, True, torch.bfloat16),
                                              (16, 32, 16, False, torch.float16)], ids=["b1", "b3-bias", "b16"])
def test_gemv(M, K, N, bias, dtype, mode, poison):
    x = torch.randn(M, K, dtype=dtype, device=DEVICE)
    w = torch.randn(N, K, dtype=dtype, device=DEVICE) / K ** 0.5
    b = torch.randn(N, dtype=dtype, device=DEVICE) if bias else None
    with torch.no_grad():
        y = DF.gemv(x, w, b, config={**SMALL, **MODES[mode]})
    assert_matches(y, _linear(x.double(), w, b, torch.float64), _linear(x, w, b, dtype), name="gemv")


def test_default_config_runs():
    """The launch settings the launchers pick by themselves (no config=)."""
    x = torch.randn(2, 40, dtype=torch.bfloat16, device=DEVICE)
    w = torch.randn(24, 40, dtype=torch.bfloat16, device=DEVICE) / 6
    with torch.no_grad():
        y = DF.gemv(x, w)
    assert_matches(y, _linear(x.double(), w, None, torch.float64), _linear(x, w, None, torch.bfloat16), name="gemv")


def test_bad_inputs():
    dt = torch.bfloat16
    x = torch.randn(2, 32, dtype=dt, device=DEVICE)
    w = torch.randn(16, 32, dtype=dt, device=DEVICE)
    nw = torch.ones(32, dtype=dt, device=DEVICE)
    with pytest.raises(ValueError, match="rows"):
        DF.gemv(torch.randn(17, 32, dtype=dt, device=DEVICE), w)
    with pytest.raises(ValueError, match="columns"):
        DF.gemv(torch.randn(2, 31, dtype=dt, device=DEVICE), w)
    with pytest.raises(TypeError, match="dtype"):
        DF.gemv(x, w.float())
    with pytest.raises(RuntimeError, match="inference-only"):
        DF.gemv(x, w.clone().requires_grad_())
    with pytest.raises(ValueError, match="unit stride"):
        DF.gemv(x, torch.randn(32, 16, dtype=dt, device=DEVICE).t())
    with pytest.raises(ValueError, match="epilogue"):
        DF.norm_gemv(x, None, nw, 1e-5, w, epilogue="gelu")
    with pytest.raises(ValueError, match="RopeCache"):
        DF.norm_gemv(x, None, nw, 1e-5, w, epilogue="rope_cache")
    with pytest.raises(ValueError, match="residual"):
        DF.norm_gemv(x, x[:1], nw, 1e-5, w)
    with pytest.raises(ValueError, match="norm_weight"):
        DF.norm_gemv(x, None, nw[:16], 1e-5, w)
    with pytest.raises(ValueError, match="unknown decode_fused config"):
        DF.gemv(x, w, config={"BLOCK_M": 16})
    with pytest.raises(ValueError, match="BLOCK_N"):
        DF.gemv(x, w, config={"BLOCK_N": 8, "DOT": True})
    kc = torch.zeros(2, 1, 8, 8, dtype=dt, device=DEVICE)
    cos = torch.ones(8, 8, dtype=dt, device=DEVICE)
    pos = torch.zeros(2, dtype=torch.long, device=DEVICE)
    w_bad = torch.randn(5 * 8, 32, dtype=dt, device=DEVICE)  # 5 heads of 8 != (2 + 2 * 1) * 8
    with pytest.raises(ValueError, match="q/k/v projection"):
        DF.norm_gemv(x, None, nw, 1e-5, w_bad, epilogue="rope_cache", rope=DF.RopeCache(pos, cos, cos, kc, kc, 2, 1))
    w_qkv = torch.randn(4 * 8, 32, dtype=dt, device=DEVICE)
    with pytest.raises(ValueError, match="positions"):
        DF.norm_gemv(x, None, nw, 1e-5, w_qkv, epilogue="rope_cache",
                     rope=DF.RopeCache(pos[:1], cos, cos, kc, kc, 2, 1))
    with pytest.raises(ValueError, match="k_cache"):
        DF.norm_gemv(x, None, nw, 1e-5, w_qkv, epilogue="rope_cache",
                     rope=DF.RopeCache(pos, cos, cos, kc[:, :, :, :4], kc, 2, 1))


# ---------------------------------------------------------------------------------------------------------------
# the runtime's fused decode step
# ---------------------------------------------------------------------------------------------------------------
def _tiny(family, dtype=torch.bfloat16, device=DEVICE, **kw):
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
    )

    cls, cfg_cls = {"llama": (LlamaForCausalLM, LlamaConfig), "qwen2": (Qwen2ForCausalLM, Qwen2Config),
                    "qwen3": (Qwen3ForCausalLM, Qwen3Config)}[family]
    shape = dict(vocab_size=96, hidden_size=40, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=1, head_dim=16, max_position_embeddings=128, rms_norm_eps=1e-5)
    shape.update(kw)
    torch.manual_seed(3)
    model = cls(cfg_cls(**shape)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():  # peaky attention and distinct norms (see test_families.py)
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0, 0.15)
    return model.to(device, dtype)


def _greedy(rt, prompts, steps):
    """Greedy tokens and the logits of every decode step (prefill + `steps` decode steps)."""
    with torch.no_grad():
        logits = rt.prefill(prompts)
        pos = torch.tensor([len(p) for p in prompts], device=rt.device)
        toks, lgs = [], []
        for _ in range(steps):
            tok = logits.argmax(-1)
            toks.append(tok)
            logits = rt.decode(tok, pos)
            lgs.append(logits.float())
            pos = pos + 1
    return torch.stack(toks), torch.stack(lgs)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_runtime_fused_equals_unfused(family):
    from litekernels.generation import LlamaRuntime

    model = _tiny(family)
    prompts = [[5, 6, 7, 8, 9], [12, 13, 14, 15, 16, 17, 18]]  # interpreter time: mostly flash-decoding
    # fused_decode=True: every fused kernel (the GPU default may be a mixed step, or unfused at batch 2)
    fused = LlamaRuntime(model, max_batch=2, max_seq_len=32, use_cuda_graph=False, fused_decode=True)
    assert fused.fused_decode, fused.fused_decode_unavailable()
    if DF.INTERPRET:  # the interpreter's default is every fused kernel, so the CPU tests exercise them
        assert LlamaRuntime(model, max_batch=2, max_seq_len=32, use_cuda_graph=False).fused_decode
    if family == "qwen2":
        assert fused.layers[0].qkv.bias is not None
    unfused = LlamaRuntime(model, max_batch=2, max_seq_len=32, use_cuda_graph=False, fused_decode=False)
    t_f, l_f = _greedy(fused, prompts, 16)
    t_u, l_u = _greedy(unfused, prompts, 16)
    assert torch.equal(t_f, t_u), "greedy tokens differ"
    # the same roundings in the same places: equal up to the summation order of the GEMVs
    scale = l_u.abs().max().item()
    assert (l_f - l_u).abs().max().item() <= 0.02 * scale


def test_runtime_fused_flags():
    from litekernels.generation import LlamaRuntime

    model = _tiny("llama")
    rt = LlamaRuntime(model, max_batch=2, max_seq_len=16, use_cuda_graph=False, fuse_weights=False)
    assert not rt.fused_decode and "fused buffer" in rt.fused_decode_unavailable()
    with pytest.raises(ValueError, match="fused_decode=True is not possible"):
        rt.set_fused_decode(True)
    with pytest.raises(ValueError, match="unknown fused_config keys"):
        LlamaRuntime(model, max_batch=2, max_seq_len=16, use_cuda_graph=False, fused_config={"BLOCK": 1})
    rt32 = LlamaRuntime(_tiny("llama", torch.float32), max_batch=2, max_seq_len=16, use_cuda_graph=False)
    assert not rt32.fused_decode  # fp32: only on request
    rt32.set_fused_decode(True, {"fold_lm_head": True, "o": {"DOT": False, "BLOCK_N": 8},
                                 "attention": {"SPLITS": 2, "BLOCK_N": 16}})
    assert rt32.fused_decode and rt32.fold_lm_head
    # fp32 with IEEE dots and the final norm folded into the lm_head GEMV: equal to the unfused step
    t_f, l_f = _greedy(rt32, [[3, 4, 5], [6, 7]], 4)
    from litekernels.ops import decode_attention as DA

    assert (("BLOCK_N", 16), ("SPLITS", 2)) in [k[9] for k in DA._plans], "the attention config was not used"
    # the graph-replayed step's attention default (ATTENTION_CONFIG) goes under the keys given; eager steps keep
    # the eager defaults
    assert rt32._attn_cfg == {"SPLITS": 2, "BLOCK_N": 16}
    rt32.use_cuda_graph = True
    rt32.set_fused_decode(True, {"attention": {"SPLITS": 2}})
    assert rt32._attn_cfg == {**LlamaRuntime.ATTENTION_CONFIG, "SPLITS": 2}
    rt32.use_cuda_graph = False
    rt32.set_fused_decode(False)
    t_u, l_u = _greedy(rt32, [[3, 4, 5], [6, 7]], 4)
    assert torch.equal(t_f, t_u)
    assert (l_f - l_u).abs().max().item() <= 1e-4 * l_u.abs().max().item()


def test_runtime_fused_qwen3_and_max_rows():
    """Qwen3 (q/k RMSNorm per head) keeps the unfused q/k/v part and fuses the rest; batches above max_rows run
    the unfused step."""
    from litekernels.generation import LlamaRuntime

    model = _tiny("qwen3")
    prompts = [[4, 5, 6, 7], [8, 9]]
    fused = LlamaRuntime(model, max_batch=2, max_seq_len=16, use_cuda_graph=False, fused_decode=True)
    assert fused.fused_decode and fused.layers[0].q_norm is not None
    unfused = LlamaRuntime(model, max_batch=2, max_seq_len=16, use_cuda_graph=False, fused_decode=False)
    t_f, l_f = _greedy(fused, prompts, 6)
    t_u, l_u = _greedy(unfused, prompts, 6)
    assert torch.equal(t_f, t_u)
    assert (l_f - l_u).abs().max().item() <= 0.02 * l_u.abs().max().item()
    fused.set_fused_decode(True, {"max_rows": 1})
    calls = []
    fused._decode_fused = lambda *a: calls.append(a) or LlamaRuntime._decode_fused(fused, *a)
    _greedy(fused, prompts, 1)  # batch 2 > max_rows: the unfused step
    _greedy(fused, prompts[:1], 1)
    assert len(calls) == 1 and calls[0][0].shape == (1,)
    with pytest.raises(ValueError, match="max_rows"):
        fused.set_fused_decode(True, {"max_rows": 17})


# ---------------------------------------------------------------------------------------------------------------
# GPU: the captured graph at the 1B layer shape
# ---------------------------------------------------------------------------------------------------------------
def _forced(rt, prompts, tokens):
    """Logits of every decode step when the tokens fed are `tokens` (steps, B): teacher forcing, so two decode
    steps are compared on the same inputs even where a near-tie would make their greedy paths part."""
    with torch.no_grad():
        first = rt.prefill(prompts).float()
        pos = torch.tensor([len(p) for p in prompts], device=rt.device)
        out = []
        for tok in tokens:
            out.append(rt.decode(tok, pos).float())
            pos = pos + 1
    return first, torch.stack(out)


@pytest.mark.gpu
def test_gpu_graph_fused_equals_unfused_1b_shape():
    from litekernels.generation import LlamaRuntime

    model = _tiny("llama", device="cuda", vocab_size=2048, hidden_size=2048, intermediate_size=8192,
                  num_hidden_layers=2, num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                  max_position_embeddings=512)
    with torch.no_grad():  # std 0.15 at fan-in 2048 would blow activations up: std 1/sqrt(fan-in) instead
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0, p.shape[-1] ** -0.5)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(10, 1000, (n,), generator=g).tolist() for n in (17, 40, 5, 63, 30)]
    variants = {"eager-fused": (True, False, None), "graph-fused": (True, True, None),
                "graph-fused-fold": (True, True, {"fold_lm_head": True}),
                "graph-fused-reduce": (True, True, {"DOT": False, "PREFETCH": True, "BLOCK_N": 8, "BLOCK_K": 256})}
    if TLC.HAS_PDL and torch.cuda.get_device_capability()[0] >= 9:
        variants["graph-fused-pdl"] = (True, True, {"PDL": True})
    # the graph step's attention settings (LlamaRuntime.ATTENTION_CONFIG) differ from an eager call's, so the
    # bit-for-bit comparison uses an eager runtime given the graph's settings (fused kernels: FUSED_DEFAULTS in both)
    variants["eager-fused-graph-settings"] = (True, False, graph_step_settings(None))
    variants["graph-fused-measured"] = (None, True, None)  # the default step of this GPU (MEASURED_FUSED)
    measured = LlamaRuntime(model, max_batch=8, max_seq_len=256, use_cuda_graph=False).measured_fused_config()
    if measured is not None:  # the same default step run eagerly, with the graph's attention settings
        variants["eager-measured-graph-settings"] = (None, False, graph_step_settings(measured))
    for B in (1, 5):  # buckets 1 and 8
        ref_rt = LlamaRuntime(model, max_batch=8, max_seq_len=256, use_cuda_graph=False, fused_decode=False)
        tokens, _ = _greedy(ref_rt, prompts[:B], 24)
        _, ref = _forced(ref_rt, prompts[:B], tokens)
        top2 = ref.topk(2, dim=-1).values
        clear = (top2[..., 0] - top2[..., 1]) > 0.05 * ref.abs().amax()  # no near-tie at this step and row
        got = {}
        for name, (fused, graph, cfg) in variants.items():
            rt = LlamaRuntime(model, max_batch=8, max_seq_len=256, use_cuda_graph=graph, fused_decode=fused,
                              fused_config=cfg)
            _, got[name] = _forced(rt, prompts[:B], tokens)
            err = (got[name] - ref).abs().max().item()
            assert err <= 0.03 * ref.abs().max().item(), f"{name} B={B}: logits differ by {err:.3g}"
            same = got[name].argmax(-1) == ref.argmax(-1)
            assert same[clear].all(), f"{name} B={B}: greedy token differs at a step without a near-tie"
            assert same.float().mean().item() >= 0.9, f"{name} B={B}: greedy tokens differ too often"
        # the graph replays exactly the eager kernels: bit-identical
        assert torch.equal(got["eager-fused-graph-settings"], got["graph-fused"]), f"B={B}: graph != eager (fused)"
        if measured is not None:  # PDL-launched kernels in the graph: still the eager step's bits
            assert torch.equal(got["eager-measured-graph-settings"], got["graph-fused-measured"]), \
                f"B={B}: graph != eager (measured default step)"


def _gpu_configs():
    out = [("default", None), ("reduce", {"DOT": False, "PREFETCH": True, "BLOCK_N": 4, "BLOCK_K": 512}),
           ("dot-prefetch", {"PREFETCH": True, "num_stages": 1}), ("dot-tiles", {"TILES": 3, "num_stages": 2})]
    # one chunk (BLOCK_K >= K) for the hidden-size inputs, four chunks for down's; with several tiles
    out.append(("one-chunk-tiles", {"DOT": False, "BLOCK_N": 2, "BLOCK_K": 4096, "TILES": 2, "num_warps": 4}))
    if TLC.HAS_PDL and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9:
        out.append(("pdl", {"PDL": True}))
        out.append(("pdl-one-chunk", {"PDL": True, "DOT": False, "BLOCK_N": 4, "BLOCK_K": 2048, "num_warps": 4}))
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("B", [1, 8])
@pytest.mark.parametrize("shape", ["1B", "8B"])
def test_gpu_kernels_real_shapes(shape, B):
    """Every fused kernel at the real layer shapes, with the default settings and the variants the sweep tries
    (compiled, not interpreted), against the float64 reference composition (tests/helpers.py's rule)."""
    hidden, inter, H, KV, D = {"1B": (2048, 8192, 32, 8, 64), "8B": (4096, 14336, 32, 8, 128)}[shape]
    dt, L = torch.bfloat16, 256
    x, r, nw = _inputs(B, hidden, dt, True)
    w_qkv = torch.randn((H + 2 * KV) * D, hidden, dtype=dt, device=DEVICE) / hidden ** 0.5
    w_gu = torch.randn(2 * inter, hidden, dtype=dt, device=DEVICE) / hidden ** 0.5 * 3
    w_o = torch.randn(hidden, H * D, dtype=dt, device=DEVICE) / (H * D) ** 0.5
    w_d = torch.randn(hidden, inter, dtype=dt, device=DEVICE) / inter ** 0.5
    o_in = torch.randn(B, H * D, dtype=dt, device=DEVICE)
    act = torch.randn(B, inter, dtype=dt, device=DEVICE)
    cos, sin = torch.randn(L, D, device=DEVICE).to(dt), torch.randn(L, D, device=DEVICE).to(dt)
    positions = torch.randperm(L, device=DEVICE)[:B]
    rr = torch.arange(B, device=DEVICE)

    def qkv_ref(d):
        qkv = _linear(_normed(x, r, nw, 1e-5, d), w_qkv, None, d).view(B, H + 2 * KV, D)
        k2 = torch.zeros((B, KV, L, D), dtype=d, device=DEVICE)
        q2 = R.rope_cache_write(qkv, cos.to(d), sin.to(d), positions, k2, torch.zeros_like(k2), H, KV)
        return q2, k2[rr, :, positions]

    def gu_ref(d):
        g, u = _linear(_normed(x, r, nw, 1e-5, d), w_gu, None, d).split(inter, dim=-1)
        return R.silu_mul(g, u)

    (q64, k64), (ql, kl) = qkv_ref(torch.float64), qkv_ref(dt)
    gu64, gul = gu_ref(torch.float64), gu_ref(dt)
    for name, cfg in _gpu_configs():
        with torch.no_grad():
            kc = torch.zeros((B, KV, L, D), dtype=dt, device=DEVICE)
            rope = DF.RopeCache(positions, cos, sin, kc, torch.zeros_like(kc), H, KV)
            q, s = DF.norm_gemv(x, r, nw, 1e-5, w_qkv, epilogue="rope_cache", rope=rope, config=cfg)
            assert torch.equal(s, x + r)
            assert_matches(q, q64, ql, name=f"{name} q")
            assert_matches(kc[rr, :, positions], k64, kl, name=f"{name} k slot")
            a, _ = DF.norm_gemv(x, r, nw, 1e-5, w_gu, epilogue="silu_mul", config=cfg)
            assert_matches(a, gu64, gul, name=f"{name} silu_mul")
            for nm, inp, w in (("o", o_in, w_o), ("down", act, w_d)):
                y = DF.gemv(inp, w, config=cfg)
                assert_matches(y, _linear(inp.double(), w, None, torch.float64), _linear(inp, w, None, dt),
                               name=f"{name} {nm}")
