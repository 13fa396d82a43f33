"""Pure manifest builders: shape per spec variant, config hash, stable selectors, owned keys."""

from __future__ import annotations

from typing import Any

import pytest

from smartspec_operator.manifests import (
    Owner,
    build,
    config_hash,
    model_path,
    owned_keys,
    selector,
)
from smartspec_operator.settings import OperatorSettings
from smartspec_operator.spec import ModelRef, parse_service_spec

OWNER = Owner("svc", "ns", "uid-1")
SETTINGS = OperatorSettings(redis_url="redis://r:6379", target_image="t:1", draft_image="d:1",
                            controller_image="c:1")


def objs(**spec: Any) -> dict[tuple[str, str], dict[str, Any]]:
    body = {"target": {"model": {"name": "m", "uri": "pvc://models/m"}}} | spec
    return {(o["kind"], o["metadata"]["name"]): o for o in build(OWNER, parse_service_spec(body), SETTINGS)}


def pod(o: dict[str, Any]) -> dict[str, Any]:
    return dict(o["spec"]["template"]["spec"])


def test_model_paths() -> None:
    assert model_path(ModelRef(name="m", uri="pvc://models/a/b/")) == "/models/models/a/b"
    assert model_path(ModelRef(name="m", uri="pvc://models")) == "/models/models"
    assert model_path(ModelRef(name="m", uri="/opt/weights/m")) == "/opt/weights/m"  # baked into the image
    for bad in ("Qwen/Qwen2.5-Coder-1.5B", "pvc://Bad_Claim/x", "models/m"):  # hub ids and relative paths: no
        with pytest.raises(ValueError):
            ModelRef(name="m", uri=bad)


def test_draft_model_service() -> None:
    out = objs(draft={"model": {"name": "d", "uri": "pvc://drafts/d"}, "replicas": 2})
    assert set(out) == set(owned_keys("svc", with_draft=True))
    data = out["ConfigMap", "svc-config"]["data"]
    assert data["SMARTSPEC_DRAFT_MODEL"] == "/models/drafts/d"
    assert data["SMARTSPEC_TARGET_DRAFT_ADDRESS"] == "svc-draft:50061"
    assert data["SMARTSPEC_TARGET_OTLP_ENDPOINT"] == "svc-controller:4317"
    assert data["SMARTSPEC_TARGET_REDIS_URL"] == data["SMARTSPEC_CONTROLLER_REDIS_URL"] == "redis://r:6379"
    # Redis keys are per namespace: two `svc`s in two namespaces never share them.
    assert data["SMARTSPEC_TARGET_SERVICE"] == data["SMARTSPEC_CONTROLLER_SERVICE"] == "ns.svc"
    assert data["SMARTSPEC_TARGET_MAX_K"] == data["SMARTSPEC_DRAFT_MAX_K"] == "16"  # the CRD's K bound
    draft = out["Deployment", "svc-draft"]
    assert draft["spec"]["replicas"] == 2
    assert [v["persistentVolumeClaim"]["claimName"] for v in pod(draft)["volumes"] if "persistentVolumeClaim" in v] \
        == ["drafts"]
    assert pod(draft)["containers"][0]["image"] == "d:1"


def test_ngram_draft_fingerprints_the_target_tokenizer() -> None:
    out = objs(draft={"method": "ngram"})
    data = out["ConfigMap", "svc-config"]["data"]
    assert data["SMARTSPEC_DRAFT_METHOD"] == "ngram" and "SMARTSPEC_DRAFT_MODEL" not in data
    assert data["SMARTSPEC_DRAFT_TOKENIZER"] == "/models/models/m"
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod(out["Deployment", "svc-draft"])["volumes"]
              if "persistentVolumeClaim" in v]
    assert claims == ["models"]  # the target's claim, mounted for its tokenizer


def test_no_draft_means_no_speculation_objects() -> None:
    out = objs()
    assert set(out) == set(owned_keys("svc", with_draft=False))
    assert "SMARTSPEC_TARGET_DRAFT_ADDRESS" not in out["ConfigMap", "svc-config"]["data"]


