"""Hostile and careless callers of the OpenAI API (real servers, tiny models): no key, huge bodies, floods,
paths and methods that do not exist. Each refusal is a 4xx in OpenAI's error shape, and nothing is lost."""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from smartspec.auth import ApiKeys, bearer
from smartspec.errors import InvalidRequest
from smartspec.v1 import target_pb2, target_pb2_grpc
from smartspec_target.server import _api_keys
from smartspec_target.settings import TargetSettings
from tests.integration.conftest import LoopThread
from tests.integration.services import Stack, start_stack

MODEL = "target"
KEY = secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def guarded(loop_thread: LoopThread, tiny_svc_models: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Stack]:
    keys = tmp_path_factory.mktemp("keys") / "api-keys"
    keys.write_text(f"# rotated 2026-11\n{secrets.token_urlsafe(32)}\n{KEY}\n")
    s = start_stack(loop_thread, tiny_svc_models, policy="fixed", fixed_k=2, max_len=256, api_key_file=str(keys),
                    max_body_bytes=8192, max_batch_size=1, max_queue=1)
    yield s
    s.stop()


def _auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _body(**kw: Any) -> dict[str, Any]:
    return {"model": MODEL, "prompt": "def f(x):", "max_tokens": 4, "temperature": 0, **kw}


def _openai_error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return dict(err)


