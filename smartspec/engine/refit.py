"""Online refitting of the target's cost model from its own steps: the fit, its adoption test, and a worker
thread that runs them off the step loop.

A refit costs 13-24 ms on the 2-core VM (`bench/policy_overhead.py`), every `every_steps` steps. Inside the
step loop that is one step in 32 stalled by a GPU step's worth or more (issue 15 budgets the engine 1.5 ms
of host time per step). In the background the loop pays only for a list copy and a thread start; the fit
runs while the loop waits on the device (a CUDA sync, a gRPC read and torch's CPU kernels release the GIL)
and its outcome is adopted between two later steps. The simulator keeps the synchronous fit: it runs
the Scheduler on a virtual clock, and a thread's timing would make its runs depend on the host.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from smartspec.policy.cost_fit import SampleColumns, StepSample, fit_cost_model, plausible, relative_error
from smartspec.policy.cost_model import CostModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefitConfig:
    """Online refitting of the local cost model from the engine's own step records."""

    enabled: bool = True
    every_steps: int = 32  # after the first fit
    window: int = 512  # most recent steps used
    # ... plus the most recent speculating steps (drafts asked for) beyond that window: when the policy
    # stops speculating for a while, a window of k = 0 steps alone leaves every k > 0 cost unconstrained,
    # and refits drifted into pricing k = 8 at five times a k = 0 step (seen on the real pair at batch 1:
    # speculation then never resumed).
    spec_window: int = 128
    min_samples: int = 24
    # A fit is never adopted if it predicts the window worse than the model in force, or goes
    # negative anywhere it will be asked about; `min_r2` adds an R² floor on top.
    min_r2: float | None = None
    # Fit on a worker thread and adopt between later steps (see the module docstring): what the serving
    # target and `smartspec generate` do. Off, the fit runs inside the step that made it due.
    background: bool = False


@dataclass(frozen=True)
class RefitOutcome:
    """A fit and whether to adopt it, judged against `prior`, the model in force when it started."""

    fitted: CostModel
    prior: CostModel
    samples: int
    reason: str | None  # why it is not adopted; None: adopt

    @property
    def adopt(self) -> bool:
        return self.reason is None


def judge_refit(samples: list[StepSample], current: CostModel, max_k: int,
                min_r2: float | None = None) -> RefitOutcome:
    """Fit `samples` starting from `current`, and say whether the fit should replace it."""
    cols = SampleColumns.of(samples, pads_to_max_k=True)  # the features once, for the fit and both errors
    fitted = fit_cost_model(cols, prior=current, pads_to_max_k=True, name="online")
    reason = None
    if min_r2 is not None and not (fitted.r2 is not None and fitted.r2 >= min_r2):
        reason = f"R² {fitted.r2} below {min_r2}"
    elif not plausible(fitted, cols, max_k):
        reason = "it predicts a negative time somewhere in the range it will be asked about"
    elif relative_error(fitted, cols) >= relative_error(current, cols):
        reason = "it predicts these steps no better than the model in force"
    return RefitOutcome(fitted, current, len(samples), reason)


class BackgroundRefit:
    """At most one `judge_refit` at a time on a daemon thread; the step loop collects its outcome.

    The thread reads only what it was handed (a copy of the samples, frozen models), so nothing is shared
    with the loop but the outcome slot, written once before the thread ends."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._outcome: RefitOutcome | None = None
        self.failures = 0

    @property
    def busy(self) -> bool:
        return self._thread is not None

    def start(self, samples: list[StepSample], current: CostModel, max_k: int, min_r2: float | None) -> None:
        if self._thread is not None:
            raise RuntimeError("a refit is already running")
        self._outcome = None
        self._thread = threading.Thread(target=self._run, args=(samples, current, max_k, min_r2),
                                        name="smartspec-refit", daemon=True)
        self._thread.start()

    def _run(self, samples: list[StepSample], current: CostModel, max_k: int, min_r2: float | None) -> None:
        try:
            self._outcome = judge_refit(samples, current, max_k, min_r2)
        except Exception:  # a failed fit leaves the model in force; it must not kill a thread silently
            self.failures += 1
            log.exception("background cost-model refit on %d steps failed", len(samples))

    def collect(self, wait_s: float = 0.0) -> RefitOutcome | None:
        """The finished fit's outcome (once), or None while it runs (up to `wait_s`) or when none ran."""
        thread = self._thread
        if thread is None:
            return None
        thread.join(wait_s if wait_s > 0 else 0.0)
        if thread.is_alive():
            return None
        self._thread = None
        outcome, self._outcome = self._outcome, None
        return outcome
