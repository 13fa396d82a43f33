"""The operator (a real `smartspec operator` process) against kmock over HTTP, real Redis and a real controller."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from smartspec.telemetry.keys import policy_spec_key, service_keys, steps_key
from tests.crd_admission import printer_row
from tests.integration.conftest import LoopThread, free_port
from tests.integration.control_plane import complete_many, metric, published, start_controller, stop_all, wait_for
from tests.integration.kube_api import KubeApi
from tests.integration.services import start_stack

NS = "default"
GV = "smartspec.io/v1alpha1"


class Operator:
    def __init__(self, api: KubeApi, redis_url: str, **extra_env: str) -> None:
        self.health_port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="smartspec-operator-", suffix=".log", delete=False)  # noqa: SIM115
        env = dict(os.environ, SMARTSPEC_OPERATOR_KUBE_URL=api.url, SMARTSPEC_OPERATOR_REDIS_URL=redis_url,
                   SMARTSPEC_OPERATOR_STATUS_INTERVAL_S="0.5", SMARTSPEC_OPERATOR_TELEMETRY_STALE_S="4",
                   SMARTSPEC_OPERATOR_CONVERGE_INTERVAL_S="2",
                   SMARTSPEC_OPERATOR_HEALTH_HOST="127.0.0.1",
                   SMARTSPEC_OPERATOR_HEALTH_PORT=str(self.health_port), **extra_env)
        self.proc = subprocess.Popen([sys.executable, "-m", "smartspec.cli.main", "operator"], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        with open(self.log.name) as f:
            return f.read()

    def healthy(self) -> bool:
        assert self.proc.poll() is None, f"operator exited:\n{self.output()[-3000:]}"
        try:
            return httpx.get(f"http://127.0.0.1:{self.health_port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        if not os.environ.get("SMARTSPEC_KEEP_OPERATOR_LOG"):
            os.unlink(self.log.name)


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeApi]:
    api = KubeApi()
    yield api
    api.stop()


@pytest.fixture(scope="module")
def operator(kube: KubeApi, redis_server: Any) -> Iterator[Operator]:
    op = Operator(kube, redis_server.url)
    try:
        wait_for(op.healthy, 30, "the operator's /healthz", every_s=0.1)
        yield op
        assert "Traceback" not in op.output(), op.output()[-4000:]
    finally:
        op.stop()


def rid(name: str, namespace: str = NS) -> str:
    """A service's id in Redis keys: namespaced by the operator."""
    return f"{namespace}.{name}"


def service(name: str, **spec: Any) -> dict[str, Any]:
    body = {"target": {"model": {"name": "qwen-1.5b", "uri": "pvc://models/qwen-1.5b"}},
            "draft": {"model": {"name": "qwen-0.5b", "uri": "pvc://models/qwen-0.5b"}}} | spec
    return {"apiVersion": GV, "kind": "SpeculativeService", "metadata": {"name": name, "namespace": NS}, "spec": body}


