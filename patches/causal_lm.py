"""The `...ForCausalLM.forward` that trains without logits: the loss comes from the fused linear cross-entropy.

In training mode (`model.training`) with `labels` (or `shift_labels`), the replacement runs the decoder, takes
its last hidden states and computes transformers' causal-LM loss (`ForCausalLMLoss`: labels shifted left by
one, the last position ignored, or `shift_labels` as given; mean over the non-ignored labels, or the sum
divided by `num_items_in_batch` for gradient accumulation) with `litekernels.fused_linear_cross_entropy`, so
the (tokens x vocab) logits are never built. It returns `logits=None` then (as Liger-Kernel does).
Everything else - no labels, eval mode (evaluation wants logits for metrics), a tensor-parallel lm_head -
calls the model's original forward unchanged.

Honoured: `logits_to_keep` (the hidden states are sliced as transformers slices them, and the labels must
match the kept positions, as in transformers), `ignore_index`, `return_dict` (and config.return_dict), autocast
(lm_head runs in the autocast dtype, as nn.Linear would), `final_logit_softcapping` when a config has it.
A mean over zero items is 0 here, where transformers gives NaN.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect

import torch
import torch.nn.functional as F

from litekernels import functional as LF
from litekernels import utils as _utils

_hf_slice_logits_to_keep = None
_hf_slice_resolved = False


def _resolve_hf_slice() -> None:
    """Look transformers' slice_logits_to_keep up once, at import or at patch time, never inside forward (a
    failing import there is an exception Dynamo cannot trace)."""
    global _hf_slice_logits_to_keep, _hf_slice_resolved
    if _hf_slice_resolved:
        return
    try:
        from transformers.modeling_utils import slice_logits_to_keep as _hf_slice_logits_to_keep
    except ImportError:  # transformers < 5.2x: LlamaForCausalLM.forward slices inline
        _hf_slice_logits_to_keep = None
    _hf_slice_resolved = True


if not _utils.DEFER_HF_REGISTRATION:  # else at patch time (make_*_forward): see litekernels.utils
    _resolve_hf_slice()


def _slice_logits_to_keep(hidden, logits_to_keep):
    if _hf_slice_logits_to_keep is None:
        index = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        return hidden[:, index, :]
    return _hf_slice_logits_to_keep(hidden, logits_to_keep)


def _cache_field(obj_or_cls) -> str:
    # the dataclass field dict, not dataclasses.fields(): torch.compile traces this without a graph break
    return "cache" if "cache" in getattr(obj_or_cls, "__dataclass_fields__", {}) else "past_key_values"


def _uses_fused_path(model, kwargs) -> bool:
    if not model.training or (kwargs.get("labels") is None and kwargs.get("shift_labels") is None):
        return False
    head = model.get_output_embeddings()
    return head is not None and not hasattr(head.weight, "to_local")  # DTensor (tensor parallel): HF's path


def fused_causal_lm_forward(model, kwargs: dict):
    """The training forward: decoder, then the fused loss. kwargs: the forward's arguments, all by name."""
    return_dict = model.config.return_dict if hasattr(model, "config") else True
    passed = kwargs.pop("return_dict", return_dict)
    return_dict = return_dict if passed is None else passed
    labels = kwargs.pop("labels", None)
    logits_to_keep = kwargs.pop("logits_to_keep", 0)
    num_items_in_batch = kwargs.pop("num_items_in_batch", None)
    shift_labels = kwargs.pop("shift_labels", None)
    ignore_index = kwargs.pop("ignore_index", -100)

    decoder = model.model if isinstance(getattr(model, "model", None), torch.nn.Module) else model.base_model
    outputs = decoder(**kwargs)
    hidden = _slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
    head = model.get_output_embeddings()
    weight, bias = head.weight, head.bias
    cast = _utils.autocast_dtype(hidden.device.type)
    if cast is not None:
        hidden, weight = hidden.to(cast), weight.to(cast)
        bias = None if bias is None else bias.to(cast)
    elif hidden.dtype != weight.dtype:
        hidden = hidden.to(weight.dtype)

    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    shift_labels = shift_labels.to(hidden.device)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    flat_labels = shift_labels.reshape(-1)
    if flat_labels.shape[0] != hidden.shape[0]:
        raise ValueError(f"lite-llama fused cross-entropy: {flat_labels.shape[0]} labels for {hidden.shape[0]} "
                         f"positions (labels shape {tuple(shift_labels.shape)}, logits_to_keep={logits_to_keep!r})")
    loss = LF.fused_linear_cross_entropy(
        hidden, weight, flat_labels, bias, ignore_index=ignore_index, reduction="mean", n_items=num_items_in_batch,
        softcap=getattr(model.config, "final_logit_softcapping", None))

    from transformers.modeling_outputs import CausalLMOutputWithPast

    cache = getattr(outputs, _cache_field(type(outputs)), None) if dataclasses.is_dataclass(outputs) else None
    out = CausalLMOutputWithPast(loss=loss, logits=None, hidden_states=getattr(outputs, "hidden_states", None),
                                 attentions=getattr(outputs, "attentions", None),
                                 **{_cache_field(CausalLMOutputWithPast): cache})
    return out if return_dict else out.to_tuple()


def _positional_names(fn) -> list[str]:
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds]


def _by_name(names, args, kwargs) -> dict:
    if len(args) > len(names):
        raise TypeError(f"forward() takes {len(names)} positional arguments but {len(args)} were given")
    for name, value in zip(names, args):
        if name in kwargs:
            raise TypeError(f"forward() got multiple values for argument {name!r}")
        kwargs[name] = value
    return kwargs


def make_instance_forward(original, model):
    """A forward for one model instance; `original` is the forward it had (a bound method)."""
    _resolve_hf_slice()
    names = _positional_names(original)

    @functools.wraps(original)
    def forward(*args, **kwargs):
        kwargs = _by_name(names, args, kwargs)
        if not _uses_fused_path(model, kwargs):
            return original(**kwargs)
        return fused_causal_lm_forward(model, kwargs)

    return forward


def make_class_forward(original):
    """A forward for a ForCausalLM class; `original` is the class's previous forward function."""
    _resolve_hf_slice()
    names = _positional_names(original)[1:]  # without self

    @functools.wraps(original)
    def forward(self, *args, **kwargs):
        kwargs = _by_name(names, args, kwargs)
        if not _uses_fused_path(self, kwargs):
            return original(self, **kwargs)
        return fused_causal_lm_forward(self, kwargs)

    return forward


__all__ = ["fused_causal_lm_forward", "make_instance_forward", "make_class_forward"]
