"""The simulator's engine effects: deadlines, shared cores, noise, cold starts, prefill padding; replayed arrivals."""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from smartspec.cli import sim as sim_cli
from smartspec.engine.params import SamplingParams
from smartspec.engine.scheduler import sample_of
from smartspec.engine.sinks import MemorySink
from smartspec.engine.steps import StepPlan
from smartspec.errors import InvalidRequest
from smartspec.policy.cost_model import CostModel, StepShape
from smartspec.sim.acceptance import parse_acceptance
from smartspec.sim.calibrate import fit_cost, prefill_prices, step_samples
from smartspec.sim.effects import Contention, SimEffects, StepTimer
from smartspec.sim.engine import SimEngine, VirtualClock
from smartspec.sim.policies import build_policy
from smartspec.sim.report import RequestRecord, write_csv
from smartspec.sim.run import EngineConfig, SimResult, simulate
from smartspec.sim.sweep import SimSweepConfig, run_sweep
from smartspec.sim.trace import parse_trace
from smartspec.sim.workload import SimRequest, WorkloadSpec, parse_arrivals, parse_lengths
from smartspec.telemetry.records import decode, encode

# Shaped like the model fitted to the real pair on this CPU (results/2026-11-26-sweep-humaneval-real).
CPU = CostModel(
    "cpu-like",
    verify={"const": 0.13, "spec": 0.008, "batch": 0.001, "batched_tokens": 0.0045, "context_tokens": 1.7e-6,
            "prefill_tokens": 0.0064},
    draft={"spec": 0.0025, "spec_batch": 0.0037, "max_k": 0.057, "draft_tokens": 0.004,
           "spec_context_tokens": 2.4e-5, "draft_catchup_tokens": 0.00114},
    overhead={"const": 3.7e-4, "batch": 7.7e-6, "draft_tokens": 1.6e-5},
)


def workload(prompt: str = "uniform:64,192", out: str = "fixed:32", acceptance: str = "fixed:0.9",
             seed: int = 0) -> WorkloadSpec:
    return WorkloadSpec(parse_lengths(prompt), parse_lengths(out), parse_acceptance(acceptance),
                        parse_arrivals("poisson"), 7, seed)


def engine(effects: SimEffects | None = None, n: int = 2, prompt: int = 200) -> SimEngine:
    """`n` requests of `prompt` tokens, prefilled (so the draft has all of them to catch up on)."""
    reqs = {i: SimRequest(i, 0.0, prompt, 32, (0.9,), 1.0) for i in range(n)}
    eng = SimEngine(reqs, CPU, VirtualClock(), max_k=8, effects=effects)
    for i in range(n):
        eng.add_request(i, [0] * prompt, SamplingParams(max_tokens=32, ignore_eos=True))
    eng.step({})
    return eng


def test_a_missed_deadline_is_recorded_as_the_real_engine_records_it() -> None:
    eng = engine()
    ids = list(eng.running)
    # The draft must first ingest both 200-token prompts (~0.45 s), then draft 3 tokens: far past 0.3 s.
    out = eng.step(StepPlan({i: 3 for i in ids}, draft_deadline_s=0.3))
    st = out.stats
    assert st is not None
    assert st.ks == [0, 0] and st.missed_ks == [3, 3]  # verified at k = 0; the drafts asked for
    assert st.draft_s == 0.3 and st.draft_deadline_s == 0.3  # it waited the deadline
    assert st.num_proposed_per_pos == [] and st.num_accepted_per_pos == [] and st.draft_catchup_tokens == 0
    assert st.pending_catchup_tokens == 2 * (201 - 2)
    assert st.padded_tokens == st.real_tokens == 2 and st.num_emitted == 2
    assert out.verdicts == {0: (0, 0), 1: (0, 0)}
    # What the fits see: a k = 0 step that waited for drafts of the shape asked for (also via a step record).
    sample = sample_of(st)
    assert sample.shape.max_k == 0 and sample.draft_shape == replace(sample.shape, max_k=3, draft_tokens=6)
    assert decode(encode(st, "r0", 1.0)).sample.draft_shape == sample.draft_shape
    # The draft still ingested what it was sent, as the draft service does: nothing left to catch up.
    assert all(eng.draft_pending(eng.seqs[i]) == 0 for i in ids)
    assert eng.timer.misses == 1

    # Deadlines off: the same step waits for its drafts and speculates.
    calm = engine(SimEffects(deadline=False))
    st2 = calm.step(StepPlan({i: 3 for i in ids}, draft_deadline_s=0.3)).stats
    assert st2 is not None and st2.ks == [3, 3] and not st2.missed_ks and st2.draft_s > 0.6


