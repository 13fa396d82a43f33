"""SpeculationPolicy: modes, caps, probing of requests held at k = 0."""

from __future__ import annotations

import pytest

from smartspec.policy.acceptance import AcceptanceConfig, AcceptanceTracker
from smartspec.policy.cost_model import CostModel, StepShape
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


# With acceptance 0.3 speculation pays a little, but less than the 1.1 hysteresis: k = 0, and one
# request's probe costs less than the hysteresis.
NEAR = CostModel("near", verify={"const": 0.1}, draft={"draft_tokens": 0.02})
MID = CostModel("mid", verify={"const": 0.1, "batched_tokens": 0.002}, draft={"draft_tokens": 0.005})


def low_acceptance() -> AcceptanceTracker:
    return AcceptanceTracker(AcceptanceConfig(max_k=8, prior=(0.3,)))


def test_k0_is_not_sticky_requests_are_reprobed_one_at_a_time() -> None:
    # MID: at 0.3 no request pays for a draft (0.3 tokens for 11 ms where the step's rate × h asks 31 tokens/s);
    # at its hope (0.45 on a prior of strength 4 and no trials) one would: worth a probe.
    tracker = low_acceptance()
    pol = SpeculationPolicy(PolicyConfig(mode="goodput", probe_every=4, explore_every=0), MID, tracker)
    reqs = [BatchRequest(i, 8, 100, pending_catchup=p, remaining=50) for i, p in enumerate([30, 0, 10])]
    for r in reqs:
        tracker.add(r.seq_id)
    probed = []
    for _ in range(12):
        d = pol.choose(reqs)
        assert sum(k > 0 for k in d.ks.values()) <= 1 and d.probes == sum(k > 0 for k in d.ks.values())
        probed.append(next((sid for sid, k in d.ks.items() if k), None))
    # Each becomes due after 4 steps at 0; one per step, the least catch-up first.
    assert probed[:3] == [None] * 3 and probed[3:6] == [1, 2, 0]
    assert SpeculationPolicy(PolicyConfig(probe_every=0), NEAR, low_acceptance()).choose(batch([8])).ks[0] == 0


def test_probes_never_cost_more_than_the_hysteresis() -> None:
    # DEAR: one draft token costs far more than a k = 0 step gains, so nobody is ever probed.
    pol = SpeculationPolicy(PolicyConfig(mode="goodput", probe_every=2, explore_every=3), DEAR)
    assert all(max(pol.choose(batch([8, 8])).ks.values()) == 0 for _ in range(20))


def test_probes_ride_along_in_steps_that_speculate_anyway() -> None:
    tracker = AcceptanceTracker(AcceptanceConfig(max_k=8, prior_strength=1.0, decay=1.0))
    pol = SpeculationPolicy(PolicyConfig(mode="goodput", probe_every=4, explore_every=0), CHEAP, tracker)
    tracker.add(0)
    tracker.add(1)
    for _ in range(16):  # request 0 accepts everything, request 1 nothing
        tracker.observe([0, 1], [8, 8], [8, 0])
    ks = [pol.choose(batch([8, 8])).ks for _ in range(8)]
    assert all(k[0] > 0 for k in ks)
    assert [k[1] for k in ks] == [0, 0, 0, 1, 0, 0, 0, 1]  # a draft token on hope, in a step padded anyway
    # After 30 failures in a row not even hope says a draft would pay: it is no longer probed.
    for _ in range(14):
        tracker.observe([0, 1], [8, 8], [8, 0])
    assert all(pol.choose(batch([8, 8])).ks[1] == 0 for _ in range(8))


def test_no_speculation_in_steps_that_admit_prompts() -> None:
    good = SpeculationPolicy(PolicyConfig(mode="goodput", max_k=5), CHEAP)
    assert good.choose(batch([8, 8])).ks == {0: 5, 1: 5}
    d = good.choose(batch([8, 8]), prefill_tokens=200, prefill_padded_tokens=300)
    assert d.ks == {0: 0, 1: 0}
    assert d.predicted_step_s == pytest.approx(CHEAP.step_time(StepShape(2, 200, 0, 0, 200, 0, 300)))
    mixed = SpeculationPolicy(PolicyConfig(mode="goodput", max_k=5, admission="decode-only"), CHEAP)
    assert mixed.choose(batch([8, 8]), prefill_tokens=200).ks == {0: 5, 1: 5}  # decided on the decode part
    fixed = SpeculationPolicy(PolicyConfig(mode="fixed", fixed_k=2), CHEAP)
    assert fixed.choose(batch([8]), prefill_tokens=200).ks == {0: 2}  # a static policy stays static


