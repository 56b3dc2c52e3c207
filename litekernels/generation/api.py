"""generate() and stream(): batched prompts over LlamaRuntime, with sampling, stop conditions and timings."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator

import torch

from .runtime import GreedySteps, LlamaRuntime
from .sampling import RowSeeds, check_sampling, sample

SYNC_EVERY = 16  # generate() checks "all sequences finished" on the host once per this many steps


@dataclasses.dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    finish_reason: str  # "eos", "stop" (a stop string) or "length" (max_new_tokens or the model's context)
    prompt_tokens: int
    prefill_ms: float
    decode_tokens_per_s: float  # all sequences of the call together


# ---------------------------------------------------------------------------------------------------------------
# Per-model state: one lock, the cached runtime, and the weights it was built from.
#
# Thread safety: every call takes the model's lock (an RLock) while it uses the runtime. generate_ids() holds it
# for the whole call. stream() is a generator, so it never holds the lock across a `yield`: it takes it for one
# step (decode + sample + read the token), then lets go. A stream remembers the `epoch` of the runtime after its
# own last step; any other call that writes the cache (or a rebuild) bumps the epoch, and the stream then
# re-prefills its prompt plus the tokens it already produced before going on. So a stream that is closed,
# abandoned, garbage-collected, interleaved with other streams in one thread, or paused while other threads
# generate never blocks anyone and never reads another call's cache rows.

class _ModelState:
    """Generation state kept in the model's __dict__ (a fresh empty one for a deepcopy or a pickled model)."""

    def __init__(self):
        self.lock = threading.RLock()
        self.runtime: LlamaRuntime | None = None
        self.watch: _WeightWatch | None = None
        self.epoch = 0  # bumped whenever the runtime's cache rows are (re)written by a new call, or it is rebuilt
        self.builds = 0  # runtimes built for this model (tests and docs use it)

    def __deepcopy__(self, memo):
        return _ModelState()

    def __reduce__(self):
        return (_ModelState, ())


_STATE_GUARD = threading.Lock()


def _state(model) -> _ModelState:
    st = model.__dict__.get("_lite_generation")
    if st is None:
        with _STATE_GUARD:
            st = model.__dict__.get("_lite_generation")
            if st is None:
                st = _ModelState()
                object.__setattr__(model, "_lite_generation", st)
    return st


class _WeightWatch:
    """A cheap test of "did the weights the runtime read change since it was built?".

    Built once per runtime: every (dict, key, value) slot of every submodule's _modules/_parameters/_buffers, and
    per tensor (data_ptr, _version, dtype, device). changed() re-reads them: a reassigned parameter, buffer or
    submodule (`layer.mlp = ...`, LoRA unload), `model.to(...)` (new storage), and in-place writes through the
    tensor (optimizer steps, load_state_dict, `with torch.no_grad(): p.mul_(2)`) all show. Writes through
    `p.data` bypass version counters: call release_runtime(model) after those. One pass over the slots, no
    module walk (measured in bench/bench_concurrency.py: `check_us`).
    """

    def __init__(self, model):
        self.slots = []
        self.params, self.buffers = [], []
        for mod in model.modules():
            for kind, d in (("m", mod._modules), ("p", mod._parameters), ("b", mod._buffers)):
                for k, v in d.items():
                    self.slots.append((d, k, v))
                    if v is not None and kind != "m":
                        (self.params if kind == "p" else self.buffers).append(v)
        self.param_state = self._read(self.params)
        self.buffer_state = self._read(self.buffers)

    @staticmethod
    def _read(tensors):
        # inference tensors (made under torch.inference_mode) have no version counter: storage checks only
        return [(t.data_ptr(), -1 if t.is_inference() else t._version, t.dtype, t.device) for t in tensors]

    def changed(self, param_versions_matter: bool = True) -> bool:
        for d, k, v in self.slots:
            if d.get(k) is not v:
                return True
        if self._read(self.buffers) != self.buffer_state:
            return True
        now = self._read(self.params)
        if now == self.param_state:
            return False
        if param_versions_matter or [(s[0], s[2], s[3]) for s in now] != [(s[0], s[2], s[3]) for s in self.param_state]:
            return True
        self.param_state = now  # only in-place writes, and the runtime reads the parameters' own storage
        return False


def _release(rt) -> None:
    """Drop a runtime's graphs, KV cache and weight tensors now (not when the garbage collector gets to it), so a
    rebuild never holds two caches at once; a stale reference to it fails loudly instead of decoding."""
    graphs = getattr(rt, "_graphs", None)
    if isinstance(graphs, dict):
        graphs.clear()
    for name, value in list(vars(rt).items()):
        if isinstance(value, (torch.Tensor, list, dict)):
            setattr(rt, name, None)


