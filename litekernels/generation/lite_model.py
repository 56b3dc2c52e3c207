"""A transformers-free weight container of a Llama checkpoint, for the generation runtime (the CLI's fast start).

`LiteLlamaForCausalLM` has exactly the module tree, attribute names and state_dict keys of Hugging Face's
`LlamaForCausalLM` (model.embed_tokens, model.layers[i].{input_layernorm, self_attn.{q,k,v,o}_proj,
post_attention_layernorm, mlp.{gate,up,down}_proj}, model.norm, model.rotary_emb, lm_head), norms with `weight`
and `variance_epsilon`, attention modules with `scaling`, and a rotary module that computes cos/sin the way
transformers' LlamaRotaryEmbedding does (rope types "default" and "llama3", bit for bit in fp32), so LlamaRuntime
reads it through the Llama Architecture entry like the HF model. It has no forward: it exists because importing
transformers' model code costs about 3 s of CPU at every start of the `lite-llama` command (docs/generation.md,
"Start time of a second run"), and the runtime needs none of it. Anything else (HF generate, training,
apply_lite_llama) needs the real model: `load_model()` returns it unless asked for `lite_skeleton=True`.

`lite_config(raw)` accepts only what this file reproduces exactly (model_type "llama", LlamaForCausalLM, SiLU,
no biases, rope "default" or "llama3" in the flat `rope_parameters` form transformers 5 writes); for anything
else it returns None with the reason, and the caller uses transformers.

Usage: config, why = lite_config(json.load(open("config.json"))); model = build_lite_llama(config, state, torch.float32)
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .. import utils as _utils


ROPE_TYPES = ("default", "llama3")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
# config.json keys whose non-default value changes the model in a way this file does not reproduce
_MUST_BE = {"attention_bias": False, "mlp_bias": False, "pretraining_tp": 1, "hidden_act": "silu"}
MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts")  # the runtime refuses these too


class LiteLlamaConfig:
    """The fields of a Llama config.json as attributes, with LlamaConfig's defaults for the ones the runtime and
    generate() read (head_dim, num_key_value_heads, max_position_embeddings, tie_word_embeddings, ...).
    Unknown keys are kept as attributes too; a missing one raises AttributeError like any object."""

    model_type = "llama"

    def __init__(self, raw: dict):
        self.__dict__.update(raw)
        heads = raw["num_attention_heads"]
        self.num_key_value_heads = raw.get("num_key_value_heads") or heads
        self.head_dim = raw.get("head_dim") or raw["hidden_size"] // heads
        self.max_position_embeddings = raw.get("max_position_embeddings", 2048)
        self.tie_word_embeddings = raw.get("tie_word_embeddings", False)
        self.rms_norm_eps = raw.get("rms_norm_eps", 1e-6)
        self.hidden_act = raw.get("hidden_act", "silu")
        self.rope_parameters = dict(raw["rope_parameters"])

    def __repr__(self):
        return f"LiteLlamaConfig({self.__dict__})"


class LiteGenerationConfig:
    """What generate() reads of a model's generation_config: eos_token_id (and the other ids, for completeness)."""

    def __init__(self, raw: dict):
        self.eos_token_id = raw.get("eos_token_id")
        self.bos_token_id = raw.get("bos_token_id")
        self.pad_token_id = raw.get("pad_token_id")


def lite_config(raw) -> tuple[LiteLlamaConfig | None, str]:
    """(config, "") when the skeleton reproduces the checkpoint described by config.json's dict `raw` exactly,
    else (None, why)."""
    if not isinstance(raw, dict):
        return None, "config.json is not an object"
    if raw.get("model_type") != "llama" or raw.get("architectures") != ["LlamaForCausalLM"]:
        return None, f"model_type={raw.get('model_type')!r}, architectures={raw.get('architectures')!r}"
    for key, want in _MUST_BE.items():
        if raw.get(key, want) != want:
            return None, f"{key}={raw[key]!r}"
    for key in MOE_KEYS:
        if raw.get(key):
            return None, f"{key}={raw[key]!r}"
    # transformers 5 writes rope_theta into a flat rope_parameters dict; older forms (rope_scaling, a top-level
    # rope_theta, per-layer-type dicts) are standardized by transformers, not here
    if "rope_scaling" in raw or "rope_theta" in raw or "partial_rotary_factor" in raw:
        return None, "legacy rope settings (rope_scaling / rope_theta outside rope_parameters)"
    rope = raw.get("rope_parameters")
    if not isinstance(rope, dict) or not isinstance(rope.get("rope_theta"), (int, float)):
        return None, f"rope_parameters={rope!r}"
    rope_type = rope.get("rope_type", rope.get("type"))
    if rope_type not in ROPE_TYPES or rope.get("partial_rotary_factor", 1.0) != 1.0:
        return None, f"rope_parameters={rope!r}"
    if rope_type == "llama3" and not all(isinstance(rope.get(k), (int, float)) for k in _LLAMA3_KEYS):
        return None, f"llama3 rope_parameters without {', '.join(_LLAMA3_KEYS)}"
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
        if not isinstance(raw.get(key), int) or raw[key] < 1:
            return None, f"{key}={raw.get(key)!r}"
    return LiteLlamaConfig(raw), ""


