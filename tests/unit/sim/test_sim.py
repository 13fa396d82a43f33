"""The simulator: the real Scheduler and SpeculationPolicy on a virtual clock (numpy only, seconds)."""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from smartspec.cli import sim as sim_cli
from smartspec.engine.sinks import MemorySink
from smartspec.errors import InvalidRequest
from smartspec.policy.cost_fit import relative_error
from smartspec.policy.cost_model import PRESETS, CostModel
from smartspec.sim.acceptance import parse_acceptance
from smartspec.sim.calibrate import fit_cost, recorded_acceptance
from smartspec.sim.policies import PolicyKnobs, build_policy
from smartspec.sim.report import oracle_table, read_csv, summarize
from smartspec.sim.run import EngineConfig, SimResult, simulate
from smartspec.sim.sweep import SimSweepConfig, run_sweep
from smartspec.sim.trace import parse_trace
from smartspec.sim.workload import SimRequest, WorkloadSpec, parse_arrivals, parse_lengths
from smartspec.telemetry.records import decode, encode

H100 = PRESETS["h100-llama8b"]


def workload(acceptance: str = "beta:7,3", out: str = "uniform:32,96", prompt: str = "uniform:64,192",
             arrivals: str = "poisson", max_k: int = 7, seed: int = 0) -> WorkloadSpec:
    return WorkloadSpec(parse_lengths(prompt), parse_lengths(out), parse_acceptance(acceptance),
                        parse_arrivals(arrivals), max_k, seed)


def run(reqs: list[SimRequest], policy: str, cost: CostModel = H100, max_k: int = 7, max_batch: int = 256,
        knobs: PolicyKnobs | None = None, sink: MemorySink | None = None, seed: int = 0) -> SimResult:
    return simulate(reqs, build_policy(policy, cost, max_k, knobs), cost, label=policy,
                    engine=EngineConfig(max_batch=max_batch, max_k=max_k), sinks=[sink] if sink else [], seed=seed)


def mean_e2e(res: SimResult) -> float:
    return float(np.mean([r.e2e_s for r in res.records]))


def test_same_seed_same_run_other_seed_other_run() -> None:
    reqs = workload().requests(60, rate=8.0)
    a, b = run(reqs, "goodput"), run(reqs, "goodput")
    assert [(r.e2e_s, r.ttft_s, r.drafted_tokens, r.accepted_tokens) for r in a.records] == \
           [(r.e2e_s, r.ttft_s, r.drafted_tokens, r.accepted_tokens) for r in b.records]
    c = run(workload(seed=1).requests(60, rate=8.0), "goodput")
    assert [r.e2e_s for r in c.records] != [r.e2e_s for r in a.records]


def test_every_request_finishes_with_its_length_and_steps_conserve_tokens() -> None:
    reqs = workload().requests(80, rate=16.0)
    sink = MemorySink()
    res = run(reqs, "goodput", sink=sink, max_batch=8)
    assert all(r.error is None for r in res.records)
    assert [r.completion_tokens for r in res.records] == [q.output_len for q in reqs]
    assert all(0 <= r.accepted_tokens <= r.drafted_tokens for r in res.records)
    steps = list(sink.records)
    assert sum(s.num_emitted for s in steps) == sum(q.output_len for q in reqs)
    for s in steps:  # emitted = accepted + 1 per verified request, plus one first token per prefill
        assert s.num_emitted == s.batch_size + s.num_accepted_tokens + s.num_prefills
        assert s.batch_size + s.num_prefills <= 8
    assert sum(s.num_accepted_tokens for s in steps) == sum(r.accepted_tokens for r in res.records)
    # The virtual clock moved exactly by the cost model's step times.
    assert res.busy_s == pytest.approx(sum(H100.step_time(decode(encode(s, "r0", 1.0)).sample.shape)
                                           for s in steps))


def test_alpha_zero_goodput_stays_at_k0_and_matches_off() -> None:
    reqs = workload(acceptance="fixed:0").requests(150, rate=4.0)
    off = run(reqs, "off")
    gp = run(reqs, "goodput")
    speculated = sum(c for k, c in gp.tally.k_counts.items() if k > 0) / sum(gp.tally.k_counts.values())
    assert speculated < 0.08  # the first steps on the optimistic 0.9 prior, probes and exploration only
    assert mean_e2e(gp) <= 1.03 * mean_e2e(off)
    # Told acceptance is 0 from the start, with no probing or exploring, it is plain decoding, step for step.
    exact = run(reqs, "goodput", knobs=PolicyKnobs(probe_every=0, explore_every=0, acceptance_prior=(0.0,)))
    assert set(exact.tally.k_counts) == {0}
    assert [r.e2e_s for r in exact.records] == [r.e2e_s for r in off.records]