def test_v1_needs_a_valid_key_and_probes_do_not(guarded: Stack) -> None:
    url = guarded.url
    for headers in ({}, _auth("not-the-key-0123456789"), {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
        r = httpx.post(f"{url}/v1/completions", json=_body(), headers=headers)
        assert _openai_error(r, 401)["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
        assert KEY not in r.text
    assert httpx.get(f"{url}/v1/models").status_code == 401
    assert httpx.get(f"{url}/v1/models", headers=_auth()).status_code == 200
    r = httpx.post(f"{url}/v1/completions", json=_body(), headers=_auth())
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
    assert httpx.get(f"{url}/health").status_code == 200  # kubelet probes carry no key
    assert httpx.get(f"{url}/metrics").status_code == 200  # neither does a Prometheus scrape


def test_a_target_on_a_reachable_host_without_keys_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="without keys"):
        _api_keys(TargetSettings(model="m", host="0.0.0.0"))
    assert _api_keys(TargetSettings(model="m", host="0.0.0.0", allow_unauthenticated=True)) is None
    assert _api_keys(TargetSettings(model="m", host="127.0.0.1")) is None
    weak = tmp_path / "weak"
    weak.write_text("hunter2\n")
    with pytest.raises(InvalidRequest, match="at least 16 characters"):
        ApiKeys.from_file(weak)
    with pytest.raises(InvalidRequest, match="cannot read"):
        ApiKeys.from_file(tmp_path / "missing")


def test_bodies_past_the_limit_get_413_before_anything_parses_them(guarded: Stack) -> None:
    url = guarded.url
    big = _body(prompt="x" * 10_000)
    _openai_error(httpx.post(f"{url}/v1/completions", json=big, headers=_auth()), 413)

    def chunked() -> Iterator[bytes]:  # no Content-Length: cut off once the bytes pass the limit
        yield b'{"model": "target", "prompt": "'
        for _ in range(100):
            yield b"y" * 1000
        yield b'"}'

    r = httpx.post(f"{url}/v1/completions", content=chunked(), headers={**_auth(), "content-type": "application/json"})
    assert _openai_error(r, 413)["code"] == "request_too_large"
    assert httpx.post(f"{url}/v1/completions", json=_body(), headers=_auth()).status_code == 200


def test_a_prompt_longer_than_any_context_is_refused_before_tokenizing(loop_thread: LoopThread,
                                                                        tiny_svc_models: dict[str, Any]) -> None:
    s = start_stack(loop_thread, tiny_svc_models, draft=None, max_len=64, max_body_bytes=1 << 20)
    try:
        r = httpx.post(f"{s.url}/v1/completions", json=_body(prompt="word " * 100_000), timeout=30)
        err = _openai_error(r, 400)
        assert err["param"] == "prompt" and "characters" in err["message"]
        r = httpx.post(f"{s.url}/v1/chat/completions", timeout=30,
                       json={"model": MODEL, "messages": [{"role": "user", "content": "a " * 100_000}]})
        assert _openai_error(r, 400)["param"] == "messages"
        # The gRPC API takes the same path: the length check first, then tokenizing off the event loop.
        with grpc.insecure_channel(s.grpc_address) as channel, pytest.raises(grpc.RpcError) as info:
            list(target_pb2_grpc.TargetServiceStub(channel).Generate(
                target_pb2.GenerateRequest(text="word " * 100_000, max_tokens=4), timeout=30))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "characters" in info.value.details()
    finally:
        s.stop()


def test_stop_strings_and_names_are_bounded(guarded: Stack) -> None:
    # Before: any number of stop strings of any length (each matched against the text every step) over gRPC,
    # any length over HTTP, and a model name of any length echoed back in the error.
    url = guarded.url
    for stop, what in ((["x"] * 17, "at most 16 stop strings"), (["y" * 257], "at most 256 characters")):
        r = httpx.post(f"{url}/v1/completions", json=_body(stop=stop), headers=_auth())
        err = _openai_error(r, 400)
        assert err["param"] == "stop" and what in err["message"]
        with grpc.insecure_channel(guarded.grpc_address) as channel, pytest.raises(grpc.RpcError) as info:
            list(target_pb2_grpc.TargetServiceStub(channel).Generate(
                target_pb2.GenerateRequest(text="def f(x):", max_tokens=4, stop=stop), timeout=30,
                metadata=bearer(KEY)))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and what in info.value.details()
    for field in ("model", "user"):
        r = httpx.post(f"{url}/v1/completions", json=_body(**{field: "m" * 4000}), headers=_auth())
        err = _openai_error(r, 400)
        assert err["param"] == field and "m" * 300 not in r.text
    assert httpx.post(f"{url}/v1/completions", json=_body(stop=["\n"] * 16), headers=_auth()).status_code == 200


def test_a_flood_is_shed_with_429_and_retry_after_and_the_admitted_finish(guarded: Stack) -> None:
    # One slot and a queue of one: of six at once, at most two are held, the rest are told when to retry.
    def call(_: int) -> httpx.Response:
        return httpx.post(f"{guarded.url}/v1/completions", json=_body(max_tokens=48, ignore_eos=True),
                          headers=_auth(), timeout=120)

    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(call, range(6)))
    shed = [r for r in replies if r.status_code == 429]
    done = [r for r in replies if r.status_code == 200]
    assert len(done) + len(shed) == 6 and len(done) >= 2 and shed
    for r in shed:
        assert _openai_error(r, 429)["type"] == "capacity_exceeded" and r.headers["retry-after"] == "1"
    assert all(r.json()["usage"]["completion_tokens"] == 48 for r in done)
    text = httpx.get(f"{guarded.url}/metrics").text
    assert f"smartspec_requests_shed_total {float(len(shed))}" in text


def test_unknown_paths_and_methods_answer_in_openai_error_shape(guarded: Stack) -> None:
    url = guarded.url
    assert _openai_error(httpx.get(f"{url}/v1/nope", headers=_auth()), 404)["type"] == "not_found_error"
    assert _openai_error(httpx.get(f"{url}/nope"), 404)
    err = _openai_error(httpx.get(f"{url}/v1/completions", headers=_auth()), 405)
    assert "GET is not allowed" in err["message"]
    r = httpx.post(f"{url}/v1/completions", content=b'{"model": "target", "prompt": "\xff\xfe"}',
                   headers={**_auth(), "content-type": "application/json"})
    assert _openai_error(r, 400)["type"] == "invalid_request_error"


def test_health_answers_while_a_prompt_is_tokenized(loop_thread: LoopThread, tiny_svc_models: dict[str, Any]) -> None:
    # Tokenizing runs off the event loop (before: a 10 MB prompt held /health for 12 s). A tokenizer that
    # cannot finish until /health has answered shows it without timing anything.
    s = start_stack(loop_thread, tiny_svc_models, draft=None, max_len=256)
    ctx = s.target.ctx
    real, health_seen = ctx.tokenizer, threading.Event()

    class Held:
        def __getattr__(self, name: str) -> Any:
            return getattr(real, name)

        def __call__(self, *args: Any, **kw: Any) -> Any:
            assert health_seen.wait(30), "/health never answered while the prompt was being tokenized"
            return real(*args, **kw)

    ctx.tokenizer = Held()
    try:
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, f"{s.url}/v1/completions", json=_body(), timeout=60)
            time.sleep(0.2)  # the request is in the tokenizer now
            assert httpx.get(f"{s.url}/health", timeout=10).status_code == 200
            health_seen.set()
            assert pending.result().status_code == 200
    finally:
        health_seen.set()
        ctx.tokenizer = real
        s.stop()


def test_slow_headers_lose_the_connection_and_slow_bodies_get_408(loop_thread: LoopThread,
                                                                  tiny_svc_models: dict[str, Any]) -> None:
    # Before: a client that connected and sent nothing, or trickled its request, was never timed out
    # (~22,500 such sockets exhausted the target's file descriptors).
    s = start_stack(loop_thread, tiny_svc_models, draft=None, header_timeout_s=0.5, body_timeout_s=0.5)
    host, port = "127.0.0.1", s.target.http_port
    try:
        with socket.create_connection((host, port), timeout=10) as silent:
            silent.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # ... and the rest never comes
            silent.settimeout(5)
            assert silent.recv(1024) == b"", "the server kept a connection whose headers never arrived"
        with socket.create_connection((host, port), timeout=10) as slow:
            slow.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"model\": ")  # the body stops here
            slow.settimeout(5)
            reply = b""
            while chunk := slow.recv(4096):  # headers and body may come in separate segments; it closes after
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 408") and b"request_timeout" in reply
        assert httpx.get(f"{s.url}/health").status_code == 200
    finally:
        s.stop()
