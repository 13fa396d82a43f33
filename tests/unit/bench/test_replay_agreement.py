"""bench.replay_agreement runs policies on recorded agreement and prints each one's time over the reference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.replay_agreement import main
from tests.unit.sim.test_replay import COST, closed_loop, record_run


def test_prints_every_policy_against_the_reference(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record_run(tmp_path / "fixed-7.jsonl", closed_loop(0.9, n=5), "fixed:7")
    (tmp_path / "cost.json").write_text(json.dumps(COST.to_dict()))
    main([str(tmp_path / "fixed-7.jsonl"), "--cost-model", str(tmp_path / "cost.json"), "--seeds", "1",
          "--policies", "off,goodput@4,goodput", "--boot", "50"])
    out = capsys.readouterr().out
    assert "5 requests, 200 output positions" in out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"fixed:7", "off", "goodput@4", "goodput"}
    assert "1.000 [1.000, 1.000]" in rows["fixed:7"]
    off_ratio = float(rows["off"].split("|")[3].split()[0])
    assert off_ratio > 1.5  # 90 % agreement and a cheap draft: no speculation is far slower
