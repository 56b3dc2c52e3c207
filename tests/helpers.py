"""Comparison rules shared by the op tests.

float32: our output must match the float64 reference to ~1e-5 (relative to the output's scale).

float16/bfloat16: the "PyTorch error" rule (flash-attention's tests use it with a factor of 2). The reference
is run twice: in float64 (the truth) and in the inputs' own low-precision dtype, which rounds where Hugging
Face's code rounds (PyTorch's error on the same inputs). Our error against the truth must then be at most
FACTOR times PyTorch's, on BOTH
  * the max of |error| (no single element far off), and
  * the RMS of the error (a small systematic error, e.g. 3% on every element, or a rounding step added or
    removed, moves the RMS even when the max stays inside the bound).
The factors come from measuring the current kernels (`LITE_TOL_LOG=path` appends each comparison's two ratios
to a file), with the interpreter rounding to nearest like the GPU (tests/conftest.py): over every half-precision
comparison of the op tests (~480) the largest ratios were 1.18 on the max (the bf16 RMSNorm weight gradient,
a sum over rows) and 1.00 on the RMS; over the property tests (~400 comparisons, 30 drawn examples per op) 1.70 on the
max (dq of fp16 attention, one element of a 6-row case) and 1.29 on the RMS (bf16 attention output with a
per-head mask and a handful of keys). Our kernels compute in fp32 and round once, so their error is usually
the smaller one; where both round the same values the ratio is ~1, and a few small cases land above. Hence
FACTOR_MAX = 2 (a single element of a small tensor is a noisy statistic; flash-attention's tests use 2) and
FACTOR_RMS = 1.5 (the RMS is stable: a 1% systematic error is already ~6x PyTorch's bf16 RMS error).

The only absolute term is a floor of 1/256 ulp of the values' RMS (about 1% of PyTorch's typical RMS error).
It matters only where PyTorch's error is exactly zero (every output exactly representable, e.g. an all-zero
gradient or a copy): there it lets float64-level noise through and nothing else.
"""

import os

import torch

# Op tests run on the GPU when there is one (compiled kernels), else on the CPU (interpreter or reference).
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

ULP = {torch.float32: 2.0**-23, torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7}
FACTOR_MAX = 2.0  # allowed (our max error) / (PyTorch's max error); see the module docstring
FACTOR_RMS = 1.5  # allowed (our RMS error) / (PyTorch's RMS error)
FLOOR_ULPS = 1.0 / 256  # absolute floor, in ulps of the RMS of the exact values


def _first_mismatches(actual, expected, tol, n=5):
    bad = ((actual - expected).abs() > tol).nonzero()[:n]
    return "; ".join(f"{tuple(i.tolist())}: got {actual[tuple(i)].item():.6g}, want {expected[tuple(i)].item():.6g}"
                     for i in bad)


def _rms(t):
    return t.pow(2).mean().sqrt().item() if t.numel() else 0.0


def _log(name, dtype, max_ratio, rms_ratio):
    path = os.environ.get("LITE_TOL_LOG")
    if path:
        with open(path, "a") as f:
            f.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]}\t{name}\t{dtype}\t"
                    f"{max_ratio:.4f}\t{rms_ratio:.4f}\n")


def assert_matches(actual, exact, lowp=None, name="output", rtol32=1e-5, factor=None):
    """actual: our result; exact: float64 reference; lowp: the reference computed in actual's dtype.

    factor: overrides both factors for one comparison (give the reason at the call site).
    """
    assert actual.shape == exact.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(exact.shape)}"
    a, e = actual.detach().double(), exact.detach().double()
    assert torch.isfinite(a).all(), f"{name}: non-finite values (unwritten output?) at {(~torch.isfinite(a)).nonzero()[:5].tolist()}"
    err = (a - e).abs()
    if actual.dtype in (torch.float32, torch.float64):
        # Inputs are O(1) random values, so 1.0 is the floor of the scale: a reference that is exactly zero
        # (dq of a one-key softmax) is then held to rounding noise of O(1) inputs, not to 0.
        scale = max(e.abs().max().item(), 1.0)
        tol = rtol32 * scale
        assert err.max().item() <= tol, (f"{name}: max error {err.max().item():.3g} > tolerance {tol:.3g} "
                                         f"(scale {scale:.3g}); " + _first_mismatches(a, e, tol))
        return
    assert lowp is not None, "half-precision checks need the low-precision reference"
    assert lowp.shape == exact.shape, f"{name}: low-precision reference has shape {tuple(lowp.shape)}"
    f_max, f_rms = (FACTOR_MAX, FACTOR_RMS) if factor is None else (factor, factor)
    base = (lowp.detach().double() - e).abs()
    floor = FLOOR_ULPS * ULP[actual.dtype] * _rms(e)
    max_err, max_base = err.max().item() if err.numel() else 0.0, base.max().item() if base.numel() else 0.0
    rms_err, rms_base = _rms(err), _rms(base)
    _log(name, actual.dtype, max_err / max(max_base, 1e-300), rms_err / max(rms_base, 1e-300))
    max_tol, rms_tol = f_max * max_base + floor, f_rms * rms_base + floor
    assert max_err <= max_tol, (f"{name}: max error {max_err:.3g} > {f_max} x PyTorch's {max_base:.3g} "
                                f"(+ floor {floor:.2g}); " + _first_mismatches(a, e, max_tol))
    assert rms_err <= rms_tol, (f"{name}: RMS error {rms_err:.3g} > {f_rms} x PyTorch's {rms_base:.3g} "
                                f"(+ floor {floor:.2g}): a systematic error or an extra rounding step")


