"""Feed a scheduler requests at given arrival times (open loop) and run it until all finish."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from smartspec.engine.sampling import SamplingParams
from smartspec.engine.scheduler import RequestSpec, Scheduler
from smartspec.engine.sequence import Sequence


@dataclass(frozen=True)
class WorkItem:
    seq_id: int
    prompt_ids: list[int]
    params: SamplingParams
    arrival_s: float = 0.0  # offset from the start of the run
    spec: RequestSpec | None = None


def poisson_arrivals(n: int, rate: float | None, seed: int = 0) -> list[float]:
    """Arrival offsets: all at 0 without a rate, else exponential gaps with mean 1/rate."""
    if rate is None:
        return [0.0] * n
    if rate <= 0:
        raise ValueError(f"rate must be > 0 requests/s, got {rate}")
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=n)
    return [float(x) for x in np.cumsum(gaps) - gaps[0]]  # the first request arrives at t = 0


def run_open_loop(
    scheduler: Scheduler,
    items: list[WorkItem],
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Sequence]:
    """Submit each item when its arrival time comes, step while anything runs; finished sequences
    in item order. Latency counts from the scheduled arrival, as an open-loop load generator's would."""
    pending = sorted(items, key=lambda it: it.arrival_s)
    start = clock()
    done: dict[int, Sequence] = {}
    i = 0
    while i < len(pending) or scheduler.has_unfinished:
        now = clock() - start
        while i < len(pending) and pending[i].arrival_s <= now:
            it = pending[i]
            seq = scheduler.submit(it.seq_id, it.prompt_ids, it.params, it.spec)
            seq.stats.arrival_s = start + it.arrival_s
            i += 1
        if not scheduler.has_unfinished:
            sleep(max(0.0, pending[i].arrival_s - (clock() - start)))
            continue
        out = scheduler.step()
        for sid in out.finished:
            done[sid] = scheduler.pop_finished(sid)
    return [done[it.seq_id] for it in items]
