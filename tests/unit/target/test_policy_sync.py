"""PolicySwitch: a published policy goes in force through the scheduler, and the local default comes back."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from smartspec.engine.scheduler import Scheduler
from smartspec.policy.cost_model import PRESETS, default_cost_model
from smartspec.policy.policy import PolicyConfig, SpeculationPolicy
from smartspec.telemetry.metrics import TargetMetrics, counter_value
from smartspec_target.policy_sync import PolicySwitch
from tests.unit.policy.test_document import doc

LOCAL = PolicyConfig(mode="goodput", max_k=4, fixed_k=3, probe_every=7)


@pytest.fixture
def metrics() -> Iterator[TargetMetrics]:
    m = TargetMetrics()
    yield m
    m.shutdown()


def metric(m: TargetMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    return counter_value(m.prometheus_text().decode(), name, labels)


def switch_on(metrics: TargetMetrics, can_speculate: bool = True) -> tuple[PolicySwitch, Scheduler[Any]]:
    # Applying a policy never touches the engine: none is needed here.
    sch: Scheduler[Any] = Scheduler(engine=None, policy=SpeculationPolicy(LOCAL, default_cost_model()))
    return PolicySwitch(sch, metrics, can_speculate=can_speculate), sch


def test_published_policies_then_expiry_back_to_the_local_default(metrics: TargetMetrics) -> None:
    switch, sch = switch_on(metrics)
    switch.apply(None, "expired")  # nothing published yet: nothing to restore, nothing counted
    assert sch.in_force.version == 0 and metric(metrics, "smartspec_policy_fallback_total") == 0
    # The target refitted its own model before any policy arrived (as Scheduler._refit does).
    refitted = replace(default_cost_model(), name="online", samples=64)
    sch.apply_policy(replace(sch.in_force, cost_model=refitted))
    local = sch.in_force

    switch.apply(doc(version=3, mode="fixed", max_k=6, fixed_k=5, per_request_override=False,
                     acceptance_prior={"default": [0.8], "chat": [0.3]}))
    pol, tracker = sch.policy, sch.policy.acceptance
    assert (pol.config.mode, pol.config.max_k, pol.config.fixed_k, pol.config.probe_every) == ("fixed", 4, 4, 7)
    assert pol.cost_model == PRESETS["h100-llama8b"] and sch.in_force.version == 3
    assert not sch.in_force.refit and not sch.in_force.allow_request_override
    assert tracker.prior("chat")[0] == pytest.approx(0.3) and tracker.prior()[0] == pytest.approx(0.8)
    assert metric(metrics, "smartspec_policy_version") == 3

    switch.apply(doc(version=4, acceptance_prior={"default": [0.7]}))  # no "chat" prior any more
    assert sch.in_force.version == 4 and pol.config.mode == "goodput"
    assert tracker.prior("chat")[0] == pytest.approx(0.9) and tracker.prior()[0] == pytest.approx(0.7)

    switch.apply(None, "expired")
    assert sch.in_force == local and pol.config == LOCAL and pol.cost_model is refitted  # the refit kept for later
    assert tracker.prior()[0] == pytest.approx(0.9)
    assert metric(metrics, "smartspec_policy_version") == 0
    assert metric(metrics, "smartspec_policy_fallback_total", {"reason": "expired"}) == 1


def test_a_target_without_a_draft_keeps_speculation_off(metrics: TargetMetrics) -> None:
    switch, sch = switch_on(metrics, can_speculate=False)
    switch.apply(doc(version=2, mode="goodput"))
    assert sch.policy.config.mode == "off" and sch.in_force.version == 2


def test_unfitted_documents_leave_the_targets_model_and_its_refits_until_a_fitted_one_arrives(
        metrics: TargetMetrics) -> None:
    switch, sch = switch_on(metrics)
    calibrated = replace(default_cost_model(), name="online", samples=21)
    sch.apply_policy(replace(sch.in_force, cost_model=calibrated))  # as the start-up calibration leaves it
    switch.apply(doc(version=2, cost_model_fitted=False))
    assert sch.policy.cost_model is calibrated and sch.in_force.refit and sch.in_force.version == 2
    refitted = replace(calibrated, samples=80)
    sch.apply_policy(replace(sch.in_force, cost_model=refitted))  # a local refit under that policy
    switch.apply(doc(version=3, cost_model_fitted=False))
    assert sch.policy.cost_model is refitted  # not the model from before the refit
    switch.apply(doc(version=4))  # the controller's own fit: it takes over and the local refit pauses
    assert sch.policy.cost_model == PRESETS["h100-llama8b"] and not sch.in_force.refit
