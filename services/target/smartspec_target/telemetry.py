"""The target's telemetry parts, built from its settings: metrics (+ OTLP), traces, the Redis step sink."""

from __future__ import annotations

import asyncio
import os
import socket

from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer

from smartspec.auth import read_secret, read_token
from smartspec.engine.sinks import StepSink
from smartspec.telemetry.keys import check_service
from smartspec.telemetry.metrics import TargetMetrics
from smartspec.telemetry.otel import otlp_metric_reader, tracer_provider
from smartspec.telemetry.redis_sink import RedisStepSink
from smartspec_target.settings import TargetSettings


class Telemetry:
    def __init__(self, settings: TargetSettings, model_name: str) -> None:
        self.settings = settings
        service = check_service(settings.service)
        self.replica = settings.replica or f"{socket.gethostname()}-{os.getpid()}"
        endpoint = settings.otlp_endpoint
        token = read_token(settings.otlp_token_file, "otlp_token_file") if settings.otlp_token_file else None
        readers: list[MetricReader] = \
            [otlp_metric_reader(endpoint, settings.otlp_interval_s, token, settings.otlp_tls_dir)] if endpoint else []
        # service.name is the Kubernetes service; the replica tells pods apart (no request ids anywhere).
        self.metrics = TargetMetrics(service=service, extra_readers=readers, instance=self.replica, model=model_name)
        self.provider: TracerProvider | None = None
        self.tracer: Tracer | None = None
        if settings.otlp_endpoint:
            self.provider = tracer_provider(service, settings.otlp_endpoint, token=token, tls_dir=settings.otlp_tls_dir)
            self.tracer = self.provider.get_tracer("smartspec.target")
        self.sink: RedisStepSink | None = None
        self.sinks: list[StepSink] = []
        if settings.redis_url:
            self.sink = RedisStepSink(
                settings.redis_url, service, self.replica, stream_maxlen=settings.steps_stream_maxlen,
                buffer=settings.telemetry_buffer,
                on_dropped=lambda n: self.metrics.records_dropped.add(n),
                on_written=lambda n: self.metrics.records_written.add(n), password=self.redis_password(),
                tls_dir=settings.redis_tls_dir)
            self.sinks.append(self.sink)

    def redis_password(self) -> str | None:
        f = self.settings.redis_password_file
        return read_secret(f, "redis_password_file") if f else None

    async def close(self) -> None:
        """Flush and stop; the blocking parts (last batch to Redis, last OTLP export with its retries)
        run on a worker thread so the event loop — and any receiver it hosts — keeps going."""
        if self.sink is not None:
            await asyncio.to_thread(self.sink.close)
        if self.provider is not None:
            await asyncio.to_thread(self.provider.shutdown)
        await asyncio.to_thread(self.metrics.shutdown)
