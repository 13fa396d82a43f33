"""Verify a step: turn one target forward's logits into verdicts, batching the ragged rows for verify_rules.

Greedy rows only need an argmax per scored position; sampling rows need the processed target
distribution p and the proposer's q, padded to the longest k among them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from smartspec.engine.proposers.base import Proposal
from smartspec.engine.sampling import processed_probs, sample_from
from smartspec.engine.sequence import Sequence
from smartspec.engine.verify_rules import greedy_verify, rejection_sample


@dataclass
class ScoredRow:
    """One running sequence's share of the verify forward."""

    seq: Sequence
    proposal: Proposal | None
    logits: torch.Tensor  # [k + 1, V] target logits at [last token, d1 … dk]
    argmax: torch.Tensor | None = None  # [k + 1] argmax of `logits`, when computed for the whole batch

    @property
    def k(self) -> int:
        return 0 if self.proposal is None else self.proposal.k


def _params_tensors(seqs: list[Sequence], repeats: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    temps, top_ps, top_ks = [], [], []
    for seq, n in zip(seqs, repeats, strict=True):
        temps += [seq.params.temperature] * n
        top_ps += [seq.params.top_p] * n
        top_ks += [seq.params.top_k] * n
    return torch.tensor(temps), torch.tensor(top_ps), torch.tensor(top_ks, dtype=torch.long)


def verify_rows(rows: list[ScoredRow]) -> list[tuple[int, list[int]]]:
    """Verdict per row, in order: (num_accepted, emitted tokens = accepted drafts + 1)."""
    verdicts: list[tuple[int, list[int]] | None] = [None] * len(rows)
    greedy = [i for i, r in enumerate(rows) if r.seq.params.greedy]
    sampled = [i for i, r in enumerate(rows) if not r.seq.params.greedy]
    if greedy:
        # Whole-batch tensors, one copy from the device and one back to Python lists: per row, each slice
        # assigned into a host tensor was its own device sync, and each verdict read its tokens one by one.
        ks = [rows[i].k for i in greedy]
        k_max = max(ks)
        parts = [r.argmax if r.argmax is not None else r.logits.argmax(dim=-1) for r in (rows[i] for i in greedy)]
        argmax = (parts[0] if len(parts) == 1 else torch.cat(parts)).cpu()
        num_draft = torch.tensor(ks, dtype=torch.long)
        target_ids = torch.full((len(greedy), k_max + 1), -1, dtype=torch.long)
        target_ids[torch.arange(k_max + 1)[None, :] <= num_draft[:, None]] = argmax  # row-major: the cat's order
        draft_ids = torch.tensor([[*_drafts(rows[i]), *[-1] * (k_max - k)] for i, k in zip(greedy, ks, strict=True)],
                                 dtype=torch.long).reshape(len(greedy), k_max)
        result = greedy_verify(target_ids, draft_ids, num_draft)
        accepted, emitted = result.num_accepted.tolist(), result.output_token_ids.tolist()
        for b, i in enumerate(greedy):
            verdicts[i] = (accepted[b], emitted[b][: accepted[b] + 1])
    if sampled:
        verdicts_s = _verify_sampled([rows[i] for i in sampled])
        for i, v in zip(sampled, verdicts_s, strict=True):
            verdicts[i] = v
    return [v for v in verdicts if v is not None]


def _drafts(row: ScoredRow) -> list[int]:
    return [] if row.proposal is None else list(row.proposal.draft_token_ids)


def _verify_sampled(rows: list[ScoredRow]) -> list[tuple[int, list[int]]]:
    batch = len(rows)
    k_max = max(r.k for r in rows)
    vocab = rows[0].logits.shape[-1]
    flat = torch.cat([r.logits for r in rows])  # [sum(k+1), V]
    temps, top_ps, top_ks = _params_tensors([r.seq for r in rows], [r.k + 1 for r in rows])
    p_flat = processed_probs(flat, temps, top_ps, top_ks)
    target_probs = torch.zeros((batch, k_max + 1, vocab))
    draft_ids = torch.full((batch, k_max), -1, dtype=torch.long)
    with_q = any(r.proposal is not None and r.proposal.draft_probs is not None for r in rows)
    draft_probs = torch.zeros((batch, k_max, vocab)) if with_q else None
    accept_u = torch.zeros((batch, k_max))
    sample_u = torch.zeros(batch)
    start = 0
    for b, r in enumerate(rows):
        target_probs[b, : r.k + 1] = p_flat[start : start + r.k + 1]
        start += r.k + 1
        # Exactly k + 1 uniforms per row per step from the request's own generator.
        u = torch.rand(r.k + 1, generator=r.seq.generator)
        accept_u[b, : r.k] = u[: r.k]
        sample_u[b] = u[r.k]
        if r.proposal is not None and r.k:
            ids = torch.tensor(r.proposal.draft_token_ids)
            draft_ids[b, : r.k] = ids
            if draft_probs is not None:
                if r.proposal.draft_probs is not None:
                    draft_probs[b, : r.k] = r.proposal.draft_probs.float()
                else:  # a one-hot proposer in a batch where others sent q
                    draft_probs[b, torch.arange(r.k), ids] = 1.0
    num_draft = torch.tensor([r.k for r in rows], dtype=torch.long)
    result = rejection_sample(target_probs, draft_ids, draft_probs, num_draft, accept_u, sample_u)
    return [(int(result.num_accepted[b]), result.emitted(b)) for b in range(batch)]


def first_tokens(seqs: list[Sequence], logits: torch.Tensor) -> list[int]:
    """The token each freshly prefilled sequence emits (logits: [len(seqs), V])."""
    out = [0] * len(seqs)
    sampled = [i for i, s in enumerate(seqs) if not s.params.greedy]
    for i, s in enumerate(seqs):
        if s.params.greedy:
            out[i] = int(logits[i].argmax())
    if sampled:
        temps, top_ps, top_ks = _params_tensors([seqs[i] for i in sampled], [1] * len(sampled))
        probs = processed_probs(logits[sampled], temps, top_ps, top_ks)
        u = torch.cat([torch.rand(1, generator=seqs[i].generator) for i in sampled])
        for n, tok in enumerate(sample_from(probs, u).tolist()):
            out[sampled[n]] = int(tok)
    return out
