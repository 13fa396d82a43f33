"""Goodput selection: exact against brute force, and the shape the paper predicts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartspec.policy.cost_model import CostModel
from smartspec.policy.selection import CatchUp, expected_total, goodput, select_goodput, select_uniform, step_time


def brute_force(survival: np.ndarray, caps: np.ndarray, cost: CostModel, context: int) -> float:
    return max(goodput(survival, np.array(ks), cost, context_tokens=context)
               for ks in itertools.product(*[range(int(c) + 1) for c in caps]))


def cost_models() -> st.SearchStrategy[CostModel]:
    coef = st.floats(0.0, 1.0)
    return st.builds(
        lambda c0, ct, cc, dk, dt, ds, oc, pads: CostModel(
            "random", verify={"const": 0.05 + c0, "batched_tokens": ct / 10, "context_tokens": cc / 1e4},
            draft={"max_k": dk / 5, "draft_tokens": dt / 20, "spec": ds / 10},
            overhead={"const": oc / 100, "draft_tokens": oc / 1000}, pads_to_max_k=pads),
        coef, coef, coef, coef, coef, coef, coef, st.booleans())


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    batch=st.integers(1, 4),
    k_max=st.integers(1, 4),
    cost=cost_models(),
    context=st.integers(0, 4000),
)
def test_matches_brute_force_on_small_batches(
    data: st.DataObject, batch: int, k_max: int, cost: CostModel, context: int
) -> None:
    cond = np.array(data.draw(st.lists(st.floats(0.0, 1.0), min_size=batch * k_max, max_size=batch * k_max)))
    survival = np.cumprod(cond.reshape(batch, k_max), axis=1)
    caps = np.array(data.draw(st.lists(st.integers(0, k_max), min_size=batch, max_size=batch)))
    sel = select_goodput(survival, caps, cost, context_tokens=context)
    best = brute_force(survival, caps, cost, context)
    assert np.all(sel.ks <= caps)
    assert abs(sel.goodput - best) <= 1e-9 * max(best, 1.0)
    assert abs(goodput(survival, sel.ks, cost, context_tokens=context) - sel.goodput) <= 1e-9 * max(best, 1.0)


def compute_bound(c0: float, per_token: float, draft_per_token: float) -> CostModel:
    # Every cost but a fixed verify overhead scales with tokens: no per-forward draft cost.
    return CostModel("compute-bound", verify={"const": c0, "batched_tokens": per_token},
                     draft={"draft_tokens": draft_per_token}, pads_to_max_k=True)


@settings(max_examples=200, deadline=None)
@given(alpha=st.floats(0.05, 0.99), c0=st.floats(0.001, 1.0), per_token=st.floats(1e-5, 0.05),
       draft=st.floats(0.0, 0.05), hysteresis=st.floats(1.0, 1.3))
def test_k_never_rises_with_batch_size_under_a_compute_bound_model(
    alpha: float, c0: float, per_token: float, draft: float, hysteresis: float
) -> None:
    cost = compute_bound(c0, per_token, draft)
    chosen = []
    for b in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        surv = np.tile(np.cumprod(np.full(8, alpha)), (b, 1))
        sel = select_goodput(surv, np.full(b, 8), cost, context_tokens=500 * b, hysteresis=hysteresis)
        assert len(set(sel.ks.tolist())) == 1  # identical requests get the same k
        chosen.append(int(sel.ks[0]))
    assert all(a >= b for a, b in itertools.pairwise(chosen)), chosen


@settings(max_examples=100, deadline=None)
@given(batch=st.integers(1, 64), cost=cost_models())
def test_no_speculation_when_acceptance_vanishes(batch: int, cost: CostModel) -> None:
    surv = np.cumprod(np.full((batch, 8), 1e-9), axis=1)
    # With the policy's hysteresis even a model in which drafting is free keeps k = 0 ...
    assert select_goodput(surv, np.full(batch, 8), cost, context_tokens=100 * batch, hysteresis=1.1).ks.max() == 0
    # ... and without hysteresis, any model in which drafting costs something does.
    dear = CostModel("dear", verify=dict(cost.verify), draft={**cost.draft, "draft_tokens": 1e-3})
    assert select_goodput(surv, np.full(batch, 8), dear, context_tokens=100 * batch).ks.max() == 0


def test_speculates_to_k_at_batch_one_with_certain_acceptance_and_flat_verify() -> None:
    flat = CostModel("flat", verify={"const": 0.02}, draft={"draft_tokens": 0.001}, pads_to_max_k=True)
    surv = np.ones((1, 8))
    sel = select_goodput(surv, np.array([8]), flat, context_tokens=100, hysteresis=1.1)
    assert sel.ks.tolist() == [8]
    assert sel.goodput / sel.goodput_k0 == pytest.approx(9 / 1.4)


def test_hysteresis_keeps_k0_when_the_gain_is_small() -> None:
    cost = CostModel("c", verify={"const": 1.0, "batched_tokens": 0.06}, pads_to_max_k=True)
    surv = np.cumprod(np.full((4, 4), 0.3), axis=1)
    plain = select_goodput(surv, np.full(4, 4), cost, context_tokens=0, hysteresis=1.0)
    assert plain.ks.max() > 0 and plain.goodput / plain.goodput_k0 < 1.1
    assert select_goodput(surv, np.full(4, 4), cost, context_tokens=0, hysteresis=1.1).ks.max() == 0


def test_requests_with_better_acceptance_get_longer_drafts() -> None:
    cost = CostModel("c", verify={"const": 0.05, "batched_tokens": 0.001},
                     draft={"max_k": 0.005, "draft_tokens": 0.002}, pads_to_max_k=False)
    surv = np.vstack([np.cumprod(np.full(8, a)) for a in (0.95, 0.7, 0.3, 0.05)])
    ks = select_goodput(surv, np.full(4, 8), cost, context_tokens=0).ks.tolist()
    assert ks == sorted(ks, reverse=True) and ks[0] > ks[-1]


def test_empty_batch() -> None:
    sel = select_goodput(np.zeros((0, 8)), np.zeros(0, dtype=int), CostModel("c", verify={"const": 1.0}),
                         context_tokens=0)
    assert sel.ks.size == 0


def catchups(batch: int) -> st.SearchStrategy[CatchUp]:
    seconds = st.lists(st.floats(0.0, 0.3), min_size=batch, max_size=batch)
    return st.builds(lambda f, a, spread: CatchUp(np.array(f) * np.array(spread), np.array(a) / 20 * ~np.array(spread)),
                     seconds, seconds, st.lists(st.booleans(), min_size=batch, max_size=batch))


def all_ks(caps: np.ndarray) -> list[np.ndarray]:
    return [np.array(ks) for ks in itertools.product(*[range(int(c) + 1) for c in caps])]


@settings(max_examples=300, deadline=None)
@given(data=st.data(), batch=st.integers(1, 3), k_max=st.integers(1, 4), cost=cost_models(),
       context=st.integers(0, 4000), hysteresis=st.floats(1.0, 1.5), objective=st.sampled_from(["ratio", "marginal"]))
def test_with_catch_up_and_hysteresis_matches_brute_force(
    data: st.DataObject, batch: int, k_max: int, cost: CostModel, context: int, hysteresis: float, objective: str
) -> None:
    cond = np.array(data.draw(st.lists(st.floats(0.0, 1.0), min_size=batch * k_max, max_size=batch * k_max)))
    survival = np.cumprod(cond.reshape(batch, k_max), axis=1)
    caps = np.array(data.draw(st.lists(st.integers(0, k_max), min_size=batch, max_size=batch)))
    catchup = data.draw(catchups(batch))
    sel = select_goodput(survival, caps, cost, context_tokens=context, catchup=catchup, hysteresis=hysteresis,
                         objective=objective)  # type: ignore[arg-type]
    assert np.all(sel.ks <= caps)
    zeros = np.zeros(batch, dtype=int)
    t0 = step_time(cost, zeros, context, survival)
    g0 = batch / t0
    if objective == "ratio":  # the best ratio if it beats h × the k = 0 rate, else k = 0
        best = max(goodput(survival, ks, cost, context_tokens=context, catchup=catchup) for ks in all_ks(caps))
        want = best if best > hysteresis * g0 * (1 + 1e-9) else g0
        got = goodput(survival, sel.ks, cost, context_tokens=context, catchup=catchup)
        assert abs(got - want) <= 1e-9 * max(want, 1.0), (got, want, best, g0)
    else:  # extra tokens against extra time priced at h × the k = 0 rate
        lam = hysteresis * g0

        def value(ks: np.ndarray) -> float:
            return expected_total(survival, ks) - batch - lam * (step_time(cost, ks, context, survival, catchup) - t0)
        want = max(value(ks) for ks in all_ks(caps))
        assert abs(value(sel.ks) - max(want, 0.0)) <= 1e-9 * max(abs(want), 1.0)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), batch=st.integers(1, 4), k_max=st.integers(1, 4), cost=cost_models(),
       hysteresis=st.floats(1.0, 1.3))
def test_uniform_is_the_best_single_k(data: st.DataObject, batch: int, k_max: int, cost: CostModel,
                                      hysteresis: float) -> None:
    cond = np.array(data.draw(st.lists(st.floats(0.0, 1.0), min_size=batch * k_max, max_size=batch * k_max)))
    survival = np.cumprod(cond.reshape(batch, k_max), axis=1)
    caps = np.array(data.draw(st.lists(st.integers(0, k_max), min_size=batch, max_size=batch)))
    sel = select_uniform(survival, caps, cost, context_tokens=100, hysteresis=hysteresis)
    k = int(sel.ks.max(initial=0))
    assert sel.ks.tolist() == np.minimum(caps, k).tolist()
    g = [goodput(survival, np.minimum(caps, j), cost, context_tokens=100) for j in range(k_max + 1)]
    if k > 0:
        assert g[k] == pytest.approx(max(g[1:])) and g[k] > hysteresis * g[0]
    else:
        assert max(g[1:], default=0.0) <= hysteresis * g[0] * (1 + 1e-9)
