"""Pure status builders: Deployments' readiness + the controller's Redis status -> a CR's `status`."""

from __future__ import annotations

import datetime as dt
from typing import Any

from smartspec.telemetry.status import ControllerStatus


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def role(deployment: dict[str, Any] | None, wanted: bool, desired: int) -> dict[str, Any]:
    """desired (from the spec) / ready replicas of one Deployment; "-" when the role is not part of the spec."""
    if not wanted:
        return {"desired": 0, "readyReplicas": 0, "ready": "-"}
    ready = int((deployment or {}).get("status", {}).get("readyReplicas", 0) or 0)
    return {"desired": desired, "readyReplicas": ready, "ready": f"{ready}/{desired}"}


def condition(type_: str, ok: bool, reason: str, message: str, generation: int,
              previous: list[dict[str, Any]], now: float) -> dict[str, Any]:
    """A metav1.Condition; lastTransitionTime moves only when the status flips."""
    status = "True" if ok else "False"
    before = next((c for c in previous if c.get("type") == type_), None)
    since = before["lastTransitionTime"] if before and before.get("status") == status and \
        before.get("lastTransitionTime") else iso(now)
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": since, "observedGeneration": generation}


def _num(value: Any, digits: int = 3) -> float | None:
    return None if value is None else round(float(value), digits)


def service_status(*, generation: int, observed_generation: int | None, deployments: dict[str, dict[str, Any] | None],
                   desired: dict[str, int], with_draft: bool, decision: ControllerStatus | None,
                   redis_error: str | None, policy: dict[str, Any], previous: list[dict[str, Any]], now: float,
                   stale_s: float, apply_error: str | None = None) -> dict[str, Any]:
    """The SpeculativeService status the operator writes (observedGeneration is the caller's)."""
    roles = {r: role(deployments.get(r), r != "draft" or with_draft, desired.get(r, 0))
             for r in ("target", "draft", "controller")}
    t = roles["target"]
    if apply_error:
        ready, reason, msg = False, "ApplyFailed", apply_error
    elif deployments.get("target") is None:
        ready, reason, msg = False, "TargetMissing", "the target Deployment does not exist (yet)"
    elif observed_generation != generation:
        ready, reason, msg = False, "Reconciling", f"generation {generation} not applied yet"
    elif t["desired"] == 0:
        ready, reason, msg = False, "ScaledToZero", "target replicas is 0"
    elif t["readyReplicas"] < t["desired"]:
        ready, reason, msg = False, "TargetUnavailable", f"{t['ready']} target replicas ready"
    else:
        ready, reason, msg = True, "TargetReady", f"{t['ready']} target replicas ready"

    problems: list[tuple[str, str]] = []
    d, c = roles["draft"], roles["controller"]
    if with_draft and d["readyReplicas"] < d["desired"]:
        problems.append(("DraftUnavailable", f"{d['ready']} draft replicas ready; targets serve at k = 0 meanwhile"))
    if c["readyReplicas"] < c["desired"]:
        problems.append(("ControllerUnavailable", "controller not ready; targets keep the last policy until expiry"))
    if redis_error:
        problems.append(("RedisUnreachable", redis_error))
    elif decision is None:
        problems.append(("TelemetryStale", "the controller has not reported a decision yet"))
    else:
        age = now - decision.decided_at
        if age > stale_s:
            problems.append(("TelemetryStale", f"last controller decision {age:.0f}s ago (limit {stale_s:.0f}s)"))
        if decision.spec_error:
            problems.append(("PolicyInvalid", f"controller keeps the last valid policy: {decision.spec_error}"))
    conditions = [
        condition("Ready", ready, reason, msg, generation, previous, now),
        condition("Degraded", bool(problems), problems[0][0] if problems else "AsExpected",
                  "; ".join(m for _, m in problems) or "all parts ready", generation, previous, now),
    ]
    out: dict[str, Any] = {"conditions": conditions, **roles, "policy": policy}
    if decision is not None:
        out |= {"policyVersion": decision.policy_version, "meanK": _num(decision.mean_k, 2),
                "currentK": None if decision.current is None else decision.current.k,
                "goodput": _num(decision.measured_goodput, 1),
                "predictedGoodput": _num(decision.predicted_goodput, 1),
                "lastDecision": iso(decision.decided_at),
                "telemetryAgeSeconds": _num(decision.telemetry_age_s, 1)}
    return out


def policy_status(*, services: list[str], decisions: list[ControllerStatus]) -> dict[str, Any]:
    """What a SpeculationPolicy shows: the services using it and the newest decision among them."""
    # Keys without a decision are sent as null, so a merge patch removes stale values.
    out: dict[str, Any] = {"services": sorted(services), "version": None, "currentK": None, "lastDecision": None,
                           "recommendedK": None}
    if decisions:
        latest = max(decisions, key=lambda s: s.decided_at)
        out |= {"version": max(s.policy_version for s in decisions),
                "currentK": None if latest.current is None else latest.current.k,
                "lastDecision": iso(latest.decided_at),
                "recommendedK": dict(latest.recommended_k)}
    return out


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Equal apart from condition timestamps (so an unchanged status is not re-written every tick)."""
    def strip(s: dict[str, Any]) -> dict[str, Any]:
        s = dict(s)
        s["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                           for c in s.get("conditions") or []]
        return s
    return strip(a) == strip(b)
