"""Simulated acceptance: per-request conditional acceptance rates per draft position, from a spec like `beta:7,3`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from smartspec.errors import InvalidRequest

Kind = Literal["fixed", "beta", "profile"]
KINDS: dict[str, Kind] = {"fixed": "fixed", "beta": "beta", "profile": "profile"}


@dataclass(frozen=True)
class AcceptanceProfile:
    """How each request's acceptance is drawn.

    `fixed:α` every request accepts each draft with probability α given the previous one passed;
    `beta:a,b` each request gets its own α_i ~ Beta(a, b) (geometric per request);
    `profile:c1,c2,…` one conditional rate per draft position for every request (the last repeats).
    """

    kind: Kind
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.kind == "fixed" and not (len(self.values) == 1 and 0.0 <= self.values[0] <= 1.0):
            raise InvalidRequest(f"fixed acceptance needs one rate in [0, 1], got {self.values}", param="acceptance")
        if self.kind == "beta" and not (len(self.values) == 2 and min(self.values) > 0):
            raise InvalidRequest(f"beta acceptance needs a,b > 0, got {self.values}", param="acceptance")
        if self.kind == "profile" and not (self.values and all(0.0 <= v <= 1.0 for v in self.values)):
            raise InvalidRequest(f"an acceptance profile needs rates in [0, 1], got {self.values}", param="acceptance")

    def draw(self, n: int, k: int, rng: np.random.Generator) -> np.ndarray:
        """[n, k] conditional acceptance rates: row i is request i's P(draft j passes | drafts < j passed)."""
        if self.kind == "fixed":
            return np.full((n, k), self.values[0])
        if self.kind == "beta":
            alpha = rng.beta(self.values[0], self.values[1], size=n)
            return np.repeat(alpha[:, None], k, axis=1)
        prof = np.array(self.values + (self.values[-1],) * max(0, k - len(self.values)))[:k]
        return np.tile(prof, (n, 1))

    @property
    def mean(self) -> float:
        """Mean first-position acceptance rate over requests."""
        if self.kind == "beta":
            a, b = self.values
            return a / (a + b)
        return self.values[0]

    def label(self) -> str:
        return f"{self.kind}:{','.join(f'{v:g}' for v in self.values)}"


def parse_acceptance(text: str) -> AcceptanceProfile:
    """`fixed:0.8`, `beta:7,3` or `profile:0.9,0.8,0.7` (a bare number means fixed)."""
    kind, _, rest = text.partition(":")
    if not rest:
        kind, rest = "fixed", text
    if kind not in KINDS:
        raise InvalidRequest(f"unknown acceptance {text!r}; use fixed:A, beta:A,B or profile:C1,C2,…",
                             param="acceptance")
    try:
        values = tuple(float(x) for x in rest.split(",") if x.strip())
    except ValueError:
        raise InvalidRequest(f"acceptance {text!r}: expected numbers after '{kind}:'", param="acceptance") from None
    return AcceptanceProfile(KINDS[kind], values)
