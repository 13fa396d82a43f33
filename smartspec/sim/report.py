"""Per-request records of a load sweep (measured or simulated) and the summaries both sweeps print.

One `RequestRecord` per finished (or failed) request; `summarize` groups them by (policy, rate);
`ratio_table` is the paper's comparison: each policy's mean latency per rate, and the goodput
policy's ratio to the best static policy at that rate (the per-rate oracle in hindsight) and to
no speculation. Plots and file layout live with the runners; these are the shared numbers.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

STATIC_PREFIXES = ("off", "fixed:")
ADAPTIVE = "goodput"
CLOSED_LOOP_PHASE = "closed-loop"  # the `phase` of every request of a closed-loop point


def is_static(policy: str) -> bool:
    """off and fixed:K: the policies an adaptive one must never lose to."""
    return policy == "off" or policy.startswith("fixed:")


def is_adaptive(policy: str) -> bool:
    """Every goodput variant (goodput, goodput-uniform, their +controller runs, …) decides k from load."""
    return policy.startswith(ADAPTIVE)


@dataclasses.dataclass
class RequestRecord:
    policy: str  # "off", "fixed:3", "goodput", "goodput+controller", …
    rate: float  # offered load, requests/s (the phase's rate for a dynamic trace)
    workload: str  # "humaneval", "synthetic", …
    arrival_s: float  # when it was sent, from the start of the run
    ttft_s: float | None  # first token
    e2e_s: float | None  # last token
    prompt_tokens: int = 0
    completion_tokens: int = 0
    itl_mean_s: float | None = None  # mean gap between streamed chunks after the first
    drafted_tokens: int = 0  # from the server's speculation usage
    accepted_tokens: int = 0
    error: str | None = None
    source: str = "measured"  # "measured" | "simulated"
    acceptance_emulated: bool = False  # acceptance drawn with probability α, not by the target (see README)
    phase: str = ""  # dynamic traces: the phase's name; "closed-loop" for a closed-loop point
    trace: int = 0  # which independent arrival trace of its (policy, rate) point (bench sweep --traces)
    seq: int = 0  # the request's index within its point: the same prompt for every policy (pairs requests)


def write_csv(path: Path, records: Iterable[RequestRecord]) -> None:
    rows = [dataclasses.asdict(r) for r in records]
    fields = [f.name for f in dataclasses.fields(RequestRecord)]
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def read_csv(path: Path) -> list[RequestRecord]:
    out = []
    types = {f.name: f.type for f in dataclasses.fields(RequestRecord)}
    with path.open() as f:
        for row in csv.DictReader(f):
            kw: dict[str, Any] = {}
            for k, v in row.items():
                t = str(types[k])
                if v == "" and ("None" in t or t == "str"):
                    kw[k] = None if "None" in t else ""
                elif t.startswith("float"):
                    kw[k] = float(v)
                elif t.startswith("int"):
                    kw[k] = int(v)
                elif t == "bool":
                    kw[k] = v == "True"
                else:
                    kw[k] = v
            out.append(RequestRecord(**kw))
    return out


def _pct(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return math.nan
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


# Two-sided 95 % Student-t critical values for 1…30 degrees of freedom (points are often 6–40 requests).
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t95(dof: int) -> float:
    """The 95 % confidence half-width multiplier for a mean of dof + 1 samples (Student-t 0.975 quantile)."""
    if dof < 1:
        return math.nan
    if dof <= len(_T95):
        return _T95[dof - 1]
    # Above 30 d.o.f. the Cornish-Fisher expansion around the normal quantile is exact to < 1e-5
    # (1.96 alone would understate the interval by 2-3 % at the 40-100 requests a point has).
    z, v = 1.959963984540054, float(dof)
    return (z + (z**3 + z) / (4 * v) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4))


def _busy_span(ok: list[RequestRecord]) -> float:
    """First arrival to last completion within each arrival trace, summed over the traces: each trace's clock
    starts at 0 and the traces ran one after another, so a single span over all of them is one trace long."""
    traces: dict[int, list[RequestRecord]] = {}
    for r in ok:
        traces.setdefault(r.trace, []).append(r)
    return sum(max(r.arrival_s + float(r.e2e_s or 0) for r in rs) - min(r.arrival_s for r in rs)
               for rs in traces.values())


def summarize(records: Iterable[RequestRecord]) -> list[dict[str, Any]]:
    """One row per (policy, rate): latency mean/p50/p99 (with a 95% CI of the mean), TTFT, ITL, throughput."""
    groups: dict[tuple[str, float], list[RequestRecord]] = {}
    for r in records:
        groups.setdefault((r.policy, r.rate), []).append(r)
    rows = []
    for (policy, rate), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        ok = [r for r in rs if r.error is None and r.e2e_s is not None]
        e2e = [float(r.e2e_s) for r in ok if r.e2e_s is not None]
        sd = math.sqrt(sum((x - _mean(e2e)) ** 2 for x in e2e) / (len(e2e) - 1)) if len(e2e) > 1 else math.nan
        span = _busy_span(ok) if ok else math.nan
        drafted = sum(r.drafted_tokens for r in ok)
        rows.append({
            "policy": policy, "rate": rate, "requests": len(rs), "errors": len(rs) - len(ok),
            "mean_s": _mean(e2e), "ci95_s": t95(len(e2e) - 1) * sd / math.sqrt(len(e2e)) if len(e2e) > 1 else math.nan,
            "p50_s": _pct(e2e, 0.5), "p99_s": _pct(e2e, 0.99),
            "ttft_mean_s": _mean([float(r.ttft_s) for r in ok if r.ttft_s is not None]),
            "itl_mean_s": _mean([float(r.itl_mean_s) for r in ok if r.itl_mean_s is not None]),
            "tokens_per_s": sum(r.completion_tokens for r in ok) / span if span and span > 0 else math.nan,
            "acceptance": sum(r.accepted_tokens for r in ok) / drafted if drafted else math.nan,
            "tokens_per_request": _mean([float(r.completion_tokens) for r in ok]),
        })
    return rows


def _per_rate(rows: list[dict[str, Any]], adaptive: str) -> list[tuple[float, dict[str, float], str | None, float]]:
    """(rate, each policy's mean latency, the fastest static policy or None, the adaptive policy's mean)."""
    by_rate: dict[float, dict[str, float]] = {}
    for r in rows:
        by_rate.setdefault(r["rate"], {})[r["policy"]] = r["mean_s"]
    out = []
    for rate, means in sorted(by_rate.items()):
        static = {p: m for p, m in means.items() if is_static(p) and not math.isnan(m)}
        best = min(static, key=lambda p: static[p]) if static else None
        out.append((rate, means, best, means.get(adaptive, math.nan)))
    return out


def _speedup_vs_off(means: dict[str, float], ours: float) -> float:
    return means["off"] / ours if "off" in means and ours else math.nan


def ratio_table(rows: list[dict[str, Any]], adaptive: str = ADAPTIVE) -> list[dict[str, Any]]:
    """Per rate: every policy's mean latency, the best static policy, and the adaptive policy's ratios.

    `vs_best_static` = adaptive mean / best static mean (≤ 1.00 is the goal: never worse than the
    best fixed choice in hindsight); `speedup_vs_off` = off mean / adaptive mean (≥ 1.3× at light load)."""
    return [{"rate": rate, **{f"mean_s[{p}]": m for p, m in sorted(means.items())},
             "best_static": best, "vs_best_static": ours / means[best] if best else math.nan,
             "speedup_vs_off": _speedup_vs_off(means, ours)}
            for rate, means, best, ours in _per_rate(rows, adaptive)]


def markdown(rows: list[dict[str, Any]], columns: list[str] | None = None, digits: int = 3) -> str:
    if not rows:
        return "(no rows)\n"
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "–" if math.isnan(v) else f"{v:.{digits}f}"
        return "–" if v is None else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def oracle_table(rows: list[dict[str, Any]], adaptive: str = ADAPTIVE) -> list[dict[str, Any]]:
    """Per rate: the best static policy in hindsight among every static one present (off = fixed:0), and the
    adaptive policy's mean latency against it (`vs_oracle` ≤ 1.03 is the simulator goal) and against off."""
    return [{"rate": rate, "oracle": best, "oracle_mean_s": means[best] if best else math.nan,
             f"{adaptive}_mean_s": ours, "vs_oracle": ours / means[best] if best else math.nan,
             "speedup_vs_off": _speedup_vs_off(means, ours)}
            for rate, means, best, ours in _per_rate(rows, adaptive)]


def cpu_name() -> str:
    """The CPU model and count from /proc/cpuinfo (the machine line every report prints), else the platform's."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return f"{names[0]} x{len(names)}" if names else cpu
    except OSError:
        return cpu


def write_rows_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Summary rows (e.g. `summarize`'s) as CSV, columns in first-seen order."""
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
