"""The target's gRPC API: GetInfo and server-streaming Generate (one message per step)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from smartspec.engine.scheduler import RequestSpec
from smartspec.errors import InvalidRequest, SmartspecError
from smartspec.policy.limits import request_max_k
from smartspec.rpc import sampling_from_wire
from smartspec.v1 import common_pb2, target_pb2, target_pb2_grpc
from smartspec_target.generation import GenerationRequest, generate
from smartspec_target.http_api import ApiContext, encode_text

SERVICE_NAME = target_pb2.DESCRIPTOR.services_by_name["TargetService"].full_name
_FINISH = {"stop": common_pb2.FINISH_REASON_STOP, "length": common_pb2.FINISH_REASON_LENGTH,
           "cancelled": common_pb2.FINISH_REASON_CANCELLED}


class TargetServicer(target_pb2_grpc.TargetServiceServicer):
    def __init__(self, ctx: ApiContext, info: common_pb2.ModelInfo) -> None:
        self.ctx = ctx
        self.info = info

    async def GetInfo(self, request: Any, context: Any) -> target_pb2.TargetInfoResponse:
        return target_pb2.TargetInfoResponse(model=self.info)

    async def Generate(self, request: target_pb2.GenerateRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[target_pb2.GenerateResponse]:
        try:
            req = await self._request(request)
            stream = generate(self.ctx.engine, self.ctx.tokenizer, req)
            first = await stream.__anext__()
        except SmartspecError as exc:
            await context.abort(getattr(grpc.StatusCode, exc.grpc_code), exc.message)
            return
        except StopAsyncIteration:
            return
        try:
            chunk = first
            while True:
                u = chunk.usage
                yield target_pb2.GenerateResponse(
                    token_ids=chunk.token_ids, text=chunk.text,
                    finish_reason=_FINISH.get(chunk.finish_reason or "", common_pb2.FINISH_REASON_UNSPECIFIED),
                    prompt_tokens=u.prompt_tokens, completion_tokens=u.completion_tokens,
                    speculation=target_pb2.SpeculationUsage(draft_tokens=u.draft_tokens,
                                                            accepted_tokens=u.accepted_tokens, steps=u.steps,
                                                            mean_k=u.mean_k))
                if chunk.finish_reason is not None:
                    return
                chunk = await stream.__anext__()
        except StopAsyncIteration:
            return
        finally:
            await stream.aclose()  # a cancelled RPC cancels the request in the engine

    async def _request(self, r: target_pb2.GenerateRequest) -> GenerationRequest:
        which = r.WhichOneof("input")
        if which == "text":
            if not r.text:
                raise InvalidRequest("text is empty", param="text")
            ids = await encode_text(self.ctx, r.text, "text")
        elif which == "token_ids":
            if len(r.token_ids.ids) > self.ctx.max_len:
                raise InvalidRequest(f"token_ids has {len(r.token_ids.ids)} tokens; this server holds "
                                     f"{self.ctx.max_len} per request", param="token_ids")
            ids = [int(t) for t in r.token_ids.ids]
        else:
            raise InvalidRequest("give text or token_ids", param="input")
        params = sampling_from_wire(r.sampling, max_tokens=int(r.max_tokens) or 16, ignore_eos=r.ignore_eos)
        params.validate()
        max_k = request_max_k(int(r.speculation.max_k) if r.speculation.HasField("max_k") else None, self.ctx.max_k)
        spec = RequestSpec(mode="off" if r.speculation.off else "auto", max_k=max_k)
        return GenerationRequest(ids, params, tuple(s for s in r.stop if s), spec)
