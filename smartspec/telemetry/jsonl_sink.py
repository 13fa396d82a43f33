"""JsonlSink: step records appended to a file, one JSON object per line, spelled as in Redis (records.encode)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from smartspec.telemetry.records import encode

if TYPE_CHECKING:
    from smartspec.engine.steps import StepStats


class JsonlSink:
    """Input for `smartspec policy explain --fit` and `smartspec sim fit`, like an XRANGE dump of the stream."""

    def __init__(self, path: str | Path, replica: str = "local") -> None:
        self.path = Path(path)
        self.replica = replica
        self._file: TextIO = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def record(self, stats: StepStats) -> None:
        self._file.write(json.dumps(encode(stats, self.replica, time.time()), separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
