"""Simulated workloads: arrival processes (Poisson, gamma-bursty, phased traces), prompt/output lengths, acceptance."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smartspec.errors import InvalidRequest
from smartspec.sim.acceptance import AcceptanceProfile
from smartspec.sim.trace import Phase


@dataclass(frozen=True)
class SimRequest:
    """One request of a simulated run: when it arrives, how long it is, how well its drafts do."""

    seq_id: int
    arrival_s: float
    prompt_len: int
    output_len: int
    accept: tuple[float, ...]  # conditional acceptance per draft position (the truth the engine draws from)
    rate: float  # offered load of its phase, requests/s
    phase: str = ""
    # Recorded draft/target agreement per output position (smartspec.sim.replay): when given, a draft at
    # output position t passes iff agreement[t] (positions past its end pass), and `accept` is not drawn from.
    agreement: tuple[bool, ...] = ()


@dataclass(frozen=True)
class LengthSpec:
    """`fixed:N`, `uniform:A,B` (inclusive), `lognormal:MEDIAN,SIGMA[,MAX]` or `replay:FILE.csv[:column]`."""

    kind: str
    values: tuple[float, ...] = ()
    replay: tuple[int, ...] = ()  # replay: the lengths of a recorded run, in order (cycled)

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if self.kind == "fixed":
            return np.full(n, int(self.values[0]))
        if self.kind == "uniform":
            return rng.integers(int(self.values[0]), int(self.values[1]) + 1, size=n)
        if self.kind == "lognormal":
            median, sigma = self.values[0], self.values[1]
            cap = self.values[2] if len(self.values) > 2 else 8 * median
            return np.clip(np.rint(rng.lognormal(np.log(median), sigma, size=n)), 1, cap).astype(int)
        return np.resize(np.array(self.replay, dtype=int), n)

    def label(self) -> str:
        if self.kind == "replay":
            return f"replay ({len(self.replay)} recorded, mean {np.mean(self.replay):.0f})"
        return f"{self.kind}:{','.join(f'{v:g}' for v in self.values)}"


def parse_lengths(text: str, column: str = "completion_tokens") -> LengthSpec:
    """A length distribution; `replay:FILE.csv` reads `column` of a bench records CSV."""
    kind, _, rest = text.partition(":")
    if kind == "replay":
        from smartspec.sim.report import read_csv

        path, _, col = rest.partition(":")
        col = col or column
        try:
            rows = read_csv(Path(path))
            lengths = tuple(int(getattr(r, col)) for r in rows if r.error is None and int(getattr(r, col)) > 0)
        except (OSError, AttributeError, ValueError, KeyError) as exc:
            raise InvalidRequest(f"cannot replay lengths from {path}: {exc}", param="lengths") from None
        if not lengths:
            raise InvalidRequest(f"no {col} values in {path}", param="lengths")
        return LengthSpec("replay", replay=lengths)
    try:
        values = tuple(float(x) for x in rest.split(",") if x.strip())
    except ValueError:
        raise InvalidRequest(f"lengths {text!r}: expected numbers after '{kind}:'", param="lengths") from None
    need = {"fixed": (1, 1), "uniform": (2, 2), "lognormal": (2, 3)}
    if kind not in need:
        raise InvalidRequest(f"unknown lengths {text!r}; use fixed:N, uniform:A,B, lognormal:MEDIAN,SIGMA[,MAX] "
                             "or replay:FILE.csv", param="lengths")
    lo, hi = need[kind]
    if not lo <= len(values) <= hi or min(values) <= 0 or (kind == "uniform" and values[0] > values[1]):
        raise InvalidRequest(f"lengths {text!r}: wrong or non-positive parameters", param="lengths")
    return LengthSpec(kind, values)


@dataclass(frozen=True)
class Arrivals:
    """Inter-arrival gaps: Poisson (cv = 1, exponential gaps) or gamma with coefficient of variation cv; or the
    gaps of a recorded run, replayed in order whatever the rate (a measured point compared with its simulation)."""

    cv: float = 1.0
    poisson: bool = True
    replay: tuple[float, ...] = ()  # recorded gaps, the first 0

    def gaps(self, n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
        if self.replay:
            if n > len(self.replay):
                raise InvalidRequest(f"{n} requests but {len(self.replay)} recorded arrivals to replay",
                                     param="arrivals")
            return np.array(self.replay[:n])
        if self.poisson:
            return rng.exponential(1.0 / rate, size=n)
        shape = 1.0 / self.cv**2
        return rng.gamma(shape, 1.0 / (rate * shape), size=n)

    def label(self) -> str:
        if self.replay:
            return f"replay ({len(self.replay)} recorded)"
        return "poisson" if self.poisson else f"gamma:{self.cv:g}"


def parse_arrivals(text: str) -> Arrivals:
    """`poisson`, `gamma:CV` (CV = 1 is Poisson; larger is burstier) or `replay:RECORDS.csv` (the `arrival_s` of a
    bench records CSV, in time order)."""
    if text == "poisson":
        return Arrivals()
    if text.startswith("replay:"):
        from smartspec.sim.report import read_csv

        path = text.partition(":")[2]
        try:
            times = sorted(r.arrival_s for r in read_csv(Path(path)) if r.error is None)
        except (OSError, AttributeError, ValueError, KeyError) as exc:
            raise InvalidRequest(f"cannot replay arrivals from {path}: {exc}", param="arrivals") from None
        if not times:
            raise InvalidRequest(f"no arrivals in {path}", param="arrivals")
        return Arrivals(replay=tuple(float(x) for x in np.diff(times, prepend=times[0])))
    kind, _, rest = text.partition(":")
    try:
        cv = float(rest)
    except ValueError:
        cv = -1.0
    if kind != "gamma" or cv <= 0:
        raise InvalidRequest(f"unknown arrivals {text!r}; use poisson, gamma:CV with CV > 0 or replay:RECORDS.csv",
                             param="arrivals")
    return Arrivals(cv=cv, poisson=False)


@dataclass(frozen=True)
class WorkloadSpec:
    """Everything that defines a run's requests except the rate; the same seed gives the same requests
    (unit-rate gaps scaled by 1/rate, same lengths, same acceptance) at every rate and for every policy."""

    prompt_len: LengthSpec
    output_len: LengthSpec
    acceptance: AcceptanceProfile
    arrivals: Arrivals
    max_k: int
    seed: int = 0

    def _streams(self) -> list[np.random.Generator]:
        return [np.random.default_rng(s) for s in np.random.SeedSequence(self.seed).spawn(4)]

    def requests(self, n: int, rate: float) -> list[SimRequest]:
        """n requests arriving at `rate` requests/s; the first arrives at t = 0."""
        if rate <= 0 or n < 1:
            raise InvalidRequest(f"need rate > 0 and at least one request, got rate {rate}, {n} requests")
        gap_rng, prompt_rng, out_rng, acc_rng = self._streams()
        gaps = self.arrivals.gaps(n, rate, gap_rng)
        arrivals = np.cumsum(gaps) - gaps[0]
        return self._build(arrivals, [rate] * n, [""] * n, prompt_rng, out_rng, acc_rng)

    def trace(self, phases: Sequence[Phase]) -> list[SimRequest]:
        """Requests of a phased trace, back to back: a timed phase draws arrivals at its rate until its duration
        is over (at rate 0 it is a pause), a counted phase sends that many requests at its rate and ends at the
        last one; the next phase's first request comes one of its own gaps later."""
        if self.arrivals.replay:
            raise InvalidRequest("a trace draws its own arrivals; replayed arrivals go with --rates", param="trace")
        gap_rng, prompt_rng, out_rng, acc_rng = self._streams()
        times: list[float] = []
        rates: list[float] = []
        names: list[str] = []
        start = 0.0
        for phase in phases:
            name = phase.name or phase.describe()
            if phase.is_pause:
                start += float(phase.duration_s or 0.0)
                continue
            t, sent = start, 0
            while phase.count is None or sent < phase.count:
                t += float(self.arrivals.gaps(1, phase.rate, gap_rng)[0])
                if phase.duration_s is not None and t >= start + phase.duration_s:
                    break
                times.append(t)
                rates.append(phase.rate)
                names.append(name)
                sent += 1
            start = start + phase.duration_s if phase.duration_s is not None else t
        if not times:
            raise InvalidRequest("the trace produced no requests (rates × durations too small)", param="trace")
        return self._build(np.array(times), rates, names, prompt_rng, out_rng, acc_rng)

    def _build(self, arrivals: np.ndarray, rates: list[float], phases: list[str], prompt_rng: np.random.Generator,
               out_rng: np.random.Generator, acc_rng: np.random.Generator) -> list[SimRequest]:
        n = len(arrivals)
        prompts = self.prompt_len.draw(n, prompt_rng)
        outputs = self.output_len.draw(n, out_rng)
        accept = self.acceptance.draw(n, max(self.max_k, 1), acc_rng)
        return [SimRequest(i, float(arrivals[i]), int(prompts[i]), int(outputs[i]),
                           tuple(float(a) for a in accept[i]), float(rates[i]), phases[i]) for i in range(n)]
