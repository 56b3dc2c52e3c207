"""A static-KV-cache runtime over a Hugging Face Llama-family model's weights, with CUDA-graph decode.

Invariants (the graph rules):
  * the cache (all layers, `max_batch` rows, `max_seq_len` slots) is allocated once, after loading;
  * prefill runs eagerly with flash-attention on right-padded prompts (sequence b's tokens sit in slots
    0..n_b-1, so causal attention never sees padding and no mask is needed);
  * a decode step is captured once per batch-size bucket (1, 2, 4, 8, ...) into a CUDA graph whose inputs
    are persistent buffers filled with `copy_` (token ids, positions); positions live on the device, so replay
    needs no host sync and lengths grow inside the graph (flash-decoding reads them);
  * warm-up and capture write only the last cache slot, which a sequence overwrites before it can attend it;
  * without CUDA (or with use_cuda_graph=False) the same step runs eagerly: graph output equals eager output.

Per layer an unfused decode step launches: fused residual-add+RMSNorm, one GEMM for q/k/v, (Qwen3: RMSNorm of
q and k heads), one kernel for RoPE + the KV-cache write, flash-decoding (split + combine), the o-projection,
fused add+RMSNorm, one GEMM for gate/up, SiLU*mul and the down projection. The fused decode step
(`fused_decode`, ops/decode_fused.py) launches per layer: add+RMSNorm+qkv GEMV+RoPE+cache write (one kernel),
flash-decoding (split + combine), the o GEMV, add+RMSNorm+gate/up GEMV+SiLU*mul (one kernel), the down GEMV;
on sm_90 its measured default (MEASURED_FUSED) launches each of them with programmatic dependent launch, so a
kernel's weights start streaming while the previous kernel still runs.

No weight copies: the fused q/k/v and gate/up GEMMs read one buffer per layer and projection group, and the HF
parameters are views of it. Building the first runtime moves each group's parameters into that buffer once
(`param.data = buffer[rows]`: same Parameter objects, names, state_dict values, optimizer references; old
storage freed), a later runtime finds them already back to back and just views them. Where that is impossible
(DTensor or other tensor subclasses, mixed dtypes, a parameter shared between groups, `fuse_weights=False`)
the group runs one GEMM per projection instead, still without copies. Layer weights are found through the
model's Architecture entry (patches/), so this file knows no family's attribute paths.

Autograd and optimizers: the buffer is a plain tensor (requires_grad=False); each parameter stays the same
leaf nn.Parameter (requires_grad kept) whose `.data` is a view of its rows. Autograd writes `param.grad` as
before, optimizer state keyed by the Parameter is untouched, and an optimizer's in-place update writes into
the buffer, so the runtime sees it without a rebuild. What the runtime cannot see is a parameter that gets new
storage (`.to()`, load_state_dict(assign=True), `param.data = ...`): `weights_signature()` / `is_stale()`
detect that.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .. import functional as LF
from ..ops import decode_fused as DF
from ..ops._tl_common import HAS_PDL
from ..ops.decode_attention import decode_attention_fwd, decode_attention_unchecked
from ..utils import INTERPRET, tracing, use_triton
from .lite_model import MOE_KEYS as _MOE_SETTINGS  # one list for the lite container and the runtime


@dataclasses.dataclass
class _Proj:
    """Projections that read the same input: one GEMM on `weight` (rows of every part, stacked), or, when the
    parts cannot share one buffer without a copy, one GEMM per part (`parts`) and a concat of the outputs."""

    weight: torch.Tensor | None
    bias: torch.Tensor | None
    parts: list | None = None  # [(weight, bias)] when weight is None


@dataclasses.dataclass
class _Layer:
    w_in: torch.Tensor
    eps_in: float
    w_post: torch.Tensor
    eps_post: float
    qkv: _Proj
    wo: torch.Tensor
    bo: torch.Tensor | None
    gu: _Proj
    wdown: torch.Tensor
    bdown: torch.Tensor | None
    q_norm: torch.Tensor | None = None  # per-head RMSNorm weights (head_dim,) applied before RoPE (Qwen3)
    k_norm: torch.Tensor | None = None
    qk_eps: float = 0.0


# Rope types whose cos/sin depend only on the position (HF computes them once, so a table of every position is
# exact). "dynamic" and "longrope" rescale with the current sequence length: a table would be wrong.
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def _bucket(n: int) -> int:
    b = 1
    while b < n:
        b *= 2
    return b


# ------------------------------------------------------------------------------------------------------------
# reading the model: checks, and the zero-copy fusion of projections that share an input
# ------------------------------------------------------------------------------------------------------------
def check_config(config, arch, max_seq_len: int) -> None:
    """ValueError naming the first setting the runtime cannot run (raised when a runtime is built)."""
    name = arch.name
    act = getattr(config, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"{name}: hidden_act={act!r} is not supported by the runtime (SiLU MLPs only)")
    for key in _MOE_SETTINGS:
        n = getattr(config, key, None)
        if isinstance(n, int) and n > 0:
            raise ValueError(f"{name}: {key}={n}: mixture-of-experts models are not supported by the runtime")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"{name}: rope_type={rope_type!r} is not supported by the runtime (its cos/sin "
                         f"depend on the sequence length); supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    partial = (rope.get("partial_rotary_factor") if isinstance(rope, dict) else None) or \
        getattr(config, "partial_rotary_factor", None) or 1.0
    if partial != 1.0:
        raise ValueError(f"{name}: partial_rotary_factor={partial} is not supported by the runtime (RoPE on "
                         "the whole head only)")
    window = arch.window(config)
    # a query at position i sees keys j > i - window (HF's sliding-window mask); the cache holds positions
    # 0..max_seq_len-1, so the window never cuts iff max_seq_len <= window
    if window is not None and max_seq_len > window:
        raise ValueError(f"{name}: config.sliding_window={window} is shorter than the runtime's KV cache of "
                         f"max_seq_len={max_seq_len} positions, and the runtime has no sliding-window "
                         f"attention; keep prompt + new tokens <= {window} (max_seq_len <= {window}) or use "
                         "HF generate")


def _linear(layer, path: str, i: int):
    from litekernels.patches.registry import get_path

    try:
        m = get_path(layer, path)
    except (AttributeError, IndexError) as e:
        raise TypeError(f"layer {i} has no {path} ({e}); the runtime expects a dense Llama-family "
                        "layer") from None
    if not isinstance(m, torch.nn.Linear) or type(m).forward is not torch.nn.Linear.forward:
        raise TypeError(f"layer {i}.{path} is a {type(m).__name__}, not a plain nn.Linear; the runtime "
                        "reads the weight directly and would ignore what that module adds (merge LoRA "
                        "adapters with merge_and_unload() first)")
    return m


def _plain(t) -> bool:
    """A dense tensor we may view and rebind: not a DTensor or other subclass, not on the meta device, not an
    inference tensor (a model built under torch.inference_mode: its views outside that mode fail)."""
    return (t is not None and type(t.data) is torch.Tensor and t.device.type != "meta"
            and not t.is_inference())


def _adjacent(ts) -> torch.Tensor | None:
    """The tensors stacked along dim 0 as one view of their storage, if they already lie back to back."""
    first = ts[0]
    ptr = first.untyped_storage().data_ptr()
    offset = first.storage_offset()
    for t in ts:
        if (t.untyped_storage().data_ptr() != ptr or t.storage_offset() != offset or not t.is_contiguous()
                or t.dtype != first.dtype or t.shape[1:] != first.shape[1:]):
            return None
        offset += t.numel()
    rows = sum(t.shape[0] for t in ts)
    shape = (rows, *first.shape[1:])
    strides = torch.empty(shape, device="meta").stride()
    return first.detach().as_strided(shape, strides, first.storage_offset())


def _rebind(ts) -> torch.Tensor:
    """Copy the tensors into one new buffer and make each parameter a view of its rows (param.data = view).

    The Parameter objects stay the same (names, state_dict, optimizers, tied references), their old storage is
    freed (unless something else holds it), and in-place updates of a parameter are seen by the fused buffer.
    """
    first = ts[0]
    rows = sum(t.shape[0] for t in ts)
    fused = torch.empty((rows, *first.shape[1:]), dtype=first.dtype, device=first.device)
    row = 0
    for t in ts:
        fused[row: row + t.shape[0]].copy_(t.detach())
        row += t.shape[0]
    row = 0
    for t in ts:
        t.data = fused[row: row + t.shape[0]]
        row += t.shape[0]
    return fused


def _fuse(modules, fuse: bool, seen: set) -> _Proj:
    """One _Proj over the nn.Linear modules `modules` (same input), without copying their weights.

    Fused when every weight (and bias, if they all have one) is a plain tensor of one dtype and device, and no
    parameter is shared with another fused group; otherwise one GEMM per module.
    """
    ws = [m.weight for m in modules]
    bs = [m.bias for m in modules]
    with_bias = [b is not None for b in bs]
    tensors = ws + (bs if all(with_bias) else [])
    ok = (fuse and (all(with_bias) or not any(with_bias)) and all(_plain(t) for t in tensors)
          and len({(t.dtype, t.device) for t in tensors}) == 1 and len({t.shape[1:] for t in ws}) == 1
          and not any(id(t) in seen for t in tensors) and len({id(t) for t in tensors}) == len(tensors))
    if not ok:
        return _Proj(None, None, list(zip(ws, bs)))
    seen.update(id(t) for t in tensors)
    w = _adjacent(ws)
    if w is None:
        w = _rebind(ws)
    b = None
    if all(with_bias):
        b = _adjacent(bs)
        if b is None:
            b = _rebind(bs)
    return _Proj(w, b)


def unfuse_weights(model) -> int:
    """Give every q/k/v and gate/up parameter its own storage again (undo the runtime's sharing).

    Only needed before handing the model to code that mishandles parameters sharing one storage: accelerate's
    `clean_state_dict_for_safetensors` (Accelerator.save_model) keeps one name per storage and would drop the
    others from the checkpoint. transformers' save_pretrained, safetensors' save_file (>= 0.4) and torch.save
    handle disjoint views correctly (save_pretrained clones them while saving). Copies
    one group at a time, so memory grows by at most one layer's group while it runs; drops the runtime cached
    on the model by generate(), and any other runtime of this model becomes stale (`is_stale()`). Returns the
    number of parameters given their own storage.
    """
    from litekernels.patches.registry import find_architecture, get_path

    arch = find_architecture(model)
    model.__dict__.pop("_lite_runtime", None)
    moved = 0
    with torch.inference_mode(False), torch.no_grad():  # new storage: ordinary tensors, still trainable
        for layer in get_path(model, arch.layers):
            for names in (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj")):
                modules = [get_path(layer, getattr(arch, n)) for n in names]
                for attr in ("weight", "bias"):
                    ts = [getattr(m, attr, None) for m in modules]
                    if any(t is None for t in ts) or not all(_plain(t) for t in ts):
                        continue
                    if len({t.untyped_storage().data_ptr() for t in ts}) == 1:
                        for t in ts:
                            t.data = t.data.clone()
                            moved += 1
    return moved


class LlamaRuntime:
    """Inference runtime for a (patched or not) Llama-family `...ForCausalLM` (Llama, Mistral, Qwen2, Qwen3).

    runtime = LlamaRuntime(model, max_batch=8, max_seq_len=2048)
    logits = runtime.prefill([[1, 2, 3], [4, 5]])          # (B, vocab) at each prompt's last token
    logits = runtime.decode(next_tokens, positions)         # one token per sequence

    fused_decode / fused_config: the decode step on the fused kernels of ops/decode_fused.py (see
    `set_fused_decode`; None: on for fp16/bf16 where they can run).

    Weights are read through the model's Architecture entry (patches/), never copied: q/k/v and gate/up run as
    one GEMM each over a buffer the HF parameters are views of (see `_rebind`); `fuse_weights=False` leaves
    the parameters' storage alone and runs one GEMM per projection instead. In-place changes to the parameters
    (optimizer steps, load_state_dict) are seen by the runtime; replacing a parameter or its storage (`.to()`,
    load_state_dict(assign=True), `param.data = ...`) is not: `is_stale()` tells, then build a new runtime.
    """

    # the weights it reads are the model's own parameters (views, never copies): an in-place write to a parameter
    # is seen at once, so generate()'s weight check need not rebuild on version-counter changes alone
    holds_weight_copies = False

    def __init__(self, model, *, max_batch: int = 8, max_seq_len: int = 2048,
                 use_cuda_graph: bool | None = None, skinny_gemm: bool | None = None,
                 fuse_weights: bool = True, fused_decode: bool | None = None, fused_config: dict | None = None):
        from litekernels.patches.registry import find_architecture, get_path

        arch = find_architecture(model)  # TypeError for models outside the Llama family
        if max_batch < 1 or max_seq_len < 2:
            raise ValueError(f"max_batch must be >= 1 and max_seq_len >= 2, got {max_batch}, {max_seq_len}")
        cfg = model.config
        check_config(cfg, arch, max_seq_len)
        self.arch = arch
        try:
            layers = get_path(model, arch.layers)
            embed_mod, head_mod = get_path(model, arch.embed_tokens), get_path(model, arch.lm_head)
            norm_mod, rotary = get_path(model, arch.final_norm), get_path(model, arch.rotary_emb)
        except AttributeError as e:
            raise TypeError(f"LlamaRuntime needs a ...ForCausalLM model; {type(model).__name__} has no "
                            f"{e.name if hasattr(e, 'name') and e.name else e}") from None
        # every parameter the runtime reads, as (module, attribute): weights_signature() re-reads them
        self._sources = [(embed_mod, "weight"), (head_mod, "weight"), (norm_mod, "weight")]
        if getattr(head_mod, "bias", None) is not None:
            self._sources.append((head_mod, "bias"))
        self._check_tensors(model)
        p = embed_mod.weight
        self.device, self.dtype = p.device, p.dtype
        self.use_cuda_graph = (self.device.type == "cuda") if use_cuda_graph is None else use_cuda_graph
        if self.use_cuda_graph and self.device.type != "cuda":
            raise ValueError("use_cuda_graph=True needs the model on a CUDA device")
        self.config = cfg
        # Opt-in: decode projections through our skinny GEMM (ops/linear.py). Measured end to end on an H200
        # (bench/results/generate-H200.json) it ties cuBLAS at batch 1 and trails at batch 8, so cuBLAS
        # (F.linear) is the default.
        self.skinny_gemm = bool(skinny_gemm)
        self._linear = LF.decode_linear if skinny_gemm else F.linear
        self.fuse_weights = bool(fuse_weights)
        self.max_batch, self.max_seq_len = max_batch, max_seq_len
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.inter = cfg.intermediate_size
        self.eps = norm_mod.variance_epsilon
        self.scale = float(get_path(layers[0], arch.attention).scaling)
        seen: set = set()
        # Outside inference mode even when built inside one: tensors made there would be inference tensors, so
        # the parameters rebound to the fused buffers could no longer be trained and the cache could not be
        # written outside inference mode. (inference_mode(False) turns grad mode on: no_grad goes inside it.)
        with torch.inference_mode(False), torch.no_grad():
            self.layers = []
            for i, layer in enumerate(layers):
                names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
                q, k, v, o, g, u, d = (_linear(layer, getattr(arch, n), i) for n in names)
                n_in, n_post = get_path(layer, arch.input_norm), get_path(layer, arch.post_attention_norm)
                storage_before = (q.weight.data_ptr(), g.weight.data_ptr())
                rec = _Layer(w_in=n_in.weight, eps_in=n_in.variance_epsilon, w_post=n_post.weight,
                             eps_post=n_post.variance_epsilon, qkv=_fuse([q, k, v], self.fuse_weights, seen),
                             wo=o.weight, bo=o.bias, gu=_fuse([g, u], self.fuse_weights, seen),
                             wdown=d.weight, bdown=d.bias)
                if self.device.type == "cuda" and storage_before != (q.weight.data_ptr(), g.weight.data_ptr()):
                    # this layer's weights moved into new fused buffers: hand the freed blocks back now, or the
                    # next layer's larger buffer cannot reuse them and the allocator's reservation grows by one
                    # fused buffer per layer (23.8 GB reserved for 16.3 GB allocated at the 8B shape,
                    # bench/results/memory-H200.json, first_call)
                    torch.cuda.empty_cache()
                if arch.q_norm is not None:
                    qn, kn = get_path(layer, arch.q_norm), get_path(layer, arch.k_norm)
                    rec.q_norm, rec.k_norm, rec.qk_eps = qn.weight, kn.weight, qn.variance_epsilon
                    if kn.variance_epsilon != qn.variance_epsilon:
                        raise ValueError(f"layer {i}: q_norm and k_norm have different eps")
                    self._sources += [(qn, "weight"), (kn, "weight")]
                self._sources += [(n_in, "weight"), (n_post, "weight")]
                for m in (q, k, v, o, g, u, d):
                    self._sources.append((m, "weight"))
                    if m.bias is not None:
                        self._sources.append((m, "bias"))
                self.layers.append(rec)
            self.embed = embed_mod.weight
            self.norm_w = norm_mod.weight
            self.lm_head = head_mod.weight
            self.lm_bias = getattr(head_mod, "bias", None)
            # cos/sin for every position, computed by HF's own rotary module (llama3 / yarn scaling included)
            pos = torch.arange(max_seq_len, device=self.device)[None]
            probe = torch.empty(1, dtype=self.dtype, device=self.device)
            cos, sin = rotary(probe, pos)
            self.cos, self.sin = cos[0].contiguous(), sin[0].contiguous()  # (L, D)
            shape = (len(self.layers), max_batch, self.n_kv, max_seq_len, self.head_dim)
            self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self._graphs: dict = {}  # bucket -> captured decode; ("greedy", bucket) -> GreedySteps
        self._signature = self.weights_signature()
        self.fused_decode = False
        self.set_fused_decode(fused_decode, fused_config)

    # ---------------------------------------------------------------------------------------------------------
    # the fused decode step (ops/decode_fused.py)
    # ---------------------------------------------------------------------------------------------------------
    FUSED_KINDS = ("qkv", "o", "gate_up", "down", "lm_head")

    def fused_decode_unavailable(self) -> str | None:
        """Why the fused decode step cannot run on this runtime (None when it can)."""
        if not use_triton(self.embed):
            return f"the model is on {self.device}: the fused kernels need CUDA (or TRITON_INTERPRET=1 on the CPU)"
        if self.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            return f"dtype {self.dtype} is not supported"
        for i, L in enumerate(self.layers):
            if L.qkv.weight is None or L.gu.weight is None:
                return (f"layer {i}: q/k/v or gate/up are not one fused buffer (fuse_weights=False, or parameters "
                        "that cannot share storage)")
            tensors = [L.w_in, L.w_post, L.qkv.weight, L.gu.weight, L.wo, L.wdown, L.qkv.bias, L.gu.bias, L.bo,
                       L.bdown]
            if any(t is not None and (t.stride(-1) != 1 or t.dtype != self.dtype) for t in tensors):
                return f"layer {i}: a weight is not unit-stride in its last dimension or not in {self.dtype}"
        return None

    # The default decode step where it was measured faster than the unfused one (bench/sweep_decode_fused.py
    # --candidates resident, bench/decode_step_variants.py; H200, bf16, graph-replayed step of the Llama-3.2-1B
    # shape at batch 1): every projection but lm_head on the fused kernels, each with whole rows of W in one load
    # (BLOCK_K >= K), a multiply-reduce body and programmatic dependent launch, so each kernel's first tile of
    # weights streams in while the previous kernel runs (gdc_wait before the activations are read); gate/up in
    # tiles of 1 pair x 8 per program (the next tile in flight during each multiply) with RMSNorm in its prologue
    # and SiLU*mul in its epilogue, which drops the separate RMSNorm and SiLU*mul kernels (86 kernels per step
    # instead of 134): 0.888 vs 0.979 ms per step (bench/results/decode-steps-resident3-H200.json). Settings per
    # kernel from the chained sweeps (sweep-decode-fused-resident*-H200.json): q/k/v 2 pairs x 1 warp 5.07 us, o 2
    # columns x 2 warps 3.45 us, gate/up 19.42 us, down 2 columns x 4 tiles x 4 warps 10.59 us (cuBLAS + the
    # separate kernels: 10.46, 6.20, 23.82, 14.76). lm_head stays on cuBLAS (at copy speed). At the 8B shape
    # (hidden 4096) and at batch 8 no fused mix beat the unfused step in the earlier sweeps, and other GPUs are
    # unmeasured, so those keep the unfused step (fused_decode=True turns it on anywhere it can run; PDL needs
    # sm_90, so these settings are only the default there).
    _RES = {"num_stages": 1, "DOT": False, "PREFETCH": False, "PDL": True}
    # The whole-row settings hold rows of up to 2048 (hidden) and 8192 (intermediate) inputs: wider models would
    # take the chunked path, unmeasured, so they keep the unfused step.
    MEASURED_FUSED = {(9, 0): {"max_hidden": 2048, "max_intermediate": 8192, "config": {
        "max_rows": 1, "PDL": True,
        "qkv": {**_RES, "BLOCK_N": 2, "BLOCK_K": 2048, "num_warps": 1, "TILES": 1},
        "o": {**_RES, "BLOCK_N": 2, "BLOCK_K": 2048, "num_warps": 2, "TILES": 1},
        "gate_up": {**_RES, "BLOCK_N": 1, "BLOCK_K": 2048, "num_warps": 2, "TILES": 8},
        "down": {**_RES, "BLOCK_N": 2, "BLOCK_K": 8192, "num_warps": 4, "TILES": 4},
        "lm_head": {"unfused": True}}}}

    # Flash-decoding's settings in the graph-replayed decode step (ops/decode_attention.py DECODE_DEFAULTS keys,
    # under fused_config["attention"] to change): splits of 64 cache entries at least, not 256 as for an eager call.
    # Replayed from a CUDA graph, a second launch costs GPU time only, and a short cache (a few hundred slots at
    # batch 1) in 64-entry splits took 4.55 us against 6.40 us in 2 (bench/results/sweep-attn-phase5-clean-H200.json,
    # B1 H32/8 L512 D64, chained). use_cuda_graph=False keeps the eager defaults.
    ATTENTION_CONFIG = {"MIN_CHUNK": 64}

    def measured_fused_config(self) -> dict | None:
        """The fused_config of the default decode step on this GPU and model width, or None (unfused)."""
        if self.device.type != "cuda":
            return None
        entry = self.MEASURED_FUSED.get(torch.cuda.get_device_capability(self.device))
        if entry is None or self.config.hidden_size > entry["max_hidden"]:
            return None
        if (getattr(self.config, "intermediate_size", None) or 0) > entry.get("max_intermediate", float("inf")):
            return None
        cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in entry["config"].items()}
        if not HAS_PDL:  # a Triton without launch_pdl: the same settings, launched one after the other
            cfg.pop("PDL", None)
            for v in cfg.values():
                if isinstance(v, dict):
                    v.pop("PDL", None)
        return cfg

    def set_fused_decode(self, fused_decode: bool | None = None, fused_config: dict | None = None) -> None:
        """Choose the decode step: fused kernels (True), the unfused ops (False) or None: on a GPU, the measured
        default (`measured_fused_config`: a mixed step where it was measured faster, else unfused); on the CPU
        interpreter, every fused kernel (so tests exercise them), in half precision only; fp32 only when asked
        (IEEE dots). fused_config: decode_fused launch settings (FUSED_DEFAULTS keys) for every kernel,
        and/or per kernel under "qkv", "o", "gate_up", "down", "lm_head"; "attention": flash-decoding's config
        (ops/decode_attention.py DECODE_DEFAULTS keys; a top-level PDL=True implies {"PDL": True} there);
        "fold_lm_head": True runs the final add+RMSNorm in the prologue of a Triton lm_head GEMV instead of
        add+RMSNorm + cuBLAS; "max_rows": the largest batch (bucket) that takes the fused step (default 16, the
        kernels' limit; larger ones run unfused). Drops captured graphs (recaptured at the next decode). A
        ValueError leaves the runtime as it was."""
        why = self.fused_decode_unavailable()
        if fused_decode is None:
            on = why is None and self.dtype in (torch.float16, torch.bfloat16)
            if on and not INTERPRET:
                measured = self.measured_fused_config()
                on = measured is not None
                if fused_config is None:
                    fused_config = measured
        elif fused_decode and why is not None:
            raise ValueError(f"fused_decode=True is not possible: {why}")
        else:
            on = bool(fused_decode)
        cfg = dict(fused_config or {})
        fold = bool(cfg.pop("fold_lm_head", False))
        attn = cfg.pop("attention", None)
        if attn is None and cfg.get("PDL") and not INTERPRET and self.use_cuda_graph:
            # PDL wherever it exists: flash-decoding's kernels launch early too (its default on sm_90+ anyway; an
            # eager step keeps the public defaults, whose hot-plan lookup builds no config key per call)
            attn = {"PDL": True}
        max_rows = int(cfg.pop("max_rows", DF.MAX_ROWS))
        if not 1 <= max_rows <= DF.MAX_ROWS:
            raise ValueError(f"fused_config max_rows must be in 1..{DF.MAX_ROWS}, got {max_rows}")
        per_kind = {k: dict(cfg.pop(k) or {}) for k in self.FUSED_KINDS if k in cfg}
        # {"<kind>": {"unfused": True}}: that projection keeps the unfused ops (cuBLAS + separate norm / RoPE /
        # SiLU*mul kernels) inside the fused step, where its fused kernel measured slower (a mixed step)
        unfused_kinds = {k for k in self.FUSED_KINDS if per_kind.get(k, {}).pop("unfused", False)}
        unknown = set(cfg) - set(DF.FUSED_DEFAULTS)
        if unknown:
            raise ValueError(f"unknown fused_config keys {sorted(unknown)}; known: {sorted(DF.FUSED_DEFAULTS)}, "
                             f"{', '.join(self.FUSED_KINDS)}, attention, fold_lm_head, max_rows")
        self._fused_cfg = {k: {**cfg, **per_kind.get(k, {})} or None for k in self.FUSED_KINDS}
        # the graph-step default only where the step is replayed (eagerly a second launch costs host time); None:
        # the public defaults, through the hot-plan lookup (no config key built per layer and token)
        self._attn_cfg = {**(self.ATTENTION_CONFIG if self.use_cuda_graph else {}), **(attn or {})} or None
        self.fold_lm_head, self.fused_max_rows, self.fused_decode = fold, max_rows, on
        self._unfused_kinds = unfused_kinds
        self._graphs.clear()

    def _check_tensors(self, model) -> None:
        devices = set()
        for name, t in model.named_parameters():
            if type(t.data) is not torch.Tensor:
                raise TypeError(f"parameter {name} is a {type(t.data).__name__} (tensor parallel / FSDP?); "
                                "the runtime needs plain tensors on one device: use HF generate instead")
            if t.device.type == "meta":
                raise ValueError(f"parameter {name} is on the meta device (offloaded by accelerate?); the "
                                 "runtime needs every weight on one device")
            devices.add(t.device)
        if len(devices) > 1:
            names = ", ".join(sorted(map(str, devices)))
            raise ValueError(f"the model's parameters are on several devices ({names}); the runtime needs "
                             "every weight on one device")

    def weights_signature(self) -> tuple:
        """(id, data_ptr, dtype, device, shape) of each parameter the runtime reads, re-read from the modules.

        Cheap (a few hundred attribute reads). It changes when a parameter is replaced or gets new storage
        (`model.to()`, load_state_dict(assign=True), `param.data = ...`, a new Parameter assigned), i.e.
        exactly when this runtime would read stale weights; in-place updates keep it (and the runtime sees
        them).
        """
        out = []
        for module, attr in self._sources:
            t = getattr(module, attr)
            out.append((id(t), t.data_ptr(), t.dtype, t.device, tuple(t.shape)))
        return tuple(out)

    def is_stale(self) -> bool:
        """True when the model's parameters no longer are the tensors this runtime reads (rebuild it)."""
        return self.weights_signature() != self._signature

    def runtime_tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor the runtime holds, by name (for memory accounting and tests)."""
        out = {"embed": self.embed, "norm_w": self.norm_w, "lm_head": self.lm_head, "cos": self.cos,
               "sin": self.sin, "k_cache": self.k_cache, "v_cache": self.v_cache}
        if self.lm_bias is not None:
            out["lm_bias"] = self.lm_bias
        for i, L in enumerate(self.layers):
            for f in dataclasses.fields(L):
                val = getattr(L, f.name)
                if isinstance(val, torch.Tensor):
                    out[f"layers.{i}.{f.name}"] = val
                elif isinstance(val, _Proj):
                    for j, (w, b) in enumerate(val.parts or [(val.weight, val.bias)]):
                        out[f"layers.{i}.{f.name}.{j}.weight"] = w
                        if b is not None:
                            out[f"layers.{i}.{f.name}.{j}.bias"] = b
        return out

    def _proj(self, x, p: _Proj):
        if p.weight is not None:
            return self._linear(x, p.weight, p.bias)
        return torch.cat([self._linear(x, w, b) for w, b in p.parts], dim=-1)

    # ---------------------------------------------------------------------------------------------------------
    def _layers(self, h, attend):
        """The decoder stack; attend(i, qkv (B, T, H + 2*Hkv, D)) does RoPE, the cache write and attention."""
        H, D = self.n_heads, self.head_dim
        residual = None
        for i, L in enumerate(self.layers):
            qkv, residual = self._qkv(h, residual, L)
            B, T = qkv.shape[:2]
            o = attend(i, qkv)  # (B, H, T, D)
            h = self._linear(o.transpose(1, 2).reshape(B, T, H * D), L.wo, L.bo)
            act, residual = self._mlp_act(h, residual, L)
            h = self._linear(act, L.wdown, L.bdown)
        x, _ = LF.fused_add_rms_norm(h, residual, self.norm_w, self.eps)
        return x

    def _qkv(self, h, residual, L):
        """Input norm (adding the residual; none before the first layer), the q/k/v projection as (..., H + 2*Hkv,
        D) and Qwen3's per-head q/k norms. Returns (qkv, residual)."""
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        if residual is None:
            x, residual = LF.rms_norm(h, L.w_in, L.eps_in), h
        else:
            x, residual = LF.fused_add_rms_norm(h, residual, L.w_in, L.eps_in)
        qkv = self._proj(x, L.qkv).view(*x.shape[:-1], H + 2 * KV, D)
        if L.q_norm is not None:  # Qwen3: RMSNorm over head_dim on every q and k head, before RoPE
            q = LF.rms_norm(qkv[..., :H, :], L.q_norm, L.qk_eps)
            k = LF.rms_norm(qkv[..., H:H + KV, :], L.k_norm, L.qk_eps)
            qkv = torch.cat([q, k, qkv[..., H + KV:, :]], dim=-2)
        return qkv, residual

    def _mlp_act(self, a, residual, L):
        """Post-attention add + norm, the gate/up projection and SiLU*mul. Returns (act, residual)."""
        x, residual = LF.fused_add_rms_norm(a, residual, L.w_post, L.eps_post)
        gate, up = self._proj(x, L.gu).split(self.inter, dim=-1)
        return LF.silu_mul(gate, up), residual

    def _logits(self, x):
        return self._linear(x, self.lm_head, self.lm_bias)

    @torch.no_grad()
    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        """Fill cache rows 0..B-1 with the prompts; returns logits (B, vocab) at each prompt's last token."""
        B = len(prompts)
        if B == 0:
            raise ValueError("prompts is empty")
        if B > self.max_batch:
            raise ValueError(f"{B} prompts exceed this runtime's max_batch={self.max_batch}")
        lens = [len(p) for p in prompts]
        if min(lens) == 0:
            raise ValueError("a prompt has no tokens")
        T = max(lens)
        if T > self.max_seq_len:
            raise ValueError(f"a prompt of {T} tokens exceeds the KV cache of {self.max_seq_len} slots")
        ids = torch.zeros(B, T, dtype=torch.long)
        for b, p in enumerate(prompts):
            ids[b, : len(p)] = torch.as_tensor(p, dtype=torch.long)
        ids = ids.to(self.device)
        h = F.embedding(ids, self.embed)
        cos, sin = self.cos[:T], self.sin[:T]
        H, KV = self.n_heads, self.n_kv

        def attend(i, qkv):
            q, k, v = (t.transpose(1, 2) for t in qkv.split([H, KV, KV], dim=2))
            q, k = LF.apply_rope(q, k, cos, sin)
            self.k_cache[i, :B, :, :T] = k
            self.v_cache[i, :B, :, :T] = v
            return LF.flash_attention(q, k, v, causal=True, scale=self.scale)

        x = self._layers(h, attend)
        last = torch.as_tensor([n - 1 for n in lens], device=self.device)
        return self._logits(x[torch.arange(B, device=self.device), last])

    def _decode_fused(self, tokens, positions):
        """The decode step on the fused kernels (ops/decode_fused.py): per layer norm_gemv(rope_cache) ->
        flash-decoding -> gemv(o) -> norm_gemv(silu_mul, adding o's output to the residual) -> gemv(down); the next
        layer's norm_gemv adds down's output. Each kernel writes fresh buffers (the residual too), so none reads
        what it writes. Qwen3 (q_norm/k_norm) keeps the unfused q/k/v part."""
        B = tokens.shape[0]
        H, KV, D = self.n_heads, self.n_kv, self.head_dim
        cfg, unfused = self._fused_cfg, self._unfused_kinds
        h = F.embedding(tokens, self.embed)  # (B, hidden)
        lengths = (positions + 1).to(torch.int32)
        residual = None
        for i, L in enumerate(self.layers):
            kc, vc = self.k_cache[i, :B], self.v_cache[i, :B]
            if L.q_norm is None and "qkv" not in unfused:
                rope = DF.RopeCache(positions, self.cos, self.sin, kc, vc, H, KV)
                q, residual = DF.norm_gemv(h, residual, L.w_in, L.eps_in, L.qkv.weight, L.qkv.bias,
                                           epilogue="rope_cache", rope=rope, config=cfg["qkv"])
            else:  # unfused q/k/v: chosen (fused_config {"qkv": {"unfused": True}}), or Qwen3's per-head q/k norms
                qkv, residual = self._qkv(h, residual, L)
                q = LF.rope_cache_write(qkv, self.cos, self.sin, positions, kc, vc, H, KV)
            o = self._decode_attention(q, kc, vc, lengths)  # (B, H, 1, D)
            if "o" in unfused:
                a = self._linear(o.view(B, H * D), L.wo, L.bo)
            else:
                a = DF.gemv(o.view(B, H * D), L.wo, L.bo, config=cfg["o"])
            if "gate_up" in unfused:
                act, residual = self._mlp_act(a, residual, L)
            else:
                act, residual = DF.norm_gemv(a, residual, L.w_post, L.eps_post, L.gu.weight, L.gu.bias,
                                             epilogue="silu_mul", config=cfg["gate_up"])
            if "down" in unfused:
                h = self._linear(act, L.wdown, L.bdown)
            else:
                h = DF.gemv(act, L.wdown, L.bdown, config=cfg["down"])
        if self.fold_lm_head and self.lm_head.stride(-1) == 1 and "lm_head" not in unfused:
            return DF.norm_gemv(h, residual, self.norm_w, self.eps, self.lm_head, self.lm_bias,
                                config=cfg["lm_head"])[0]
        x, _ = LF.fused_add_rms_norm(h, residual, self.norm_w, self.eps)
        return self._logits(x)

    def _decode_attention(self, q, kc, vc, lengths):
        """Flash-decoding of the step (inputs valid by construction): with the step's settings (`_attn_cfg`) on
        the Triton path, else the public defaults (the reference off the GPU, the registered op under a tracer)."""
        if self._attn_cfg is None or tracing() or not use_triton(q):
            return decode_attention_unchecked(q, kc, vc, lengths, self.scale)
        return decode_attention_fwd(q, kc, vc, lengths, self.scale, config=self._attn_cfg)

    def _decode_eager(self, tokens, positions):
        B = tokens.shape[0]
        if self.fused_decode and B <= self.fused_max_rows:
            with torch.no_grad():  # inference-only kernels; the HF parameters they read may require grad
                return self._decode_fused(tokens, positions)
        h = F.embedding(tokens[:, None], self.embed)
        lengths = (positions + 1).to(torch.int32)

        def attend(i, qkv):
            kc, vc = self.k_cache[i, :B], self.v_cache[i, :B]
            # one kernel: RoPE on q and k, k and v written into slot positions[b] of row b
            q = LF.rope_cache_write(qkv[:, 0], self.cos, self.sin, positions, kc, vc, self.n_heads, self.n_kv)
            return self._decode_attention(q, kc, vc, lengths)

        return self._logits(self._layers(h, attend)[:, 0])

    def _graph(self, bucket: int):
        if bucket not in self._graphs:
            with torch.inference_mode(False), torch.no_grad():  # persistent buffers: ordinary tensors
                self._graphs[bucket] = self._capture(bucket)
        return self._graphs[bucket]

    def _capture(self, bucket: int):
        tokens = torch.zeros(bucket, dtype=torch.long, device=self.device)
        # warm-up and capture write only the last slot, which a sequence overwrites before it attends it
        positions = torch.full((bucket,), self.max_seq_len - 1, dtype=torch.long, device=self.device)
        graph, logits = _cuda_graph(lambda: self._decode_eager(tokens, positions))
        return graph, tokens, positions, logits

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """One step: token b is written at cache slot positions[b] of row b; returns logits (B, vocab).

        tokens, positions: (B,) int64 on the runtime's device. Positions must be < max_seq_len (checked by the
        caller that owns them, without a device sync).
        """
        B = tokens.shape[0]
        if not self.use_cuda_graph:
            return self._decode_eager(tokens, positions)
        graph, s_tok, s_pos, s_logits = self._graph(min(_bucket(B), self.max_batch))
        s_tok[:B].copy_(tokens)
        s_pos[:B].copy_(positions)
        if B < s_tok.shape[0]:
            s_pos[B:].fill_(self.max_seq_len - 1)
        graph.replay()
        return s_logits[:B]

    def capture(self, batch_size: int, greedy: bool = False) -> None:
        """Capture the decode graph for `batch_size`'s bucket now (otherwise done at its first decode); with
        greedy=True the whole-step graph of `greedy_steps` instead."""
        if greedy:
            self.greedy_steps(batch_size)
        elif self.use_cuda_graph:
            self._graph(min(_bucket(batch_size), self.max_batch))

    def greedy_steps(self, batch_size: int) -> GreedySteps:
        """The greedy decode loop's step for `batch_size`'s bucket: decode, argmax, stop flags, positions and the
        token history in one CUDA graph (one replay per token, no other launch), or run eagerly without graphs."""
        bucket = min(_bucket(batch_size), self.max_batch)
        key = ("greedy", bucket)
        if key not in self._graphs:
            with torch.inference_mode(False), torch.no_grad():  # persistent buffers: ordinary tensors
                self._graphs[key] = GreedySteps(self, bucket)
        return self._graphs[key]


def _cuda_graph(fn):
    """(graph, fn's output): fn run twice on a side stream (Triton JIT and autotuning happen there, outside
    capture), then captured once on the current device."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out


class GreedySteps:
    """Greedy decoding with the loop's bookkeeping on the device, captured with the decode step in one graph.

    State (persistent buffers, `bucket` rows; rows past the call's batch are parked: finished, at the last cache
    slot, which no sequence attends before overwriting it):
      tok (B,) the current token of each row, pos (B,) its cache slot, fin (B,) finished (EOS seen, or the row's
      last step reached), last (B,) the step index at which a row stops, eos (MAX_EOS,) stop ids (-1 = unused),
      step (1,) the step counter, hist (B, max_seq_len) the tokens, hist[:, s] = the token of step s.
    One step (`advance`): logits = decode(tok, pos); pos += not fin; tok = fin ? tok : argmax(logits);
    step += 1; hist[:, step] = tok; fin |= tok in eos or last <= step. This is the same recurrence as the
    host loop in api.generate_ids for temperature 0, so tokens are identical; a finished row repeats its token.
    """

    MAX_EOS = 16

    def __init__(self, rt: LlamaRuntime, bucket: int):
        dev = rt.device
        self.rt, self.bucket = rt, bucket
        self.tok = torch.zeros(bucket, dtype=torch.long, device=dev)
        self.pos = torch.full((bucket,), rt.max_seq_len - 1, dtype=torch.long, device=dev)
        self.fin = torch.ones(bucket, dtype=torch.bool, device=dev)
        self.last = torch.zeros(bucket, dtype=torch.long, device=dev)
        self.eos = torch.full((self.MAX_EOS,), -1, dtype=torch.long, device=dev)
        self.step = torch.zeros(1, dtype=torch.long, device=dev)
        self.hist = torch.zeros(bucket, rt.max_seq_len, dtype=torch.long, device=dev)
        # warm-up (compilation) and capture: every row parked (finished, last slot), so nothing but that slot is
        # written; the counters they move are reset by start()
        self.graph = _cuda_graph(self._body)[0] if rt.use_cuda_graph else None

    def _body(self):
        logits = self.rt._decode_eager(self.tok, self.pos)
        self.pos += (~self.fin).long()  # a finished row stays put: it never writes past its own context
        self.tok.copy_(torch.where(self.fin, self.tok, logits.argmax(-1)))
        self.step += 1
        self.hist.scatter_(1, self.step.expand(self.bucket).view(-1, 1), self.tok.view(-1, 1))
        self.fin |= self._stopped(self.tok, self.last, self.step)

    def _stopped(self, tok, last, step):
        """Rows whose token is a stop id or whose last step is reached (no torch.isin: it cannot be captured)."""
        return (tok[:, None] == self.eos[None, :]).any(-1) | (last <= step)

    def start(self, tok: torch.Tensor, positions: torch.Tensor, last: torch.Tensor, eos_ids) -> None:
        """Load a call: first tokens (B,), their cache slots (B,), each row's last step index (B,), stop ids."""
        B = tok.shape[0]
        if B > self.bucket or len(eos_ids) > self.MAX_EOS:
            raise ValueError(f"GreedySteps holds {self.bucket} rows and {self.MAX_EOS} stop ids; got {B} rows "
                             f"and {len(eos_ids)} ids")
        self.tok.zero_()
        self.tok[:B].copy_(tok)
        self.pos.fill_(self.rt.max_seq_len - 1)
        self.pos[:B].copy_(positions)
        self.last.zero_()
        self.last[:B].copy_(last)
        self.eos.fill_(-1)
        if len(eos_ids):
            self.eos[:len(eos_ids)].copy_(torch.as_tensor(list(eos_ids), dtype=torch.long))
        self.step.zero_()
        self.hist[:, 0].copy_(self.tok)
        self.fin.fill_(True)
        self.fin[:B] = self._stopped(self.tok[:B], self.last[:B], 0)

    def advance(self) -> None:
        """One greedy step (one graph replay on CUDA)."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self._body()
