"""The event loop: arrivals on a virtual clock feed the real Scheduler, step after step, until every request is done."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

from smartspec.engine.calibration import FIRST_ID, CalibrationConfig, calibrate
from smartspec.engine.params import SamplingParams
from smartspec.engine.refit import RefitConfig
from smartspec.engine.scheduler import DeadlineConfig, RequestSpec, Scheduler
from smartspec.engine.sequence import Sequence
from smartspec.engine.sinks import StepSink
from smartspec.engine.steps import AdmissionLimits, StepStats
from smartspec.policy.cost_model import CostModel
from smartspec.policy.policy import SpeculationPolicy
from smartspec.sim.effects import SimEffects
from smartspec.sim.engine import SimEngine, VirtualClock
from smartspec.sim.report import RequestRecord
from smartspec.sim.workload import SimRequest


@dataclass(frozen=True)
class EngineConfig:
    """The simulated target's capacity (the real engine's admission limits)."""

    max_batch: int = 256
    max_k: int = 8
    max_prefill_tokens: int | None = None
    max_len: int | None = None


@dataclass
class StepTally:
    """A step sink that keeps what the report needs: steps, batch sizes, k per request-step."""

    steps: int = 0
    batch_sum: int = 0
    k_counts: Counter[int] = field(default_factory=Counter)

    def record(self, stats: StepStats) -> None:
        if stats.calibration:  # the start-up profile is not part of the run
            return
        self.steps += 1
        self.batch_sum += stats.batch_size
        self.k_counts.update(stats.ks)

    @property
    def mean_batch(self) -> float:
        return self.batch_sum / self.steps if self.steps else 0.0

    @property
    def mean_k(self) -> float:
        n = sum(self.k_counts.values())
        return sum(k * c for k, c in self.k_counts.items()) / n if n else 0.0


@dataclass
class SimResult:
    policy: str
    records: list[RequestRecord]
    tally: StepTally
    sim_s: float  # virtual seconds from the first arrival to the last token
    busy_s: float  # virtual seconds spent stepping
    wall_s: float  # real seconds the simulation took
    refits: int = 0
    misses: int = 0  # steps whose drafts missed the deadline


def simulate(requests: Collection[SimRequest], policy: SpeculationPolicy, cost: CostModel, *, label: str,
             engine: EngineConfig | None = None, refit: RefitConfig | None = None,
             sinks: Collection[StepSink] = (), workload: str = "synthetic", seed: int = 0,
             effects: SimEffects | None = None, deadline: DeadlineConfig | None = None,
             calibration: CalibrationConfig | None = None) -> SimResult:
    """Run `requests` through a real Scheduler driving a SimEngine whose steps cost what `cost` says (the truth;
    the policy decides on its own cost model), with `effects` on top and the target's draft `deadline`.
    With `calibration` the target first runs its start-up profile (engine/calibration.py) as the real one
    does; the trace starts when it ends."""
    t0 = time.perf_counter()
    engine = engine or EngineConfig()
    clock = VirtualClock()
    by_id = {r.seq_id: r for r in requests}
    sim = SimEngine(by_id, cost, clock, num_slots=engine.max_batch, max_k=engine.max_k, max_len=engine.max_len,
                    limits=AdmissionLimits(max_prefill_tokens=engine.max_prefill_tokens), seed=seed, effects=effects)
    tally = StepTally()
    sched = Scheduler(sim, policy, sinks=[tally, *sinks], refit=refit or RefitConfig(enabled=False), clock=clock,
                      deadline=deadline or DeadlineConfig())
    offset, busy0, misses0 = 0.0, 0.0, 0  # the profile's virtual time, busy time and misses: not the trace's
    if calibration is not None and policy.config.adaptive:
        _profile(sched, by_id, engine, calibration, clock)
        offset, busy0, misses0 = clock.now, sim.busy_s, sim.timer.misses
    pending = sorted(requests, key=lambda r: (r.arrival_s, r.seq_id))
    done: dict[int, Sequence] = {}
    i = 0
    while i < len(pending) or sched.has_unfinished:
        while i < len(pending) and pending[i].arrival_s + offset <= clock.now:
            req = pending[i]
            seq = sched.submit(req.seq_id, [0] * req.prompt_len,
                               SamplingParams(max_tokens=req.output_len, ignore_eos=True), RequestSpec())
            # latency counts from the arrival, not the end of the step under way
            seq.stats.arrival_s = req.arrival_s + offset
            i += 1
        if not sched.has_unfinished:
            clock.advance_to(pending[i].arrival_s + offset)
            continue
        out = sched.step()
        for sid in out.finished:
            done[sid] = sched.pop_finished(sid)
    records = [_record(done[r.seq_id], r, label, workload, offset) for r in requests]
    start = min((r.arrival_s for r in requests), default=0.0) + offset
    return SimResult(label, records, tally, clock.now - start, sim.busy_s - busy0, time.perf_counter() - t0,
                     len(sched.fits), sim.timer.misses - misses0)


def _profile(sched: Scheduler[SimEngine], by_id: dict[int, SimRequest], engine: EngineConfig, cfg: CalibrationConfig,
             clock: VirtualClock) -> None:
    """The target's start-up calibration, in virtual time, on requests whose drafts are all rejected
    (the real profile's prompts are random tokens)."""
    first = FIRST_ID
    for batch, prompt_tokens in cfg.plan(engine.max_batch):
        for sid in range(first, first + batch):
            by_id[sid] = SimRequest(sid, 0.0, prompt_tokens, 1, (0.0,) * max(engine.max_k, 1), 0.0, "calibration")
        first += batch
    calibrate(sched, vocab_size=1, max_batch=engine.max_batch, config=cfg, clock=clock)


def _record(seq: Sequence, req: SimRequest, policy: str, workload: str, offset: float = 0.0) -> RequestRecord:
    st = seq.stats
    first = st.first_token_s
    finish = st.finish_s
    chunks = st.steps  # one streamed chunk per step the request took part in, the prefill's first token included
    itl = (finish - first) / (chunks - 1) if first is not None and finish is not None and chunks > 1 else None
    return RequestRecord(
        policy=policy, rate=req.rate, workload=workload, arrival_s=req.arrival_s,
        ttft_s=None if first is None else first - req.arrival_s - offset,
        e2e_s=None if finish is None else finish - req.arrival_s - offset,
        prompt_tokens=seq.prompt_len, completion_tokens=seq.num_output, itl_mean_s=itl,
        drafted_tokens=st.num_draft_tokens, accepted_tokens=st.num_accepted_tokens,
        error=None if seq.finish_reason == "length" else f"finished: {seq.finish_reason}",
        source="simulated", acceptance_emulated=True, phase=req.phase,
    )
