"""gRPC callers without credentials (real servers, tiny models): the draft's Session and the target's Generate
need a key; health stays open for probes; the target presents its token to the draft and speculates."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from smartspec.auth import bearer, keys_for
from smartspec.errors import InvalidRequest
from smartspec.v1 import draft_pb2, draft_pb2_grpc, target_pb2, target_pb2_grpc
from smartspec_draft import server as draft_server
from smartspec_draft.settings import DraftSettings
from smartspec_target import server as target_server
from smartspec_target.settings import TargetSettings
from tests.integration.conftest import LoopThread

TOKEN, API_KEY = secrets.token_urlsafe(32), secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def secured(loop_thread: LoopThread, tiny_svc_models: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, Any]]:
    d = tmp_path_factory.mktemp("secrets")
    (d / "peer").write_text(TOKEN + "\n")
    (d / "api").write_text(API_KEY + "\n")
    draft, _ = loop_thread.run(draft_server.start(DraftSettings(model=tiny_svc_models["draft"], port=0,
                                                                dtype="float32", auth_token_file=str(d / "peer"))))
    target = loop_thread.run(target_server.start(TargetSettings(
        model=tiny_svc_models["target"], http_port=0, grpc_port=0, dtype="float32", policy="fixed", fixed_k=3,
        draft_address=f"127.0.0.1:{draft.port}", draft_token_file=str(d / "peer"), api_key_file=str(d / "api"))))
    yield {"draft": f"127.0.0.1:{draft.port}", "target": target, "dir": d}
    loop_thread.run(target.drain_and_stop(10))
    loop_thread.run(draft.stop())


def test_the_draft_refuses_sessions_without_the_token_and_the_target_presents_it(secured: dict[str, Any]) -> None:
    with grpc.insecure_channel(secured["draft"]) as channel:
        stub = draft_pb2_grpc.DraftServiceStub(channel)
        for metadata in (None, bearer("wrong-token-0123456789abc")):
            with pytest.raises(grpc.RpcError) as info:
                stub.GetInfo(draft_pb2.DraftInfoRequest(), timeout=5, metadata=metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            # Before: an anonymous Session could admit sequences until every draft slot was taken.
            calls = stub.Session(iter([draft_pb2.SessionRequest(step_id=1, release=draft_pb2.Release(seq_ids=[1]))]),
                                 metadata=metadata)
            with pytest.raises(grpc.RpcError) as info:
                list(calls)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert stub.GetInfo(draft_pb2.DraftInfoRequest(), timeout=5, metadata=bearer(TOKEN)).model.model_id
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes carry no key
    # The target holds the token: it speculates through the authenticated session.
    url = secured["target"].base_url
    r = httpx.post(f"{url}/v1/completions", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60,
                   json={"model": "target", "prompt": "def f(x):", "max_tokens": 16, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["speculation"]["draft_tokens"] > 0


def test_the_targets_generate_needs_the_api_key(secured: dict[str, Any]) -> None:
    target = secured["target"]
    req = target_pb2.GenerateRequest(text="def f(x):", max_tokens=4)
    with grpc.insecure_channel(f"127.0.0.1:{target.grpc.port}") as channel:
        stub = target_pb2_grpc.TargetServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            list(stub.Generate(req, timeout=30))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        out = list(stub.Generate(req, timeout=30, metadata=bearer(API_KEY)))
        assert sum(len(m.token_ids) for m in out) == 4


def test_a_draft_on_a_reachable_host_without_tokens_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="--auth-token-file"):
        keys_for("draft gRPC", None, "0.0.0.0", False, setting="auth_token_file")
    with pytest.raises(InvalidRequest, match="at least 16 characters"):
        (tmp_path / "short").write_text("abc\n")
        keys_for("draft gRPC", str(tmp_path / "short"), "0.0.0.0", False, setting="auth_token_file")
    # The service checks before it loads anything (the model folder here does not even exist).
    with pytest.raises(InvalidRequest, match=r"draft gRPC would serve 0\.0\.0\.0 without keys"):
        asyncio.run(draft_server.start(DraftSettings(model=str(tmp_path / "none"), host="0.0.0.0", port=0)))