def _drop_runtime(st: _ModelState) -> None:
    rt, st.runtime, st.watch = st.runtime, None, None
    st.epoch += 1
    if rt is not None:
        _release(rt)


def release_runtime(model) -> None:
    """Free the runtime cached on `model` (KV cache, CUDA graphs); the next call rebuilds it.

    Also the way to tell the runtime about weight writes it cannot see (through `param.data`)."""
    st = _state(model)
    with st.lock:
        _drop_runtime(st)


def context_limit(model) -> int | None:
    """The model's context length (config.max_position_embeddings), or None if it has none."""
    return getattr(model.config, "max_position_embeddings", None)


def _arch_window(model) -> int | None:
    from litekernels.patches.registry import find_architecture

    return find_architecture(model).window(model.config)


def get_runtime(model, batch: int, total_len: int, use_cuda_graph: bool | None = None,
                skinny_gemm: bool | None = None) -> LlamaRuntime:
    """The runtime cached for the model, (re)built when it is too small, a setting changed, or the weights changed.

    Sizes only grow (rows to the largest batch seen, slots to a power of two >= 256 covering the longest
    sequence), so memory stays flat after the largest call; the old runtime is freed before the new one is
    allocated. Callers that use the returned runtime from several threads must hold `_state(model).lock`.
    """
    limit = context_limit(model)
    if limit is not None and total_len > limit:
        raise ValueError(f"prompt + max_new_tokens = {total_len} tokens exceeds the model's "
                         f"max_position_embeddings={limit}")
    st = _state(model)
    with st.lock:
        rt = st.runtime
        on_cuda = next(model.parameters()).device.type == "cuda"
        want_graph = on_cuda if use_cuda_graph is None else use_cuda_graph
        skinny_gemm = bool(skinny_gemm)
        stale = rt is not None and st.watch.changed(getattr(rt, "holds_weight_copies", True))
        if (rt is None or stale or rt.max_batch < batch or rt.max_seq_len < total_len
                or rt.use_cuda_graph != want_graph or rt.skinny_gemm != skinny_gemm):
            old_batch, old_len = (rt.max_batch, rt.max_seq_len) if rt is not None else (1, 256)
            rt = None
            _drop_runtime(st)  # free the old cache and graphs before allocating the new ones
            size = 256
            while size < max(total_len, old_len):
                size *= 2
            # never more slots than the model can use (its context, or a sliding window the runtime refuses to cut)
            caps = [c for c in (limit, _arch_window(model)) if c]
            if caps and max(total_len, old_len) <= min(caps) < size:
                size = min(caps)
            rt = LlamaRuntime(model, max_batch=max(batch, old_batch), max_seq_len=size, use_cuda_graph=want_graph,
                              skinny_gemm=skinny_gemm)
            st.watch = _WeightWatch(model)  # after building: the runtime may rebind parameters (zero-copy views)
            st.runtime = rt
            st.builds += 1
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


