"""OpenTelemetry wiring: the OTLP gRPC metric reader and tracer, and one span per request with phase children."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Tracer

if TYPE_CHECKING:
    from smartspec.engine.sequence import Sequence


def otlp_metric_reader(endpoint: str, interval_s: float, token: str | None = None,
                       tls_dir: str | None = None) -> PeriodicExportingMetricReader:
    """Pushes every instrument to an OTLP gRPC receiver (the controller, or a collector), with `token` as a
    Bearer `authorization` header when given, over mutual TLS with `tls_dir`'s certificate when given."""
    exporter = OTLPMetricExporter(endpoint=endpoint, timeout=5, headers=_auth_headers(token), **_transport(tls_dir))
    return PeriodicExportingMetricReader(exporter, export_interval_millis=interval_s * 1000)


def _auth_headers(token: str | None) -> dict[str, str] | None:
    return {"authorization": f"Bearer {token}"} if token else None


def _transport(tls_dir: str | None) -> dict[str, Any]:
    # The exporter keeps its channel: a rotated client certificate is used from the next restart; the
    # operator's certificates outlive a pod, and cert-manager renews well before expiry.
    if not tls_dir:
        return {"insecure": True}
    from smartspec.tls import channel_credentials
    return {"insecure": False, "credentials": channel_credentials(tls_dir)}


def tracer_provider(service: str, endpoint: str | None = None, exporter: SpanExporter | None = None,
                    token: str | None = None, tls_dir: str | None = None) -> TracerProvider:
    """A provider owned by one service instance (not the process-global one), batching spans off the engine."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter is None and endpoint:
        exporter = OTLPSpanExporter(endpoint=endpoint, timeout=5, headers=_auth_headers(token), **_transport(tls_dir))
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    return provider


def _epoch_ns(perf_s: float, now_perf: float, now_ns: int) -> int:
    """Sequence timestamps are perf_counter seconds; spans want wall-clock nanoseconds."""
    return now_ns - int((now_perf - perf_s) * 1e9)


def record_request_span(tracer: Tracer, seq: Sequence, model: str) -> None:
    """One `generate` span per finished request, with children queue → prefill → decode, written after
    the fact from the request's own timestamps so the engine step never waits on tracing."""
    st = seq.stats
    now_perf, now_ns = time.perf_counter(), time.time_ns()
    start = _epoch_ns(st.arrival_s, now_perf, now_ns)
    end = _epoch_ns(st.finish_s if st.finish_s is not None else now_perf, now_perf, now_ns)
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": "text_completion",
        "gen_ai.system": "smartspec",
        "gen_ai.request.model": model,
        "gen_ai.request.max_tokens": seq.params.max_tokens,
        "gen_ai.request.temperature": seq.params.temperature,
        "gen_ai.usage.input_tokens": seq.prompt_len,
        "gen_ai.usage.output_tokens": seq.num_output,
        "gen_ai.response.finish_reasons": [seq.finish_reason or "stop"],
        "smartspec.spec.draft_tokens": st.num_draft_tokens,
        "smartspec.spec.accepted_tokens": st.num_accepted_tokens,
        "smartspec.spec.mean_k": (sum(st.k_history) / len(st.k_history)) if st.k_history else 0.0,
    }
    span = tracer.start_span(f"text_completion {model}", kind=SpanKind.SERVER, start_time=start, attributes=attrs)
    from opentelemetry.trace import set_span_in_context

    ctx = set_span_in_context(span)
    admitted = _epoch_ns(st.admitted_s, now_perf, now_ns) if st.admitted_s is not None else start
    first = _epoch_ns(st.first_token_s, now_perf, now_ns) if st.first_token_s is not None else end
    for name, a, b in (("queue", start, admitted), ("prefill", admitted, first), ("decode", first, end)):
        if b > a or name == "prefill":
            tracer.start_span(name, context=ctx, start_time=a).end(end_time=max(a, b))
    span.end(end_time=end)
