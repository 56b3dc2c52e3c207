"""Hugging Face integration: `apply_lite_llama(model)` and `revert_lite_llama(model)`.

Instance patching (the default) touches only the given model: each RMSNorm and MLP gets a `forward` bound in
its own `__dict__`, each attention module a wrapper that switches RoPE to our kernel while it runs, and the
model's attention implementation is set to "lite_auto" (or "lite", attention="ours"). Parameters, names and
state_dict keys are unchanged.
Class patching (`apply_lite_llama()` with no model) rebinds the classes' forwards, so models built afterwards
use the kernels; attention then comes from `from_pretrained(..., attn_implementation="lite_auto")` (or "lite").
`revert_lite_llama` restores exactly what was there before, so outputs are bit-identical to an unpatched model.
"""

from __future__ import annotations

import dataclasses
import threading
import types
import warnings
import weakref


from litekernels.modules import LiteMLP, LiteRMSNorm
from litekernels.ops.rope import apply_rope_unchecked
from litekernels import utils as _utils
from litekernels.utils import SUPPORTED_DTYPES, backend_name

from . import attention as _attention
from . import causal_lm as _causal_lm
from . import llama  # noqa: F401  (registers the Llama architecture)
from . import mistral, qwen2, qwen3  # noqa: F401  (register the other Llama-family architectures)
from .registry import ARCHITECTURES, Architecture, find_architecture

__all__ = ["apply_lite_llama", "revert_lite_llama", "lite_llama_summary", "ARCHITECTURES", "Architecture"]

_MISSING = object()


# ------------------------------------------------------------------------------------------------------------
# replacement forwards (shared by every architecture)
# ------------------------------------------------------------------------------------------------------------
# One definition each, in litekernels/modules.py: HF's modules have the same attribute names as ours.
_rms_norm_forward = LiteRMSNorm.forward
_mlp_forward = LiteMLP.forward


# RoPE: the attention forward looks the module-level function up on each call. We put a dispatcher there once;
# it runs our kernel while a patched attention module is executing (thread-local depth) or when the classes
# are patched, and the original otherwise.
class _RopeScope(threading.local):
    def __init__(self):  # runs once per thread: `depth` is always there, so torch.compile's guard on it is a
        self.depth = 0  # value check, not "has this thread's dict the key yet" (that flipped the first time
        # any patched model ran, and recompiled every unpatched model compiled before it)


_rope_scope = _RopeScope()
_rope_dispatchers: dict[str, "_RopeDispatch"] = {}


class _RopeDispatch:
    def __init__(self, original):
        self.original = original
        self.users = weakref.WeakSet()  # patched models; a collected model needs no revert
        self.class_patched = False

    def __call__(self, q, k, cos, sin, *args, **kwargs):
        unsqueeze_dim = args[0] if args else kwargs.get("unsqueeze_dim", 1)
        active = self.class_patched or _rope_scope.depth > 0
        if active and unsqueeze_dim == 1 and q.dim() == 4 and q.dtype in SUPPORTED_DTYPES:
            # HF's attention made these (q, k (B,H|Hkv,T,D) of one dtype, cos/sin (B|1,T,D)): no re-checks per call
            return apply_rope_unchecked(q, k, cos, sin)
        return self.original(q, k, cos, sin, *args, **kwargs)


def _rope_dispatch(arch: Architecture) -> _RopeDispatch:
    mod = arch.module()
    d = _rope_dispatchers.get(arch.name)
    if d is None:
        d = _RopeDispatch(getattr(mod, arch.rope_function))
        _rope_dispatchers[arch.name] = d
        setattr(mod, arch.rope_function, d)
    return d


def _release_rope_dispatch(arch: Architecture) -> None:
    d = _rope_dispatchers.get(arch.name)
    if d is not None and not d.users and not d.class_patched:
        setattr(arch.module(), arch.rope_function, d.original)
        del _rope_dispatchers[arch.name]


def _with_rope(inner):
    def forward(*args, **kwargs):
        _rope_scope.depth += 1
        try:
            return inner(*args, **kwargs)
        finally:
            _rope_scope.depth -= 1

    return forward


