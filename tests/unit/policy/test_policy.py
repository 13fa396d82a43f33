"""SpeculationPolicy: modes, caps, probing of requests held at k = 0."""

from __future__ import annotations

import pytest

from smartspec.policy.acceptance import AcceptanceConfig, AcceptanceTracker
from smartspec.policy.cost_model import CostModel
from smartspec.policy.policy import BatchRequest, PolicyConfig, SpeculationPolicy

CHEAP = CostModel("cheap", verify={"const": 0.05, "batched_tokens": 1e-4}, draft={"draft_tokens": 1e-3})
DEAR = CostModel("dear", verify={"const": 0.01, "batched_tokens": 0.01}, draft={"max_k": 0.02, "draft_tokens": 0.01})


def batch(caps: list[int]) -> list[BatchRequest]:
    return [BatchRequest(i, c, 100) for i, c in enumerate(caps)]


def test_modes_and_caps() -> None:
    off = SpeculationPolicy(PolicyConfig(mode="off"), CHEAP)
    assert set(off.choose(batch([8, 8])).ks.values()) == {0}
    fixed = SpeculationPolicy(PolicyConfig(mode="fixed", fixed_k=3, max_k=8), CHEAP)
    assert fixed.choose(batch([8, 2, 0])).ks == {0: 3, 1: 2, 2: 0}
    good = SpeculationPolicy(PolicyConfig(mode="goodput", max_k=5), CHEAP)
    d = good.choose(batch([8, 3, 0]))
    assert d.ks[0] == 5 and d.ks[1] == 3 and d.ks[2] == 0  # K bound and per-request caps
    assert d.predicted_goodput > d.predicted_goodput_k0 and d.decision_s >= 0


def test_k0_is_not_sticky_requests_are_reprobed() -> None:
    tracker = AcceptanceTracker(AcceptanceConfig(max_k=8, prior=(0.7,)))
    pol = SpeculationPolicy(PolicyConfig(mode="goodput", probe_every=4, stale_factor=2), DEAR, tracker)
    tracker.add(0)
    # Nobody speculates (drafting is dear): probing alone would pad the step, so it waits until
    # the request is stale (4 x 2 steps), then probes.
    ks = [pol.choose(batch([8])).ks[0] for _ in range(16)]
    assert ks == [0] * 7 + [1] + [0] * 7 + [1]
    assert SpeculationPolicy(PolicyConfig(probe_every=0), DEAR).choose(batch([8])).ks[0] == 0


def test_probes_ride_along_in_steps_that_speculate_anyway() -> None:
    tracker = AcceptanceTracker(AcceptanceConfig(max_k=8, prior_strength=1.0, decay=1.0))
    pol = SpeculationPolicy(PolicyConfig(mode="goodput", probe_every=4), CHEAP, tracker)
    tracker.add(0)
    tracker.add(1)
    for _ in range(50):  # request 0 accepts everything, request 1 nothing
        tracker.observe([0, 1], [8, 8], [8, 0])
    ks = [pol.choose(batch([8, 8])).ks for _ in range(8)]
    assert all(k[0] > 0 for k in ks)
    assert [k[1] for k in ks] == [0, 0, 0, 1, 0, 0, 0, 1]


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        PolicyConfig(mode="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        PolicyConfig(max_k=4, fixed_k=5)
    with pytest.raises(ValueError):
        PolicyConfig(hysteresis=0.9)


def test_one_step_in_explore_every_runs_the_other_side() -> None:
    pol = SpeculationPolicy(PolicyConfig(mode="goodput", max_k=5, explore_every=5), CHEAP)
    ks = [max(pol.choose(batch([8, 8])).ks.values()) for _ in range(10)]
    assert ks == [5, 5, 5, 5, 0] * 2  # the cost model gets k = 0 steps at this batch size too
    dear = SpeculationPolicy(PolicyConfig(mode="goodput", max_k=5, explore_every=5, probe_every=0), DEAR)
    ks = [max(dear.choose(batch([8, 8])).ks.values()) for _ in range(10)]
    assert ks[:4] == [0] * 4 and ks[4] >= 1 and ks[5:9] == [0] * 4 and ks[9] >= 1  # ... and k > 0 steps
    never = SpeculationPolicy(PolicyConfig(mode="goodput", max_k=5, explore_every=0), CHEAP)
    assert all(max(never.choose(batch([8])).ks.values()) == 5 for _ in range(10))
    with pytest.raises(ValueError, match="explore_every"):
        PolicyConfig(explore_every=-1)
