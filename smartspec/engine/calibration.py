"""Start-up calibration: time a few steps of every k on synthetic requests and start from a fitted cost model.

Without it the policy's first decisions come from the built-in default cost model, which cannot know
the machine: on a CPU without native bf16 a width-9 verify costs 6.9× a decode, and the default
priced it at 1.3×, so the first requests of a run speculated at k = 4-8, missed draft deadlines and
ran slower than no speculation until enough real steps had been refitted (measured on the real pair:
the first two requests of a closed-loop run cost goodput 1.6 % of its mean latency against `off`).
A serving engine profiles itself before taking traffic (as engines profile memory at start); here a
few seconds of steps at k = 0 … K, at batch 1 and a small batch, through the real draft connection,
give the fit every direction the policy will ask about. Batch 1 runs every k: verify time is a staircase
in the verify width on CPUs (cost_model.py, `verify_rows`), and at light load the policy holds one k, so a
width the profile skipped would never be measured. The steps go into the scheduler's refit
window and, marked `calibration`, to its step sinks (a controller fits the fleet's cost model on
them too); they never feed acceptance statistics (the prompts are random tokens) or the load a
controller measures.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

from smartspec.engine.params import SamplingParams
from smartspec.engine.steps import StepEngine, StepPlan, StepStats
from smartspec.errors import SmartspecError, UnknownSequence

if TYPE_CHECKING:
    from smartspec.engine.scheduler import Scheduler

log = logging.getLogger(__name__)
_E = TypeVar("_E", bound=StepEngine)  # the real engine, or the simulator's

# Request ids far above any the engine loop hands out (it counts from 1): the draft protocol's ids are uint64.
FIRST_ID = 2**62


@dataclass(frozen=True)
class CalibrationConfig:
    """What the start-up profile runs; every (batch, k) shape `repeats` times, k up then down, smallest batch first."""

    budget_s: float = 45.0  # stop starting new shapes after this long (0: no calibration)
    batches: tuple[int, ...] = (1, 4)
    ks: tuple[int, ...] = (0, 1, 2, 4, 8)  # capped at the policy's K; duplicates dropped
    every_k_batches: tuple[int, ...] = (1,)  # batches that run every k = 0 … K instead of `ks`
    repeats: int = 2  # the first run of a shape is often slower (kernel selection): the fit sees both
    # Prompt length of the requests of batches[i] (the last for the rest). Batch 1 starts at a real prompt's
    # context: from 16-70 tokens the fit extrapolated the context terms to 200 tokens and priced k = 7 at
    # 1.8× its cost (simulated on the real pair's float32 step times), so probes were never affordable.
    # Larger batches stay short: their prefill costs B× more.
    prompt_tokens: tuple[int, ...] = (128, 16)
    deadline_s: float = 30.0  # how long a step waits for drafts here: the draft's cost is what is measured
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.budget_s < 0 or self.repeats < 1 or not self.prompt_tokens or min(self.prompt_tokens) < 1
                or not self.batches):
            raise ValueError(f"invalid calibration config {self}")

    def plan(self, max_batch: int) -> list[tuple[int, int]]:
        """(batch size, prompt tokens) of each group the profile runs, in order."""
        batches = sorted({min(b, max_batch) for b in self.batches if b > 0})
        return [(b, self.prompt_tokens[min(i, len(self.prompt_tokens) - 1)]) for i, b in enumerate(batches)]


@dataclass
class CalibrationReport:
    steps: list[StepStats] = field(default_factory=list)
    seconds: float = 0.0
    adopted: bool = False
    skipped: str | None = None  # why nothing ran


def calibrate(scheduler: Scheduler[_E], vocab_size: int, max_batch: int, config: CalibrationConfig | None = None,
              *, clock: Callable[[], float] = time.perf_counter) -> CalibrationReport:
    """Run the profile through `scheduler`'s engine, then hand the steps to its refit (see module docstring).
    Must run before the scheduler takes requests; any request it added is gone when it returns."""
    cfg = config or CalibrationConfig()
    report = CalibrationReport()
    k_max = scheduler.policy.config.max_k
    some_ks = sorted({min(k, k_max) for k in cfg.ks})
    if cfg.budget_s == 0 or not scheduler.policy.config.adaptive:
        report.skipped = "off" if cfg.budget_s == 0 else f"mode {scheduler.policy.config.mode!r} uses no cost model"
        return report
    rng = random.Random(cfg.seed)
    engine = scheduler.engine
    start = clock()
    next_id = FIRST_ID
    # Enough tokens for every shape of a batch: each step emits at most k + 1.
    max_tokens = cfg.repeats * sum(k + 1 for k in range(k_max + 1)) + 1
    for batch, prompt_tokens in cfg.plan(max_batch):
        ks = list(range(k_max + 1)) if batch in cfg.every_k_batches else some_ks
        ids = list(range(next_id, next_id + batch))
        next_id += batch
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        try:
            for sid in ids:
                prompt = [rng.randrange(vocab_size) for _ in range(prompt_tokens)]
                engine.add_request(sid, prompt, params)
            while engine.num_waiting:  # admission steps: prefill only, k = 0
                _keep(report, engine.step(StepPlan({})).stats)
            # Up, then down: every step grows the context, so run in one direction k and context rise together
            # and the fit cannot tell their costs apart (it put k's cost on the context: k = 7 priced 24 % too
            # high at 100 tokens of context, replayed on the real pair's float32 step times).
            for rep in range(cfg.repeats):
                for k in ks if rep % 2 == 0 else ks[::-1]:
                    if clock() - start > cfg.budget_s:
                        break
                    _keep(report, engine.step(StepPlan(dict.fromkeys(ids, k), cfg.deadline_s)).stats)
        except SmartspecError as exc:  # a draft that went away mid-profile: fit what was measured
            log.warning("calibration stopped early: %s", exc)
        finally:
            for sid in ids:
                _drop(engine, sid)
        if clock() - start > cfg.budget_s:
            break
    report.seconds = clock() - start
    if report.steps:
        report.adopted = scheduler.seed_samples(report.steps)
    return report


def _keep(report: CalibrationReport, stats: StepStats | None) -> None:
    if stats is not None:
        stats.calibration = True
        report.steps.append(stats)


def _drop(engine: StepEngine, seq_id: int) -> None:
    """Cancel (if still running) and forget a calibration request."""
    with contextlib.suppress(UnknownSequence):  # finished already
        engine.cancel(seq_id)
    with contextlib.suppress(KeyError):  # never added
        engine.pop_finished(seq_id)
