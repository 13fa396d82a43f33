"""A Kubernetes API for operator tests: kmock's emulator over real HTTP, plus what the API server adds.

kmock stores objects and serves discovery, list, watch, create, merge-patch, delete and finalizers.
On top of it (kmock's docs invite subclassing for "special" fields) this adds what a real API server
does and the operator depends on: server-set `uid`, `creationTimestamp`, `resourceVersion`, and
`generation` bumped on spec changes only; CRD admission for smartspec kinds (defaults, schema
and CEL rules from the chart's CRDs via tests.crd_admission) answering 422 Invalid like the real one;
and server-side apply with per-manager field ownership (tests.server_side_apply): create-or-merge,
removal of fields a manager stopped applying, 409 Conflict on another manager's field.
It has no garbage collector and no Deployment controller: tests act as the latter by patching
Deployment status, and assert owner references for the former.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import threading
import uuid
from collections.abc import Mapping
from typing import Any

import httpx
import jsonpatch
import kmock
from kmock._internal import apps, enums, k8s

from tests import server_side_apply as ssa
from tests.crd_admission import GROUP_VERSION, Invalid, admit

RESOURCES = {
    "smartspec.io/v1alpha1/speculativeservices": ("SpeculativeService", True),
    "smartspec.io/v1alpha1/speculationpolicies": ("SpeculationPolicy", True),
    "apiextensions.k8s.io/v1/customresourcedefinitions": ("CustomResourceDefinition", False),
    "v1/namespaces": ("Namespace", False),
    "v1/events": ("Event", True),
    "apps/v1/deployments": ("Deployment", True),
    "v1/services": ("Service", True),
    "v1/configmaps": ("ConfigMap", True),
    "v1/secrets": ("Secret", True),
    "networking.k8s.io/v1/networkpolicies": ("NetworkPolicy", True),
}
VERBS = {"list", "watch", "get", "create", "patch", "update", "delete"}


def _plain(value: Any) -> Any:
    """kmock's versioned mappings as plain JSON values."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _merge(value: Any, patch: Any) -> Any:
    """RFC 7386 merge patch (what kmock applies), to see the object a patch would produce."""
    if not isinstance(patch, dict):
        return patch
    out = dict(value) if isinstance(value, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out


def _removals(old: Any, new: Any) -> Any:
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    out = {k: _removals(old.get(k), v) for k, v in new.items()}
    out |= {k: None for k in old.keys() - new.keys()}
    return out


class ApiServer(kmock.KubernetesEmulator):
    _versions = itertools.count(1)

    async def _handle(self, request: Any) -> Any:
        res = request.resource
        if res is not None and request.name and _content_type(request).startswith("application/apply-patch"):
            return await self._apply(request)
        if res is not None and isinstance(request.data, list) and request.action == enums.action.UPDATE:
            # A JSON patch (kopf removes finalizers so): its `test` ops fail with 422 as in the API server
            # (kmock would answer 500), and the write moves resourceVersion on like any other.
            key = (res, request.namespace, request.name)
            if key in self.objects and not self.objects[key].deleted:
                try:
                    jsonpatch.apply_patch(_plain(self.objects[key]), request.data)
                except jsonpatch.JsonPatchException as exc:
                    return await self._render_error(k8s.KubernetesError(status=422, reason="Invalid",
                                                                        message=str(exc)))
                request.data.append({"op": "add", "path": "/metadata/resourceVersion",
                                     "value": str(next(self._versions))})
        if res is not None and isinstance(request.data, dict):
            try:
                if request.action == enums.action.CREATE:
                    self._on_create(request)
                elif request.action == enums.action.UPDATE and request.name:
                    self._on_update(request)
            except Invalid as exc:
                # Rendered, not raised: kmock re-raises raised errors when the emulator exits.
                return await self._render_error(k8s.KubernetesError(status=422, reason="Invalid", message=str(exc)))
        return await super()._handle(request)

    def _on_create(self, request: Any) -> None:
        data = request.data
        if data.get("apiVersion") == GROUP_VERSION:
            admitted = admit(data)
            data.clear()
            data.update(admitted)
        self._server_fields(data, request.namespace)
        ssa.with_owners(data, ssa.update(None, data, _manager(request)))

    def _server_fields(self, data: dict[str, Any], namespace: str | None) -> None:
        meta = data.setdefault("metadata", {})
        meta.setdefault("namespace", namespace) if namespace else None
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        meta["generation"] = 1
        meta["resourceVersion"] = str(next(self._versions))

    async def _apply(self, request: Any) -> Any:
        """Server-side apply: create or merge under the request's field manager, or 409 on a conflict."""
        manager, data = request.params.get("fieldManager"), request.data
        if not manager:
            return await self._render_error(k8s.KubernetesError(
                status=422, reason="Invalid", message="fieldManager is required for apply requests"))
        if not isinstance(data, dict) or (data.get("metadata") or {}).get("name") != request.name \
                or not data.get("apiVersion") or not data.get("kind"):
            return await self._render_error(k8s.KubernetesError(
                status=400, reason="BadRequest", message="an apply body is a whole object with apiVersion, "
                "kind and the name of the URL"))
        key = (request.resource, request.namespace, request.name)
        exists = key in self.objects and not self.objects[key].deleted
        live = _plain(self.objects[key]) if exists else None
        try:
            new = ssa.apply(live, data, manager, force=request.params.get("force") in ("true", "True", "1"))
        except ssa.Conflict as exc:
            return await self._render_error(k8s.KubernetesError(status=409, reason="Conflict", message=str(exc)))
        data.clear()
        if live is None:  # apply creates: store it the way a POST would, then answer as for a no-op update
            self._server_fields(new, request.namespace)
            async with self._lock:
                if key in self._objects:  # deleted earlier: a new incarnation, as kmock's own create does
                    self._objects[key].create(new)
                else:
                    self._objects[key] = new
                await self._buses[request.resource].put({"type": "ADDED", "object": self._objects[key].raw})
        elif new != live:
            data.update(_removals(live, new))
            try:
                self._on_update(request, owners_done=True)
            except Invalid as exc:
                return await self._render_error(k8s.KubernetesError(status=422, reason="Invalid", message=str(exc)))
        return await super()._handle(request)

    def _on_update(self, request: Any, owners_done: bool = False) -> None:
        key = (request.resource, request.namespace, request.name)
        if key not in self.objects or self.objects[key].deleted:
            return  # kmock answers 404
        live = _plain(self.objects[key])
        data = request.data
        subresource = request.url.path.rstrip("/").rsplit("/", 1)[-1] == "status"
        if not subresource and not owners_done:
            ssa.with_owners(data, ssa.update(live, data, _manager(request)))
        meta = data.setdefault("metadata", {})
        meta["resourceVersion"] = str(next(self._versions))
        if subresource:
            return  # status: no admission of spec, no generation bump
        merged = _merge(live, data)
        if merged.get("apiVersion") == GROUP_VERSION and "spec" in data:
            admitted = admit(merged)
            data["spec"] = _removals(live.get("spec"), admitted["spec"])
            merged["spec"] = admitted["spec"]
        if merged.get("spec") != live.get("spec"):
            meta["generation"] = int(live.get("metadata", {}).get("generation") or 1) + 1


def _content_type(request: Any) -> str:
    return next((v for k, v in request.headers.items() if k.lower() == "content-type"), "") or ""


def _manager(request: Any) -> str:
    """The request's field manager: the fieldManager parameter, else the client's name (as the API server)."""
    agent = next((v for k, v in request.headers.items() if k.lower() == "user-agent"), "") or "unknown"
    return str(request.params.get("fieldManager") or agent.split("/", 1)[0])


async def _snapshot(emulator: ApiServer) -> list[Any]:
    return list(emulator)  # kmock handlers iterate over the requests they served


class KubeApi:
    """The emulator on a background loop; `client` is a plain HTTP client for the test's own requests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.emulator, self.server = self._call(self._start())
        self.url = str(self.server.url).rstrip("/")
        self.client = httpx.Client(base_url=self.url, timeout=10)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _start(self) -> tuple[ApiServer, Any]:
        km = ApiServer()
        for path, (kind, namespaced) in RESOURCES.items():
            km.resources[path] = kmock.ResourceInfo(kind=kind, namespaced=namespaced, verbs=VERBS,
                                                    subresources={"status"} if "smartspec" in path
                                                    or "deployments" in path else set())
        await km.__aenter__()
        srv = apps.Server(km)
        await srv.__aenter__()
        return km, srv

    def stop(self) -> None:
        self.client.close()

        async def _stop() -> None:
            await self.server.__aexit__(None, None, None)
            await self.emulator.__aexit__(None, None, None)

        try:
            self._call(_stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=10)

    # -- REST helpers for tests (paths as the API server has them)
    @staticmethod
    def path(kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
        from smartspec_operator.kube import path

        return path(kind, namespace, name, sub)

    def create(self, obj: dict[str, Any]) -> httpx.Response:
        meta = obj["metadata"]
        return self.client.post(self.path(obj["kind"], meta.get("namespace", "default")), json=obj)

    def get(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        r = self.client.get(self.path(kind, namespace, name))
        return None if r.status_code == 404 else r.raise_for_status().json()

    def existing(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any]:
        """`get` for an object the test expects to be there (fails the test if it is not)."""
        obj = self.get(kind, name, namespace)
        assert obj is not None, f"no {kind} {namespace}/{name}"
        return obj

    def patch(self, kind: str, name: str, patch: dict[str, Any], namespace: str = "default",
              sub: str | None = None, manager: str | None = None) -> httpx.Response:
        """A merge patch; `manager` names its field manager (else the API server takes the client's name)."""
        return self.client.patch(self.path(kind, namespace, name, sub), json=patch,
                                 params={"fieldManager": manager} if manager else None,
                                 headers={"Content-Type": "application/merge-patch+json"})

    def delete(self, kind: str, name: str, namespace: str = "default") -> httpx.Response:
        return self.client.delete(self.path(kind, namespace, name))

    def requests_for(self, kind: str, methods: tuple[str, ...] = ("POST", "PATCH", "PUT", "DELETE")) -> list[Any]:
        """Writes the API has seen for one kind (e.g. to prove a policy change touched no Deployment)."""
        from smartspec_operator.kube import _PLURALS

        plural = _PLURALS[kind]
        seen = self._call(_snapshot(self.emulator))  # the request log lives on the emulator's loop
        return [r for r in seen if r.method is not None and r.method.value in methods and f"/{plural}" in r.url.path]

    def operator_requests(self) -> set[tuple[str, str, str]]:
        """(API group, resource[/subresource], RBAC verb) of every request not made by the tests' own client."""
        out = set()
        for r in self._call(_snapshot(self.emulator)):
            if "httpx" in str(r.headers.get("User-Agent", "")) or r.method is None:
                continue
            parts = [p for p in r.url.path.split("/") if p]
            if parts[:1] == ["api"]:
                group, rest = "", parts[2:]
            elif parts[:1] == ["apis"] and len(parts) > 3:
                group, rest = parts[1], parts[3:]
            else:
                continue  # discovery: allowed to every authenticated user
            if rest[:1] == ["namespaces"] and len(rest) > 2:
                rest = rest[2:]  # namespaced: drop "namespaces/NS"
            if not rest:
                continue
            resource, name = rest[0], rest[1] if len(rest) > 1 else None
            if len(rest) > 2:
                resource = f"{resource}/{rest[2]}"
            method = r.method.value
            verb = {"POST": "create", "PATCH": "patch", "PUT": "update"}.get(method)
            if method == "GET":
                verb = "get" if name else ("watch" if r.params.get("watch") in ("true", "1") else "list")
            elif method == "DELETE":
                verb = "delete" if name else "deletecollection"
            if verb:
                out.add((group, resource, verb))
        return out
