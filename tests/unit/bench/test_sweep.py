"""The sweep's parts that need no stack: policies, workloads, step windows, and the report it writes."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

from bench import workloads
from bench.loadgen import parse_trace
from bench.plots import binned
from bench.sweep import (
    Point,
    Sweep,
    SweepConfig,
    SweepError,
    parse_policies,
    parse_rates,
    step_rows,
    window_stats,
)
from smartspec.cli.bench import command_line
from smartspec.sim.report import RequestRecord


def test_policies_map_to_up_flags() -> None:
    ps = parse_policies("off,fixed:3,goodput,goodput+controller")
    assert [p.label for p in ps] == ["off", "fixed:3", "goodput", "goodput+controller"]
    assert ps[0].up_args() == ["--policy", "off", "--fixed-k", "0", "--no-controller"]
    assert ps[1].up_args() == ["--policy", "fixed", "--fixed-k", "3", "--no-controller"]
    assert ps[3].up_args() == ["--policy", "goodput", "--fixed-k", "3"]
    assert all(p.controller for p in parse_policies("off,goodput", controller=True))
    for bad in ("fixed:x", "fixed:0", "fixed:9", "greedy", "off,off", "", "goodput+magic"):
        with pytest.raises(ValueError):
            parse_policies(bad)


def test_rates_are_positive_sorted_and_unique() -> None:
    assert parse_rates("0.5, 0.1,0.5") == [0.1, 0.5]
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
    assert (k, batch, n) == (pytest.approx(10 / 3), 1.5, 2)  # Σk / Σ running over decode steps only
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
    cfg = SweepConfig(policies=parse_policies("off,fixed:3,goodput"), rates=[0.5, 2.0], out=tmp_path, requests=3,
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
    with (tmp_path / "ratios.csv").open() as f:
        ratios = {float(r["rate"]): r for r in csv.DictReader(f)}
    assert ratios[0.5]["best_static"] == "fixed:3"
    assert float(ratios[0.5]["vs_best_static"]) == pytest.approx(6.6 / 7.1, rel=1e-4)
    assert ratios[2.0]["best_static"] == "off"
    assert float(ratios[2.0]["speedup_vs_off"]) == pytest.approx(30.1 / 29.1, rel=1e-4)
    assert str(tmp_path) not in readme


def test_a_timed_point_sends_at_least_the_minimum_and_is_the_same_for_every_policy(tmp_path: Path) -> None:
    def sweep(requests: int | None, duration_s: float | None) -> Sweep:
        return Sweep(SweepConfig(policies=parse_policies("off"), rates=[1.0], out=tmp_path, requests=requests,
                                 duration_s=duration_s, workload="synthetic"), "cmd")

    timed = sweep(None, 100.0).schedule(1.0)
    assert all(a.t < 100.0 for a in timed) and len(timed) == pytest.approx(100, rel=0.3)
    assert sweep(5, 100.0).schedule(1.0) == timed  # the minimum does not bind
    floor = sweep(500, 100.0).schedule(1.0)
    assert len(floor) == 500 and floor[: len(timed)] == timed
    assert sweep(7, None).schedule(1.0) == timed[:7]


def test_resume_keeps_complete_policies_and_refuses_other_settings(tmp_path: Path) -> None:
    first = Sweep(SweepConfig(policies=parse_policies("off,goodput"), rates=[1.0, 2.0], out=tmp_path, requests=2,
                              workload="synthetic"), "smartspec bench sweep --policies off,goodput")
    for rate in (1.0, 2.0):
        first.records += [RequestRecord("off", rate, "synthetic", 0.0, 0.1, 1.0, 5, 16)] * 2
        first.points.append(Point("off", "rate", rate, 2, 1.0, 10.0, 11.0))
    first.records.append(RequestRecord("goodput", 1.0, "synthetic", 0.0, 0.1, 1.0, 5, 16))  # goodput: half done
    first.points.append(Point("goodput", "rate", 1.0, 1, 1.0, 20.0, 21.0))
    first.save()

    second = Sweep(SweepConfig(policies=parse_policies("fixed:3,goodput"), rates=[1.0, 2.0], out=tmp_path,
                               requests=2, workload="synthetic", resume=True), "smartspec bench sweep --resume")
    second._load_previous()
    assert {r.policy for r in second.records} == {"off"} and len(second.records) == 4  # goodput runs again
    assert second.labels() == ["off", "fixed:3", "goodput"]
    assert second.commands == ["smartspec bench sweep --policies off,goodput", "smartspec bench sweep --resume"]
    assert second._done("off") and not second._done("goodput")

    other = Sweep(SweepConfig(policies=parse_policies("off"), rates=[1.0], out=tmp_path, requests=2,
                              workload="synthetic", max_tokens=99, resume=True), "cmd")
    with pytest.raises(SweepError, match="max_tokens"):
        other._load_previous()


@pytest.mark.parametrize("args", [["--policies", "fixed:k"], ["--rates", "0"], ["--trace", "5@0"], ["--requests", "0"],
                                  ["--cv", "-1"], ["--emulate-acceptance", "1.5"], ["--duration-s", "0"]])
def test_cli_refuses_bad_input_before_starting_anything(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from smartspec.cli.main import main

    assert main(["bench", "sweep", "--models", "tiny", *args]) == 2
    assert capsys.readouterr().err.startswith("error: ")
