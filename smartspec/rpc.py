"""gRPC plumbing shared by the services: an aio server with health and reflection, and wire <-> engine types."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from smartspec.v1 import common_pb2

if TYPE_CHECKING:  # the controller uses this module without torch installed
    from smartspec.auth import ApiKeys
    from smartspec.engine.sampling import SamplingParams

# Open without a key: kubelet's gRPC probes carry none, and reflection describes only the public protos.
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")

# Draft proposals for a batch of 32 at k = 8 with top-64 q are ~100 KB; leave ample room.
MAX_MESSAGE_BYTES = 64 << 20


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: Any  # grpc_health aio HealthServicer

    async def set_serving(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set("", status)

    async def stop(self, grace_s: float = 1.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)


class KeyInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """UNAUTHENTICATED for a call to any method but health and reflection without `authorization: Bearer <key>`."""

    def __init__(self, keys: ApiKeys) -> None:
        self.keys = keys

    async def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        if self.keys.accepts(dict(details.invocation_metadata or ()).get("authorization")):
            return handler
        return _denied(handler)


def _denied(handler: Any) -> Any:
    """A handler of the same streaming kind as `handler` that refuses the call before reading anything."""

    async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            "a valid key is required: send call metadata 'authorization: Bearer <key>'")

    make = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
    return make[(handler.request_streaming, handler.response_streaming)](
        deny, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)


async def start_server(
    services: Sequence[tuple[Callable[[Any, grpc.aio.Server], None], Any, str]], host: str, port: int,
    keys: ApiKeys | None = None, tls_dir: str | None = None,
) -> RunningServer:
    """Start an aio server with `services` ((add_fn, servicer, full name)), grpc.health.v1 and reflection;
    with `keys`, every method but health and reflection needs one of them; with `tls_dir`, only mutual TLS
    with a client certificate from its CA (smartspec.tls)."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                      ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)],
                             interceptors=[KeyInterceptor(keys)] if keys is not None else None)
    for add, servicer, _ in services:
        add(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = [name for _, _, name in services]
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    if tls_dir:
        from smartspec.tls import server_credentials
        bound = server.add_secure_port(f"{host}:{port}", server_credentials(tls_dir))
    else:
        bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    for name in ["", *names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return RunningServer(server, bound, health_servicer)


def channel_options() -> list[tuple[str, int]]:
    return [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]


def open_channel(address: str, tls_dir: str | None = None) -> grpc.aio.Channel:
    """An aio channel to `address`: mutual TLS with `tls_dir`'s certificate (read now) or plaintext."""
    if tls_dir:
        from smartspec.tls import channel_credentials
        return grpc.aio.secure_channel(address, channel_credentials(tls_dir), options=channel_options())
    return grpc.aio.insecure_channel(address, options=channel_options())


def sampling_to_wire(p: SamplingParams) -> common_pb2.SamplingParams:
    msg = common_pb2.SamplingParams(temperature=p.temperature, top_p=p.top_p, top_k=p.top_k)
    if p.seed is not None:
        msg.seed = p.seed
    return msg


def sampling_from_wire(msg: common_pb2.SamplingParams, **extra: Any) -> SamplingParams:
    """Engine SamplingParams from the wire (top_p 0 means unset, i.e. 1)."""
    from smartspec.engine.sampling import SamplingParams
    return SamplingParams(
        temperature=float(msg.temperature),
        top_p=float(msg.top_p) if msg.top_p > 0 else 1.0,
        top_k=int(msg.top_k),
        seed=int(msg.seed) if msg.HasField("seed") else None,
        **extra,
    )


async def wait_for_signal() -> None:
    """Return on the first SIGINT or SIGTERM (a service's cue to drain and stop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
