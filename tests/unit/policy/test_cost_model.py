"""Cost model: published presets, static coefficients, the decode curve, per-row verify factors."""

from __future__ import annotations

import numpy as np
import pytest

from smartspec.policy.cost_model import PRESETS, CostModel, StepShape, resolve
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

    cost = replace(resolve(name), pads_to_max_k=pads, verify_rows={2: 1.3, 9: 0.8, 28: 1.6, 32 * 9: 1.1})
    rng = np.random.default_rng(0)
    for batch, context in ((1, 50), (7, 3_000), (32, 40_000)):
        alpha, beta = cost.decode_curve(batch, context, 8)
        for _ in range(20):
            ks = rng.integers(0, 9, size=batch)
            m, s = int(ks.max()), int(ks.sum())
            assert alpha[m] + beta[m] * s == pytest.approx(cost.step_time(StepShape(batch, context, m, s)), rel=1e-12)


def test_row_factors_scale_the_decode_verify_only_and_round_trip() -> None:
    base = CostModel("rows", verify={"const": 0.3, "batched_tokens": 0.1, "prefill_tokens": 0.01},
                     draft={"draft_tokens": 0.1}, verify_rows={9: 1.5})
    assert base.components(StepShape(1, 10, 8, 8))[1] == pytest.approx(1.5 * (0.3 + 0.9))
    assert base.components(StepShape(1, 10, 7, 7))[1] == pytest.approx(0.3 + 0.8)  # no factor: the line
    # A prefill in the same step is priced per token, not scaled by the decode rows' factor.
    assert base.components(StepShape(1, 10, 8, 8, prefill_tokens=100))[1] == pytest.approx(1.5 * 1.2 + 1.0)
    assert CostModel.from_dict(base.to_dict()) == base
    assert "verify_rows" not in CostModel("plain", verify={"const": 1.0}).to_dict()
    ragged = CostModel("ragged", verify=base.verify, verify_rows={9: 1.5}, pads_to_max_k=False)
    assert ragged.components(StepShape(1, 10, 8, 8))[1] == pytest.approx(1.2)  # rows vary with Σk: not used


@pytest.mark.parametrize(("table", "message"), [
    ([1.0], "must map row counts"),
    ({"nine": 1.0}, "not row count"),
    ({"0": 1.0}, "row counts are >= 1"),
    ({"9": 40.0}, "factors in"),
    ({"9": float("nan")}, "factors in"),
    ({str(r): 1.0 for r in range(1, 5000)}, "at most 4096"),
])
def test_row_factors_from_a_document_are_bounded(table: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CostModel.from_dict({"verify": {"const": 0.1}, "verify_rows": table})
