"""A draft LM head over a subset of the vocabulary: the same logits for the kept ids, -inf for the rest.

A draft's LM head is a large share of what it reads per token (the 0.5B Qwen draft: 151936 × 896 of
~0.5B parameters, 27 % of its bytes). Drafting only among the ids the target is likely to emit keeps
the draft's answers where they matter and reads a fraction of the head. Which tokens are drafted never
changes what the target emits (verification is exact for any q, and a sampled q is exactly the
distribution drafted from); an id left out costs acceptance when the target wants it. BPE ids come in
merge order, roughly by frequency, so the first N ids plus the end-of-sequence ids are the subset.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class SubsetHead:
    """`hidden @ W[ids].T` scattered into full-vocabulary logits (-inf elsewhere); called like the LM head."""

    def __init__(self, head: torch.nn.Module, ids: torch.Tensor) -> None:
        weight: torch.Tensor = head.weight.detach()  # type: ignore[operator]
        bias: torch.Tensor | None = getattr(head, "bias", None)
        self.vocab = int(weight.shape[0])
        self.ids = ids.to(weight.device)
        self.weight = weight[self.ids].contiguous()  # the slice read per token, one copy at start-up
        self.bias = None if bias is None else bias.detach()[self.ids].contiguous()

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        part = torch.nn.functional.linear(hidden, self.weight, self.bias)
        out = torch.full((*hidden.shape[:-1], self.vocab), float("-inf"), dtype=part.dtype, device=part.device)
        return out.index_copy_(-1, self.ids, part)


def head_ids(vocab: int, keep: int, always: Iterable[int] = ()) -> torch.Tensor:
    """The first `keep` ids plus `always` (e.g. end-of-sequence ids), sorted, within the vocabulary."""
    if keep < 1:
        raise ValueError(f"a draft head needs at least one token, got {keep}")
    extra = {int(t) for t in always if 0 <= int(t) < vocab}
    return torch.tensor(sorted(set(range(min(keep, vocab))) | extra), dtype=torch.long)
