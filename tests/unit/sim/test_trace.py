"""The one trace grammar: parsing, clear errors, the simulator's requests per phase, both CLIs reading it alike."""

from __future__ import annotations

from typing import Any

import pytest

from smartspec.sim.acceptance import parse_acceptance
from smartspec.sim.trace import Phase, parse_trace
from smartspec.sim.workload import WorkloadSpec, parse_arrivals, parse_lengths


def test_durations_counts_and_pauses() -> None:
    phases = parse_trace("60s@1, 2m@4,30@0.5,10s@0,")
    assert [(p.rate, p.duration_s, p.count) for p in phases] == [
        (1.0, 60.0, None), (4.0, 120.0, None), (0.5, None, 30), (0.0, 10.0, None)]
    assert [p.name for p in phases] == ["p1:60s@1", "p2:2m@4", "p3:30@0.5", "p4:10s@0"]
    assert [p.describe() for p in phases] == ["1/s for 60 s", "4/s for 120 s", "30 requests at 0.5/s", "pause 10 s"]
    # The bare number is a request count in both commands: `1@60` is one request at 60 req/s.
    (one,) = parse_trace("1@60")
    assert (one.count, one.rate, one.duration_s) == (1, 60.0, None)


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty trace"),
    (" , ", "empty trace"),
    ("60s@1,60@", "phase 2 '60@'"),
    ("x@1", "phase 1 'x@1'"),
    ("60s@1,2.5@1", "phase 2 '2.5@1': a request count must be an integer"),
    ("5@0", "phase 1 '5@0': phase rate must be > 0"),
    ("60s@-1", "phase 1 '60s@-1'"),
    ("0s@1", "phase 1 '0s@1': phase duration/count must be positive"),
    ("10s@0", "only pauses"),
    ("1@60@2", "phase 1"),
])
def test_bad_phases_are_named(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_trace(text)


def test_a_phase_has_a_duration_or_a_count() -> None:
    with pytest.raises(ValueError):
        Phase(1.0)
    with pytest.raises(ValueError):
        Phase(1.0, duration_s=1.0, count=2)


def test_the_simulator_runs_counted_phases_and_pauses() -> None:
    spec = WorkloadSpec(parse_lengths("fixed:16"), parse_lengths("fixed:8"), parse_acceptance("fixed:0.8"),
                        parse_arrivals("poisson"), 3, seed=1)
    reqs = spec.trace(parse_trace("20s@2,50@10,30s@0,10s@1"))
    by = {name: [r for r in reqs if r.phase == name] for name in ("p1:20s@2", "p2:50@10", "p4:10s@1")}
    assert len(by["p2:50@10"]) == 50 and {r.rate for r in by["p2:50@10"]} == {10.0}
    assert max(r.arrival_s for r in by["p1:20s@2"]) < 20 <= min(r.arrival_s for r in by["p2:50@10"])
    end_of_counted = max(r.arrival_s for r in by["p2:50@10"])
    assert min(r.arrival_s for r in by["p4:10s@1"]) >= end_of_counted + 30  # the pause
    assert max(r.arrival_s for r in by["p4:10s@1"]) < end_of_counted + 40
    assert [r.seq_id for r in reqs] == list(range(len(reqs)))


def test_both_clis_read_the_same_string_as_the_same_phases(monkeypatch: pytest.MonkeyPatch) -> None:
    """`smartspec bench sweep --trace` and `smartspec sim sweep --trace`, through their argument handling."""
    from smartspec.cli.main import main
    from smartspec.loadtest import sweep as bench_sweep
    from smartspec.sim import output as sim_output
    from smartspec.sim import sweep as sim_sweep

    seen: dict[str, Any] = {}

    def bench_run(cfg: bench_sweep.LoadSweepConfig, command: str) -> Any:
        seen["bench"] = tuple(cfg.trace or ())
        return cfg.out

    def sim_run(cfg: sim_sweep.SimSweepConfig, **_: Any) -> Any:
        seen["sim"] = tuple(cfg.trace or ())
        raise SystemExit(0)  # stop before simulating anything

    monkeypatch.setattr("smartspec.cli.bench.signal.signal", lambda *a: None)  # keep pytest's SIGTERM handler
    monkeypatch.setattr(bench_sweep, "run_sweep", bench_run)
    monkeypatch.setattr(sim_sweep, "run_sweep", sim_run)
    monkeypatch.setattr(sim_output, "write_results", lambda *a, **k: [])
    text = "1@60,30s@2,1m@0.5,10s@0,20@4"
    assert main(["bench", "sweep", "--models", "tiny", "--workload", "synthetic", "--trace", text,
                 "--out", "unused"]) == 0
    with pytest.raises(SystemExit):
        main(["sim", "sweep", "--trace", text, "--quiet"])
    assert seen["bench"] == seen["sim"] == parse_trace(text)
    assert seen["sim"][0].count == 1 and seen["sim"][0].rate == 60.0


def test_the_sim_cli_names_the_bad_phase(capsys: pytest.CaptureFixture[str]) -> None:
    from smartspec.cli.main import main

    assert main(["sim", "sweep", "--trace", "60s@1,2@"]) == 2
    assert "trace phase 2 '2@'" in capsys.readouterr().err
