"""The two verification rules, on plain tensors: greedy prefix matching and exact rejection sampling.

Vocabulary (vLLM's rejection sampler): a draft token is *accepted* or rejected; at the first
rejection the target emits a *recovered* token sampled from the residual max(0, p − q); when all
k drafts are accepted it emits a *bonus* token sampled from p at position k. Either way a step
emits `num_accepted + 1` tokens. With p the target's (processed) distribution and q the exact
distribution each draft token was sampled from, every emitted token is distributed exactly as if
sampled from the target alone — for any q, including one-hot q of model-free proposers.

All functions are pure: randomness comes in as uniforms the caller drew from each request's own
generator. Rows are padded to K drafts; `num_draft[b]` says how many of row b's are real.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from smartspec.engine.sampling import sample_from


@dataclass
class VerifyResult:
    """Per row: how many drafts were accepted and the tokens emitted (accepted + 1)."""

    num_accepted: torch.Tensor  # [B] long
    output_token_ids: torch.Tensor  # [B, K+1] long; row b's first num_accepted[b]+1 entries are real, rest -1

    def emitted(self, row: int) -> list[int]:
        n = int(self.num_accepted[row]) + 1
        return [int(t) for t in self.output_token_ids[row, :n]]


def _accepted_prefix(accept: torch.Tensor, num_draft: torch.Tensor) -> torch.Tensor:
    # accept: [B, K] bool; count leading accepted drafts among the real ones.
    k = accept.shape[1]
    real = torch.arange(k, device=accept.device)[None, :] < num_draft[:, None]
    return (accept & real).long().cumprod(dim=1).sum(dim=1)


def _assemble(draft_token_ids: torch.Tensor, num_accepted: torch.Tensor, final: torch.Tensor) -> VerifyResult:
    batch, k = draft_token_ids.shape
    out = torch.full((batch, k + 1), -1, dtype=torch.long, device=draft_token_ids.device)
    pos = torch.arange(k, device=draft_token_ids.device)[None, :]
    out[:, :k] = torch.where(pos < num_accepted[:, None], draft_token_ids, out[:, :k])
    out.scatter_(1, num_accepted[:, None], final[:, None])
    return VerifyResult(num_accepted=num_accepted, output_token_ids=out)


def greedy_verify(
    target_token_ids: torch.Tensor,  # [B, K+1] target argmax at each scored position
    draft_token_ids: torch.Tensor,  # [B, K] (padding ignored)
    num_draft: torch.Tensor,  # [B] long
) -> VerifyResult:
    """Longest prefix of drafts equal to the target's argmax, then the target's next token."""
    assert target_token_ids.shape[1] == draft_token_ids.shape[1] + 1
    num_accepted = _accepted_prefix(draft_token_ids == target_token_ids[:, :-1], num_draft)
    final = target_token_ids.gather(1, num_accepted[:, None]).squeeze(1)
    return _assemble(draft_token_ids, num_accepted, final)


def rejection_sample(
    target_probs: torch.Tensor,  # [B, K+1, V] p at each scored position
    draft_token_ids: torch.Tensor,  # [B, K]
    draft_probs: torch.Tensor | None,  # [B, K, V] q the drafts were sampled from; None = one-hot
    num_draft: torch.Tensor,  # [B] long
    accept_u: torch.Tensor,  # [B, K] uniforms in [0, 1)
    sample_u: torch.Tensor,  # [B] uniforms in [0, 1) for the recovered/bonus token
) -> VerifyResult:
    """Standard speculative sampling (Leviathan et al. 2023; Chen et al. 2023), batched and ragged."""
    batch, k_max = draft_token_ids.shape
    assert target_probs.shape[:2] == (batch, k_max + 1)
    p = target_probs.float()
    if k_max:
        idx = draft_token_ids.clamp(min=0)[..., None]  # [B, K, 1]
        p_x = p[:, :k_max].gather(2, idx).squeeze(2)
        if draft_probs is None:
            q_x = torch.ones_like(p_x)
        else:
            assert draft_probs.shape[:2] == (batch, k_max)
            q_x = draft_probs.float().gather(2, idx).squeeze(2)
        # Accept with probability min(1, p/q). A draft claiming q(x) = 0 did not sample x from q,
        # so it is rejected rather than trusted.
        accept = (q_x > 0) & (accept_u.float() * q_x < p_x)
        num_accepted = _accepted_prefix(accept, num_draft)
    else:
        num_accepted = torch.zeros(batch, dtype=torch.long, device=p.device)
    rows = torch.arange(batch, device=p.device)
    final_dist = p[rows, num_accepted]  # [B, V] p at the first rejected (or bonus) position
    rejected = num_accepted < num_draft
    if bool(rejected.any()):
        at = num_accepted.clamp(max=max(k_max - 1, 0))
        if draft_probs is None:
            q_f = torch.zeros_like(final_dist)
            q_f[rows, draft_token_ids[rows, at].clamp(min=0)] = 1.0
        else:
            q_f = draft_probs.float()[rows, at]
        residual = (final_dist - q_f).clamp(min=0)
        # p == q leaves no residual mass; rejection then had probability 0 in exact arithmetic,
        # so falling back to p is the limit of the exact rule.
        usable = residual.sum(dim=1, keepdim=True) > 0
        recovered = torch.where(usable, residual, final_dist)
        final_dist = torch.where(rejected[:, None], recovered, final_dist)
    final = sample_from(final_dist, sample_u)
    return _assemble(draft_token_ids, num_accepted, final)
