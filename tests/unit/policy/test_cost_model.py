"""Cost model: published presets, least-squares fitting with R², static coefficients."""

from __future__ import annotations

import numpy as np
import pytest

from smartspec.policy.cost_model import (
    PRESETS,
    CostModel,
    StepSample,
    StepShape,
    default_cost_model,
    fit_cost_model,
    resolve,
)
from smartspec.policy.selection import goodput

# reference/paper-smartspec.md §4.3: goodput (tok/s) at α = 0.7, 1000 context tokens per request.
PAPER_TABLE = {1: {0: 143, 7: 405}, 32: {0: 3861, 5: 7684}, 128: {0: 10378, 3: 15321}, 256: {0: 14439, 2: 18931}}


@pytest.mark.parametrize("batch", sorted(PAPER_TABLE))
def test_as_coded_preset_reproduces_the_published_table(batch: int) -> None:
    cost = PRESETS["h100-llama8b-as-coded"]
    surv = np.tile(np.cumprod(np.full(7, 0.7)), (batch, 1))
    for k, expected in PAPER_TABLE[batch].items():
        got = goodput(surv, np.full(batch, k), cost, context_tokens=1000 * batch)
        assert round(got) == expected


def test_fit_recovers_coefficients_and_reports_r2() -> None:
    truth = CostModel("truth", verify={"const": 0.05, "batched_tokens": 0.002, "context_tokens": 1e-6},
                      draft={"spec": 0.003, "max_k": 0.02, "draft_tokens": 0.001},
                      overhead={"const": 0.001, "batch": 1e-5}, pads_to_max_k=True)
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(300):
        b = int(rng.integers(1, 33))
        ks = rng.integers(0, 6, size=b) * (rng.random() < 0.7)
        shape = StepShape(b, int(rng.integers(10, 800)) * b, int(ks.max()), int(ks.sum()))
        d, v, o = truth.components(shape)
        noise = rng.normal(1.0, 0.02, 3)
        samples.append(StepSample(shape, d * noise[0], v * noise[1], o * noise[2]))
    fitted = fit_cost_model(samples)
    assert fitted.r2 is not None and fitted.r2 > 0.98 and fitted.samples == 300
    held_out = [StepShape(16, 8000, 4, 40), StepShape(1, 300, 8, 8), StepShape(32, 20000, 0, 0)]
    for shape in held_out:
        assert fitted.step_time(shape) == pytest.approx(truth.step_time(shape), rel=0.05)


def test_prefill_is_fitted_apart_so_rare_long_admission_steps_are_not_outliers() -> None:
    # As on the real pair at light load: ~60 decode steps of 0.15 s per admission of 13 s (a 180-token prompt
    # at 70 ms a token), most admissions alone (batch 0). Fitted together, Huber weighs the admissions out.
    truth = CostModel("truth", verify={"const": 0.14, "batched_tokens": 0.003, "context_tokens": 2e-6,
                                       "prefill_tokens": 0.07, "prefill_padded_tokens": 0.002})
    rng = np.random.default_rng(1)
    samples = []
    for i in range(600):
        prompt = int(rng.integers(80, 260)) if i % 60 == 0 else 0
        b = 0 if prompt and rng.random() < 0.8 else 1
        shape = StepShape(b, int(rng.integers(100, 400)) * b, 0, 0, prompt, 0, prompt)
        samples.append(StepSample(shape, 0.0, truth.components(shape)[1] * rng.normal(1.0, 0.03), 0.0))
    fitted = fit_cost_model(samples, default_cost_model())
    for shape in (StepShape(0, 0, 0, 0, 180, 0, 180), StepShape(1, 300, 0, 0), StepShape(1, 250, 0, 0, 120, 0, 120)):
        assert fitted.step_time(shape) == pytest.approx(truth.step_time(shape), rel=0.08)


def test_directions_the_samples_never_vary_keep_their_prior() -> None:
    prior = default_cost_model()
    samples = [StepSample(StepShape(b, 100 * b, 0, 0), 0.0, 0.01 + 0.001 * b, 0.0005) for b in range(1, 40)]
    fitted = fit_cost_model(samples, prior)
    assert fitted.draft == prior.draft  # never speculated: nothing to learn about drafting
    assert fitted.step_time(StepShape(8, 800, 0, 0)) == pytest.approx(0.01 + 0.008 + 0.0005, rel=0.05)


def test_static_coefficients_round_trip_and_errors() -> None:
    model = PRESETS["h100-llama8b-eagle"]
    assert CostModel.from_dict(model.to_dict()) == model
    with pytest.raises(ValueError, match="unknown cost-model features"):
        CostModel.from_dict({"verify": {"warp_speed": 1.0}})
    with pytest.raises(ValueError, match="verify"):
        CostModel.from_dict({"draft": {}})
    with pytest.raises(ValueError, match="unknown cost model"):
        resolve("h200-nonexistent")


def test_padding_changes_batched_tokens() -> None:
    shape = StepShape(batch=4, context_tokens=0, max_k=5, draft_tokens=8)
    assert shape.features(pads_to_max_k=True)["batched_tokens"] == 24
    assert shape.features(pads_to_max_k=False)["batched_tokens"] == 12


@pytest.mark.parametrize("name", ["default", *sorted(PRESETS)])
@pytest.mark.parametrize("pads", [True, False])
def test_decode_curve_prices_every_k_vector_as_step_time_does(name: str, pads: bool) -> None:
    """α[M] + β[M]·S is the model itself at the decode shape, not an approximation (the policy's hot path)."""
    from dataclasses import replace

    cost = replace(resolve(name), pads_to_max_k=pads)
    rng = np.random.default_rng(0)
    for batch, context in ((1, 50), (7, 3_000), (32, 40_000)):
        alpha, beta = cost.decode_curve(batch, context, 8)
        for _ in range(20):
            ks = rng.integers(0, 9, size=batch)
            m, s = int(ks.max()), int(ks.sum())
            assert alpha[m] + beta[m] * s == pytest.approx(cost.step_time(StepShape(batch, context, m, s)), rel=1e-12)