def assert_rounds_like(actual, hf, *, name="output", max_ulps=1, max_frac=0.01):
    """Ours rounds where HF rounds: every element within `max_ulps` ulps of HF's (same dtype), and at most
    `max_frac` of the elements differ at all (a different summation order can move a tie, not more)."""
    assert actual.dtype == hf.dtype and actual.shape == hf.shape, f"{name}: {actual.dtype}{tuple(actual.shape)} vs {hf.dtype}{tuple(hf.shape)}"
    a, h = actual.detach().double(), hf.detach().double()
    diff = (a - h).abs()
    ulp = ULP[actual.dtype] * torch.exp2(torch.floor(torch.log2(h.abs().clamp_min(1e-30))))
    worst = (diff / ulp).max().item() if diff.numel() else 0.0
    frac = (diff > 0).double().mean().item() if diff.numel() else 0.0
    assert worst <= max_ulps, f"{name}: {worst:.2f} ulps from HF's result; " + _first_mismatches(a, h, ulp.min().item())
    assert frac <= max_frac, f"{name}: {100 * frac:.2f}% of elements differ from HF's (allowed {100 * max_frac}%)"


def rand(*shape, dtype=torch.float32, device=DEVICE, requires_grad=False):
    return torch.randn(*shape, dtype=dtype, device=device).requires_grad_(requires_grad)


def grads(out, inputs, grad_out):
    return torch.autograd.grad(out, inputs, grad_out, allow_unused=False)


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def check_op(ours, ref, inputs, *, name, backward=True, factor=None):
    """Run `ours` and `ref` on the same inputs; compare every output and every input gradient.

    The reference runs twice: on float64 copies (the truth) and on copies in the inputs' own dtype (the
    low-precision baseline of the PyTorch-error rule). Inputs that require grad get gradients from one random
    upstream gradient per output.
    """
    out = _as_tuple(ours(*inputs))
    ex_in = [t.detach().double().requires_grad_(t.requires_grad) if t.is_floating_point() else t for t in inputs]
    lp_in = [t.detach().clone().requires_grad_(t.requires_grad) if t.is_floating_point() else t for t in inputs]
    exact, lowp = _as_tuple(ref(*ex_in)), _as_tuple(ref(*lp_in))
    for i, (o, e, lp) in enumerate(zip(out, exact, lowp)):
        assert o.dtype == lp.dtype, f"{name} output {i}: dtype {o.dtype}, reference gives {lp.dtype}"
        assert_matches(o, e, lp, name=f"{name} output {i}", factor=factor)
    if not backward:
        return
    diff = [j for j, t in enumerate(inputs) if t.requires_grad]
    g_out = [torch.randn_like(o) for o in out]
    g = grads(out, [inputs[j] for j in diff], g_out)
    g_ex = grads(exact, [ex_in[j] for j in diff], [t.double() for t in g_out])
    g_lp = grads(lowp, [lp_in[j] for j in diff], g_out)
    for j, a, e, lp in zip(diff, g, g_ex, g_lp):
        assert a.dtype == inputs[j].dtype, f"{name} grad of input {j}: dtype {a.dtype}"
        assert_matches(a, e, lp, name=f"{name} grad of input {j}", factor=factor)


class ByteTokenizer:
    """A tokenizer for tiny models: each character is one token (3 + code point mod `span`), BOS = 1 prepended,
    EOS = 2, pad = 0; decode maps ids back to letters (enough for stop strings and finish reasons)."""

    eos_token_id = 2
    pad_token_id = 0

    def __init__(self, span: int = 250):
        self.span = span

    def __call__(self, text):
        return {"input_ids": [1] + [3 + ord(c) % self.span for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(ord("a") + (i - 3) % 26) for i in ids if i >= 3)


def run_fresh_python(code: str, timeout: float = 300):
    """Run `code` in a fresh interpreter from the repository root, outside the Triton interpreter (what a user's
    process sees: import-time behaviour, sys.modules); returns the CompletedProcess (text stdout/stderr)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, env=env,
                          timeout=timeout, check=False)


def tiny_llama_and_tokenizer(words, chat_template=None, **config):
    """A random tiny LlamaForCausalLM (eval, seed 0) and a word-level fast tokenizer over `words` (whose first three
    are <unk>, <s>, </s>); config overrides the LlamaConfig below (vocab_size = len(words))."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    if chat_template is not None:
        tok.chat_template = chat_template
    torch.manual_seed(0)
    cfg = dict(vocab_size=len(words), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
               num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    cfg.update(config)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval(), tok


def graph_step_settings(measured):
    """fused_config that gives an eager LlamaRuntime the graph step's settings: `measured` (a fused_config, e.g.
    measured_fused_config(); None for the fused defaults) with flash-decoding's graph-only ATTENTION_CONFIG under
    it, as set_fused_decode merges them for a graph runtime (an eager call splits a cache differently)."""
    from litekernels.generation import LlamaRuntime

    measured = dict(measured or {})
    return {**measured, "attention": {**LlamaRuntime.ATTENTION_CONFIG, **measured.get("attention", {})}}

