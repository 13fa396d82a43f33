"""Client disconnects free target and draft slots; draining finishes running requests and refuses new ones."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx

from smartspec.telemetry.metrics import counter_value
from tests.integration.conftest import LoopThread
from tests.integration.services import start_stack


def test_client_disconnect_cancels_and_frees_slots(loop_thread: LoopThread, tiny_svc_models: dict[str, Any]) -> None:
    stack = start_stack(loop_thread, tiny_svc_models, policy="fixed", fixed_k=3, max_len=4096)
    try:
        core = stack.draft[1].core
        body = {"model": "target", "prompt": "hello", "max_tokens": 1000, "temperature": 0, "ignore_eos": True,
                "stream": True}
        with httpx.stream("POST", f"{stack.url}/v1/completions", json=body, timeout=60) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break  # got one chunk; leaving the block drops the connection
        deadline = time.monotonic() + 10
        runner = stack.target.engine.scheduler.engine.runner
        while time.monotonic() < deadline and (stack.target.engine.in_flight or core.live or runner.num_sequences):
            time.sleep(0.05)
        assert stack.target.engine.in_flight == 0 and runner.num_sequences == 0  # target slot freed
        assert core.live == 0  # draft state released over the stream
        emitted = counter_value(httpx.get(f"{stack.url}/metrics").text, "smartspec_generation_tokens_total")
        assert 0 < emitted < 1000  # it was cut short, not run to the end
    finally:
        stack.stop()


def test_drain_finishes_running_requests_and_refuses_new_ones(
    loop_thread: LoopThread, tiny_svc_models: dict[str, Any]
) -> None:
    stack = start_stack(loop_thread, tiny_svc_models, policy="off", max_len=4096)
    long_body = {"model": "target", "prompt": "hello", "max_tokens": 1000, "temperature": 0, "ignore_eos": True}
    result: dict[str, Any] = {}

    async def long_request() -> None:
        async with httpx.AsyncClient(timeout=120) as client:
            r = await client.post(f"{stack.url}/v1/completions", json=long_body)
            result["status"], result["body"] = r.status_code, r.json()

    running = asyncio.run_coroutine_threadsafe(long_request(), loop_thread.loop)
    deadline = time.monotonic() + 10
    while stack.target.engine.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    draining = asyncio.run_coroutine_threadsafe(stack.target.drain_and_stop(60), loop_thread.loop)
    time.sleep(0.05)
    refused = httpx.post(f"{stack.url}/v1/completions", json={**long_body, "max_tokens": 2}, timeout=10)
    assert refused.status_code == 503 and refused.json()["error"]["type"] == "service_unavailable"
    assert httpx.get(f"{stack.url}/health").status_code == 503
    running.result(60)
    draining.result(60)
    assert result["status"] == 200 and result["body"]["usage"]["completion_tokens"] == 1000
    loop_thread.run(stack.draft[0].stop())
