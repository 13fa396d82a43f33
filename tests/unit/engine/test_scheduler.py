"""Scheduler on tiny models: goodput policy keeps greedy output exact; admission, caps, feedback."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from smartspec.engine.engine import AdmissionLimits, SpecEngine, StepStats
from smartspec.engine.proposers.draft_model import DraftModelProposer
from smartspec.engine.refit import RefitConfig
from smartspec.engine.runner import ModelRunner
from smartspec.engine.sampling import SamplingParams
from smartspec.engine.scheduler import RequestSpec, Scheduler, sample_of
from smartspec.engine.sinks import MemorySink
from smartspec.engine.workload import WorkItem, poisson_arrivals, run_open_loop
from smartspec.errors import InvalidRequest
from smartspec.policy.cost_model import CostModel
from smartspec.policy.in_force import PolicyInForce
from smartspec.policy.policy import PolicyConfig, SpeculationPolicy
from tests.conftest import hf_greedy
from tests.unit.engine.test_engine import PROMPTS

# Drafting is nearly free under this model, so goodput mode speculates and exercises every path.
CHEAP = CostModel("cheap", verify={"const": 0.05, "batched_tokens": 1e-4}, draft={"draft_tokens": 1e-4})


def scheduler(pair: Any, policy: PolicyConfig, slots: int = 4, limits: AdmissionLimits | None = None,
              sinks: list[Any] | None = None, refit: RefitConfig | None = None) -> Scheduler:
    runner = ModelRunner(pair.target, num_slots=slots, max_len=256)
    draft = DraftModelProposer(ModelRunner(pair.draft, num_slots=slots, max_len=264), runner.vocab_size)
    engine = SpecEngine(runner, draft, max_k=8, limits=limits)
    return Scheduler(engine, SpeculationPolicy(policy, CHEAP), sinks=sinks or [],
                     refit=refit or RefitConfig(enabled=False))


def test_goodput_mode_keeps_greedy_output_exact_under_arrivals(tiny: Any) -> None:
    sink = MemorySink()
    sch = scheduler(tiny, PolicyConfig(mode="goodput"), slots=3, sinks=[sink])
    prompts = [tiny.tokenizer(p).input_ids for p in PROMPTS[:6]]
    lengths = [12, 20, 7, 15, 9, 18]
    arrivals = poisson_arrivals(6, rate=500.0, seed=1)
    items = [WorkItem(i, p, SamplingParams(max_tokens=n, ignore_eos=True), arrivals[i])
             for i, (p, n) in enumerate(zip(prompts, lengths, strict=True))]
    seqs = run_open_loop(sch, items)
    for seq, p, n in zip(seqs, prompts, lengths, strict=True):
        assert seq.output_ids == hf_greedy(tiny.target, p, n)
    ks = [k for st in sink.records for k in st.ks]
    assert max(ks) > 1  # it did speculate
    assert sch.policy.acceptance.prior()[0] != pytest.approx(0.7)  # and learned from the outcomes


def test_admission_is_fifo_under_batch_and_prefill_budgets(tiny_llama: Any) -> None:
    sink = MemorySink()
    sch = scheduler(tiny_llama, PolicyConfig(mode="off"), slots=8,
                    limits=AdmissionLimits(max_batch_size=3, max_prefill_tokens=20), sinks=[sink])
    sizes = [8, 8, 30, 4, 4]
    for i, n in enumerate(sizes):
        sch.submit(i, list(range(5, 5 + n)), SamplingParams(max_tokens=3, ignore_eos=True))
    while sch.has_unfinished:
        sch.step()
        st = sink.records[-1]
        assert st.batch_size + st.num_prefills <= 3
        assert st.prefill_tokens <= 20 or st.num_prefills == 1  # one long prompt may exceed the budget alone
    prefill_steps = [st.prefill_tokens for st in sink.records if st.num_prefills]
    assert prefill_steps[0] == 16  # 8 + 8 fit; the 30-token prompt waits (FIFO: nothing jumps it)
    assert 30 in prefill_steps


def test_per_request_speculation_override(tiny_llama: Any) -> None:
    sch = scheduler(tiny_llama, PolicyConfig(mode="fixed", fixed_k=6), slots=3)
    prompt = tiny_llama.tokenizer(PROMPTS[0]).input_ids
    sch.submit(0, prompt, SamplingParams(max_tokens=20, ignore_eos=True), RequestSpec(mode="off"))
    sch.submit(1, prompt, SamplingParams(max_tokens=20, ignore_eos=True), RequestSpec(max_k=2))
    sch.submit(2, prompt, SamplingParams(max_tokens=20, ignore_eos=True))
    while sch.has_unfinished:
        sch.step()
    seqs = [sch.pop_finished(i) for i in range(3)]
    assert set(seqs[0].stats.k_history) == {0}
    assert max(seqs[1].stats.k_history) == 2
    assert max(seqs[2].stats.k_history) == 6
    assert seqs[0].output_ids == seqs[1].output_ids == seqs[2].output_ids
    with pytest.raises(InvalidRequest, match="speculation"):
        sch.submit(3, prompt, SamplingParams(), RequestSpec(max_k=-1))


def test_sink_failures_never_fail_a_step_and_records_carry_the_policy(tiny_llama: Any) -> None:
    class Broken:
        def record(self, stats: StepStats) -> None:
            raise RuntimeError("redis down")

    good = MemorySink()
    sch = scheduler(tiny_llama, PolicyConfig(mode="goodput"), sinks=[Broken(), good])
    sch.apply_policy(replace(sch.in_force, version=7))  # as a published policy does
    sch.submit(0, [5, 6, 7], SamplingParams(max_tokens=6, ignore_eos=True))
    while sch.has_unfinished:
        sch.step()
    assert sch.sink_errors == len(good.records) > 0
    assert all(st.policy_version == 7 for st in good.records)
    assert all(st.decision_s >= 0 for st in good.records)


def test_apply_policy_puts_a_policy_in_force_as_a_whole_and_the_local_default_back(tiny_llama: Any) -> None:
    sink = MemorySink()
    sch = scheduler(tiny_llama, PolicyConfig(mode="fixed", fixed_k=6), slots=2, sinks=[sink],
                    refit=RefitConfig(every_steps=2, min_samples=2))
    local, tracker = sch.in_force, sch.policy.acceptance
    published = PolicyInForce(PolicyConfig(mode="fixed", max_k=3, fixed_k=3), CHEAP, version=5,
                              priors={"chat": [0.25]}, allow_request_override=False, refit=False)
    sch.apply_policy(published)
    assert sch.in_force is published and sch.policy.config is published.config
    assert tracker.prior("chat")[0] == pytest.approx(0.25) and tracker.prior()[0] == pytest.approx(0.9)
    prompt = tiny_llama.tokenizer(PROMPTS[0]).input_ids
    off = RequestSpec(mode="off", klass="chat")
    first = sch.submit(0, prompt, SamplingParams(max_tokens=12, ignore_eos=True), off)
    while sch.has_unfinished:
        sch.step()
    # Overrides are forbidden: the request's "off" does not count, and K = 3 bounds the policy's k.
    assert max(first.stats.k_history) == 3
    assert sink.records and all(st.policy_version == 5 for st in sink.records)
    assert not sch.fits and sch.policy.cost_model is CHEAP  # no local refit while a published policy is in force

    sch.apply_policy(local)
    assert sch.in_force is local and sch.policy.config.fixed_k == 6 and sch.policy.cost_model is CHEAP
    assert tracker.prior("chat")[0] == pytest.approx(0.9)  # the configured prior again
    second = sch.submit(1, prompt, SamplingParams(max_tokens=12, ignore_eos=True), off)
    while sch.has_unfinished:
        sch.step()
    assert set(second.stats.k_history) == {0}  # the request's own setting counts again
    assert sink.records[-1].policy_version == 0
    assert sch.fits and sch.in_force.cost_model is sch.policy.cost_model  # refits resume, and stay in force


def test_cost_model_is_refitted_online_from_its_own_steps(tiny_llama: Any) -> None:
    # Varied steps (caps 0-4 per request, requests joining as others finish) so there is
    # something to learn; the fit must predict them better than the model in force to be adopted.
    sink = MemorySink()
    sch = scheduler(tiny_llama, PolicyConfig(mode="fixed", fixed_k=4), slots=4, sinks=[sink],
                    refit=RefitConfig(every_steps=8, min_samples=16))
    for i in range(10):
        sch.submit(i, tiny_llama.tokenizer(PROMPTS[i % len(PROMPTS)]).input_ids,
                   SamplingParams(max_tokens=30 + 5 * i, ignore_eos=True), RequestSpec(max_k=i % 5))
    while sch.has_unfinished:
        sch.step()
    assert sch.fits and sch.policy.cost_model.name == "online"
    assert sch.policy.cost_model.samples >= 16 and sch.policy.cost_model.r2 is not None
    # The model in force now prices steps on the scale they really took (ms), not the 50 ms prior.
    busy = [st for st in sink.records if st.batch_size == 4]
    assert sch.policy.cost_model.step_time(sample_of(busy[-1]).shape) < 0.04


def test_cancel_forgets_the_request(tiny_llama: Any) -> None:
    sch = scheduler(tiny_llama, PolicyConfig(mode="goodput"), slots=2)
    sch.submit(0, [5, 6, 7], SamplingParams(max_tokens=50, ignore_eos=True))
    sch.step()
    sch.step()
    sch.cancel(0)
    assert 0 not in sch.policy.acceptance and not sch.has_unfinished


def test_the_draft_deadline_follows_the_predicted_draft_time_and_a_miss_is_recorded(tiny_llama: Any) -> None:
    from smartspec.engine.proposers.base import DraftDeadlineMissed, Proposal, ProposeRequest
    from smartspec.engine.scheduler import DeadlineConfig

    waits: list[float | None] = []

    class Stalled(DraftModelProposer):
        """Drafts every other call; the rest 'miss the deadline' as a remote draft would."""

        def propose(self, requests: list[ProposeRequest], deadline_s: float | None = None) -> dict[int, Proposal]:
            waits.append(deadline_s)
            if len(waits) % 2 == 0:
                raise DraftDeadlineMissed("too slow")
            return super().propose(requests)

    runner = ModelRunner(tiny_llama.target, num_slots=2, max_len=256)
    engine = SpecEngine(runner, Stalled(ModelRunner(tiny_llama.draft, num_slots=2, max_len=264), runner.vocab_size))
    sink = MemorySink()
    sch = Scheduler(engine, SpeculationPolicy(PolicyConfig(mode="fixed", fixed_k=3), CHEAP), sinks=[sink],
                    refit=RefitConfig(enabled=False), deadline=DeadlineConfig(factor=3.0, floor_s=1e-4, max_s=10.0))
    prompt = tiny_llama.tokenizer(PROMPTS[0]).input_ids
    seq = sch.submit(0, prompt, SamplingParams(max_tokens=16, ignore_eos=True))
    while sch.has_unfinished:
        sch.step()
    assert seq.output_ids == hf_greedy(tiny_llama.target, prompt, 16)  # misses cost speculation, never output
    spec = [st for st in sink.records if st.draft_deadline_s is not None]
    # Each speculating step waited 3 x the draft time the cost model predicts for k = 3 at batch 1 (3e-4 s),
    # stretched by the slowest actual/predicted ratio of the timely drafts so far (this tiny draft takes
    # milliseconds, so the stretch is large) and doubled right after a miss (every other call misses here).
    assert waits == [st.draft_deadline_s for st in spec]
    predicted, ratios, expected = 3e-4, list[float](), list[float]()
    for i, st in enumerate(spec):
        expected.append(3.0 * predicted * max([1.0, *ratios]) * (2 if i % 2 == 0 and i > 0 else 1))
        if not st.missed_ks:
            ratios.append(st.draft_s / predicted)
    assert waits == pytest.approx(expected)
    assert max(ratios) > 1 and sch.draft_slowness == pytest.approx(max(ratios))
    missed = [st for st in spec if st.missed_ks]
    assert missed and all(st.ks == [0] and st.missed_ks == [3] and st.predicted_step_s for st in missed)
    sample = sample_of(missed[0])
    assert sample.shape.max_k == 0 and sample.draft_shape is not None and sample.draft_shape.max_k == 3


def test_a_missed_deadline_doubles_the_next_one_until_a_draft_arrives() -> None:
    from smartspec.engine.scheduler import DeadlineConfig

    cfg = DeadlineConfig(factor=2.0, floor_s=0.25, max_s=5.0)
    assert cfg.for_draft(0.3) == pytest.approx(0.6)
    assert [cfg.for_draft(0.3, n) for n in (1, 2, 3)] == pytest.approx([1.2, 2.4, 4.8])
    assert cfg.for_draft(0.3, 4) == 5.0 and cfg.for_draft(0.01) == 0.25
    # Drafts that took up to 1.5x their prediction lately stretch the deadline so; faster ones never shorten it.
    assert cfg.for_draft(0.3, 0, 1.5) == pytest.approx(0.9) and cfg.for_draft(0.3, 1, 1.5) == pytest.approx(1.8)
    assert cfg.for_draft(0.3, 0, 0.5) == pytest.approx(0.6)


def test_refits_keep_speculating_steps_after_the_policy_stopped_speculating(tiny_llama: Any) -> None:
    sch = scheduler(tiny_llama, PolicyConfig(mode="fixed", fixed_k=4),
                    refit=RefitConfig(every_steps=10_000, window=16, spec_window=8, min_samples=1))
    prompt = tiny_llama.tokenizer(PROMPTS[0]).input_ids
    sch.submit(0, prompt, SamplingParams(max_tokens=60, ignore_eos=True))
    while sch.has_unfinished:
        sch.step()
    sch.policy.config = PolicyConfig(mode="off")  # then only k = 0 steps, more than the window holds
    sch.submit(1, prompt, SamplingParams(max_tokens=40, ignore_eos=True))
    while sch.has_unfinished:
        sch.step()
    window = list(sch._samples)
    assert all(s.shape.max_k == 0 for s in window) and len(window) == 16
    kept = list(sch._spec_samples)
    assert len(kept) == 8 and all(s.shape.max_k > 0 for s in kept)
