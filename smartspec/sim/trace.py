"""The one dynamic-trace grammar (`60s@1,2m@4,30@0.5,10s@0`) that `smartspec bench sweep` and `sim sweep` read."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

GRAMMAR = "DURATIONs@RATE, DURATIONm@RATE or COUNT@RATE"

# One phase: an amount with an optional unit (s, m; none = a request count), then @ and a rate in req/s.
_PHASE = re.compile(r"^\s*(?P<amount>\d+(?:\.\d+)?)(?P<unit>[sm])?\s*@\s*(?P<rate>\d+(?:\.\d+)?)\s*$")


@dataclass(frozen=True)
class Phase:
    """One phase of a dynamic trace: `rate` req/s for `duration_s` seconds, or for `count` requests.

    A timed phase at rate 0 is an idle pause; a counted phase needs a positive rate (its gaps are 1/rate)."""

    rate: float
    duration_s: float | None = None
    count: int | None = None
    name: str = ""

    def __post_init__(self) -> None:
        if (self.duration_s is None) == (self.count is None):
            raise ValueError("a phase has either a duration or a request count")
        if not math.isfinite(self.rate) or self.rate < 0 or (self.rate == 0 and self.count is not None):
            raise ValueError(f"phase rate must be > 0 (or 0 for an idle duration), got {self.rate}")
        if (self.duration_s is not None and not 0 < self.duration_s < math.inf) or (
                self.count is not None and self.count <= 0):
            raise ValueError("phase duration/count must be positive")

    @property
    def is_pause(self) -> bool:
        return self.rate == 0

    def describe(self) -> str:
        """For reports: `1/s for 60 s`, `30 requests at 0.5/s`, `pause 10 s`."""
        if self.is_pause:
            return f"pause {self.duration_s:g} s"
        if self.count is not None:
            return f"{self.count} requests at {self.rate:g}/s"
        return f"{self.rate:g}/s for {self.duration_s:g} s"


def parse_trace(text: str) -> tuple[Phase, ...]:
    """`"60s@1,2m@4,30@0.5,10s@0"`: 60 s at 1 req/s, 2 min at 4 req/s, 30 requests at 0.5 req/s, a 10 s pause.

    A bare number before `@` is a request count (so `1@60` is one request at 60 req/s, not 60 s at 1 req/s).
    Each phase is named `p<i>:<text>`. Raises ValueError naming the phase that does not parse."""
    parts = [p.strip() for p in text.split(",") if p.strip()]  # a trailing comma is harmless
    if not parts:
        raise ValueError(f"empty trace {text!r}: give phases {GRAMMAR}, comma-separated")
    phases = []
    for i, part in enumerate(parts):
        m = _PHASE.match(part)
        if not m:
            raise ValueError(f"trace phase {i + 1} {part!r}: expected {GRAMMAR} (e.g. 60s@1, 2m@4, 30@0.5)")
        amount, unit, rate = float(m["amount"]), m["unit"], float(m["rate"])
        name = f"p{i + 1}:{part}"
        try:
            if unit:
                phases.append(Phase(rate, duration_s=amount * (60 if unit == "m" else 1), name=name))
            elif amount != int(amount):
                raise ValueError("a request count must be an integer (add s or m for a duration)")
            else:
                phases.append(Phase(rate, count=int(amount), name=name))
        except ValueError as exc:
            raise ValueError(f"trace phase {i + 1} {part!r}: {exc}") from None
    if all(p.is_pause for p in phases):
        raise ValueError(f"trace {text!r} only pauses: no phase sends requests")
    return tuple(phases)
