"""The speculation policy: mode, bounds, hysteresis and probing around the goodput optimiser."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from smartspec.policy.acceptance import AcceptanceTracker
from smartspec.policy.cost_model import CostModel, StepShape, default_cost_model
from smartspec.policy.selection import expected_total, select_goodput

Mode = Literal["goodput", "fixed", "off"]
MODES: tuple[Mode, ...] = ("goodput", "fixed", "off")


@dataclass(frozen=True)
class PolicyConfig:
    """What an operator sets (the `SpeculationPolicy` spec, in engine terms)."""

    mode: Mode = "goodput"
    max_k: int = 8  # K: no request ever drafts more
    fixed_k: int = 3  # k for mode "fixed"
    hysteresis: float = 1.1  # speculate only if predicted goodput beats k = 0 by this factor
    # A request held at k = 0 for `probe_every` steps drafts one token to refresh its estimate, in a
    # step that speculates anyway (the padded verify width is already paid); if no step does, the
    # requests due are probed together once the oldest has waited `stale_factor` times as long.
    probe_every: int = 16
    stale_factor: int = 4
    # For the cost model: one step in `explore_every` runs the other side — k = 0 if the policy
    # speculates, else the k it would pick without hysteresis (at least 1) — so the fit has both
    # kinds of steps at the batch sizes in use. Without them a cost at a new batch size is
    # extrapolated from elsewhere (measured on the real pair at batch 16: a fit with only k > 0
    # steps there priced a k = 0 step at 311 ms against 183 ms measured, and one with only k = 0
    # steps there predicted twice the goodput that k = 5 then delivered).
    explore_every: int = 50

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not 0 <= self.max_k <= 64:
            raise ValueError(f"max_k must be in [0, 64], got {self.max_k}")
        if not 0 <= self.fixed_k <= self.max_k:
            raise ValueError(f"fixed_k must be in [0, max_k={self.max_k}], got {self.fixed_k}")
        if self.hysteresis < 1.0:
            raise ValueError(f"hysteresis must be >= 1.0, got {self.hysteresis}")
        if self.probe_every < 0:
            raise ValueError(f"probe_every must be >= 0 (0 = never), got {self.probe_every}")
        if self.explore_every < 0:
            raise ValueError(f"explore_every must be >= 0 (0 = never), got {self.explore_every}")
        if self.stale_factor < 1:
            raise ValueError(f"stale_factor must be >= 1, got {self.stale_factor}")


@dataclass(frozen=True)
class BatchRequest:
    """One running request as the policy sees it."""

    seq_id: int
    cap: int  # per-request bound: min(K, the request's own max_k, tokens it may still emit - 1)
    context_tokens: int


@dataclass(frozen=True)
class Decision:
    ks: dict[int, int]
    predicted_goodput: float  # tokens/s
    predicted_goodput_k0: float
    predicted_step_s: float
    decision_s: float  # wall time the decision took
    probes: int = 0


@dataclass
class SpeculationPolicy:
    """Chooses k for every running request, every step."""

    config: PolicyConfig = field(default_factory=PolicyConfig)
    cost_model: CostModel = field(default_factory=default_cost_model)
    acceptance: AcceptanceTracker = field(default_factory=AcceptanceTracker)
    version: int = 0  # of the policy document in force (0 = local default)

    def __post_init__(self) -> None:
        self._zero_streak: dict[int, int] = {}
        self._decisions = 0  # goodput decisions with something to decide (for exploration)

    def forget(self, seq_id: int) -> None:
        self._zero_streak.pop(seq_id, None)
        self.acceptance.remove(seq_id)

    def choose(self, batch: Sequence[BatchRequest], prefill_tokens: int = 0) -> Decision:
        t0 = time.perf_counter()
        ids = [r.seq_id for r in batch]
        caps = np.array([min(r.cap, self.config.max_k) for r in batch], dtype=int).clip(min=0)
        context = sum(r.context_tokens for r in batch)
        mode = self.config.mode
        survival = self.acceptance.survival(ids)[:, : self.config.max_k] if batch else np.zeros((0, 0))
        probes = 0
        if mode == "off" or self.config.max_k == 0:
            ks = np.zeros(len(batch), dtype=int)
        elif mode == "fixed":
            ks = np.minimum(caps, self.config.fixed_k)
        else:
            sel = select_goodput(survival, caps, self.cost_model, context_tokens=context,
                                 prefill_tokens=prefill_tokens, hysteresis=self.config.hysteresis)
            ks = sel.ks.copy()
            ks, probes = self._probe(ids, ks, caps)
            if self.config.explore_every and caps.any():
                self._decisions += 1
                if self._decisions % self.config.explore_every == 0:
                    ks = self._explore(ks, survival, caps, context, prefill_tokens)
        shape = StepShape(len(batch), context, int(ks.max(initial=0)), int(ks.sum()), prefill_tokens)
        step_s = self.cost_model.step_time(shape)
        shape0 = StepShape(len(batch), context, 0, 0, prefill_tokens)
        step0 = self.cost_model.step_time(shape0)
        emitted = expected_total(survival, ks) if batch else 0.0
        return Decision(
            ks={sid: int(k) for sid, k in zip(ids, ks, strict=True)},
            predicted_goodput=emitted / step_s if step_s > 0 else 0.0,
            predicted_goodput_k0=len(batch) / step0 if step0 > 0 else 0.0,
            predicted_step_s=step_s,
            decision_s=time.perf_counter() - t0,
            probes=probes,
        )

    def _explore(self, ks: np.ndarray, survival: np.ndarray, caps: np.ndarray, context: int,
                 prefill_tokens: int) -> np.ndarray:
        """The other side of the decision, for one step: k = 0, or the best k > 0 ignoring hysteresis."""
        if ks.any():
            return np.zeros_like(ks)
        best = select_goodput(survival, caps, self.cost_model, context_tokens=context,
                              prefill_tokens=prefill_tokens, hysteresis=1.0).ks
        return best if best.any() else np.minimum(caps, 1)

    def _probe(self, ids: list[int], ks: np.ndarray, caps: np.ndarray) -> tuple[np.ndarray, int]:
        """k = 0 is not sticky: requests held at 0 draft one token now and then (see PolicyConfig)."""
        every = self.config.probe_every
        streaks = np.array([0 if k > 0 else self._zero_streak.get(sid, 0) + 1 for sid, k in zip(ids, ks, strict=True)])
        due = (streaks >= every) & (caps > 0) & (ks == 0) if every else np.zeros(len(ids), dtype=bool)
        # A lone probe in an otherwise k = 0 step would pad every request's verify to width 2.
        if due.any() and ks.max(initial=0) == 0 and streaks[due].max() < every * self.config.stale_factor:
            due[:] = False
        ks = np.where(due, 1, ks)
        streaks = np.where(due, 0, streaks)
        for sid, streak in zip(ids, streaks, strict=True):
            self._zero_streak[sid] = int(streak)
        return ks, int(due.sum())
