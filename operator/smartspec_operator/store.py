"""The operator's side of Redis (ARCHITECTURE.md §5): write policy-spec, read the controller's status, clean up keys."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from smartspec.telemetry.keys import policy_spec_key, service_keys, status_key
from smartspec.telemetry.status import ControllerStatus, parse_status


def redis_user(service: str) -> str:
    """The Redis user a service's pods log in as (the service id: namespace.name)."""
    return f"smartspec-{service}"


class Store:
    """One client per Redis URL (services may each name their own Redis)."""

    def __init__(self, timeout_s: float = 5.0, passwords: dict[str, str] | None = None) -> None:
        self.timeout_s = timeout_s
        self.passwords = passwords or {}  # url -> admin password (the operator's default Redis)
        self._clients: dict[str, aioredis.Redis] = {}

    def client(self, url: str) -> aioredis.Redis:
        if url not in self._clients:
            self._clients[url] = aioredis.Redis.from_url(url, socket_timeout=self.timeout_s,
                                                         socket_connect_timeout=self.timeout_s,
                                                         decode_responses=True, password=self.passwords.get(url))
        return self._clients[url]

    async def ensure_user(self, url: str, service: str, password: str) -> None:
        """The service's own Redis user (idempotent; again after a Redis restart lost it): its keys and
        channels only, no dangerous or admin commands. Targets and the controller log in as it."""
        prefix = f"smartspec:{service}:*"
        await self.client(url).acl_setuser(
            redis_user(service), enabled=True, reset_passwords=True, passwords=[f"+{password}"], reset_keys=True,
            keys=[prefix], reset_channels=True, channels=[prefix],
            categories=["+@connection", "+@read", "+@write", "+@stream", "+@pubsub", "+@scripting",
                        "+@transaction", "-@dangerous", "-@admin"])

    async def drop_user(self, url: str, service: str) -> None:
        await self.client(url).acl_deluser(redis_user(service))

    async def write_spec(self, url: str, service: str, spec: dict[str, Any]) -> bool:
        """Set the policy-spec the controller obeys; False when it was already exactly this."""
        raw = json.dumps(spec, sort_keys=True)
        r = self.client(url)
        if await r.get(policy_spec_key(service)) == raw:
            return False
        await r.set(policy_spec_key(service), raw)
        return True

    async def clear_spec(self, url: str, service: str) -> None:
        """No policy: the controller goes back to its built-in default spec."""
        await self.client(url).delete(policy_spec_key(service))

    async def decision(self, url: str, service: str) -> ControllerStatus | None:
        # A half-written, oversized or foreign value is "no decision", not a crash (parse_status).
        return parse_status(await self.client(url).get(status_key(service)))

    async def forget(self, url: str, service: str) -> int:
        """Delete every key the service owns (step stream, policy, spec, status)."""
        return int(await self.client(url).delete(*service_keys(service)))

    async def close(self) -> None:
        for c in self._clients.values():
            await c.aclose()
        self._clients.clear()
