"""The transformers attention function "lite": prefill through flash_attention, one-token decode through
flash-decoding, anything else to Hugging Face's own eager attention.

Registered with `AttentionInterface` and, under the same name, `AttentionMaskInterface` (`lite_mask`: HF's
sdpa mask builder, except for causal attention over exactly the query positions, see there; it runs once per
forward, not per layer). Without the mask registration `create_causal_mask` returns None for an unknown name
and left padding or static-cache decode silently give wrong tokens (see shared/notes). What arrives here as
`attention_mask`:
  * None       -> HF's sdpa contract: causal, top-left aligned (HF skips the mask only when Tq == Tk, when the
                  cache holds nothing before these queries, or for one query with every key valid), so for
                  Tq > 1 only the first Tq keys matter (a static cache's unwritten tail is never read);
  * bool 4-D   -> True = attend; passed to the kernel as a tensor argument (still combined with bottom-right
                  causal, which every causal mask HF builds implies, so the kernel can skip blocks); a
                  (B, 1, Tq, Tk) view with stride 0 over queries is lite_mask's key-padding row, which the
                  kernel reads as one vector per key tile (the KEY_MASK path) and which means "causal AND
                  these keys";
  * int 4-D    -> nonzero = attend;
  * float 4-D  -> an additive bias (only a user-supplied 4-D mask is one; our mask builder gives bool): HF's
                  eager attention, never approximated. Looking at its values to detect a 0/-inf mask would be a
                  host sync per layer and a graph break under torch.compile.

Per call this does no host sync and allocates only what the kernel needs; the one-token path reuses the
`lengths` tensor across the layers of a step. Under torch.compile the kernels are the registered ops
`torch.ops.litekernels.flash_attention` / `decode_attention`, opaque to Inductor, the mask a plain input (a
view, no copy); the one-token path derives the true lengths from the mask there (see `_traced_lengths`).
"""

from __future__ import annotations

import torch

from litekernels.ops.attention import flash_attention_unchecked
from litekernels.ops.decode_attention import decode_attention_unchecked
from litekernels.utils import SUPPORTED_DTYPES, tracing

NAME = "lite"  # our kernels wherever they apply (apply_lite_llama(attention="ours"))
AUTO_NAME = "lite_auto"  # the default: the faster of ours and SDPA per call kind (lite_auto_attention_forward)
MAX_HEAD_DIM = 256

# ((batch, keys, device), tensor): the layers of one decode step share it. One tuple, replaced whole, so a thread
# never pairs another thread's key with its own tensor.
_last_lengths: tuple = (None, None)


def _traced_lengths(key_mask, batch: int, keys: int, device) -> torch.Tensor:
    """Lengths inside a traced graph (torch.compile), where each layer's graph builds its own tensor (a cached
    one would be baked in as a constant). With a key mask (HF's static cache: the whole buffer arrives, the
    unwritten tail masked) the length is one past the last attendable slot, so the kernel reads only the written
    prefix instead of all max_cache_len keys; Inductor makes it one small reduction kernel per layer, the same
    count as the fill it replaces. Without a mask every key is valid (a dynamic cache)."""
    if key_mask is None:
        return torch.full((batch,), keys, dtype=torch.int32, device=device)
    slots = torch.arange(1, keys + 1, dtype=torch.int32, device=device)
    return torch.where(key_mask, slots, 0).amax(-1).clamp_min(1)


def _full_lengths(batch: int, keys: int, device) -> torch.Tensor:
    global _last_lengths
    key = (batch, keys, device)
    cached_key, lengths = _last_lengths
    if cached_key != key:
        lengths = torch.full((batch,), keys, dtype=torch.int32, device=device)
        _last_lengths = (key, lengths)
    return lengths


def _is_key_row(mask) -> bool:
    """lite_mask's padding-only mask: (B, 1, Tq, Tk) with stride 0 over queries (causality left implied)."""
    return mask is not None and mask.dim() == 4 and mask.shape[2] > 1 and mask.stride(2) == 0


def lite_mask(*args, **kwargs):
    """The "lite" AttentionMaskInterface entry: HF's `sdpa_mask`, except when the mask would be plain causal
    attention over exactly the query positions (no cache before them: Tq == Tk, kv offset 0, HF's causal mask
    function, no local window) combined with a 2-D padding mask. Then it returns
      * None when there is no padding mask (causal; HF's own builder skips the mask only outside
        torch.compile on the transformers/torch versions we support, and under compile materializes a
        (B, 1, T, T) mask that sends every tile of every layer through the kernels' general masked path),
      * None in eager mode when the padding mask is all ones (HF does the same host check),
      * else the padding row as a (B, 1, Tq, Tk) view with stride 0 over queries: the kernels read it as a
        vector per key tile (KEY_MASK) and apply causality themselves; no (B, T, T) tensor is built.
    Everything else (decode against a cache, sliding windows, packed sequences, bidirectional masks) is
    sdpa_mask's."""
    from transformers.masking_utils import causal_mask_function, sdpa_mask

    a = kwargs  # create_causal_mask passes everything by keyword (names differ across transformers 5.x)
    q_offset = a.get("q_offset", 0)  # a tensor for static caches (not readable under compile): not ours then
    if not args and a.get("mask_function") is causal_mask_function and a.get("local_size") is None \
            and a.get("allow_is_causal_skip", True) and a.get("kv_offset", 0) == 0 \
            and isinstance(q_offset, int) and q_offset == 0:
        kv = a.get("kv_length")
        q = a.get("q_length")
        if q is None and a.get("cache_position") is not None:  # transformers < 5.2x: positions, not a length
            q = a["cache_position"].shape[0]
        pad = a.get("attention_mask")
        if isinstance(kv, int) and q == kv and (pad is None or (pad.dim() == 2 and pad.shape[-1] == kv)):
            if pad is None or (not tracing() and bool(pad.all())):
                return None
            return pad.bool()[:, None, None, :].expand(pad.shape[0], 1, q, kv)
    return sdpa_mask(*args, **kwargs)


