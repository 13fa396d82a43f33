"""A small Kubernetes REST client on aiohttp: get/create/merge-patch/delete of the few kinds the operator owns.

It authenticates with the `kopf.ConnectionInfo` kopf's login produced (service account, kubeconfig or a
plain URL), so the operator has one source of credentials. `apply` is idempotent: it remembers what it
last applied in an annotation, patches only when the desired object changed, and sends `null` for
fields that were dropped from the desired object (a JSON merge patch alone would leave them behind).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable
from typing import Any, Literal

import aiohttp

LAST_APPLIED = "smartspec.io/last-applied"
Outcome = Literal["created", "patched", "unchanged"]

_PLURALS = {"Deployment": "deployments", "Service": "services", "ConfigMap": "configmaps", "Secret": "secrets",
            "NetworkPolicy": "networkpolicies",
            "SpeculativeService": "speculativeservices", "SpeculationPolicy": "speculationpolicies"}
_API_VERSIONS = {"Deployment": "apps/v1", "Service": "v1", "ConfigMap": "v1", "Secret": "v1",
                 "NetworkPolicy": "networking.k8s.io/v1",
                 "SpeculativeService": "smartspec.io/v1alpha1", "SpeculationPolicy": "smartspec.io/v1alpha1"}


class KubeError(Exception):
    """A failed API call: `status` is the HTTP status (0 when the server could not be reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status or 'unreachable'}: {message}")
        self.status = status

    @property
    def temporary(self) -> bool:
        # Conflicts, throttling, server errors and network trouble heal by themselves; 4xx input errors do not.
        # 401: kopf re-authenticates on its own next request (e.g. a rotated service-account token).
        return self.status in (0, 401, 408, 409, 429) or self.status >= 500


class NotOwned(KubeError):
    """An object of the wanted name exists and belongs to someone else: never taken over."""

    def __init__(self, message: str) -> None:
        super().__init__(409, message)

    @property
    def temporary(self) -> bool:
        return False


def path(kind: str, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    api_version = _API_VERSIONS[kind]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    out = f"{base}/namespaces/{namespace}/{_PLURALS[kind]}"
    if name:
        out += f"/{name}"
    if subresource:
        out += f"/{subresource}"
    return out


class Kube:
    def __init__(self, timeout_s: float = 10.0) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.info: Any = None  # kopf.ConnectionInfo
        self._session: aiohttp.ClientSession | None = None
        self._ssl: ssl.SSLContext | bool = True

    def use(self, info: Any) -> None:
        """Adopt credentials from kopf's login (called again when kopf re-authenticates)."""
        self.info = info
        self._ssl = _ssl_context(info)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if content_type:
            headers["Content-Type"] = content_type
        if self.info is not None:
            headers |= self.info.as_http_headers()  # bearer token or basic auth, as kopf sends it
        return headers

    async def request(self, method: str, url_path: str, body: Any = None,
                      content_type: str | None = None) -> dict[str, Any] | None:
        if self.info is None:
            raise KubeError(0, "not logged in to the Kubernetes API yet")
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        data = None if body is None else json.dumps(body)
        try:
            async with self._session.request(method, self.info.server.rstrip("/") + url_path, data=data,
                                             headers=self._headers(content_type if body is not None else None),
                                             ssl=self._ssl) as resp:
                text = await resp.text()
                if resp.status == 404 and method in ("GET", "DELETE"):
                    return None
                if resp.status >= 400:
                    raise KubeError(resp.status, f"{method} {url_path}: {_message(text)}")
                return json.loads(text) if text.strip() else {}
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise KubeError(0, f"{method} {url_path}: {exc!r}") from None

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.request("GET", path(kind, namespace, name))

    async def delete(self, kind: str, namespace: str, name: str, propagation: str | None = None) -> bool:
        """True when something was deleted. `propagation` "Foreground": the object stays (terminating)
        until the garbage collector has removed what it owns (for a Deployment: its pods)."""
        body = None if propagation is None else {"apiVersion": "v1", "kind": "DeleteOptions",
                                                 "propagationPolicy": propagation}
        return await self.request("DELETE", path(kind, namespace, name), body, "application/json") is not None

    async def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any],
                    subresource: str | None = None) -> dict[str, Any] | None:
        return await self.request("PATCH", path(kind, namespace, name, subresource), patch,
                                  "application/merge-patch+json")

    async def apply(self, desired: dict[str, Any], owner_uid: str | None = None) -> Outcome:
        """Create `desired`, or bring the live object to it; returns what happened. With `owner_uid`, an
        existing object that this owner does not own is refused (NotOwned), not overwritten."""
        kind, meta = desired["kind"], desired["metadata"]
        wanted = json.dumps(desired, sort_keys=True)
        body = json.loads(wanted)  # a copy we may annotate
        body["metadata"].setdefault("annotations", {})[LAST_APPLIED] = wanted
        live = await self._live_or_create(kind, meta["namespace"], meta["name"], lambda: body)
        if live is None:
            return "created"
        if owner_uid is not None:
            _check_owner(live, kind, meta["namespace"], meta["name"], owner_uid)
        previous = (live.get("metadata", {}).get("annotations") or {}).get(LAST_APPLIED)
        if previous == wanted:
            return "unchanged"
        patch = _with_removals(json.loads(previous) if previous else {}, body)
        await self.patch(kind, meta["namespace"], meta["name"], patch)
        return "patched"

    async def create_once(self, kind: str, namespace: str, name: str, make: Callable[[], dict[str, Any]],
                          owner_uid: str) -> Outcome:
        """Create `make()` if absent, else leave the live object as it is (a generated Secret keeps its keys
        across reconciles; `make` runs only when one is created). No last-applied annotation: for a Secret
        it would hold the secret in plain text."""
        live = await self._live_or_create(kind, namespace, name, make)
        if live is None:
            return "created"
        _check_owner(live, kind, namespace, name, owner_uid)
        return "unchanged"

    async def _live_or_create(self, kind: str, namespace: str, name: str,
                              make: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """The live object, or None once `make()` is created in its place."""
        live = await self.get(kind, namespace, name)
        if live is not None:
            return live
        try:
            await self.request("POST", path(kind, namespace), make(), "application/json")
            return None
        except KubeError as exc:
            if exc.status != 409:
                raise
            # Created meanwhile (the create handler and the status daemon both converge): that one is live.
            live = await self.get(kind, namespace, name)
            if live is None:
                raise
            return live


def _check_owner(live: dict[str, Any], kind: str, namespace: str, name: str, owner_uid: str) -> None:
    refs = live.get("metadata", {}).get("ownerReferences") or []
    if not any(r.get("uid") == owner_uid for r in refs):
        raise NotOwned(f"{kind} {namespace}/{name} already exists and is not owned by this SpeculativeService; "
                       "rename one of them")


def _with_removals(previous: Any, desired: Any) -> Any:
    """`desired` plus `None` for every key `previous` set that `desired` no longer has (merge-patch deletes)."""
    if not isinstance(previous, dict) or not isinstance(desired, dict):
        return desired
    out = {k: _with_removals(previous.get(k), v) for k, v in desired.items()}
    for k in previous.keys() - desired.keys():
        out[k] = None
    return out


def _message(text: str) -> str:
    try:
        return str(json.loads(text).get("message") or text)[:500]
    except (ValueError, AttributeError):
        return text[:500]


def _ssl_context(info: Any) -> ssl.SSLContext | bool:
    # kopf builds the context (CA, client certificate, insecure) the same way for its own watches.
    return info.as_ssl_context() if info.server.startswith("https") else True
