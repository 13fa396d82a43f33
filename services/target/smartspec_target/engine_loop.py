"""EngineLoop: the scheduler on its own thread, fed by the async API, streaming deltas back.

Every engine operation — submit, cancel, step — happens on one thread, in order; the API side
only enqueues commands and reads per-request asyncio queues. Submission errors (bad input, no
capacity) come back to the caller synchronously, before any streaming starts.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import Tracer

from smartspec.engine.sampling import SamplingParams
from smartspec.engine.scheduler import RequestSpec, Scheduler
from smartspec.engine.sequence import Sequence
from smartspec.errors import CapacityExceeded, SmartspecError
from smartspec.policy.document import PolicyDocument
from smartspec.telemetry.metrics import TargetMetrics
from smartspec.telemetry.otel import record_request_span
from smartspec_target.policy_sync import PolicySwitch

log = logging.getLogger(__name__)


class Draining(SmartspecError):
    """The service is shutting down and takes no new requests."""

    http_status = 503
    grpc_code = "UNAVAILABLE"
    error_type = "service_unavailable"
    retry_after_s = 1  # another replica, or this one once restarted


class Overloaded(CapacityExceeded):
    """Every KV slot is busy and the queue in front of them is full: shed load instead of queueing without end."""


class EngineFailed(SmartspecError):
    """The engine hit an internal error; the request could not be finished."""


@dataclass
class Delta:
    """What one step did for one request (a snapshot: the engine thread owns the Sequence)."""

    token_ids: list[int]
    finish_reason: str | None = None  # set on the last delta: "stop" | "length" | "cancelled"
    draft_tokens: int = 0
    accepted_tokens: int = 0
    steps: int = 0
    k_sum: int = 0
    k_steps: int = 0
    error: SmartspecError | None = None


@dataclass
class RequestHandle:
    seq_id: int
    prompt_len: int
    deltas: asyncio.Queue[Delta] = field(default_factory=asyncio.Queue)

    async def stream(self) -> AsyncIterator[Delta]:
        while True:
            delta = await self.deltas.get()
            if delta.error is not None:
                raise delta.error
            yield delta
            if delta.finish_reason is not None:
                return


class EngineLoop:
    def __init__(self, scheduler: Scheduler, metrics: TargetMetrics, loop: asyncio.AbstractEventLoop,
                 switch: PolicySwitch | None = None, tracer: Tracer | None = None, model_name: str = "",
                 max_in_flight: int | None = None) -> None:
        self.scheduler = scheduler
        self.metrics = metrics
        self.loop = loop
        self.switch = switch
        self.tracer = tracer
        self.model_name = model_name
        self.draining = False
        self.max_in_flight = max_in_flight  # running + waiting; None: unbounded
        self._submitting = 0  # event-loop side only
        self.failed: str | None = None
        self._commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._handles: dict[int, RequestHandle] = {}
        self._ids = itertools.count(1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="smartspec-engine", daemon=True)
        self._last_emit: dict[int, float] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._commands.put(("wake", None))
        self._thread.join(timeout=30)

    @property
    def healthy(self) -> bool:
        return self.failed is None and self._thread.is_alive()

    @property
    def in_flight(self) -> int:
        return len(self._handles)

    # -- API side (event loop) -----------------------------------------------------------------
    async def submit(self, prompt_ids: list[int], params: SamplingParams, spec: RequestSpec) -> RequestHandle:
        if self.draining:
            raise Draining("the server is draining (shutting down) and takes no new requests")
        if self.failed:
            raise EngineFailed(f"the engine failed and serves no requests: {self.failed}")
        held = len(self._handles) + self._submitting  # submits the engine thread has not taken yet count too
        if self.max_in_flight is not None and held >= self.max_in_flight:
            self.metrics.requests_shed.add(1)
            raise Overloaded(f"the server holds {held} requests (running and waiting), its limit; retry later")
        handle = RequestHandle(next(self._ids), len(prompt_ids))
        done: Future[None] = Future()
        self._submitting += 1
        try:
            self._commands.put(("submit", (handle, prompt_ids, params, spec, done)))
            await asyncio.wrap_future(done)  # raises the engine's validation error, if any
        finally:
            self._submitting -= 1
        return handle

    def cancel(self, seq_id: int) -> None:
        self._commands.put(("cancel", seq_id))

    def set_policy(self, doc: PolicyDocument | None, reason: str = "") -> None:
        """Swap the policy in force (None: the local default) before the next step."""
        self._commands.put(("policy", (doc, reason)))

    async def drain(self, timeout_s: float | None = None) -> bool:
        """Stop admitting; wait until every running request has finished (or the timeout)."""
        self.draining = True
        end = None if timeout_s is None else time.monotonic() + timeout_s
        while self._handles and (end is None or time.monotonic() < end):
            await asyncio.sleep(0.05)
        return not self._handles

    # -- engine thread --------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            # Idle: sleep until a command comes. Busy: take whatever is queued, then step.
            if not self.scheduler.has_unfinished:
                self._apply(self._commands.get())
            while True:
                try:
                    self._apply(self._commands.get_nowait())
                except queue.Empty:
                    break
            if self.scheduler.has_unfinished and self.failed is None:
                self._step()

    def _apply(self, cmd: tuple[str, Any]) -> None:
        kind, arg = cmd
        if kind == "submit":
            handle, prompt_ids, params, spec, done = arg
            try:
                self.scheduler.submit(handle.seq_id, prompt_ids, params, spec)
            except Exception as exc:
                done.set_exception(exc)
                return
            self._handles[handle.seq_id] = handle
            self._last_emit[handle.seq_id] = time.perf_counter()
            done.set_result(None)
        elif kind == "wake":
            return
        elif kind == "policy":
            if self.switch is not None:
                try:
                    self.switch.apply(*arg)
                except Exception:  # a policy that cannot be applied must not stop the engine thread
                    log.exception("policy could not be applied; back to the local default")
                    self.metrics.policy_rejected.add(1, {"reason": "apply"})
                    self.switch.apply(None, "apply-error")
        elif kind == "cancel":
            seq = self.scheduler.engine.seqs.get(arg)
            if seq is not None and not seq.finished:
                self.scheduler.cancel(arg)
                self._finish(self.scheduler.pop_finished(arg), [])

    def _step(self) -> None:
        try:
            out = self.scheduler.step()
        except Exception as exc:  # a bug or a device fault: fail loudly, never hang clients
            log.exception("engine step failed")
            self.failed = f"{type(exc).__name__}: {exc}"
            # Forget the handles before waking their streams, so nobody sees a failed loop still holding them.
            handles = list(self._handles.values())
            self._handles.clear()
            for handle in handles:
                self._push(handle, Delta([], "cancelled", error=EngineFailed(f"engine step failed: {self.failed}")))
            return
        assert out.stats is not None
        self.metrics.record_step(out.stats)
        engine = self.scheduler.engine
        self.metrics.set_queue(len(engine.running), len(engine.waiting))
        now = time.perf_counter()
        finished = set(out.finished)
        for sid, tokens in out.emitted.items():
            known = self._handles.get(sid)
            if known is None:
                continue
            gap = now - self._last_emit.get(sid, now)
            if tokens:
                self.metrics.itl.record(gap / len(tokens))
            self._last_emit[sid] = now
            if sid in finished:
                self._finish(self.scheduler.pop_finished(sid), tokens)
            else:
                self._push(known, self._delta(engine.seqs[sid], tokens, None))

    def _finish(self, seq: Sequence, tokens: list[int]) -> None:
        handle = self._handles.pop(seq.seq_id, None)
        self._last_emit.pop(seq.seq_id, None)
        st = seq.stats
        if st.first_token_s is not None:
            self.metrics.ttft.record(st.first_token_s - st.arrival_s)
        self.metrics.e2e.record((st.finish_s or time.perf_counter()) - st.arrival_s)
        if self.tracer is not None:
            try:
                record_request_span(self.tracer, seq, self.model_name)
            except Exception:  # tracing must never fail a request
                log.exception("request span not recorded")
        if handle is not None:
            self._push(handle, self._delta(seq, tokens, seq.finish_reason or "stop"))

    @staticmethod
    def _delta(seq: Sequence, tokens: list[int], reason: str | None) -> Delta:
        st = seq.stats
        return Delta(list(tokens), reason, st.num_draft_tokens, st.num_accepted_tokens, st.steps,
                     sum(st.k_history), len(st.k_history))

    def _push(self, handle: RequestHandle, delta: Delta) -> None:
        self.loop.call_soon_threadsafe(handle.deltas.put_nowait, delta)
