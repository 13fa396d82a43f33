"""The target's metrics (the names dashboards and alerts use) as OpenTelemetry instruments, read as Prometheus text.

Each service instance owns its MeterProvider and Prometheus registry (no process globals), so
several servers in one process — as in the tests — never mix their numbers. Counters are named
without `_total`; the Prometheus exporter appends it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, generate_latest

if TYPE_CHECKING:  # the controller uses this module without torch installed
    from smartspec.engine.engine import StepStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
K_BUCKETS = tuple(float(k) for k in range(17))
FALLBACK_CAUSES = ("deadline", "disconnected", "error", "incompatible", "invalid")


def prometheus_provider(resource: dict[str, str], extra_readers: Sequence[MetricReader] = (),
                        ) -> tuple[CollectorRegistry, MeterProvider]:
    """A MeterProvider owned by one service instance whose instruments read out as Prometheus text
    from its own registry (plus any extra readers, e.g. OTLP)."""
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry, disable_target_info=True, scope_info_enabled=False)
    provider = MeterProvider(metric_readers=[reader, *extra_readers], resource=Resource.create(resource))
    return registry, provider


POLICY_REJECTIONS = ("invalid", "service", "stale", "expired", "apply")  # why a target refused a published policy


@dataclass
class TargetMetrics:
    """All instruments of one target replica; `prometheus_text()` serves /metrics."""

    service: str = "smartspec"
    extra_readers: list[MetricReader] = field(default_factory=list)  # e.g. an OTLP exporter
    instance: str = ""  # the replica (OTLP resource only: Prometheus gets it from the scrape target)
    model: str = ""

    def __post_init__(self) -> None:
        self.registry, self.provider = prometheus_provider(
            {"service.name": self.service, "service.instance.id": self.instance, "smartspec.model": self.model},
            self.extra_readers)
        m = self.provider.get_meter("smartspec.target")
        self.num_drafts = m.create_counter("smartspec_spec_decode_num_drafts", unit="1",
                                           description="Requests that were given drafts, summed over steps")
        self.num_draft_tokens = m.create_counter("smartspec_spec_decode_num_draft_tokens", unit="1",
                                                 description="Draft tokens proposed and verified")
        self.num_accepted_tokens = m.create_counter("smartspec_spec_decode_num_accepted_tokens", unit="1",
                                                    description="Draft tokens accepted")
        self.accepted_per_pos = m.create_counter("smartspec_spec_decode_num_accepted_tokens_per_pos", unit="1",
                                                 description="Draft tokens accepted, by draft position (0-based)")
        self.generation_tokens = m.create_counter("smartspec_generation_tokens", unit="1",
                                                  description="Tokens emitted to clients")
        self.running = m.create_up_down_counter("smartspec_num_requests_running", unit="1",
                                                description="Requests in the running batch")
        self.waiting = m.create_up_down_counter("smartspec_num_requests_waiting", unit="1",
                                                description="Requests queued for admission")
        self.spec_length = m.create_histogram("smartspec_speculation_length", unit="1",
                                              description="k chosen per request per step",
                                              explicit_bucket_boundaries_advisory=list(K_BUCKETS))
        self.step_duration = m.create_histogram("smartspec_step_duration_seconds", unit="s",
                                                description="Engine step time by phase",
                                                explicit_bucket_boundaries_advisory=list(STEP_BUCKETS))
        self.ttft = m.create_histogram("smartspec_time_to_first_token_seconds", unit="s",
                                       explicit_bucket_boundaries_advisory=list(LATENCY_BUCKETS))
        self.itl = m.create_histogram("smartspec_inter_token_latency_seconds", unit="s",
                                      explicit_bucket_boundaries_advisory=list(STEP_BUCKETS))
        self.e2e = m.create_histogram("smartspec_e2e_request_latency_seconds", unit="s",
                                      explicit_bucket_boundaries_advisory=list(LATENCY_BUCKETS))
        self.draft_rpc = m.create_histogram("smartspec_draft_rpc_duration_seconds", unit="s",
                                            description="Round trip of one draft Propose",
                                            explicit_bucket_boundaries_advisory=list(STEP_BUCKETS))
        self.draft_fallback = m.create_counter("smartspec_draft_fallback", unit="1",
                                               description="Steps a request ran at k = 0 because the draft failed")
        self.draft_suspensions = m.create_counter("smartspec_draft_suspensions", unit="1",
                                                  description="Times the draft was left alone after missing "
                                                  "deadlines in a row (k = 0 until a probe answers in time)")
        self.forwards = m.create_counter("smartspec_target_forwards", unit="1",
                                         description="Target forwards by path: graph (a captured step replayed) "
                                         "or eager")
        self.requests_shed = m.create_counter("smartspec_requests_shed", unit="1",
                                              description="Requests refused with 429 because running + waiting "
                                              "were at the limit")
        # Control plane: the policy in force and telemetry delivery.
        self.policy_version = m.create_gauge("smartspec_policy_version", unit="1",
                                             description="Version of the controller policy in force (0: local default)")
        self.policy_fallback = m.create_counter("smartspec_policy_fallback", unit="1",
                                                description="Times the target fell back to its local default policy")
        self.policy_rejected = m.create_counter("smartspec_policy_rejected", unit="1",
                                                description="Published policies not applied (invalid, stale, expired)")
        self.records_written = m.create_counter("smartspec_telemetry_records_written", unit="1",
                                                description="Step records written to Redis")
        self.records_dropped = m.create_counter("smartspec_telemetry_records_dropped", unit="1",
                                                description="Step records dropped because Redis was slow or down")
        self.policy_version.set(0)
        # Series that exist from the start (at 0), so dashboards' rate() and alerts see them before any event.
        for cause in FALLBACK_CAUSES:
            self.draft_fallback.add(0, {"cause": cause})
        for reason in ("absent", "expired"):
            self.policy_fallback.add(0, {"reason": reason})
        for reason in POLICY_REJECTIONS:
            self.policy_rejected.add(0, {"reason": reason})
        self.records_dropped.add(0)
        self.records_written.add(0)
        for path in ("graph", "eager"):
            self.forwards.add(0, {"path": path})
        self._running = 0
        self._waiting = 0

    def record_step(self, stats: StepStats) -> None:
        drafts = sum(1 for k in stats.ks if k > 0)
        if drafts:
            self.num_drafts.add(drafts)
            self.num_draft_tokens.add(stats.num_draft_tokens)
            self.num_accepted_tokens.add(stats.num_accepted_tokens)
            for pos, n in enumerate(stats.num_accepted_per_pos):
                self.accepted_per_pos.add(n, {"position": str(pos)})
        for k in stats.ks:
            self.spec_length.record(k)
        self.generation_tokens.add(stats.num_emitted)
        self.forwards.add(stats.graph_forwards, {"path": "graph"})
        self.forwards.add(stats.num_forwards - stats.graph_forwards, {"path": "eager"})
        for phase, seconds in (("draft", stats.draft_s), ("verify", stats.verify_s), ("overhead", stats.overhead_s),
                               ("total", stats.step_s)):
            self.step_duration.record(seconds, {"phase": phase})

    def set_queue(self, running: int, waiting: int) -> None:
        self.running.add(running - self._running)
        self.waiting.add(waiting - self._waiting)
        self._running, self._waiting = running, waiting

    def fallback(self, cause: str, requests: int = 1) -> None:
        self.draft_fallback.add(requests, {"cause": cause})

    def prometheus_text(self) -> bytes:
        return bytes(generate_latest(self.registry))

    def shutdown(self) -> None:
        self.provider.shutdown()


def counter_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Sum of a metric's samples in Prometheus text whose labels include `labels` (tests, benches)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                total += float(sample.value)
    return total

