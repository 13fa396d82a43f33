"""The one Proposer interface the engine drives, and the proposal it gets back."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import Protocol

import torch

from smartspec.engine.sampling import SamplingParams


@dataclass(frozen=True)
class ProposeRequest:
    """Ask for up to `k` draft tokens continuing `token_ids` (prompt + every emitted token)."""

    seq_id: int
    token_ids: Seq[int]
    k: int
    params: SamplingParams


@dataclass
class Proposal:
    """Draft tokens (at most k; fewer is fine) and the distribution q each was sampled from."""

    draft_token_ids: list[int]
    draft_probs: torch.Tensor | None = None  # [len(draft_token_ids), V]; None = one-hot on the tokens
    fed_tokens: int = 0  # context tokens the proposer had to ingest for this request first (cost model)

    @property
    def k(self) -> int:
        return len(self.draft_token_ids)


class Proposer(Protocol):
    """Stateful per sequence. The engine's token list is the truth: a proposer reconciles its own
    state (e.g. draft KV) against `token_ids` on every call, so a verdict never needs its own call."""

    name: str

    def propose(self, requests: list[ProposeRequest]) -> dict[int, Proposal]:
        """Draft for all requests in one batched pass; sequences missing from the result get k = 0."""
        ...

    def release(self, seq_id: int) -> None:
        """Forget a finished or cancelled sequence (no-op if unknown)."""
        ...
