"""kopf handlers: reconcile SpeculativeServices, apply SpeculationPolicies through Redis, report status.

Spec changes are handled once each (create/update/resume, idempotent: apply patches only what differs);
status is level-triggered (one daemon per object re-reads Deployments and the controller's Redis status
every `status_interval_s`). Errors that heal by themselves (API conflicts, 5xx, Redis down) are
`kopf.TemporaryError`s and retried; errors in the input are `kopf.PermanentError`s and shown in status.
"""

from __future__ import annotations

import base64
import copy
import logging
import secrets
import time
from typing import Any

import kopf
from redis.exceptions import RedisError

from smartspec.policy.document import parse_spec
from smartspec_operator import status as st
from smartspec_operator.admission import violations
from smartspec_operator.kube import Kube, KubeError
from smartspec_operator.manifests import (
    REDIS_PASSWORD,
    Owner,
    auth_secret,
    build,
    child_name,
    redis_acl,
    redis_service,
    redis_url,
    tls_secret,
    tls_secret_name,
)
from smartspec_operator.settings import OperatorSettings
from smartspec_operator.spec import DEFAULT_POLICY, GROUP, POLICIES, SERVICES, VERSION, ServiceSpec, parse_service_spec
from smartspec_operator.store import Store

Log = logging.Logger | logging.LoggerAdapter[Any]  # what kopf hands handlers as `logger`
CLEANUP_PATIENCE_S = 300  # a delete waits this long for pods to stop and Redis to answer, then goes ahead

log = logging.getLogger(__name__)


def _admitted(raw: dict[str, Any], settings: OperatorSettings) -> ServiceSpec:
    """The spec, valid and within what the operator may run (admission.py); ValueError says why not."""
    svc = parse_service_spec(copy.deepcopy(raw))
    refused = violations(svc, settings)
    if refused:
        raise ValueError("not allowed: " + "; ".join(refused))
    return svc


def _namespaced(namespace: str | None) -> str:
    if not namespace:  # both kinds are namespaced (the CRDs say so); kopf's types allow None
        raise kopf.PermanentError("a smartspec object without a namespace")
    return namespace


def _parts(memo: Any) -> tuple[OperatorSettings, Kube, Store]:
    return memo.settings, memo.kube, memo.store


def _transient(exc: Exception, what: str) -> kopf.TemporaryError | kopf.PermanentError:
    if isinstance(exc, KubeError) and not exc.temporary:
        return kopf.PermanentError(f"{what}: {exc}")
    return kopf.TemporaryError(f"{what}: {exc}", delay=2)


