"""The Helm chart helm/smartspec, with the real `helm` binary (scripts/setup.sh installs it into the venv).

Every value set (the defaults and each ci/*-values.yaml) is linted with `helm lint --strict` and rendered
with `helm template --include-crds`. Built-in kinds and the CRDs are validated with kubernetes-validate
(strict: unknown fields fail) against Kubernetes 1.34; our SpeculativeService/SpeculationPolicy objects go
through the CRD admission model (tests/crd_admission.py); kubernetes-validate has no schema for the
prometheus-operator ServiceMonitor, so its structure is checked here by hand.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes_validate import utils as kv

from tests.crd_admission import Invalid, admit, schema

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "smartspec"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
VALUE_SETS = [None, *CI_VALUES]
VALUE_IDS = ["default", *(p.name.removesuffix("-values.yaml") for p in CI_VALUES)]
K8S_VERSION = "1.34.0"
NAMESPACE = "smartspec-system"
RELEASE = "smartspec"

# The operator's API access (its contract): exact verbs per (group, resource), nothing more.
NAMESPACED_RULES = {
    ("smartspec.io", "speculativeservices"): {"get", "list", "watch", "patch", "update"},
    ("smartspec.io", "speculationpolicies"): {"get", "list", "watch", "patch", "update"},
    ("smartspec.io", "speculativeservices/status"): {"get", "patch", "update"},
    ("smartspec.io", "speculativeservices/finalizers"): {"update"},
    ("smartspec.io", "speculationpolicies/status"): {"get", "patch", "update"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "services"): {"get", "create", "patch", "delete"},
    ("", "configmaps"): {"get", "create", "patch", "delete"},
    ("", "secrets"): {"get", "create"},  # each service's generated `<name>-auth` and `<name>-tls`; never listed
    ("networking.k8s.io", "networkpolicies"): {"get", "create", "patch", "delete"},
    ("", "events"): {"create", "patch"},
}
CLUSTER_RULES = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "namespaces"): {"get", "list", "watch"},
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod", "ReplicaSet"}


# ---------------------------------------------------------------------------------------------- helm


def helm_binary() -> str:
    beside = Path(sys.executable).parent / "helm"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("helm")
    if found is None:
        pytest.fail("helm not found next to the venv's python or on PATH: run scripts/setup.sh")
    return found


@functools.cache
def helm_env() -> dict[str, str]:
    home = Path(tempfile.mkdtemp(prefix="smartspec-helm-"))
    atexit.register(shutil.rmtree, home, True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HELM_")}
    for name in ("CACHE", "CONFIG", "DATA"):
        (home / name.lower()).mkdir()
        env[f"HELM_{name}_HOME"] = str(home / name.lower())
    env["KUBECONFIG"] = str(home / "no-kubeconfig")
    return env


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm_binary(), *args], capture_output=True, text=True, env=helm_env(), timeout=60)


def value_args(values: Path | None, sets: tuple[str, ...] = ()) -> list[str]:
    args = ["-f", str(values)] if values is not None else []
    for s in sets:
        args += ["--set", s]
    return args


@functools.cache
def render(values: Path | None = None, sets: tuple[str, ...] = ()) -> tuple[dict[str, Any], ...]:
    out = helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--include-crds",
               "--kube-version", K8S_VERSION, *value_args(values, sets))
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    return found


def ci(name: str) -> Path:
    return CHART / "ci" / f"{name}-values.yaml"


# ------------------------------------------------------------------------------------- lint and render


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_helm_lint_strict(values: Path | None) -> None:
    out = helm("lint", "--strict", str(CHART), *value_args(values))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


def test_ci_values_exist() -> None:
    assert {p.name for p in CI_VALUES} >= {"gpu-values.yaml", "external-redis-values.yaml", "ngram-values.yaml"}


def check_service_monitor(sm: dict[str, Any]) -> None:
    """kubernetes-validate has no monitoring.coreos.com schemas: the fields the chart uses, by hand."""
    label = {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"}
    relabel = {"type": "object", "additionalProperties": False, "properties": {
        "sourceLabels": {"type": "array", "items": label, "minItems": 1},
        "targetLabel": {"type": "string", "minLength": 1},
        "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "labelmap", "LabelMap",
                            "labeldrop", "LabelDrop", "labelkeep", "LabelKeep"]},
        "regex": {"type": "string"}, "replacement": {"type": "string"}, "separator": {"type": "string"},
    }}
    endpoint = {"type": "object", "additionalProperties": False, "required": ["port"], "properties": {
        "port": {"type": "string", "minLength": 1},
        "path": {"type": "string", "pattern": "^/"},
        "scheme": {"enum": ["http", "https"]},
        "interval": {"type": "string", "pattern": "^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"},
        "relabelings": {"type": "array", "items": relabel},
    }}
    sm_schema = {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {"type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
                 "properties": {
                     "selector": {"type": "object", "additionalProperties": False,
                                  "properties": {"matchLabels": {"type": "object",
                                                                 "additionalProperties": {"type": "string"}}}},
                     "namespaceSelector": {"type": "object", "additionalProperties": False,
                                           "properties": {"any": {"type": "boolean"},
                                                          "matchNames": {"type": "array"}}},
                     "endpoints": {"type": "array", "minItems": 1, "items": endpoint},
                 }},
    }}
    jsonschema.Draft7Validator(sm_schema).validate(sm)
    spec = sm["spec"]
    assert spec["selector"] == {"matchLabels": {"app.kubernetes.io/managed-by": "smartspec-operator"}}
    assert spec["namespaceSelector"] == {"any": True}
    (endpoint_,) = spec["endpoints"]
    assert endpoint_["port"] == "http" and endpoint_["path"] == "/metrics"
    relabels = {r["targetLabel"]: r for r in endpoint_["relabelings"]}
    assert relabels["smartspec_service"]["sourceLabels"] == ["__meta_kubernetes_service_label_smartspec_io_service"]
    assert relabels["namespace"]["sourceLabels"] == ["__meta_kubernetes_namespace"]
    assert relabels["pod"]["sourceLabels"] == ["__meta_kubernetes_pod_name"]
    assert all(r.get("action", "replace").lower() == "replace" for r in relabels.values())


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_rendered_manifests_validate(values: Path | None) -> None:
    docs = render(values)
    kinds = {d["kind"] for d in docs}
    assert {"CustomResourceDefinition", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Deployment",
            "SpeculationPolicy"} <= kinds
    assert len(of_kind(docs, "CustomResourceDefinition")) == 2
    for doc in docs:
        what = f"{doc['kind']}/{doc['metadata']['name']}"
        if doc["apiVersion"].startswith("smartspec.io/"):
            admit(doc)  # Invalid fails the test with the reasons
        elif doc["kind"] == "ServiceMonitor":
            check_service_monitor(doc)
        else:  # built-in kinds and the CRDs: a missing schema is a failure, not a skip
            try:
                kv.validate(doc, K8S_VERSION, strict=True)
            except kv.ValidationError as e:
                pytest.fail(f"{what}: {'.'.join(map(str, e.path))}: {e.message}")
        if doc["kind"] not in {"CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"}:
            assert doc["metadata"].get("namespace"), f"{what} has no namespace"


def test_kubernetes_validate_is_strict() -> None:
    """The validator really refuses an unknown field and a wrong type (so a pass above means something)."""
    deployment = one(render(), "Deployment", f"{RELEASE}-operator")
    kv.validate(deployment, K8S_VERSION, strict=True)
    typo = json.loads(json.dumps(deployment))
    typo["spec"]["replicaz"] = 1
    with pytest.raises(kv.ValidationError):
        kv.validate(typo, K8S_VERSION, strict=True)
    wrong = json.loads(json.dumps(deployment))
    wrong["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eighty"
    with pytest.raises(kv.ValidationError):
        kv.validate(wrong, K8S_VERSION, strict=True)
    with pytest.raises(kv.SchemaNotFoundError):  # custom kinds are not checked by it (hence admit / by hand)
        kv.validate(one(render(), "SpeculationPolicy", "default"), K8S_VERSION, strict=True)


def test_service_monitor_matches_the_operators_services() -> None:
    """The selector and relabelling use the labels the operator puts on every Service it creates."""
    from smartspec_operator.manifests import MANAGED_BY, SERVICE_LABEL

    (sm,) = of_kind(render(ci("ngram")), "ServiceMonitor")
    assert sm["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/managed-by": MANAGED_BY}
    meta = "__meta_kubernetes_service_label_" + "".join(ch if ch.isalnum() else "_" for ch in SERVICE_LABEL)
    relabel = next(r for r in sm["spec"]["endpoints"][0]["relabelings"] if r["targetLabel"] == "smartspec_service")
    assert relabel["sourceLabels"] == [meta]


def test_no_service_monitor_unless_enabled() -> None:
    assert not of_kind(render(), "ServiceMonitor")
    (sm,) = of_kind(render(ci("ngram")), "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["endpoints"][0]["interval"] == "30s"
    (sm,) = of_kind(render(None, ("serviceMonitor.enabled=true", "serviceMonitor.namespace=monitoring")),
                    "ServiceMonitor")
    assert sm["metadata"]["namespace"] == "monitoring"
    check_service_monitor(sm)


# ------------------------------------------------------------------------------------ operator contract


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def test_operator_deployment_contract() -> None:
    dep = one(render(), "Deployment", f"{RELEASE}-operator")
    assert dep["spec"]["replicas"] == 1
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == "smartspec/operator:0.1.0"
    assert "command" not in c and "args" not in c  # the image's entrypoint is `smartspec operator`
    assert c["ports"] == [{"name": "health", "containerPort": 8080, "protocol": "TCP"}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    env = env_of(c)
    assert env["SMARTSPEC_OPERATOR_REDIS_URL"] == f"redis://{RELEASE}-redis.{NAMESPACE}.svc:6379"
    assert env["SMARTSPEC_OPERATOR_TARGET_IMAGE"] == "smartspec/target:0.1.0"
    assert env["SMARTSPEC_OPERATOR_DRAFT_IMAGE"] == "smartspec/draft:0.1.0"
    assert env["SMARTSPEC_OPERATOR_CONTROLLER_IMAGE"] == "smartspec/controller:0.1.0"
    assert env["SMARTSPEC_OPERATOR_IMAGE_PULL_POLICY"] == "IfNotPresent"
    assert env["SMARTSPEC_OPERATOR_NAMESPACES"] == NAMESPACE  # its own namespace unless told otherwise
    assert env["SMARTSPEC_OPERATOR_ALLOWED_IMAGES"] == ""
    assert env["SMARTSPEC_OPERATOR_ALLOW_ENV_FROM_SECRETS"] == "false"
    assert float(env["SMARTSPEC_OPERATOR_STATUS_INTERVAL_S"]) == 10
    assert int(env["SMARTSPEC_OPERATOR_HEALTH_PORT"]) == 8080
    assert pod["serviceAccountName"] == f"{RELEASE}-operator"
    one(render(), "ServiceAccount", f"{RELEASE}-operator")
    # The in-chart Redis the URL names exists, on that port.
    svc = one(render(), "Service", f"{RELEASE}-redis")
    assert svc["spec"]["ports"][0]["port"] == 6379


def test_operator_settings_accept_the_rendered_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The env the chart sets is what OperatorSettings reads (names and value formats)."""
    from smartspec_operator.settings import OperatorSettings

    for values in VALUE_SETS:
        (c,) = one(render(values), "Deployment", f"{RELEASE}-operator")["spec"]["template"]["spec"]["containers"]
        for name in [k for k in os.environ if k.startswith("SMARTSPEC_OPERATOR_")]:
            monkeypatch.delenv(name)
        env = env_of(c)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = OperatorSettings()
        fields = {f"SMARTSPEC_OPERATOR_{n.upper()}" for n in OperatorSettings.model_fields}
        assert set(env) <= fields, set(env) - fields
        assert settings.redis_url == env["SMARTSPEC_OPERATOR_REDIS_URL"]
        assert settings.watched_namespaces() == [n for n in env["SMARTSPEC_OPERATOR_NAMESPACES"].split(",") if n]
        assert settings.health_port == 8080


