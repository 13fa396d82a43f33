"""The controller's view and decisions on synthetic step records from a known cost model and acceptance."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from smartspec.policy.cost_fit import StepSample
from smartspec.policy.cost_model import CostModel, StepShape, default_cost_model
from smartspec.policy.document import parse_spec
from smartspec.policy.selection import expected_total
from smartspec.telemetry.records import StepRecord
from smartspec_controller import decide
from smartspec_controller.window import TelemetryWindow, measured

STEP_IDS = itertools.count(1)
TRUTH = CostModel("truth", verify={"const": 0.02, "batched_tokens": 4e-4, "context_tokens": 2e-7},
                  draft={"max_k": 0.004, "draft_tokens": 2e-4}, overhead={"const": 1e-3})
OTHER = CostModel("other", verify={"const": 0.05, "batched_tokens": 1e-3}, draft={"max_k": 0.01})


def record(model: CostModel, batch: int, k: int, ts: float, rng: np.random.Generator, noise: float = 0.02,
           alpha: float = 0.8, replica: str = "r0") -> StepRecord:
    # contexts vary independently of the batch size, as they do in service (else the fit cannot tell them apart)
    shape = StepShape(batch, int(rng.integers(50, 600)) * batch, k, k * batch)
    d, v, o = (x * (1 + noise * rng.standard_normal()) for x in model.components(shape))
    surv = np.tile(np.cumprod(np.full(max(k, 1), alpha)), (batch, 1))
    emitted = round(expected_total(surv, np.full(batch, k)))
    # per position: everyone tests position 0; a fraction alpha^j reaches position j
    tested = [round(batch * alpha**j) for j in range(k)]
    accepted = [round(batch * alpha ** (j + 1)) for j in range(k)]
    return StepRecord(ts=ts, replica=replica, step=next(STEP_IDS), batch_size=batch, num_prefills=0, emitted=emitted,
                      sum_k=k * batch, max_k=k, policy_version=1, acceptance={"default": [tested, accepted]},
                      sample=StepSample(shape, max(d, 0.0), v, o))


def window_of(model: CostModel, n: int, seed: int = 0, start: float = 1000.0) -> TelemetryWindow:
    rng = np.random.default_rng(seed)
    w = TelemetryWindow(max_k=8)
    for i in range(n):
        w.add(record(model, int(rng.choice([1, 2, 4, 8, 16])), int(rng.integers(0, 6)), start + i * 0.01, rng))
    return w


def test_refit_adopts_a_fit_that_predicts_held_out_steps_better() -> None:
    w = window_of(TRUTH, 400)
    fit = decide.refit(w, default_cost_model(), holdout_fraction=0.25, max_k=8)
    assert fit is not None and fit.adopted, fit
    assert fit.holdout_error < 0.05 < fit.current_error
    assert fit.holdout_r2 is not None and fit.holdout_r2 > 0.95
    assert fit.model.r2 == fit.holdout_r2


def test_refit_refuses_a_fit_worse_than_the_model_in_force() -> None:
    # Noisy steps of the very model in force: no fit on them predicts the held-out steps better.
    rng = np.random.default_rng(3)
    w = TelemetryWindow(max_k=8)
    for i in range(120):
        w.add(record(TRUTH, int(rng.choice([1, 4, 16])), int(rng.integers(0, 6)), i, rng, noise=0.3))
    fit = decide.refit(w, TRUTH, holdout_fraction=0.25, max_k=8)
    assert fit is not None and not fit.adopted and fit.model is TRUTH
    assert fit.holdout_error >= fit.current_error and "no better" in fit.reason


def test_a_new_regime_is_learned_within_a_few_refits() -> None:
    # Steps from one machine, then a load change to batch sizes the window never saw (only 30 steps).
    w = TelemetryWindow(max_k=8)
    rng = np.random.default_rng(4)
    for i in range(300):
        w.add(record(TRUTH, 1, int(rng.integers(0, 6)), i, rng))
    model = decide.refit(w, default_cost_model(), 0.25, 8)
    assert model is not None and model.adopted
    for i in range(30):
        w.add(record(TRUTH, 16, int(rng.integers(0, 6)), 400 + i, rng))
    again = decide.refit(w, model.model, 0.25, 8)
    assert again is not None
    assert again.adopted, again.reason
    at16 = [s for s in w.samples if s.shape.batch == 16]
    from smartspec.policy.cost_fit import relative_error
    assert relative_error(again.model, at16) < 0.1 < relative_error(model.model, at16)


def test_too_few_steps_means_no_fit() -> None:
    assert decide.refit(window_of(TRUTH, 12), TRUTH, 0.25, 8) is None


def test_pooled_acceptance_counts_only_tested_positions() -> None:
    w = window_of(TRUTH, 300)
    cond = w.conditional("default", prior=0.5)
    tested = w.trials("default")
    seen = tested >= 20
    assert seen[:3].all()
    np.testing.assert_allclose(cond[:3], 0.8, atol=0.05)  # conditional, not cumulative (0.8, 0.64, …)
    assert (cond[~seen] == 0.5).all()


def test_calibration_steps_are_cost_samples_only_and_lone_prefills_price_prefill() -> None:
    from dataclasses import replace

    w = TelemetryWindow(max_k=4)
    rng = np.random.default_rng(0)
    profile = [replace(record(TRUTH, 4, 3, 10.0 + i, rng, alpha=0.0), calibration=True) for i in range(5)]
    for rec in profile:
        w.add(rec)
    # In the fit; not in the load, the measured goodput or the pooled acceptance (random prompts, no traffic).
    assert len(w.samples) == 5 and w.calibration_samples == 5 and not w.recent and not w.classes()
    assert measured(w.since(60, now=20.0))["batch_size"] is None and w.age_s(now=20.0) == pytest.approx(6.0)
    lone = StepRecord(ts=30.0, replica="r0", step=next(STEP_IDS), batch_size=0, num_prefills=1, emitted=1, sum_k=0,
                      max_k=0, policy_version=1, acceptance={},
                      sample=StepSample(StepShape(0, 0, 0, 0, 180, 0, 180), 0.0, 1.3, 1e-3))
    w.add(lone)
    assert len(w.samples) == 6 and w.samples[-1].shape.prefill_tokens == 180


def test_acceptance_window_slides() -> None:
    w = TelemetryWindow(max_k=4, acceptance_window=10)
    rng = np.random.default_rng(0)
    for i in range(50):
        w.add(record(TRUTH, 4, 2, i, rng, alpha=0.2))
    for i in range(10):
        w.add(record(TRUTH, 4, 2, 100 + i, rng, alpha=1.0))
    assert w.conditional("default", prior=0.5, strength=0.0, min_trials=1)[0] == pytest.approx(1.0)


def test_k_follows_the_mode_and_load() -> None:
    pri = [0.8] * 8
    goodput = parse_spec({"maxSpeculationLength": 8})
    assert decide.k_at(1, TRUTH, goodput, pri, 300) > decide.k_at(64, TRUTH, goodput, pri, 300)
    assert decide.k_at(1, TRUTH, parse_spec({"mode": "fixed", "fixedSpeculationLength": 3}), pri, 300) == 3
    assert decide.k_at(1, TRUTH, parse_spec({"mode": "off"}), pri, 300) == 0
    assert decide.k_at(1, TRUTH, parse_spec({"maxSpeculationLength": 2}), pri, 300) <= 2


def test_predicted_goodput_matches_measured_when_the_model_is_right() -> None:
    spec = parse_spec({})
    rng = np.random.default_rng(0)
    pri = [0.8] * 8
    recs = []
    for i, b in enumerate([1, 2, 4, 8] * 20):
        k = decide.k_at(b, TRUTH, spec, pri, 300)
        recs.append(record(TRUTH, b, k, i, rng, noise=0.0))
    seen = measured(recs)
    predicted = decide.predicted_goodput(recs, TRUTH, spec, pri)
    assert seen["goodput"] is not None and predicted is not None
    assert predicted == pytest.approx(seen["goodput"], rel=0.03)  # emitted counts are rounded per step


def test_operator_cost_models_replace_the_online_fit() -> None:
    assert decide.spec_cost_model(parse_spec({})) is None  # online
    preset = decide.spec_cost_model(parse_spec({"costModel": {"source": "preset", "preset": "h100-llama70b"}}))
    assert preset is not None and preset.name == "h100-llama70b"
    static = decide.spec_cost_model(parse_spec({"costModel": {"source": "coefficients", "coefficients": {
        "verify": {"const": 0.02, "batched_tokens": 1e-4}, "draft": {"max_k": 0.003}}}}))
    assert static is not None and static.name == "operator"
    assert static.step_time(StepShape(1, 10, 2, 2)) == pytest.approx(0.02 + 3e-4 + 0.006)
