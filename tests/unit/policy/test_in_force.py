"""The policy in force: one frozen value, built from a published document on top of the target's local default."""

from __future__ import annotations

import dataclasses

import pytest

from smartspec.policy.cost_model import PRESETS, default_cost_model
from smartspec.policy.in_force import PolicyInForce, from_document
from smartspec.policy.policy import PolicyConfig
from tests.unit.policy.test_document import doc

LOCAL = PolicyInForce(PolicyConfig(mode="goodput", max_k=4, fixed_k=3, probe_every=7), default_cost_model())


def test_the_local_default_is_version_0_with_refits_overrides_and_no_priors() -> None:
    assert (LOCAL.version, LOCAL.refit, LOCAL.allow_request_override, dict(LOCAL.priors)) == (0, True, True, {})


def test_a_document_sets_mode_k_model_priors_and_override_and_pauses_the_local_refit() -> None:
    d = doc(mode="fixed", max_k=3, fixed_k=2, hysteresis=1.3, per_request_override=False,
            acceptance_prior={"default": [0.8, 0.7], "chat": [0.5]})
    got = from_document(d, LOCAL, can_speculate=True)
    assert (got.config.mode, got.config.max_k, got.config.fixed_k, got.config.hysteresis) == ("fixed", 3, 2, 1.3)
    assert got.config.probe_every == 7  # knobs the document does not set stay the target's
    assert got.cost_model == PRESETS["h100-llama8b"] and got.version == d.version
    assert dict(got.priors) == {"default": (0.8, 0.7), "chat": (0.5,)}
    assert got.allow_request_override is False and got.refit is False


def test_the_engine_k_is_a_hard_bound_and_fixed_k_follows_it_down() -> None:
    got = from_document(doc(mode="fixed", max_k=6, fixed_k=5), LOCAL, can_speculate=True)
    assert (got.config.max_k, got.config.fixed_k) == (4, 4)
    assert from_document(doc(max_k=6, fixed_k=2), LOCAL, can_speculate=True).config.fixed_k == 2


def test_a_target_without_a_draft_runs_off_whatever_the_mode() -> None:
    assert from_document(doc(mode="goodput"), LOCAL, can_speculate=False).config.mode == "off"


def test_the_value_cannot_be_changed_in_place() -> None:
    got = from_document(doc(), LOCAL, can_speculate=True)
    with pytest.raises(dataclasses.FrozenInstanceError):
        got.version = 9  # type: ignore[misc]
    with pytest.raises(TypeError):
        got.priors["default"] = (0.1,)  # type: ignore[index]


def test_a_document_whose_model_the_controller_has_not_fitted_keeps_the_targets_own_and_its_refit() -> None:
    calibrated = dataclasses.replace(default_cost_model(), name="online", samples=21)
    local = dataclasses.replace(LOCAL, cost_model=calibrated)
    got = from_document(doc(cost_model_fitted=False, hysteresis=1.2), local, can_speculate=True)
    assert got.cost_model is calibrated and got.refit is True
    assert got.config.hysteresis == 1.2 and got.version == doc().version  # the rest of the document applies
