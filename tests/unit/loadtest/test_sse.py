"""SSE parsing and per-request measurement of the load generator (the HTTP side is an httpx transport
that replays a recorded stream; the real server is exercised by tests/integration/test_bench_smoke.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx

from smartspec.loadtest.loadgen import SSEParser, StreamStats, parse_events, request_body, send
from smartspec.sim.report import RequestRecord


def chunk(content: str | None = None, usage: dict[str, Any] | None = None, finish: str | None = None) -> str:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]
    return json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": choices, "usage": usage})


USAGE = {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15,
         "speculation": {"draft_tokens": 6, "accepted_tokens": 5, "acceptance_rate": 5 / 6, "mean_k": 3.0}}


def test_parser_joins_data_lines_and_skips_comments_and_other_fields() -> None:
    lines = [": keep-alive", "event: message", "id: 7", "data: {\"a\":", "data:  1}", "", "",
             "data:[DONE]\r", "\r"]
    assert parse_events(lines) == ['{"a":\n 1}', "[DONE]"]


def test_parser_flushes_an_event_left_open_at_the_end() -> None:
    p = SSEParser()
    assert p.feed("data: x") is None
    assert p.flush() == "x"
    assert p.flush() is None
    assert parse_events(["data: y"]) == ["y"]


def test_stream_stats_time_tokens_and_read_usage() -> None:
    s = StreamStats()
    for t, data in [(1.0, chunk("")), (1.5, chunk("ab")), (2.5, chunk("c", finish="length")),
                    (2.6, chunk(None, USAGE)), (2.7, "[DONE]")]:
        s.event(data, t)
    assert (s.first_s, s.last_s, s.chunks, s.done, s.finish_reason) == (1.0, 2.5, 3, True, "length")
    assert s.usage == USAGE


def test_request_body_is_greedy_streaming_with_usage_and_fixed_length() -> None:
    body = request_body("m", [{"role": "user", "content": "hi"}], 32)
    assert body["temperature"] == 0.0 and body["stream"] is True and body["ignore_eos"] is True
    assert body["stream_options"] == {"include_usage": True} and body["max_tokens"] == 32


def run_send(handler: Any) -> RequestRecord:
    async def go() -> RequestRecord:
        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
            rec = RequestRecord(policy="off", rate=1.0, workload="w", arrival_s=0.0, ttft_s=None, e2e_s=None)
            return await send(client, "http://test/v1/chat/completions", {"model": "m"}, rec, t0=0.0)

    return asyncio.run(go())


def sse(*payloads: str) -> bytes:
    return "".join(f"data: {p}\n\n" for p in payloads).encode()


def test_send_records_latencies_tokens_and_speculation_usage() -> None:
    body = sse(chunk(""), chunk("ab"), chunk("c", finish="length"), chunk(None, USAGE), "[DONE]")
    rec = run_send(lambda req: httpx.Response(200, content=body, headers={"content-type": "text/event-stream"}))
    assert rec.error is None
    assert rec.ttft_s is not None and rec.e2e_s is not None and rec.itl_mean_s is not None
    assert 0 <= rec.ttft_s <= rec.e2e_s
    assert (rec.prompt_tokens, rec.completion_tokens, rec.drafted_tokens, rec.accepted_tokens) == (11, 4, 6, 5)


def test_failures_become_records_with_an_error() -> None:
    refused = run_send(lambda req: httpx.Response(
        400, json={"error": {"message": "prompt is too long", "type": "invalid_request_error"}}))
    assert refused.error == "HTTP 400: prompt is too long" and refused.e2e_s is None

    cut = run_send(lambda req: httpx.Response(200, content=sse(chunk("a"), chunk("b"))))
    assert cut.error == "stream ended without [DONE]" and cut.e2e_s is not None

    no_usage = run_send(lambda req: httpx.Response(200, content=sse(chunk("a"), "[DONE]")))
    assert no_usage.error is not None and "usage" in no_usage.error

    garbage = run_send(lambda req: httpx.Response(200, content=b"data: {not json\n\n"))
    assert garbage.error is not None and garbage.error.startswith("JSONDecodeError")

    def boom(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    down = run_send(boom)
    assert down.error == "ConnectError: connection refused"

    server_err = run_send(lambda req: httpx.Response(200, content=sse(json.dumps({"error": {"message": "boom"}}))))
    assert server_err.error == "server error: boom"
