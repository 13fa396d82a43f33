"""The bounds on k: the largest K any part accepts, and the one function every part clamps k with."""

from __future__ import annotations

from numbers import Integral
from typing import SupportsInt

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
    return max(0, min([int(k), *(int(b) for b in bounds if b is not None)]))


def within(k: object, *bounds: SupportsInt | None) -> bool:
    """Whether `k` is an integer that `cap_k` leaves as it is (for checks that reject instead of clamping)."""
    return isinstance(k, Integral) and not isinstance(k, bool) and cap_k(k, *bounds) == k


def request_max_k(value: int | None, engine_k: int) -> int | None:
    """A request's own `speculation.max_k`, checked against the engine's K (the HTTP and gRPC APIs' check)."""
    if value is not None and not within(value, engine_k):
        raise InvalidRequest(f"speculation.max_k must be in [0, {engine_k}], got {value!r}",
                             param="speculation.max_k")
    return value
