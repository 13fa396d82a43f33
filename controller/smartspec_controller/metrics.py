"""The controller's own metrics (names the dashboards use), as OTel instruments served in Prometheus text."""

from __future__ import annotations

from prometheus_client import generate_latest

from smartspec.telemetry.metrics import prometheus_provider


class ControllerMetrics:
    def __init__(self, service: str) -> None:
        self.registry, self.provider = prometheus_provider({"service.name": f"{service}-controller"})
        m = self.provider.get_meter("smartspec.controller")
        self.goodput = m.create_gauge("smartspec_controller_goodput_tokens_per_second", unit="1",
                                      description="Emitted tokens per engine-second, measured and predicted")
        self.policy_version = m.create_gauge("smartspec_controller_policy_version", unit="1",
                                             description="Version of the newest published policy")
        self.r2 = m.create_gauge("smartspec_controller_cost_model_r2", unit="1",
                                 description="R² of the cost model in force on held-out steps")
        self.telemetry_age = m.create_gauge("smartspec_controller_telemetry_age_seconds", unit="s",
                                            description="Seconds since the newest step record (none before one)")
        self.current_k = m.create_gauge("smartspec_controller_recommended_k", unit="1",
                                        description="k the policy recommends at the current batch size")
        self.batch_size = m.create_gauge("smartspec_controller_batch_size", unit="1",
                                         description="Mean running requests per step, recent window")
        self.records = m.create_counter("smartspec_controller_step_records", unit="1",
                                        description="Step records consumed from Redis")
        self.bad_records = m.create_counter("smartspec_controller_bad_records", unit="1",
                                            description="Stream entries that were not valid step records")
        self.fits = m.create_counter("smartspec_controller_cost_model_fits", unit="1",
                                     description="Cost-model refits by outcome (adopted, rejected)")
        self.otlp_points = m.create_counter("smartspec_controller_otlp_data_points", unit="1",
                                            description="Metric data points received over OTLP")

    def prometheus_text(self) -> bytes:
        return bytes(generate_latest(self.registry))

    def shutdown(self) -> None:
        self.provider.shutdown()
