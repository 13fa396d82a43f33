"""Where the scheduler sends each step's StepStats: the StepSink interface, and a sink that keeps them in memory.

Sinks that write the step record out (Redis, JSON lines) live in smartspec/telemetry and write it in
the one spelling of smartspec/telemetry/records.py. A sink must never block or fail a step: the
scheduler drops (and counts) records a sink refuses.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from smartspec.engine.steps import StepStats


class StepSink(Protocol):
    def record(self, stats: StepStats) -> None: ...


class MemorySink:
    """Keeps the last `maxlen` step records in memory."""

    def __init__(self, maxlen: int = 10_000) -> None:
        self.records: deque[StepStats] = deque(maxlen=maxlen)

    def record(self, stats: StepStats) -> None:
        self.records.append(stats)
