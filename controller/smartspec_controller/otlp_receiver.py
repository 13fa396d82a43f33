"""OTLP gRPC receiver (opentelemetry-proto service definitions): the targets push metrics (and spans) here.

It keeps, per reporting instance, the latest value of every metric (sums over attribute sets), so
the controller reads live load — running and waiting requests, token counters — without scraping.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

METRICS_SERVICE = "opentelemetry.proto.collector.metrics.v1.MetricsService"
TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


def _attrs(kvs: Any) -> dict[str, str]:
    out = {}
    for kv in kvs:
        v = kv.value
        out[kv.key] = str(getattr(v, v.WhichOneof("value"))) if v.WhichOneof("value") else ""
    return out


# Bounds on what senders can make the controller hold: a real service has a few dozen target replicas,
# each with ~40 metrics. An instance silent for STALE_S is forgotten (a scaled-down pod, a restarted one).
MAX_INSTANCES = 1024
MAX_METRICS_PER_INSTANCE = 256
STALE_S = 300.0


@dataclass
class LoadView:
    """Latest metric values per instance: {instance: {metric: (value, received_at)}}."""

    values: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)
    points: int = 0
    refused: int = 0  # data points dropped by the bounds above
    spans: Counter[str] = field(default_factory=Counter)
    _seen: dict[str, float] = field(default_factory=dict)  # instance -> last report

    def ingest(self, request: metrics_service_pb2.ExportMetricsServiceRequest) -> int:
        now = time.time()
        self._prune(now)
        n = 0
        for rm in request.resource_metrics:
            res = _attrs(rm.resource.attributes)
            instance = (res.get("service.instance.id") or res.get("service.name", "unknown"))[:253]
            if instance not in self.values and len(self.values) >= MAX_INSTANCES:
                self.refused += sum(1 for sm in rm.scope_metrics for _ in sm.metrics)
                continue
            mine = self.values.setdefault(instance, {})
            self._seen[instance] = now
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name not in mine and len(mine) >= MAX_METRICS_PER_INSTANCE:
                        self.refused += 1
                        continue
                    kind = metric.WhichOneof("data")
                    if kind in ("gauge", "sum"):
                        pts = getattr(metric, kind).data_points
                        total = sum(p.as_double if p.WhichOneof("value") == "as_double" else p.as_int for p in pts)
                    elif kind == "histogram":
                        pts = metric.histogram.data_points
                        total = float(sum(p.count for p in pts))  # observations so far
                    else:
                        continue
                    n += len(pts)
                    if math.isfinite(total):
                        mine[metric.name[:255]] = (float(total), now)
        self.points += n
        return n

    def _prune(self, now: float) -> None:
        for inst in [i for i, t in self._seen.items() if now - t > STALE_S]:
            self.values.pop(inst, None)
            self._seen.pop(inst, None)

    def latest(self, metric: str, max_age_s: float) -> dict[str, float]:
        """{instance: value} of a metric, for instances that reported it within max_age_s."""
        now = time.time()
        out = {}
        for inst, vals in self.values.items():
            entry = vals.get(metric)
            if entry is not None and now - entry[1] <= max_age_s:
                out[inst] = entry[0]
        return out


class MetricsReceiver(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, view: LoadView) -> None:
        self.view = view

    async def Export(self, request: metrics_service_pb2.ExportMetricsServiceRequest,
                     context: Any) -> metrics_service_pb2.ExportMetricsServiceResponse:
        self.view.ingest(request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class TraceReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Accepts spans so targets can point one OTLP endpoint here; counts them by name (no storage)."""

    def __init__(self, view: LoadView) -> None:
        self.view = view

    async def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
                     context: Any) -> trace_service_pb2.ExportTraceServiceResponse:
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                self.view.spans.update(span.name for span in ss.spans)
        return trace_service_pb2.ExportTraceServiceResponse()


def services(view: LoadView) -> list[tuple[Any, Any, str]]:
    """For smartspec.rpc.start_server: (add_fn, servicer, full name)."""
    return [(metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server, MetricsReceiver(view), METRICS_SERVICE),
            (trace_service_pb2_grpc.add_TraceServiceServicer_to_server, TraceReceiver(view), TRACE_SERVICE)]