# ------------------------------------------------------------------------------------------------------------
# instance patching
# ------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class _PatchState:
    arch: Architecture
    options: dict
    saved: list = dataclasses.field(default_factory=list)  # (module, attribute, previous value or _MISSING)
    attn_implementation: str | None = None
    counts: dict = dataclasses.field(default_factory=dict)


def _forward_attr(module) -> str:
    # accelerate's hooks live in `forward` and call `_old_forward`: replace the inner one so the hook stays.
    return "_old_forward" if "_old_forward" in module.__dict__ else "forward"


def _set_forward(state: _PatchState, module, make_forward) -> None:
    attr = _forward_attr(module)
    previous = module.__dict__.get(attr, _MISSING)
    current = getattr(module, attr)
    state.saved.append((module, attr, previous))
    object.__setattr__(module, attr, make_forward(current))


def _warn_backend(device=None) -> None:
    if backend_name(device) == "reference":
        warnings.warn(f"lite-llama: the model is on {device or 'a machine without CUDA'} and TRITON_INTERPRET is not "
                      "set; the patched model runs the plain PyTorch reference ops (same results, no speed-up)",
                      stacklevel=3)


ATTENTION_MODES = {"auto": "lite_auto", "ours": "lite", True: "lite"}


def apply_lite_llama(model=None, *, rms_norm: bool = True, rope: bool = True, swiglu: bool = True,
                     attention: bool | str = "auto", fused_linear_cross_entropy: bool = True):
    """Patch a loaded Llama-family model in place (or, with no model, transformers' classes); returns the model.

    attention: "auto" (the model's attention implementation becomes "lite_auto": on a GPU, unmasked causal
    attention over several queries - training, unpadded prefill - runs transformers' SDPA, faster than our kernel
    there today; padded batches and one-token decode run ours), "ours" or True ("lite": our kernels wherever they
    apply), False (the model's own implementation stays).

    fused_linear_cross_entropy: in training mode with labels, the causal-LM forward computes the loss without
    building logits (returns logits=None); see patches/causal_lm.py.

    Idempotent: applying the same options again changes nothing; other options first revert, then re-apply.
    Raises TypeError for an unsupported model, leaving it untouched.
    """
    if attention is None:
        attention = False
    if not (attention is True or attention is False or attention in ("auto", "ours")):
        raise ValueError(f"attention must be 'auto', 'ours', True or False (None: False), got {attention!r}")
    attention = "ours" if attention is True else attention
    options = dict(rms_norm=rms_norm, rope=rope, swiglu=swiglu, attention=attention,
                   fused_linear_cross_entropy=fused_linear_cross_entropy)
    if model is None:
        _patch_classes(options)
        return None
    arch = find_architecture(model)
    if getattr(type(model), "lite_architecture", None) is not None:
        raise TypeError(f"{type(model).__name__} is lite-llama's transformers-free weight container for the "
                        "generation runtime; patch transformers' model instead (load_model() returns it)")
    old = getattr(model, "_lite_llama", None)
    if old is not None:
        if old.options == options:
            return model
        revert_lite_llama(model)
    param = next(model.parameters(), None)
    _warn_backend(param.device if param is not None else None)
    config = getattr(model, "config", None)
    act = getattr(config, "hidden_act", "silu")
    if swiglu and act not in ("silu", "swish"):
        warnings.warn(f"lite-llama: hidden_act={act!r} is not SiLU; the MLP is left unpatched", stacklevel=2)
        swiglu = False
    state = _PatchState(arch=arch, options=options)
    norm_cls, mlp_cls, attn_cls = arch.cls("rms_norm_class"), arch.cls("mlp_class"), arch.cls("attention_class")
    counts = {"rms_norm": 0, "mlp": 0, "rope": 0}
    for module in model.modules():
        if rms_norm and isinstance(module, norm_cls):
            _set_forward(state, module, lambda _, m=module: types.MethodType(_rms_norm_forward, m))
            counts["rms_norm"] += 1
        elif swiglu and isinstance(module, mlp_cls):
            _set_forward(state, module, lambda _, m=module: types.MethodType(_mlp_forward, m))
            counts["mlp"] += 1
        elif rope and isinstance(module, attn_cls):
            _set_forward(state, module, _with_rope)
            counts["rope"] += 1
    if counts["rope"]:
        _rope_dispatch(arch).users.add(model)
    lm_cls = _causal_lm_class(arch)
    if fused_linear_cross_entropy and lm_cls is not None and isinstance(model, lm_cls):
        _set_forward(state, model, lambda current, m=model: _causal_lm.make_instance_forward(current, m))
        counts["fused_linear_cross_entropy"] = True
    if attention and config is not None:
        state.attn_implementation = config._attn_implementation
        _attention.register()
        _set_attn_implementation(model, ATTENTION_MODES[attention])
        counts["attention"] = ATTENTION_MODES[attention]
    state.counts = counts
    object.__setattr__(model, "_lite_llama", state)
    return model


