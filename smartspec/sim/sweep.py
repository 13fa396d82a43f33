"""A simulated sweep: every policy (and every static k, for the oracle) at every rate, on the same requests."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from smartspec.engine.calibration import CalibrationConfig
from smartspec.engine.refit import RefitConfig
from smartspec.engine.scheduler import DeadlineConfig
from smartspec.policy.cost_model import CostModel, default_cost_model
from smartspec.sim.effects import SimEffects
from smartspec.sim.policies import PolicyKnobs, build_policy, canonical
from smartspec.sim.report import RequestRecord
from smartspec.sim.run import EngineConfig, SimResult, simulate
from smartspec.sim.trace import Phase
from smartspec.sim.workload import WorkloadSpec

TRACE_RATE = 0.0  # the key of a trace run (its records carry each phase's own rate)


@dataclass(frozen=True)
class SimSweepConfig:
    cost: CostModel
    workload: WorkloadSpec
    rates: tuple[float, ...] = (1.0,)
    policies: tuple[str, ...] = ("off", "goodput")
    requests: int = 500  # per rate
    engine: EngineConfig = field(default_factory=EngineConfig)
    knobs: PolicyKnobs = field(default_factory=PolicyKnobs)
    # Online refit of the goodput policy's cost model; it learns something only where steps do not cost what
    # the model says (timing noise, contention, deadline misses, a cold start).
    refit: bool = False
    trace: tuple[Phase, ...] | None = None  # a phased trace instead of one run per rate
    oracle: bool = True  # also run every fixed k in 0 … K for the best static policy in hindsight
    workload_name: str = "synthetic"
    effects: SimEffects = field(default_factory=SimEffects)
    deadline: DeadlineConfig = field(default_factory=DeadlineConfig)
    # Start every policy as the real target does: the built-in default cost model with online refit on (the
    # steps still cost what `cost` says); the acceptance prior is the tracker's configured one either way.
    cold_start: bool = False
    # ... and, as the real target does since 2026-12-01, first run the start-up calibration (only with cold_start).
    calibration: bool = True

    @property
    def all_policies(self) -> tuple[str, ...]:
        named = [canonical(p) for p in self.policies]
        static = ["off", *(f"fixed:{k}" for k in range(1, self.engine.max_k + 1))] if self.oracle else []
        return tuple(dict.fromkeys([*named, *static]))


@dataclass(frozen=True)
class RunInfo:
    """One (policy, rate) simulation, as the report shows it."""

    policy: str
    rate: float
    requests: int
    steps: int
    mean_batch: float
    mean_k: float
    k_counts: dict[int, int]
    sim_s: float
    busy_s: float
    wall_s: float
    refits: int
    misses: int = 0


@dataclass
class SweepResult:
    config: SimSweepConfig
    records: list[RequestRecord]
    runs: list[RunInfo]
    wall_s: float


def _task(cfg: SimSweepConfig, rate: float, policy: str) -> tuple[SimResult, RunInfo]:
    reqs = cfg.workload.trace(cfg.trace) if cfg.trace else cfg.workload.requests(cfg.requests, rate)
    pol = build_policy(policy, default_cost_model() if cfg.cold_start else cfg.cost, cfg.engine.max_k, cfg.knobs)
    refit = RefitConfig() if cfg.cold_start else RefitConfig(enabled=cfg.refit and policy == "goodput")
    res = simulate(reqs, pol, cfg.cost, label=policy, engine=cfg.engine, refit=refit,
                   workload=cfg.workload_name, seed=cfg.workload.seed, effects=cfg.effects, deadline=cfg.deadline,
                   calibration=CalibrationConfig() if cfg.cold_start and cfg.calibration else None)
    t = res.tally
    info = RunInfo(policy, rate, len(reqs), t.steps, t.mean_batch, t.mean_k, dict(sorted(t.k_counts.items())),
                   res.sim_s, res.busy_s, res.wall_s, res.refits, res.misses)
    return res, info


def run_sweep(cfg: SimSweepConfig, jobs: int = 1, progress: Callable[[RunInfo], None] | None = None) -> SweepResult:
    """All (rate, policy) runs; `jobs` > 1 runs them in that many processes (results are identical)."""
    t0 = time.perf_counter()
    rates = (TRACE_RATE,) if cfg.trace else cfg.rates
    tasks = [(rate, policy) for rate in rates for policy in cfg.all_policies]
    results: list[tuple[SimResult, RunInfo]] = []
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = [pool.submit(_task, cfg, rate, policy) for rate, policy in tasks]
            for fut in futures:
                results.append(fut.result())
                if progress:
                    progress(results[-1][1])
    else:
        for rate, policy in tasks:
            results.append(_task(cfg, rate, policy))
            if progress:
                progress(results[-1][1])
    records = [rec for res, _ in results for rec in res.records]
    return SweepResult(cfg, records, [info for _, info in results], time.perf_counter() - t0)
