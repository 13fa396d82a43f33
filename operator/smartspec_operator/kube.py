"""The operator's Kubernetes client: the `kubernetes` client's asyncio port, server-side apply for owned objects.

Credentials come from kopf's login (`kopf.ConnectionInfo`: service account, kubeconfig or a plain URL), so the
operator has one source of them. Objects the operator owns converge by server-side apply under the field
manager `smartspec-operator`: the API server records which manager set which field, removes a field the
operator stopped applying, and answers 409 when another manager (someone's `kubectl edit`, an autoscaler) owns
a field the operator would set to a different value. That conflict is raised as `ApplyConflict` and reported
in the SpeculativeService's status; the operator never forces (nothing it applies is a field it must take
from someone else), so a person's deliberate change is not silently overwritten.
"""

from __future__ import annotations

import base64
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from typing import Any, Literal

import aiohttp
from kubernetes_asyncio.client import ApiClient, Configuration
from kubernetes_asyncio.client.exceptions import ApiException

FIELD_MANAGER = "smartspec-operator"
APPLY_PATCH = "application/apply-patch+yaml"  # JSON is YAML: the body goes as JSON
MERGE_PATCH = "application/merge-patch+json"
Outcome = Literal["created", "patched", "unchanged"]

_PLURALS = {"Deployment": "deployments", "Service": "services", "ConfigMap": "configmaps", "Secret": "secrets",
            "NetworkPolicy": "networkpolicies",
            "SpeculativeService": "speculativeservices", "SpeculationPolicy": "speculationpolicies"}
_API_VERSIONS = {"Deployment": "apps/v1", "Service": "v1", "ConfigMap": "v1", "Secret": "v1",
                 "NetworkPolicy": "networking.k8s.io/v1",
                 "SpeculativeService": "smartspec.io/v1alpha1", "SpeculationPolicy": "smartspec.io/v1alpha1"}
_AS_JSON = {code: "object" for code in (200, 201, 202)}  # the client hands the decoded JSON back as is


