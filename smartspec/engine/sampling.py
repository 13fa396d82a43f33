"""The logits → probabilities → token maths (SamplingParams itself lives in params.py, torch-free)."""

from __future__ import annotations

import torch

from smartspec.engine.params import SamplingParams as SamplingParams


def processed_probs(
    logits: torch.Tensor,  # [N, V]
    temperature: torch.Tensor,  # [N] > 0
    top_p: torch.Tensor,  # [N] in (0, 1]
    top_k: torch.Tensor,  # [N] long, 0 = off
    filtered: bool | None = None,
) -> torch.Tensor:  # [N, V] float32, rows sum to 1
    """The distribution a request samples from: softmax(logits / T), then top-k, then top-p.

    `filtered` says whether any row uses top-k / top-p; None reads it off the tensors (a host sync), so a
    caller that must not sync (a draft chain) says it from what it already knows on the host."""
    assert logits.dim() == 2 and temperature.shape == (logits.shape[0],)
    probs = torch.softmax(logits.float() / temperature[:, None].float(), dim=-1)
    vocab = probs.shape[-1]
    k = torch.where(top_k > 0, top_k.clamp(max=vocab), torch.full_like(top_k, vocab))
    if filtered is None:
        filtered = bool((k < vocab).any()) or bool((top_p < 1.0).any())
    if filtered:
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
