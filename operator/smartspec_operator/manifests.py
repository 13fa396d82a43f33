"""Pure manifest builders: a SpeculativeService -> its ConfigMap, Deployments and Services (plain dicts)."""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from smartspec.policy.limits import MAX_K_LIMIT
from smartspec.tls import CA, CERT, KEY, issue
from smartspec_operator.settings import OperatorSettings
from smartspec_operator.spec import API_VERSION, ModelRef, ServiceSpec
from smartspec_operator.store import redis_user

MANAGED_BY = "smartspec-operator"
SERVICE_LABEL = "smartspec.io/service"
CONFIG_HASH = "smartspec.io/config-hash"
ROLES = ("target", "draft", "controller")
UID = 10001  # the images' non-root user
MODELS_ROOT = "/models"
TARGET_HTTP, TARGET_GRPC, DRAFT_GRPC, CONTROLLER_HTTP, CONTROLLER_OTLP = 8000, 50051, 50061, 8090, 4317
TARGET_GRACE_S = 120  # SIGTERM drains running requests for up to this long (minus a margin)
# Secrets reach the pods as files (never env values): the generated peer token (target -> draft) and the
# API keys. The ConfigMap holds only these paths.
AUTH_DIR, API_KEYS_DIR = "/etc/smartspec/auth", "/etc/smartspec/api"
PEER_TOKEN, API_KEYS, REDIS_PASSWORD = "peer-token", "api-keys", "redis-password"  # Secret keys = file names
REDIS_DIR = "/etc/smartspec/redis"
# Mutual TLS between the parts: a kubernetes.io/tls Secret (the operator's own or a cert-manager one), whole.
TLS, TLS_DIR = "tls", "/etc/smartspec/tls"


@dataclass(frozen=True)
class Owner:
    """The SpeculativeService being reconciled (what the children point back to)."""

    name: str
    namespace: str
    uid: str


def child_name(owner_name: str, role: str) -> str:
    return f"{owner_name}-{role}"


def config_name(owner_name: str) -> str:
    return f"{owner_name}-config"


def auth_secret_name(owner_name: str) -> str:
    return f"{owner_name}-auth"


def auth_secret(owner: Owner, peer_token: str, api_key: str, redis_password: str) -> dict[str, Any]:
    """The service's own Secret: the peer token, a generated API key and its Redis user's password. Created
    once (`Kube.create_once`), never rewritten: rotating means deleting it (and restarting the pods)."""
    values = {PEER_TOKEN: peer_token, API_KEYS: api_key, REDIS_PASSWORD: redis_password}
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _meta(owner, auth_secret_name(owner.name), None),
            "data": {k: base64.b64encode((v + "\n").encode()).decode() for k, v in values.items()}}


def tls_secret_name(owner_name: str) -> str:
    return f"{owner_name}-tls"


def tls_names(owner: Owner) -> list[str]:
    """The names a target dials the draft and the controller by (short, namespaced, and fully qualified)."""
    out = []
    for role in ("draft", "controller"):
        svc = child_name(owner.name, role)
        out += [svc, f"{svc}.{owner.namespace}", f"{svc}.{owner.namespace}.svc",
                f"{svc}.{owner.namespace}.svc.cluster.local"]
    return out


def tls_secret(owner: Owner) -> dict[str, Any]:
    """The service's own trust domain when the spec names no Secret: a fresh CA (its key discarded, so it signs
    nothing else) and one certificate for every part, in the kubernetes.io/tls shape cert-manager also writes.
    Created once; rotating means deleting it (the operator issues a new one) and restarting the targets."""
    files = issue(tls_names(owner), days=3650)
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": _meta(owner, tls_secret_name(owner.name), None),
            "data": {k: base64.b64encode(v).decode() for k, v in files.items()}}


def tls_secret_in_use(owner_name: str, spec: ServiceSpec) -> str | None:
    if not spec.tls.enabled:
        return None
    return spec.tls.secret_name or tls_secret_name(owner_name)


_SECRET_DIRS = {PEER_TOKEN: AUTH_DIR, API_KEYS: API_KEYS_DIR, REDIS_PASSWORD: REDIS_DIR, TLS: TLS_DIR}
_TLS_FILES = (CERT, KEY, CA)


