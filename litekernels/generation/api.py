"""generate() and stream(): batched prompts over LlamaRuntime, with sampling, stop conditions and timings."""

from __future__ import annotations

import dataclasses
import time
from typing import Iterator

import torch

from .runtime import LlamaRuntime
from .sampling import check_sampling, sample

SYNC_EVERY = 16  # generate() checks "all sequences finished" on the host once per this many steps


@dataclasses.dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: str  # "eos", "stop" (a stop string) or "length"
    prompt_tokens: int
    prefill_ms: float
    decode_tokens_per_s: float  # all sequences of the call together


def get_runtime(model, batch: int, total_len: int, use_cuda_graph: bool | None = None,
                skinny_gemm: bool | None = None) -> LlamaRuntime:
    """The runtime cached on the model, (re)built when it is too small or the graph setting changed."""
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and total_len > limit:
        raise ValueError(f"prompt + max_new_tokens = {total_len} tokens exceeds the model's "
                         f"max_position_embeddings={limit}")
    rt = getattr(model, "_lite_runtime", None)
    on_cuda = next(model.parameters()).device.type == "cuda"
    want_graph = on_cuda if use_cuda_graph is None else use_cuda_graph
    skinny_gemm = bool(skinny_gemm)
    if (rt is None or rt.max_batch < batch or rt.max_seq_len < total_len or rt.use_cuda_graph != want_graph
            or rt.skinny_gemm != skinny_gemm):
        old_batch, old_len = (rt.max_batch, rt.max_seq_len) if rt is not None else (1, 256)
        rt = None
        model.__dict__.pop("_lite_runtime", None)
        size = 256
        while size < max(total_len, old_len):
            size *= 2
        rt = LlamaRuntime(model, max_batch=max(batch, old_batch), max_seq_len=size, use_cuda_graph=want_graph,
                          skinny_gemm=skinny_gemm)
        object.__setattr__(model, "_lite_runtime", rt)
    return rt