def test_gpu_resources_placement_and_overrides_pass_through() -> None:
    gpu = {"limits": {"nvidia.com/gpu": 1}, "requests": {"memory": "24Gi"}}
    tol = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    out = objs(target={"model": {"name": "m", "uri": "/w/m"}, "resources": gpu, "nodeSelector": {"gpu": "h100"},
                       "tolerations": tol, "image": "mine:2", "env": [{"name": "X", "value": "1"}]},
               redis={"url": "rediss://elsewhere:6380"}, telemetry={"otlpEndpoint": "collector:4317"})
    target = out["Deployment", "svc-target"]
    c = pod(target)["containers"][0]
    assert c["resources"] == gpu and c["image"] == "mine:2"
    assert pod(target)["nodeSelector"] == {"gpu": "h100"} and pod(target)["tolerations"] == tol
    assert {"name": "X", "value": "1"} in c["env"]
    assert c["env"][0]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # replica name = pod name
    data = out["ConfigMap", "svc-config"]["data"]
    assert data["SMARTSPEC_TARGET_REDIS_URL"] == "rediss://elsewhere:6380"
    assert data["SMARTSPEC_TARGET_OTLP_ENDPOINT"] == "collector:4317"


def test_pull_secrets_reach_every_pod() -> None:
    settings = SETTINGS.model_copy(update={"image_pull_secrets": "regcred, other"})
    body = parse_service_spec({"target": {"model": {"name": "m", "uri": "/w/m"}}, "draft": {"method": "ngram"}})
    for o in build(OWNER, body, settings):
        if o["kind"] == "Deployment":
            assert pod(o)["imagePullSecrets"] == [{"name": "regcred"}, {"name": "other"}]
    assert all("imagePullSecrets" not in pod(o) for o in objs().values() if o["kind"] == "Deployment")