def test_a_missed_drafts_leftover_work_stretches_the_next_verifies() -> None:
    eng = engine()
    ids = list(eng.running)
    solo: list[float] = []
    stretched: list[float] = []
    for plan in (StepPlan({i: 3 for i in ids}, 0.3), StepPlan({}), StepPlan({}), StepPlan({})):
        st = eng.step(plan).stats
        assert st is not None
        solo.append(CPU.components(sample_of(st).shape)[1])
        stretched.append(st.verify_s)
    ratio = [s / v for s, v in zip(stretched, solo, strict=True)]
    # ~0.37 s of draft work is left after the miss: two ~0.14 s verifies overlap it entirely (1.6×), the
    # third overlaps its last ~0.09 s, and the fourth runs alone.
    assert ratio[0] == pytest.approx(1.6) and ratio[1] == pytest.approx(1.6)
    assert 1.0 < ratio[2] < 1.6 and ratio[3] == 1.0


def test_contention_stretches_by_the_configured_factor_and_never_shortens_a_step() -> None:
    assert Contention().stretch == pytest.approx(1.6)
    assert Contention(cores=0).stretch == 1.0
    assert Contention(cores=4, busy=0.6, draft_threads=2).stretch == pytest.approx(1.3)
    with pytest.raises(ValueError):
        Contention(busy=1.5)
    for busy in (0.0, 0.3, 0.6, 1.0):
        timer = StepTimer(CPU, SimEffects(contention=Contention(busy=busy)))
        stretch = 1.0 + busy
        rng = np.random.default_rng(int(busy * 10))
        now, full, partial = 0.0, 0, 0
        for _ in range(400):
            batch = int(rng.integers(1, 24))
            k = int(rng.integers(0, 8))
            shape = StepShape(batch, batch * 150, k, batch * k, int(rng.integers(0, 2)) * 300,
                              int(rng.integers(0, 400)))
            t = timer.time(shape, float(rng.uniform(0.05, 1.5)), now)
            alone = CPU.components(t.shape)[1]
            assert alone <= t.verify_s <= alone * stretch * (1 + 1e-12)
            full += t.verify_s == pytest.approx(alone * stretch) and busy > 0
            partial += alone * 1.001 < t.verify_s < alone * stretch * 0.999
            now += t.draft_s + t.verify_s + t.overhead_s + float(rng.exponential(0.2))
        assert timer.misses > 0
        if busy:
            assert full > 0 and partial > 0


def test_noise_is_seeded_and_has_its_sigma() -> None:
    reqs = workload().requests(40, rate=2.0)

    def run(effects: SimEffects, seed: int = 0) -> SimResult:
        return simulate(reqs, build_policy("fixed:3", CPU, 7), CPU, label="fixed:3", effects=effects, seed=seed)

    noisy = SimEffects(noise_sigma=0.2)
    a, b, flat = run(noisy), run(noisy), run(SimEffects())
    assert [r.e2e_s for r in a.records] == [r.e2e_s for r in b.records]
    assert [r.e2e_s for r in a.records] != [r.e2e_s for r in flat.records]
    timer = StepTimer(CPU, SimEffects(noise_sigma=0.2), seed=1)
    shape = StepShape(4, 600, 0, 0)
    logs = np.log([timer.time(shape, None, 0.0).verify_s / CPU.components(shape)[1] for _ in range(4000)])
    assert abs(float(np.median(logs))) < 0.02 and float(logs.std()) == pytest.approx(0.2, rel=0.05)
    with pytest.raises(ValueError):
        SimEffects(noise_sigma=-0.1)


def test_a_cold_start_refits_and_finishes_every_request() -> None:
    work = workload()
    cfg = SimSweepConfig(CPU, work, rates=(0.5,), policies=("goodput",), requests=30,
                      engine=EngineConfig(max_batch=32, max_k=7), oracle=False, cold_start=True)
    result = run_sweep(cfg)
    (info,) = result.runs
    warm = run_sweep(replace(cfg, cold_start=False)).runs[0]
    assert info.refits > 0 and warm.refits == 0
    reqs = work.requests(30, 0.5)
    assert all(r.error is None for r in result.records)
    assert [r.completion_tokens for r in result.records] == [q.output_len for q in reqs]


# A machine where a wider verify costs nearly a decode per position (bf16 without native bf16): no k > 0 pays.
WIDE_VERIFY = replace(CPU, verify={**CPU.verify, "batched_tokens": 0.11})


def test_the_start_up_calibration_keeps_a_cold_start_from_speculating_where_nothing_pays() -> None:
    # The default cost model prices a width-9 verify at ~1.3x a decode, so without calibration the first
    # requests speculate on the optimistic prior (k = 4-8 on the real pair); calibrated, they only probe, a
    # few times per class, until the class's acceptance (0.8) says no k pays (policy._trial).
    work = workload(acceptance="fixed:0.8")
    cfg = SimSweepConfig(WIDE_VERIFY, work, rates=(0.05,), policies=("goodput", "off"), requests=12,
                      engine=EngineConfig(max_batch=8, max_k=8), oracle=False, cold_start=True)
    calibrated = {r.policy: r for r in run_sweep(cfg).runs}
    uncalibrated = {r.policy: r for r in run_sweep(replace(cfg, calibration=False)).runs}
    assert uncalibrated["goodput"].mean_k > 0.1
    assert calibrated["goodput"].mean_k < uncalibrated["goodput"].mean_k * 0.75
    # The profile happens before the trace: it adds no request latency, only the start-up time.
    result = run_sweep(cfg)
    e2e = {p: np.mean([r.e2e_s for r in result.records if r.policy == p]) for p in ("goodput", "off")}
    assert e2e["goodput"] <= e2e["off"] * 1.02
    assert all(r.error is None for r in result.records) and calibrated["goodput"].requests == 12


