"""Calibrate the simulator from a real run: a CostModel and an acceptance profile fitted to recorded step records."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from smartspec.errors import InvalidRequest
from smartspec.policy.cost_fit import StepSample, fit_cost_model, predicted_totals, r_squared
from smartspec.policy.cost_model import CostModel, default_cost_model
from smartspec.sim.acceptance import AcceptanceProfile
from smartspec.telemetry.records import BadRecord, StepRecord, decode, read_jsonl


def read_records(path: str | Path) -> list[StepRecord]:
    """A JSON-lines file of step records (`generate --steps-jsonl`, a sweep's steps-*.jsonl, an XRANGE dump)."""
    try:
        return read_jsonl(path)
    except (OSError, BadRecord) as exc:
        raise InvalidRequest(f"cannot read step records from {path}: {exc}", param="records") from None


def _decoded(rec: StepRecord | Mapping[str, Any]) -> StepRecord:
    if isinstance(rec, StepRecord):
        return rec
    try:
        return decode({str(k): str(v) for k, v in rec.items()})
    except BadRecord as exc:
        raise InvalidRequest(f"malformed step record: {exc}", param="records") from None


def step_samples(records: Iterable[StepRecord | Mapping[str, Any]]) -> list[StepSample]:
    """Steps that verified something (prefill-only steps are left out, as the scheduler's own fits do)."""
    samples = [_decoded(r).sample for r in records]
    return [s for s in samples if s.shape.batch > 0]


def scale_matched(prior: CostModel, samples: Sequence[StepSample]) -> CostModel:
    """`prior` with every coefficient scaled so it predicts the samples' median step time.

    fit_cost_model's ridge pulls toward the prior in seconds, unnormalised: the built-in default (100 ms
    a step) outweighs data of 7 ms steps (an H100) and the fit keeps the prior's shape. Scaled to the data,
    the prior only steers directions the samples do not vary, as intended."""
    measured = float(np.median([s.total_s for s in samples]))
    predicted = float(np.median(predicted_totals(prior, samples)))
    f = measured / predicted if predicted > 0 else 1.0
    return replace(prior, verify={k: v * f for k, v in prior.verify.items()},
                   draft={k: v * f for k, v in prior.draft.items()},
                   overhead={k: v * f for k, v in prior.overhead.items()})


def fit_cost(records: Iterable[StepRecord | Mapping[str, Any]], *, pads_to_max_k: bool = True,
             prior: CostModel | None = None, name: str = "fitted") -> CostModel:
    """The step-time model of a recorded run, in two stages.

    1. fit_cost_model (the controller's fit) on the decode steps — those without a prefill — from `prior`
       (default: the built-in model scaled to the data). Steps with a prefill are a minority whose residuals
       the fit's Huber weights treat as outliers, so they would leave the prefill price at the prior's.
    2. the prefill price (prefill_prices): what the steps with a prefill took beyond the stage-1 prediction
       for the same step without it, per prompt token and, where the records say how rows were padded, per
       padded slot."""
    samples = step_samples(records)
    decoding = [s for s in samples if s.shape.prefill_tokens == 0]
    mixed = [s for s in samples if s.shape.prefill_tokens > 0]
    base = decoding if len(decoding) >= 4 else samples
    if len(base) < 4:
        raise InvalidRequest(f"need at least 4 steps that verified something to fit, got {len(samples)}",
                             param="records")
    model = fit_cost_model(base, prior=prior or scale_matched(default_cost_model(), base),
                           pads_to_max_k=pads_to_max_k, name=name)
    if mixed and base is decoding:
        model = replace(model, verify={**model.verify, **prefill_prices(model, mixed)})
    actual = np.array([s.total_s for s in samples])
    predicted = predicted_totals(model, samples)
    return replace(model, r2=r_squared(actual, predicted), samples=len(samples))


def _without_prefill(s: StepSample) -> StepSample:
    return replace(s, shape=s.shape.decode_only())


def prefill_prices(model: CostModel, mixed: Sequence[StepSample]) -> dict[str, float]:
    """Seconds per prompt token and per padded prefill slot (P prompts × the longest: the runner pads rows),
    by non-negative least squares through 0 of what steps with a prefill took beyond `model`'s time for the
    same step without it.

    Records that do not say how rows were padded (older ones), or whose prefills never padded (one prompt a
    step), cannot tell the two apart: the whole price then goes on the prompt token, as it always did."""
    real = np.array([s.shape.prefill_tokens for s in mixed], dtype=float)
    padded = np.array([max(s.shape.prefill_padded_tokens, s.shape.prefill_tokens) for s in mixed], dtype=float)
    extra = np.array([s.total_s - _without_prefill(s).predicted_s(model) for s in mixed])

    def through_zero(x: np.ndarray) -> float:
        return max(float(x @ extra / (x @ x)), 0.0) if x @ x > 0 else 0.0

    if not (padded > real).any():
        return {"prefill_tokens": through_zero(real), "prefill_padded_tokens": 0.0}
    both, *_ = np.linalg.lstsq(np.column_stack([real, padded]), extra, rcond=None)
    if (both >= 0).all():
        return {"prefill_tokens": float(both[0]), "prefill_padded_tokens": float(both[1])}
    # A negative price is a cost the data cannot separate: keep the one feature that explains more.
    alone = [(through_zero(real), 0.0), (0.0, through_zero(padded))]
    best = min(alone, key=lambda ab: float(np.sum((extra - ab[0] * real - ab[1] * padded) ** 2)))
    return {"prefill_tokens": best[0], "prefill_padded_tokens": best[1]}


def timing_noise(model: CostModel, samples: Sequence[StepSample]) -> float:
    """The σ of log(actual / predicted) over the decode steps (robust: 1.4826 × the median absolute deviation):
    the step-to-step variation the model does not explain, for the simulator's `--noise-sigma`."""
    logs = [np.log(s.total_s / p) for s in samples
            if s.shape.prefill_tokens == 0 and s.total_s > 0 and (p := s.predicted_s(model)) > 0]
    if len(logs) < 4:
        return 0.0
    x = np.array(logs)
    return float(1.4826 * np.median(np.abs(x - np.median(x))))


@dataclass(frozen=True)
class RecordedAcceptance:
    tested: tuple[int, ...]  # per draft position: drafts that were reached (every earlier one passed)
    accepted: tuple[int, ...]

    @property
    def conditional(self) -> tuple[float, ...]:
        """P(draft j passes | drafts < j passed), per position with any trial."""
        return tuple(a / t for a, t in zip(self.accepted, self.tested, strict=True) if t > 0)

    @property
    def mean_alpha(self) -> float:
        """The geometric α that best explains the counts (maximum likelihood: Σ passed / Σ tested)."""
        return sum(self.accepted) / sum(self.tested) if sum(self.tested) else float("nan")

    def spec(self, per_position: bool = True, min_trials: int = 30) -> AcceptanceProfile:
        """A simulator acceptance spec: the per-position profile (positions with `min_trials` trials) or mean α."""
        if sum(self.tested) == 0:
            raise InvalidRequest("the records hold no speculation (no draft was ever tested)", param="records")
        if not per_position:
            return AcceptanceProfile("fixed", (self.mean_alpha,))
        prof = [a / t for a, t in zip(self.accepted, self.tested, strict=True) if t >= min_trials]
        return AcceptanceProfile("profile", tuple(prof) or (self.mean_alpha,))


def recorded_acceptance(records: Iterable[StepRecord | Mapping[str, Any]],
                        klass: str | None = None) -> RecordedAcceptance:
    """Pool the records' per-class acceptance counts (all classes, or one)."""
    tested = np.zeros(0, dtype=int)
    accepted = np.zeros(0, dtype=int)
    for rec in records:
        by_class = _decoded(rec).acceptance
        for name, (t, a) in by_class.items():
            if klass is not None and name != klass:
                continue
            width = max(len(tested), len(t))
            tested = np.pad(tested, (0, width - len(tested))) + np.pad(np.array(t, dtype=int), (0, width - len(t)))
            accepted = np.pad(accepted, (0, width - len(accepted))) + np.pad(np.array(a, dtype=int),
                                                                           (0, width - len(a)))
    return RecordedAcceptance(tuple(int(x) for x in tested), tuple(int(x) for x in accepted))
