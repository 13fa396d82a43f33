"""Sampling parameters, their validation, and the logits → probabilities → token maths."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from smartspec.errors import InvalidRequest


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings (OpenAI meaning; temperature 0 is greedy)."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k truncation
    seed: int | None = None
    ignore_eos: bool = False
    stop_token_ids: tuple[int, ...] = field(default_factory=tuple)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def validate(self) -> None:
        """Raise InvalidRequest naming the offending field."""
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise InvalidRequest(f"max_tokens must be an integer >= 1, got {self.max_tokens!r}", param="max_tokens")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise InvalidRequest(f"temperature must be >= 0, got {self.temperature!r}", param="temperature")
        if not math.isfinite(self.top_p) or not 0.0 < self.top_p <= 1.0:
            raise InvalidRequest(f"top_p must be in (0, 1], got {self.top_p!r}", param="top_p")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise InvalidRequest(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}", param="top_k")
        if self.seed is not None and not (isinstance(self.seed, int) and 0 <= self.seed < 2**63):
            raise InvalidRequest(f"seed must be an integer in [0, 2**63), got {self.seed!r}", param="seed")


def processed_probs(
    logits: torch.Tensor,  # [N, V]
    temperature: torch.Tensor,  # [N] > 0
    top_p: torch.Tensor,  # [N] in (0, 1]
    top_k: torch.Tensor,  # [N] long, 0 = off
) -> torch.Tensor:  # [N, V] float32, rows sum to 1
    """The distribution a request samples from: softmax(logits / T), then top-k, then top-p."""
    assert logits.dim() == 2 and temperature.shape == (logits.shape[0],)
    probs = torch.softmax(logits.float() / temperature[:, None].float(), dim=-1)
    vocab = probs.shape[-1]
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
    if bool((k < vocab).any()) or bool((top_p < 1.0).any()):
        sorted_p, order = probs.sort(dim=-1, descending=True)
        rank = torch.arange(vocab, device=probs.device)[None, :]
        # Keep a token if it is within top-k and the mass strictly before it is < top_p,
        # which always keeps the most likely token.
        mass_before = sorted_p.cumsum(dim=-1) - sorted_p
        keep = (rank < k[:, None]) & (mass_before < top_p[:, None].float())
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    return probs


def sample_from(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: row n gets the first token whose cumulative mass exceeds u[n]·total.

    One uniform per row (drawn by the caller from the request's own generator) keeps sampling
    vectorised and reproducible per request. Zero-probability tokens can never be chosen.
    """
    assert probs.dim() == 2 and u.shape == (probs.shape[0],)
    cdf = probs.float().cumsum(dim=-1)
    target = (u.float() * cdf[:, -1]).unsqueeze(-1)
    idx = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    return idx.clamp(max=probs.shape[-1] - 1)


def make_generator(seed: int | None) -> torch.Generator:
    """A per-request CPU generator; a random seed when the request gave none."""
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g
