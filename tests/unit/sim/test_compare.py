"""Adaptive-vs-static ratios: paired per request, over traces, leave-one-out best static (checked against scipy)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from smartspec.sim import compare
from smartspec.sim.report import RequestRecord, is_adaptive, is_static, t95


def scipy_ratio_ci(logs: list[float]) -> tuple[float, float, float]:
    """exp(mean) and exp of scipy's Student-t 95 % interval of the mean: the reference computation."""
    x = np.asarray(logs)
    lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
    return math.exp(x.mean()), math.exp(lo), math.exp(hi)


@pytest.mark.parametrize("dof", [1, 2, 5, 29, 30, 31, 39, 45, 80, 200, 5000])
def test_t95_is_the_student_t_quantile(dof: int) -> None:
    assert t95(dof) == pytest.approx(stats.t.ppf(0.975, dof), rel=2e-4)  # the table has 3 decimals
    assert math.isnan(t95(0))


def test_paired_ratio_matches_scipy_on_hand_made_latencies() -> None:
    adaptive = {0: 8.1, 1: 9.4, 2: 7.7, 3: 10.2, 4: 8.8, 5: 9.0}
    static = {0: 8.0, 1: 9.0, 2: 7.5, 3: 10.0, 4: 8.3, 5: 8.9, 6: 99.0}  # request 6 failed under adaptive: unpaired
    ci, of_means = compare.paired_ratio(adaptive, static)
    logs = [math.log(adaptive[i] / static[i]) for i in range(6)]
    ratio, lo, hi = scipy_ratio_ci(logs)
    assert ci.n == 6
    assert (ci.ratio, ci.lo95, ci.hi95) == pytest.approx((ratio, lo, hi), rel=1e-4)
    assert of_means == pytest.approx(sum(adaptive.values()) / (sum(static.values()) - 99.0))
    assert ci.ratio > 1.0 and ci.lo95 > 1.0 and ci.verdict == "fail"  # consistently ~3 % slower: the CI says so


def test_paired_ratio_by_hand_two_requests() -> None:
    """x = log 1.1, log 1.0: mean log(1.1)/2, sd log(1.1)/√2, half-width 12.706 · sd / √2 = 12.706 · log(1.1) / 2."""
    ci, _ = compare.paired_ratio({0: 1.1, 1: 2.0}, {0: 1.0, 1: 2.0})
    m, half = math.log(1.1) / 2, 12.706 * math.log(1.1) / 2
    assert (ci.ratio, ci.lo95, ci.hi95, ci.n) == pytest.approx((math.exp(m), math.exp(m - half), math.exp(m + half), 2))


def test_one_pair_has_a_point_but_no_interval_and_none_has_nothing() -> None:
    one = compare.log_ratio_ci([math.log(0.9)])
    assert one.ratio == pytest.approx(0.9) and math.isnan(one.lo95) and math.isnan(one.hi95) and one.verdict == "–"
    assert compare.log_ratio_ci([]).n == 0 and math.isnan(compare.log_ratio_ci([]).ratio)


def test_verdict_needs_the_point_at_most_one_and_the_upper_bound_under_1_05() -> None:
    assert compare.RatioCI(0.99, 0.95, 1.04, 10).verdict == "pass"
    assert compare.RatioCI(1.00, 0.96, 1.049, 10).verdict == "pass"
    assert compare.RatioCI(0.99, 0.90, 1.06, 10).verdict == "fail"  # too wide to tell 1.00 from 1.05
    assert compare.RatioCI(1.01, 1.00, 1.02, 10).verdict == "fail"


def test_over_traces_uses_per_trace_mean_ratios_with_r_minus_one_dof() -> None:
    adaptive = {0: 10.0, 1: 12.0, 2: 9.0, 3: 11.5}
    static = {0: 10.5, 1: 12.1, 2: 9.6, 3: 11.4}
    ci = compare.over_traces(adaptive, static)
    ratio, lo, hi = scipy_ratio_ci([math.log(adaptive[t] / static[t]) for t in range(4)])
    assert ci.n == 4 and (ci.ratio, ci.lo95, ci.hi95) == pytest.approx((ratio, lo, hi), rel=1e-4)


def test_leave_one_out_picks_the_best_static_on_the_other_traces() -> None:
    # fixed:3 is best on traces 1 and 2, fixed:5 only on trace 0 (where it got lucky).
    means = {"fixed:3": {0: 10.0, 1: 8.0, 2: 8.0}, "fixed:5": {0: 7.0, 1: 9.0, 2: 9.5}, "off": {0: 12.0, 1: 12.0,
                                                                                                  2: 12.0}}
    assert compare.loo_best_static(means, 0) == "fixed:3"  # 8.0 vs 9.25 on traces 1, 2
    assert compare.loo_best_static(means, 1) == "fixed:5"  # (7 + 9.5) / 2 = 8.25 < (10 + 8) / 2 = 9
    assert compare.loo_best_static(means, 2) == "fixed:5"  # (7 + 9) / 2 = 8 < 9
    adaptive = {0: 9.0, 1: 8.5, 2: 8.8}
    ci, chosen, hindsight = compare.vs_selected_best(adaptive, means)
    assert chosen == {0: "fixed:3", 1: "fixed:5", 2: "fixed:5"} and not hindsight
    expected = scipy_ratio_ci([math.log(9.0 / 10.0), math.log(8.5 / 9.0), math.log(8.8 / 9.5)])
    assert (ci.ratio, ci.lo95, ci.hi95) == pytest.approx(expected, rel=1e-4)
    # The hindsight choice per trace would have been fixed:5, fixed:3, fixed:3: a different (biased) comparison.
    one, chosen1, hindsight1 = compare.vs_selected_best({0: 9.0}, {p: {0: m[0]} for p, m in means.items()})
    assert hindsight1 and chosen1 == {0: "fixed:5"} and one.ratio == pytest.approx(9.0 / 7.0) and one.n == 1


