"""Token sampling on the device, without host synchronisation: greedy, temperature, top-k, top-p."""

from __future__ import annotations

import torch


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """float32 logits with everything outside the top-k / top-p (nucleus) set at -inf."""
    logits = logits.float()
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens before it already hold top_p of the mass (the first always stays)
        drop = (probs.cumsum(-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


class RowSeeds:
    """Seeded noise that is batch-invariant: row b's draws come from its own seed only.

    With one seed per row, row b at step t gets the t-th (V,) draw of a generator seeded with seeds[b], whatever
    the other rows are, so a prompt samples the same tokens alone or inside any batch. Rows that share a seed
    share their noise (one draw, broadcast): identical prompts with the same seed give identical samples.
    """

    def __init__(self, seeds, device):
        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ValueError("RowSeeds needs at least one seed")
        self.rows = len(seeds)
        self.shared = len(set(seeds)) == 1
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in (seeds[:1] if self.shared else seeds)]

    def exponential(self, like: torch.Tensor) -> torch.Tensor:
        """Exp(1) noise shaped like `like` (rows, V)."""
        if like.shape[0] != self.rows:
            raise ValueError(f"RowSeeds holds {self.rows} seeds but the logits have {like.shape[0]} rows")
        V = like.shape[-1]
        draws = [torch.empty(V, dtype=like.dtype, device=like.device).exponential_(generator=g)
                 for g in self.generators]
        return draws[0].expand_as(like) if self.shared else torch.stack(draws)


def sample(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
           generator: torch.Generator | RowSeeds | None = None) -> torch.Tensor:
    """Next token per row of logits (B, V) -> (B,) int64. temperature 0 is greedy (argmax).

    generator: None (the global RNG), a torch.Generator (one (B, V) draw: a row's noise depends on the batch),
    or RowSeeds (per-row seeded noise: batch-invariant).
    """
    if temperature == 0.0:
        return logits.argmax(-1)
    probs = torch.softmax(filter_logits(logits / temperature, top_k, top_p), dim=-1)
    # Gumbel-max in its exponential form: argmax(p / E), E ~ Exp(1), is a sample from p with no host sync
    if isinstance(generator, RowSeeds):
        noise = generator.exponential(probs)
    else:
        noise = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / noise).argmax(-1)
