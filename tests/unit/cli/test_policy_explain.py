"""`smartspec policy explain`: presets, JSON, fitting from step records, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smartspec.cli.main import main
from smartspec.engine.steps import StepStats
from smartspec.telemetry.records import encode


def test_preset_table_has_the_papers_shape(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "explain", "--cost-model", "h100-llama8b-as-coded", "--acceptance", "0.7",
                 "--batch-sizes", "1,32,128,256", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["k"] for r in rows] == [[[7, 1]], [[5, 32]], [[3, 128]], [[2, 256]]]  # reference §4.3: 7, 5, 3, 2
    assert [round(r["goodput"]) for r in rows] == [405, 7684, 15321, 18931]


def test_human_table_and_per_position_acceptance(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["policy", "explain", "--cost-model", "h100-llama70b", "--acceptance", "0.9,0.8,0.6",
                 "--batch-sizes", "1,256", "--per-k"]) == 0
    out = capsys.readouterr().out
    assert "| batch | chosen k |" in out and "k=7 |" in out and out.count("\n| ") >= 3


def test_fit_from_step_records(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "steps.jsonl"
    lines: list[str] = []
    for b in range(1, 30):
        for k in (0, 2, 4):
            verify = 0.05 + 0.002 * b * (k + 1)
            draft = 0.01 * k
            stats = StepStats(step_id=len(lines) + 1, batch_size=b, num_prefills=0, ks=[k] * b,
                              num_proposed_per_pos=[b] * k, num_accepted_per_pos=[b] * k, num_emitted=b * (k + 1),
                              context_tokens=50 * b, num_forwards=1, real_tokens=b * (k + 1),
                              padded_tokens=b * (k + 1), draft_s=draft, verify_s=verify, overhead_s=0.001)
            lines.append(json.dumps(encode(stats, "r0", 1.0 + len(lines))))  # what the JSON-lines sink writes
    path.write_text("\n".join(lines))
    saved = tmp_path / "model.json"
    assert main(["policy", "explain", "--fit", str(path), "--acceptance", "0.8", "--batch-sizes", "1,64",
                 "--save", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "R² 1.000" in out or "R² 0.99" in out
    # The saved fit is a static cost model that explain (and generate) accept back.
    assert main(["policy", "explain", "--cost-model", str(saved), "--acceptance", "0.8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cost_model"]["samples"] == len(lines)


@pytest.mark.parametrize(("args", "message"), [
    (["--acceptance", "1.5"], "[0, 1]"),
    (["--acceptance", "high"], "expected numbers"),
    (["--batch-sizes", "0"], "--batch-sizes"),
    (["--cost-model", "tpu-v9"], "unknown cost model"),
    (["--fit", "/nonexistent/steps.jsonl"], "cannot read step records"),
])
def test_bad_input(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    assert main(["policy", "explain", *args]) == 2
    assert message in capsys.readouterr().err
