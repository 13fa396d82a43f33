"""Adaptive vs static latency ratios with 95 % intervals: paired per request, over arrival traces, best static LOO."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from smartspec.sim.report import CLOSED_LOOP_PHASE, RequestRecord, is_adaptive, is_static, t95

# The pass criterion of the comparison (policy-diagnosis §6): never slower on the point estimate, and the
# interval excludes a 5 % loss.
PASS_POINT, PASS_UPPER = 1.00, 1.05
BEST_STATIC = "best static"
BEST_STATIC_CROSS_FIT = "best static (cross-fit)"


@dataclass(frozen=True)
class RatioCI:
    """exp(mean of log ratios) with its Student-t 95 % interval over the n log ratios (nan bounds when n < 2)."""

    ratio: float
    lo95: float
    hi95: float
    n: int

    @property
    def verdict(self) -> str:
        """`pass` (point ≤ 1.00 and upper bound < 1.05), `fail`, or `–` when there is no interval to judge."""
        if math.isnan(self.hi95):
            return "–"
        return "pass" if self.ratio <= PASS_POINT and self.hi95 < PASS_UPPER else "fail"


def log_ratio_ci(logs: Sequence[float]) -> RatioCI:
    """The geometric-mean ratio exp(x̄) and exp(x̄ ± t₀.₉₇₅(n−1)·s/√n) of log ratios x."""
    n = len(logs)
    if n == 0:
        return RatioCI(math.nan, math.nan, math.nan, 0)
    mean = math.fsum(logs) / n
    if n < 2:
        return RatioCI(math.exp(mean), math.nan, math.nan, n)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in logs) / (n - 1))
    half = t95(n - 1) * sd / math.sqrt(n)
    return RatioCI(math.exp(mean), math.exp(mean - half), math.exp(mean + half), n)


def _ok(r: RequestRecord) -> bool:
    return r.error is None and r.e2e_s is not None and r.e2e_s > 0


def paired_ratio(adaptive: Mapping[int, float], static: Mapping[int, float]) -> tuple[RatioCI, float]:
    """Per request i in both: log(adaptive_i / static_i); returns its interval and the ratio of the two means
    over the same requests. Pairing removes the prompt-to-prompt spread, which dominates a closed loop."""
    common = sorted(set(adaptive) & set(static))
    ci = log_ratio_ci([math.log(adaptive[i] / static[i]) for i in common])
    if not common:
        return ci, math.nan
    return ci, math.fsum(adaptive[i] for i in common) / math.fsum(static[i] for i in common)


def over_traces(adaptive: Mapping[int, float], static: Mapping[int, float]) -> RatioCI:
    """Per trace t in both: log(mean latency of adaptive on t / of static on t), with an interval over traces
    (R − 1 d.o.f.): under load requests of one trace queue behind each other, so only traces are independent."""
    return log_ratio_ci([math.log(adaptive[t] / static[t]) for t in sorted(set(adaptive) & set(static))])


def loo_best_static(static_means: Mapping[str, Mapping[int, float]], trace: int) -> str | None:
    """The static policy with the lowest mean of its per-trace means over every trace but `trace`: chosen on
    data the comparison does not use, so the minimum of several noisy means does not bias the ratio."""
    scores = {}
    for policy, by_trace in static_means.items():
        others = [m for t, m in by_trace.items() if t != trace]
        if others and trace in by_trace:
            scores[policy] = math.fsum(others) / len(others)
    return min(scores, key=lambda p: (scores[p], p)) if scores else None


def vs_selected_best(adaptive: Mapping[int, float],
                     static_means: Mapping[str, Mapping[int, float]]) -> tuple[RatioCI, dict[int, str], bool]:
    """Adaptive vs the best static policy of each trace: chosen on the other traces (leave-one-out) when there
    are ≥ 2, else in hindsight on the same trace. Returns the interval, the policy chosen per trace, and
    whether the choice was in hindsight."""
    traces = sorted(set(adaptive) & {t for m in static_means.values() for t in m})
    hindsight = len(traces) < 2
    chosen: dict[int, str] = {}
    logs = []
    for t in traces:
        if hindsight:
            present = {p: m[t] for p, m in static_means.items() if t in m}
            best = min(present, key=lambda p: (present[p], p)) if present else None
        else:
            best = loo_best_static(static_means, t)
        if best is not None:
            chosen[t] = best
            logs.append(math.log(adaptive[t] / static_means[best][t]))
    return log_ratio_ci(logs), chosen, hindsight


# ---------------------------------------------------------------------------------------------
# Tables from request records


def _latencies(records: Iterable[RequestRecord]) -> dict[str, dict[int, float]]:
    """policy → seq → e2e of the successful requests of one closed-loop point."""
    out: dict[str, dict[int, float]] = {}
    for r in records:
        if _ok(r):
            out.setdefault(r.policy, {})[r.seq] = float(r.e2e_s or 0.0)
    return out


def _by_rate(r: RequestRecord) -> float:
    return r.rate


def _trace_means(records: Iterable[RequestRecord],
                 point: Callable[[RequestRecord], float] = _by_rate) -> dict[float, dict[str, dict[int, float]]]:
    """point (the rate) → policy → trace → mean e2e of the successful requests of that trace."""
    sums: dict[tuple[float, str, int], list[float]] = {}
    for r in records:
        if _ok(r):
            sums.setdefault((point(r), r.policy, r.trace), []).append(float(r.e2e_s or 0.0))
    out: dict[float, dict[str, dict[int, float]]] = {}
    for (rate, policy, trace), xs in sorted(sums.items()):
        out.setdefault(rate, {}).setdefault(policy, {})[trace] = math.fsum(xs) / len(xs)
    return out


def _row(ci: RatioCI, **fields: Any) -> dict[str, Any]:
    return {**fields, "ratio": ci.ratio, "lo95": ci.lo95, "hi95": ci.hi95, "n": ci.n, "pass": ci.verdict}


def closed_loop_table(records: Iterable[RequestRecord]) -> list[dict[str, Any]]:
    """Per adaptive × static pair of a closed-loop point: the paired geometric-mean ratio (n = requests) and the
    ratio of mean latencies; then vs the static with the lowest mean over these requests (chosen in hindsight)
    and vs the best static chosen on the other half of the requests (cross_fit_best)."""
    lat = _latencies(records)
    statics = sorted(p for p in lat if is_static(p))
    rows = []
    for a in sorted(p for p in lat if is_adaptive(p)):
        for s in statics:
            ci, of_means = paired_ratio(lat[a], lat[s])
            rows.append(_row(ci, adaptive=a, static=s, selected="", ratio_of_means=of_means, unit="requests"))
        if len(statics) > 1:
            means = {s: math.fsum(lat[s].values()) / len(lat[s]) for s in statics}
            best = min(means, key=lambda s: (means[s], s))
            ci, of_means = paired_ratio(lat[a], lat[best])
            rows.append(_row(ci, adaptive=a, static=BEST_STATIC, selected=f"{best} (hindsight)",
                             ratio_of_means=of_means, unit="requests"))
            ci, chosen = cross_fit_best(lat[a], {s: lat[s] for s in statics})
            rows.append(_row(ci, adaptive=a, static=BEST_STATIC_CROSS_FIT, selected=chosen,
                             ratio_of_means=math.nan, unit="requests"))
    return rows


def cross_fit_best(adaptive: Mapping[int, float], statics: Mapping[str, Mapping[int, float]]) -> tuple[RatioCI, str]:
    """Adaptive vs the best static with the choice made on other requests: the requests split by parity of
    their index; each half is compared (paired, per request) with the static that had the lowest mean on the
    other half, and the two halves' log ratios make one interval. The minimum of several noisy means is
    biased low on the data it was picked from; this is not."""
    halves = [{i for i in adaptive if i % 2 == h} for h in (0, 1)]
    logs: list[float] = []
    picked = []
    for h in (0, 1):
        other = halves[1 - h]
        scores = {s: math.fsum(lat[i] for i in other if i in lat) / max(1, sum(i in lat for i in other))
                  for s, lat in statics.items()}
        best = min(scores, key=lambda s: (scores[s], s))
        picked.append(best)
        logs += [math.log(adaptive[i] / statics[best][i]) for i in sorted(halves[h]) if i in statics[best]]
    return log_ratio_ci(logs), f"{picked[0]} / {picked[1]} (chosen on the other half)"


def _chosen_text(chosen: Mapping[int, str], hindsight: bool) -> str:
    if hindsight:
        return f"{', '.join(sorted(set(chosen.values())))} (hindsight, same trace)"
    counts: dict[str, int] = {}
    for p in chosen.values():
        counts[p] = counts.get(p, 0) + 1
    return ", ".join(f"{p} ×{c}" for p, c in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))) + \
        " (leave-one-out)"


def loaded_table(records: Iterable[RequestRecord],
                 point: Callable[[RequestRecord], float] = _by_rate) -> list[dict[str, Any]]:
    """Per point (a rate; `point` maps a record to its point, e.g. one for a whole dynamic trace) and adaptive
    policy: vs the selected best static (leave-one-out over traces, or hindsight with one trace), then vs each
    static; the statistic is exp(mean over traces of log(mean_adaptive / mean_static)), n = traces.
    `ratio_of_means` pools every trace's requests."""
    pooled: dict[tuple[float, str], list[float]] = {}
    recs = list(records)
    for r in recs:
        if _ok(r):
            pooled.setdefault((point(r), r.policy), []).append(float(r.e2e_s or 0.0))
    mean = {k: math.fsum(v) / len(v) for k, v in pooled.items()}
    rows = []
    for rate, by_policy in _trace_means(recs, point).items():
        statics = {p: m for p, m in by_policy.items() if is_static(p)}
        for a in sorted(p for p in by_policy if is_adaptive(p)):
            if statics:
                ci, chosen, hindsight = vs_selected_best(by_policy[a], statics)
                rows.append(_row(ci, rate=rate, adaptive=a, static=BEST_STATIC,
                                 selected=_chosen_text(chosen, hindsight), ratio_of_means=math.nan, unit="traces"))
            for s in sorted(statics):
                ci = over_traces(by_policy[a], statics[s])
                rows.append(_row(ci, rate=rate, adaptive=a, static=s, selected="",
                                 ratio_of_means=mean[(rate, a)] / mean[(rate, s)], unit="traces"))
    return rows


def source_means(records: Iterable[RequestRecord]) -> list[dict[str, Any]]:
    """Mean latency per (point, policy, prompt source): what a mixed workload costs each of its halves."""
    groups: dict[tuple[bool, float, str, str], list[float]] = {}
    for r in records:
        if _ok(r):
            closed = r.phase == CLOSED_LOOP_PHASE  # the closed loop first, then the rates in order
            groups.setdefault((not closed, r.rate, r.policy, r.workload), []).append(float(r.e2e_s or 0.0))
    return [{"point": f"rate {rate:g}" if loaded else "closed loop", "policy": policy, "source": source,
             "requests": len(xs), "mean_s": math.fsum(xs) / len(xs)}
            for (loaded, rate, policy, source), xs in sorted(groups.items())]
