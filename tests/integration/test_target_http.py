"""The OpenAI-compatible HTTP API on real servers (tiny models): exact greedy output, SSE, usage, errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from smartspec.telemetry.metrics import counter_value
from tests.conftest import hf_greedy
from tests.integration.conftest import LoopThread
from tests.integration.services import Stack, start_stack

MODEL = "target"


@pytest.fixture(scope="module")
def stack(loop_thread: LoopThread, tiny_svc_models: dict[str, Any]) -> Iterator[Stack]:
    s = start_stack(loop_thread, tiny_svc_models, policy="fixed", fixed_k=3, max_len=512)
    yield s
    s.stop()


def reference(models: dict[str, Any], prompt_ids: list[int], n: int) -> tuple[list[int], str]:
    pair = models["pair"]
    ids = hf_greedy(pair.target, prompt_ids, n)
    return ids, pair.tokenizer.decode(ids, skip_special_tokens=True)


def test_completion_greedy_equals_target_only(stack: Stack, tiny_svc_models: dict[str, Any]) -> None:
    tok = tiny_svc_models["pair"].tokenizer
    for prompt in ("def fib(n):", "SELECT * FROM t WHERE", "x"):
        r = httpx.post(f"{stack.url}/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 24,
                                                             "temperature": 0, "ignore_eos": True}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        _, text = reference(tiny_svc_models, tok(prompt).input_ids, 24)
        assert body["choices"][0]["text"] == text
        assert body["choices"][0]["finish_reason"] == "length"
        spec = body["usage"]["speculation"]
        assert body["usage"]["completion_tokens"] == 24 and spec["draft_tokens"] > 0 and 0 < spec["mean_k"] <= 3


def test_chat_streaming_with_the_openai_client(stack: Stack, tiny_svc_models: dict[str, Any]) -> None:
    tok = tiny_svc_models["pair"].tokenizer
    messages = [{"role": "user", "content": "Write a haiku about caches."}]
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused")
    stream = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0,  # type: ignore[call-overload]
                                            stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    _, expected = reference(tiny_svc_models, list(ids), 20)
    assert text == expected
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 20
    assert usage.model_extra is not None and usage.model_extra["speculation"]["draft_tokens"] > 0


def test_chat_content_parts_and_the_full_response_shape(stack: Stack) -> None:
    def chat(content: Any, **extra: Any) -> httpx.Response:
        return httpx.post(f"{stack.url}/v1/chat/completions", timeout=60, json={
            "model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 6, "temperature": 0,
            **extra})

    as_text = chat("Write a haiku about caches.")
    as_parts = chat([{"type": "text", "text": "Write a haiku "}, {"type": "text", "text": "about caches."}],
                    response_format={"type": "text"}, presence_penalty=0, tool_choice="none")
    assert as_text.status_code == as_parts.status_code == 200, as_parts.text
    choice = as_parts.json()["choices"][0]
    assert choice["message"]["content"] == as_text.json()["choices"][0]["message"]["content"]
    assert choice["message"]["refusal"] is None and choice["logprobs"] is None  # fields OpenAI clients read
    r = chat([{"type": "image_url", "image_url": {"url": "http://x/y.png"}}])
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages")


def test_speculation_off_and_capped_per_request(stack: Stack) -> None:
    def usage(spec: dict[str, Any]) -> dict[str, Any]:
        r = httpx.post(f"{stack.url}/v1/completions", json={"model": MODEL, "prompt": "import os", "max_tokens": 16,
                                                             "temperature": 0, "ignore_eos": True, "speculation": spec},
                       timeout=60)
        assert r.status_code == 200, r.text
        return r.json()["usage"]["speculation"]

    off = usage({"mode": "off"})
    assert off["draft_tokens"] == 0 and off["mean_k"] == 0 and off["acceptance_rate"] is None
    capped = usage({"max_k": 1})
    assert 0 < capped["mean_k"] <= 1


def test_stop_strings_cut_the_text(stack: Stack, tiny_svc_models: dict[str, Any]) -> None:
    tok = tiny_svc_models["pair"].tokenizer
    _, text = reference(tiny_svc_models, tok("def fib(n):").input_ids, 40)
    stop = text[10:13]
    r = httpx.post(f"{stack.url}/v1/completions", json={"model": MODEL, "prompt": "def fib(n):", "max_tokens": 40,
                                                         "temperature": 0, "stop": [stop], "ignore_eos": True},
                   timeout=60)
    body = r.json()["choices"][0]
    assert body["finish_reason"] == "stop" and body["text"] == text[: text.index(stop)]


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "x", "max_tokens": 10**7}, "max_tokens"),
        ({"prompt": "x", "temperature": -1}, "temperature"),
        ({"prompt": "x", "top_p": 0}, "top_p"),
        ({"prompt": "x", "top_p": 1.5}, "top_p"),
        ({"prompt": "x", "n": 2}, "n"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x" * 600}, "prompt"),
        ({"prompt": "x", "model": "gpt-4"}, "model"),
        ({"prompt": "x", "speculation": {"max_k": -1}}, "speculation.max_k"),
        ({"prompt": "x", "speculation": {"max_k": 99}}, "speculation.max_k"),
        ({"prompt": "x", "speculation": {"mode": "always"}}, "speculation.mode"),
        ({"prompt": "x", "max_tokens": "ten"}, "max_tokens"),
        ({"max_tokens": 5}, "prompt"),
        ({"prompt": "x", "logprobs": 5}, "logprobs"),
        # Parameters that would change the result are refused, not silently ignored.
        ({"prompt": "x", "response_format": {"type": "json_object"}}, "response_format"),
        ({"prompt": "x", "presence_penalty": 0.5}, "presence_penalty"),
        ({"prompt": "x", "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"prompt": "x", "logit_bias": {"5": 10}}, "logit_bias"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(stack: Stack, payload: dict[str, Any], param: str) -> None:
    body = {"model": MODEL, **payload}
    r = httpx.post(f"{stack.url}/v1/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"]


def test_malformed_json_and_missing_messages(stack: Stack) -> None:
    r = httpx.post(f"{stack.url}/v1/chat/completions", content=b'{"model": ',
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]["message"]
    r = httpx.post(f"{stack.url}/v1/chat/completions", json={"model": MODEL, "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"


def test_still_healthy_after_bad_input_and_endpoints(stack: Stack) -> None:
    assert httpx.get(f"{stack.url}/health").json() == {"status": "ok"}
    models = httpx.get(f"{stack.url}/v1/models").json()
    assert models["data"][0]["id"] == MODEL
    r = httpx.post(f"{stack.url}/v1/completions", json={"model": MODEL, "prompt": "ok", "max_tokens": 3,
                                                         "temperature": 0})
    assert r.status_code == 200
    text = httpx.get(f"{stack.url}/metrics").text
    for name in ("smartspec_spec_decode_num_drafts_total", "smartspec_spec_decode_num_draft_tokens_total",
                 "smartspec_spec_decode_num_accepted_tokens_total", "smartspec_generation_tokens_total",
                 "smartspec_speculation_length_bucket", "smartspec_step_duration_seconds_bucket",
                 "smartspec_time_to_first_token_seconds_bucket", "smartspec_e2e_request_latency_seconds_bucket",
                 "smartspec_draft_rpc_duration_seconds_bucket", "smartspec_num_requests_running"):
        assert name in text, name
    assert counter_value(text, "smartspec_spec_decode_num_draft_tokens_total") > 0
