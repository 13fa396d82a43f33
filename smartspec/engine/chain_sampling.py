"""Sampling inside a draft chain: each draft drawn on the device, q kept in a persistent buffer, no host sync.

A sampled draft chain (GraphRunner.chain) must give the tokens and q the step-by-step proposer gives
(proposers/draft_model.py) without reading anything back per token. Everything that varies per row
(temperature, top-p, top-k, greedy or not, and the uniforms the row's own generator drew ahead of the
chain) is copied into static buffers once per chain; the draft index `j` is a device counter, so the
same call works step after step, eagerly, compiled (`fullgraph=True`) or inside a captured graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from smartspec.engine.sampling import processed_probs, sample_from


@dataclass(frozen=True)
class ChainSampling:
    """What a sampled chain needs per row (rows in the chain's row order).

    `uniforms[r, j]` is the draw for row r's draft j: the row's generator's next draws for its own k drafts
    (what the step-by-step path would draw), anything past them (those drafts are thrown away)."""

    greedy: torch.Tensor  # [n] bool
    temperature: torch.Tensor  # [n] float; ignored for greedy rows
    top_p: torch.Tensor  # [n] float
    top_k: torch.Tensor  # [n] long, 0 = off
    uniforms: torch.Tensor  # [n, steps] float
    target_vocab: int  # ids at or past it are never drafted
    q_top_k: int | None = None  # q truncated to its most likely ids, as the remote draft service sends it

    @property
    def filtered(self) -> bool:
        """Whether any sampled row uses top-k or top-p (host-side, so the device path has no branch on data)."""
        sampled = ~self.greedy
        return bool(((self.top_k > 0) & sampled).any() or ((self.top_p < 1.0) & sampled).any())


class ChainSampler:
    """Static buffers of one chain shape `(batch, steps, vocab)`; call it with each draft's logits `[batch, V]`."""

    def __init__(self, batch: int, steps: int, draft_vocab: int, target_vocab: int, device: torch.device) -> None:
        self.shape = (batch, steps, draft_vocab, target_vocab)
        self.draft_vocab, self.target_vocab = draft_vocab, target_vocab
        self.greedy = torch.ones(batch, dtype=torch.bool, device=device)
        self.temperature = torch.ones(batch, device=device)
        self.top_p = torch.ones(batch, device=device)
        self.top_k = torch.zeros(batch, dtype=torch.long, device=device)
        self.uniforms = torch.full((batch, steps), 0.5, device=device)
        self.j = torch.zeros(1, dtype=torch.long, device=device)
        # The persistent q of every draft, as wide as the step-by-step path's (the wider of the two vocabularies).
        self.q = torch.zeros((batch, steps, max(draft_vocab, target_vocab)), device=device)
        self.filtered = False
        self.q_top_k: int | None = None

    def load(self, s: ChainSampling) -> None:
        """Copy one chain's rows in (pad rows stay greedy) and rewind the draft counter."""
        n, steps = s.uniforms.shape
        self.greedy.fill_(True)
        self.greedy[:n].copy_(s.greedy)
        self.temperature.fill_(1.0)
        self.temperature[:n].copy_(torch.where(s.greedy, 1.0, s.temperature.float()))
        self.top_p.fill_(1.0)
        self.top_p[:n].copy_(s.top_p)
        self.top_k.zero_()
        self.top_k[:n].copy_(s.top_k)
        self.uniforms.fill_(0.5)
        self.uniforms[:n, :steps].copy_(s.uniforms)
        self.j.zero_()
        self.filtered, self.q_top_k = s.filtered, s.q_top_k

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Draft `j` of every row from its logits `[batch, draft_vocab]`: the token, q written to `self.q[:, j]`."""
        logits = logits.float()
        if self.draft_vocab > self.target_vocab:  # ids the target cannot score are never drafted
            logits[:, self.target_vocab :] = float("-inf")
        q = processed_probs(logits, self.temperature, self.top_p, self.top_k, filtered=self.filtered)
        if self.q_top_k is not None and self.q_top_k < q.shape[-1]:
            top = torch.topk(q, self.q_top_k, dim=-1)
            q = torch.zeros_like(q).scatter_(-1, top.indices, top.values)
            q = q / q.sum(dim=-1, keepdim=True)
        if self.draft_vocab < self.target_vocab:
            q = torch.nn.functional.pad(q, (0, self.target_vocab - self.draft_vocab))
        u = self.uniforms.index_select(1, self.j).squeeze(1)
        token = torch.where(self.greedy, logits.argmax(dim=-1), sample_from(q, u))
        self.q.index_copy_(1, self.j, q[:, None])
        self.j.add_(1)
        return token
