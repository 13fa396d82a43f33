"""TelemetryWindow: the recent step records of every replica, as the controller's view of the fleet.

It keeps the last `fit_window` step samples for the cost-model fit, pooled per-position acceptance
per workload class over the last `acceptance_window` steps (tested/accepted counts, the estimator's
truncation rule, so the pooled rates are unbiased), and enough recent steps to report load and
measured goodput.
"""

from __future__ import annotations

import time
import zlib
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from smartspec.policy.cost_fit import StepSample
from smartspec.policy.limits import MAX_K_LIMIT
from smartspec.telemetry.records import StepRecord


@dataclass
class _ClassCounts:
    steps: deque[tuple[np.ndarray, np.ndarray]]
    tested: np.ndarray
    accepted: np.ndarray


@dataclass
class TelemetryWindow:
    max_k: int = MAX_K_LIMIT  # positions pooled: any K a spec may ask for
    fit_window: int = 2000
    acceptance_window: int = 2000
    recent: deque[StepRecord] = field(default_factory=lambda: deque(maxlen=4096))

    def __post_init__(self) -> None:
        self.samples: deque[StepSample] = deque(maxlen=self.fit_window)
        # A stable key per sample (its replica and step), so a step is held out of every fit or of
        # none, however the window slides.
        self.sample_keys: deque[int] = deque(maxlen=self.fit_window)
        self._classes: dict[str, _ClassCounts] = {}
        self.last_ts: float | None = None
        self.last_seen: dict[str, float] = {}  # replica -> newest record ts
        self.records = 0
        self.new_samples = 0  # since the last fit
        self.calibration_samples = 0  # targets' start-up profile steps seen

    def add(self, rec: StepRecord) -> None:
        self.records += 1
        self.last_seen[rec.replica] = max(self.last_seen.get(rec.replica, 0.0), rec.ts)
        self.last_ts = rec.ts if self.last_ts is None else max(self.last_ts, rec.ts)
        if rec.batch_size > 0 or rec.sample.shape.prefill_tokens > 0:  # a lone prefill prices prefill
            self.samples.append(rec.sample)
            self.sample_keys.append(zlib.crc32(f"{rec.replica}/{rec.step}".encode()))
            self.new_samples += 1
        if rec.calibration:  # a cost sample only: random prompts, before any load
            self.calibration_samples += 1
            return
        self.recent.append(rec)
        for klass, (tested, accepted) in rec.acceptance.items():
            self._count(klass, tested, accepted)

    def _count(self, klass: str, tested: list[int], accepted: list[int]) -> None:
        k = self.max_k
        t = np.zeros(k)
        a = np.zeros(k)
        n = min(len(tested), len(accepted), k)
        t[:n], a[:n] = tested[:n], accepted[:n]
        c = self._classes.get(klass)
        if c is None:
            c = self._classes[klass] = _ClassCounts(deque(), np.zeros(k), np.zeros(k))
        c.steps.append((t, a))
        c.tested += t
        c.accepted += a
        while len(c.steps) > self.acceptance_window:  # a sliding window: exact counts of the last N steps
            old_t, old_a = c.steps.popleft()
            c.tested -= old_t
            c.accepted -= old_a

    # -- views -------------------------------------------------------------------------------
    def classes(self) -> list[str]:
        return sorted(self._classes)

    def conditional(self, klass: str, prior: float, strength: float = 4.0, min_trials: float = 20.0) -> np.ndarray:
        """Pooled conditional acceptance per position; positions with too few trials take the prior."""
        c = self._classes.get(klass)
        out = np.full(self.max_k, prior)
        if c is None:
            return out
        pooled = (c.accepted + strength * prior) / np.maximum(c.tested + strength, 1e-12)
        return np.where(c.tested >= min_trials, pooled, out)

    def trials(self, klass: str) -> np.ndarray:
        c = self._classes.get(klass)
        return np.zeros(self.max_k) if c is None else c.tested.copy()

    def since(self, seconds: float, now: float | None = None) -> list[StepRecord]:
        now = time.time() if now is None else now
        return [r for r in self.recent if now - r.ts <= seconds]

    def replicas(self, seconds: float = 30.0, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        return sorted(r for r, ts in self.last_seen.items() if now - ts <= seconds)

    def age_s(self, now: float | None = None) -> float | None:
        if self.last_ts is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.last_ts)


def decode_steps(records: list[StepRecord]) -> list[StepRecord]:
    """Steps that verified running requests: where k matters. Prefill-only steps are left out of
    goodput, just as the cost-model fit leaves them out, so measured and predicted compare alike."""
    return [r for r in records if r.batch_size > 0]


def measured(records: list[StepRecord]) -> dict[str, float | None]:
    """Goodput of decode steps (Σ emitted / Σ step time: what the policy maximises), mean batch and mean k."""
    busy = decode_steps(records)
    step_s = sum(r.step_s for r in busy)
    verified = sum(r.batch_size for r in busy)
    return {
        "goodput": sum(r.emitted for r in busy) / step_s if step_s > 0 else None,
        "batch_size": verified / len(busy) if busy else None,
        "mean_k": sum(r.sum_k for r in busy) / verified if verified else None,
        "steps": float(len(busy)),
    }