def test_prefill_never_makes_speculation_look_cheaper() -> None:
    # The old objective divided by a step time that included the prefill: a long prompt made every
    # draft position clear the threshold. The decode-only choice is the same with or without it.
    pol = SpeculationPolicy(PolicyConfig(mode="goodput", admission="decode-only", explore_every=0), NEAR,
                            low_acceptance())
    assert pol.choose(batch([8] * 4)).ks == pol.choose(batch([8] * 4), prefill_tokens=5000).ks == dict.fromkeys(
        range(4), 0)


CATCHUP = CostModel("catchup", verify={"const": 0.1}, draft={"draft_tokens": 0.002, "draft_catchup_tokens": 0.002})


def test_catch_up_is_priced_and_bounded_per_step() -> None:
    pol = SpeculationPolicy(PolicyConfig(mode="goodput", explore_every=0, probe_every=0, max_catchup_tokens=512),
                            CATCHUP, AcceptanceTracker(AcceptanceConfig(prior=(0.95,))))
    warm = [BatchRequest(i, 8, 100, pending_catchup=0, remaining=100) for i in range(2)]
    assert all(k == 8 for k in pol.choose(warm).ks.values())
    # New requests (a whole prompt to catch up) that the batch would speculate for anyway spread it over
    # the tokens they have left: they speculate, but no more than 512 catch-up tokens in one step.
    cold = [BatchRequest(i, 8, 300, pending_catchup=300, remaining=100) for i in range(3)]
    d = pol.choose(cold)
    assert sum(k > 0 for k in d.ks.values()) == 1 and d.pending_catchup == 300
    assert d.predicted_draft_s == pytest.approx(0.002 * sum(d.ks.values()) + 0.002 * 300)
    # With two tokens left, the same catch-up cannot pay for itself.
    short = [BatchRequest(0, 1, 300, pending_catchup=300, remaining=2)]
    assert pol.choose(short).ks == {0: 0}


def test_upward_exploration_after_all_drafts_pass() -> None:
    # Deeper positions look hopeless a priori (prior 0.05, pooled estimate not yet trusted), so k = 2.
    tracker = AcceptanceTracker(AcceptanceConfig(max_k=8, prior=(0.99, 0.99, 0.05), pooled_min_trials=1e9))
    pol = SpeculationPolicy(PolicyConfig(mode="goodput", explore_every=0, probe_every=0, explore_up_batch=8),
                            CHEAP, tracker)
    tracker.add(0)
    assert pol.choose(batch([8])).ks == {0: 2}
    pol.observe({0: (2, 2)})  # both passed: try a third next step
    assert pol.choose(batch([8])).ks == {0: 3}
    pol.observe({0: (3, 2)})  # the third failed: back to what the estimates say
    assert pol.choose(batch([8])).ks == {0: 2}
    big = SpeculationPolicy(PolicyConfig(mode="goodput", explore_every=0, probe_every=0, explore_up_batch=1),
                            CHEAP, tracker)
    big.observe({0: (2, 2), 1: (2, 2)})
    assert big.choose(batch([8, 8])).ks == {0: 2, 1: 2}  # not above explore_up_batch