def _secret_volume(name: str, secret: str, key: str) -> dict[str, Any]:
    # 0440 with the pod's fsGroup: readable by the non-root user, by no one else.
    keys = _TLS_FILES if key == TLS else (key,)
    return {"name": name, "secret": {"secretName": secret, "items": [{"key": k, "path": k} for k in keys],
                                     "defaultMode": 0o440}}


def labels(owner_name: str, role: str | None = None) -> dict[str, str]:
    out = {"app.kubernetes.io/name": "smartspec", "app.kubernetes.io/instance": owner_name,
           "app.kubernetes.io/managed-by": MANAGED_BY, SERVICE_LABEL: owner_name}
    if role:
        out["app.kubernetes.io/component"] = role
    return out


def selector(owner_name: str, role: str) -> dict[str, str]:
    # Immutable once a Deployment exists: never add labels here.
    return {SERVICE_LABEL: owner_name, "app.kubernetes.io/component": role}


def model_path(model: ModelRef) -> str:
    """Where the pod sees the weights: pvc://CLAIM/PATH is mounted at /models/CLAIM; others pass through."""
    loc = model.location
    if loc.startswith("pvc://"):
        claim, _, sub = loc.removeprefix("pvc://").partition("/")
        return f"{MODELS_ROOT}/{claim}" + (f"/{sub.strip('/')}" if sub.strip("/") else "")
    return loc


def _claims(*models: ModelRef | None) -> list[str]:
    out: list[str] = []
    for m in models:
        if m is not None and m.location.startswith("pvc://"):
            claim = m.location.removeprefix("pvc://").partition("/")[0]
            if claim not in out:
                out.append(claim)
    return out


def redis_service(namespace: str, name: str) -> str:
    """The service's id in Redis keys (smartspec:{id}:…): namespaced, so one Redis serves all namespaces."""
    return f"{namespace}.{name}"


def redis_url(spec: ServiceSpec, settings: OperatorSettings) -> str:
    return spec.redis.url or settings.redis_url


def redis_acl(spec: ServiceSpec, settings: OperatorSettings) -> bool:
    """Whether the service's pods log in as its own Redis user: on the operator's default Redis, when the
    operator holds its admin password (a service naming its own Redis brings its own access)."""
    return spec.redis.url is None and settings.redis_password_file is not None


def pod_redis_url(spec: ServiceSpec, settings: OperatorSettings, service_id: str) -> str:
    """The URL the pods get: with the service's Redis user as the user name, never a password."""
    url = redis_url(spec, settings)
    if not redis_acl(spec, settings):
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{redis_user(service_id)}@{rest.rpartition('@')[2]}"


