"""The one clamp on k and the one K limit every part imports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from smartspec.errors import InvalidRequest
from smartspec.policy.limits import MAX_K_LIMIT, cap_k, request_max_k, within

CRD = Path(__file__).resolve().parents[3] / "helm" / "smartspec" / "crds" / "speculationpolicies.smartspec.io.yaml"


def test_cap_k_takes_every_bound_given_and_never_goes_below_zero() -> None:
    assert cap_k(7, 8, 5) == 5
    assert cap_k(7) == 7  # no bound
    assert cap_k(7, None, 6, None) == 6  # None: that bound does not apply
    assert cap_k(3, 8, -1) == 0  # e.g. a request with nothing left to emit: remaining - 1 < 0
    assert cap_k(-2, 8) == 0
    assert cap_k(np.int64(9), 8) == 8 and isinstance(cap_k(np.int64(9), 8), int)


def test_within_is_what_cap_k_leaves_alone() -> None:
    assert within(0, 4) and within(4, 4) and within(np.int64(3), 4)
    assert not within(5, 4) and not within(-1, 4)
    assert not within(True, 4) and not within(2.0, 4)  # not integers


def test_a_request_max_k_beyond_the_engine_k_is_an_invalid_request_naming_the_field() -> None:
    assert request_max_k(None, 8) is None and request_max_k(0, 8) == 0 and request_max_k(8, 8) == 8
    for bad in (9, -1):
        with pytest.raises(InvalidRequest, match=r"speculation.max_k must be in \[0, 8\]") as err:
            request_max_k(bad, 8)
        assert err.value.param == "speculation.max_k"


def test_the_crd_bounds_k_by_the_same_limit() -> None:
    spec = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for field in ("maxSpeculationLength", "fixedSpeculationLength"):
        assert spec["properties"][field]["maximum"] == MAX_K_LIMIT
