"""A draft LM head over a subset of the vocabulary: the same logits for the kept ids, -inf for the rest.

A draft's LM head is a large share of what it reads per token (the 0.5B Qwen draft: 151936 × 896 of
~0.5B parameters, 27 % of its bytes). Drafting only among the ids the target is likely to emit keeps
the draft's answers where they matter and reads a fraction of the head. Which tokens are drafted never
changes what the target emits (verification is exact for any q, and a sampled q is exactly the
distribution drafted from); an id left out costs acceptance when the target wants it. BPE ids come in
merge order, roughly by frequency, so the first N ids plus the end-of-sequence ids are the subset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from smartspec.engine.quant import Int8Linear


class SubsetHead:
    """`hidden @ W[ids].T` scattered into full-vocabulary logits (-inf elsewhere); called like the LM head."""

    def __init__(self, head: torch.nn.Module, ids: torch.Tensor) -> None:
        weight: torch.Tensor = head.weight.detach()  # type: ignore[operator]
        self.vocab = int(weight.shape[0])
        self.ids = ids.to(weight.device)
        # The slice read per token, one copy at start-up (an int8 head keeps its rows' scales: quant.py).
        if isinstance(head, Int8Linear):
            self.part: Callable[[torch.Tensor], torch.Tensor] = head.rows(self.ids)
        else:
            bias: torch.Tensor | None = getattr(head, "bias", None)
            rows = torch.nn.Linear(weight.shape[1], len(self.ids), bias=bias is not None, device=weight.device,
                                   dtype=weight.dtype).requires_grad_(False)
            rows.weight.copy_(weight[self.ids])
            if bias is not None:
                rows.bias.copy_(bias.detach()[self.ids])
            self.part = rows

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        part = self.part(hidden)
        out = torch.full((*hidden.shape[:-1], self.vocab), float("-inf"), dtype=part.dtype, device=part.device)
        return out.index_copy_(-1, self.ids, part)


def head_ids(vocab: int, keep: int, always: Iterable[int] = ()) -> torch.Tensor:
    """The first `keep` ids plus `always` (e.g. end-of-sequence ids), sorted, within the vocabulary."""
    if keep < 1:
        raise ValueError(f"a draft head needs at least one token, got {keep}")
    extra = {int(t) for t in always if 0 <= int(t) < vocab}
    return torch.tensor(sorted(set(range(min(keep, vocab))) | extra), dtype=torch.long)
