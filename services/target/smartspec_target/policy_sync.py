"""Live policy: follow the controller's document in Redis and swap it into the scheduler between steps.

`PolicySync` (event loop) subscribes to the `smartspec:{service}:policy` channel and re-reads the
key every `poll_s` as well (a missed message or a Redis restart only delays a policy), validates
each document (schema, service, version monotonic while the one in force is valid, not expired)
and hands it to the engine thread. `PolicySwitch` (engine thread) applies it atomically between
two steps, and restores the local default when the policy in force expires or none exists.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from smartspec.engine.scheduler import Scheduler
from smartspec.policy.document import PolicyDocument, parse_document
from smartspec.policy.in_force import PolicyInForce, from_document
from smartspec.telemetry.keys import policy_key
from smartspec.telemetry.metrics import TargetMetrics
from smartspec.tls import redis_kwargs

log = logging.getLogger(__name__)


@dataclass
class PolicySwitch:
    """Owned by the engine thread: puts the local default or a published policy in force, between two steps."""

    scheduler: Scheduler
    metrics: TargetMetrics
    can_speculate: bool  # False when the target has no draft: any mode becomes "off"

    def __post_init__(self) -> None:
        self._local: PolicyInForce = self.scheduler.in_force
        self.doc: PolicyDocument | None = None

    def apply(self, doc: PolicyDocument | None, reason: str = "") -> None:
        if doc is None:
            if self.doc is None:
                return
            self.scheduler.apply_policy(self._local)
            self.doc = None
            self.metrics.policy_version.set(0)
            self.metrics.policy_fallback.add(1, {"reason": reason or "expired"})
            log.warning("policy: %s; back to the local default policy (%s, K=%d)", reason or "expired",
                        self._local.config.mode, self._local.config.max_k)
            return
        if self.doc is None:  # the local model may have been refitted; keep the refitted one for later
            self._local = self.scheduler.in_force
        local = self._local
        if self.doc is not None and not self.doc.cost_model_fitted:  # the target was refitting under it
            local = replace(local, cost_model=self.scheduler.in_force.cost_model)
        in_force = from_document(doc, local, can_speculate=self.can_speculate)
        self.scheduler.apply_policy(in_force)
        self.doc = doc
        self.metrics.policy_version.set(doc.version)
        log.info("policy v%d in force (%s, K=%d, cost model %s, decided by %s)", doc.version, doc.mode,
                 in_force.config.max_k, in_force.cost_model.name, doc.decided_by)


class PolicySync:
    """Event-loop side: reads, validates and forwards policy documents; watches expiry."""

    def __init__(self, url: str, service: str, submit: Callable[[PolicyDocument | None, str], None],
                 metrics: TargetMetrics, poll_s: float = 1.0, password: str | None = None,
                 tls_dir: str | None = None) -> None:
        self.key = policy_key(service)
        self.service = service
        self._submit = submit
        self.metrics = metrics
        self.poll_s = poll_s
        self._client = aioredis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0,
                                               **redis_kwargs(url, tls_dir, password))
        self._task: asyncio.Task[None] | None = None
        self.current: PolicyDocument | None = None
        self._said_absent = False
        self._expired_version = 0
        self._last_raw: str | bytes | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="smartspec-policy-sync")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._client.aclose()

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                async with self._client.pubsub() as pubsub:
                    await pubsub.subscribe(self.key)
                    await self._read()  # whatever was published before we subscribed
                    backoff = 0.1
                    next_poll = time.monotonic() + self.poll_s
                    while True:
                        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=min(self.poll_s, 0.5))
                        if msg is not None and msg.get("type") == "message":
                            self.consider(msg["data"])
                        elif time.monotonic() >= next_poll:
                            await self._read()
                            next_poll = time.monotonic() + self.poll_s
                        self._check_expiry()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("policy: Redis unavailable (%s); keeping the policy in force until it expires", exc)
            except Exception:  # a bug here must not stop the fall-back to the local default
                log.exception("policy: sync failed; retrying")
            end = time.monotonic() + backoff  # back off, still watching expiry
            while time.monotonic() < end:
                self._check_expiry()
                await asyncio.sleep(min(0.2, backoff))
            backoff = min(2 * backoff, 2.0)

    async def _read(self) -> None:
        raw = await self._client.get(self.key)
        if raw is None:
            if self.current is None and not self._said_absent:
                self._said_absent = True
                self.metrics.policy_fallback.add(1, {"reason": "absent"})
                log.info("policy: none published at %s; serving on the local default", self.key)
            return
        self.consider(raw)

    def consider(self, raw: str | bytes) -> bool:
        """Apply `raw` if it is valid and newer; returns whether it was taken."""
        if raw == self._last_raw:  # the poll re-reads the same document every second: judged once is enough
            return False
        self._last_raw = raw
        try:
            doc = parse_document(raw)
        except ValueError as exc:
            self.metrics.policy_rejected.add(1, {"reason": "invalid"})
            log.warning("policy: ignored an invalid document: %s", exc)
            return False
        cur = self.current
        if doc.service != self.service:
            self.metrics.policy_rejected.add(1, {"reason": "service"})
            log.warning("policy: ignored a document for service %r (this is %r)", doc.service, self.service)
            return False
        if cur is not None and doc.version <= cur.version:
            if doc.version < cur.version:
                self.metrics.policy_rejected.add(1, {"reason": "stale"})
            return False  # the same document again (poll after pub/sub) is not news
        if doc.expired():
            if doc.version != self._expired_version:  # count each expired document once, not every poll
                self._expired_version = doc.version
                self.metrics.policy_rejected.add(1, {"reason": "expired"})
            return False
        # A lower version is accepted only when nothing is in force (e.g. the controller lost Redis's state).
        self.current = doc
        self._submit(doc, "")
        return True

    def _check_expiry(self) -> None:
        if self.current is not None and self.current.expired():
            log.warning("policy v%d expired at %s", self.current.version, time.strftime("%H:%M:%S",
                        time.localtime(self.current.expires_at)))
            self._expired_version = self.current.version
            self.current = None
            self._last_raw = None  # a document refused as older than this one may be taken now
            self._submit(None, "expired")
