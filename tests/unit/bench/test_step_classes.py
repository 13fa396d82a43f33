"""Step classes and the predicted-vs-actual table read from raw step records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.step_classes import step_class, table
from smartspec.engine.steps import StepStats
from smartspec.telemetry.records import StepRecord, decode, encode


def raw(prefills: int = 0, ks: tuple[int, ...] = (0, 0), catchup: int = 0, missed: tuple[int, ...] = (),
        draft_s: float = 0.0, verify_s: float = 0.1, predicted: float | None = 0.1) -> dict[str, Any]:
    st = StepStats(step_id=1, batch_size=len(ks), num_prefills=prefills, ks=list(ks), num_proposed_per_pos=[],
                   num_accepted_per_pos=[], num_emitted=len(ks), context_tokens=100, num_forwards=1,
                   real_tokens=len(ks), padded_tokens=len(ks), draft_s=draft_s, verify_s=verify_s, overhead_s=0.0,
                   draft_catchup_tokens=catchup, missed_ks=list(missed), predicted_step_s=predicted)
    return encode(st, "r0", 1.0)


def rec(**kw: Any) -> StepRecord:
    return decode(raw(**kw))


def test_each_step_lands_in_one_class() -> None:
    assert step_class(rec()) == "k = 0 decode"
    assert step_class(rec(ks=(3, 3))) == "speculating decode"
    assert step_class(rec(ks=(3, 3), catchup=40)) == "decode with catch-up"
    assert step_class(rec(prefills=1, ks=(3, 3))) == "admission"
    assert step_class(rec(missed=(4, 4))) == "deadline miss"


def test_table_sums_actual_over_predicted(tmp_path: Path) -> None:
    lines = [raw(verify_s=0.2, predicted=0.1), raw(verify_s=0.1, predicted=0.1),
             raw(ks=(2, 2), draft_s=0.3, verify_s=0.1, predicted=0.5), raw(predicted=None)]
    (tmp_path / "steps-goodput.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    out = table(tmp_path, None)
    assert "| goodput | k = 0 decode | 2 | 0.150 | 0.100 | 1.50 | 1.50 |" in out
    assert "| goodput | speculating decode | 1 | 0.400 | 0.500 | 0.80 | 0.80 |" in out
