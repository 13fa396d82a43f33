"""Where step records go: the StepSink interface and two local sinks (memory, JSON lines).

Redis and OpenTelemetry sinks arrive with the controller; a sink must never block or fail a step,
so the scheduler drops (and counts) records a sink refuses.
"""

from __future__ import annotations

import dataclasses
import json
from collections import deque
from pathlib import Path
from typing import Any, Protocol, TextIO

from smartspec.engine.steps import StepStats


def record_of(stats: StepStats) -> dict[str, Any]:
    """A step as a flat JSON-able dict (the step-record fields)."""
    rec = dataclasses.asdict(stats)
    rec["num_draft_tokens"] = stats.num_draft_tokens
    rec["num_accepted_tokens"] = stats.num_accepted_tokens
    rec["step_s"] = stats.step_s
    return rec


class StepSink(Protocol):
    def record(self, stats: StepStats) -> None: ...


class MemorySink:
    """Keeps the last `maxlen` step records in memory."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self.records: deque[StepStats] = deque(maxlen=maxlen)

    def record(self, stats: StepStats) -> None:
        self.records.append(stats)


class JsonlSink:
    """Appends one JSON object per step to a file (input for `smartspec policy explain --fit`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: TextIO = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def record(self, stats: StepStats) -> None:
        self._file.write(json.dumps(record_of(stats)) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
