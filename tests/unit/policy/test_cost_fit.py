"""Cost-model fitting: least squares with R², prefill apart, priors kept, per-row verify factors."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from smartspec.policy.acceptance import AcceptanceConfig, AcceptanceTracker
from smartspec.policy.cost_fit import (
    SampleColumns,
    StepSample,
    fit_cost_model,
    fit_row_factors,
    plausible,
    predicted_totals,
    relative_error,
)
from smartspec.policy.cost_model import CostModel, StepShape, default_cost_model
from smartspec.policy.policy import BatchRequest, PolicyConfig, SpeculationPolicy


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


# The real pair in float32 on a 2-core AVX2 CPU, batch 1: median verify seconds per width 1 … 9, and the draft
# at ~0.13 s a token (results/2026-12-06-closed-loop-fp32-humaneval-real-avx2, steps-*.jsonl).
STAIRCASE = (0.34, 0.64, 0.95, 0.95, 0.99, 1.10, 1.06, 0.88, 1.20)


def staircase_samples(widths: list[int], rng: np.random.Generator) -> list[StepSample]:
    samples = []
    for w in widths:
        ctx = int(rng.integers(20, 200))
        verify = STAIRCASE[w - 1] * (1 + 1e-4 * ctx) * rng.normal(1.0, 0.02)
        samples.append(StepSample(StepShape(1, ctx, w - 1, w - 1), 0.13 * (w - 1), verify, 1e-4))
    return samples


def test_row_factors_learn_a_verify_staircase_the_line_cannot() -> None:
    # As a goodput run sees it: the start-up profile times every width twice, then it runs k = 8 for hundreds of
    # steps. The line is pulled to width 9 and misprices width 8 by > 25 %; with the factors every width is within
    # 6 % (two steps of a width are shrunk a fifth of the way toward the line).
    rng = np.random.default_rng(0)
    samples = staircase_samples([w for w in range(1, 10) for _ in range(2)] + [9] * 300, rng)
    fitted = fit_cost_model(samples, default_cost_model())
    line = replace(fitted, verify_rows={})
    for w, truth in enumerate(STAIRCASE, start=1):
        assert fitted.components(StepShape(1, 100, w - 1, w - 1))[1] == pytest.approx(truth * 1.01, rel=0.06)
    assert abs(line.components(StepShape(1, 100, 7, 7))[1] / (STAIRCASE[7] * 1.01) - 1) > 0.25
    # ... and goodput picks the k that is fastest on this machine: 7 (8 tokens in 1.79 s vs 9 in 2.24 s).
    tracker = AcceptanceTracker(AcceptanceConfig(prior=(0.99,), strength_grid=()))
    pol = SpeculationPolicy(PolicyConfig(mode="goodput", explore_every=0, probe_every=0), fitted, tracker)
    assert pol.choose([BatchRequest(1, 8, 100, remaining=64)]).ks == {1: 7}
    on_the_line = SpeculationPolicy(PolicyConfig(mode="goodput", explore_every=0, probe_every=0), line, tracker)
    assert on_the_line.choose([BatchRequest(1, 8, 100, remaining=64)]).ks == {1: 8}


def test_row_factors_shrink_toward_the_prior_and_keep_what_the_samples_never_saw() -> None:
    model = CostModel("line", verify={"const": 0.5})
    samples = [StepSample(StepShape(1, 10, 1, 1), 0.0, 0.75, 0.0) for _ in range(3)]
    table = fit_row_factors(model, samples, {2: 1.0, 9: 0.8})
    assert table[9] == 0.8  # never seen here: the prior's factor stays
    assert table[2] == pytest.approx(np.exp(3 * np.log(1.5) / 3.5), rel=1e-5)  # 3 steps at 1.5 against the prior's 1
    # Steps with a prefill are not decode-verify samples; the factor is bounded.
    assert fit_row_factors(model, [StepSample(StepShape(1, 10, 0, 0, 64), 0.0, 9.0, 0.0)], {}) == {}
    assert fit_row_factors(model, [StepSample(StepShape(1, 10, 0, 0), 0.0, 90.0, 0.0)] * 50, {})[1] < 4.0
    # Ragged models have no rows table (their verify rows vary with Σk).
    ragged = fit_cost_model(staircase_samples([1, 5, 9] * 4, np.random.default_rng(1)), pads_to_max_k=False)
    assert ragged.verify_rows == {}


@pytest.mark.parametrize("pads", [True, False])
def test_predicted_totals_are_each_samples_prediction(pads: bool) -> None:
    """The refit prices all its samples at once; that must be exactly what pricing them one by one gives."""
    model = replace(default_cost_model(), pads_to_max_k=pads, draft_fraction=0.1, overhead_fraction=0.05,
                    verify_rows={2: 1.3, 5: 0.8, 9: 1.1} if pads else {})
    rng = np.random.default_rng(3)
    samples = []
    for i in range(200):
        b = int(rng.integers(0, 9))
        k = int(rng.integers(0, 9)) if b else 0
        prefill = int(rng.integers(1, 300)) * (i % 5 == 0)
        shape = StepShape(b, int(rng.integers(0, 900)) * b, k, k * b - int(rng.integers(0, k + 1)) * (b > 1),
                          prefill, int(rng.integers(0, 40)), prefill + int(rng.integers(0, 50)) * (prefill > 0))
        missed = replace(shape, max_k=3, draft_tokens=3 * max(b, 1)) if i % 7 == 0 else None
        samples.append(StepSample(shape, 0.01 * (i % 3), 0.2 + 0.001 * i, 0.001, missed))
    np.testing.assert_allclose(predicted_totals(model, samples), [s.predicted_s(model) for s in samples],
                               rtol=1e-12, atol=1e-15)
    assert predicted_totals(model, []).shape == (0,)
    # Columns built once (as the refit does) price the same, for a model of either padding.
    cols = SampleColumns.of(samples, pads)
    assert SampleColumns.of(cols, pads) is cols
    for m in (model, replace(model, pads_to_max_k=not pads, verify_rows={})):
        np.testing.assert_array_equal(predicted_totals(m, cols), predicted_totals(m, samples))
        assert relative_error(m, cols) == relative_error(m, samples)
    assert fit_cost_model(cols, pads_to_max_k=pads) == fit_cost_model(samples, pads_to_max_k=pads)


def plausible_one_by_one(model: CostModel, samples: list[StepSample], max_k: int) -> bool:
    """`plausible` as its docstring says it, one shape at a time."""
    seen = sorted({(s.shape.batch, s.shape.context_tokens // max(s.shape.batch, 1)) for s in samples})
    for batch, ctx in {seen[0], seen[len(seen) // 2], seen[-1]}:
        for k in range(max_k + 1):
            parts = model.components(StepShape(batch, ctx * batch, k, k * batch))
            if sum(parts) <= 0 or min(parts) < -0.05 * sum(parts):
                return False
    return True


@pytest.mark.parametrize("verify", [{"const": 0.05, "batched_tokens": 0.002},  # fine everywhere
                                    {"const": 0.05, "batched_tokens": 0.002, "spec_batch": -0.04},  # negative at k > 0
                                    {"const": -0.01, "batch": 0.001}])  # negative at batch 1 only
def test_plausible_asks_where_the_policy_will(verify: dict[str, float]) -> None:
    model = CostModel("m", verify=verify, draft={"draft_tokens": 0.001})
    samples = [StepSample(StepShape(b, 100 * b + 7, 0, 0), 0.0, 0.05 * b, 0.0) for b in (1, 3, 8, 16, 40)]
    assert plausible(model, samples, 8) == plausible_one_by_one(model, samples, 8)
    assert plausible(model, SampleColumns.of(samples, True), 8) == plausible(model, samples, 8)
