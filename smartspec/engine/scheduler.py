"""Continuous-batching scheduler: the step loop prepare → choose k → propose → verify → commit → emit.

Requests are admitted FIFO under the engine's admission limits; every step the policy picks k
for every running request from its acceptance estimates and the cost model, the engine runs the
step, and the outcome feeds back: per-request acceptance, step records to the sinks, and every
`refit.every_steps` steps a least-squares refit of the cost model from this engine's own steps
(smartspec/engine/refit.py; on a worker thread when `refit.background`).
Nothing here reads a clock for decisions, so a simulator can drive the same code in virtual time.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Generic, Literal

from typing_extensions import TypeVar

from smartspec.engine.params import SamplingParams
from smartspec.engine.refit import BackgroundRefit, RefitConfig, RefitOutcome, judge_refit
from smartspec.engine.sequence import Sequence
from smartspec.engine.sinks import StepSink
from smartspec.engine.steps import StepEngine, StepOutput, StepPlan, StepStats
from smartspec.errors import InvalidRequest
from smartspec.policy.acceptance import DEFAULT_CLASS
from smartspec.policy.cost_fit import StepSample
from smartspec.policy.cost_model import CostModel, StepShape
from smartspec.policy.in_force import PolicyInForce
from smartspec.policy.limits import cap_k, within
from smartspec.policy.policy import BatchRequest, Decision, SpeculationPolicy

if TYPE_CHECKING:
    from smartspec.engine.engine import SpecEngine

log = logging.getLogger(__name__)

# The engine the scheduler drives: the real SpecEngine unless said otherwise (the simulator's).
E = TypeVar("E", bound=StepEngine, default="SpecEngine")


@dataclass(frozen=True)
class RequestSpec:
    """A request's own say in speculation (the API's `"speculation": {"mode", "max_k"}`)."""

    mode: Literal["auto", "off"] = "auto"
    max_k: int | None = None
    klass: str = DEFAULT_CLASS  # workload class for acceptance priors

    def validate(self) -> None:
        if self.mode not in ("auto", "off"):
            raise InvalidRequest(f"speculation.mode must be 'auto' or 'off', got {self.mode!r}", param="speculation")
        if self.max_k is not None and not within(self.max_k):
            raise InvalidRequest(f"speculation.max_k must be an integer >= 0, got {self.max_k!r}", param="speculation")


@dataclass(frozen=True)
class DeadlineConfig:
    """How long a step waits for drafts: `factor` × the predicted draft time, stretched by how much slower
    than predicted the recent drafts were, within [floor_s, max_s].
    A constant 5 s turned every slow draft step into a 5 s stall (10 s of 26 s lost at saturation)."""

    factor: float = 2.0
    floor_s: float = 0.25
    max_s: float = 5.0
    # The slowest actual/predicted draft time among this many recent timely draft steps stretches the
    # deadline. A deadline only pays against a draft that will not answer; against a slow one a miss
    # wastes the wait and the drafts. Seen on the real pair at batch 1: a model pricing k = 7 drafts at
    # 0.25 s (actual 0.7-0.9 s) missed every other step for 25 steps (a miss doubled the next deadline,
    # the timely step after it reset it), and the machine's noise put 1-3 % of drafts past 2x.
    recent: int = 32

    def __post_init__(self) -> None:
        if not (self.factor >= 1.0 and 0 < self.floor_s <= self.max_s and self.recent >= 0):
            raise ValueError(f"need factor >= 1, 0 < floor_s <= max_s and recent >= 0, got {self}")

    def for_draft(self, predicted_draft_s: float, misses_in_a_row: int = 0, slowness: float = 1.0) -> float:
        """Doubled after each consecutive miss: a draft slower than the model thinks (a cold start, a
        busy neighbour) would otherwise miss every step, its late work making the next miss too."""
        base = max(self.floor_s, self.factor * predicted_draft_s * max(slowness, 1.0))
        return min(self.max_s, base * 2.0 ** min(misses_in_a_row, 16))


def sample_of(stats: StepStats) -> StepSample:
    shape = StepShape(stats.batch_size, stats.context_tokens, max(stats.ks, default=0), sum(stats.ks),
                      stats.prefill_tokens, stats.draft_catchup_tokens, stats.prefill_padded_tokens)
    draft_shape = None
    if stats.missed_ks:  # waited draft_s for drafts of this shape, then verified at k = 0
        draft_shape = replace(shape, max_k=max(stats.missed_ks), draft_tokens=sum(stats.missed_ks))
    return StepSample(shape, stats.draft_s, stats.verify_s, stats.overhead_s, draft_shape)


@dataclass
class Scheduler(Generic[E]):
    engine: E
    policy: SpeculationPolicy
    sinks: Collection[StepSink] = ()
    refit: RefitConfig = field(default_factory=RefitConfig)
    clock: Callable[[], float] = time.time
    deadline: DeadlineConfig = field(default_factory=DeadlineConfig)

    def __post_init__(self) -> None:
        self._specs: dict[int, RequestSpec] = {}
        self._samples: deque[StepSample] = deque(maxlen=self.refit.window)
        self._spec_samples: deque[StepSample] = deque(maxlen=self.refit.spec_window)
        self._misses_in_a_row = 0
        self._draft_slowness: deque[float] = deque(maxlen=self.deadline.recent)  # actual/predicted draft time
        self._last: Decision | None = None
        self.steps = 0
        self._last_fit_step: int | None = None
        self.sink_errors = 0
        self.fits: list[float] = []  # R² of every adopted fit
        self._background = BackgroundRefit() if self.refit.background else None
        # What the policy was built with is the local default; `apply_policy` is the only way to change it.
        self._in_force = PolicyInForce(self.policy.config, self.policy.cost_model)

    # -- requests ------------------------------------------------------------------------
    def submit(self, seq_id: int, prompt_ids: list[int], params: SamplingParams,
               spec: RequestSpec | None = None) -> Sequence:
        spec = spec or RequestSpec()
        spec.validate()
        seq = self.engine.add_request(seq_id, prompt_ids, params)
        self._specs[seq_id] = spec
        self.policy.acceptance.add(seq_id, spec.klass)
        return seq

    def cancel(self, seq_id: int) -> None:
        self.engine.cancel(seq_id)
        self._forget(seq_id)

    def pop_finished(self, seq_id: int) -> Sequence:
        return self.engine.pop_finished(seq_id)

    @property
    def has_unfinished(self) -> bool:
        return self.engine.has_unfinished

    # -- the loop ------------------------------------------------------------------------
    def step(self) -> StepOutput:
        self._last = None
        out = self.engine.step(self._choose)
        self.steps += 1
        stats = out.stats
        assert stats is not None
        stats.policy_version = self._in_force.version
        if self._last is not None:
            stats.decision_s = self._last.decision_s
            stats.predicted_step_s = self._last.predicted_step_s
        stats.acceptance_by_class = self.policy.observe(out.verdicts)
        for sid in out.finished:
            self._forget(sid)
        self._record(stats)
        if stats.missed_ks:
            self._misses_in_a_row += 1
        elif any(stats.ks):
            self._misses_in_a_row = 0
            if self._last is not None and self._last.predicted_draft_s > 0 and self._draft_slowness.maxlen:
                self._draft_slowness.append(stats.draft_s / self._last.predicted_draft_s)
        if stats.batch_size or stats.prefill_tokens:  # a lone prefill teaches the prefill terms
            self._keep(sample_of(stats))
        if self._background is not None:
            self._settle(self._background.collect())
        due = self._last_fit_step is None or self.steps - self._last_fit_step >= self.refit.every_steps
        if self.refit.enabled and self._in_force.refit and due and len(self._samples) >= self.refit.min_samples:
            self._refit()  # first as soon as there are enough samples, then every `every_steps`
        return out

    def wait_for_refit(self, timeout_s: float) -> bool | None:
        """Wait for a background refit under way and settle it now: whether it was adopted (None if none ran)."""
        if self._background is None or not self._background.busy:
            return None
        return self._settle(self._background.collect(wait_s=timeout_s))

    @property
    def last_decision(self) -> Decision | None:
        return self._last

    @property
    def draft_slowness(self) -> float:
        """How much longer than predicted the slowest of the recent timely drafts took (at least 1)."""
        return max(self._draft_slowness, default=1.0)

    # -- the policy in force -------------------------------------------------------------
    @property
    def in_force(self) -> PolicyInForce:
        """The policy in force now (its cost model is the latest adopted refit while refitting is on)."""
        return self._in_force

    def apply_policy(self, in_force: PolicyInForce) -> None:
        """Put `in_force` in force as a whole, between two steps: a published policy or the local default."""
        pol, tracker = self.policy, self.policy.acceptance
        pol.config, pol.cost_model = in_force.config, in_force.cost_model
        # A class the new policy has no prior for goes back to the configured one (e.g. on expiry).
        for klass in self._in_force.priors.keys() - in_force.priors.keys():
            tracker.set_prior(tracker.config.prior, klass)
        for klass, rates in in_force.priors.items():
            tracker.set_prior(rates, klass)
        self._in_force = in_force

    def _use_cost_model(self, model: CostModel) -> None:
        self._in_force = replace(self._in_force, cost_model=model)
        self.policy.cost_model = model

    def _choose(self, running: list[Sequence], prefill: list[Sequence]) -> StepPlan:
        batch = []
        drafts = self.engine.draft_usable()  # no draft to be had: every cap is 0, so nothing waits for one
        for seq in running:
            spec = self._specs.get(seq.seq_id, RequestSpec())
            if not self._in_force.allow_request_override:
                spec = RequestSpec(klass=spec.klass)
            # Never draft past max_tokens: k drafts emit up to k + 1 tokens.
            cap = 0 if spec.mode == "off" or not drafts else cap_k(self.policy.config.max_k, seq.remaining - 1,
                                                                    spec.max_k)
            pending = self.engine.draft_pending(seq) if cap > 0 else 0
            batch.append(BatchRequest(seq.seq_id, cap, len(seq.tokens) - 1, pending, seq.remaining))
        decision = self.policy.choose(
            batch, prefill_tokens=sum(s.prompt_len for s in prefill),
            prefill_padded_tokens=len(prefill) * max((s.prompt_len for s in prefill), default=0),
            waiting=self.engine.num_waiting)
        self._last = decision
        deadline = (self.deadline.for_draft(decision.predicted_draft_s, self._misses_in_a_row, self.draft_slowness)
                    if any(decision.ks.values()) else None)
        return StepPlan(decision.ks, deadline)

    def seed_samples(self, steps: Iterable[StepStats]) -> bool:
        """Steps run outside the loop (start-up calibration): to the sinks, into the refit window, then a
        refit now. Returns whether the fit was adopted."""
        for stats in steps:
            stats.policy_version = self._in_force.version
            self._record(stats)
            if stats.batch_size or stats.prefill_tokens:
                self._keep(sample_of(stats))
        return self.refit.enabled and self._in_force.refit and bool(self._samples) and self._refit(now=True)

    def _record(self, stats: StepStats) -> None:
        for sink in self.sinks:
            try:
                sink.record(stats)
            except Exception:  # a sink must never fail a step
                self.sink_errors += 1
                log.exception("step sink %s failed; record dropped", type(sink).__name__)

    def _keep(self, sample: StepSample) -> None:
        self._samples.append(sample)
        if sample.draft_shape is not None or sample.shape.max_k > 0:
            self._spec_samples.append(sample)

    def _refit(self, now: bool = False) -> bool:
        """Refit from the window: at once (returns whether adopted), or started on the worker thread when
        `refit.background` (returns False; `_settle` adopts it between later steps). One fit at a time."""
        recent = {id(s) for s in self._samples}
        samples = [s for s in self._spec_samples if id(s) not in recent] + list(self._samples)
        if self._background is not None and not now:
            if not self._background.busy:
                self._last_fit_step = self.steps
                self._background.start(samples, self.policy.cost_model, self.policy.config.max_k, self.refit.min_r2)
            return False
        self._last_fit_step = self.steps
        return self._settle(judge_refit(samples, self.policy.cost_model, self.policy.config.max_k,
                                        self.refit.min_r2))

    def _settle(self, outcome: RefitOutcome | None) -> bool:
        """Adopt `outcome` if it says so and the model it was judged against is still the one in force (a fit
        that finished after a new policy or its refit switch arrived describes a model no longer used)."""
        if outcome is None:
            return False
        if not (self._in_force.refit and outcome.prior is self.policy.cost_model):
            log.info("cost-model refit on %d steps dropped: the policy in force changed while it ran", outcome.samples)
            return False
        if not outcome.adopt:
            log.info("cost-model refit on %d steps not adopted: %s", outcome.samples, outcome.reason)
            return False
        fitted = outcome.fitted
        self._use_cost_model(replace(fitted, name="online"))
        self.fits.append(float("nan") if fitted.r2 is None else fitted.r2)
        log.info("cost model refitted: R²=%s on %d steps", fitted.r2, fitted.samples)
        return True

    def _forget(self, seq_id: int) -> None:
        self._specs.pop(seq_id, None)
        self.policy.forget(seq_id)
