"""Start-up calibration: every shape timed, nothing left behind, the fit adopted, greedy output untouched."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from smartspec.engine.calibration import CalibrationConfig, calibrate
from smartspec.engine.engine import SpecEngine
from smartspec.engine.proposers.draft_model import DraftModelProposer
from smartspec.engine.refit import RefitConfig
from smartspec.engine.runner import ModelRunner
from smartspec.engine.sampling import SamplingParams
from smartspec.engine.scheduler import Scheduler, sample_of
from smartspec.engine.sinks import MemorySink
from smartspec.policy.cost_fit import relative_error
from smartspec.policy.cost_model import default_cost_model
from smartspec.policy.modes import Mode
from smartspec.policy.policy import PolicyConfig, SpeculationPolicy
from tests.conftest import hf_greedy
from tests.unit.engine.test_engine import PROMPTS


def build(pair: Any, mode: Mode = "goodput", slots: int = 4) -> tuple[Scheduler, MemorySink]:
    runner = ModelRunner(pair.target, num_slots=slots, max_len=256)
    draft = DraftModelProposer(ModelRunner(pair.draft, num_slots=slots, max_len=264), runner.vocab_size)
    sink = MemorySink()
    engine = SpecEngine(runner, draft, max_k=8)
    policy = SpeculationPolicy(PolicyConfig(mode=mode), default_cost_model())
    return Scheduler(engine, policy, sinks=[sink], refit=RefitConfig()), sink


def test_calibration_times_every_shape_fits_them_and_leaves_nothing_behind(tiny_llama: Any) -> None:
    sch, sink = build(tiny_llama)
    report = calibrate(sch, sch.engine.runner.vocab_size, max_batch=4, config=CalibrationConfig(budget_s=600))
    shapes = {(st.batch_size, max(st.ks, default=0)) for st in report.steps if st.batch_size}
    assert shapes == {(1, k) for k in range(9)} | {(4, k) for k in (0, 1, 2, 4, 8)}  # every width at batch 1
    assert sum(st.num_prefills for st in report.steps) == 5
    # Adopted: the model in force is the fit, and it predicts the profile better than the default did.
    samples = [sample_of(st) for st in report.steps if st.batch_size]
    assert report.adopted and sch.policy.cost_model.name == "online"
    assert relative_error(sch.policy.cost_model, samples) < relative_error(default_cost_model(), samples)
    # Step records marked as the profile (a controller fits on them, and counts them as no load).
    assert list(sink.records) == report.steps and all(st.calibration for st in sink.records)
    # Nothing behind: no request, no KV slot, no draft state, no acceptance statistics.
    engine = sch.engine
    assert not engine.seqs and not engine.has_unfinished
    assert not any(engine.runner.has(sid) for sid in range(2**62, 2**62 + 5))
    assert isinstance(engine.proposer, DraftModelProposer) and not engine.proposer.runner.has(2**62)
    assert sch.policy.acceptance.prior()[0] == sch.policy.acceptance.config.prior[0]
    assert sch.steps == 0


def test_greedy_output_is_untouched_after_calibration(tiny: Any) -> None:
    sch, _ = build(tiny, slots=2)
    calibrate(sch, sch.engine.runner.vocab_size, max_batch=2, config=CalibrationConfig(budget_s=600))
    prompt = tiny.tokenizer(PROMPTS[0]).input_ids
    sch.submit(1, prompt, SamplingParams(max_tokens=14, ignore_eos=True))
    while sch.has_unfinished:
        sch.step()
    assert sch.pop_finished(1).output_ids == hf_greedy(tiny.target, prompt, 14)


def test_a_spent_budget_stops_new_shapes_and_a_zero_budget_or_a_static_mode_runs_nothing(tiny_llama: Any) -> None:
    sch, _ = build(tiny_llama)
    ticks = itertools.count()
    report = calibrate(sch, sch.engine.runner.vocab_size, 4, CalibrationConfig(budget_s=3.5),
                       clock=lambda: float(next(ticks)))
    assert 0 < len(report.steps) < 6 and not sch.engine.seqs
    assert calibrate(sch, 100, 4, CalibrationConfig(budget_s=0)).skipped == "off"
    fixed, _ = build(tiny_llama, mode="fixed")
    report = calibrate(fixed, 100, 4)
    assert report.skipped and not report.steps and fixed.policy.cost_model.name == "default"
    assert np.isfinite(report.seconds)