def _causal_lm_class(arch: Architecture):
    try:
        return arch.cls("causal_lm_class")
    except AttributeError:  # a family without a ForCausalLM class of the derived name
        return None


def _set_attn_implementation(model, name: str) -> None:
    setter = getattr(model, "set_attn_implementation", None)
    if setter is not None:
        try:
            setter(name)
            return
        except (ValueError, ImportError):
            pass
    model.config._attn_implementation = name


def revert_lite_llama(model=None):
    """Undo `apply_lite_llama` on `model` (or on the classes, with no model). Returns the model."""
    if model is None:
        _unpatch_classes()
        return None
    state = model.__dict__.get("_lite_llama")
    if state is None:
        return model
    for module, attr, previous in reversed(state.saved):
        if previous is _MISSING:
            module.__dict__.pop(attr, None)
        else:
            object.__setattr__(module, attr, previous)
    if state.counts.get("rope"):
        _rope_dispatch(state.arch).users.discard(model)
        _release_rope_dispatch(state.arch)
    if state.attn_implementation is not None:
        _set_attn_implementation(model, state.attn_implementation)
    del model.__dict__["_lite_llama"]
    return model


def lite_llama_summary(model) -> dict:
    """What apply_lite_llama replaced on this model ({} if it is not patched)."""
    state = model.__dict__.get("_lite_llama")
    return {} if state is None else {"architecture": state.arch.name, **state.counts}


# ------------------------------------------------------------------------------------------------------------
# class patching
# ------------------------------------------------------------------------------------------------------------
_class_saved: list = []  # (class, attribute, previous value or _MISSING)


def _patch_classes(options: dict) -> None:
    _unpatch_classes()
    _warn_backend()
    for arch in ARCHITECTURES.values():
        try:
            arch.module()
        except ImportError:
            continue
        for flag, attr, fwd in (("rms_norm", "rms_norm_class", _rms_norm_forward), ("swiglu", "mlp_class", _mlp_forward)):
            if options[flag]:
                cls = arch.cls(attr)
                _class_saved.append((cls, "forward", cls.__dict__.get("forward", _MISSING)))
                cls.forward = fwd
        cls = _causal_lm_class(arch)
        if options["fused_linear_cross_entropy"] and cls is not None:
            previous = cls.__dict__.get("forward", _MISSING)
            _class_saved.append((cls, "forward", previous))
            cls.forward = _causal_lm.make_class_forward(cls.forward)
        if options["rope"]:
            _rope_dispatch(arch).class_patched = True
            _class_saved.append((arch, "rope", None))
    if options["attention"]:
        _attention.register()


def _unpatch_classes() -> None:
    while _class_saved:
        owner, attr, previous = _class_saved.pop()
        if attr == "rope":
            _rope_dispatch(owner).class_patched = False
            _release_rope_dispatch(owner)
        elif previous is _MISSING:
            delattr(owner, attr)
        else:
            setattr(owner, attr, previous)


# "lite" and "lite_auto" are available to from_pretrained(attn_implementation=...) as soon as this package is
# imported (unless this process runs the CLI's transformers-free model: litekernels.utils.DEFER_HF_REGISTRATION).
if not _utils.DEFER_HF_REGISTRATION:
    try:
        _attention.register()
    except ImportError:  # pragma: no cover - transformers missing
        pass