def test_cheap_draft_and_high_acceptance_beat_off_at_low_rate() -> None:
    reqs = workload(acceptance="fixed:0.95").requests(60, rate=1.0)
    off, gp = run(reqs, "off"), run(reqs, "goodput")
    assert mean_e2e(off) / mean_e2e(gp) > 2.5  # ~5 tokens per step for ~1.1x the step time
    assert gp.tally.mean_k > 5


def test_throughput_matches_the_arrival_rate_below_saturation() -> None:
    rate = 8.0
    reqs = workload().requests(400, rate=rate)
    sink = MemorySink()
    res = run(reqs, "fixed:3", sink=sink)
    span = max(r.arrival_s + (r.e2e_s or 0) for r in res.records) - min(r.arrival_s for r in res.records)
    offered = (len(reqs) - 1) / max(q.arrival_s for q in reqs)  # this draw's arrival rate (8/s ± Poisson noise)
    assert offered == pytest.approx(rate, rel=0.1)
    assert len(reqs) / span == pytest.approx(offered, rel=0.03)  # served as fast as they come
    row = summarize(res.records)[0]
    assert row["tokens_per_s"] == pytest.approx(sum(q.output_len for q in reqs) / span)
    assert res.busy_s < 0.9 * span  # not saturated: the engine idles between requests
    # Little's law on the decode batch: the time-average number of requests decoding (Σ batch × step time)
    # is the arrival rate times the mean time a request spends decoding (first token → last token).
    decoding = sum(s.batch_size * s.step_s for s in sink.records)
    assert decoding == pytest.approx(sum((r.e2e_s or 0) - (r.ttft_s or 0) for r in res.records))
    assert decoding / span == pytest.approx(len(reqs) / span * (row["mean_s"] - row["ttft_mean_s"]))


def test_drawn_acceptance_follows_the_geometric_rate() -> None:
    reqs = workload(acceptance="fixed:0.8", out="fixed:200").requests(40, rate=2.0)
    sink = MemorySink()
    run(reqs, "fixed:5", sink=sink)
    acc = recorded_acceptance([encode(s, "r0", 1.0) for s in sink.records])
    assert acc.mean_alpha == pytest.approx(0.8, abs=0.02)
    assert all(c == pytest.approx(0.8, abs=0.04) for c in acc.conditional)
    prof = recorded_acceptance([encode(s, "r0", 1.0) for s in sink.records]).spec()
    assert prof.kind == "profile" and len(prof.values) == 5


def test_per_position_profile_and_beta_draws() -> None:
    spec = parse_acceptance("profile:0.9,0.5")
    rates = spec.draw(3, 4, np.random.default_rng(0))
    assert rates.tolist() == [[0.9, 0.5, 0.5, 0.5]] * 3
    beta = parse_acceptance("beta:6,2").draw(4000, 2, np.random.default_rng(0))
    assert beta[:, 0].mean() == pytest.approx(0.75, abs=0.01) and (beta[:, 0] == beta[:, 1]).all()
    with pytest.raises(InvalidRequest):
        parse_acceptance("fixed:1.5")
    with pytest.raises(InvalidRequest):
        parse_acceptance("gauss:1,2")


def test_oracle_is_the_fastest_static_policy() -> None:
    rows = [{"policy": p, "rate": 1.0, "mean_s": m} for p, m in
            (("off", 2.0), ("fixed:1", 1.5), ("fixed:2", 1.2), ("fixed:3", 1.3), ("goodput", 1.26))]
    (row,) = oracle_table(rows)
    assert row["oracle"] == "fixed:2" and row["vs_oracle"] == pytest.approx(1.05)
    assert row["speedup_vs_off"] == pytest.approx(2.0 / 1.26)
    cfg = SimSweepConfig(H100, workload(max_k=3), rates=(2.0, 16.0), policies=("goodput",), requests=40,
                      engine=EngineConfig(max_batch=64, max_k=3))
    result = run_sweep(cfg)
    assert {r.policy for r in result.runs} == {"goodput", "off", "fixed:1", "fixed:2", "fixed:3"}
    summary = summarize(result.records)
    for row in oracle_table(summary):
        static = [s["mean_s"] for s in summary if s["rate"] == row["rate"] and s["policy"] != "goodput"]
        assert row["oracle_mean_s"] == min(static)