def policy(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": GV, "kind": "SpeculationPolicy", "metadata": {"name": name, "namespace": NS}, "spec": spec}


_SERVICES: list[tuple[str, str]] = []  # (name, namespace) of the services the running test created


def created(kube: KubeApi, obj: dict[str, Any]) -> dict[str, Any]:
    r = kube.create(obj)
    assert r.status_code in (200, 201), r.text
    if obj["kind"] == "SpeculativeService":
        _SERVICES.append((obj["metadata"]["name"], obj["metadata"].get("namespace", NS)))
    return dict(r.json())


@pytest.fixture(autouse=True)
def _services_deleted_after_each_test(kube: KubeApi) -> Iterator[None]:
    """Each test's services go when it ends: every live service has a status daemon converging it, so ones
    left behind would slow the operator for every later test (on two cores, by tens of seconds)."""
    yield
    while _SERVICES:
        name, namespace = _SERVICES.pop()
        kube.delete("SpeculativeService", name, namespace=namespace)
        wait_for(lambda n=name, ns=namespace: kube.get("SpeculativeService", n, namespace=ns) is None, 60,
                 f"{namespace}/{name} deleted", every_s=0.1)


def status(kube: KubeApi, kind: str, name: str) -> dict[str, Any]:
    return dict((kube.get(kind, name) or {}).get("status") or {})


def reconciled(kube: KubeApi, name: str, generation: int = 1) -> dict[str, Any]:
    return wait_for(lambda: status(kube, "SpeculativeService", name).get("observedGeneration") == generation
                    and kube.get("SpeculativeService", name), 30, f"{name} reconciled at generation {generation}")


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    return dict(deployment["spec"]["template"]["spec"]["containers"][0])


def test_create_makes_owned_deployments_services_and_config(kube: KubeApi, operator: Operator, redis_db: Any) -> None:
    gpu = {"limits": {"nvidia.com/gpu": 1}, "requests": {"cpu": "2", "memory": "8Gi"}}
    cr = created(kube, service("alpha", target={"model": {"name": "qwen-1.5b", "uri": "pvc://models/qwen-1.5b"},
                                                "replicas": 2, "resources": gpu}))
    assert cr["spec"]["target"]["maxBatchSize"] == 32  # the CRD's default, applied at admission
    reconciled(kube, "alpha")
    uid = cr["metadata"]["uid"]
    for kind, name in [("ConfigMap", "alpha-config"), ("Deployment", "alpha-target"), ("Deployment", "alpha-draft"),
                       ("Deployment", "alpha-controller"), ("Service", "alpha-target"), ("Service", "alpha-draft"),
                       ("Service", "alpha-controller")]:
        obj = kube.get(kind, name)
        assert obj is not None, f"{kind}/{name} missing"
        [ref] = obj["metadata"]["ownerReferences"]
        assert ref == {"apiVersion": GV, "kind": "SpeculativeService", "name": "alpha", "uid": uid,
                       "controller": True, "blockOwnerDeletion": True}
        assert obj["metadata"]["labels"]["smartspec.io/service"] == "alpha"

    target = kube.get("Deployment", "alpha-target")
    assert target is not None and target["spec"]["replicas"] == 2
    c = container(target)
    assert c["resources"] == gpu
    assert c["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 300  # model load time
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "model-0", "mountPath": "/models/models", "readOnly": True} in c["volumeMounts"]
    draft = kube.get("Deployment", "alpha-draft")
    assert draft is not None and container(draft)["readinessProbe"]["grpc"] == {"port": 50061}
    controller = kube.get("Deployment", "alpha-controller")
    assert controller is not None and container(controller)["readinessProbe"]["httpGet"]["path"] == "/health"
    config = kube.get("ConfigMap", "alpha-config")
    assert config is not None
    assert config["data"]["SMARTSPEC_TARGET_MODEL"] == "/models/models/qwen-1.5b"
    assert config["data"]["SMARTSPEC_TARGET_DRAFT_ADDRESS"] == "alpha-draft:50061"
    assert config["data"]["SMARTSPEC_TARGET_REDIS_URL"] == redis_db.url  # the operator's default Redis

    # Nothing is ready (there is no kubelet here), and the status says so.
    def ready_condition() -> dict[str, Any] | None:
        conds = status(kube, "SpeculativeService", "alpha").get("conditions", [])
        return next((c for c in conds if c["type"] == "Ready" and c["reason"] != "Reconciling"), None)

    ready = wait_for(ready_condition, 10, "a Ready condition past reconciling")
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "TargetUnavailable",
                                                                    "0/2 target replicas ready")


def test_a_foreign_image_or_secret_env_is_refused_and_nothing_runs(kube: KubeApi, operator: Operator) -> None:
    # Before: whoever could create a SpeculativeService could run any image, and read the namespace's
    # Secrets into it through env.valueFrom, with the operator's service account doing the work.
    created(kube, service("evil", target={"model": {"name": "m", "uri": "pvc://models/m"}, "image": "attacker/miner:1",
                                          "env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "db",
                                                                                             "key": "pw"}}}]}))

    def refused() -> dict[str, Any] | None:
        conds = status(kube, "SpeculativeService", "evil").get("conditions", [])
        return next((c for c in conds if c["type"] == "Ready" and c["reason"] == "InvalidSpec"), None)

    cond = wait_for(refused, 30, "the refusal in the status")
    assert "attacker/miner:1" in cond["message"] and "secretKeyRef" in cond["message"]
    assert kube.get("Deployment", "evil-target") is None and kube.get("Secret", "evil-auth") is None


