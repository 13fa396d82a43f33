"""The online refit on its worker thread: the step loop goes on while it fits, and adopts only a fit that still
describes the model in force."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from smartspec.engine.refit import BackgroundRefit, RefitConfig
from smartspec.engine.sampling import SamplingParams
from smartspec.engine.scheduler import RequestSpec, Scheduler
from smartspec.policy.cost_fit import fit_cost_model
from smartspec.policy.cost_model import CostModel
from smartspec.policy.in_force import PolicyInForce
from smartspec.policy.policy import PolicyConfig
from tests.unit.engine.test_engine import PROMPTS
from tests.unit.engine.test_scheduler import CHEAP, scheduler


class GatedFit:
    """Wraps the real fit: says which thread ran it and holds it until the test lets it finish."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> None:
        self.real = fit_cost_model
        self.started, self.release = threading.Event(), threading.Event()
        self.threads: list[str] = []
        self.fail = fail
        monkeypatch.setattr("smartspec.engine.refit.fit_cost_model", self)

    def __call__(self, *args: Any, **kwargs: Any) -> CostModel:
        self.threads.append(threading.current_thread().name)
        self.started.set()
        # Run inside a step (not in the background), this would hold that step for 10 s and then fail it.
        if not self.release.wait(10):
            raise AssertionError("the fit was never released: it ran inside the step loop")
        if self.fail:
            raise ValueError("singular system")
        return self.real(*args, **kwargs)


def busy_scheduler(tiny_llama: Any) -> Scheduler:
    sch = scheduler(tiny_llama, PolicyConfig(mode="fixed", fixed_k=4), slots=4,
                    refit=RefitConfig(every_steps=8, min_samples=16, background=True))
    for i in range(10):  # varied steps, so a fit has something to learn (as in test_scheduler)
        sch.submit(i, tiny_llama.tokenizer(PROMPTS[i % len(PROMPTS)]).input_ids,
                   SamplingParams(max_tokens=30 + 5 * i, ignore_eos=True), RequestSpec(max_k=i % 5))
    return sch


def step_until_the_fit_starts(sch: Scheduler, gate: GatedFit) -> None:
    while not gate.started.is_set():
        assert sch.has_unfinished, "no refit started"
        sch.step()


def test_the_step_loop_goes_on_while_a_background_refit_runs_and_adopts_it_later(
        tiny_llama: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = GatedFit(monkeypatch)
    sch = busy_scheduler(tiny_llama)
    step_until_the_fit_starts(sch, gate)
    for _ in range(12):  # well past the next due step: one fit at a time, none adopted while it runs
        sch.step()
    assert sch.policy.cost_model is CHEAP and not sch.fits and gate.threads == ["smartspec-refit"]
    gate.release.set()
    assert sch.wait_for_refit(timeout_s=30) is True
    assert sch.policy.cost_model.name == "online" and sch.in_force.cost_model is sch.policy.cost_model
    assert sch.fits and sch.policy.cost_model.samples >= 16
    while sch.has_unfinished:  # later fits start and settle as the loop goes on
        sch.step()
    sch.wait_for_refit(timeout_s=30)
    assert set(gate.threads) == {"smartspec-refit"} and len(gate.threads) >= 2


def test_a_fit_that_finishes_after_a_new_policy_arrived_is_dropped(
        tiny_llama: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = GatedFit(monkeypatch)
    sch = busy_scheduler(tiny_llama)
    step_until_the_fit_starts(sch, gate)
    other = CostModel("published", verify={"const": 0.02})
    sch.apply_policy(PolicyInForce(PolicyConfig(mode="fixed", max_k=3, fixed_k=3), other, version=3, refit=True))
    gate.release.set()
    assert sch.wait_for_refit(timeout_s=30) is False
    assert sch.policy.cost_model is other and sch.in_force.cost_model is other and not sch.fits


def test_a_failed_background_fit_keeps_the_model_and_the_loop(tiny_llama: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = GatedFit(monkeypatch, fail=True)
    gate.release.set()
    sch = busy_scheduler(tiny_llama)
    while sch.has_unfinished:
        sch.step()
    sch.wait_for_refit(timeout_s=30)
    # Each due step started a fresh fit after the last one failed; none changed the model in force.
    assert len(gate.threads) >= 2 and sch.policy.cost_model is CHEAP and not sch.fits


def test_only_one_fit_runs_at_a_time() -> None:
    bg = BackgroundRefit()
    assert bg.collect() is None and not bg.busy
    hold = threading.Event()
    bg._thread = threading.Thread(target=hold.wait)  # a fit under way
    bg._thread.start()
    with pytest.raises(RuntimeError, match="already running"):
        bg.start([], CHEAP, 8, None)
    assert bg.collect() is None and bg.busy  # still running: nothing to collect yet
    hold.set()
    assert bg.collect(wait_s=5) is None and not bg.busy  # ended without an outcome