class KubeError(Exception):
    """A failed API call: `status` is the HTTP status (0 when the server could not be reached)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status or 'unreachable'}: {message}")
        self.status = status
        self.message = message

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


class ApplyConflict(KubeError):
    """Another field manager owns a field the operator applies, with another value: reported, not forced.
    It lasts until that manager lets the field go (or the spec agrees with it), so retrying at once is pointless;
    the status daemon applies again on its converge interval."""

    def __init__(self, message: str) -> None:
        super().__init__(409, f"field conflict: {message}")

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
    """get / create / merge-patch / server-side apply / delete of the kinds the operator touches."""

    def __init__(self, timeout_s: float = 10.0) -> None:
        self.timeout_s = timeout_s
        self.info: Any = None  # kopf.ConnectionInfo
        self._client: ApiClient | None = None
        self._stale: list[ApiClient] = []  # replaced by a re-login; closed from the event loop
        self._pem_dir: tempfile.TemporaryDirectory[str] | None = None

    def use(self, info: Any) -> None:
        """Adopt credentials from kopf's login (called again when kopf re-authenticates)."""
        self.info = info
        if self._client is not None:
            self._stale.append(self._client)
            self._client = None

    async def close(self) -> None:
        for client in [*self._stale, *([self._client] if self._client is not None else [])]:
            await client.close()
        self._stale, self._client = [], None
        if self._pem_dir is not None:
            self._pem_dir.cleanup()
            self._pem_dir = None

    async def _api(self) -> ApiClient:
        if self.info is None:
            raise KubeError(0, "not logged in to the Kubernetes API yet")
        while self._stale:
            await self._stale.pop().close()
        if self._client is None:
            client = ApiClient(self._configuration(self.info))
            client.user_agent = FIELD_MANAGER
            for header, value in self.info.as_http_headers().items():  # bearer token or basic auth, as kopf
                client.set_default_header(header, value)
            self._client = client
        return self._client

    def _configuration(self, info: Any) -> Configuration:
        conf = Configuration(host=info.server.rstrip("/"))
        conf.verify_ssl = not info.insecure
        conf.ssl_ca_cert = self._pem(info.ca_path, info.ca_data, "ca.crt")
        conf.cert_file = self._pem(info.certificate_path, info.certificate_data, "client.crt")
        conf.key_file = self._pem(info.private_key_path, info.private_key_data, "client.key")
        if info.proxy_url:
            conf.proxy = info.proxy_url
        return conf

    def _pem(self, file: Any, data: str | bytes | None, name: str) -> str | None:
        """A path the TLS layer can load: the given file, or the given data written to a private file (the
        Python TLS stack loads certificates and keys from files only; kopf does the same for its own)."""
        if file:
            return os.fsdecode(file)
        if not data:
            return None
        raw = data.encode() if isinstance(data, str) else data
        pem = raw if raw.lstrip().startswith(b"-----") else base64.b64decode(raw)
        if self._pem_dir is None:
            self._pem_dir = tempfile.TemporaryDirectory(prefix="smartspec-operator-")  # mode 0700
        target = os.path.join(self._pem_dir.name, name)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        return target

    async def request(self, method: str, url_path: str, body: Any = None, content_type: str | None = None,
                      query: Iterable[tuple[str, str]] = ()) -> dict[str, Any] | None:
        """One API call: the decoded JSON answer, None for a GET or DELETE of nothing; KubeError otherwise."""
        client = await self._api()
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        try:
            out = await client.call_api(url_path, method, query_params=list(query), header_params=headers,
                                        body=body, response_types_map=_AS_JSON, auth_settings=[],
                                        _return_http_data_only=True, _request_timeout=self.timeout_s)
        except ApiException as exc:
            if exc.status == 404 and method in ("GET", "DELETE"):
                return None
            raise KubeError(exc.status or 0, f"{method} {url_path}: {_message(exc.body)}") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise KubeError(0, f"{method} {url_path}: {exc!r}") from None
        return out if isinstance(out, dict) else {}

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.request("GET", path(kind, namespace, name))

    async def delete(self, kind: str, namespace: str, name: str, propagation: str | None = None) -> bool:
        """True when something was deleted. `propagation` "Foreground": the object stays (terminating)
        until the garbage collector has removed what it owns (for a Deployment: its pods)."""
        body = None if propagation is None else {"apiVersion": "v1", "kind": "DeleteOptions",
                                                 "propagationPolicy": propagation}
        return await self.request("DELETE", path(kind, namespace, name), body) is not None

    async def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any],
                    subresource: str | None = None) -> dict[str, Any] | None:
        """A JSON merge patch (the operator's writes to its own custom resources' status)."""
        return await self.request("PATCH", path(kind, namespace, name, subresource), patch, MERGE_PATCH,
                                  query=[("fieldManager", FIELD_MANAGER)])

    async def apply(self, desired: dict[str, Any], owner_uid: str | None = None) -> Outcome:
        """Server-side apply `desired` (the whole object the operator wants: what it leaves out that it applied
        before is removed); returns what happened. With `owner_uid`, an existing object that this owner does not
        own is refused (NotOwned), not taken over. A field another manager owns: ApplyConflict."""
        kind, meta = desired["kind"], desired["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        live = await self.get(kind, namespace, name)
        if live is not None and owner_uid is not None:
            _check_owner(live, kind, namespace, name, owner_uid)
        try:
            out = await self.request("PATCH", path(kind, namespace, name), desired, APPLY_PATCH,
                                     query=[("fieldManager", FIELD_MANAGER), ("force", "false")])
        except KubeError as exc:
            if exc.status == 409:
                raise ApplyConflict(exc.message) from None
            raise
        if live is None:
            return "created"
        # The API server writes (and moves resourceVersion) only when the apply changed something.
        before = live.get("metadata", {}).get("resourceVersion")
        return "unchanged" if (out or {}).get("metadata", {}).get("resourceVersion") == before else "patched"

    async def create_once(self, kind: str, namespace: str, name: str, make: Callable[[], dict[str, Any]],
                          owner_uid: str) -> Outcome:
        """Create `make()` if absent, else leave the live object as it is (a generated Secret keeps its keys
        across reconciles; `make` runs only when one is created)."""
        live = await self.get(kind, namespace, name)
        if live is None:
            try:
                await self.request("POST", path(kind, namespace), make(), query=[("fieldManager", FIELD_MANAGER)])
                return "created"
            except KubeError as exc:
                if exc.status != 409:
                    raise
                # Created meanwhile (the create handler and the status daemon both converge): that one is live.
                live = await self.get(kind, namespace, name)
                if live is None:
                    raise
        _check_owner(live, kind, namespace, name, owner_uid)
        return "unchanged"


def _check_owner(live: dict[str, Any], kind: str, namespace: str, name: str, owner_uid: str) -> None:
    refs = live.get("metadata", {}).get("ownerReferences") or []
    if not any(r.get("uid") == owner_uid for r in refs):
        raise NotOwned(f"{kind} {namespace}/{name} already exists and is not owned by this SpeculativeService; "
                       "rename one of them")


def _message(body: Any) -> str:
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    try:
        return str(json.loads(text).get("message") or text)[:500]
    except (ValueError, AttributeError):
        return text[:500]
