"""The load sweep's settings: policies and rates as typed, the configuration, one point's record, its CSV files."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from smartspec.loadtest.loadgen import Phase

DEFAULT_POLICIES = "off,fixed:1,fixed:3,fixed:5,fixed:7,goodput"
ADAPTIVE_MODES = ("goodput", "goodput-uniform")  # `smartspec up --policy` modes that choose k from load
# Settings an older results folder's sweep.json lacks, and what that folder ran (for --resume).
LEGACY_SETTINGS: dict[str, Any] = {"traces": 1, "closed_loop": 0, "interleave": False}


# ---------------------------------------------------------------------------------------------
# Policies


@dataclasses.dataclass(frozen=True)
class PolicyArm:
    label: str  # as in the records: "off", "fixed:3", "goodput", "goodput-uniform+controller", …
    mode: str  # smartspec up --policy
    fixed_k: int
    controller: bool

    def up_args(self) -> list[str]:
        args = ["--policy", self.mode, "--fixed-k", str(self.fixed_k)]
        return args if self.controller else [*args, "--no-controller"]


def parse_policies(text: str, controller: bool = False) -> list[PolicyArm]:
    """`off`, `fixed:K` (K in 1..8), `goodput`, `goodput-uniform` (one k for the whole batch every step); a
    `+controller` suffix runs that policy with the controller on whatever `controller` (the --controller flag)
    says for the others."""
    out = []
    for raw in (p.strip() for p in text.split(",")):
        if not raw:
            continue
        base, plus, suffix = raw.partition("+")
        if plus and suffix != "controller":
            raise ValueError(f"policy {raw!r}: the only suffix is '+controller'")
        with_controller = controller or bool(plus)
        if base == "off":
            spec = PolicyArm(raw, "off", 0, with_controller)
        elif base in ADAPTIVE_MODES:
            spec = PolicyArm(raw, base, 3, with_controller)
        elif base.startswith("fixed:"):
            try:
                k = int(base.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"policy {raw!r}: fixed:K needs an integer K") from None
            if not 1 <= k <= 8:
                raise ValueError(f"policy {raw!r}: K must be in 1..8 (the target's max k)")
            spec = PolicyArm(raw, "fixed", k, with_controller)
        else:
            raise ValueError(f"unknown policy {raw!r}; use off, fixed:K, goodput, goodput-uniform "
                             "(each may end in +controller)")
        out.append(spec)
    labels = [p.label for p in out]
    if not out or len(set(labels)) != len(labels):
        raise ValueError(f"--policies must name distinct policies, got {text!r}")
    return out


def parse_rates(text: str) -> list[float]:
    """Comma-separated positive req/s, sorted and unique; `none` runs no open-loop rate point."""
    if text.strip() == "none":
        return []
    try:
        rates = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise ValueError(f"--rates must be comma-separated numbers or none, got {text!r}") from None
    if not rates or any(not (r > 0 and math.isfinite(r)) for r in rates):
        raise ValueError(f"--rates must be positive, got {text!r}")
    return sorted(set(rates))


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass
class LoadSweepConfig:
    policies: list[PolicyArm]
    rates: list[float]
    out: Path
    requests: int | None = 20  # per rate and trace (with duration_s: at least this many)
    duration_s: float | None = None  # arrivals during this long per rate and trace
    traces: int = 1  # independent arrival traces per rate and of the dynamic trace, every policy on the same ones
    closed_loop: int = 0  # requests of the closed-loop point (0: none)
    interleave: bool = False  # every policy's stack up at once, requests and traces sent to them in turn
    workload: str = "humaneval"
    max_tokens: int | None = None  # None: the workload's default
    cv: float = 1.0  # inter-arrival coefficient of variation (1: Poisson)
    trace: Sequence[Phase] | None = None
    trace_text: str = ""
    models: str = "real"
    dtype: str = "bfloat16"
    max_batch_size: int = 32
    draft_method: str = "draftModel"
    controller: bool = False
    emulate_acceptance: float | None = None
    warmup: int = 2
    seed: int = 0
    service: str = "bench"
    ready_timeout_s: float = 900.0
    request_timeout_s: float = 1800.0
    settle_s: float = 1.0
    log_dir: Path | None = None
    progress: bool = True
    resume: bool = False
    synthetic_words: int = 24


@dataclasses.dataclass
class Point:
    """One (policy, rate, trace) run, the closed loop or the dynamic trace: what the records alone do not say."""

    policy: str
    kind: str  # "rate" | "trace" (the dynamic --trace) | "closed"
    rate: float
    requests: int
    wall_s: float  # first send to last response
    start_unix: float
    end_unix: float
    mean_k: float = math.nan  # Σk / Σ running requests over the decode steps in the window
    mean_batch: float = math.nan
    steps: int = 0
    trace: int = 0  # which arrival trace of a rate point or repetition of the dynamic trace

    @property
    def window(self) -> str:
        """How steps.csv and the plots name the point's time window."""
        if self.kind == "rate":
            return f"rate {self.rate:g}" + (f" (trace {self.trace})" if self.trace else "")
        if self.kind == "closed":
            return "closed loop"
        return "trace" + (f" {self.trace}" if self.trace else "")


# ---------------------------------------------------------------------------------------------
# Files


def write_rows(path: Path, rows: Sequence[dict[str, Any]], fields: Sequence[str] | None = None) -> None:
    fields = list(fields or dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(v) for k, v in r.items()})


def _fmt(v: Any) -> Any:
    if not isinstance(v, float):
        return v
    return f"{v:.3f}" if abs(v) >= 1e6 else f"{v:.6g}"  # unix times keep their milliseconds


def read_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


POINT_FIELDS = [f.name for f in dataclasses.fields(Point)]
RATIO_FIELDS = ("point", "rate", "adaptive", "static", "selected", "ratio", "lo95", "hi95", "n", "unit",
                "ratio_of_means", "pass")

def load_points(path: Path) -> list[Point]:
    out = []
    for r in read_rows(path):
        out.append(Point(policy=r["policy"], kind=r["kind"], rate=float(r["rate"]), requests=int(r["requests"]),
                         wall_s=float(r["wall_s"]), start_unix=float(r["start_unix"]), end_unix=float(r["end_unix"]),
                         mean_k=float(r["mean_k"] or "nan"), mean_batch=float(r["mean_batch"] or "nan"),
                         steps=int(r["steps"] or 0), trace=int(r.get("trace") or 0)))  # older folders: trace 0
    return out


def default_out(tag: str) -> Path:
    """results/<date>-<tag> under the current directory (the repository's results/ when run from its root)."""
    return Path("results") / f"{dt.date.today().isoformat()}-{tag}"


def pooled(points: Sequence[Point]) -> tuple[float, float, float]:
    """(mean k, mean batch, wall s) of several traces of one rate: Σk and Σ running summed back from each point."""
    steps = sum(p.steps for p in points)
    running = sum(p.mean_batch * p.steps for p in points if p.steps)
    sum_k = sum(p.mean_k * p.mean_batch * p.steps for p in points if p.steps)
    return (sum_k / running if running else math.nan, running / steps if steps else math.nan,
            sum(p.wall_s for p in points))