def test_the_fit_learns_the_prefill_padding_price() -> None:
    truth = replace(CPU, verify={**{k: v for k, v in CPU.verify.items() if k != "prefill_tokens"},
                                 "prefill_padded_tokens": 0.005})
    reqs = workload(prompt="uniform:32,256", out="fixed:24").requests(120, rate=4.0)
    sink = MemorySink()
    for policy in ("off", "fixed:3"):
        simulate(reqs, build_policy(policy, truth, 7), truth, label=policy, sinks=[sink],
                 engine=EngineConfig(max_batch=32, max_k=7))
    records = [json.loads(json.dumps(encode(s, "r0", 1.0))) for s in sink.records]
    assert any(int(r["prefill_padded_tokens"]) > int(r["prefill_tokens"]) for r in records)  # several prompts
    model = fit_cost(records)
    assert model.verify["prefill_padded_tokens"] == pytest.approx(0.005, rel=0.1)
    assert model.verify["prefill_tokens"] < 0.0005
    # Older records do not say how rows were padded: the whole price goes on the prompt token.
    older = fit_cost([{k: v for k, v in r.items() if k != "prefill_padded_tokens"} for r in records])
    assert older.verify["prefill_padded_tokens"] == 0.0 and older.verify["prefill_tokens"] > 0.004
    one_prompt = [s for s in step_samples(records) if s.shape.prefill_padded_tokens == s.shape.prefill_tokens > 0]
    assert prefill_prices(model, one_prompt)["prefill_padded_tokens"] == 0.0
    # --prefill-cost leaves a model that prices prefill alone, and charges a padding engine per padded slot.
    assert sim_cli.with_prefill_cost(model, "auto") is model
    padding = CostModel("pads", verify={"const": 0.01, "batched_tokens": 1e-4}, pads_to_max_k=True)
    assert sim_cli.with_prefill_cost(padding, "auto").verify == {"const": 0.01, "batched_tokens": 1e-4,
                                                                 "prefill_padded_tokens": 1e-4}


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="smartspec")
    sim_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_effect_flags(tmp_path: Path) -> None:
    cost = tmp_path / "cpu.json"
    cost.write_text(json.dumps(CPU.to_dict()))
    common = ["sim", "sweep", "--cost-model", str(cost), "--rates", "0.5", "--requests", "20", "--max-k", "3",
              "--policies", "goodput", "--no-oracle", "--output-len", "fixed:24", "--prompt-len", "fixed:64", "--quiet"]
    out = tmp_path / "sweep"
    assert _cli([*common, "--cold-start", "--noise-sigma", "0.1", "--out", str(out)]) == 0
    readme = (out / "README.md").read_text()
    assert "--cold-start" in readme and "--noise-sigma 0.1" in readme and "start: cold" in readme
    (run,) = list(csv.DictReader((out / "runs.csv").open()))
    assert int(run["refits"]) > 0 and "deadline_misses" in run
    for bad in (["--noise-sigma", "-1"], ["--contention-busy", "1.5"], ["--cores", "-1"],
                ["--draft-deadline-factor", "0.5"], ["--draft-deadline-floor-s", "9"]):
        with pytest.raises(InvalidRequest):
            _cli([*common, "--out", str(tmp_path / "x"), *bad])
    assert not (tmp_path / "x").exists()


def test_recorded_arrivals_replay_whatever_the_rate(tmp_path: Path) -> None:
    path = tmp_path / "records.csv"
    times = [3.0, 3.5, 10.0, 10.25]
    write_csv(path, [RequestRecord("off", 0.2, "humaneval", t, 1.0, 2.0, 100, 64) for t in reversed(times)])
    spec = replace(workload(), arrivals=parse_arrivals(f"replay:{path}"))
    for rate in (0.2, 5.0):
        assert [r.arrival_s for r in spec.requests(4, rate)] == [0.0, 0.5, 7.0, 7.25]
    assert spec.arrivals.label() == "replay (4 recorded)"
    with pytest.raises(InvalidRequest):
        spec.requests(5, 0.2)
    with pytest.raises(InvalidRequest):
        spec.trace(parse_trace("10s@1"))
    with pytest.raises(InvalidRequest):
        parse_arrivals(f"replay:{tmp_path / 'missing.csv'}")