def rec(policy: str, e2e: float | None, *, rate: float = 1.0, trace: int = 0, seq: int = 0, error: str | None = None,
        phase: str = "", workload: str = "humaneval") -> RequestRecord:
    return RequestRecord(policy, rate, workload, 0.0, 0.1, e2e, error=error, phase=phase, trace=trace, seq=seq)


def test_labels_every_goodput_variant_is_adaptive_and_off_fixed_are_static() -> None:
    assert all(is_adaptive(p) for p in ("goodput", "goodput+controller", "goodput-uniform",
                                        "goodput-uniform+controller"))
    assert all(is_static(p) for p in ("off", "fixed:1", "fixed:8")) and not is_static("goodput")
    assert not is_adaptive("off") and not is_static("offline")


def test_closed_loop_table_pairs_by_request_index_and_skips_failures() -> None:
    a = [rec("goodput-uniform", x, seq=i, phase="closed-loop") for i, x in enumerate((5.0, 6.0, 7.0))]
    a.append(rec("goodput-uniform", None, seq=3, error="HTTP 500: boom"))
    s = [rec("fixed:4", x, seq=i, phase="closed-loop") for i, x in reversed(list(enumerate((5.5, 6.1, 7.7, 9.0))))]
    rows = compare.closed_loop_table(a + s)
    assert len(rows) == 1  # one static: no separate best-static row
    row = rows[0]
    expected = scipy_ratio_ci([math.log(5 / 5.5), math.log(6 / 6.1), math.log(7 / 7.7)])
    assert (row["adaptive"], row["static"], row["n"], row["unit"]) == ("goodput-uniform", "fixed:4", 3, "requests")
    assert (row["ratio"], row["lo95"], row["hi95"]) == pytest.approx(expected, rel=1e-4)
    assert row["ratio_of_means"] == pytest.approx(18.0 / 19.3)


def test_the_closed_loops_cross_fit_best_static_is_chosen_on_the_other_half_of_the_requests() -> None:
    # fixed:3 wins the even requests and fixed:5 the odd ones; fixed:3 has the lower mean over all of them.
    lat = {"goodput": (10.0, 10.0, 10.0, 10.0), "fixed:3": (9.0, 12.0, 9.0, 12.0), "fixed:5": (12.0, 9.5, 12.0, 9.5)}
    records = [rec(p, x, seq=i, phase="closed-loop") for p, xs in lat.items() for i, x in enumerate(xs)]
    rows = {r["static"]: r for r in compare.closed_loop_table(records)}
    hindsight, cross = rows["best static"], rows["best static (cross-fit)"]
    assert hindsight["selected"] == "fixed:3 (hindsight)"
    assert hindsight["ratio"] == pytest.approx(math.sqrt(10 / 9 * 10 / 12))
    # Even requests against the odd half's winner (fixed:5, 12 s there), odd ones against fixed:3 (12 s there).
    assert cross["selected"] == "fixed:5 / fixed:3 (chosen on the other half)" and cross["n"] == 4
    assert (cross["ratio"], cross["lo95"], cross["hi95"]) == pytest.approx((10 / 12,) * 3)


def test_loaded_table_over_traces_with_selected_best_and_every_static() -> None:
    records = []
    trace_means = {"goodput": (9.0, 8.5, 8.8), "fixed:3": (10.0, 8.0, 8.0), "fixed:5": (7.0, 9.0, 9.5)}
    for policy, ms in trace_means.items():
        for t, m in enumerate(ms):
            records += [rec(policy, m - 1.0, trace=t, seq=0), rec(policy, m + 1.0, trace=t, seq=1)]  # mean m
    rows = compare.loaded_table(records)
    assert [r["static"] for r in rows] == ["best static", "fixed:3", "fixed:5"]
    best = rows[0]
    assert best["selected"] == "fixed:5 ×2, fixed:3 ×1 (leave-one-out)" and best["n"] == 3
    expected = scipy_ratio_ci([math.log(9.0 / 10.0), math.log(8.5 / 9.0), math.log(8.8 / 9.5)])
    assert (best["ratio"], best["lo95"], best["hi95"]) == pytest.approx(expected, rel=1e-4)
    vs3 = rows[1]
    assert vs3["ratio"] == pytest.approx(math.exp(np.mean(np.log(np.array([9, 8.5, 8.8]) / np.array([10, 8, 8])))))
    assert vs3["ratio_of_means"] == pytest.approx((9 + 8.5 + 8.8) / 26.0)


def test_source_means_split_a_mixed_workload() -> None:
    records = [rec("off", 2.0, seq=0, workload="humaneval"), rec("off", 4.0, seq=1, workload="gsm8k"),
               rec("off", 6.0, seq=2, workload="humaneval"),
               rec("off", 1.0, rate=0.0, seq=0, workload="gsm8k", phase="closed-loop")]
    rows = compare.source_means(records)
    assert [(r["point"], r["source"], r["requests"], r["mean_s"]) for r in rows] == [
        ("closed loop", "gsm8k", 1, 1.0), ("rate 1", "gsm8k", 1, 4.0), ("rate 1", "humaneval", 2, 4.0)]