def lite_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                           sliding_window=None, softcap=None, **kwargs):
    """AttentionInterface contract: q (B,H,Tq,D), k/v (B,Hkv,Tk,D) -> ((B,Tq,H,D), None)."""
    mask = attention_mask
    if mask is not None and mask.dtype != torch.bool:
        mask = None if mask.is_floating_point() else mask != 0
    # HF's sdpa integration reads the call's is_causal before the module's (CLIP's text model: module False, call
    # True); a key row (lite_mask's) means "causal AND these keys" only for a causal call
    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else bool(causal)
    # a window no shorter than the keys never cuts (query i sees keys j > i - window): Mistral passes its
    # config's window (4096 by default) on every call, so only a window that matters goes to HF eager
    windowed = sliding_window is not None and key.shape[2] > sliding_window
    if ((dropout and module.training) or windowed or softcap is not None
            or (attention_mask is not None and mask is None) or query.dtype != key.dtype
            or query.dtype not in SUPPORTED_DTYPES or query.shape[-1] > MAX_HEAD_DIM):
        from transformers.models.llama.modeling_llama import eager_attention_forward
        if causal and _is_key_row(attention_mask):  # a padding row: HF eager needs causality spelled out
            Tq, Tk = query.shape[2], key.shape[2]
            attention_mask = attention_mask & torch.ones(Tq, Tk, dtype=torch.bool, device=query.device).tril(Tk - Tq)
        if attention_mask is not None and attention_mask.dtype == torch.bool:
            # HF eager attention adds the mask to the scores: a bool mask (our registered sdpa mask builder)
            # must become additive first, or it is silently added as 0/1 (wrong sliding-window/padding logits)
            attention_mask = torch.zeros(attention_mask.shape, dtype=query.dtype, device=query.device).masked_fill(
                ~attention_mask, torch.finfo(query.dtype).min)
        return eager_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                       scaling=scaling, **kwargs)
    B, _, Tq, D = query.shape
    Tk = key.shape[2]
    scale = D ** -0.5 if scaling is None else float(scaling)
    if key.stride(-1) != 1 or value.stride(-1) != 1:  # never for HF's projections and caches; kept as a guard
        key, value = key.contiguous(), value.contiguous()
    if Tq == 1 and (mask is None or mask.shape[1] == 1) and not torch.is_grad_enabled():
        key_mask = None
        if mask is not None:
            key_mask = mask[:, 0, 0, :].expand(B, Tk)
            if key_mask.stride(-1) != 1:
                key_mask = key_mask.contiguous()
        if tracing():
            lengths = _traced_lengths(key_mask, B, Tk, query.device)
        else:  # eager: every layer of a step shares one cached tensor (no launch); the mask does the rest
            lengths = _full_lengths(B, Tk, query.device)
        out = decode_attention_unchecked(query, key, value, lengths, scale, key_mask)
    else:
        if mask is None and causal and Tk > Tq > 1:  # top-left causal: later keys are never visible
            key, value = key[:, :, :Tq], value[:, :, :Tq]
        out = flash_attention_unchecked(query, key, value, bool(causal), scale, mask)
    return out.transpose(1, 2).contiguous(), None


def _prefers_sdpa(query) -> bool:
    """Where "auto" hands plain causal attention (no mask) to SDPA: CUDA GPUs, whose SDPA backends (cuDNN,
    FlashAttention-2) measured faster than our prefill kernel (bench/results/ops-attn-H200.json: forward 0.78-0.87x,
    forward+backward 0.69-0.83x of SDPA on an H200). Elsewhere (the CPU: the reference / Triton interpreter) ours."""
    return query.is_cuda


def lite_auto_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                                sliding_window=None, softcap=None, **kwargs):
    """"lite_auto" (apply_lite_llama's default): transformers' own SDPA attention for unmasked causal attention
    over several queries (training and prefill of unpadded batches) on a GPU, where SDPA is faster today; our
    kernels for everything they win: a left-padded batch (lite_mask's key row: our KEY_MASK path, 1.7-1.9x SDPA
    with the 4-D mask HF would build, same file) and one-token decode (flash-decoding, whose host path and
    static-cache lengths the generation runtime and CUDA graphs rely on). Same contract as lite_attention_forward."""
    windowed = sliding_window is not None and key.shape[2] > sliding_window
    if attention_mask is None and query.shape[2] > 1 and softcap is None and not windowed and _prefers_sdpa(query):
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, None, dropout=dropout, scaling=scaling, **kwargs)
    return lite_attention_forward(module, query, key, value, attention_mask, dropout, scaling, sliding_window,
                                  softcap, **kwargs)


_registered = False


def register() -> str:
    """Register "lite" and "lite_auto" with transformers (idempotent); returns "lite"."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        from litekernels.library import register_inductor_decompositions

        AttentionInterface.register(NAME, lite_attention_forward)
        AttentionMaskInterface.register(NAME, lite_mask)
        AttentionInterface.register(AUTO_NAME, lite_auto_attention_forward)
        AttentionMaskInterface.register(AUTO_NAME, lite_mask)
        register_inductor_decompositions()  # decode-sized RMSNorm fuses with the residual add under Inductor
        _registered = True
    return NAME
