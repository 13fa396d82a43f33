"""Recorded agreement: read from batch-1 step records, merged over runs, and replayed by the simulator exactly."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from smartspec.engine.sinks import MemorySink
from smartspec.errors import InvalidRequest
from smartspec.policy.cost_model import CostModel
from smartspec.sim.policies import build_policy
from smartspec.sim.replay import RecordedRequest, merge, read_files, read_requests
from smartspec.sim.run import EngineConfig, simulate
from smartspec.sim.workload import SimRequest
from smartspec.telemetry.records import decode, encode

COST = CostModel("replay", verify={"const": 0.3}, draft={"max_k": 0.1}, overhead={"const": 0.001})


def closed_loop(accept: float, n: int = 6) -> list[SimRequest]:
    """One request at a time (arrivals far apart), as the recorded closed loop runs them."""
    return [SimRequest(i, i * 1e4, 20 + i, 40, (accept,), 0.0) for i in range(n)]


def record_run(path: Path, reqs: list[SimRequest], policy: str) -> list[int]:
    """Simulate `policy`, write its step records as the bench saves them; returns accepted drafts per request."""
    sink = MemorySink()
    res = simulate(reqs, build_policy(policy, COST, 8), COST, label=policy, engine=EngineConfig(max_batch=4, max_k=8),
                   sinks=[sink], seed=3)
    path.write_text("".join(json.dumps(encode(s, "r0", 1.0)) + "\n" for s in sink.records))
    return [r.accepted_tokens for r in res.records]


def test_a_replayed_run_accepts_exactly_what_was_recorded(tmp_path: Path) -> None:
    reqs = closed_loop(0.8)
    recorded = record_run(tmp_path / "fixed-7.jsonl", reqs, "fixed:7")
    got, conflicts = read_files([tmp_path / "fixed-7.jsonl"])
    assert conflicts == 0
    assert [(g.prompt_len, g.output_len) for g in got] == [(r.prompt_len, r.output_len) for r in reqs]
    assert all(len(g.known) > 0.8 * g.output_len for g in got)  # all but bonus tokens are tested
    replayed = [replace(r, accept=(0.5,), agreement=g.agreement()) for r, g in zip(reqs, got, strict=True)]
    assert record_run(tmp_path / "again.jsonl", replayed, "fixed:7") == recorded
    # another k meets the same agreement: never more accepted than the positions that agreed
    for r, a in zip(got, record_run(tmp_path / "k3.jsonl", replayed, "fixed:3"), strict=True):
        assert a <= sum(r.agreement())


def test_runs_of_the_same_prompts_fill_each_others_untested_positions(tmp_path: Path) -> None:
    reqs = closed_loop(0.9, n=4)
    record_run(tmp_path / "a.jsonl", reqs, "fixed:7")
    record_run(tmp_path / "b.jsonl", reqs, "fixed:4")  # its bonus tokens fall elsewhere
    alone = read_files([tmp_path / "a.jsonl"])[0]
    both, conflicts = read_files([tmp_path / "a.jsonl", tmp_path / "b.jsonl"])
    assert conflicts == 0  # the same seed: the same truth
    assert sum(len(r.known) for r in both) > sum(len(r.known) for r in alone)


def test_merge_counts_disagreements_and_refuses_other_prompts() -> None:
    a = [RecordedRequest(10, 5, {1: True, 2: False})]
    b = [RecordedRequest(10, 5, {1: False, 3: True})]
    merged, conflicts = merge([a, b])
    assert conflicts == 1 and merged[0].known == {1: True, 2: False, 3: True}
    assert merged[0].agreement() == (True, True, False, True, True)  # untested positions count as agreeing
    with pytest.raises(InvalidRequest, match="not the same prompts"):
        merge([a, [RecordedRequest(11, 5, {})]])


def test_records_of_a_batch_are_refused_with_the_reason(tmp_path: Path) -> None:
    reqs = [SimRequest(i, 0.0, 20, 30, (0.8,), 0.0) for i in range(3)]  # all at once: batch 3
    record_run(tmp_path / "batched.jsonl", reqs, "fixed:3")
    with pytest.raises(InvalidRequest, match="only runs at batch 1"):
        read_files([tmp_path / "batched.jsonl"])
    (tmp_path / "bad.jsonl").write_text('{"v": "1"}\n')
    with pytest.raises(InvalidRequest, match="line 1"):
        read_files([tmp_path / "bad.jsonl"])
    with pytest.raises(InvalidRequest, match="cannot read"):
        read_files([tmp_path / "missing.jsonl"])


def test_decoded_records_give_the_same_requests_as_the_file(tmp_path: Path) -> None:
    record_run(tmp_path / "run.jsonl", closed_loop(0.7, n=3), "fixed:5")
    lines = (tmp_path / "run.jsonl").read_text().splitlines()
    from_records = read_requests(decode(json.loads(line)) for line in lines)
    assert from_records == read_files([tmp_path / "run.jsonl"])[0]