def test_spec_update_patches_in_place(kube: KubeApi, operator: Operator, redis_db: Any) -> None:
    created(kube, service("beta", target={"model": {"name": "qwen-1.5b", "uri": "pvc://models/qwen-1.5b"},
                                          "nodeSelector": {"pool": "gpu"}}))
    reconciled(kube, "beta")
    secret = kube.get("Secret", "beta-auth")  # generated once: peer token, API key, Redis password; owned
    assert secret is not None and set(secret["data"]) == {"peer-token", "api-keys", "redis-password"}
    assert secret["metadata"]["ownerReferences"][0]["name"] == "beta"
    assert not secret["metadata"].get("annotations"), "a Secret must not carry its data in an annotation"
    certs = kube.existing("Secret", "beta-tls")  # the service's own CA and certificate, for mTLS between the parts
    assert certs["type"] == "kubernetes.io/tls" and set(certs["data"]) == {"tls.crt", "tls.key", "ca.crt"}
    before = kube.get("Deployment", "beta-target")
    assert before is not None and before["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "gpu"}
    writes = len(kube.requests_for("Deployment", ("POST", "DELETE")))

    # replicas up, nodeSelector dropped, a longer context (changes the ConfigMap, so pods must roll)
    new_target = {"model": {"name": "qwen-1.5b", "uri": "pvc://models/qwen-1.5b"}, "replicas": 3, "maxLen": 8192,
                  "nodeSelector": None}
    r = kube.patch("SpeculativeService", "beta", {"spec": {"target": new_target}})
    assert r.status_code == 200, r.text
    reconciled(kube, "beta", generation=2)
    assert kube.existing("Secret", "beta-auth")["data"] == secret["data"]  # never regenerated by a reconcile
    assert kube.existing("Secret", "beta-tls")["data"] == certs["data"]
    after = kube.get("Deployment", "beta-target")
    assert after is not None
    assert after["metadata"]["uid"] == before["metadata"]["uid"]  # patched, not recreated
    assert after["spec"]["replicas"] == 3
    assert "nodeSelector" not in after["spec"]["template"]["spec"]  # a dropped field is removed, not left behind
    hash_key = "smartspec.io/config-hash"
    assert after["spec"]["template"]["metadata"]["annotations"][hash_key] != \
        before["spec"]["template"]["metadata"]["annotations"][hash_key]
    config = kube.get("ConfigMap", "beta-config")
    assert config is not None and config["data"]["SMARTSPEC_TARGET_MAX_LEN"] == "8192"
    assert len(kube.requests_for("Deployment", ("POST", "DELETE"))) == writes

    # Level-triggered: a child deleted behind the operator's back comes back (converge_interval_s).
    assert kube.delete("Service", "beta-target").status_code == 200
    wait_for(lambda: kube.get("Service", "beta-target"), 10, "the deleted Service recreated")

    # Speculation switched off: the draft's Deployment and Service go, the target stops dialling it.
    assert kube.patch("SpeculativeService", "beta", {"spec": {"draft": None}}).status_code == 200
    reconciled(kube, "beta", generation=3)
    assert kube.get("Deployment", "beta-draft") is None and kube.get("Service", "beta-draft") is None
    config = kube.get("ConfigMap", "beta-config")
    assert config is not None and "SMARTSPEC_TARGET_DRAFT_ADDRESS" not in config["data"]
    st = wait_for(lambda: status(kube, "SpeculativeService", "beta").get("draft", {}).get("ready") == "-"
                  and status(kube, "SpeculativeService", "beta"), 10, "draft shown as not deployed")
    assert st["target"]["desired"] == 3


def test_a_field_another_manager_owns_is_reported_and_never_overwritten(kube: KubeApi, operator: Operator,
                                                                       redis_db: Any) -> None:
    created(kube, service("zeta"))
    reconciled(kube, "zeta")
    managed = kube.existing("Deployment", "zeta-target")["metadata"]["managedFields"]
    owners = {(m["manager"], m["operation"]) for m in managed}
    assert owners == {("smartspec-operator", "Apply")}  # server-side apply under the operator's field manager
    # Someone scales the target by hand (kubectl scale, an autoscaler): spec.replicas is now theirs.
    assert kube.patch("Deployment", "zeta-target", {"spec": {"replicas": 5}}, manager="autoscaler").status_code == 200

    # A spec that wants 2 replicas: the apply conflicts, the status says with whom and on which field.
    model = {"name": "qwen-1.5b", "uri": "pvc://models/qwen-1.5b"}
    assert kube.patch("SpeculativeService", "zeta", {"spec": {"target": {"model": model, "replicas": 2}}}
                      ).status_code == 200

    def failed() -> dict[str, Any] | None:
        return next((c for c in status(kube, "SpeculativeService", "zeta").get("conditions", [])
                     if c["type"] == "Ready" and c["reason"] == "ApplyFailed"), None)
    cond = wait_for(failed, 20, "Ready=False ApplyFailed")
    assert "conflict" in cond["message"] and '"autoscaler"' in cond["message"] and ".spec.replicas" in cond["message"]
    assert kube.existing("Deployment", "zeta-target")["spec"]["replicas"] == 5  # not overwritten

    # The spec agreeing with the other manager's value resolves it: the field is shared, the apply goes through.
    assert kube.patch("SpeculativeService", "zeta", {"spec": {"target": {"model": model, "replicas": 5}}}
                      ).status_code == 200
    reconciled(kube, "zeta", generation=3)
    wait_for(lambda: failed() is None, 10, "ApplyFailed cleared")
    assert kube.existing("Deployment", "zeta-target")["spec"]["replicas"] == 5


def test_policy_applies_through_redis_without_touching_pods(kube: KubeApi, operator: Operator, redis_db: Any) -> None:
    client = redis_db.client()
    # A same-named service in another namespace, with its own policy: its keys are its own.
    other = service("gamma", policyRef={"name": "fast"})
    other["metadata"]["namespace"] = "other"
    created(kube, other)
    other_policy = policy("fast", maxSpeculationLength=2)
    other_policy["metadata"]["namespace"] = "other"
    created(kube, other_policy)
    wait_for(lambda: kube.get("Deployment", "gamma-controller", namespace="other"), 10, "the other gamma's objects")

    created(kube, service("gamma", policyRef={"name": "fast"}))
    st = reconciled(kube, "gamma")["status"]
    assert st["policy"]["applied"] is False and "not found" in st["policy"]["message"]
    assert client.get(policy_spec_key(rid("gamma"))) is None  # the controller uses its built-in default
    children = ("Deployment", "gamma-target"), ("Deployment", "gamma-draft"), ("Deployment", "gamma-controller"), \
        ("ConfigMap", "gamma-config")
    versions = {c: kube.existing(*c)["metadata"]["resourceVersion"] for c in children}

    created(kube, policy("fast", maxSpeculationLength=4))
    spec = wait_for(lambda: client.get(policy_spec_key(rid("gamma"))), 10, "the policy spec in Redis")
    wait_for(lambda: status(kube, "SpeculativeService", "gamma").get("policy", {}).get("applied"), 30,
             "the service's status.policy catching up with the late policy")
    theirs = wait_for(lambda: client.get(policy_spec_key(rid("gamma", "other"))), 10, "the other namespace's spec")
    assert json.loads(theirs)["maxSpeculationLength"] == 2
    assert json.loads(spec)["maxSpeculationLength"] == 4
    assert json.loads(spec)["hysteresis"] == 1.1  # with the CRD's defaults
    pst = wait_for(lambda: status(kube, "SpeculationPolicy", "fast").get("services") == ["gamma"]
                   and status(kube, "SpeculationPolicy", "fast"), 10, "policy status lists gamma")
    assert {c["type"]: c["status"] for c in pst["conditions"]} == {"Valid": "True", "Applied": "True"}

    assert kube.patch("SpeculationPolicy", "fast", {"spec": {"mode": "fixed", "fixedSpeculationLength": 2}}
                      ).status_code == 200
    wait_for(lambda: json.loads(client.get(policy_spec_key(rid("gamma"))) or "{}").get("mode") == "fixed", 10,
             "the updated spec in Redis")
    assert json.loads(client.get(policy_spec_key(rid("gamma"))))["fixedSpeculationLength"] == 2

    # Schema-valid but meaningless coefficients: the operator refuses them and keeps the last valid spec.
    bad = {"spec": {"costModel": {"source": "coefficients", "coefficients": {"verify": {"const": "fast"}}}}}
    assert kube.patch("SpeculationPolicy", "fast", bad).status_code == 200
    valid = wait_for(lambda: next((c for c in status(kube, "SpeculationPolicy", "fast").get("conditions", [])
                                   if c["type"] == "Valid" and c["status"] == "False"), None), 10, "Valid=False")
    assert "verify.const must be a number" in valid["message"]
    assert json.loads(client.get(policy_spec_key(rid("gamma"))))["mode"] == "fixed"

    # Policies are data, not config: not one Deployment or ConfigMap changed for any of it (the operator's
    # periodic server-side applies of unchanged objects are no-ops the API server does not write).
    assert {c: kube.existing(*c)["metadata"]["resourceVersion"] for c in children} == versions

    assert kube.delete("SpeculationPolicy", "fast").status_code == 200
    wait_for(lambda: client.get(policy_spec_key(rid("gamma"))) is None, 10, "the spec withdrawn with the policy")


def test_controller_status_flows_into_the_custom_resources(kube: KubeApi, operator: Operator, redis_db: Any,
                                                           loop_thread: LoopThread,
                                                           tiny_svc_models: dict[str, Any]) -> None:
    """CR -> operator -> Redis -> controller -> policy -> target, and back: target steps -> controller -> CR status."""
    created(kube, policy("tuned", maxSpeculationLength=5))
    created(kube, service("delta", policyRef={"name": "tuned"}))
    reconciled(kube, "delta")
    client = redis_db.client()
    wait_for(lambda: client.get(policy_spec_key(rid("delta"))), 10, "the spec in Redis")
    ctl = start_controller(loop_thread, redis_db.url, service=rid("delta"), interval_s=0.2, min_fit_samples=16)
    stack = None
    stopped = False
    try:
        doc = wait_for(lambda: published(client, rid("delta")), 10, "a published policy")
        assert doc.max_k == 5  # the CR's K reached the controller's policy
        stack = start_stack(loop_thread, tiny_svc_models, redis_url=redis_db.url, service=rid("delta"))
        wait_for(lambda: metric(stack.url, "smartspec_policy_version") >= 1, 10, "the target on the policy")
        for role in ("target", "draft", "controller"):  # what the Deployment controller would report
            assert kube.patch("Deployment", f"delta-{role}", {"status": {"readyReplicas": 1, "replicas": 1}},
                              sub="status").status_code == 200

        def ready() -> dict[str, Any] | None:
            cr = kube.get("SpeculativeService", "delta") or {}
            conds = {c["type"]: c for c in (cr.get("status") or {}).get("conditions", [])}
            ok = conds.get("Ready", {}).get("status") == "True" and conds.get("Degraded", {}).get("status") == "False"
            return cr if ok and cr["status"].get("goodput") else None

        # Measured goodput covers the last few seconds of decode steps: keep load on while waiting.
        done = threading.Event()

        url = stack.url

        def load() -> None:
            while not done.is_set():
                complete_many(url, ["def f(x):", "import os\n", "SELECT 1", "x = 1"], max_tokens=16)

        loader = threading.Thread(target=load, daemon=True)
        loader.start()
        try:
            cr = wait_for(ready, 60, "Ready=True, Degraded=False and measured goodput in status", every_s=0.1)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; status: {status(kube, 'SpeculativeService', 'delta')}") from None
        finally:
            done.set()
            loader.join(timeout=60)
        st = cr["status"]
        assert st["target"]["ready"] == "1/1" and st["draft"]["ready"] == "1/1"
        assert st["policyVersion"] >= 1 and st["lastDecision"].endswith("Z") and 0 <= st["meanK"] <= 5
        row = printer_row(cr)  # `kubectl get specsvc` has something in every column
        assert row["Ready"] == "True" and row["Target"] == "1/1" and row["Draft"] == "1/1"
        assert row["K"] is not None and row["Goodput"] > 0 and row["Age"]
        pol = wait_for(lambda: (p := kube.get("SpeculationPolicy", "tuned")) and (p.get("status") or {}).get("version")
                       and p, 10, "the policy's version in its status")
        assert pol["status"]["recommendedK"] and all(0 <= k <= 5 for k in pol["status"]["recommendedK"].values())
        assert printer_row(pol) == {"Mode": "goodput", "K-Max": 5, "Version": pol["status"]["version"],
                                    "Age": pol["metadata"]["creationTimestamp"]}

        # The target first: idle, it still shares this process (and the API emulator's GIL) with the waits.
        stop_all(stack.stop, lambda: loop_thread.run(ctl.stop()))
        stack, stopped = None, True
        try:
            degraded = wait_for(lambda: next((c for c in status(kube, "SpeculativeService", "delta").get(
                "conditions", []) if c["type"] == "Degraded" and c["status"] == "True"), None),
                30, "Degraded once the controller goes quiet (stale after 4 s)", every_s=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; status: {status(kube, 'SpeculativeService', 'delta')}; operator log:\n"
                                 f"{operator.output()[-3000:]}") from None
        assert degraded["reason"] == "TelemetryStale"
    finally:
        stop_all(*([] if stopped else [lambda: loop_thread.run(ctl.stop())]),
                 *([stack.stop] if stack is not None else []))


def test_delete_cleans_redis_and_leaves_children_to_the_garbage_collector(kube: KubeApi, operator: Operator,
                                                                          redis_db: Any) -> None:
    created(kube, policy("default"))
    cr = created(kube, service("omega"))
    reconciled(kube, "omega")
    client = redis_db.client()
    wait_for(lambda: client.get(policy_spec_key(rid("omega"))), 10, "the spec in Redis")
    client.xadd(steps_key(rid("omega")), {"ts": "1"})  # as a target would
    finalizers = (kube.get("SpeculativeService", "omega") or {})["metadata"].get("finalizers")
    assert finalizers == ["smartspec.io/cleanup"]

    assert kube.delete("SpeculativeService", "omega").status_code == 200
    wait_for(lambda: kube.get("SpeculativeService", "omega") is None, 30, "the finalizer released")
    assert client.exists(*service_keys(rid("omega"))) == 0
    # The pods (Deployments) are stopped before the keys go, so nothing writes them again; each was
    # deleted with foreground propagation (it stays until its pods are gone).
    for role in ("target", "draft", "controller"):
        assert kube.get("Deployment", f"omega-{role}") is None
    deletes = [r for r in kube.requests_for("Deployment", ("DELETE",)) if "/omega-" in r.url.path]
    assert len(deletes) == 3 and all(r.data == {"apiVersion": "v1", "kind": "DeleteOptions",
                                                "propagationPolicy": "Foreground"} for r in deletes)
    # kmock has no garbage collector: a real cluster's deletes these because each names its owner.
    svc = kube.get("Service", "omega-target")
    assert svc is not None and svc["metadata"]["ownerReferences"][0]["uid"] == cr["metadata"]["uid"]


@pytest.mark.parametrize("obj, reason", [
    (policy("k-too-big", maxSpeculationLength=17), "maxSpeculationLength: 17 is greater than the maximum of 16"),
    (policy("bad-mode", mode="sometimes"), "'sometimes' is not one of"),
    (policy("fixed-over-max", maxSpeculationLength=2, fixedSpeculationLength=3),
     "fixedSpeculationLength must be <= maxSpeculationLength"),
    (policy("no-preset", costModel={"source": "preset"}), "needs costModel.preset"),
    (service("no-draft-model", draft={"method": "draftModel"}), "draft.method draftModel needs draft.model"),
    (service("Bad.Name"), "DNS-1035"),
    (service("neg", target={"model": {"name": "m"}, "replicas": -1}), "less than the minimum of 0"),
])
def test_invalid_objects_are_refused_with_422(kube: KubeApi, obj: dict[str, Any], reason: str) -> None:
    r = kube.create(obj)
    assert r.status_code == 422, r.text
    assert reason in r.json()["message"]
    assert kube.get(obj["kind"], obj["metadata"]["name"]) is None  # nothing stored


def test_every_api_call_the_operator_made_is_allowed_by_the_charts_rbac(kube: KubeApi, operator: Operator) -> None:
    """Runs last in this module: the operator's real traffic (kopf's and its own) against the rendered ClusterRole
    (cluster-wide, as this operator runs; the namespaced default puts the same rules in a Role)."""
    from tests.helm.test_chart import render  # the chart, rendered by the real helm binary

    docs = render(None, ("operator.clusterWide=true",))
    role = next(d for d in docs if d.get("kind") == "ClusterRole" and d["metadata"]["name"].endswith("operator"))
    allowed = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    missing = set()
    for req in kube.operator_requests():
        group, resource, verb = req
        if (group, resource, verb) not in allowed:
            missing.add(req)
    assert kube.operator_requests(), "no operator traffic recorded"
    assert not missing, f"the chart's RBAC forbids calls the operator makes: {sorted(missing)}"
