"""What one engine step reports and the engine interface the scheduler drives (no torch: the simulator uses these)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from smartspec.engine.params import SamplingParams
    from smartspec.engine.sequence import Sequence

# In steady state a draft ingests 1-2 tokens per request per step (the emitted token, and the last
# draft when all were accepted); anything beyond that is catch-up, which the cost model prices apart.
CATCHUP_FREE_TOKENS = 2


@dataclass
class StepStats:
    """What one engine step did and cost (the cost model and telemetry read these)."""

    step_id: int
    batch_size: int  # running requests verified this step (prefills not included)
    num_prefills: int
    ks: list[int]  # k actually proposed per running request
    num_proposed_per_pos: list[int]  # requests with a draft at position j
    num_accepted_per_pos: list[int]  # of those, accepted at position j
    num_emitted: int  # tokens emitted this step, prefill first tokens included
    context_tokens: int  # committed KV tokens of the verified requests before the step
    num_forwards: int
    real_tokens: int  # tokens the target scored
    padded_tokens: int  # B × W slots the target forward(s) computed
    draft_s: float
    verify_s: float
    overhead_s: float  # everything else, the k decision included
    num_invalid_proposals: int = 0
    prefill_tokens: int = 0
    draft_catchup_tokens: int = 0  # context the proposer ingested beyond 2 tokens per request (a prompt, a k=0 stretch)
    policy_version: int = 0  # set by the scheduler
    decision_s: float = 0.0  # part of overhead_s: time the k decision took
    prefill_padded_tokens: int = 0  # prefill rows × the longest prompt among them
    pending_catchup_tokens: int = 0  # Σ over the running requests of context their draft had not seen
    draft_deadline_s: float | None = None  # how long this step would wait for drafts
    # Drafts asked for that missed the deadline: the step verified at k = 0 after waiting draft_s.
    missed_ks: list[int] = field(default_factory=list)
    predicted_step_s: float | None = None  # what the policy's cost model expected (set by the scheduler)
    graph_forwards: int = 0  # of num_forwards, those that replayed a captured step (engine/graph_runner.py)
    calibration: bool = False  # a start-up profile step (engine/calibration.py): for cost-model fits only
    # Set by the scheduler: per workload class, [tested, accepted] counts per draft position
    # (tested = reached, i.e. every earlier draft passed), for the controller's acceptance priors.
    acceptance_by_class: dict[str, list[list[int]]] = field(default_factory=dict)

    @property
    def step_s(self) -> float:
        return self.draft_s + self.verify_s + self.overhead_s

    @property
    def num_draft_tokens(self) -> int:
        return sum(self.ks)

    @property
    def num_accepted_tokens(self) -> int:
        return sum(self.num_accepted_per_pos)


@dataclass
class StepOutput:
    emitted: dict[int, list[int]] = field(default_factory=dict)  # seq_id -> tokens emitted this step
    finished: list[int] = field(default_factory=list)
    verdicts: dict[int, tuple[int, int]] = field(default_factory=dict)  # seq_id -> (k proposed, accepted)
    stats: StepStats | None = None


@dataclass(frozen=True)
class StepPlan:
    """What a caller decides for one step: k per running request, and how long to wait for drafts."""

    ks: Mapping[int, int]
    draft_deadline_s: float | None = None  # None: the proposer's own limit


# How a caller picks k: a fixed map, or a function called after admission with the requests
# about to be verified and the requests about to be prefilled.
KChooser = Callable[["list[Sequence]", "list[Sequence]"], "Mapping[int, int] | StepPlan"]


def plan_of(ks: Mapping[int, int] | StepPlan | None) -> StepPlan:
    return ks if isinstance(ks, StepPlan) else StepPlan(ks or {})


@dataclass(frozen=True)
class AdmissionLimits:
    """When a waiting request may start (FIFO: the head of the queue blocks the rest)."""

    max_batch_size: int | None = None  # running requests at most (default: KV slots)
    max_prefill_tokens: int | None = None  # prompt tokens prefilled per step (one prompt always fits)


class StepEngine(Protocol):
    """What the Scheduler calls on an engine: the real SpecEngine, or the simulator's."""

    def add_request(self, seq_id: int, prompt_ids: list[int], params: SamplingParams) -> Sequence: ...

    def cancel(self, seq_id: int) -> None: ...

    def pop_finished(self, seq_id: int) -> Sequence: ...

    @property
    def has_unfinished(self) -> bool: ...

    def step(self, ks: Mapping[int, int] | StepPlan | KChooser | None = None) -> StepOutput: ...

    def draft_usable(self) -> bool:
        """Whether a step may ask for drafts now; False: k = 0 for everyone, nothing priced or waited for."""
        ...

    def draft_pending(self, seq: Sequence) -> int:
        """Catch-up tokens: context of `seq` its draft would have to ingest before drafting (beyond the
        1-2 tokens a step always feeds); 0 when there is no draft model."""
        ...

    @property
    def num_waiting(self) -> int: ...