def test_goodput_uniform_gives_the_whole_batch_one_k() -> None:
    tracker = AcceptanceTracker(AcceptanceConfig(max_k=8, prior_strength=1.0, decay=1.0))
    for sid in (0, 1):
        tracker.add(sid)
    for _ in range(50):
        tracker.observe([0, 1], [8, 8], [8, 0])
    per_request = SpeculationPolicy(PolicyConfig(mode="goodput", explore_every=0, probe_every=0), CHEAP, tracker)
    uniform = SpeculationPolicy(PolicyConfig(mode="goodput-uniform", explore_every=0), CHEAP, tracker)
    assert per_request.choose(batch([8, 8])).ks == {0: 8, 1: 0}
    ks = uniform.choose(batch([8, 3])).ks
    assert ks[1] == min(ks[0], 3) and ks[0] > 0


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
    near = SpeculationPolicy(PolicyConfig(mode="goodput", max_k=5, explore_every=5, probe_every=0), NEAR,
                             low_acceptance())
    chosen = [near.choose(batch([8, 8])).ks for _ in range(10)]
    # ... and k > 0 steps, one request at a time (never the whole batch catching up at once)
    assert [sum(k > 0 for k in d.values()) for d in chosen] == [0, 0, 0, 0, 1] * 2
    never = SpeculationPolicy(PolicyConfig(mode="goodput", max_k=5, explore_every=0), CHEAP)
    assert all(max(never.choose(batch([8])).ks.values()) == 5 for _ in range(10))
    with pytest.raises(ValueError, match="explore_every"):
        PolicyConfig(explore_every=-1)


def test_a_request_far_behind_is_still_probed_with_its_catch_up_spread() -> None:
    # k = 0 in steady state (acceptance 0.3), and 300 tokens of catch-up would cost 0.6 s in one step:
    # judged in full no probe could ever be afforded and the estimate would never be corrected.
    model = CostModel("behind", verify={"const": 0.1}, draft={"draft_tokens": 0.02, "draft_catchup_tokens": 0.002})
    pol = SpeculationPolicy(PolicyConfig(mode="goodput", probe_every=4, explore_every=0), model, low_acceptance())
    req = [BatchRequest(0, 8, 300, pending_catchup=300, remaining=200)]
    ks = [pol.choose(req).ks[0] for _ in range(8)]
    assert [k > 0 for k in ks] == [False, False, False, True] * 2


# Verify seconds per width 1 … 9 of the real pair in float32 on an AVX2 CPU (a staircase: cost_model.py).
STAIRS = CostModel("stairs", verify={"const": 1.0}, draft={"draft_tokens": 0.13},
                   verify_rows=dict(enumerate((0.34, 0.64, 0.95, 0.95, 0.99, 1.10, 1.06, 0.88, 1.20), start=1)))


def run_alone(pol: SpeculationPolicy, seq_id: int, steps: int, passes: bool) -> list[int]:
    """k chosen for one request, step after step, whose drafts all pass (or all fail)."""
    pol.acceptance.add(seq_id)
    chosen = []
    for step in range(steps):
        k = pol.choose([BatchRequest(seq_id, 8, 100 + step, remaining=500)]).ks[seq_id]
        chosen.append(k)
        if k:
            pol.observe({seq_id: (k, k if passes else 0)})
    return chosen


def test_probes_try_the_k_that_could_pay_where_one_draft_never_does() -> None:
    # One draft token costs 1.9× a decode here and never pays; seven pay at ≥ 0.95 acceptance, which the cautious
    # 0.9 prior does not promise. Probed at k = 1 the request would stay at 0 forever; probed where its hope
    # lies, it accepts everything, and a few probes later it runs k = 7 (the fastest k on this staircase).
    tracker = AcceptanceTracker(AcceptanceConfig(prior=(0.9,)))
    pol = SpeculationPolicy(PolicyConfig(mode="goodput", probe_every=8, explore_every=0), STAIRS, tracker)
    chosen = run_alone(pol, 1, 80, passes=True)
    assert chosen[0] == 0 and max(chosen[:8]) >= 5  # held at 0 by the prior, then probed wide
    assert chosen[-20:] == [7] * 20
    # A request whose drafts all fail loses hope: its probes stop (k = 1 never pays; wider ones fail).
    failed = run_alone(pol, 2, 200, passes=False)
    assert sum(k > 0 for k in failed[:100]) > 0 and not any(failed[100:])


def test_the_tracker_covers_every_position_up_to_k() -> None:
    pol = SpeculationPolicy(PolicyConfig(max_k=12), CHEAP)
    assert pol.acceptance.config.max_k == 12
    assert max(pol.choose(batch([12])).ks.values()) == 12