def test_external_redis_and_watched_namespaces() -> None:
    docs = render(ci("external-redis"))
    assert not [d for d in docs if d["metadata"]["name"] == f"{RELEASE}-redis"]
    (c,) = one(docs, "Deployment", f"{RELEASE}-operator")["spec"]["template"]["spec"]["containers"]
    env = env_of(c)
    assert env["SMARTSPEC_OPERATOR_REDIS_URL"] == "rediss://redis.data.svc:6380/0"
    assert env["SMARTSPEC_OPERATOR_NAMESPACES"] == "llm-prod,llm-staging"
    assert {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in of_kind(docs, "SpeculationPolicy")} == {
        ("llm-prod", "default"), ("llm-staging", "default")}


def test_image_tags_and_pull_policy_overrides() -> None:
    docs = render(None, ("images.target.tag=t1", "images.controller.repository=mirror/ctl",
                         "images.pullPolicy=Always", "images.imagePullSecrets[0].name=regcred"))
    dep = one(docs, "Deployment", f"{RELEASE}-operator")
    env = env_of(dep["spec"]["template"]["spec"]["containers"][0])
    assert env["SMARTSPEC_OPERATOR_TARGET_IMAGE"] == "smartspec/target:t1"
    assert env["SMARTSPEC_OPERATOR_CONTROLLER_IMAGE"] == "mirror/ctl:0.1.0"
    assert env["SMARTSPEC_OPERATOR_IMAGE_PULL_POLICY"] == "Always"
    for d in of_kind(docs, "Deployment"):
        pod = d["spec"]["template"]["spec"]
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        assert all(c["imagePullPolicy"] == "Always" for c in pod["containers"])