def _row_caps(model, ids, max_new_tokens) -> list[int]:
    """New tokens each prompt may get: max_new_tokens, cut so that prompt + new tokens <= the model's context.

    A prompt that leaves no room for one new token (length >= max_position_embeddings) is a ValueError."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be positive (an int >= 1), got {max_new_tokens!r}")
    limit = context_limit(model)
    caps = []
    for b, p in enumerate(ids):
        if limit is not None and len(p) >= limit:
            raise ValueError(f"prompt {b} has {len(p)} tokens, but the model's context (max_position_embeddings="
                             f"{limit}) leaves room for no new token: shorten it to at most {limit - 1} tokens")
        caps.append(max_new_tokens if limit is None else min(max_new_tokens, limit - len(p)))
    return caps


def _cut_at_stop(text: str, stop) -> tuple[str, bool]:
    hits = [text.find(s) for s in stop if s and s in text]
    return (text[: min(hits)], True) if hits else (text, False)


def _check_seed(seed, batch: int):
    """None, or the list of one seed per prompt (an int seed applies to every prompt)."""
    if seed is None:
        return None
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed] * batch
    if len(seeds) != batch or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ValueError(f"seed must be an int or a list of {batch} ints (one per prompt), got {seed!r}")
    return seeds


def _seeds(seed, batch: int, device):
    """None, or RowSeeds from one seed (every row) or a list of one seed per prompt."""
    seeds = _check_seed(seed, batch)
    return None if seeds is None else RowSeeds(seeds, device)


def _ready_runtime(model, st, batch, total_len, use_cuda_graph, skinny_gemm, greedy=False):
    """The runtime for a call (caller holds st.lock), its decode graph for `batch` captured.

    An exception during capture (a KeyboardInterrupt included) drops the whole runtime, so no half-captured
    graph or half-warmed state can be replayed by the next call."""
    rt = get_runtime(model, batch, total_len, use_cuda_graph, skinny_gemm)
    if rt.use_cuda_graph or greedy:
        try:
            rt.capture(batch, greedy=greedy)  # before prefill: capture only writes the last cache slot anyway
        except BaseException:
            rt = None
            _drop_runtime(st)
            raise
    return rt


@torch.no_grad()
def generate_ids(model, prompts: list[list[int]], max_new_tokens: int, *, temperature: float = 0.0,
                 top_k: int | None = None, top_p: float | None = None, eos_ids=(), seed=None,
                 use_cuda_graph: bool | None = None, skinny_gemm: bool | None = None):
    """Token-level loop. Returns (tokens (B, steps) on the device, prefill seconds, decode seconds).

    A sequence that produced one of `eos_ids`, or reached the model's context (prompt + new tokens =
    max_position_embeddings), keeps repeating its last token; the loop ends when all have (checked on the host
    once every SYNC_EVERY steps) or after max_new_tokens. `seed`: an int (every row) or one int per prompt; each
    row's samples then depend only on its own prompt and seed, not on the batch. Thread-safe: holds the model's
    lock for the whole call.
    """
    check_sampling(temperature, top_k, top_p)
    if not prompts:
        raise ValueError("prompts is empty: give at least one prompt")
    caps = _row_caps(model, prompts, max_new_tokens)
    B = len(prompts)
    _check_seed(seed, B)
    total_len = max(len(p) + c for p, c in zip(prompts, caps))
    steps_max = max(caps)
    st = _state(model)
    with st.lock:
        # greedy: the whole step (decode, argmax, stop flags, positions) is one graph replay (GreedySteps)
        greedy = temperature == 0.0 and len(set(eos_ids)) <= GreedySteps.MAX_EOS
        rt = _ready_runtime(model, st, B, total_len, use_cuda_graph, skinny_gemm, greedy)
        st.epoch += 1  # this call now owns the cache rows: a paused stream() must re-prefill
        dev = rt.device
        gen = _seeds(seed, B, dev)
        eos = None if greedy else torch.as_tensor(list(eos_ids) or [-1], device=dev)
        # rows that reach the model's context before max_new_tokens stop at their own step (then stay put)
        ragged = min(caps) < steps_max
        last = torch.as_tensor([c - 1 for c in caps], device=dev) if ragged or greedy else None

        def sync():
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)

        sync()
        t0 = time.perf_counter()
        logits = rt.prefill(prompts)
        positions = torch.as_tensor([len(p) for p in prompts], device=dev)
        tok = sample(logits, temperature, top_k, top_p, gen)
        if greedy:
            loop = rt.greedy_steps(B)
            loop.start(tok, positions, last, sorted(set(eos_ids)))
            sync()
            t1 = time.perf_counter()
            steps = 1  # hist[:, 0] holds the prefill's token
            # the same stop rule as the loop below: the host looks at the flags once every SYNC_EVERY steps
            while steps < steps_max and not (steps % SYNC_EVERY == 0 and bool(loop.fin[:B].all())):
                loop.advance()
                steps += 1
            out = loop.hist[:B, :steps].clone()
            sync()
            return out, t1 - t0, time.perf_counter() - t1
        out = torch.zeros(B, steps_max, dtype=torch.long, device=dev)
        finished = torch.zeros(B, dtype=torch.bool, device=dev)
        sync()
        t1 = time.perf_counter()
        steps = 0
        for step in range(steps_max):
            out[:, step] = tok
            finished |= torch.isin(tok, eos)
            if ragged:
                finished |= last <= step
            steps = step + 1
            if step == steps_max - 1 or (steps % SYNC_EVERY == 0 and bool(finished.all())):
                break
            logits = rt.decode(tok, positions)
            if ragged:
                positions += ~finished  # a finished row stays put: it never writes past its own context
            else:
                positions += 1  # (every row's prompt + max_new_tokens fits, so no row can run past it)
            tok = torch.where(finished, tok, sample(logits, temperature, top_k, top_p, gen))
        sync()
        return out[:, :steps], t1 - t0, time.perf_counter() - t1


def generate(model, tokenizer, prompts, max_new_tokens: int = 128, *, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None, stop: list[str] | tuple = (),
             seed=None, use_cuda_graph: bool | None = None) -> list[GenerationResult]:
    """Complete each prompt (a string or a list of strings); one GenerationResult per prompt, in order.

    Greedy with temperature=0 (each prompt's tokens equal its unbatched greedy tokens). Stops a sequence at the
    model's EOS token(s), at the model's context length (finish_reason "length") or, after decoding, at the first
    stop string. `seed` (an int, or one per prompt) makes sampling reproducible and batch-invariant.
    """
    ids = _encode(tokenizer, prompts)
    eos_list = _eos_ids(model, tokenizer)
    caps = _row_caps(model, ids, max_new_tokens)
    out, t_prefill, t_decode = generate_ids(model, ids, max_new_tokens, temperature=temperature, top_k=top_k,
                                            top_p=top_p, eos_ids=eos_list, seed=seed, use_cuda_graph=use_cuda_graph)
    B, steps = out.shape
    decode_rate = B * (steps - 1) / t_decode if steps > 1 else 0.0
    eos_set = set(eos_list)
    results = []
    for b, seq in enumerate(out.tolist()):
        seq, reason = seq[: caps[b]], "length"
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


def stream(model, tokenizer, prompt: str, max_new_tokens: int = 128, *, temperature: float = 0.0,
           top_k: int | None = None, top_p: float | None = None, stop: list[str] | tuple = (),
           seed=None, use_cuda_graph: bool | None = None) -> Iterator[str]:
    """Yield the completion of one prompt as text pieces while it decodes (one host sync per token).

    The generator's return value (StopIteration.value) is the GenerationResult. Arguments are checked when
    stream() is called, before the first next(). The generator holds the model's lock only inside a step, never
    while suspended: closing or abandoning it leaves nothing behind, and other calls may run between its tokens
    (it then re-prefills its own text before its next token; see the module notes).
    """
    check_sampling(temperature, top_k, top_p)
    ids = _encode(tokenizer, prompt)
    if len(ids) != 1:
        raise ValueError("stream() takes one prompt; use generate() for a batch")
    [cap] = _row_caps(model, ids, max_new_tokens)
    eos_set = set(_eos_ids(model, tokenizer))
    _check_seed(seed, 1)  # now, not at the first next(); the generator is made on the runtime's device
    return _stream(model, tokenizer, ids[0], cap, temperature, top_k, top_p, stop, seed, use_cuda_graph, eos_set)


@torch.no_grad()
def _stream(model, tokenizer, prompt, cap, temperature, top_k, top_p, stop, seed, use_cuda_graph, eos_set):
    st = _state(model)
    total_len = len(prompt) + cap
    seq: list[int] = []
    shown, reason = "", "length"
    gen = tok = None
    mine = -1  # the epoch after this stream's last step; another call in between bumps st.epoch
    t_prefill, t_start = 0.0, time.perf_counter()
    for step in range(cap):
        with st.lock:
            rt = _ready_runtime(model, st, 1, total_len, use_cuda_graph, None)
            if gen is None:
                gen = _seeds(seed, 1, rt.device)
            if st.epoch != mine:  # first step, or someone else used the cache since our last step
                t0 = time.perf_counter()
                logits = rt.prefill([prompt + seq])
                st.epoch += 1
            else:
                logits = rt.decode(tok, torch.tensor([len(prompt) + len(seq) - 1], device=rt.device))
            tok = sample(logits, temperature, top_k, top_p, gen)
            t = int(tok.item())
            mine = st.epoch
            if step == 0:
                t_prefill = time.perf_counter() - t0
            rt = logits = None
        seq.append(t)
        if t in eos_set:
            reason = "eos"
            break
        text = tokenizer.decode(seq, skip_special_tokens=True)
        text, hit = _cut_at_stop(text, stop)
        if not text.endswith("\ufffd") and len(text) > len(shown):  # hold back half a multi-byte character
            yield text[len(shown):]
            shown = text
        if hit:
            reason = "stop"
            break
    t_decode = time.perf_counter() - t_start - t_prefill
    n = len(seq)
    return GenerationResult(text=shown, token_ids=seq, finish_reason=reason, prompt_tokens=len(prompt),
                            prefill_ms=1e3 * t_prefill, decode_tokens_per_s=(n - 1) / t_decode if n > 1 else 0.0)
