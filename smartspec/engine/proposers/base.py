"""The one Proposer interface the engine drives, and the proposal it gets back."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from smartspec.engine.sampling import SamplingParams


@dataclass(frozen=True)
class ProposeRequest:
    """Ask for up to `k` draft tokens continuing `token_ids` (prompt + every emitted token)."""

    seq_id: int
    token_ids: Sequence[int]
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


class DraftDeadlineMissed(Exception):
    """The proposer gave up waiting for drafts (the step runs at k = 0 and records the miss)."""


class Proposer(Protocol):
    """Stateful per sequence. The engine's token list is the truth: a proposer reconciles its own
    state (e.g. draft KV) against `token_ids` on every call, so a verdict never needs its own call."""

    name: str

    def propose(self, requests: list[ProposeRequest], deadline_s: float | None = None) -> dict[int, Proposal]:
        """Draft for all requests in one batched pass; sequences missing from the result get k = 0.
        A remote proposer waits at most `deadline_s` (None: its own limit) and then raises
        DraftDeadlineMissed; an in-process one may ignore it."""
        ...

    def unseen(self, seq_id: int, token_ids: Sequence[int]) -> int:
        """Tokens of `token_ids` the proposer has not ingested for this sequence (all of them if it
        does not know it); 0 for a proposer with no per-sequence state to catch up."""
        ...

    def release(self, seq_id: int) -> None:
        """Forget a finished or cancelled sequence (no-op if unknown)."""
        ...