def _eos_ids(model, tokenizer) -> list[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if ids is None:
        ids = tokenizer.eos_token_id
    if ids is None:
        return []
    return [ids] if isinstance(ids, int) else list(ids)


def _encode(tokenizer, prompts) -> list[list[int]]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt")
    out = []
    for p in prompts:
        if not isinstance(p, str) or not p:
            raise ValueError(f"each prompt must be a non-empty string, got {p!r}")
        out.append(tokenizer(p)["input_ids"])
    return out


def _check_len(ids, max_new_tokens):
    if max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive, got {max_new_tokens}")
    return max(len(p) for p in ids) + max_new_tokens


def _cut_at_stop(text: str, stop) -> tuple[str, bool]:
    hits = [text.find(s) for s in stop if s and s in text]
    return (text[: min(hits)], True) if hits else (text, False)


def _ready_runtime(model, prompts, max_new_tokens, use_cuda_graph, skinny_gemm, seed):
    """The runtime for this call, its decode graph already captured, and the sampling generator (or None)."""
    rt = get_runtime(model, len(prompts), _check_len(prompts, max_new_tokens), use_cuda_graph, skinny_gemm)
    if rt.use_cuda_graph:
        rt.capture(len(prompts))  # before prefill: capture only writes the last cache slot anyway
    gen = torch.Generator(device=rt.device).manual_seed(seed) if seed is not None else None
    return rt, gen


@torch.no_grad()
def generate_ids(model, prompts: list[list[int]], max_new_tokens: int, *, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, eos_ids=(), seed: int | None = None,
                 use_cuda_graph: bool | None = None, skinny_gemm: bool | None = None):
    """Token-level loop. Returns (tokens (B, steps) on the device, prefill seconds, decode seconds).

    A sequence that produced one of `eos_ids` keeps repeating it; the loop ends when all have (checked on the
    host once every SYNC_EVERY steps) or after max_new_tokens.
    """
    check_sampling(temperature, top_k, top_p)
    rt, gen = _ready_runtime(model, prompts, max_new_tokens, use_cuda_graph, skinny_gemm, seed)
    dev, B = rt.device, len(prompts)
    eos = torch.as_tensor(list(eos_ids) or [-1], device=dev)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    sync()
    t0 = time.perf_counter()
    logits = rt.prefill(prompts)
    positions = torch.as_tensor([len(p) for p in prompts], device=dev)
    out = torch.zeros(B, max_new_tokens, dtype=torch.long, device=dev)
    finished = torch.zeros(B, dtype=torch.bool, device=dev)
    tok = sample(logits, temperature, top_k, top_p, gen)
    sync()
    t1 = time.perf_counter()
    steps = 0
    for step in range(max_new_tokens):
        out[:, step] = tok
        finished |= torch.isin(tok, eos)
        steps = step + 1
        if step == max_new_tokens - 1 or (steps % SYNC_EVERY == 0 and bool(finished.all())):
            break
        logits = rt.decode(tok, positions)
        positions += 1
        tok = torch.where(finished, tok, sample(logits, temperature, top_k, top_p, gen))
    sync()
    return out[:, :steps], t1 - t0, time.perf_counter() - t1


def generate(model, tokenizer, prompts, max_new_tokens: int = 128, *, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, stop: list[str] | tuple = (),
             seed: int | None = None, use_cuda_graph: bool | None = None) -> list[GenerationResult]:
    """Complete each prompt (a string or a list of strings); one GenerationResult per prompt, in order.

    Greedy with temperature=0 (each prompt's tokens equal its unbatched greedy tokens). Stops a sequence at the
    model's EOS token(s) or, after decoding, at the first stop string. `seed` makes sampling reproducible.
    """
    ids = _encode(tokenizer, prompts)
    eos_list = _eos_ids(model, tokenizer)
    out, t_prefill, t_decode = generate_ids(model, ids, max_new_tokens, temperature=temperature, top_k=top_k,
                                            top_p=top_p, eos_ids=eos_list, seed=seed, use_cuda_graph=use_cuda_graph)
    B, steps = out.shape
    decode_rate = B * (steps - 1) / t_decode if steps > 1 else 0.0
    eos_set = set(eos_list)
    results = []
    for b, seq in enumerate(out.tolist()):
        reason = "length"
        for j, t in enumerate(seq):
            if t in eos_set:
                seq, reason = seq[: j + 1], "eos"
                break
        text = tokenizer.decode([t for t in seq if t not in eos_set], skip_special_tokens=True)
        text, hit = _cut_at_stop(text, stop)
        results.append(GenerationResult(text=text, token_ids=seq, finish_reason="stop" if hit else reason,
                                        prompt_tokens=len(ids[b]), prefill_ms=1e3 * t_prefill,
                                        decode_tokens_per_s=decode_rate))
    return results


@torch.no_grad()
def stream(model, tokenizer, prompt: str, max_new_tokens: int = 128, *, temperature: float = 0.0,
           top_k: int | None = None, top_p: float | None = None, stop: list[str] | tuple = (),
           seed: int | None = None, use_cuda_graph: bool | None = None) -> Iterator[str]:
    """Yield the completion of one prompt as text pieces while it decodes (one host sync per token).

    The generator's return value (StopIteration.value) is the GenerationResult.
    """
    check_sampling(temperature, top_k, top_p)
    ids = _encode(tokenizer, prompt)
    if len(ids) != 1:
        raise ValueError("stream() takes one prompt; use generate() for a batch")
    rt, gen = _ready_runtime(model, ids, max_new_tokens, use_cuda_graph, None, seed)
    dev = rt.device
    eos_set = set(_eos_ids(model, tokenizer))
    t0 = time.perf_counter()
    logits = rt.prefill(ids)
    position = torch.as_tensor([len(ids[0])], device=dev)
    seq: list[int] = []
    shown, reason = "", "length"
    t1 = time.perf_counter()
    for step in range(max_new_tokens):
        tok = sample(logits, temperature, top_k, top_p, gen)
        t = int(tok.item())
        if t in eos_set:
            seq.append(t)
            reason = "eos"
            break
        seq.append(t)
        text = tokenizer.decode(seq, skip_special_tokens=True)
        text, hit = _cut_at_stop(text, stop)
        if not text.endswith("\ufffd") and len(text) > len(shown):  # hold back half a multi-byte character
            yield text[len(shown):]
            shown = text
        if hit:
            reason = "stop"
            break
        if step < max_new_tokens - 1:
            logits = rt.decode(tok, position)
            position += 1
    t2 = time.perf_counter()
    n = len(seq)
    return GenerationResult(text=shown, token_ids=seq, finish_reason=reason, prompt_tokens=len(ids[0]),
                            prefill_ms=1e3 * (t1 - t0), decode_tokens_per_s=(n - 1) / (t2 - t1) if n > 1 else 0.0)