def config_data(owner: Owner, spec: ServiceSpec, settings: OperatorSettings) -> dict[str, str]:
    """Environment for all three roles in one ConfigMap: each role's settings read only their own prefix."""
    t, d, name = spec.target, spec.draft, owner.name
    service_id = redis_service(owner.namespace, owner.name)
    data = {
        "SMARTSPEC_TARGET_MODEL": model_path(t.model),
        "SMARTSPEC_TARGET_SERVED_MODEL_NAME": t.model.name,
        "SMARTSPEC_TARGET_DTYPE": t.dtype,
        "SMARTSPEC_TARGET_GRAPHS": t.graphs,
        "SMARTSPEC_TARGET_HTTP_PORT": str(TARGET_HTTP),
        "SMARTSPEC_TARGET_GRPC_PORT": str(TARGET_GRPC),
        "SMARTSPEC_TARGET_MAX_BATCH_SIZE": str(t.max_batch_size),
        "SMARTSPEC_TARGET_MAX_LEN": str(t.max_len),
        "SMARTSPEC_TARGET_SERVICE": service_id,
        # K's capacity: the SpeculationPolicy bounds k (up to the CRD's bound) without restarting pods.
        "SMARTSPEC_TARGET_MAX_K": str(MAX_K_LIMIT),
        "SMARTSPEC_TARGET_REDIS_URL": pod_redis_url(spec, settings, service_id),
        "SMARTSPEC_TARGET_OTLP_ENDPOINT": spec.telemetry.otlp_endpoint
        or f"{child_name(name, 'controller')}:{CONTROLLER_OTLP}",
        "SMARTSPEC_CONTROLLER_OTLP_TOKEN_FILE": f"{AUTH_DIR}/{PEER_TOKEN}",
        "SMARTSPEC_TARGET_DRAIN_TIMEOUT_S": str(TARGET_GRACE_S - 10),
        "SMARTSPEC_TARGET_API_KEY_FILE": f"{API_KEYS_DIR}/{API_KEYS}",
        "SMARTSPEC_CONTROLLER_SERVICE": service_id,
        "SMARTSPEC_CONTROLLER_REDIS_URL": pod_redis_url(spec, settings, service_id),
        "SMARTSPEC_CONTROLLER_HTTP_PORT": str(CONTROLLER_HTTP),
        "SMARTSPEC_CONTROLLER_OTLP_PORT": str(CONTROLLER_OTLP),
        "HF_HOME": "/tmp/hf",  # the root filesystem is read-only
    }
    if redis_acl(spec, settings):
        data["SMARTSPEC_TARGET_REDIS_PASSWORD_FILE"] = data["SMARTSPEC_CONTROLLER_REDIS_PASSWORD_FILE"] = \
            f"{REDIS_DIR}/{REDIS_PASSWORD}"
    tls = spec.tls.enabled
    if tls:
        data["SMARTSPEC_CONTROLLER_TLS_DIR"] = TLS_DIR
    if not spec.telemetry.otlp_endpoint:  # the peer token goes to this service's own controller, to no one else
        data["SMARTSPEC_TARGET_OTLP_TOKEN_FILE"] = f"{AUTH_DIR}/{PEER_TOKEN}"
        if tls:
            data["SMARTSPEC_TARGET_OTLP_TLS_DIR"] = TLS_DIR
    if d is not None:
        data |= {
            "SMARTSPEC_TARGET_DRAFT_ADDRESS": f"{child_name(name, 'draft')}:{DRAFT_GRPC}",
            "SMARTSPEC_TARGET_DRAFT_TOKEN_FILE": f"{AUTH_DIR}/{PEER_TOKEN}",
            "SMARTSPEC_DRAFT_AUTH_TOKEN_FILE": f"{AUTH_DIR}/{PEER_TOKEN}",
            "SMARTSPEC_DRAFT_METHOD": d.method,
            "SMARTSPEC_DRAFT_DTYPE": d.dtype,
            "SMARTSPEC_DRAFT_GRAPHS": d.graphs,
            "SMARTSPEC_DRAFT_PORT": str(DRAFT_GRPC),
            "SMARTSPEC_DRAFT_MAX_K": str(MAX_K_LIMIT),
            # Every target slot may hold a draft sequence; streams from all targets can land on one draft.
            "SMARTSPEC_DRAFT_MAX_SEQUENCES": str(t.max_batch_size * max(t.replicas, 1)),
            "SMARTSPEC_DRAFT_MAX_LEN": str(t.max_len),
        }
        if tls:
            data["SMARTSPEC_TARGET_TLS_DIR"] = data["SMARTSPEC_DRAFT_TLS_DIR"] = TLS_DIR
        if d.model is not None:
            data["SMARTSPEC_DRAFT_MODEL"] = model_path(d.model)
        if d.method == "ngram":  # the n-gram proposer fingerprints the target's tokenizer
            data["SMARTSPEC_DRAFT_TOKENIZER"] = model_path(t.model)
    return data


def config_hash(data: dict[str, str], role: str) -> str:
    """Hash of what one role reads (its own prefix and the shared keys): a change rolls that role's pods only."""
    prefix = f"SMARTSPEC_{role.upper()}_"
    mine = {k: v for k, v in data.items() if not k.startswith("SMARTSPEC_") or k.startswith(prefix)}
    return hashlib.sha256(json.dumps(mine, sort_keys=True).encode()).hexdigest()[:16]


def owner_reference(owner: Owner) -> dict[str, Any]:
    # controller + blockOwnerDeletion: the garbage collector deletes children with the service.
    return {"apiVersion": API_VERSION, "kind": "SpeculativeService", "name": owner.name, "uid": owner.uid,
            "controller": True, "blockOwnerDeletion": True}


def _meta(owner: Owner, name: str, role: str | None) -> dict[str, Any]:
    return {"name": name, "namespace": owner.namespace, "labels": labels(owner.name, role),
            "ownerReferences": [owner_reference(owner)]}


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "privileged": False,
            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}


