"""gRPC Generate on a real server: streamed per step, exact greedy output, errors as status codes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from smartspec.v1 import common_pb2, target_pb2, target_pb2_grpc
from tests.conftest import hf_greedy
from tests.integration.conftest import LoopThread
from tests.integration.services import Stack, start_stack


@pytest.fixture(scope="module")
def stack(loop_thread: LoopThread, tiny_svc_models: dict[str, Any]) -> Iterator[Stack]:
    s = start_stack(loop_thread, tiny_svc_models, policy="fixed", fixed_k=4, max_len=512)
    yield s
    s.stop()


def test_generate_streams_steps_and_matches_target_only(stack: Stack, tiny_svc_models: dict[str, Any]) -> None:
    pair = tiny_svc_models["pair"]
    prompt = pair.tokenizer("class Stack:").input_ids
    with grpc.insecure_channel(stack.grpc_address) as ch:
        stub = target_pb2_grpc.TargetServiceStub(ch)
        info = stub.GetInfo(target_pb2.TargetInfoRequest()).model
        assert info.vocab_size == len(pair.tokenizer) and info.method == "target"
        req = target_pb2.GenerateRequest(token_ids=target_pb2.TokenIds(ids=prompt), max_tokens=30, ignore_eos=True,
                                         sampling=common_pb2.SamplingParams(temperature=0.0))
        msgs = list(stub.Generate(req, timeout=60))
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    ids = [t for m in msgs for t in m.token_ids]
    assert ids == hf_greedy(pair.target, prompt, 30)
    assert msgs[-1].finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert all(m.finish_reason == common_pb2.FINISH_REASON_UNSPECIFIED for m in msgs[:-1])
    assert msgs[-1].completion_tokens == 30 and msgs[-1].prompt_tokens == len(prompt)
    assert len(msgs) < 30  # several tokens per step: it speculated


@pytest.mark.parametrize(
    ("req", "code"),
    [
        (target_pb2.GenerateRequest(text="", max_tokens=5), grpc.StatusCode.INVALID_ARGUMENT),
        (target_pb2.GenerateRequest(max_tokens=5), grpc.StatusCode.INVALID_ARGUMENT),
        (target_pb2.GenerateRequest(text="hi", max_tokens=5, sampling=common_pb2.SamplingParams(temperature=-1)),
         grpc.StatusCode.INVALID_ARGUMENT),
        (target_pb2.GenerateRequest(token_ids=target_pb2.TokenIds(ids=[10**6]), max_tokens=5),
         grpc.StatusCode.INVALID_ARGUMENT),
        (target_pb2.GenerateRequest(text="hi", max_tokens=10**6), grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_bad_requests_are_invalid_argument(stack: Stack, req: Any, code: grpc.StatusCode) -> None:
    with grpc.insecure_channel(stack.grpc_address) as ch, pytest.raises(grpc.RpcError) as err:
        list(target_pb2_grpc.TargetServiceStub(ch).Generate(req, timeout=30))
    assert err.value.code() == code and err.value.details()
