"""`smartspec bench sweep` end to end on tiny models: two policies (a stack restart each), a closed loop, two rates on
two arrival traces each, a dynamic trace drawn twice; every request finishes, and the results folder holds its CSVs
(with the paired and over-trace ratios), plots and README. With --interleave, both stacks up at once and the same
requests sent to each in turn."""

from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from smartspec.sim.report import read_csv

MAX_TOKENS = 16


def sweep_processes() -> list[str]:
    """Command lines of smartspec processes the sweep started (its stacks use service 'bench')."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"smartspec.cli.main" in args and b"bench" in args and b"--service" in args:
            found.append(b" ".join(args).decode(errors="replace"))
    return found


def test_sweep_on_tiny_models_writes_every_result(tmp_path: Path) -> None:
    out = tmp_path / "results"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SMARTSPEC_STACK_FILE": str(tmp_path / "unused-stack.json")}
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "smartspec.cli.main", "bench", "sweep", "--models", "tiny", "--workload", "synthetic",
         "--dtype", "float32", "--max-batch-size", "8", "--policies", "off,goodput", "--rates", "2,8",
         "--requests", "4", "--traces", "2", "--closed-loop", "3", "--max-tokens", str(MAX_TOKENS), "--trace", "4@4",
         "--warmup", "1", "--out", str(out),
         "--no-progress", "--ready-timeout-s", "120"],
        env=env, capture_output=True, text=True, timeout=300)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"results in {out}" in proc.stdout

    names = {p.name for p in out.iterdir()}
    assert {"records.csv", "closed_records.csv", "points.csv", "summary.csv", "ratios.csv", "means.csv", "steps.csv",
            "trace_records.csv", "trace_summary.csv", "README.md", "latency_vs_rate.png", "throughput_vs_rate.png",
            "k_over_time.png", "trace.png"} <= names
    for png in ("latency_vs_rate.png", "throughput_vs_rate.png", "k_over_time.png", "trace.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The raw step records per policy: what `smartspec sim fit` calibrates the simulator from.
    from smartspec.sim.calibrate import read_records, step_samples

    for label in ("off", "goodput"):
        assert step_samples(read_records(out / f"steps-{label}.jsonl")), label

    records = read_csv(out / "records.csv")
    assert sorted({(r.policy, r.rate) for r in records}) == [("goodput", 2.0), ("goodput", 8.0), ("off", 2.0),
                                                             ("off", 8.0)]
    assert len(records) == 32
    assert sorted({(r.policy, r.rate, r.trace) for r in records}) == [
        (p, rate, t) for p in ("goodput", "off") for rate in (2.0, 8.0) for t in (0, 1)]
    closed = read_csv(out / "closed_records.csv")
    assert sorted((r.policy, r.seq) for r in closed) == [(p, i) for p in ("goodput", "off") for i in range(3)]
    assert all(r.phase == "closed-loop" for r in closed)
    for policy in ("off", "goodput"):  # one at a time: each request is sent after the previous one's last token
        mine = sorted((r for r in closed if r.policy == policy), key=lambda r: r.seq)
        assert all(b.arrival_s >= a.arrival_s + (a.e2e_s or 0) for a, b in itertools.pairwise(mine))
    for r in records + closed + read_csv(out / "trace_records.csv"):
        assert r.error is None, r
        assert r.completion_tokens == MAX_TOKENS and r.prompt_tokens > 0  # ignore_eos: every policy does the same work
        assert r.ttft_s is not None and r.e2e_s is not None and 0 < r.ttft_s <= r.e2e_s
        assert r.source == "measured" and not r.acceptance_emulated
    assert all(r.drafted_tokens == 0 for r in records if r.policy == "off")

    with (out / "steps.csv").open() as f:
        steps = list(csv.DictReader(f))
    windows = {(s["policy"], s["window"]) for s in steps}
    for policy in ("off", "goodput"):
        assert {(policy, "closed loop"), (policy, "rate 2"), (policy, "rate 2 (trace 1)"), (policy, "rate 8"),
                (policy, "trace"), (policy, "trace 1")} <= windows
    assert all(s["sum_k"] == "0" for s in steps if s["policy"] == "off")

    with (out / "summary.csv").open() as f:
        summary = list(csv.DictReader(f))
    assert len(summary) == 4 and all(s["errors"] == "0" and s["requests"] == "8" and s["traces"] == "2"
                                     for s in summary)
    with (out / "ratios.csv").open() as f:
        ratios = {(r["point"], r["static"]): r for r in csv.DictReader(f)}
    assert ratios[("closed loop", "off")]["n"] == "3" and ratios[("closed loop", "off")]["unit"] == "requests"
    for rate in ("2", "8"):
        row = ratios[(f"rate {rate}", "best static")]
        assert row["n"] == "2" and row["selected"] == "off ×2 (leave-one-out)"  # the only static policy
        assert float(row["lo95"]) <= float(row["ratio"]) <= float(row["hi95"])
    dynamic = ratios[("dynamic trace", "off")]  # the dynamic trace, drawn once per --traces
    assert dynamic["n"] == "2" and float(dynamic["lo95"]) <= float(dynamic["ratio"]) <= float(dynamic["hi95"])
    assert sorted({(r.policy, r.trace) for r in read_csv(out / "trace_records.csv")}) == [
        (p, t) for p in ("goodput", "off") for t in (0, 1)]
    readme = (out / "README.md").read_text()
    assert "### Dynamic trace (all phases together), over its draws" in readme
    assert "### Closed loop (light load), paired per request" in readme
    assert "### Loaded points (open loop), over arrival traces" in readme
    assert "## goodput vs the static policies" in readme and "Command: `smartspec bench sweep" in readme
    assert "![latency_vs_rate.png](latency_vs_rate.png)" in readme

    assert not sweep_processes(), "the sweep left stack processes behind"
    assert elapsed < 120, f"the smoke sweep took {elapsed:.0f}s"


def test_interleaved_sweep_sends_each_round_to_every_policy_before_the_next(tmp_path: Path) -> None:
    """--interleave: both stacks up at once; closed-loop request i reaches both policies before request i + 1 reaches
    either, and each (rate, trace) runs on both before the next starts; one request in flight at a time."""
    out = tmp_path / "results"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SMARTSPEC_STACK_FILE": str(tmp_path / "unused-stack.json")}
    proc = subprocess.run(
        [sys.executable, "-m", "smartspec.cli.main", "bench", "sweep", "--models", "tiny", "--workload", "synthetic",
         "--dtype", "float32", "--max-batch-size", "8", "--policies", "off,goodput", "--rates", "4",
         "--requests", "3", "--traces", "2", "--closed-loop", "4", "--max-tokens", "8", "--warmup", "1",
         "--interleave", "--out", str(out), "--no-progress", "--ready-timeout-s", "120"],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]

    closed = sorted(read_csv(out / "closed_records.csv"), key=lambda r: r.arrival_s)
    assert all(r.error is None and r.completion_tokens == 8 for r in closed)
    assert [r.seq for r in closed] == [0, 0, 1, 1, 2, 2, 3, 3]  # round by round, both policies in each
    assert all({r.policy for r in closed[i:i + 2]} == {"off", "goodput"} for i in range(0, 8, 2))
    for a, b in itertools.pairwise(closed):  # one request at a time across both stacks
        assert b.arrival_s >= a.arrival_s + (a.e2e_s or 0)

    with (out / "points.csv").open() as f:
        points = [p for p in csv.DictReader(f) if p["kind"] == "rate"]
    spans = sorted((float(p["start_unix"]), float(p["end_unix"]), int(p["trace"]), p["policy"]) for p in points)
    assert [t for _, _, t, _ in spans] == [0, 0, 1, 1]  # trace 0 on both, then trace 1 on both
    assert {p for *_, p in spans[:2]} == {p for *_, p in spans[2:]} == {"off", "goodput"}
    assert all(b[0] >= a[1] for a, b in itertools.pairwise(spans))  # never two stacks under load at once
    assert len(read_csv(out / "records.csv")) == 12
    readme = (out / "README.md").read_text()
    assert "Interleaved (`--interleave`)" in readme and "### Closed loop (light load), paired per request" in readme
    assert json.loads((out / "sweep.json").read_text())["interleave"] is True
    assert not sweep_processes(), "the sweep left stack processes behind"
