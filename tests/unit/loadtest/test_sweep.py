"""The sweep's parts that need no stack: policies, workloads, step windows, and the report it writes."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import pytest

from smartspec.cli.bench import command_line
from smartspec.loadtest import workloads
from smartspec.loadtest.loadgen import parse_trace
from smartspec.loadtest.plots import binned
from smartspec.loadtest.stack import step_rows, window_stats
from smartspec.loadtest.sweep import LoadSweepConfig, Point, Sweep, SweepError, parse_policies, parse_rates
from smartspec.sim.report import RequestRecord


def test_policies_map_to_up_flags() -> None:
    ps = parse_policies("off,fixed:3,goodput,goodput+controller")
    assert [p.label for p in ps] == ["off", "fixed:3", "goodput", "goodput+controller"]
    assert ps[0].up_args() == ["--policy", "off", "--fixed-k", "0", "--no-controller"]
    assert ps[1].up_args() == ["--policy", "fixed", "--fixed-k", "3", "--no-controller"]
    assert ps[3].up_args() == ["--policy", "goodput", "--fixed-k", "3"]
    assert all(p.controller for p in parse_policies("off,goodput", controller=True))
    uniform = parse_policies("goodput-uniform,goodput-uniform+controller,fixed:1,fixed:8")
    assert uniform[0].up_args() == ["--policy", "goodput-uniform", "--fixed-k", "3", "--no-controller"]
    assert uniform[1].up_args() == ["--policy", "goodput-uniform", "--fixed-k", "3"]
    assert [p.fixed_k for p in uniform[2:]] == [1, 8]
    for bad in ("fixed:x", "fixed:0", "fixed:9", "greedy", "off,off", "", "goodput+magic", "goodput-other"):
        with pytest.raises(ValueError):
            parse_policies(bad)


def test_rates_are_positive_sorted_and_unique() -> None:
    assert parse_rates("0.5, 0.1,0.5") == [0.1, 0.5]
    assert parse_rates("none") == []  # closed loop or dynamic trace only
    for bad in ("", "0", "-1", "a", "inf"):
        with pytest.raises(ValueError):
            parse_rates(bad)


def test_workloads_come_from_the_installed_wheels() -> None:
    he = workloads.load("humaneval")
    assert len(he.prompts) == 164 and he.default_max_tokens == 128
    assert all("```python" in p and "def " in p for p in he.prompts)
    gsm = workloads.load("gsm8k")
    assert len(gsm.prompts) == 100 and all(p.startswith(workloads.GSM8K_INSTRUCTION) for p in gsm.prompts)
    syn = workloads.load("synthetic", synthetic_words=5)
    assert len(syn.prompts) == 64 and len(syn.prompts[0].split()) == 3 + 5
    assert syn.messages(64) == syn.messages(0) == [{"role": "user", "content": syn.prompts[0]}]
    assert workloads.load("humaneval", seed=1).prompts != he.prompts  # shuffled by seed, deterministically
    assert workloads.load("humaneval").prompts == he.prompts
    with pytest.raises(ValueError):
        workloads.load("sharegpt")


def test_mixed_workload_alternates_the_two_sets_and_tags_each_request() -> None:
    he, gsm = workloads.load("humaneval", seed=3), workloads.load("gsm8k", seed=3)
    mixed = workloads.load("mixed", seed=3)
    assert len(mixed.prompts) == 200 and mixed.default_max_tokens == 128
    assert [mixed.tag(i) for i in range(5)] == ["humaneval", "gsm8k", "humaneval", "gsm8k", "humaneval"]
    assert mixed.tag(201) == "gsm8k"  # prompts and tags cycle together
    assert mixed.prompts[0::2] == he.prompts[:100] and mixed.prompts[1::2] == gsm.prompts  # each in its seeded order
    assert workloads.load("mixed", seed=3) == mixed and workloads.load("mixed", seed=4).prompts != mixed.prompts
    assert he.tag(7) == "humaneval"
    # Another trace's draw moves prompts only among their own set's positions: still alternating, same multiset.
    other = mixed.reshuffled(random.Random(1))
    assert other.prompts != mixed.prompts and other.tags == mixed.tags
    assert sorted(other.prompts[0::2]) == sorted(mixed.prompts[0::2])
    assert sorted(other.prompts[1::2]) == sorted(mixed.prompts[1::2])
    assert other == mixed.reshuffled(random.Random(1))

def raw_step(ts: float, batch: int, sum_k: int, step: int = 1) -> dict[str, str]:
    return {"v": "1", "ts": f"{ts:.6f}", "step": str(step), "batch_size": str(batch), "num_prefills": "0",
            "prefill_tokens": "0", "sum_k": str(sum_k), "max_k": str(sum_k), "emitted": str(batch + sum_k),
            "draft_s": "0.1", "verify_s": "0.2", "overhead_s": "0.01", "policy_version": "0"}


def test_steps_fall_into_their_windows_and_average_k_per_running_request() -> None:
    points = [Point("goodput", "rate", 0.5, 4, 10.0, 1000.0, 1010.0),
              Point("goodput", "rate", 2.0, 4, 5.0, 1011.0, 1016.0)]
    raw = [raw_step(999.0, 1, 4), raw_step(1001.0, 1, 4), raw_step(1002.0, 2, 6), raw_step(1005.0, 0, 0),
           raw_step(1012.0, 4, 0), {"v": "1", "ts": "bad"}]
    rows = step_rows(raw, "goodput", 995.0, points)
    assert [r["window"] for r in rows] == ["warmup", "rate 0.5", "rate 0.5", "rate 0.5", "rate 2"]
    assert rows[1]["t_s"] == 6.0 and rows[2]["mean_k"] == 3.0 and math.isnan(rows[3]["mean_k"])
    assert rows[0]["step_s"] == pytest.approx(0.31)
    k, batch, n = window_stats(rows, 1000.0, 1010.0)
    assert k == pytest.approx(10 / 3) and (batch, n) == (1.5, 2)  # Σk / Σ running over decode steps only
    assert window_stats(rows, 2000.0, 2001.0)[2] == 0
    t, kb, b = binned(rows[1:], width=5.0)
    assert t == [7.5, 12.5, 17.5] and kb[0] == pytest.approx(10 / 3) and math.isnan(kb[1]) and b == [1.5, 0.0, 4.0]


def test_command_line_makes_paths_under_the_working_directory_relative(monkeypatch: pytest.MonkeyPatch,
                                                                       tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    cmd = command_line(["bench", "sweep", "--out", str(tmp_path / "res"), f"--log-dir={tmp_path / 'logs'}",
                        "--rates", "1,2"])
    assert cmd == "smartspec bench sweep --out res --log-dir=logs --rates 1,2"


def test_report_files_tables_and_plots_from_records(tmp_path: Path) -> None:
    """The whole results folder from hand-made records (the smoke test covers real ones)."""
    cfg = LoadSweepConfig(policies=parse_policies("off,fixed:3,goodput"), rates=[0.5, 2.0], out=tmp_path, requests=3,
                      workload="synthetic", models="tiny", trace=parse_trace("3@1"), trace_text="3@1",
                      emulate_acceptance=0.7)
    sw = Sweep(cfg, "smartspec bench sweep --models tiny")
    latency = {"off": (10.0, 30.0), "fixed:3": (7.0, 40.0), "goodput": (6.5, 29.0)}
    for policy, (light, heavy) in latency.items():
        for rate, e2e in ((0.5, light), (2.0, heavy)):
            sw.records += [RequestRecord(policy, rate, "synthetic", i * 2.0, 1.0, e2e + i * 0.1, 20, 64, 0.1,
                                         acceptance_emulated=True) for i in range(3)]
            sw.points.append(Point(policy, "rate", rate, 3, 12.0, 100.0 + rate, 110.0 + rate))
        sw.trace_records += [RequestRecord(policy, 1.0, "synthetic", float(i), 1.0, 5.0, 20, 64, phase="p1:3@1")
                             for i in range(3)]
        sw.points.append(Point(policy, "trace", math.nan, 3, 8.0, 200.0, 208.0))
    sw.steps = [{"policy": "goodput", "t_s": float(i), "ts": 100.0 + i, "window": "rate 0.5", "batch_size": 1 + i % 3,
                 "sum_k": 4 - i % 3, "mean_k": (4 - i % 3) / (1 + i % 3)} for i in range(30)]
    sw.save()
    sw.write_readme()
    names = {p.name for p in tmp_path.iterdir()}
    assert {"records.csv", "points.csv", "summary.csv", "ratios.csv", "steps.csv", "trace_records.csv",
            "trace_summary.csv", "README.md", "latency_vs_rate.png", "throughput_vs_rate.png", "k_over_time.png",
            "trace.png"} <= names
    readme = (tmp_path / "README.md").read_text()
    assert "ACCEPTANCE EMULATED (α = 0.7)" in readme and "Command: `smartspec bench sweep --models tiny`" in readme
    with (tmp_path / "means.csv").open() as f:
        means = {float(r["rate"]): r for r in csv.DictReader(f)}
    assert means[0.5]["best_static"] == "fixed:3"
    assert float(means[0.5]["vs_best_static"]) == pytest.approx(6.6 / 7.1, rel=1e-4)
    assert means[2.0]["best_static"] == "off"
    assert float(means[2.0]["speedup_vs_off"]) == pytest.approx(30.1 / 29.1, rel=1e-4)
    with (tmp_path / "ratios.csv").open() as f:
        ratios = {(r["rate"], r["static"]): r for r in csv.DictReader(f)}
    best = ratios[("0.5", "best static")]  # one trace: chosen in hindsight, the same number as means.csv
    assert float(best["ratio"]) == pytest.approx(6.6 / 7.1, rel=1e-4) and best["n"] == "1"
    assert best["selected"] == "fixed:3 (hindsight, same trace)" and best["lo95"] == "nan" and best["pass"] == "–"
    assert float(ratios[("2", "off")]["ratio"]) == pytest.approx(29.1 / 30.1, rel=1e-4)
    assert "chosen in hindsight on the same trace" in readme and "| rate | adaptive | static |" in readme
    assert str(tmp_path) not in readme


def test_a_timed_point_sends_at_least_the_minimum_and_is_the_same_for_every_policy(tmp_path: Path) -> None:
    def sweep(requests: int | None, duration_s: float | None) -> Sweep:
        return Sweep(LoadSweepConfig(policies=parse_policies("off"), rates=[1.0], out=tmp_path, requests=requests,
                                 duration_s=duration_s, workload="synthetic"), "cmd")

    timed = sweep(None, 100.0).schedule(1.0)
    assert all(a.t < 100.0 for a in timed) and len(timed) == pytest.approx(100, rel=0.3)
    assert sweep(5, 100.0).schedule(1.0) == timed  # the minimum does not bind
    floor = sweep(500, 100.0).schedule(1.0)
    assert len(floor) == 500 and floor[: len(timed)] == timed
    assert sweep(7, None).schedule(1.0) == timed[:7]


def test_resume_keeps_complete_policies_and_refuses_other_settings(tmp_path: Path) -> None:
    first = Sweep(LoadSweepConfig(policies=parse_policies("off,goodput"), rates=[1.0, 2.0], out=tmp_path, requests=2,
                              workload="synthetic"), "smartspec bench sweep --policies off,goodput")
    for rate in (1.0, 2.0):
        first.records += [RequestRecord("off", rate, "synthetic", 0.0, 0.1, 1.0, 5, 16)] * 2
        first.points.append(Point("off", "rate", rate, 2, 1.0, 10.0, 11.0))
    first.records.append(RequestRecord("goodput", 1.0, "synthetic", 0.0, 0.1, 1.0, 5, 16))  # goodput: half done
    first.points.append(Point("goodput", "rate", 1.0, 1, 1.0, 20.0, 21.0))
    first.save()

    second = Sweep(LoadSweepConfig(policies=parse_policies("fixed:3,goodput"), rates=[1.0, 2.0], out=tmp_path,
                               requests=2, workload="synthetic", resume=True), "smartspec bench sweep --resume")
    second._load_previous()
    assert {r.policy for r in second.records} == {"off"} and len(second.records) == 4  # goodput runs again
    assert second.labels() == ["off", "fixed:3", "goodput"]
    assert second.commands == ["smartspec bench sweep --policies off,goodput", "smartspec bench sweep --resume"]
    assert second._done("off") and not second._done("goodput")

    other = Sweep(LoadSweepConfig(policies=parse_policies("off"), rates=[1.0], out=tmp_path, requests=2,
                              workload="synthetic", max_tokens=99, resume=True), "cmd")
    with pytest.raises(SweepError, match="max_tokens"):
        other._load_previous()


@pytest.mark.parametrize("args", [["--policies", "fixed:k"], ["--rates", "0"], ["--trace", "5@0"], ["--requests", "0"],
                                  ["--cv", "-1"], ["--emulate-acceptance", "1.5"], ["--duration-s", "0"]])
def test_cli_refuses_bad_input_before_starting_anything(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from smartspec.cli.main import main

    assert main(["bench", "sweep", "--models", "tiny", *args]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def _sweep(tmp_path: Path, **kw: object) -> Sweep:
    cfg = LoadSweepConfig(**{"policies": parse_policies("off,goodput"), "rates": [1.0, 2.0], "out": tmp_path,
                         "requests": 2, "workload": "synthetic", **kw})  # type: ignore[arg-type]
    return Sweep(cfg, "cmd")


def test_traces_draw_their_own_arrivals_and_prompts_and_trace_zero_is_the_old_point(tmp_path: Path) -> None:
    sw = _sweep(tmp_path, traces=3, requests=6)
    from smartspec.loadtest.loadgen import arrivals, seeded_rng

    assert sw.schedule(1.0, 0) == arrivals(1.0, count=6, rng=seeded_rng(0, "rate", 1.0))  # as before --traces
    assert len({tuple(a.t for a in sw.schedule(1.0, t)) for t in range(3)}) == 3
    assert sw.schedule(1.0, 2) == _sweep(tmp_path, traces=3, requests=6).schedule(1.0, 2)  # same for every policy
    assert sw.schedule(1.0, 1) != sw.schedule(2.0, 1)
    assert sw.prompts(1.0, 0) is sw.workload
    assert sw.prompts(1.0, 1).prompts != sw.workload.prompts
    assert sw.prompts(1.0, 1) == _sweep(tmp_path, traces=3).prompts(1.0, 1)
    spec = sw.spec("goodput", sw.prompts(1.0, 1), trace=1)
    rec = spec.record(4, sw.schedule(1.0, 1)[4])
    assert (rec.trace, rec.seq, rec.workload, rec.rate) == (1, 4, "synthetic", 1.0)
    assert spec.body("m", 4)["messages"] == sw.prompts(1.0, 1).messages(4)


def test_the_dynamic_trace_is_drawn_once_per_trace_and_judged_over_its_draws(tmp_path: Path) -> None:
    from smartspec.loadtest.loadgen import seeded_rng, trace_arrivals

    phases = parse_trace("4@0.1,6@2,4@0.1")
    sw = _sweep(tmp_path, traces=3, rates=[], trace=phases, trace_text="4@0.1,6@2,4@0.1")
    assert sw.trace_schedule(0) == trace_arrivals(phases, cv=1.0, rng=seeded_rng(0, "trace"))  # as before
    assert len({tuple(a.t for a in sw.trace_schedule(t)) for t in range(3)}) == 3
    assert sw.trace_schedule(2) == _sweep(tmp_path, traces=3, rates=[], trace=phases).trace_schedule(2)
    assert sw.trace_prompts(0) is sw.workload and sw.trace_prompts(1).prompts != sw.workload.prompts
    # Draw t's records carry t; the comparison pools every phase of a draw, one log ratio per draw.
    spec = sw.spec("goodput", sw.trace_prompts(2), trace=2)
    assert spec.record(0, sw.trace_schedule(2)[0]).trace == 2
    means = {"off": (20.0, 22.0, 18.0), "fixed:3": (15.0, 30.0, 16.0), "goodput": (12.0, 18.0, 15.0)}
    for policy, by_draw in means.items():
        for t, m in enumerate(by_draw):
            for i, (rate, e2e) in enumerate(((0.1, m - 1.0), (2.0, m + 2.0), (0.1, m - 1.0))):
                sw.trace_records.append(RequestRecord(policy, rate, "synthetic", float(i), 1.0, e2e, 20, 64,
                                                      trace=t, seq=i, phase=f"p{i}"))
    rows = {r["static"]: r for r in sw.comparisons() if r["point"] == "dynamic trace"}
    assert math.isnan(rows["off"]["rate"]) and rows["off"]["n"] == 3
    assert rows["off"]["ratio"] == pytest.approx(math.exp(sum(math.log(g / o) for g, o in
                                                              zip(means["goodput"], means["off"], strict=True)) / 3))
    # Leave-one-out: draw 0 gets the best of draws 1-2 (off 20 vs fixed:3 23), draw 1 of draws 0 and 2 (off 19
    # vs 15.5), draw 2 of draws 0-1 (off 21 vs 22.5).
    assert rows["best static"]["selected"] == "off ×2, fixed:3 ×1 (leave-one-out)"
    assert not sw._done("off")
    sw.points = [Point("off", "trace", math.nan, 14, 1.0, 0.0, 1.0, trace=t) for t in (0, 2)]
    assert not sw._done("off") and sw.points[1].window == "trace 2"
    sw.points.append(Point("off", "trace", math.nan, 14, 1.0, 0.0, 1.0, trace=1))
    assert sw._done("off")


def test_a_policy_is_done_only_with_every_trace_and_the_closed_loop(tmp_path: Path) -> None:
    sw = _sweep(tmp_path, traces=2, closed_loop=3)
    sw.points = [Point("off", "rate", r, 2, 1.0, 0.0, 1.0, trace=t) for r in (1.0, 2.0) for t in (0, 1)]
    assert not sw._done("off")
    sw.points.append(Point("off", "closed", 0.0, 3, 1.0, 0.0, 1.0))
    assert sw._done("off")
    sw.points = [p for p in sw.points if (p.rate, p.trace) != (2.0, 1)]
    assert not sw._done("off")
    assert Point("off", "rate", 2.0, 2, 1.0, 0.0, 1.0, trace=1).window == "rate 2 (trace 1)"
    assert Point("off", "closed", 0.0, 2, 1.0, 0.0, 1.0).window == "closed loop"


def test_resume_reads_a_folder_from_before_traces_as_one_trace(tmp_path: Path) -> None:
    """sweep.json without traces/closed_loop, points.csv and records.csv without a trace column (older sweeps)."""
    first = _sweep(tmp_path)
    for rate in (1.0, 2.0):
        first.records += [RequestRecord("off", rate, "synthetic", 0.0, 0.1, 1.0, 5, 16)] * 2
        first.points.append(Point("off", "rate", rate, 2, 1.0, 10.0, 11.0))
    first.save()
    settings = json.loads((tmp_path / "sweep.json").read_text())
    del settings["traces"], settings["closed_loop"]
    (tmp_path / "sweep.json").write_text(json.dumps(settings))
    for name, drop in (("points.csv", "trace"), ("records.csv", "trace"), ("records.csv", "seq")):
        with (tmp_path / name).open() as f:
            rows = list(csv.DictReader(f))
        with (tmp_path / name).open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != drop])
            w.writeheader()
            w.writerows({k: v for k, v in r.items() if k != drop} for r in rows)

    again = _sweep(tmp_path, resume=True)
    again._load_previous()
    assert again._done("off") and not again._done("goodput") and len(again.records) == 4
    assert {(p.trace, r.trace) for p in again.points for r in again.records} == {(0, 0)}
    with pytest.raises(SweepError, match="traces 1 there, 2 now"):
        _sweep(tmp_path, resume=True, traces=2)._load_previous()
    with pytest.raises(SweepError, match="closed_loop 0 there, 5 now"):
        _sweep(tmp_path, resume=True, closed_loop=5)._load_previous()


def test_closed_loop_and_traces_reach_the_pass_fail_table_and_readme(tmp_path: Path) -> None:
    sw = _sweep(tmp_path, policies=parse_policies("off,fixed:3,goodput"), rates=[1.0], traces=3, closed_loop=4)
    lat = {"off": 10.0, "fixed:3": 8.0, "goodput": 7.6}
    for policy, base in lat.items():
        sw.closed_records += [RequestRecord(policy, 0.0, "mixed-a" if i % 2 else "mixed-b", 0.0, 0.5,
                                            base * (1 + 0.1 * i) * (1.01 if i == 3 and policy == "goodput" else 1),
                                            phase="closed-loop", seq=i) for i in range(4)]
        sw.points.append(Point(policy, "closed", 0.0, 4, 40.0, 0.0, 40.0))
        for t in range(3):
            sw.records += [RequestRecord(policy, 1.0, "synthetic", 0.0, 0.5, base * (1 + 0.2 * t) + i, trace=t, seq=i)
                           for i in range(2)]
            sw.points.append(Point(policy, "rate", 1.0, 2, 5.0, 100.0, 105.0, trace=t))
    sw.save()
    sw.write_readme()
    with (tmp_path / "ratios.csv").open() as f:
        rows = list(csv.DictReader(f))
    closed = {r["static"]: r for r in rows if r["point"] == "closed loop"}
    assert closed["fixed:3"]["n"] == "4" and closed["fixed:3"]["unit"] == "requests"
    assert float(closed["fixed:3"]["lo95"]) < float(closed["fixed:3"]["ratio"]) < float(closed["fixed:3"]["hi95"])
    assert closed["best static"]["selected"] == "fixed:3 (hindsight)"
    loaded = {r["static"]: r for r in rows if r["point"] == "rate 1"}
    assert loaded["best static"]["n"] == "3" and loaded["best static"]["selected"] == "fixed:3 ×3 (leave-one-out)"
    assert loaded["off"]["pass"] == "pass"
    readme = (tmp_path / "README.md").read_text()
    assert "### Closed loop (light load), paired per request" in readme
    assert "leave-one-out" in readme and "## Mean latency per prompt source" in readme
    assert (tmp_path / "closed_records.csv").exists()


def test_closed_loop_throughput_counts_only_the_time_the_policy_was_serving(tmp_path: Path) -> None:
    # Interleaved: the two policies' requests alternate, so each one's span also holds the other's requests.
    sw = _sweep(tmp_path, policies=parse_policies("off,goodput"), rates=[], closed_loop=2)
    t = 0.0
    for i in range(2):
        for policy, e2e in (("off", 8.0), ("goodput", 4.0)):
            sw.closed_records.append(RequestRecord(policy, 0.0, "synthetic", t, 0.5, e2e, completion_tokens=64,
                                                   phase="closed-loop", seq=i))
            t += e2e
    rows = {r["policy"]: r for r in sw.closed_summary()}
    assert rows["off"]["tokens_per_s"] == 128 / 16 and rows["goodput"]["tokens_per_s"] == 128 / 8


@pytest.mark.parametrize("args", [["--traces", "0"], ["--closed-loop", "-1"], ["--rates", "none"],
                                  ["--trace", "1@60,bad"], ["--policies", "goodput-magic"]])
def test_cli_refuses_bad_new_flags(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from smartspec.cli.main import main

    assert main(["bench", "sweep", "--models", "tiny", *args]) == 2
    assert capsys.readouterr().err.startswith("error: ")
