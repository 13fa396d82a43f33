"""Step records: every documented field is written, and what is written decodes to the same step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smartspec.engine.engine import StepStats
from smartspec.telemetry import records
from smartspec.telemetry.keys import check_service, service_keys


def stats() -> StepStats:
    return StepStats(step_id=7, batch_size=3, num_prefills=1, ks=[2, 0, 3], num_proposed_per_pos=[2, 2, 1],
                     num_accepted_per_pos=[2, 1, 0], num_emitted=9, context_tokens=120, num_forwards=1,
                     real_tokens=12, padded_tokens=16, draft_s=0.01, verify_s=0.02, overhead_s=0.003,
                     prefill_tokens=11, draft_catchup_tokens=4, policy_version=5, decision_s=0.0004,
                     acceptance_by_class={"default": [[2, 2, 1], [2, 1, 0]]})


def test_encode_writes_every_documented_field_as_a_string() -> None:
    entry = records.encode(stats(), "pod-a", ts=1700000000.5)
    assert set(records.FIELDS) <= set(entry) <= set(records.FIELDS) | set(records.OPTIONAL_FIELDS)
    assert all(isinstance(v, str) for v in entry.values())
    assert entry["sum_k"] == "5" and entry["max_k"] == "3" and entry["emitted"] == "9"
    assert json.loads(entry["accepted_per_pos"]) == [2, 1, 0]


def test_decode_round_trip() -> None:
    rec = records.decode({k.encode(): v.encode() for k, v in records.encode(stats(), "pod-a", 1.5).items()})
    assert (rec.replica, rec.step, rec.batch_size, rec.emitted, rec.policy_version) == ("pod-a", 7, 3, 9, 5)
    assert rec.sample.shape.max_k == 3 and rec.sample.shape.draft_tokens == 5
    assert rec.sample.shape.prefill_tokens == 11 and rec.sample.shape.draft_catchup_tokens == 4
    assert rec.step_s == pytest.approx(0.033)
    assert rec.predicted_step_s is None and not rec.deadline_missed


def test_new_fields_round_trip_and_a_missed_deadline_prices_the_drafts_asked_for() -> None:
    st = stats()
    st.ks, st.missed_ks, st.predicted_step_s, st.pending_catchup_tokens = [0, 0, 0], [4, 0, 2], 0.25, 37
    st.prefill_padded_tokens, st.draft_deadline_s, st.calibration, st.graph_forwards = 20, 0.5, True, 1
    entry = records.encode(st, "pod-a", ts=1.0)
    assert set(entry) == set(records.FIELDS) | set(records.OPTIONAL_FIELDS)
    rec = records.decode(entry)
    assert rec.calibration and not records.decode(records.encode(stats(), "pod-a", 1.0)).calibration
    assert rec.predicted_step_s == pytest.approx(0.25) and rec.pending_catchup_tokens == 37 and rec.deadline_missed
    assert rec.sample.shape.max_k == 0 and rec.sample.shape.prefill_padded_tokens == 20
    assert rec.sample.draft_shape is not None and rec.sample.draft_shape.max_k == 4
    assert rec.sample.draft_shape.draft_tokens == 6
    assert rec.acceptance == {"default": [[2, 2, 1], [2, 1, 0]]}


@pytest.mark.parametrize("mutate, why", [
    (lambda e: e.update(v="99"), "schema"),
    (lambda e: e.pop("verify_s"), "lacks"),
    (lambda e: e.update(batch_size="three"), "malformed"),
    (lambda e: e.update(acceptance="[1,2"), "malformed"),
])
def test_decode_rejects_what_it_cannot_read(mutate: object, why: str) -> None:
    entry = records.encode(stats(), "pod-a", 1.0)
    mutate(entry)  # type: ignore[operator]
    with pytest.raises(records.BadRecord, match=why):
        records.decode(entry)


def test_service_names_are_dns_subdomains() -> None:
    assert service_keys("chat-a")[0] == "smartspec:chat-a:steps"
    assert service_keys("prod.chat-a")[0] == "smartspec:prod.chat-a:steps"  # the operator's namespace.name
    for bad in ("", "Chat", "a:b", "-a", "a.", "x" * 254, "a b", "a*"):
        with pytest.raises(ValueError):
            check_service(bad)


def test_the_jsonl_sink_writes_the_redis_spelling_and_read_jsonl_reads_it_back(tmp_path: Path) -> None:
    from smartspec.telemetry.jsonl_sink import JsonlSink

    path = tmp_path / "steps.jsonl"
    sink = JsonlSink(path, replica="cli")
    sink.record(stats())
    sink.close()
    (line,) = path.read_text().splitlines()
    assert set(json.loads(line)) == set(records.encode(stats(), "cli", 1.0))  # one spelling, schema v included
    (rec,) = records.read_jsonl(path)
    assert rec.replica == "cli" and rec.sample == records.decode(records.encode(stats(), "x", 1.0)).sample


def test_read_jsonl_names_the_line_of_a_record_in_another_spelling(tmp_path: Path) -> None:
    path = tmp_path / "steps.jsonl"
    good = json.dumps(records.encode(stats(), "a", 1.0))
    older = json.dumps({"batch_size": 3, "ks": [0, 2, 5], "draft_s": 0.1, "verify_s": 0.2, "overhead_s": 0.01})
    path.write_text(f"{good}\n\n{older}\n")
    with pytest.raises(records.BadRecord, match=r"line 3: step record schema None"):
        records.read_jsonl(path)
