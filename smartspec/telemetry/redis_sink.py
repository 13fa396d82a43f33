"""RedisStepSink: step records to the capped stream `smartspec:{service}:steps`, off the step's path.

`record()` only appends the step (and its wall-clock time) to a bounded local buffer; a writer
thread encodes buffered records and sends them in batches (one pipelined XADD round trip per
batch). When Redis is slow or down the buffer fills and the OLDEST records are dropped and
counted, so a step never waits on Redis and the newest telemetry is what reaches the controller
once Redis is back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import redis

from smartspec.telemetry import records
from smartspec.telemetry.keys import steps_key
from smartspec.tls import redis_kwargs

if TYPE_CHECKING:
    from smartspec.engine.engine import StepStats

log = logging.getLogger(__name__)


class RedisStepSink:
    def __init__(self, url: str, service: str, replica: str, *, stream_maxlen: int = 100_000,
                 buffer: int = 10_000, batch: int = 256, flush_interval_s: float = 0.05,
                 on_dropped: Callable[[int], None] | None = None,
                 on_written: Callable[[int], None] | None = None, password: str | None = None,
                 tls_dir: str | None = None) -> None:
        self.key = steps_key(service)
        self.replica = replica
        self.stream_maxlen = stream_maxlen
        self.batch = batch
        self.flush_interval_s = flush_interval_s
        self._on_dropped = on_dropped or (lambda n: None)
        self._on_written = on_written or (lambda n: None)
        # Short socket timeouts: a hung Redis stalls only this writer thread, and only briefly.
        self._client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0,
                                            **redis_kwargs(url, tls_dir, password))
        self._buffer: deque[tuple[StepStats, float]] = deque()  # the engine never mutates a step's stats later
        self._capacity = buffer
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.dropped = 0
        self.written = 0
        self.connected = True
        self._thread = threading.Thread(target=self._run, name="smartspec-redis-sink", daemon=True)
        self._thread.start()

    # -- the step's side: never blocks on I/O ----------------------------------------------------
    def record(self, stats: StepStats) -> None:
        with self._lock:
            if len(self._buffer) >= self._capacity:
                self._buffer.popleft()
                self._drop(1)
            self._buffer.append((stats, time.time()))
            full = len(self._buffer) >= self.batch
        if full:
            self._wake.set()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    # -- the writer thread ------------------------------------------------------------------------
    def _run(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            self._wake.wait(self.flush_interval_s if backoff == 0 else backoff)
            self._wake.clear()
            backoff = 0.0 if self._flush() else min(max(2 * backoff, 0.1), 2.0)
        self._flush()  # last records on close, best effort

    def _flush(self) -> bool:
        """Send everything buffered; False (records kept, oldest-first order preserved) if Redis failed."""
        while True:
            with self._lock:
                chunk = [self._buffer.popleft() for _ in range(min(self.batch, len(self._buffer)))]
            if not chunk:
                return True
            try:
                pipe = self._client.pipeline(transaction=False)
                for stats, ts in chunk:
                    entry = records.encode(stats, self.replica, ts)
                    pipe.xadd(self.key, entry, maxlen=self.stream_maxlen, approximate=True)  # type: ignore[arg-type]
                pipe.execute()
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                self._requeue(chunk)
                if self.connected:
                    log.warning("step records: Redis unavailable (%s); buffering up to %d, dropping the oldest",
                                exc, self._capacity)
                self.connected = False
                return False
            except redis.RedisError:
                log.exception("step records: Redis refused a batch of %d; dropped", len(chunk))
                self._drop(len(chunk))
                return True
            if not self.connected:
                log.info("step records: Redis is back; sending again")
            self.connected = True
            self.written += len(chunk)
            self._on_written(len(chunk))

    def _requeue(self, chunk: list[tuple[StepStats, float]]) -> None:
        with self._lock:
            room = self._capacity - len(self._buffer)
            keep = chunk[len(chunk) - room:] if room < len(chunk) else chunk
            if len(keep) < len(chunk):
                self._drop(len(chunk) - len(keep))
            self._buffer.extendleft(reversed(keep))

    def _drop(self, n: int) -> None:
        self.dropped += n
        self._on_dropped(n)

    def close(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=timeout_s)
        self._client.close()
