"""RemoteProposer: the engine's Proposer over a draft service's Session stream.

The engine calls `propose` from its own thread; the stream lives on the service's event loop. A
step waits for the draft at most `deadline_s`; a miss, an error or no connection turns that step
into k = 0 for the requests concerned (counted in `smartspec_draft_fallback_total{cause}`), and a
background task reconnects with backoff. What the draft holds per sequence, and so what each
message carries, is `DraftMirror`'s (draft_mirror.py); this module is the transport around it. A
new stream knows nothing, so every sequence is re-admitted with its full context the next time it
wants drafts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import deque
from collections.abc import Sequence as TokenIds
from dataclasses import dataclass
from typing import Any

import grpc

from smartspec.auth import bearer
from smartspec.engine.proposers.base import DraftDeadlineMissed, Proposal, ProposeRequest
from smartspec.rpc import open_channel
from smartspec.telemetry.metrics import TargetMetrics
from smartspec.v1 import draft_pb2, draft_pb2_grpc
from smartspec_target.draft_mirror import DraftMirror, ProposePlan

log = logging.getLogger(__name__)


@dataclass
class HopSample:
    """One Propose round trip and the draft's own compute inside it."""

    batch: int
    rtt_s: float
    compute_s: float


SUSPEND_MIN_S, SUSPEND_MAX_S = 1.0, 30.0


