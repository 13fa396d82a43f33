"""The bounds on k: the largest K any part accepts, and the one function every part clamps k with."""

from __future__ import annotations

from numbers import Integral
from typing import SupportsInt

import numpy as np

from smartspec.errors import InvalidRequest

# The largest K anywhere: the CRD's bound on maxSpeculationLength, which the operator also gives its
# pods as their K capacity; the policy, the controller, the services' settings and the CLIs import it.
MAX_K_LIMIT = 16
# Policy versions stay integers a double holds exactly: Redis's Lua (the publish compare-and-set) and
# JSON readers compare them as doubles, and past 2^53 `v + 1 == v`, which would lock publishing for good.
MAX_POLICY_VERSION = 2**53 - 1
# What a part reads from Redis or a peer is bounded before it is parsed: a policy document or spec is a
# few kB; anything near this is not one.
MAX_DOCUMENT_BYTES = 64 * 1024
MAX_POLICY_EXPIRY_S = 86_400  # the CRD's bound on policyExpirySeconds; a document never lives longer


def cap_k(k: SupportsInt, *bounds: SupportsInt | None) -> int:
    """`k` within every bound given (None: that bound does not apply), never below 0."""
    out = int(k)
    for bound in bounds:  # a loop, not min() over a generator: the scheduler calls this per request per step
        if bound is not None and int(bound) < out:
            out = int(bound)
    return out if out > 0 else 0


def cap_ks(ks: np.ndarray, *bounds: SupportsInt | None) -> np.ndarray:
    """`cap_k` of every entry of an integer array (the policy's per-request caps, at once)."""
    out = np.asarray(ks, dtype=int)
    for bound in bounds:
        if bound is not None:
            out = np.minimum(out, int(bound))
    return np.maximum(out, 0)


def within(k: object, *bounds: SupportsInt | None) -> bool:
    """Whether `k` is an integer that `cap_k` leaves as it is (for checks that reject instead of clamping)."""
    return isinstance(k, Integral) and not isinstance(k, bool) and cap_k(k, *bounds) == k


def request_max_k(value: int | None, engine_k: int) -> int | None:
    """A request's own `speculation.max_k`, checked against the engine's K (the HTTP and gRPC APIs' check)."""
    if value is not None and not within(value, engine_k):
        raise InvalidRequest(f"speculation.max_k must be in [0, {engine_k}], got {value!r}",
                             param="speculation.max_k")
    return value
