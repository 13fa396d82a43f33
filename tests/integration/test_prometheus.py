"""Real Prometheus scrapes a real target and controller; every metric in smartspec/telemetry/metrics.py has a sample."""

from __future__ import annotations

from typing import Any

from tests.integration.conftest import LoopThread
from tests.integration.control_plane import complete_many, start_controller, stop_all, wait_for
from tests.integration.prometheus import Prometheus
from tests.integration.services import start_stack

TARGET_METRICS = [
    "smartspec_spec_decode_num_drafts_total",
    "smartspec_spec_decode_num_draft_tokens_total",
    "smartspec_spec_decode_num_accepted_tokens_total",
    "smartspec_spec_decode_num_accepted_tokens_per_pos_total",
    "smartspec_num_requests_running",
    "smartspec_num_requests_waiting",
    "smartspec_generation_tokens_total",
    "smartspec_speculation_length_bucket",
    "smartspec_step_duration_seconds_bucket",
    "smartspec_time_to_first_token_seconds_bucket",
    "smartspec_inter_token_latency_seconds_bucket",
    "smartspec_e2e_request_latency_seconds_bucket",
    "smartspec_draft_rpc_duration_seconds_bucket",
    "smartspec_draft_fallback_total",
    "smartspec_policy_version",
    "smartspec_telemetry_records_dropped_total",
]
CONTROLLER_METRICS = [
    'smartspec_controller_goodput_tokens_per_second{kind="measured"}',
    'smartspec_controller_goodput_tokens_per_second{kind="predicted"}',
    "smartspec_controller_policy_version",
    "smartspec_controller_cost_model_r2",
    "smartspec_controller_telemetry_age_seconds",
]


def test_prometheus_scrapes_every_documented_metric(loop_thread: LoopThread, tiny_svc_models: dict[str, Any],
                                                    redis_db: Any) -> None:
    ctl = start_controller(loop_thread, redis_db.url, min_fit_samples=16)
    stack = start_stack(loop_thread, tiny_svc_models, redis_url=redis_db.url)
    prom = Prometheus({"target": stack.url.removeprefix("http://"), "controller": f"127.0.0.1:{ctl.http_port}"})
    try:
        for _ in range(3):
            complete_many(stack.url, ["def f(x):", "import re\n", "SELECT 1", "# note", "x = 1"], max_tokens=24)
        wait_for(lambda: ctl.last_fit is not None, 10, "a cost-model fit in the controller")
        wait_for(prom.targets_up, 10, "both scrape targets up")
        missing: list[str] = []

        def all_present() -> bool:
            missing[:] = [m for m in TARGET_METRICS + CONTROLLER_METRICS if not prom.query(m)]
            return not missing

        try:
            wait_for(all_present, 15, "every metric in Prometheus", every_s=0.5)
        except AssertionError:
            raise AssertionError(f"no samples in Prometheus for {missing}") from None
        jobs = {s["metric"]["job"] for s in prom.query("smartspec_generation_tokens_total")}
        assert jobs == {"target"}
        assert float(prom.query("smartspec_controller_policy_version")[0]["value"][1]) >= 1
        per_pos = prom.query("smartspec_spec_decode_num_accepted_tokens_per_pos_total")
        assert {s["metric"]["position"] for s in per_pos} >= {"0"}
    finally:
        stop_all(prom.stop, stack.stop, lambda: loop_thread.run(ctl.stop()))
