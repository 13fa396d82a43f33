"""Acceptance estimation: unbiased under truncation, shrunk toward a prior while young."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from smartspec.policy.acceptance import AcceptanceConfig, AcceptanceTracker, expected_tokens


def simulate(rng: np.random.Generator, cond: np.ndarray, steps: int, k_max: int) -> tuple[list[int], list[int]]:
    ks = rng.integers(1, k_max + 1, size=steps)
    draws = rng.random((steps, k_max)) < cond[None, :]
    accepted = [int(np.cumprod(row[:k]).sum()) for row, k in zip(draws, ks, strict=True)]
    return ks.tolist(), accepted


@settings(max_examples=40, deadline=None)
@given(cond=st.lists(st.floats(0.35, 0.97), min_size=5, max_size=5), seed=st.integers(0, 2**31))
def test_converges_to_the_true_per_position_rates(cond: list[float], seed: int) -> None:
    k_max = 5
    truth = np.array(cond)
    tracker = AcceptanceTracker(AcceptanceConfig(max_k=k_max, prior=(0.5,), prior_strength=1.0, decay=1.0))
    tracker.add(0)
    rng = np.random.default_rng(seed)
    ks, accepted = simulate(rng, truth, 6000, k_max)
    for k, a in zip(ks, accepted, strict=True):
        tracker.observe([0], [k], [a])
    est = tracker.conditional([0])[0]
    tested = tracker._tested[tracker._row[0]]  # trials per position, for the tolerance
    tol = 5 * np.sqrt(truth * (1 - truth) / np.maximum(tested, 1)) + 1 / (tested + 1) + 0.01
    assert np.all(np.abs(est - truth) <= tol), (est, truth, tested)


def test_accepted_over_drafted_is_biased_but_the_estimator_is_not() -> None:
    rng = np.random.default_rng(0)
    truth = np.full(6, 0.8)
    tracker = AcceptanceTracker(AcceptanceConfig(max_k=6, prior_strength=1.0, decay=1.0))
    tracker.add(1)
    ks, accepted = simulate(rng, truth, 5000, 6)
    for k, a in zip(ks, accepted, strict=True):
        tracker.observe([1], [k], [a])
    naive = sum(accepted) / sum(ks)  # counts never-tested positions as rejections
    assert naive < 0.65
    assert np.allclose(tracker.conditional([1])[0], 0.8, atol=0.03)


def test_young_requests_follow_the_prior_and_old_ones_their_own_data() -> None:
    tracker = AcceptanceTracker(AcceptanceConfig(max_k=4, prior=(0.7,), prior_strength=4.0, decay=1.0,
                                                 pooled_min_trials=1e9))
    tracker.add(1)
    assert np.allclose(tracker.conditional([1]), 0.7)
    tracker.observe([1], [4], [0])  # one rejection at position 1: shrunk, not collapsed
    assert 0.5 < tracker.conditional([1])[0, 0] < 0.7
    assert np.allclose(tracker.conditional([1])[0, 1:], 0.7)  # positions 2-4 untested
    for _ in range(200):
        tracker.observe([1], [4], [0])
    assert tracker.conditional([1])[0, 0] < 0.05


def test_pooled_prior_takes_over_for_new_requests_and_can_be_published() -> None:
    tracker = AcceptanceTracker(AcceptanceConfig(max_k=3, prior=(0.7,), pooled_min_trials=10))
    for sid in range(5):
        tracker.add(sid)
    for _ in range(10):
        tracker.observe(list(range(5)), [3] * 5, [3] * 5)  # everything accepted
    tracker.add(99)
    assert tracker.conditional([99])[0, 0] > 0.9  # a newcomer starts from the pooled estimate
    tracker.set_prior([0.2, 0.1], klass="chat")
    tracker.add(100, klass="chat")
    assert np.allclose(tracker.conditional([100])[0], [0.2, 0.1, 0.1])
    assert expected_tokens(np.array([0.5, 0.25, 0.1]), 2) == 1.75


def test_rows_are_reused_and_grow() -> None:
    tracker = AcceptanceTracker(AcceptanceConfig(max_k=2))
    for sid in range(100):
        tracker.add(sid)
    for sid in range(0, 100, 2):
        tracker.remove(sid)
    tracker.observe(list(range(1, 100, 2)), [2] * 50, [1] * 50)
    tracker.add(500)
    assert 500 in tracker and 0 not in tracker
    assert tracker.survival([1, 500, 12345]).shape == (3, 2)  # unknown ids get the prior


def run_class(tracker: AcceptanceTracker, rates: list[float], klass: str, rng: np.random.Generator,
              steps: int = 12, k: int = 4, first_id: int = 0) -> None:
    """Requests of one class, one per rate in `rates` (its per-position acceptance), `steps` steps each at k."""
    for i, rate in enumerate(rates):
        sid = first_id + i
        tracker.add(sid, klass)
        for _ in range(steps):
            draws = rng.random(k) < rate
            tracker.observe([sid], [k], [int(np.cumprod(draws).sum())])
        tracker.remove(sid)


def test_prior_strength_is_learnt_from_how_much_a_request_differs_from_its_class() -> None:
    rng = np.random.default_rng(1)
    tracker = AcceptanceTracker(AcceptanceConfig(max_k=4, prior=(0.7,)))
    assert tracker.strength("alike") == tracker.strength("apart") == 4.0  # nothing scored yet: the configured m
    run_class(tracker, [0.85] * 60, "alike", rng)  # every request the same: its own rejections are noise
    run_class(tracker, [0.97, 0.25] * 30, "apart", rng, first_id=1000)  # requests differ: their history tells
    assert tracker.strength("alike") >= 16.0
    assert tracker.strength("apart") == 4.0
    # the learnt m is what a request's estimate uses: one rejection moves an "alike" request less
    for sid, klass in ((1, "alike"), (2, "apart")):
        tracker.add(sid, klass)
        tracker.observe([sid], [4], [0])
    est = tracker.conditional([1, 2])[:, 0]
    drop = tracker.prior("alike")[0] - est[0], tracker.prior("apart")[0] - est[1]
    assert drop[0] < drop[1] / 2


def test_a_fixed_prior_strength_when_the_grid_is_empty() -> None:
    rng = np.random.default_rng(2)
    tracker = AcceptanceTracker(AcceptanceConfig(max_k=4, prior_strength=4.0, strength_grid=()))
    run_class(tracker, [0.85] * 40, "default", rng)
    assert tracker.strength() == 4.0


def test_one_early_rejection_in_a_class_where_they_do_not_recur_keeps_deep_drafts_likely() -> None:
    """The real pair's HumanEval pattern: half the requests reject draft 3 of their first step, then accept
    everything; with m = 4 that held them at k = 2 for 4-8 steps (ĉ_3 fell from 0.96 to 0.77)."""
    tracker = AcceptanceTracker(AcceptanceConfig(max_k=8))
    for sid in range(40):
        tracker.add(sid)
        tracker.observe([sid], [8], [2 if sid % 2 else 8])
        for _ in range(6):
            tracker.observe([sid], [8], [8])
        tracker.remove(sid)
    assert tracker.strength() >= 16.0
    tracker.add(99)
    tracker.observe([99], [8], [2])
    assert tracker.conditional([99])[0, 2] > 0.85