def test_every_pod_is_locked_down_and_probed() -> None:
    for (kind, name), o in objs(draft={"model": {"name": "d", "uri": "/w/d"}}).items():
        if kind != "Deployment":
            continue
        p = pod(o)
        assert p["securityContext"]["runAsNonRoot"] is True
        assert p["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert p["automountServiceAccountToken"] is False
        c = p["containers"][0]
        assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                        "privileged": False, "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
        assert "readinessProbe" in c and "livenessProbe" in c, name
        assert o["spec"]["selector"]["matchLabels"] == selector("svc", name.removeprefix("svc-"))
        assert o["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def test_config_changes_roll_only_the_pods_that_read_them() -> None:
    draft = {"model": {"name": "d", "uri": "/w/d"}}
    base = objs(draft=draft)
    more = objs(target={"model": {"name": "m", "uri": "pvc://models/m"}, "replicas": 4}, draft=draft)
    longer = objs(target={"model": {"name": "m", "uri": "pvc://models/m"}, "maxLen": 8192}, draft=draft)
    draft_fp32 = objs(draft=draft | {"dtype": "float32"})

    def digest(out: dict[tuple[str, str], dict[str, Any]], role: str) -> str:
        return str(out["Deployment", f"svc-{role}"]["spec"]["template"]["metadata"]["annotations"]
                   ["smartspec.io/config-hash"])

    assert digest(base, "target") == config_hash(base["ConfigMap", "svc-config"]["data"], "target")
    assert digest(more, "target") == digest(base, "target")  # scaling targets is not a restart of them
    assert digest(more, "controller") == digest(base, "controller")
    assert digest(longer, "target") != digest(base, "target")
    assert digest(draft_fp32, "target") == digest(base, "target")  # a draft-only change leaves targets alone
    assert digest(draft_fp32, "draft") != digest(base, "draft")


def test_keys_reach_the_pods_as_files_from_secrets_never_as_values() -> None:
    import base64

    from smartspec_operator.manifests import auth_secret

    out = objs(draft={"model": {"name": "d", "uri": "pvc://drafts/d"}})
    data = out["ConfigMap", "svc-config"]["data"]
    assert data["SMARTSPEC_TARGET_API_KEY_FILE"] == "/etc/smartspec/api/api-keys"
    assert data["SMARTSPEC_TARGET_DRAFT_TOKEN_FILE"] == data["SMARTSPEC_DRAFT_AUTH_TOKEN_FILE"] \
        == "/etc/smartspec/auth/peer-token"

    def secret_mounts(role: str) -> dict[str, tuple[str, str]]:
        p = pod(out["Deployment", f"svc-{role}"])
        vols = {v["name"]: v["secret"] for v in p["volumes"] if "secret" in v}
        return {m["mountPath"]: (vols[m["name"]]["secretName"], vols[m["name"]]["items"][0]["key"])
                for m in p["containers"][0]["volumeMounts"] if m["name"] in vols and m["readOnly"]}

    tls = {"/etc/smartspec/tls": ("svc-tls", "tls.crt")}
    assert secret_mounts("target") == {"/etc/smartspec/api": ("svc-auth", "api-keys"),
                                       "/etc/smartspec/auth": ("svc-auth", "peer-token")} | tls
    assert secret_mounts("draft") == {"/etc/smartspec/auth": ("svc-auth", "peer-token")} | tls
    assert secret_mounts("controller") == {"/etc/smartspec/auth": ("svc-auth", "peer-token")} | tls
    assert data["SMARTSPEC_TARGET_OTLP_TOKEN_FILE"] == data["SMARTSPEC_CONTROLLER_OTLP_TOKEN_FILE"]
    # A user's own OTLP collector never receives the peer token.
    assert "SMARTSPEC_TARGET_OTLP_TOKEN_FILE" not in objs(telemetry={"otlpEndpoint": "otel:4317"})[
        "ConfigMap", "svc-config"]["data"]
    # A user's own key Secret replaces the generated API key; the peer token stays the service's own.
    mine = objs(auth={"apiKeySecret": "team-keys"})
    p = pod(mine["Deployment", "svc-target"])
    assert [v["secret"]["secretName"] for v in p["volumes"] if "secret" in v] == ["team-keys", "svc-auth", "svc-tls"]
    # The Secret itself: base64 data, owned by the service; nothing secret anywhere else.
    secret = auth_secret(OWNER, "peer-token-value-0123456789", "sk-key-value-0123456789", "redis-pw-0123456789")
    assert base64.b64decode(secret["data"]["api-keys"]).decode() == "sk-key-value-0123456789\n"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert "peer-token-value" not in str(out) and "sk-key-value" not in str(out)


def test_the_parts_speak_mutual_tls_with_the_services_own_certificate_or_a_named_secret() -> None:
    import base64

    from cryptography import x509

    from smartspec_operator.manifests import tls_secret

    out = objs(draft={"model": {"name": "d", "uri": "pvc://drafts/d"}})
    data = out["ConfigMap", "svc-config"]["data"]
    assert data["SMARTSPEC_DRAFT_TLS_DIR"] == data["SMARTSPEC_TARGET_TLS_DIR"] == data["SMARTSPEC_CONTROLLER_TLS_DIR"] \
        == data["SMARTSPEC_TARGET_OTLP_TLS_DIR"] == "/etc/smartspec/tls"
    for role in ("target", "draft", "controller"):
        (vol,) = [v["secret"] for v in pod(out["Deployment", f"svc-{role}"])["volumes"] if v["name"] == "tls"]
        assert vol["secretName"] == "svc-tls" and [i["key"] for i in vol["items"]] == ["tls.crt", "tls.key", "ca.crt"]
    # The operator's own Secret: what cert-manager would write, for the names the targets dial.
    secret = tls_secret(OWNER)
    assert secret["type"] == "kubernetes.io/tls" and secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    pem = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    leaf, ca = x509.load_pem_x509_certificate(pem["tls.crt"]), x509.load_pem_x509_certificate(pem["ca.crt"])
    leaf.verify_directly_issued_by(ca)
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert {"svc-draft", "svc-controller", "svc-draft.ns.svc", "svc-controller.ns.svc.cluster.local"} <= set(names)
    assert data["SMARTSPEC_TARGET_DRAFT_ADDRESS"].split(":")[0] in names
    # A cert-manager Certificate's Secret instead; a user's own OTLP collector gets neither certificate nor token.
    named = objs(tls={"secretName": "svc-cert"}, telemetry={"otlpEndpoint": "otel:4317"})
    assert [v["secret"]["secretName"] for v in pod(named["Deployment", "svc-controller"])["volumes"]
            if v["name"] == "tls"] == ["svc-cert"]
    assert "SMARTSPEC_TARGET_OTLP_TLS_DIR" not in named["ConfigMap", "svc-config"]["data"]
    # Off (a mesh encrypts): no certificate anywhere, the peer token still required.
    off = objs(tls={"enabled": False}, draft={"model": {"name": "d", "uri": "pvc://drafts/d"}})
    assert not any("TLS_DIR" in k for k in off["ConfigMap", "svc-config"]["data"])
    assert all(v["name"] != "tls" for role in ("target", "draft", "controller")
               for v in pod(off["Deployment", f"svc-{role}"])["volumes"])
    assert off["ConfigMap", "svc-config"]["data"]["SMARTSPEC_DRAFT_AUTH_TOKEN_FILE"]


def test_the_draft_and_the_controllers_otlp_accept_only_the_services_own_targets() -> None:
    out = objs(draft={"model": {"name": "d", "uri": "pvc://drafts/d"}})
    targets = {"app.kubernetes.io/component": "target", "smartspec.io/service": "svc"}
    draft = out["NetworkPolicy", "svc-draft"]["spec"]
    assert draft["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": "draft",
                                                   "smartspec.io/service": "svc"}
    assert draft["ingress"] == [{"from": [{"podSelector": {"matchLabels": targets}}],
                                 "ports": [{"protocol": "TCP", "port": 50061}]}]
    ctl = out["NetworkPolicy", "svc-controller"]["spec"]
    assert ctl["ingress"][0] == {"from": [{"podSelector": {"matchLabels": targets}}],
                                 "ports": [{"protocol": "TCP", "port": 4317}]}
    assert ctl["ingress"][1] == {"ports": [{"protocol": "TCP", "port": 8090}]}  # probes, scrapes, read-only views
    assert ("NetworkPolicy", "svc-target") not in out  # the API is open to clients; keys protect it
    off = SETTINGS.model_copy(update={"network_policies": False})
    body = {"target": {"model": {"name": "m", "uri": "pvc://models/m"}}}
    assert all(o["kind"] != "NetworkPolicy" for o in build(OWNER, parse_service_spec(body), off))


def test_with_the_redis_admin_password_pods_log_in_as_the_services_user() -> None:
    acl = SETTINGS.model_copy(update={"redis_password_file": "/etc/smartspec/redis/password"})
    body = {"target": {"model": {"name": "m", "uri": "pvc://models/m"}}}
    out = {(o["kind"], o["metadata"]["name"]): o for o in build(OWNER, parse_service_spec(body), acl)}
    data = out["ConfigMap", "svc-config"]["data"]
    assert data["SMARTSPEC_TARGET_REDIS_URL"] == data["SMARTSPEC_CONTROLLER_REDIS_URL"] == "redis://smartspec-ns.svc@r:6379"
    assert data["SMARTSPEC_TARGET_REDIS_PASSWORD_FILE"] == "/etc/smartspec/redis/redis-password"
    for role in ("target", "controller"):
        p = pod(out["Deployment", f"svc-{role}"])
        assert any(v.get("secret", {}).get("items") == [{"key": "redis-password", "path": "redis-password"}]
                   for v in p["volumes"]), role
    # A service that names its own Redis brings its own access: the URL passes through, no user, no password.
    own = {(o["kind"], o["metadata"]["name"]): o for o in
           build(OWNER, parse_service_spec(body | {"redis": {"url": "redis://mine:6379"}}), acl)}
    assert own["ConfigMap", "svc-config"]["data"]["SMARTSPEC_TARGET_REDIS_URL"] == "redis://mine:6379"
    assert "SMARTSPEC_TARGET_REDIS_PASSWORD_FILE" not in own["ConfigMap", "svc-config"]["data"]


def test_graphs_setting_reaches_each_service(monkeypatch: pytest.MonkeyPatch) -> None:
    from smartspec_draft.settings import DraftSettings
    from smartspec_target.settings import TargetSettings

    draft = {"model": {"name": "d", "uri": "/w/d"}}
    data = objs(draft=draft)["ConfigMap", "svc-config"]["data"]
    assert data["SMARTSPEC_TARGET_GRAPHS"] == data["SMARTSPEC_DRAFT_GRAPHS"] == "auto"  # on where there is CUDA
    data = objs(target={"model": {"name": "m", "uri": "/w/m"}, "graphs": "on"},
                draft=draft | {"graphs": "off"})["ConfigMap", "svc-config"]["data"]
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    assert TargetSettings().graphs == "on"
    assert DraftSettings().graphs == "off"
