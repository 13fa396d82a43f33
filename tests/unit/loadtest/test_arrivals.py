"""Arrival processes of the load generator: Poisson rate, gamma burstiness, traces, determinism."""

from __future__ import annotations

import itertools
import random
import statistics

import pytest
from scipy import stats

from smartspec.loadtest.loadgen import (
    Phase,
    arrivals,
    gamma_arrivals,
    interarrival,
    parse_trace,
    poisson_arrivals,
    seeded_rng,
    trace_arrivals,
)


def gaps(ts: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(ts)]


def test_poisson_mean_rate_and_exponential_gaps() -> None:
    sched = poisson_arrivals(4.0, count=20_000, rng=random.Random(1))
    g = gaps([a.t for a in sched])
    assert sched[0].t == 0.0 and all(a.rate == 4.0 for a in sched)
    # mean gap 1/4 s; its standard error is 0.25/sqrt(20000) ≈ 0.7 %, so 3 % is > 4 sigma
    assert statistics.fmean(g) == pytest.approx(0.25, rel=0.03)
    assert statistics.stdev(g) / statistics.fmean(g) == pytest.approx(1.0, abs=0.04)
    assert stats.kstest(g, "expon", args=(0, 0.25)).pvalue > 1e-3


@pytest.mark.parametrize("cv", [0.5, 2.0, 3.0])
def test_gamma_keeps_the_rate_and_has_the_asked_cv(cv: float) -> None:
    sched = gamma_arrivals(2.0, cv, count=40_000, rng=random.Random(2))
    g = gaps([a.t for a in sched])
    assert statistics.fmean(g) == pytest.approx(0.5, rel=0.05)
    assert statistics.stdev(g) / statistics.fmean(g) == pytest.approx(cv, rel=0.06)
    # The distribution itself from the raw draws: differences of large arrival times lose tiny gaps to rounding.
    rng = random.Random(3)
    draws = [interarrival(2.0, cv, rng) for _ in range(20_000)]
    shape = 1 / cv**2
    assert stats.kstest(draws, "gamma", args=(shape, 0, 0.5 / shape)).pvalue > 1e-3


def test_cv_zero_is_a_constant_rate_and_cv_one_is_poisson() -> None:
    assert gaps([a.t for a in arrivals(5.0, count=6, cv=0.0)]) == pytest.approx([0.2] * 5)
    a = arrivals(3.0, count=50, cv=1.0, rng=random.Random(7))
    b = poisson_arrivals(3.0, count=50, rng=random.Random(7))
    assert a == b


def test_duration_bounds_the_schedule() -> None:
    sched = poisson_arrivals(10.0, duration_s=100.0, rng=random.Random(3))
    assert all(a.t < 100.0 for a in sched)
    assert len(sched) == pytest.approx(1000, rel=0.1)


def test_same_seed_and_rate_give_the_same_schedule_for_every_policy() -> None:
    one = arrivals(0.5, count=20, rng=seeded_rng(0, "rate", 0.5))
    two = arrivals(0.5, count=20, rng=seeded_rng(0, "rate", 0.5))
    other = arrivals(0.5, count=20, rng=seeded_rng(0, "rate", 1.0))
    assert one == two and one != other


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError):
        arrivals(0.0, count=3)
    with pytest.raises(ValueError):
        arrivals(1.0, count=3, cv=-1)
    with pytest.raises(ValueError):
        arrivals(1.0)
    with pytest.raises(ValueError):
        arrivals(1.0, count=3, duration_s=2.0)


def test_parse_trace() -> None:
    import smartspec.sim.trace

    assert parse_trace is smartspec.sim.trace.parse_trace  # one grammar for the bench and the simulator
    phases = parse_trace("60s@1, 2m@4,30@0.5,10s@0")
    assert [(p.rate, p.duration_s, p.count) for p in phases] == [
        (1.0, 60.0, None), (4.0, 120.0, None), (0.5, None, 30), (0.0, 10.0, None)]
    assert phases[0].name == "p1:60s@1"
    for bad in ("", "60@", "x@1", "2.5@1", "5@0", "60s@-1"):
        with pytest.raises(ValueError):
            parse_trace(bad)


def test_trace_phases_run_back_to_back_at_their_rates() -> None:
    phases = [Phase(2.0, duration_s=500.0, name="low"), Phase(0.0, duration_s=50.0, name="pause"),
              Phase(20.0, count=4000, name="high"), Phase(2.0, duration_s=500.0, name="low2")]
    sched = trace_arrivals(phases, rng=random.Random(4))
    by = {name: [a.t for a in sched if a.phase == name] for name in ("low", "high", "low2")}
    assert all(t < 500.0 for t in by["low"]) and min(by["high"]) >= 550.0
    assert len(by["high"]) == 4000
    assert len(by["low"]) == pytest.approx(1000, rel=0.1)
    assert statistics.fmean(gaps(by["high"])) == pytest.approx(0.05, rel=0.05)
    assert min(by["low2"]) > max(by["high"])
    assert len(by["low2"]) == pytest.approx(1000, rel=0.1)
    assert all(a.rate == (20.0 if a.phase == "high" else 2.0) for a in sched)
    assert [a.t for a in sched] == sorted(a.t for a in sched)