class RemoteProposer:
    name = "remote-draft"

    def __init__(self, address: str, loop: asyncio.AbstractEventLoop, *, target_vocab: int, fingerprint: str,
                 deadline_s: float, metrics: TargetMetrics, backoff_s: tuple[float, float] = (0.1, 5.0),
                 token: str | None = None, suspend_after: int = 3, tls_dir: str | None = None) -> None:
        self.address = address
        self.tls_dir = tls_dir  # mutual TLS to the draft; the certificate is re-read at every connection
        self._metadata = bearer(token) if token else None
        self.loop = loop
        self.target_vocab = target_vocab
        self.fingerprint = fingerprint
        self.deadline_s = deadline_s
        self.metrics = metrics
        self.backoff_s = backoff_s
        self.connected = False
        self.incompatible: str | None = None
        # Circuit breaker: a draft that keeps missing deadlines (hung, stopped, overloaded) is left alone for
        # a backoff that doubles while probes keep missing, so steps stop waiting on it (k = 0 meanwhile).
        self.suspend_after = suspend_after
        self._misses = 0
        self._suspended_until = 0.0
        self._backoff_s = SUSPEND_MIN_S
        self.draft_info: Any = None
        self.hops: deque[HopSample] = deque(maxlen=4096)
        self.mirror = DraftMirror(target_vocab)
        self._pending: dict[int, asyncio.Future[draft_pb2.SessionResponse]] = {}
        self._call: Any = None
        self._step_id = 0
        self._write_lock = asyncio.Lock()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self.connects = 0

    # -- engine thread ---------------------------------------------------------------------
    def propose(self, requests: list[ProposeRequest], deadline_s: float | None = None) -> dict[int, Proposal]:
        """Drafts within `deadline_s` (at most the configured `deadline_s`), else DraftDeadlineMissed."""
        wanted = [r for r in requests if r.k > 0]
        if not wanted:
            return {}
        if not self.connected:
            self.metrics.fallback("incompatible" if self.incompatible else "disconnected", len(wanted))
            return {}
        wait = self.deadline_s if deadline_s is None else min(deadline_s, self.deadline_s)
        fut = asyncio.run_coroutine_threadsafe(self._propose(wanted, wait), self.loop)
        try:
            out = fut.result(timeout=wait)
        except (TimeoutError, concurrent.futures.TimeoutError):
            fut.cancel()
            self.metrics.fallback("deadline", len(wanted))
            log.warning("draft missed the %.3fs deadline for %d sequences; k = 0 this step", wait, len(wanted))
            self._missed()
            raise DraftDeadlineMissed(f"no drafts within {wait:.3f}s") from None
        except Exception as exc:  # stream broke mid-step, or a malformed answer
            cause = "invalid" if isinstance(exc, ValueError) else "error"
            self.metrics.fallback(cause, len(wanted))
            log.warning("draft step failed (%s); k = 0 this step", exc)
            return {}
        if self._misses >= self.suspend_after:
            log.info("draft at %s answers in time again; speculation resumes", self.address)
        self._misses, self._backoff_s = 0, SUSPEND_MIN_S
        return out

    @property
    def usable(self) -> bool:
        """Whether a step should ask for drafts now: connected, compatible and not suspended."""
        return self.connected and time.monotonic() >= self._suspended_until

    def state(self) -> str:
        """For /health: ok, or why the target serves at k = 0."""
        if self.incompatible:
            return f"incompatible: {self.incompatible}"
        if not self.connected:
            return "disconnected"
        left = self._suspended_until - time.monotonic()
        if left > 0:
            return f"suspended after {self._misses} missed deadlines in a row; next probe in {left:.1f}s"
        return "ok"

    def _missed(self) -> None:
        self._misses += 1
        if self._misses >= self.suspend_after:
            self._suspended_until = time.monotonic() + self._backoff_s
            self.metrics.draft_suspensions.add(1)
            log.warning("draft at %s missed %d deadlines in a row: not asking it for %.0fs (k = 0 meanwhile)",
                        self.address, self._misses, self._backoff_s)
            self._backoff_s = min(2 * self._backoff_s, SUSPEND_MAX_S)

    def release(self, seq_id: int) -> None:
        self.loop.call_soon_threadsafe(self._release_soon, seq_id)

    def unseen(self, seq_id: int, token_ids: TokenIds[int]) -> int:
        """Tokens the draft has not ingested (read from the engine thread; see DraftMirror)."""
        return self.mirror.unseen(seq_id, token_ids)

    # -- event loop ------------------------------------------------------------------------
    async def start(self) -> None:
        self._task = asyncio.create_task(self._maintain())

    async def close(self) -> None:
        self._closed = True
        if self._call is not None:
            self._call.cancel()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def wait_connected(self, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while not self.connected and time.monotonic() < end:
            await asyncio.sleep(0.02)
        return self.connected

    async def _maintain(self) -> None:
        delay = self.backoff_s[0]
        while not self._closed:
            try:
                async with open_channel(self.address, self.tls_dir) as channel:
                    stub = draft_pb2_grpc.DraftServiceStub(channel)
                    info = (await stub.GetInfo(draft_pb2.DraftInfoRequest(), timeout=5.0,
                                               metadata=self._metadata)).model
                    self.draft_info = info
                    self.incompatible = self._check(info)
                    if self.incompatible:
                        log.error("refusing to speculate with draft at %s: %s", self.address, self.incompatible)
                        await asyncio.sleep(self.backoff_s[1])
                        continue
                    self._call = stub.Session(metadata=self._metadata)
                    self.connected = True
                    self.connects += 1
                    delay = self.backoff_s[0]
                    log.info("draft session open to %s (%s)", self.address, info.model_id)
                    await self._read()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("draft at %s unavailable (%s); retrying in %.1fs", self.address, exc, delay)
            finally:
                self._disconnected()
            if not self._closed:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_s[1])

    def _check(self, info: Any) -> str | None:
        if info.method == "ngram":
            ok = not info.tokenizer_fingerprint or info.tokenizer_fingerprint == self.fingerprint
            return None if ok else "n-gram draft fingerprinted a different tokenizer"
        if info.tokenizer_fingerprint != self.fingerprint:
            return "tokenizer differs from the target's"
        if info.vocab_size > self.target_vocab:
            return f"draft vocabulary ({info.vocab_size}) is larger than the target's ({self.target_vocab})"
        return None

    async def _read(self) -> None:
        while True:
            resp = await self._call.read()
            if resp is grpc.aio.EOF:
                return
            fut = self._pending.pop(resp.step_id, None)
            if fut is not None and not fut.done():
                fut.set_result(resp)

    def _disconnected(self) -> None:
        was = self.connected
        self.connected = False
        self._call = None
        self.mirror.clear()  # a new stream holds nothing: re-admit everything
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("draft stream closed"))
        self._pending.clear()
        if was:
            log.warning("draft session to %s closed", self.address)

    async def _send(self, *, consume: bool = False, **payload: Any) -> asyncio.Future[draft_pb2.SessionResponse]:
        """Write one message; its answer resolves the returned future. `consume`: nobody will await it."""
        async with self._write_lock:
            if self._call is None:
                raise ConnectionError("no draft stream")
            self._step_id += 1
            fut: asyncio.Future[draft_pb2.SessionResponse] = self.loop.create_future()
            if consume:
                fut.add_done_callback(_swallow)
            self._pending[self._step_id] = fut
            await self._call.write(draft_pb2.SessionRequest(step_id=self._step_id, **payload))
            return fut

    def _release_soon(self, seq_id: int) -> None:
        if self.mirror.forget(seq_id) and self.connected:
            task = asyncio.ensure_future(self._send(consume=True, release=draft_pb2.Release(seq_ids=[seq_id])))
            task.add_done_callback(_swallow)

    async def _propose(self, requests: list[ProposeRequest], budget_s: float) -> dict[int, Proposal]:
        t0 = time.perf_counter()
        plan: ProposePlan = self.mirror.plan(requests)
        if plan.admit is not None:  # refused admissions show up as statuses of the Propose that follows
            await self._send(consume=True, admit=plan.admit)
        budget_ms = max(1, round(budget_s * 1e3))
        resp = await (await self._send(propose=draft_pb2.Propose(sequences=plan.propose, budget_ms=budget_ms)))
        rtt = time.perf_counter() - t0
        self.hops.append(HopSample(len(requests), rtt, resp.compute_ns / 1e9))
        self.metrics.draft_rpc.record(rtt)
        out, invalid = self.mirror.accept(resp.proposals, plan)
        if invalid:  # anything malformed counts as a failed draft step for that request
            self.metrics.fallback("invalid", invalid)
        return out


def _swallow(fut: asyncio.Future[Any]) -> None:
    """Retrieve a result nobody waits for, so a closed stream does not log 'never retrieved'."""
    if not fut.cancelled():
        fut.exception()
