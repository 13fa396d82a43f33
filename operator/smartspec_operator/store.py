"""The operator's side of Redis (DESIGN §5): write policy-spec, read the controller's status, clean up keys."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from smartspec.telemetry.keys import policy_spec_key, service_keys, status_key


class Store:
    """One client per Redis URL (services may each name their own Redis)."""

    def __init__(self, timeout_s: float = 5.0) -> None:
        self.timeout_s = timeout_s
        self._clients: dict[str, aioredis.Redis] = {}

    def client(self, url: str) -> aioredis.Redis:
        if url not in self._clients:
            self._clients[url] = aioredis.Redis.from_url(url, socket_timeout=self.timeout_s,
                                                         socket_connect_timeout=self.timeout_s,
                                                         decode_responses=True)
        return self._clients[url]

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

    async def decision(self, url: str, service: str) -> dict[str, Any] | None:
        raw = await self.client(url).get(status_key(service))
        if raw is None:
            return None
        try:
            out = json.loads(raw)
        except ValueError:
            return None  # a half-written or foreign value is "no decision", not a crash
        return out if isinstance(out, dict) else None

    async def forget(self, url: str, service: str) -> int:
        """Delete every key the service owns (step stream, policy, spec, status)."""
        return int(await self.client(url).delete(*service_keys(service)))

    async def close(self) -> None:
        for c in self._clients.values():
            await c.aclose()
        self._clients.clear()