def _resources(r: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if r.requests:
        out["requests"] = dict(r.requests)
    if r.limits:
        out["limits"] = dict(r.limits)
    return out


def _http_probe(path: str, port: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": port}, "periodSeconds": period, "failureThreshold": failures,
            "timeoutSeconds": 3}


def _grpc_probe(port: int, period: int, failures: int) -> dict[str, Any]:
    return {"grpc": {"port": port}, "periodSeconds": period, "failureThreshold": failures, "timeoutSeconds": 3}


def _deployment(owner: Owner, role: str, *, replicas: int, container: dict[str, Any], claims: list[str],
                cfg_hash: str, pod_extra: dict[str, Any], strategy: dict[str, Any],
                pull_secrets: list[str], secrets: Sequence[tuple[str, str, str]] = ()) -> dict[str, Any]:
    name = child_name(owner.name, role)
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    for vol, secret, key in secrets:  # (volume, Secret, key): mounted read-only in its own directory
        volumes.append(_secret_volume(vol, secret, key))
        mounts.append({"name": vol, "mountPath": _SECRET_DIRS[key], "readOnly": True})
    for i, claim in enumerate(claims):
        volumes.append({"name": f"model-{i}", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": f"model-{i}", "mountPath": f"{MODELS_ROOT}/{claim}", "readOnly": True})
    container = {
        "name": role, "imagePullPolicy": container.pop("imagePullPolicy"),
        "envFrom": [{"configMapRef": {"name": config_name(owner.name)}}],
        "volumeMounts": mounts, "securityContext": _container_security(), **container,
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,  # the data plane never talks to the API server
        "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container], "volumes": volumes, **pod_extra,
    }
    if pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in pull_secrets]
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(owner, name, role),
        "spec": {
            "replicas": replicas, "strategy": strategy,
            "selector": {"matchLabels": selector(owner.name, role)},
            "template": {"metadata": {"labels": labels(owner.name, role), "annotations": {CONFIG_HASH: cfg_hash}},
                         "spec": pod_spec},
        },
    }


def _service(owner: Owner, role: str, ports: list[tuple[str, int]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(owner, child_name(owner.name, role), role),
        "spec": {"type": "ClusterIP", "selector": selector(owner.name, role),
                 "ports": [{"name": n, "port": p, "targetPort": n, "protocol": "TCP"} for n, p in ports]},
    }


def _env(items: list[Any]) -> list[dict[str, Any]]:
    return [e.model_dump(by_alias=True, exclude_none=True) for e in items]


def build(owner: Owner, spec: ServiceSpec, settings: OperatorSettings) -> list[dict[str, Any]]:
    """Every object the service owns, in apply order (ConfigMap first: the pods read it at start)."""
    data = config_data(owner, spec, settings)
    pull = settings.image_pull_policy
    replica_env: dict[str, Any] = {"name": "SMARTSPEC_TARGET_REPLICA",
                                   "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    t, d = spec.target, spec.draft
    objs: list[dict[str, Any]] = [{
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(owner, config_name(owner.name), None),
        "data": data,
    }]
    target = {
        "image": t.image or settings.target_image, "imagePullPolicy": pull,
        "env": [replica_env, *_env(t.env)],
        "ports": [{"name": "http", "containerPort": TARGET_HTTP}, {"name": "grpc", "containerPort": TARGET_GRPC}],
        "resources": _resources(t.resources),
        # Loading weights can take minutes: the startup probe holds liveness off for up to 10 min.
        "startupProbe": _http_probe("/health", "http", 5, 120),
        "readinessProbe": _http_probe("/health", "http", 5, 2),
        "livenessProbe": _http_probe("/health", "http", 10, 6),
    }
    own = auth_secret_name(owner.name)
    target_secrets = [("api-keys", spec.auth.api_key_secret or own, API_KEYS), ("peer-token", own, PEER_TOKEN)]
    redis_secret = [("redis-password", own, REDIS_PASSWORD)] if redis_acl(spec, settings) else []
    target_secrets += redis_secret
    in_use = tls_secret_in_use(owner.name, spec)
    tls_mount = [("tls", in_use, TLS)] if in_use else []
    target_secrets += tls_mount
    objs.append(_deployment(
        owner, "target", replicas=t.replicas, container=target,
        claims=_claims(t.model), cfg_hash=config_hash(data, "target"),
        pod_extra=_placement(t) | {"terminationGracePeriodSeconds": TARGET_GRACE_S},
        strategy={"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        pull_secrets=settings.pull_secrets(), secrets=target_secrets))
    objs.append(_service(owner, "target", [("http", TARGET_HTTP), ("grpc", TARGET_GRPC)]))
    if d is not None:
        draft = {
            "image": d.image or settings.draft_image, "imagePullPolicy": pull, "env": _env(d.env),
            "ports": [{"name": "grpc", "containerPort": DRAFT_GRPC}],
            "resources": _resources(d.resources),
            "startupProbe": _grpc_probe(DRAFT_GRPC, 5, 120),
            "readinessProbe": _grpc_probe(DRAFT_GRPC, 5, 2),
            "livenessProbe": _grpc_probe(DRAFT_GRPC, 10, 6),
        }
        objs.append(_deployment(
            owner, "draft", replicas=d.replicas, container=draft,
            claims=_claims(d.model, t.model if d.method == "ngram" else None), cfg_hash=config_hash(data, "draft"),
            pod_extra=_placement(d), strategy={"type": "RollingUpdate"}, pull_secrets=settings.pull_secrets(),
            secrets=[("peer-token", own, PEER_TOKEN), *tls_mount]))
        objs.append(_service(owner, "draft", [("grpc", DRAFT_GRPC)]))
    c = spec.controller
    controller = {
        "image": c.image or settings.controller_image, "imagePullPolicy": pull, "env": [],
        "ports": [{"name": "http", "containerPort": CONTROLLER_HTTP},
                  {"name": "otlp", "containerPort": CONTROLLER_OTLP}],
        "resources": _resources(c.resources),
        # /health is 503 while Redis is down; restarting would not help, so liveness only asks for /metrics.
        "readinessProbe": _http_probe("/health", "http", 5, 2),
        "livenessProbe": _http_probe("/metrics", "http", 10, 6),
    }
    objs.append(_deployment(owner, "controller", replicas=1, container=controller, claims=[],
                            cfg_hash=config_hash(data, "controller"),
                            pod_extra={}, strategy={"type": "Recreate"},  # one decider at a time
                            pull_secrets=settings.pull_secrets(),
                            secrets=[("peer-token", own, PEER_TOKEN), *redis_secret, *tls_mount]))
    objs.append(_service(owner, "controller", [("http", CONTROLLER_HTTP), ("otlp", CONTROLLER_OTLP)]))
    if settings.network_policies:
        if d is not None:
            objs.append(_only_own_targets(owner, "draft", DRAFT_GRPC))
        objs.append(_only_own_targets(owner, "controller", CONTROLLER_OTLP))
    return objs


def _only_own_targets(owner: Owner, role: str, port: int) -> dict[str, Any]:
    """A NetworkPolicy: `role`'s pods accept `port` only from this service's target pods (ingress on other
    ports of these pods is not restricted: the controller's HTTP port serves probes and scrapers)."""
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": _meta(owner, child_name(owner.name, role), role),
        "spec": {"podSelector": {"matchLabels": selector(owner.name, role)}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": selector(owner.name, "target")}}],
                              "ports": [{"protocol": "TCP", "port": port}]},
                             *_other_ports(role)]},
    }


def _other_ports(role: str) -> list[dict[str, Any]]:
    # The controller's HTTP (health, metrics, read-only policy and status) stays reachable; the draft has no other.
    return [{"ports": [{"protocol": "TCP", "port": CONTROLLER_HTTP}]}] if role == "controller" else []


def _placement(pod: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if pod.node_selector:
        out["nodeSelector"] = dict(pod.node_selector)
    if pod.tolerations:
        out["tolerations"] = list(pod.tolerations)
    return out


def owned_keys(owner_name: str, with_draft: bool, network_policies: bool = True) -> list[tuple[str, str]]:
    """(kind, name) of every object `build` returns for this shape of spec."""
    out = [("ConfigMap", config_name(owner_name))]
    for role in ROLES:
        if role != "draft" or with_draft:
            out += [("Deployment", child_name(owner_name, role)), ("Service", child_name(owner_name, role))]
            if network_policies and role != "target":
                out.append(("NetworkPolicy", child_name(owner_name, role)))
    return out
