"""Step classes and the predicted-vs-actual table read from raw step records."""

from __future__ import annotations

import json
from pathlib import Path

from bench.step_classes import step_class, table


def rec(**kw: object) -> dict[str, str]:
    base = {"batch_size": "2", "num_prefills": "0", "max_k": "0", "draft_catchup_tokens": "0", "missed_max_k": "0",
            "draft_s": "0", "verify_s": "0.1", "overhead_s": "0", "predicted_step_s": "0.1"}
    return {**base, **{k: str(v) for k, v in kw.items()}}


def test_each_step_lands_in_one_class() -> None:
    assert step_class(rec()) == "k = 0 decode"
    assert step_class(rec(max_k=3)) == "speculating decode"
    assert step_class(rec(max_k=3, draft_catchup_tokens=40)) == "decode with catch-up"
    assert step_class(rec(num_prefills=1, max_k=3)) == "admission"
    assert step_class(rec(missed_max_k=4)) == "deadline miss"


def test_table_sums_actual_over_predicted(tmp_path: Path) -> None:
    lines = [rec(verify_s=0.2, predicted_step_s=0.1), rec(verify_s=0.1, predicted_step_s=0.1),
             rec(max_k=2, draft_s=0.3, verify_s=0.1, predicted_step_s=0.5), {**rec(), "predicted_step_s": ""}]
    (tmp_path / "steps-goodput.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    out = table(tmp_path, None)
    assert "| goodput | k = 0 decode | 2 | 0.150 | 0.100 | 1.50 | 1.50 |" in out
    assert "| goodput | speculating decode | 1 | 0.400 | 0.500 | 0.80 | 0.80 |" in out
