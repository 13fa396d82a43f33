"""summarize: throughput over the time the requests were in flight, one arrival trace after another."""

from __future__ import annotations

import pytest

from smartspec.sim.report import RequestRecord, summarize


def _rec(trace: int, arrival_s: float, e2e_s: float, tokens: int = 10) -> RequestRecord:
    return RequestRecord(policy="off", rate=1.0, workload="synthetic", arrival_s=arrival_s, ttft_s=0.1,
                         e2e_s=e2e_s, completion_tokens=tokens, trace=trace)


def test_tokens_per_s_adds_the_spans_of_arrival_traces() -> None:
    # Each trace's clock starts at 0: pooled as one span, three 10 s traces would look like one 10 s burst.
    recs = [_rec(t, a, 10.0 - a) for t in range(3) for a in (0.0, 5.0)]
    (row,) = summarize(recs)
    assert row["tokens_per_s"] == pytest.approx(60 / 30)


def test_tokens_per_s_of_one_trace_is_tokens_over_its_span() -> None:
    (row,) = summarize([_rec(0, 1.0, 4.0), _rec(0, 2.0, 6.0, tokens=30)])
    assert row["tokens_per_s"] == pytest.approx(40 / 7.0)