def test_redis_runs_in_memory_as_uid_999() -> None:
    dep = one(render(), "Deployment", f"{RELEASE}-redis")
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 999
    (c,) = pod["containers"]
    assert c["image"].startswith("redis:7.2")
    assert c["args"] == ["--save", "", "--appendonly", "no", "--include", "/etc/redis/auth/auth.conf"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/data"]]


def test_redis_has_a_password_that_only_files_carry() -> None:
    import base64

    docs = render()
    secret = one(docs, "Secret", f"{RELEASE}-redis")
    password = base64.b64decode(secret["data"]["password"]).decode()
    assert len(password) >= 32
    assert base64.b64decode(secret["data"]["auth.conf"]).decode() == f"requirepass {password}\n"
    redis = one(docs, "Deployment", f"{RELEASE}-redis")["spec"]["template"]["spec"]
    assert {v["name"]: v for v in redis["volumes"]}["auth"]["secret"]["secretName"] == f"{RELEASE}-redis"
    op = one(docs, "Deployment", f"{RELEASE}-operator")["spec"]["template"]["spec"]
    env = env_of(op["containers"][0])
    assert env["SMARTSPEC_OPERATOR_REDIS_PASSWORD_FILE"] == "/etc/smartspec/redis/password"
    vol = {v["name"]: v for v in op["volumes"]}["redis-password"]["secret"]
    assert vol["secretName"] == f"{RELEASE}-redis" and vol["items"] == [{"key": "password", "path": "password"}]
    # The password is in no manifest but its Secret: not in an env value, an argument or a ConfigMap.
    for d in docs:
        if d["kind"] != "Secret":
            assert password not in json.dumps(d), f"{d['kind']}/{d['metadata']['name']}"
    # An external Redis: its password from the user's Secret; without one, no password file at all.
    ext = render(sets=("redis.enabled=false", "externalRedis.url=redis://r.example:6379",
                       "externalRedis.passwordSecret.name=redis-admin"))
    op = one(ext, "Deployment", f"{RELEASE}-operator")["spec"]["template"]["spec"]
    assert {v["name"]: v for v in op["volumes"]}["redis-password"]["secret"]["secretName"] == "redis-admin"
    plain = render(sets=("redis.enabled=false", "externalRedis.url=redis://r.example:6379"))
    op = one(plain, "Deployment", f"{RELEASE}-operator")["spec"]["template"]["spec"]
    assert "SMARTSPEC_OPERATOR_REDIS_PASSWORD_FILE" not in env_of(op["containers"][0])
    assert helm("template", "x", str(CHART), "--set", "redis.enabled=false",
                "--set", "externalRedis.url=redis://:pw@r:6379").returncode != 0  # no password in the URL


def test_only_smartspec_pods_reach_redis_and_the_operator_makes_network_policies() -> None:
    docs = render()
    redis = one(docs, "Deployment", f"{RELEASE}-redis")
    np = one(docs, "NetworkPolicy", f"{RELEASE}-redis")
    assert np["spec"]["podSelector"]["matchLabels"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    [rule] = np["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    [peer] = rule["from"]
    assert peer["namespaceSelector"] == {}  # targets and controllers live in the services' namespaces
    [expr] = peer["podSelector"]["matchExpressions"]
    assert (expr["key"], expr["operator"], set(expr["values"])) == ("app.kubernetes.io/name", "In", {"smartspec"})
    op = one(docs, "Deployment", f"{RELEASE}-operator")
    assert env_of(op["spec"]["template"]["spec"]["containers"][0])["SMARTSPEC_OPERATOR_NETWORK_POLICIES"] == "true"
    off = render(sets=("networkPolicy.enabled=false",))
    assert not of_kind(off, "NetworkPolicy")
    op = one(off, "Deployment", f"{RELEASE}-operator")
    assert env_of(op["spec"]["template"]["spec"]["containers"][0])["SMARTSPEC_OPERATOR_NETWORK_POLICIES"] == "false"


# ------------------------------------------------------------------------------------ security and RBAC


def pod_templates(docs: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload the chart renders."""
    for d in docs:
        if d["kind"] in WORKLOAD_KINDS:
            spec = d["spec"]["jobTemplate"]["spec"] if d["kind"] == "CronJob" else d["spec"]
            yield f"{d['kind']}/{d['metadata']['name']}", spec if d["kind"] == "Pod" else spec["template"]["spec"]


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_every_pod_is_locked_down(values: Path | None) -> None:
    pods = dict(pod_templates(render(values)))
    expected = {f"Deployment/{RELEASE}-operator"} | (set() if values == ci("external-redis")
                                                      else {f"Deployment/{RELEASE}-redis"})
    assert set(pods) == expected
    for name, pod in pods.items():
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True, name
        for key in ("runAsUser", "runAsGroup", "fsGroup"):
            assert isinstance(psc[key], int), (name, key)
        assert psc["runAsUser"] > 0, name
        assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), name
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for c in pod.get("initContainers", []) + pod["containers"]:
            csc = c["securityContext"]
            assert csc["allowPrivilegeEscalation"] is False, name
            assert csc["readOnlyRootFilesystem"] is True, name
            assert csc["privileged"] is False, name
            assert csc["capabilities"] == {"drop": ["ALL"]}, name
            assert "runAsUser" not in csc or csc["runAsUser"] > 0, name
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{name}: no writable /tmp"
            assert c["resources"].get("limits", {}).get("memory"), f"{name}: no memory limit"
        # Only the operator talks to the API server.
        assert pod["automountServiceAccountToken"] is name.endswith("-operator"), name


def rules_of(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert set(rule) <= {"apiGroups", "resources", "verbs"}, rule  # no resourceNames/nonResourceURLs
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert (group, resource) not in out, f"{group}/{resource} listed twice"
                out[(group, resource)] = set(rule["verbs"])
    return out


def no_wildcards(docs: tuple[dict[str, Any], ...]) -> None:
    for d in docs:
        if d["kind"] in {"Role", "ClusterRole"}:
            for rule in d["rules"]:
                for key, items in rule.items():
                    assert all("*" not in item for item in items), f"{d['kind']}/{d['metadata']['name']} {key}"
            assert "aggregationRule" not in d


def binding_points_at(binding: dict[str, Any], kind: str, name: str) -> None:
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{RELEASE}-operator", "namespace": NAMESPACE}]


def test_rbac_is_namespaced_by_default() -> None:
    # Before: an install could manage Deployments in every namespace; now only in its own unless told.
    docs = render()
    no_wildcards(docs)
    name = f"{RELEASE}-operator"
    (cluster_role,) = of_kind(docs, "ClusterRole")
    assert rules_of(cluster_role) == CLUSTER_RULES
    (role,) = of_kind(docs, "Role")
    assert role["metadata"]["namespace"] == NAMESPACE and rules_of(role) == NAMESPACED_RULES
    op = one(docs, "Deployment", name)
    assert env_of(op["spec"]["template"]["spec"]["containers"][0])["SMARTSPEC_OPERATOR_NAMESPACES"] == NAMESPACE


def test_rbac_cluster_wide() -> None:
    docs = render(None, ("operator.clusterWide=true",))
    no_wildcards(docs)
    name = f"{RELEASE}-operator"
    assert rules_of(one(docs, "ClusterRole", name)) == NAMESPACED_RULES | CLUSTER_RULES
    binding_points_at(one(docs, "ClusterRoleBinding", name), "ClusterRole", name)
    assert not of_kind(docs, "Role") and not of_kind(docs, "RoleBinding")
    assert len(of_kind(docs, "ClusterRole")) == 1 and len(of_kind(docs, "ClusterRoleBinding")) == 1


def test_rbac_watch_namespaces() -> None:
    docs = render(ci("external-redis"))
    no_wildcards(docs)
    name = f"{RELEASE}-operator"
    (cluster_role,) = of_kind(docs, "ClusterRole")
    assert rules_of(cluster_role) == CLUSTER_RULES
    binding_points_at(one(docs, "ClusterRoleBinding", name), "ClusterRole", name)
    roles = {r["metadata"]["namespace"]: r for r in of_kind(docs, "Role")}
    bindings = {b["metadata"]["namespace"]: b for b in of_kind(docs, "RoleBinding")}
    assert set(roles) == set(bindings) == {"llm-prod", "llm-staging"}
    for ns in roles:
        assert rules_of(roles[ns]) == NAMESPACED_RULES
        binding_points_at(bindings[ns], "Role", roles[ns]["metadata"]["name"])


@pytest.mark.parametrize("values", VALUE_SETS, ids=VALUE_IDS)
def test_no_wildcards_anywhere(values: Path | None) -> None:
    no_wildcards(render(values))


def test_rbac_and_service_account_can_be_left_out() -> None:
    docs = render(None, ("rbac.create=false", "serviceAccount.create=false", "serviceAccount.name=ops"))
    assert not {d["kind"] for d in docs} & {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding",
                                            "ServiceAccount"}
    pod = one(docs, "Deployment", f"{RELEASE}-operator")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "ops"
    out = helm("template", RELEASE, str(CHART), "--set", "serviceAccount.create=false")
    assert out.returncode != 0 and "serviceAccount.name" in out.stderr


# ------------------------------------------------------------------------------------------ dashboards


def test_dashboards_configmaps() -> None:
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert files, "helm/smartspec/dashboards/*.json missing"
    cms = [d for d in of_kind(render(), "ConfigMap")
           if d["metadata"]["labels"].get("app.kubernetes.io/component") == "dashboards"]
    assert len(cms) == len(files)
    by_key = {}
    for cm in cms:
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["namespace"] == NAMESPACE
        (key,) = cm["data"]
        by_key[key] = cm["data"][key]
    assert set(by_key) == {f.name for f in files}
    for f in files:
        assert json.loads(by_key[f.name]) == json.loads(f.read_text()), f.name
        assert by_key[f.name].rstrip("\n") == f.read_text().rstrip("\n"), f"{f.name}: text changed"
    assert not [d for d in render(None, ("dashboards.enabled=false",)) if d["kind"] == "ConfigMap"]
    moved = render(None, ("dashboards.namespace=monitoring", "dashboards.annotations.grafana_folder=smartspec"))
    for cm in of_kind(moved, "ConfigMap"):
        assert cm["metadata"]["namespace"] == "monitoring"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "smartspec"}


# ------------------------------------------------------------------------------------ values and schema


@pytest.mark.parametrize(("setting", "field"), [
    ("operator.replicas=-1", "operator.replicas"),
    ("images.pullPolicy=Sometimes", "images.pullPolicy"),
    ("externalRedis.url=http://redis:6379", "externalRedis.url"),
    ("operator.replicaz=2", "replicaz"),
    ("defaultPolicy.spec.mode=sometimes", "defaultPolicy.spec.mode"),
    ("defaultPolicy.spec.hysteresis=0.5", "defaultPolicy.spec.hysteresis"),
    ("defaultPolicy.spec.acceptance.prior=1", "defaultPolicy.spec.acceptance.prior"),
    ("operator.watchNamespaces[0]=Not_A_Namespace", "operator.watchNamespaces"),
    ("redis.enabled=false", "externalRedis.url"),
])
def test_schema_rejects_bad_values(setting: str, field: str) -> None:
    lint = helm("lint", "--strict", str(CHART), "--set", setting)
    assert lint.returncode != 0 and field in lint.stdout + lint.stderr, lint.stdout + lint.stderr
    template = helm("template", RELEASE, str(CHART), "--set", setting)
    assert template.returncode != 0 and field in template.stderr, template.stderr


def test_unquoted_off_is_caught(tmp_path: Path) -> None:
    values = tmp_path / "off.yaml"
    values.write_text("defaultPolicy:\n  spec:\n    mode: off\n")  # YAML 1.1: false
    out = helm("template", RELEASE, str(CHART), "-f", str(values))
    assert out.returncode != 0 and "defaultPolicy.spec.mode" in out.stderr
    values.write_text('defaultPolicy:\n  spec:\n    mode: "off"\n')
    (policy,) = of_kind(render(values), "SpeculationPolicy")
    assert admit(policy)["spec"]["mode"] == "off"


def values_comments() -> Iterator[tuple[str, bool, Any]]:
    """(dotted key, has a `# --` comment block right above it, value node) for every key in values.yaml."""
    lines = (CHART / "values.yaml").read_text().splitlines()

    def documented(line_no: int) -> bool:
        block = []
        for line in reversed(lines[:line_no]):
            if not line.strip().startswith("#"):
                break
            block.append(line.strip())
        return bool(block) and block[-1].startswith("# --")

    def walk(node: yaml.MappingNode, prefix: str) -> Iterator[tuple[str, bool, Any]]:
        for key, value in node.value:
            path = f"{prefix}{key.value}"
            yield path, documented(key.start_mark.line), value
            if isinstance(value, yaml.MappingNode) and not documented(key.start_mark.line):
                yield from walk(value, path + ".")

    yield from walk(yaml.compose((CHART / "values.yaml").read_text()), "")


def test_every_value_is_documented() -> None:
    """helm-docs style: each leaf value, or a map that is documented as a whole, has a `# --` comment."""
    undocumented = [path for path, doc, node in values_comments()
                    if not doc and not (isinstance(node, yaml.MappingNode) and node.value)]
    assert not undocumented


def test_schema_covers_every_value() -> None:
    """values.yaml is valid against values.schema.json, and every object with named properties refuses
    unknown keys (so a typo fails `helm lint`); free-form maps (labels, resources, ...) have no properties."""
    values_schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(values_schema)
    jsonschema.Draft7Validator(values_schema).validate(yaml.safe_load((CHART / "values.yaml").read_text()))

    def open_objects(node: dict[str, Any], path: str) -> Iterator[str]:
        if "properties" in node:
            if node.get("additionalProperties") is not False:
                yield path or "<root>"
            for key, sub in node["properties"].items():
                yield from open_objects(sub, f"{path}.{key}".lstrip("."))

    assert not list(open_objects(values_schema, ""))


def test_default_policy_schema_mirrors_the_crd() -> None:
    """values.schema.json's defaultPolicy.spec has the CRD's fields, enums and bounds (draft-07 spelling)."""
    values_schema = json.loads((CHART / "values.schema.json").read_text())
    chart = values_schema["properties"]["defaultPolicy"]["properties"]["spec"]
    crd = schema("SpeculationPolicy")["properties"]["spec"]

    def compare(c: dict[str, Any], v: dict[str, Any], path: str) -> None:
        assert c.get("type") == v.get("type"), path
        assert c.get("enum") == v.get("enum"), path
        for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
            if c.get(exclusive):
                assert v.get(exclusive) == c[bound] and bound not in v, path
            else:
                assert v.get(bound) == c.get(bound), path
        if "properties" in c:
            assert set(c["properties"]) == set(v["properties"]), path
            for key in c["properties"]:
                compare(c["properties"][key], v["properties"][key], f"{path}.{key}")

    compare(crd, chart, "spec")


# ----------------------------------------------------------------------------- custom objects (admit)


def test_example_and_default_policy_are_admitted() -> None:
    for values, sets in [(None, ("example.enabled=true",)), (ci("gpu"), ()), (ci("ngram"), ())]:
        docs = render(values, sets)
        (svc,) = of_kind(docs, "SpeculativeService")
        admitted = admit(svc)
        assert admitted["spec"]["policyRef"] == {"name": "default"}
        assert svc["metadata"]["namespace"] == NAMESPACE
        policies = of_kind(docs, "SpeculationPolicy")
        assert [p["metadata"]["name"] for p in policies] == ["default"]
        admit(policies[0])
    (svc,) = of_kind(render(None, ("example.enabled=true",)), "SpeculativeService")
    assert svc["metadata"]["name"] == "coder"
    assert svc["spec"]["target"]["model"]["uri"].startswith("pvc://models/")
    assert svc["spec"]["draft"]["model"]["uri"].startswith("pvc://models/")
    assert "1.5b" in svc["spec"]["target"]["model"]["name"] and "0.5b" in svc["spec"]["draft"]["model"]["name"]
    assert not of_kind(render(), "SpeculativeService")
    (gpu,) = of_kind(render(ci("gpu")), "SpeculativeService")
    for role in ("target", "draft"):
        assert gpu["spec"][role]["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert gpu["spec"][role]["nodeSelector"] and gpu["spec"][role]["tolerations"]
    (ngram,) = of_kind(render(ci("ngram")), "SpeculativeService")
    assert ngram["spec"]["draft"] == {"method": "ngram"}
    (fixed,) = of_kind(render(ci("ngram")), "SpeculationPolicy")
    assert admit(fixed)["spec"]["mode"] == "fixed"


def test_default_policy_is_crd_defaults() -> None:
    (policy,) = of_kind(render(), "SpeculationPolicy")
    assert policy["spec"] == {}
    spec = admit(policy)["spec"]
    assert spec["mode"] == "goodput" and spec["maxSpeculationLength"] == 8
    assert policy["metadata"]["namespace"] == NAMESPACE
    docs = render(None, ("defaultPolicy.namespaces={team-a,team-b}", "operator.watchNamespaces={team-c}"))
    assert sorted(p["metadata"]["namespace"] for p in of_kind(docs, "SpeculationPolicy")) == ["team-a", "team-b"]
    assert not of_kind(render(None, ("defaultPolicy.enabled=false",)), "SpeculationPolicy")


def test_kube_version_floor() -> None:
    out = helm("template", RELEASE, str(CHART), "--kube-version", "1.28.9")
    assert out.returncode != 0 and "kubeVersion" in out.stderr


def test_out_of_range_policy_stops_at_the_chart() -> None:
    out = helm("template", RELEASE, str(CHART), "--set", "defaultPolicy.spec.maxSpeculationLength=17")
    assert out.returncode != 0
    assert "defaultPolicy.spec.maxSpeculationLength" in out.stderr and "16" in out.stderr
    # The API server would refuse it too.
    (policy,) = of_kind(render(), "SpeculationPolicy")
    with pytest.raises(Invalid, match="maxSpeculationLength"):
        admit(policy | {"spec": {"maxSpeculationLength": 17}})
    # The CRD's CEL rule (fixed <= max) is checked when rendering.
    out = helm("template", RELEASE, str(CHART), "--set", "defaultPolicy.spec.maxSpeculationLength=2",
               "--set", "defaultPolicy.spec.fixedSpeculationLength=3")
    assert out.returncode != 0 and "fixedSpeculationLength" in out.stderr
    out = helm("template", RELEASE, str(CHART), "--set", "example.enabled=true", "--set", "example.name=Coder")
    assert out.returncode != 0 and "example.name" in out.stderr


def test_notes_render(tmp_path: Path) -> None:
    """NOTES.txt renders (helm template prints no notes and install needs a cluster, so a copy of the chart
    wraps the notes template into a ConfigMap)."""
    chart = tmp_path / "smartspec"
    shutil.copytree(CHART, chart)
    (chart / "templates" / "zz-notes.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n'
        'data: {notes: {{ include "smartspec/templates/NOTES.txt" . | toJson }}}\n')
    for sets in [(), ("operator.watchNamespaces={a,b}", "serviceMonitor.enabled=true")]:
        out = helm("template", RELEASE, str(chart), "--namespace", NAMESPACE, "--show-only", "templates/zz-notes.yaml",
                   *value_args(None, sets))
        assert out.returncode == 0, out.stderr
        notes = yaml.safe_load(out.stdout)["data"]["notes"]
        assert "kubectl get specsvc,specpol" in notes
        assert "kind: SpeculativeService" in notes and "grafana_dashboard" in notes
        assert ("the namespaces a, b" in notes) == bool(sets)


def test_the_packaged_chart_deploys_exactly_the_images_build_images_tags(tmp_path: Path) -> None:
    """One version (smartspec/__init__.py) for the chart package, the image tags and the operator's defaults."""
    from smartspec import __version__
    from smartspec_operator.settings import OperatorSettings
    from tests.integration.images import tags

    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["version"] == meta["appVersion"] == __version__
    out = subprocess.run(["bash", str(CHART.parents[1] / "scripts" / "package_chart.sh"), str(tmp_path)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    (package,) = tmp_path.glob("*.tgz")
    assert package.name == f"smartspec-{__version__}.tgz"
    rendered = helm("template", RELEASE, str(package), "--namespace", NAMESPACE, "--kube-version", K8S_VERSION)
    assert rendered.returncode == 0, rendered.stderr
    docs = tuple(d for d in yaml.safe_load_all(rendered.stdout) if d)
    (c,) = one(docs, "Deployment", f"{RELEASE}-operator")["spec"]["template"]["spec"]["containers"]
    built = tags()
    env = env_of(c)
    assert c["image"] == built["operator"]
    assert {r: env[f"SMARTSPEC_OPERATOR_{r.upper()}_IMAGE"] for r in ("target", "draft", "controller")} == \
        {r: built[r] for r in ("target", "draft", "controller")}
    defaults = OperatorSettings()
    assert (defaults.target_image, defaults.draft_image, defaults.controller_image) == \
        (built["target"], built["draft"], built["controller"])
