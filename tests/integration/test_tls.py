"""Encryption between the parts (real servers, tiny models, real redis-server): mutual TLS target <-> draft and
target -> controller OTLP, Redis over TLS; callers without a certificate from the right CA get nowhere."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc

from smartspec import tls
from smartspec.auth import bearer
from smartspec.errors import InvalidRequest
from smartspec.telemetry.keys import steps_key
from smartspec.v1 import draft_pb2, draft_pb2_grpc
from smartspec_draft import server as draft_server
from smartspec_draft.settings import DraftSettings
from tests.integration.conftest import LoopThread
from tests.integration.control_plane import otlp_reaches, published, start_controller, stop_all, wait_for
from tests.integration.redis_server import RedisServer
from tests.integration.services import start_stack

TOKEN = "peer-token-" + "t" * 32


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The service's trust domain, and a stranger's (a valid certificate from another CA)."""
    d = tmp_path_factory.mktemp("tls")
    (d / "peer").write_text(TOKEN + "\n")
    return {"mine": str(tls.write_dir(d / "mine", tls.issue(["127.0.0.1", "localhost"]))),
            "stranger": str(tls.write_dir(d / "stranger", tls.issue(["127.0.0.1"]))),
            "token": str(d / "peer")}


@pytest.fixture(scope="module")
def tls_draft(loop_thread: LoopThread, tiny_svc_models: dict[str, Any], certs: dict[str, str]) -> Iterator[str]:
    running, _ = loop_thread.run(draft_server.start(DraftSettings(
        model=tiny_svc_models["draft"], port=0, dtype="float32", auth_token_file=certs["token"],
        tls_dir=certs["mine"])))
    yield f"127.0.0.1:{running.port}"
    loop_thread.run(running.stop())


def _get_info(channel: grpc.Channel) -> str:
    stub = draft_pb2_grpc.DraftServiceStub(channel)
    return str(stub.GetInfo(draft_pb2.DraftInfoRequest(), timeout=5, metadata=bearer(TOKEN)).model.model_id)


def _credentials(directory: str, with_cert: bool = True) -> grpc.ChannelCredentials:
    f = tls.load(directory, "tls_dir")
    if not with_cert:
        return grpc.ssl_channel_credentials(root_certificates=f.ca)
    return grpc.ssl_channel_credentials(root_certificates=f.ca, private_key=f.key, certificate_chain=f.cert)