def test_gamma_arrivals_have_their_cv_and_traces_their_phases() -> None:
    gaps = parse_arrivals("gamma:2").gaps(20000, 4.0, np.random.default_rng(0))
    assert gaps.mean() == pytest.approx(0.25, rel=0.05) and gaps.std() / gaps.mean() == pytest.approx(2.0, rel=0.1)
    reqs = workload().trace(parse_trace("30s@2,10s@10"))
    first = [r for r in reqs if r.phase == "p1:30s@2"]
    second = [r for r in reqs if r.phase == "p2:10s@10"]
    assert 40 <= len(first) <= 85 and 70 <= len(second) <= 135
    assert max(r.arrival_s for r in first) < 30 <= min(r.arrival_s for r in second)
    assert {r.rate for r in second} == {10.0}
    with pytest.raises(ValueError, match="phase 2 '10'"):
        parse_trace("30s@2,10")


def test_fit_from_step_records_recovers_the_step_times(tmp_path: Path) -> None:
    truth = sim_cli.with_prefill_cost(H100, "auto")  # prefills cost time, as in the CLI's default
    reqs = workload(acceptance="beta:7,3").requests(150, rate=16.0)
    sink = MemorySink()
    for policy in ("off", "fixed:2", "fixed:5"):
        run(reqs, policy, cost=truth, sink=sink)
    steps = list(sink.records)
    stream = [json.loads(json.dumps(encode(s, "r0", 1.0 + i))) for i, s in enumerate(steps)]
    samples = [decode(r).sample for r in stream if int(r["batch_size"]) > 0]
    for records in (stream, [decode(r) for r in stream]):
        model = fit_cost(records, pads_to_max_k=False)
        assert model.r2 is not None and model.r2 > 0.95
        assert relative_error(model, samples) < 0.03
        assert model.verify["prefill_tokens"] == pytest.approx(truth.verify["prefill_tokens"], rel=0.15)
    path = tmp_path / "steps.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in stream))
    saved = tmp_path / "model.json"
    assert _cli(["sim", "fit", str(path), "--ragged", "--save", str(saved)]) == 0
    assert CostModel.from_dict(json.loads(saved.read_text())).pads_to_max_k is False


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="smartspec")
    sim_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_cli_sweep_writes_its_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sweep"
    assert _cli(["sim", "sweep", "--rates", "2,12", "--requests", "20", "--max-k", "3", "--policies",
                 "off,fixed:1,goodput", "--output-len", "fixed:24", "--prompt-len", "fixed:32", "--out", str(out),
                 "--quiet"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"records.csv", "summary.csv", "runs.csv", "README.md"} <= names
    records = read_csv(out / "records.csv")
    assert {r.source for r in records} == {"simulated"} and {r.rate for r in records} == {2.0, 12.0}
    assert len(records) == 2 * 20 * 5  # off, fixed:1 … fixed:3 and goodput at each rate
    readme = (out / "README.md").read_text()
    assert "vs_oracle" in readme and "speedup_vs_off" in readme and "smartspec sim sweep" in readme
    assert str(tmp_path) not in readme  # no machine paths in a results file
    assert "wrote" in capsys.readouterr().out


def test_cli_refuses_bad_settings_before_simulating(tmp_path: Path) -> None:
    for bad in (["--policies", "fixed:9"], ["--rates", "0"], ["--acceptance", "beta:1"],
                ["--output-len", "uniform:9,3"], ["--arrivals", "gamma:-1"], ["--prefill-cost", "x"]):
        with pytest.raises(InvalidRequest):
            _cli(["sim", "sweep", "--requests", "5", "--out", str(tmp_path / "x"), "--quiet", *bad])
    assert not (tmp_path / "x").exists()


def test_the_simulator_never_imports_torch() -> None:
    code = ("import sys, smartspec.sim.sweep, smartspec.sim.calibrate, smartspec.sim.output, smartspec.cli.sim; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_prefill_cost_auto_charges_the_batched_token_price() -> None:
    cost = sim_cli.with_prefill_cost(H100, "auto")
    assert cost.verify["prefill_tokens"] == H100.verify["batched_tokens"]
    assert sim_cli.with_prefill_cost(H100, "none") is H100
    assert math.isclose(sim_cli.with_prefill_cost(H100, "0.5").verify["prefill_tokens"], 0.5e-3)
