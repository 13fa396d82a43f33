"""Status builders: Ready/Degraded reasons, stable transition times, the policy's newest decision."""

from __future__ import annotations

from typing import Any

from smartspec.telemetry.status import ControllerStatus
from smartspec_operator.status import policy_status, same, service_status


def decided(**fields: Any) -> ControllerStatus:
    """A controller status as the operator reads it from Redis (only the fields a test cares about)."""
    return ControllerStatus.model_validate(fields)


def dep(replicas: int, ready: int) -> dict[str, Any]:
    return {"spec": {"replicas": replicas}, "status": {"readyReplicas": ready}}


def build(**kw: Any) -> dict[str, Any]:
    args: dict[str, Any] = dict(generation=2, observed_generation=2, with_draft=True, redis_error=None,
                                desired={"target": 2, "draft": 1, "controller": 1},
                                policy={"name": "default", "applied": True, "message": "ok"}, previous=[],
                                now=1000.0, stale_s=30.0,
                                deployments={"target": dep(2, 2), "draft": dep(1, 1), "controller": dep(1, 1)},
                                decision=decided(decided_at=995.0, policy_version=7, mean_k=2.456,
                                                 measured_goodput=101.23, predicted_goodput=99.9,
                                                 current={"batch_size": 3.0, "k": 3}, telemetry_age_s=0.4))
    args |= kw
    return service_status(**args)


def cond(st: dict[str, Any], type_: str) -> tuple[str, str]:
    c = next(c for c in st["conditions"] if c["type"] == type_)
    return c["status"], c["reason"]


def test_all_ready() -> None:
    st = build()
    assert cond(st, "Ready") == ("True", "TargetReady") and cond(st, "Degraded") == ("False", "AsExpected")
    assert st["target"]["ready"] == "2/2" and st["policyVersion"] == 7 and st["currentK"] == 3
    assert st["meanK"] == 2.46 and st["goodput"] == 101.2 and st["lastDecision"] == "1970-01-01T00:16:35Z"


def test_reasons() -> None:
    assert cond(build(observed_generation=1), "Ready") == ("False", "Reconciling")
    assert cond(build(deployments={"target": dep(2, 1), "draft": dep(1, 1), "controller": dep(1, 1)}),
                "Ready") == ("False", "TargetUnavailable")
    assert cond(build(desired={"target": 0, "draft": 1, "controller": 1}), "Ready") == ("False", "ScaledToZero")
    assert cond(build(deployments={"target": None, "draft": dep(1, 1), "controller": dep(1, 1)}),
                "Ready") == ("False", "TargetMissing")
    assert cond(build(apply_error="403: forbidden"), "Ready") == ("False", "ApplyFailed")
    st = build(deployments={"target": dep(2, 2), "draft": dep(1, 0), "controller": dep(1, 1)})
    assert cond(st, "Ready")[0] == "True" and cond(st, "Degraded") == ("True", "DraftUnavailable")
    assert cond(build(decision=None), "Degraded") == ("True", "TelemetryStale")
    assert cond(build(decision=decided(decided_at=900.0)), "Degraded") == ("True", "TelemetryStale")
    assert cond(build(decision=decided(decided_at=999.0, spec_error="bad")), "Degraded") == ("True", "PolicyInvalid")
    assert cond(build(redis_error="Redis unreachable: x"), "Degraded") == ("True", "RedisUnreachable")
    st = build(with_draft=False, deployments={"target": dep(2, 2), "draft": None, "controller": dep(1, 1)})
    assert st["draft"]["ready"] == "-" and cond(st, "Degraded")[0] == "False"


def test_transition_time_moves_only_on_flips() -> None:
    first = build(now=1000.0)
    again = build(now=2000.0, previous=first["conditions"], decision=decided(decided_at=1995.0, policy_version=7))
    assert [c["lastTransitionTime"] for c in again["conditions"]] == \
        [c["lastTransitionTime"] for c in first["conditions"]]
    flipped = build(now=3000.0, previous=first["conditions"], decision=None)
    assert next(c for c in flipped["conditions"] if c["type"] == "Degraded")["lastTransitionTime"] != \
        next(c for c in first["conditions"] if c["type"] == "Degraded")["lastTransitionTime"]
    assert same(first, {**first, "conditions": [{**c, "lastTransitionTime": "x"} for c in first["conditions"]]})


def test_policy_status_takes_the_newest_decision() -> None:
    old = decided(decided_at=10.0, policy_version=9, current={"batch_size": 1.0, "k": 1}, recommended_k={"1": 5})
    new = decided(decided_at=20.0, policy_version=4, current={"batch_size": 2.0, "k": 2},
                  recommended_k={"1": 6, "32": 0})
    st = policy_status(services=["b", "a"], decisions=[old, new])
    assert st == {"services": ["a", "b"], "version": 9, "currentK": 2, "lastDecision": "1970-01-01T00:00:20Z",
                  "recommendedK": {"1": 6, "32": 0}}
    assert policy_status(services=[], decisions=[]) == {"services": [], "version": None, "currentK": None,
                                                        "lastDecision": None, "recommendedK": None}
