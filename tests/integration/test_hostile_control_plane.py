"""Hostile input to the control plane (real redis-server, controller in process): what a pod that can write
to the shared Redis could plant, and what the controller and the fleet do with it."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from smartspec.auth import bearer
from smartspec.engine.engine import StepStats
from smartspec.policy.limits import MAX_POLICY_VERSION
from smartspec.telemetry import records
from smartspec.telemetry.keys import policy_key, status_key, steps_key
from smartspec.telemetry.metrics import counter_value
from smartspec_controller.otlp_receiver import MAX_INSTANCES
from tests.integration.conftest import LoopThread
from tests.integration.control_plane import otlp_reaches, published, start_controller, stop_all, wait_for


def _doc_json(version: int, **kw: Any) -> str:
    now = time.time()
    doc = {"schema_version": 1, "service": "smartspec", "version": version, "mode": "off", "max_k": 0, "fixed_k": 0,
           "hysteresis": 1.1, "cost_model": {"verify": {"const": 0.01}}, "issued_at": now, "expires_at": now + 600,
           "decided_by": "intruder", **kw}
    return json.dumps(doc)


def test_a_planted_version_past_two_to_the_53_does_not_lock_publishing(loop_thread: LoopThread,
                                                                        redis_db: Any) -> None:
    # Before: Lua compared versions as doubles, 2^60 + 1 == 2^60, and the controller logged "not overwriting"
    # every second for good while /health said ok.
    client = redis_db.client()
    client.set(policy_key("smartspec"), _doc_json(2**60))
    ctl = start_controller(loop_thread, redis_db.url)
    try:
        doc = wait_for(lambda: (d := client.get(policy_key("smartspec"))) and json.loads(d)["decided_by"] != "intruder"
                       and published(client), 5, "the controller's own policy over the invalid one")
        assert doc.version == 1
        assert httpx.get(f"http://127.0.0.1:{ctl.http_port}/health", timeout=5).status_code == 200
    finally:
        stop_all(lambda: loop_thread.run(ctl.stop()), client.close)


def test_a_controller_that_cannot_publish_says_so_on_health_and_in_its_status(loop_thread: LoopThread,
                                                                              redis_db: Any) -> None:
    client = redis_db.client()
    client.set(policy_key("smartspec"), _doc_json(MAX_POLICY_VERSION))  # valid, and no version after it
    ctl = start_controller(loop_thread, redis_db.url)
    health = f"http://127.0.0.1:{ctl.http_port}/health"
    try:
        r = wait_for(lambda: (r := httpx.get(health, timeout=5)).status_code == 503 and r, 5, "a degraded /health")
        assert "largest there is" in r.json()["publish_error"] and r.json()["redis"] is True
        status = wait_for(lambda: (s := client.get(status_key("smartspec"))) and json.loads(s), 5, "a status")
        assert "delete the key" in status["publish_error"]
        client.delete(policy_key("smartspec"))  # what the message says to do
        doc = wait_for(lambda: published(client), 5, "a policy after the key was deleted")
        assert doc.version == 1 and doc.decided_by != "intruder"
        wait_for(lambda: httpx.get(health, timeout=5).status_code == 200, 5, "/health ok again")
    finally:
        stop_all(lambda: loop_thread.run(ctl.stop()), client.close)


def test_step_records_with_impossible_values_are_skipped_not_fitted(loop_thread: LoopThread, redis_db: Any) -> None:
    # Before: NaN or absurd times went into the fleet fit; now they are counted as bad records.
    client = redis_db.client()
    ctl = start_controller(loop_thread, redis_db.url)
    try:
        good = StepStats(step_id=1, batch_size=2, num_prefills=0, ks=[2, 2], num_proposed_per_pos=[2, 2],
                         num_accepted_per_pos=[2, 1], num_emitted=5, context_tokens=40, num_forwards=1, real_tokens=6,
                         padded_tokens=6, draft_s=0.01, verify_s=0.02, overhead_s=0.001)
        fields = records.encode(good, "r0", time.time())
        hostile = [{"verify_s": "nan"}, {"draft_s": "-1"}, {"verify_s": "1e300"}, {"batch_size": "-3"},
                   {"batch_size": "100000000"}, {"max_k": "99"}, {"replica": "r" * 10_000},
                   {"acceptance": json.dumps({f"c{i}": [[1], [1]] for i in range(1000)})},
                   {"acceptance": json.dumps({"default": [[1], [2]]})}, {"ts": "inf"}]
        for change in hostile:
            client.xadd(steps_key("smartspec"), {**fields, **change})
        client.xadd(steps_key("smartspec"), fields)
        wait_for(lambda: ctl.window.records == 1, 5, "the one good record")
        bad = counter_value(ctl.metrics.prometheus_text().decode(), "smartspec_controller_bad_records_total")
        assert bad == len(hostile)
        assert all(s.total_s < 1.0 for s in ctl.window.samples)
    finally:
        stop_all(lambda: loop_thread.run(ctl.stop()), client.close)



def _export(instance: str, running: float) -> metrics_service_pb2.ExportMetricsServiceRequest:
    attr = common_pb2.KeyValue(key="service.instance.id", value=common_pb2.AnyValue(string_value=instance))
    gauge = metrics_pb2.Metric(name="smartspec_num_requests_running",
                               gauge=metrics_pb2.Gauge(data_points=[metrics_pb2.NumberDataPoint(as_double=running)]))
    return metrics_service_pb2.ExportMetricsServiceRequest(resource_metrics=[metrics_pb2.ResourceMetrics(
        resource=resource_pb2.Resource(attributes=[attr]), scope_metrics=[metrics_pb2.ScopeMetrics(metrics=[gauge])])])


def test_otlp_needs_the_peer_token_and_what_it_holds_is_bounded(loop_thread: LoopThread, redis_db: Any,
                                                                 tmp_path: Path) -> None:
    # Before: anyone could push metrics: forged ones set the "current load" to 64 with nothing running, and
    # 20,000 made-up instances stayed in memory for good.
    token = "peer-token-" + "x" * 32
    (tmp_path / "peer").write_text(token + "\n")
    ctl = start_controller(loop_thread, redis_db.url, otlp_token_file=str(tmp_path / "peer"))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{ctl.otlp_port}") as channel:
            stub = metrics_service_pb2_grpc.MetricsServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.Export(_export("forger", 64.0), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED and not ctl.view.values
            stub.Export(_export("target-0", 3.0), timeout=5, metadata=bearer(token))
            assert ctl.view.latest("smartspec_num_requests_running", max_age_s=5) == {"target-0": 3.0}
            for i in range(0, MAX_INSTANCES + 200, 100):  # a sender with the token still cannot grow it without end
                req = _export(f"made-up-{i}", 1.0)
                for j in range(1, 100):
                    req.resource_metrics.append(_export(f"made-up-{i + j}", 1.0).resource_metrics[0])
                stub.Export(req, timeout=5, metadata=bearer(token))
        assert len(ctl.view.values) == MAX_INSTANCES and ctl.view.refused > 0
    finally:
        loop_thread.run(ctl.stop())


def test_a_target_with_the_peer_token_reaches_an_authenticated_receiver(loop_thread: LoopThread, redis_db: Any,
                                                                       tiny_svc_models: dict[str, Any],
                                                                       tmp_path: Path) -> None:
    (tmp_path / "peer").write_text("peer-token-" + "y" * 32 + "\n")
    ctl = start_controller(loop_thread, redis_db.url, otlp_token_file=str(tmp_path / "peer"))
    try:
        otlp_reaches(loop_thread, tiny_svc_models, ctl, otlp_token_file=str(tmp_path / "peer"))
    finally:
        loop_thread.run(ctl.stop())
