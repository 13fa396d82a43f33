"""Service logging: one format, and a limit on how often the same message may repeat.

A fault outside the process (a dead peer, a client flood, a full disk) makes the same line fire at
the rate of the fault; unbounded, that fills disks and buries the first, useful, occurrence. Each
message (logger, level, format string) passes `burst` times per `window_s`; the rest are counted and
the next one through says how many were left out.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
MAX_KEYS = 4096  # distinct messages tracked; past it the table is cleared (a bounded table, not a leak)


class RepeatLimiter(logging.Filter):
    """Passes at most `burst` records per message per `window_s`; counts the rest."""

    def __init__(self, burst: int = 10, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst = burst
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()  # handlers run on the engine thread, the event loop and gRPC's threads
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # key -> [window start, passed, dropped]
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        with self._lock:
            state = self._seen.get(key)
            if state is None or now - state[0] >= self.window_s:
                left_out = int(state[2]) if state else 0
                if len(self._seen) >= MAX_KEYS:
                    self._seen.clear()
                self._seen[key] = [now, 1, 0]
                if left_out:
                    record.msg = f"{record.msg} [{left_out} more like this in the last {self.window_s:.0f}s left out]"
                return True
            if state[1] < self.burst:
                state[1] += 1
                return True
            state[2] += 1
            self.dropped += 1
            return False


def configure(level: int = logging.INFO, burst: int = 10, window_s: float = 60.0) -> RepeatLimiter:
    """Log to stderr in the services' format, with repeats limited (on the handler, so every logger's
    records, uvicorn's and gRPC's included, pass through it)."""
    logging.basicConfig(level=level, format=FORMAT)
    limiter = RepeatLimiter(burst, window_s)
    for handler in logging.getLogger().handlers:
        handler.addFilter(limiter)
    return limiter
