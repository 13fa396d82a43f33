"""The test API emulator's field ownership (tests/server_side_apply.py) behaves as server-side apply is documented."""

from __future__ import annotations

from typing import Any

import pytest

from tests import server_side_apply as ssa


def deployment(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "namespace": "ns"},
            "spec": spec}


def managers(obj: dict[str, Any]) -> dict[tuple[str, str], set[ssa.Path]]:
    return ssa.owners(obj)


def test_apply_creates_and_owns_what_it_applied() -> None:
    obj = ssa.apply(None, deployment(replicas=1, template={"spec": {"nodeSelector": {"pool": "gpu"}}}), "op", False)
    assert obj["spec"]["replicas"] == 1
    assert managers(obj) == {("op", "Apply"): {("spec", "replicas"), ("spec", "template", "spec", "nodeSelector",
                                                                        "pool")}}


def test_a_field_left_out_is_removed_with_the_maps_it_empties() -> None:
    first = ssa.apply(None, deployment(replicas=1, template={"spec": {"nodeSelector": {"pool": "gpu"}}}), "op", False)
    again = ssa.apply(first, deployment(replicas=1), "op", False)
    assert again["spec"] == {"replicas": 1}


def test_a_field_another_manager_set_differently_conflicts_unless_forced() -> None:
    obj = ssa.apply(None, deployment(replicas=1), "op", False)
    patch = {"spec": {"replicas": 5}}
    obj = ssa.with_owners(ssa._merge(obj, patch), ssa.update(obj, patch, "autoscaler"))
    assert managers(obj)[("autoscaler", "Update")] == {("spec", "replicas")}
    assert ("spec", "replicas") not in managers(obj).get(("op", "Apply"), set())  # an update takes the field
    with pytest.raises(ssa.Conflict, match=r'conflict with "autoscaler": \.spec\.replicas'):
        ssa.apply(obj, deployment(replicas=2), "op", False)
    same = ssa.apply(obj, deployment(replicas=5), "op", False)  # the same value: shared, no conflict
    assert same["spec"]["replicas"] == 5 and ("spec", "replicas") in managers(same)[("op", "Apply")]
    forced = ssa.apply(obj, deployment(replicas=2), "op", True)
    assert forced["spec"]["replicas"] == 2 and ("autoscaler", "Update") not in managers(forced)


def test_a_dropped_field_another_manager_still_owns_stays() -> None:
    obj = ssa.apply(None, deployment(replicas=1, paused=False), "op", False)
    obj = ssa.apply(obj, deployment(paused=False), "other", False)  # co-owns paused with the same value
    obj = ssa.apply(obj, deployment(replicas=1), "op", False)
    assert obj["spec"] == {"replicas": 1, "paused": False}