@kopf.on.startup()
async def configure(*, settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    s: OperatorSettings = memo.settings
    settings.persistence.finalizer = "smartspec.io/cleanup"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="smartspec.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="smartspec.io", key="last-handled-configuration")
    settings.posting.level = logging.INFO
    settings.networking.request_timeout = s.request_timeout_s
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = s.request_timeout_s
    settings.execution.max_workers = 4


@kopf.on.login()
def login(*, memo: Any, **kwargs: Any) -> kopf.ConnectionInfo | None:
    s: OperatorSettings = memo.settings
    if s.kube_url:
        info: kopf.ConnectionInfo | None = kopf.ConnectionInfo(server=s.kube_url, default_namespace="default")
    else:
        info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
    if info is not None:
        memo.kube.use(info)  # our own client talks with the same credentials
    return info


@kopf.on.cleanup()
async def close(*, memo: Any, **_: Any) -> None:
    await memo.kube.close()
    await memo.store.close()


# -- indices: which services use which policy, and each policy's spec (both kept live by kopf)

@kopf.index(GROUP, VERSION, POLICIES)
def policy_specs(*, namespace: str | None, name: str, spec: Any,
                 **_: Any) -> dict[tuple[str | None, str], dict[str, Any]]:
    return {(namespace, name): copy.deepcopy(dict(spec))}


@kopf.index(GROUP, VERSION, SERVICES)
def policy_users(*, namespace: str | None, name: str, spec: Any, memo: Any,
                 **_: Any) -> dict[tuple[str | None, str], tuple[str, str, str]]:
    """(namespace, policy) -> (service name, its Redis service id, its Redis URL)."""
    ref = (spec.get("policyRef") or {}).get("name") or DEFAULT_POLICY
    url = (spec.get("redis") or {}).get("url") or memo.settings.redis_url
    return {(namespace, ref): (name, redis_service(namespace or "", name), url)}


def _first(index: Any, key: tuple[str, str]) -> Any:
    return next(iter(index.get(key, [])), None)


# -- SpeculativeService

async def _converge(memo: Any, name: str, namespace: str, uid: str, svc: ServiceSpec,
                    policy_specs: Any) -> tuple[dict[str, str], dict[str, Any]]:
    """The one idempotent step the handlers and the daemon share: children to the spec, policy spec to Redis.

    Raises KubeError; Redis trouble is only reported (in the returned status.policy), because serving
    never waits on Redis and the daemon's next tick writes the spec once Redis is back."""
    settings, kube, store = _parts(memo)
    owner = Owner(name, namespace, uid)
    # The auth Secret first: the pods mount it. Generated once, with an API key even when the spec names its
    # own key Secret (which the target then mounts instead), so dropping that name later still finds a key.
    secret = auth_secret(owner, secrets.token_urlsafe(32), "sk-smartspec-" + secrets.token_urlsafe(24),
                         secrets.token_urlsafe(32))
    done: dict[str, str] = {f"Secret/{secret['metadata']['name']}": await kube.create_once(
        "Secret", namespace, secret["metadata"]["name"], lambda: secret, owner_uid=uid)}
    if svc.tls.enabled and svc.tls.secret_name is None:  # issued only when absent: key generation is not free
        done[f"Secret/{tls_secret_name(name)}"] = await kube.create_once(
            "Secret", namespace, tls_secret_name(name), lambda: tls_secret(owner), owner_uid=uid)
    service_id = redis_service(namespace, name)
    if redis_acl(svc, settings):  # again every converge: an in-memory Redis that restarted lost its users
        live = await kube.get("Secret", namespace, secret["metadata"]["name"])
        password = base64.b64decode(((live or secret).get("data") or {})[REDIS_PASSWORD]).decode().strip()
        try:
            await store.ensure_user(redis_url(svc, settings), service_id, password)
        except RedisError as exc:  # like the policy spec: reported, retried by the next converge
            log.warning("service %s/%s: Redis user not set: %s", namespace, name, exc)
    for obj in build(owner, svc, settings):
        done[f"{obj['kind']}/{obj['metadata']['name']}"] = await kube.apply(obj, owner_uid=uid)
    if svc.draft is None:  # speculation switched off: the draft's Deployment, Service and NetworkPolicy go
        for kind in ("Deployment", "Service", "NetworkPolicy"):
            if await _delete_owned(kube, kind, namespace, child_name(name, "draft"), uid):
                done[f"{kind}/{child_name(name, 'draft')}"] = "deleted"
    try:
        policy = await _sync_policy(store, redis_url(svc, settings), redis_service(namespace, name),
                                    svc.policy_ref.name, namespace, policy_specs)
    except RedisError as exc:
        policy = {"name": svc.policy_ref.name, "applied": False, "message": f"Redis unreachable: {exc}"}
    return done, policy


@kopf.on.resume(GROUP, VERSION, SERVICES)
@kopf.on.create(GROUP, VERSION, SERVICES)
@kopf.on.update(GROUP, VERSION, SERVICES)
async def reconcile_service(*, spec: Any, name: str, namespace: str | None, meta: Any, memo: Any,
                            policy_specs: Any = None, logger: Log, **_: Any) -> None:
    namespace = _namespaced(namespace)
    kube = memo.kube
    generation = int(meta.get("generation") or 0)
    try:
        svc = _admitted(dict(spec), memo.settings)
    except ValueError as exc:
        await _status_quietly(kube, namespace, name, {"conditions": [st.condition(
            "Ready", False, "InvalidSpec", str(exc), generation, [], time.time())]}, logger)
        raise kopf.PermanentError(str(exc)) from None
    try:
        done, policy = await _converge(memo, name, namespace, str(meta["uid"]), svc, policy_specs)
    except KubeError as exc:
        await _status_quietly(kube, namespace, name, {"conditions": [st.condition(
            "Ready", False, "ApplyFailed", str(exc), generation, [], time.time())]}, logger)
        raise _transient(exc, "applying the service's objects") from None
    try:
        await kube.patch("SpeculativeService", namespace, name,
                         {"status": {"observedGeneration": generation, "policy": policy}}, subresource="status")
    except KubeError as exc:
        raise _transient(exc, "writing status") from None
    changed = {k: v for k, v in done.items() if v != "unchanged"}
    logger.info(f"reconciled generation {generation}: {changed or 'no changes'}; policy {policy['message']}")


async def _delete_owned(kube: Kube, kind: str, namespace: str, name: str, uid: str,
                        propagation: str | None = None) -> bool:
    live = await kube.get(kind, namespace, name)
    refs = (live or {}).get("metadata", {}).get("ownerReferences") or []
    if live is None or not any(r.get("uid") == uid for r in refs):
        return False  # not ours: never delete what someone else made
    return await kube.delete(kind, namespace, name, propagation=propagation)


async def _sync_policy(store: Store, url: str, service_id: str, ref: str, namespace: str,
                       policy_specs: Any) -> dict[str, Any]:
    """Write the referenced policy's spec to this service's Redis; the result goes to status.policy."""
    spec = _first(policy_specs, (namespace, ref))
    if spec is None:
        await store.clear_spec(url, service_id)
        return {"name": ref, "applied": False,
                "message": f"SpeculationPolicy {ref!r} not found in {namespace}; the controller uses its defaults"}
    try:
        parse_spec(spec)
    except ValueError as exc:  # the last valid spec stays in force
        return {"name": ref, "applied": False, "message": str(exc)}
    await store.write_spec(url, service_id, spec)
    return {"name": ref, "applied": True, "message": f"{ref} applied"}


@kopf.on.delete(GROUP, VERSION, SERVICES)
async def forget_service(*, spec: Any, name: str, namespace: str | None, meta: Any, memo: Any, runtime: Any,
                         logger: Log, **_: Any) -> None:
    """Stop the pods first (foreground), then delete the Redis keys: a running controller or target
    would write them again. Services and the ConfigMap go with their owner reference."""
    namespace = _namespaced(namespace)
    settings, kube, store = _parts(memo)
    waited = runtime.total_seconds()
    uid = str(meta["uid"])
    try:
        for role in ("controller", "target", "draft"):
            await _delete_owned(kube, "Deployment", namespace, child_name(name, role), uid, propagation="Foreground")
        # Foreground: a Deployment stays (terminating) until its pods are gone; wait for that.
        running = [role for role in ("controller", "target", "draft")
                   if await kube.get("Deployment", namespace, child_name(name, role)) is not None]
    except KubeError as exc:
        raise _transient(exc, "deleting the Deployments") from None
    if running and waited < CLEANUP_PATIENCE_S:
        raise kopf.TemporaryError(f"waiting for the {', '.join(running)} pods to stop", delay=2)
    url = (spec.get("redis") or {}).get("url") or settings.redis_url
    try:
        n = await store.forget(url, redis_service(namespace, name))
        if not (spec.get("redis") or {}).get("url") and settings.redis_password_file:
            await store.drop_user(url, redis_service(namespace, name))
    except RedisError as exc:
        if waited < CLEANUP_PATIENCE_S:
            raise kopf.TemporaryError(f"deleting Redis keys: {exc}", delay=5) from None
        logger.warning(f"Redis keys of {name} left behind (Redis unreachable for {waited:.0f}s): {exc}")
        return
    logger.info(f"deleted {n} Redis keys of {name}")


@kopf.daemon(GROUP, VERSION, SERVICES, cancellation_timeout=5.0, backoff=5.0)
async def report_service(*, stopped: Any, name: str, namespace: str | None, body: Any, memo: Any,
                         policy_specs: Any = None, logger: Log, **_: Any) -> None:
    """Every `status_interval_s`: Deployments' readiness + the controller's decision -> status; every
    `converge_interval_s` (or when the spec moved on) converge again first: a deleted child comes back,
    a late policy is written."""
    namespace = _namespaced(namespace)
    settings = memo.settings
    last_converge = -float("inf")
    while not stopped:
        now = time.monotonic()
        due = now - last_converge >= settings.converge_interval_s
        try:
            if await _refresh_service(memo, name, namespace, body, policy_specs, converge=due):
                last_converge = now
        except KubeError as exc:  # the next tick tries again
            logger.warning(f"status refresh failed: {exc}")
        await stopped.wait(settings.status_interval_s)


async def _refresh_service(memo: Any, name: str, namespace: str, body: Any, policy_specs: Any,
                           converge: bool) -> bool:
    """Write the status; returns whether it converged the objects on the way."""
    settings, kube, store = _parts(memo)
    try:
        svc = _admitted(dict(body["spec"]), settings)
    except ValueError:
        return False  # the reconcile handler reports an invalid spec
    if body.get("metadata", {}).get("deletionTimestamp"):
        return False  # being deleted: converging would bring back what the delete handler removes
    current = dict(body.get("status") or {})
    generation = int(body["metadata"].get("generation") or 0)
    observed, apply_error, policy = current.get("observedGeneration"), None, current.get("policy") or {}
    converged = False
    if converge or observed != generation:
        try:
            _, policy = await _converge(memo, name, namespace, str(body["metadata"]["uid"]), svc, policy_specs)
            observed, converged = generation, True
        except KubeError as exc:
            apply_error = str(exc)
    deployments = {role: await kube.get("Deployment", namespace, child_name(name, role))
                   for role in ("target", "draft", "controller")}
    decision, redis_error = None, None
    try:
        decision = await store.decision(redis_url(svc, settings), redis_service(namespace, name))
    except RedisError as exc:
        redis_error = f"Redis unreachable: {exc}"
    desired = {"target": svc.target.replicas, "draft": svc.draft.replicas if svc.draft else 0, "controller": 1}
    new = st.service_status(
        generation=generation, observed_generation=observed, apply_error=apply_error, deployments=deployments,
        desired=desired, with_draft=svc.draft is not None, decision=decision, redis_error=redis_error,
        policy=policy, previous=list(current.get("conditions") or []), now=time.time(),
        stale_s=settings.telemetry_stale_s)
    new["observedGeneration"] = observed
    if not st.same(new, {k: current.get(k) for k in new}):
        await kube.patch("SpeculativeService", namespace, name, {"status": new}, subresource="status")
    return converged


# -- SpeculationPolicy

@kopf.on.resume(GROUP, VERSION, POLICIES)
@kopf.on.create(GROUP, VERSION, POLICIES)
@kopf.on.update(GROUP, VERSION, POLICIES)
async def apply_policy(*, spec: Any, name: str, namespace: str | None, meta: Any, status: Any, memo: Any,
                       policy_users: Any = None, logger: Log, **_: Any) -> None:
    """Validate, then write the spec to every using service's Redis: the controller applies it, no restarts."""
    namespace = _namespaced(namespace)
    _settings, kube, store = _parts(memo)
    generation, now = int(meta.get("generation") or 0), time.time()
    previous = list((status or {}).get("conditions") or [])
    body = copy.deepcopy(dict(spec))
    try:
        parse_spec(body)
    except ValueError as exc:
        await _policy_status(kube, namespace, name, {"observedGeneration": generation, "conditions": [
            st.condition("Valid", False, "InvalidSpec", str(exc), generation, previous, now)]}, logger)
        raise kopf.PermanentError(str(exc)) from None
    users = sorted(policy_users.get((namespace, name), []))
    try:
        written = [svc for svc, sid, url in users if await store.write_spec(url, sid, body)]
    except RedisError as exc:
        raise kopf.TemporaryError(f"writing the policy spec to Redis: {exc}", delay=2) from None
    await _policy_status(kube, namespace, name, {
        "observedGeneration": generation, "services": [svc for svc, _, _ in users],
        "conditions": [st.condition("Valid", True, "Accepted", "spec is valid", generation, previous, now),
                       st.condition("Applied", bool(users), "Written" if users else "Unused",
                                    f"in force for {len(users)} service(s)" if users
                                    else "no SpeculativeService references this policy", generation, previous, now)],
    }, logger)
    logger.info(f"policy generation {generation} written for {written or 'no changed'} service(s)")


@kopf.on.delete(GROUP, VERSION, POLICIES)
async def withdraw_policy(*, name: str, namespace: str | None, memo: Any, policy_users: Any = None,
                          runtime: Any, logger: Log, **_: Any) -> None:
    """Services that used it go back to the controller's built-in default spec."""
    namespace = _namespaced(namespace)
    store = memo.store
    try:
        for _svc, sid, url in policy_users.get((namespace, name), []):
            await store.clear_spec(url, sid)
    except RedisError as exc:
        if runtime.total_seconds() < CLEANUP_PATIENCE_S:
            raise kopf.TemporaryError(f"clearing policy specs: {exc}", delay=5) from None
        logger.warning(f"policy specs of {name} left in Redis (unreachable): {exc}")


@kopf.daemon(GROUP, VERSION, POLICIES, cancellation_timeout=5.0, backoff=5.0)
async def report_policy(*, stopped: Any, name: str, namespace: str | None, body: Any, memo: Any,
                        policy_users: Any = None, logger: Log, **_: Any) -> None:
    """The newest controller decision among the services using this policy -> status (version, k)."""
    namespace = _namespaced(namespace)
    while not stopped:
        users = sorted(policy_users.get((namespace, name), []))
        decisions = []
        for _svc, sid, url in users:
            try:
                decision = await memo.store.decision(url, sid)
            except RedisError:
                decision = None
            if decision is not None:
                decisions.append(decision)
        new = st.policy_status(services=[svc for svc, _, _ in users], decisions=decisions)
        current = dict(body.get("status") or {})
        if any(current.get(k) != v for k, v in new.items()):
            await _policy_status(memo.kube, namespace, name, new, logger)
        await stopped.wait(memo.settings.status_interval_s)


async def _policy_status(kube: Kube, namespace: str, name: str, status: dict[str, Any], logger: Log) -> None:
    await _status_quietly(kube, namespace, name, status, logger, kind="SpeculationPolicy")


async def _status_quietly(kube: Kube, namespace: str, name: str, status: dict[str, Any], logger: Log,
                          kind: str = "SpeculativeService") -> None:
    try:
        await kube.patch(kind, namespace, name, {"status": status}, subresource="status")
    except KubeError as exc:  # status is advisory; the next tick or retry writes it
        logger.warning(f"could not write status: {exc}")