# ------------------------------------------------------------------------------------------------------------
# modules: HF's names and attributes, no forward (the runtime reads their weights)
# ------------------------------------------------------------------------------------------------------------
def _no_forward(self, *args, **kwargs):
    raise NotImplementedError(
        f"{type(self).__name__} is lite-llama's transformers-free weight container for the generation runtime "
        "(litekernels.generation.generate / stream); it has no forward. For HF generate, training or "
        "apply_lite_llama load transformers' LlamaForCausalLM: litekernels.generation.loading.load_model() "
        "(without lite_skeleton=True) returns it")


def _meta_linear(in_features: int, out_features: int) -> nn.Linear:
    """A bias-free nn.Linear whose weight is an empty meta tensor, built without nn.Linear.__init__: its
    reset_parameters (random init) would be wasted work and, on the meta device, imports torch._dynamo
    (about 0.9 s of CPU, measured with -X importtime)."""
    m = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(m)
    m.in_features, m.out_features = in_features, out_features
    m.weight = nn.Parameter(torch.empty(out_features, in_features, device="meta"), requires_grad=False)
    m.register_parameter("bias", None)
    return m


def _meta_embedding(num: int, dim: int) -> nn.Embedding:
    """nn.Embedding's attributes over an empty meta weight, without its __init__ (see _meta_linear)."""
    m = nn.Embedding.__new__(nn.Embedding)
    nn.Module.__init__(m)
    m.num_embeddings, m.embedding_dim, m.padding_idx, m.max_norm = num, dim, None, None
    m.norm_type, m.scale_grad_by_freq, m.sparse = 2.0, False, False
    m.weight = nn.Parameter(torch.empty(num, dim, device="meta"), requires_grad=False)
    return m


class LiteLlamaRMSNorm(nn.Module):
    forward = _no_forward

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(hidden_size, device="meta"), requires_grad=False)
        self.variance_epsilon = eps


class LiteLlamaAttention(nn.Module):
    forward = _no_forward

    def __init__(self, config: LiteLlamaConfig, layer_idx: int):
        super().__init__()
        hidden, d = config.hidden_size, config.head_dim
        self.layer_idx = layer_idx
        self.head_dim = d
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = d ** -0.5  # LlamaAttention's softmax scale
        self.is_causal = True
        self.q_proj = _meta_linear(hidden, config.num_attention_heads * d)
        self.k_proj = _meta_linear(hidden, config.num_key_value_heads * d)
        self.v_proj = _meta_linear(hidden, config.num_key_value_heads * d)
        self.o_proj = _meta_linear(config.num_attention_heads * d, hidden)


class LiteLlamaMLP(nn.Module):
    forward = _no_forward

    def __init__(self, config: LiteLlamaConfig):
        super().__init__()
        hidden, inter = config.hidden_size, config.intermediate_size
        self.gate_proj = _meta_linear(hidden, inter)
        self.up_proj = _meta_linear(hidden, inter)
        self.down_proj = _meta_linear(inter, hidden)


class LiteLlamaDecoderLayer(nn.Module):
    forward = _no_forward

    def __init__(self, config: LiteLlamaConfig, layer_idx: int):
        super().__init__()
        self.self_attn = LiteLlamaAttention(config, layer_idx)
        self.mlp = LiteLlamaMLP(config)
        self.input_layernorm = LiteLlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = LiteLlamaRMSNorm(config.hidden_size, config.rms_norm_eps)