def test_the_target_speculates_over_mutual_tls_and_the_draft_refuses_everyone_else(
        tls_draft: str, loop_thread: LoopThread, tiny_svc_models: dict[str, Any], certs: dict[str, str]) -> None:
    # Before: the draft served plaintext only; the peer token crossed the network readable.
    with grpc.secure_channel(tls_draft, _credentials(certs["mine"])) as channel:
        assert _get_info(channel)
    refused = {
        "plaintext, with the token": grpc.insecure_channel(tls_draft),
        "TLS without a client certificate": grpc.secure_channel(tls_draft, _credentials(certs["mine"], False)),
        "a certificate from another CA": grpc.secure_channel(
            tls_draft, grpc.ssl_channel_credentials(root_certificates=tls.load(certs["mine"], "x").ca,
                                                    private_key=tls.load(certs["stranger"], "x").key,
                                                    certificate_chain=tls.load(certs["stranger"], "x").cert)),
    }
    for what, channel in refused.items():
        with channel, pytest.raises(grpc.RpcError) as info:
            _get_info(channel)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE, what
    # A target that does not trust the draft's CA never opens a session (its server identity is checked too).
    with grpc.secure_channel(tls_draft, _credentials(certs["stranger"])) as channel, \
            pytest.raises(grpc.RpcError):
        _get_info(channel)
    stack = start_stack(loop_thread, tiny_svc_models, draft=tls_draft, policy="fixed", fixed_k=3,
                        draft_token_file=certs["token"], tls_dir=certs["mine"])
    try:
        r = httpx.post(f"{stack.url}/v1/completions", timeout=60,
                       json={"model": "target", "prompt": "def f(x):", "max_tokens": 16, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["speculation"]["draft_tokens"] > 0
        assert httpx.get(f"{stack.url}/health", timeout=5).json() == {"status": "ok"}
    finally:
        stack.stop()


def test_a_rotated_certificate_is_served_from_the_next_handshake(loop_thread: LoopThread, tmp_path: Path) -> None:
    # What a cert-manager renewal looks like from inside the pod: the mounted files change under a running server.
    d = tls.write_dir(tmp_path / "tls", tls.issue(["127.0.0.1"]))
    (tmp_path / "peer").write_text(TOKEN + "\n")
    running, _ = loop_thread.run(draft_server.start(DraftSettings(
        method="ngram", port=0, auth_token_file=str(tmp_path / "peer"), tls_dir=str(d))))
    try:
        old = _credentials(str(d))
        tls.write_dir(d, tls.issue(["127.0.0.1"]))  # a new CA too: only the new certificates work now
        with grpc.secure_channel(f"127.0.0.1:{running.port}", _credentials(str(d))) as channel:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        with grpc.secure_channel(f"127.0.0.1:{running.port}", old) as channel, pytest.raises(grpc.RpcError):
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    finally:
        loop_thread.run(running.stop())


def test_otlp_to_the_controller_over_mutual_tls(loop_thread: LoopThread, redis_db: Any,
                                                 tiny_svc_models: dict[str, Any], certs: dict[str, str]) -> None:
    ctl = start_controller(loop_thread, redis_db.url, otlp_token_file=certs["token"], tls_dir=certs["mine"])
    try:
        otlp_reaches(loop_thread, tiny_svc_models, ctl, otlp_token_file=certs["token"], otlp_tls_dir=certs["mine"])
        for channel in (grpc.insecure_channel(f"127.0.0.1:{ctl.otlp_port}"),
                        grpc.secure_channel(f"127.0.0.1:{ctl.otlp_port}", _credentials(certs["mine"], False))):
            with channel, pytest.raises(grpc.RpcError) as info:
                metrics_service_pb2_grpc.MetricsServiceStub(channel).Export(
                    metrics_service_pb2.ExportMetricsServiceRequest(), timeout=5, metadata=bearer(TOKEN))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        loop_thread.run(ctl.stop())


def test_redis_over_tls_for_the_controller_and_the_targets(loop_thread: LoopThread, tiny_svc_models: dict[str, Any],
                                                           certs: dict[str, str]) -> None:
    server = RedisServer(tls_dir=certs["mine"]).start()
    client = server.client()
    ctl = None
    stack = None
    try:
        assert server.url.startswith("rediss://")
        ctl = start_controller(loop_thread, server.url, redis_tls_dir=certs["mine"])
        wait_for(lambda: published(client), 10, "a policy published over TLS")
        stack = start_stack(loop_thread, tiny_svc_models, draft=None, redis_url=server.url,
                            redis_tls_dir=certs["mine"])
        r = httpx.post(f"{stack.url}/v1/completions", timeout=60,
                       json={"model": "target", "prompt": "x", "max_tokens": 4, "ignore_eos": True})
        assert r.status_code == 200
        wait_for(lambda: client.xlen(steps_key("smartspec")) > 0, 10, "step records over TLS")
        # Plaintext to the TLS port, and TLS trusting only the system's CAs, both fail.
        for url, kwargs in ((server.url.replace("rediss", "redis"), {}), (server.url, tls.redis_kwargs(server.url,
                                                                                                        None))):
            with redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2, **kwargs) as stranger, \
                    pytest.raises(redis.ConnectionError):
                stranger.ping()
        with pytest.raises(InvalidRequest, match="not rediss://"):
            tls.redis_kwargs("redis://127.0.0.1:1", certs["mine"])
    finally:
        stop_all(*(f for f in (stack.stop if stack else None,
                               (lambda: loop_thread.run(ctl.stop())) if ctl else None) if f),
                 client.close, server.stop)
