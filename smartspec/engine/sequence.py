"""A request inside the engine: its tokens, sampling state, lifecycle and counters."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from smartspec.engine.params import SamplingParams

if TYPE_CHECKING:  # torch only for sampling requests: greedy ones (and the simulator) never load it
    import torch


class SeqStatus(enum.Enum):
    WAITING = "waiting"  # admitted, not prefilled yet
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class SeqStats:
    """Per-request counters (vLLM meaning for draft/accepted tokens)."""

    steps: int = 0  # engine steps this request took part in, prefill included
    num_drafts: int = 0  # steps in which it was given k > 0 drafts
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    k_history: list[int] = field(default_factory=list)  # k verified in each step after the prefill
    arrival_s: float = field(default_factory=time.perf_counter)
    admitted_s: float | None = None  # prefill started (left the waiting queue)
    first_token_s: float | None = None
    finish_s: float | None = None

    @property
    def acceptance_rate(self) -> float | None:
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else None


@dataclass
class Sequence:
    """One generation stream. `tokens` is prompt + output; the engine is its only writer."""

    seq_id: int
    prompt_len: int
    tokens: list[int]
    params: SamplingParams
    status: SeqStatus = SeqStatus.WAITING
    finish_reason: str | None = None  # "stop" | "length" | "cancelled"
    stats: SeqStats = field(default_factory=SeqStats)
    generator: torch.Generator | None = None  # sampling requests only

    @classmethod
    def create(cls, seq_id: int, prompt_ids: list[int], params: SamplingParams) -> Sequence:
        gen = None
        if not params.greedy:
            from smartspec.engine.sampling import make_generator

            gen = make_generator(params.seed)
        return cls(seq_id=seq_id, prompt_len=len(prompt_ids), tokens=list(prompt_ids), params=params, generator=gen)

    @property
    def output_ids(self) -> list[int]:
        return self.tokens[self.prompt_len :]

    @property
    def num_output(self) -> int:
        return len(self.tokens) - self.prompt_len

    @property
    def remaining(self) -> int:
        return self.params.max_tokens - self.num_output

    @property
    def finished(self) -> bool:
        return self.status is SeqStatus.FINISHED