def rope_inv_freq(config: LiteLlamaConfig) -> tuple[torch.Tensor, float]:
    """(inv_freq, attention_scaling) as transformers computes them (modeling_llama's
    compute_default_rope_parameters; modeling_rope_utils' _compute_llama3_parameters), same ops in the same order."""
    rope = config.rope_parameters
    base, dim = rope["rope_theta"], config.head_dim
    if rope.get("rope_type", rope.get("type")) == "default":
        return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float) / dim)), 1.0
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float) / dim))
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old_context_len = rope["original_max_position_embeddings"]
    low_freq_wavelen, high_freq_wavelen = old_context_len / low, old_context_len / high
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low) / (high - low)
    smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama), 1.0


class LiteLlamaRotaryEmbedding(nn.Module):
    """rotary(x, position_ids) -> (cos, sin) of shape (B, T, head_dim) in x's dtype, computed in fp32 as
    transformers' LlamaRotaryEmbedding.forward does (rope types whose tables depend only on the position)."""

    def __init__(self, config: LiteLlamaConfig):
        super().__init__()
        rope = config.rope_parameters
        self.rope_type = rope.get("rope_type", rope.get("type"))
        inv_freq, self.attention_scaling = rope_inv_freq(config)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x, position_ids):
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos = emb.cos() * self.attention_scaling
        sin = emb.sin() * self.attention_scaling
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


class LiteLlamaModel(nn.Module):
    forward = _no_forward

    def __init__(self, config: LiteLlamaConfig):
        super().__init__()
        self.embed_tokens = _meta_embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LiteLlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LiteLlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = LiteLlamaRotaryEmbedding(config)


class LiteLlamaForCausalLM(nn.Module):
    """HF LlamaForCausalLM's module tree and state_dict keys, weights only (see the module docstring)."""

    lite_architecture = "llama"  # find_architecture (patches/registry.py) returns this entry without transformers
    forward = _no_forward

    def __init__(self, config: LiteLlamaConfig, generation_config: LiteGenerationConfig | None = None):
        super().__init__()
        self.config = config
        self.generation_config = generation_config or LiteGenerationConfig(vars(config))
        self.model = LiteLlamaModel(config)
        self.lm_head = _meta_linear(config.hidden_size, config.vocab_size)

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device


def expected_keys(config: LiteLlamaConfig) -> dict[str, tuple[int, ...]]:
    """state_dict key -> shape of a checkpoint of this config (lm_head.weight only when untied)."""
    h, d, inter = config.hidden_size, config.head_dim, config.intermediate_size
    q, kv = config.num_attention_heads * d, config.num_key_value_heads * d
    out = {"model.embed_tokens.weight": (config.vocab_size, h), "model.norm.weight": (h,)}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        out.update({p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
                    p + "self_attn.q_proj.weight": (q, h), p + "self_attn.k_proj.weight": (kv, h),
                    p + "self_attn.v_proj.weight": (kv, h), p + "self_attn.o_proj.weight": (h, q),
                    p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                    p + "mlp.down_proj.weight": (h, inter)})
    if not config.tie_word_embeddings:
        out["lm_head.weight"] = (config.vocab_size, h)
    return out


def build_lite_llama(config: LiteLlamaConfig, state: dict, dtype: torch.dtype,
                     generation_config: LiteGenerationConfig | None = None) -> LiteLlamaForCausalLM | None:
    """The skeleton with `state`'s tensors as its parameters (no copy when they already have `dtype`: views of
    the caller's memory map stay views, so back-to-back gate/up stay fusable in place). None when the keys or
    shapes are not exactly those of the config's checkpoint (the caller then uses transformers)."""
    want = expected_keys(config)
    if set(state) != set(want) or any(tuple(state[k].shape) != shape for k, shape in want.items()):
        return None
    if any(not t.is_floating_point() for t in state.values()):
        return None
    model = LiteLlamaForCausalLM(config, generation_config)
    for name, t in state.items():
        owner, _, attr = name.rpartition(".")
        module = model.get_submodule(owner)
        setattr(module, attr, nn.Parameter(t if t.dtype == dtype else t.to(dtype), requires_grad=False))
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight  # one Parameter, as HF ties them
    # this process runs the runtime without transformers: `import litekernels.patches` (which the runtime needs
    # for the Architecture table) then skips registering "lite" with transformers at import (patching still
    # works: it registers when used; tests/test_lite_model.py)
    _utils.DEFER_HF_REGISTRATION = True
    return model.eval()
