"""The OpenAI-compatible HTTP API: completions, chat completions (SSE streaming), models, health, metrics."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from smartspec.engine.sampling import SamplingParams
from smartspec.engine.scheduler import RequestSpec
from smartspec.errors import InvalidRequest, SmartspecError
from smartspec.policy.limits import request_max_k
from smartspec.telemetry.metrics import TargetMetrics
from smartspec_target.chat import chat_prompt_ids
from smartspec_target.engine_loop import EngineLoop
from smartspec_target.generation import Chunk, GenerationRequest, Usage, generate
from smartspec_target.openai_schema import ChatCompletionRequest, CommonParams, CompletionRequest

# Chat requests without max_tokens get at most this many tokens (bounded by the context).
DEFAULT_CHAT_MAX_TOKENS = 1024
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
# No tokenizer makes a token of more characters than this (Qwen2's longest merges are ~16 bytes), so a
# text longer than max_len × this is too long before it is tokenized: refused without the work.
MAX_CHARS_PER_TOKEN = 64


@dataclass
class ApiContext:
    engine: EngineLoop
    tokenizer: Any
    model_name: str
    max_len: int
    max_k: int
    metrics: TargetMetrics
    draft_state: Callable[[], str] = lambda: "none"  # "ok", "none" (no draft configured) or why k = 0


def error_body(message: str, error_type: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _err(exc: SmartspecError) -> JSONResponse:
    headers = {"Retry-After": str(exc.retry_after_s)} if exc.retry_after_s is not None else None
    return JSONResponse(error_body(exc.message, exc.error_type, exc.param), status_code=exc.http_status,
                        headers=headers)


# What the generation endpoints answer, for the served OpenAPI description (schemathesis checks it): a JSON
# object or an SSE stream, and every refusal in OpenAI's error shape.
_ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}
_ERROR = {"content": {"application/json": {"schema": _ERROR_SCHEMA}}}
GENERATION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the completion, or its SSE stream",
          "content": {"application/json": {"schema": {"type": "object"}}, "text/event-stream": {}}},
    400: {"description": "invalid request", **_ERROR}, 401: {"description": "no valid API key", **_ERROR},
    404: {"description": "model or route not found", **_ERROR}, 408: {"description": "body too slow", **_ERROR},
    413: {"description": "body too large", **_ERROR}, 422: {"description": "unusable request", **_ERROR},
    429: {"description": "at capacity; see Retry-After", **_ERROR},
    499: {"description": "client closed the request"},
    503: {"description": "draining or failed", **_ERROR},
}


def build_app(ctx: ApiContext) -> FastAPI:
    app = FastAPI(title="smartspec target", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(loc) or None
        if first.get("type") == "json_invalid":
            msg, param = "the request body is not valid JSON", None
        else:
            msg = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        return JSONResponse(error_body(msg, "invalid_request_error", param), status_code=400)

    @app.exception_handler(SmartspecError)
    async def _smartspec(request: Request, exc: SmartspecError) -> JSONResponse:
        return _err(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # The framework's own refusals (unknown path, wrong method) in OpenAI's error shape too.
        kind = {404: "not_found_error", 405: "invalid_request_error"}.get(exc.status_code, "invalid_request_error")
        message = {404: f"no route {request.url.path}", 405: f"{request.method} is not allowed on {request.url.path}"}
        return JSONResponse(error_body(message.get(exc.status_code, str(exc.detail)), kind),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.get("/health", responses={503: {"description": "failed or draining"}})
    async def health() -> JSONResponse:
        if not ctx.engine.healthy:
            return JSONResponse({"status": "failed", "reason": ctx.engine.failed}, status_code=503)
        if ctx.engine.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        draft = ctx.draft_state()
        if draft not in ("ok", "none"):  # still serving (at k = 0): ready, but say why speculation is off
            return JSONResponse({"status": "degraded", "draft": draft})
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus"}})
    async def metrics() -> Response:
        return Response(ctx.metrics.prometheus_text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": ctx.model_name, "object": "model", "created": 0,
                                            "owned_by": "smartspec", "max_model_len": ctx.max_len}]}

    @app.post("/v1/completions", response_model=None, responses=GENERATION_RESPONSES)
    async def completions(body: CompletionRequest, request: Request) -> Response:
        prompt_ids = await _completion_prompt(ctx, body.prompt)
        return await _respond(ctx, request, body, prompt_ids, chat=False)

    @app.post("/v1/chat/completions", response_model=None, responses=GENERATION_RESPONSES)
    async def chat(body: ChatCompletionRequest, request: Request) -> Response:
        messages = [{"role": m.role, "content": m.text} for m in body.messages]
        _check_chars(ctx, sum(len(m["content"]) for m in messages), "messages")
        # Off the event loop: a long conversation takes a while to template and tokenize, and /health waits.
        ids = await asyncio.to_thread(chat_prompt_ids, ctx.tokenizer, messages)
        return await _respond(ctx, request, body, ids, chat=True)

    return app


def _check_chars(ctx: ApiContext, chars: int, param: str) -> None:
    if chars > ctx.max_len * MAX_CHARS_PER_TOKEN:
        raise InvalidRequest(f"{param} has {chars} characters: more than any {ctx.max_len}-token context holds",
                             param=param)


async def _completion_prompt(ctx: ApiContext, prompt: str | list[str] | list[int]) -> list[int]:
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        if len(prompt) > ctx.max_len:
            raise InvalidRequest(f"prompt has {len(prompt)} tokens; this server holds {ctx.max_len} per request",
                                 param="prompt")
        return [int(t) for t in prompt]  # token ids; the engine checks their range
    text: object = prompt
    if isinstance(prompt, list):
        if len(prompt) != 1:
            raise InvalidRequest(f"prompt must be one string (got a list of {len(prompt)})", param="prompt")
        text = prompt[0]
    if not isinstance(text, str) or not text:
        raise InvalidRequest("prompt is empty", param="prompt")
    return await encode_text(ctx, text, "prompt")


async def encode_text(ctx: ApiContext, text: str, param: str) -> list[int]:
    """Token ids of a prompt text: refused by length first, then tokenized off the event loop."""
    _check_chars(ctx, len(text), param)
    ids = await asyncio.to_thread(lambda: ctx.tokenizer(text, add_special_tokens=True).input_ids)
    return [int(t) for t in ids]


def _to_request(ctx: ApiContext, body: CommonParams, prompt_ids: list[int], chat: bool) -> GenerationRequest:
    if body.model != ctx.model_name:
        raise InvalidRequest(f"model {body.model!r} is not served here; this server serves {ctx.model_name!r}",
                             param="model")
    problem = body.unsupported()
    if problem:
        raise InvalidRequest(problem[1], param=problem[0])
    spec = body.speculation
    if spec is not None:
        request_max_k(spec.max_k, ctx.max_k)
    max_tokens = body.max_tokens
    if chat and isinstance(body, ChatCompletionRequest) and body.max_completion_tokens is not None:
        max_tokens = body.max_completion_tokens
    if max_tokens is None:
        room = max(1, ctx.max_len - len(prompt_ids))
        max_tokens = min(room, DEFAULT_CHAT_MAX_TOKENS) if chat else DEFAULT_COMPLETION_MAX_TOKENS
    params = SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p, top_k=body.top_k,
                            seed=body.seed, ignore_eos=body.ignore_eos)
    params.validate()
    request_spec = RequestSpec(mode=spec.mode if spec else "auto", max_k=spec.max_k if spec else None)
    return GenerationRequest(prompt_ids, params, body.stop_strings(), request_spec)


async def _respond(
    ctx: ApiContext, request: Request, body: CommonParams, prompt_ids: list[int], chat: bool
) -> Response:
    req = _to_request(ctx, body, prompt_ids, chat)
    rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
    created = int(time.time())
    stream = generate(ctx.engine, ctx.tokenizer, req)
    first = await _first(stream)  # refusals (context too long, draining) become a 4xx/503 here
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_sse(ctx, rid, created, chat, first, stream, include_usage, request),
                                 media_type="text/event-stream")
    text, last = "", first
    if first is not None:
        text = first.text
        async for chunk in stream:
            if await request.is_disconnected():
                await stream.aclose()  # cancels the request in the engine
                return Response(status_code=499)
            text += chunk.text
            last = chunk
    assert last is not None
    return JSONResponse(_final_object(ctx, rid, created, chat, text, last.finish_reason, last.usage))


async def _first(stream: AsyncGenerator[Chunk, None]) -> Chunk | None:
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        return None


def _final_object(ctx: ApiContext, rid: str, created: int, chat: bool, text: str, reason: str | None,
                  usage: Usage) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": reason}
    choice["logprobs"] = None
    if chat:
        choice["message"] = {"role": "assistant", "content": text, "refusal": None}
    else:
        choice["text"] = text
    return {"id": rid, "object": "chat.completion" if chat else "text_completion", "created": created,
            "model": ctx.model_name, "choices": [choice], "usage": usage.openai()}


async def _sse(ctx: ApiContext, rid: str, created: int, chat: bool, first: Chunk | None,
               stream: AsyncGenerator[Chunk, None], include_usage: bool, request: Request) -> AsyncIterator[bytes]:
    obj = "chat.completion.chunk" if chat else "text_completion"

    def event(choices: list[dict[str, Any]], usage: Usage | None = None) -> bytes:
        payload: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": ctx.model_name,
                                   "choices": choices}
        if include_usage:
            payload["usage"] = usage.openai() if usage is not None else None
        return f"data: {json.dumps(payload)}\n\n".encode()

    def choice(chunk: Chunk, role: bool) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {"content": chunk.text}
            if role:
                delta["role"] = "assistant"
            return {"index": 0, "delta": delta, "finish_reason": chunk.finish_reason, "logprobs": None}
        return {"index": 0, "text": chunk.text, "finish_reason": chunk.finish_reason, "logprobs": None}

    last = first
    try:
        if first is not None:
            yield event([choice(first, role=True)])
        async for chunk in stream:
            last = chunk
            yield event([choice(chunk, role=False)])
        if include_usage and last is not None:
            yield event([], last.usage)
        yield b"data: [DONE]\n\n"
    finally:
        await stream.aclose()  # a disconnect lands here: the request is cancelled in the engine
