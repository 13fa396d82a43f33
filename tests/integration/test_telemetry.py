"""Telemetry and the controller with a real redis-server, real services (tiny models) and OTLP over gRPC."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from smartspec.policy.cost_fit import StepSample, r_squared, relative_error
from smartspec.policy.cost_model import DRAFT_FEATURES, VERIFY_FEATURES, CostModel
from smartspec.telemetry import records
from smartspec.telemetry.keys import status_key, steps_key
from smartspec_controller import decide
from smartspec_controller.server import Controller
from smartspec_controller.settings import ControllerSettings
from tests.integration.conftest import DraftProcess, LoopThread, free_port
from tests.integration.control_plane import (
    complete,
    complete_many,
    metric,
    published,
    set_spec,
    start_controller,
    stop_all,
    wait_for,
)
from tests.integration.services import start_stack

PROMPTS = ["def add(a, b):", "import os\n", "SELECT * FROM t", "class Foo:", "for i in range(", "x = [1, 2",
           "while True:", "# a comment about"]


@pytest.fixture
def plane(loop_thread: LoopThread, tiny_svc_models: dict[str, Any], redis_db: Any) -> Iterator[dict[str, Any]]:
    """Controller + draft + target wired to one Redis; the target pushes OTLP metrics to the controller."""
    ctl = start_controller(loop_thread, redis_db.url)
    stack = start_stack(loop_thread, tiny_svc_models, redis_url=redis_db.url, replica="target-0",
                        otlp_endpoint=f"127.0.0.1:{ctl.otlp_port}", otlp_interval_s=0.3, policy="fixed", fixed_k=4)
    client = redis_db.client()
    yield {"ctl": ctl, "stack": stack, "redis": client, "server": redis_db}
    stop_all(stack.stop, lambda: loop_thread.run(ctl.stop()), client.close)


def test_step_records_arrive_with_the_documented_fields(plane: dict[str, Any]) -> None:
    url, client = plane["stack"].url, plane["redis"]
    outs = [complete(url, p, max_tokens=16) for p in PROMPTS[:3]]
    emitted = sum(o["usage"]["completion_tokens"] for o in outs)
    entries = wait_for(lambda: (e := client.xrange(steps_key("smartspec"))) and
                       sum(int(f["emitted"]) for _, f in e) >= emitted and e, 5, "step records")
    for _, fields in entries:
        assert set(records.FIELDS) <= set(fields) <= set(records.FIELDS) | set(records.OPTIONAL_FIELDS)
        rec = records.decode(fields)
        assert rec.replica == "target-0" and rec.step_s > 0
    assert sum(int(f["emitted"]) for _, f in entries) == emitted
    spec_steps = [records.decode(f) for _, f in entries if int(f["sum_k"]) > 0]
    assert all(r.predicted_step_s is not None and r.predicted_step_s > 0 for r in spec_steps)
    assert spec_steps and all(r.acceptance["default"][0][0] == r.batch_size for r in spec_steps if r.max_k > 0)
    assert metric(url, "smartspec_telemetry_records_written_total") == len(entries)


def test_controller_fit_predicts_held_out_steps(loop_thread: LoopThread, small_svc_models: dict[str, Any],
                                                redis_db: Any) -> None:
    """The controller's model predicts steps it never fitted on nearly as well as a model fitted on
    those very steps: one step in four of its window (chosen by a stable hash, what it reports in its
    status) and a later load phase it has not seen at all. "Nearly": within 25 %, or within 1.25x the
    in-sample error + 5 points where this machine's noise puts even that above 25 % (same-shape steps
    spread by 10-20 % here on a quiet day; a fresh-clone CI run saw 34 % with an in-sample R² near 0.1).
    The later phase is judged at its own machine speed (one factor, within 0.5-2×; see the assertion).
    A broken fit (a term missing, the prior kept) fails both: its error is far above the floor."""
    client = redis_db.client()
    set_spec(client, "smartspec", {"mode": "fixed", "maxSpeculationLength": 8, "fixedSpeculationLength": 4})
    # The deployment's decision interval (1 s), not the 0.2 s the other tests use to be quick: the
    # controller runs in this process, and refitting five times a second competed with the target's
    # engine for this machine's two cores, which doubled the spread of the very step times it predicts.
    ctl = start_controller(loop_thread, redis_db.url, interval_s=1.0)
    # The draft in its own process, as in a deployment: in this one it would share the GIL with the
    # target's engine thread, and that contention, not the model, would set the step times.
    draft = DraftProcess(small_svc_models["draft"], free_port()).start()
    stack = start_stack(loop_thread, small_svc_models, draft=f"127.0.0.1:{draft.port}", redis_url=redis_db.url,
                        policy="fixed", fixed_k=4)
    key = steps_key("smartspec")
    try:
        url = stack.url
        complete_many(url, PROMPTS, max_tokens=16)  # warm-up: first calls of each shape are slow
        # Batches of 1 to 8 requests, k from 0 to 4 (per-request caps): steps that span the space.
        for size in (1, 2, 4, 8, 5, 3, 6):
            complete_many(url, PROMPTS[:size], speculation={"max_k": size % 5}, max_tokens=48)
            complete_many(url, PROMPTS[:size], max_tokens=48)
        wait_for(lambda: client.xinfo_groups(key)[0]["lag"] == 0, 5, "the controller to catch up")
        time.sleep(3 * ctl.settings.interval_s)
        fitted, fit = ctl.online_model, ctl.last_fit
        assert fitted.name == "online" and fit is not None
        doc = published(client)
        assert doc is not None and doc.cost_model_fitted  # targets now take the controller's model
        status = json.loads(client.get(status_key("smartspec")))["cost_model"]["last_fit"]
        print(f"controller's own held-out check: error {fit.error_in_force:.1%} ({fit.reason}), "
              f"R² {fit.holdout_r2}")
        assert status["error_in_force"] == pytest.approx(fit.error_in_force)
        # The window's held-out steps as they are now (the last refit may predate its last few steps;
        # no held-out step is ever in a training part, so all of them are unseen by the model in force).
        m = max(2, round(1 / ctl.settings.holdout_fraction))
        hold = [x for x, k in zip(ctl.window.samples, ctl.window.sample_keys, strict=True) if k % m == 0]
        in_window = relative_error(fitted, hold)
        floor, _ = noise_floor(hold)
        print(f"{len(hold)} held-out steps in the window: error {in_window:.1%}, in-sample floor {floor:.1%}")
        assert in_window < bound(floor)
        marker = client.xrevrange(key, count=1)[0][0]
        for size in (7, 2, 5):
            complete_many(url, PROMPTS[:size], speculation={"max_k": size % 5}, max_tokens=48)
        held_out = [records.decode(f).sample for _, f in client.xrange(key, min="(" + marker)]
        held_out = [s for s in held_out if s.shape.batch > 0]
        error = relative_error(fitted, held_out)
        r2 = decide.holdout_r2(fitted, held_out)
        floor, floor_r2 = noise_floor(held_out)
        print(f"controller fit on {fitted.samples} steps; {len(held_out)} held-out steps: "
              f"mean |error| {error:.1%} of the mean step, R² {r2}; in-sample floor {floor:.1%}, R² {floor_r2:.2f}")
        speed, shape_error, shape_r2 = at_phase_speed(fitted, held_out)
        print(f"at this phase's speed (× {speed:.3f}): mean |error| {shape_error:.1%}, R² {shape_r2:.3f}")
        worst = sorted(held_out, key=lambda x: -abs(fitted.step_time(x.shape) - x.total_s))[:8]
        for x in worst:
            print(f"  {x.shape} actual {x.total_s * 1e3:.1f} ms (draft {x.draft_s * 1e3:.1f}, verify "
                  f"{x.verify_s * 1e3:.1f}), predicted {fitted.step_time(x.shape) * 1e3:.1f} ms "
                  f"{tuple(round(c * 1e3, 1) for c in fitted.components(x.shape))}")
        # The mean error carries the claim. R² over ~90 steps of three batch sizes is dominated by the
        # spread of same-shape steps and a few stalls here (0.47 in a CI run whose error was 19.5 %; 0.25
        # against an in-sample 0.54 at 10.5 % error here): a third of the floor's, so better than a constant.
        # Judged at the later phase's own machine speed (one number, bounded): this VM's speed moves by ±20 %
        # from one minute to the next (the same decode step, results/2026-12-06-interleaved-*), and the floor
        # model is fitted on the phase itself, so without it a slower minute fails a model whose shape is right
        # (CI: 31 % against a 10 % floor, every worst step 1.5-2× its prediction). The in-window check above
        # stays unscaled.
        assert len(held_out) >= 20 and 0.5 < speed < 2.0 and shape_error < bound(floor)
        # Where even the phase's own fit explains little (floor R² < 0.3: steps of one shape spread as much as
        # the shapes differ; 0.05-0.14 in some runs here), R² can only say "better than the mean step".
        assert r2 is not None and shape_r2 > (min(0.3, floor_r2 / 3) if floor_r2 >= 0.3 else 0.0)
    finally:
        stop_all(stack.stop, draft.kill, lambda: loop_thread.run(ctl.stop()), client.close)


def noise_floor(samples: list[StepSample]) -> tuple[float, float]:
    """Error and R² of plain least squares fitted on `samples` themselves, over the cost model's features
    (written apart from `fit_cost_model`, so a fault there cannot raise the floor it is judged against):
    roughly the best a linear model does on these very steps, which on a shared 2-core machine is set by how
    much steps of one shape spread."""
    def row(x: StepSample) -> list[float]:
        f, d = x.shape.features(True), (x.draft_shape or x.shape).features(True)
        return [f[n] for n in VERIFY_FEATURES] + [d[n] for n in DRAFT_FEATURES] + [f["draft_tokens"]]

    a, y = np.array([row(x) for x in samples]), np.array([x.total_s for x in samples])
    theta, *_ = np.linalg.lstsq(a, y, rcond=None)
    predicted = a @ theta
    return float(np.abs(predicted - y).mean() / y.mean()), r_squared(y, predicted)


def at_phase_speed(model: CostModel, samples: list[StepSample]) -> tuple[float, float, float]:
    """The machine's speed in `samples`' phase relative to the model's (median actual / predicted), and the
    model's mean |error| (of the mean step) and R² once its predictions are scaled by it."""
    actual = np.array([x.total_s for x in samples])
    predicted = np.array([x.predicted_s(model) for x in samples])
    speed = float(np.median(actual / predicted))
    return speed, float(np.abs(actual - speed * predicted).mean() / actual.mean()), r_squared(actual, speed * predicted)


def bound(floor: float) -> float:
    return max(0.25, 1.25 * floor + 0.05)


def test_published_policy_is_in_force_within_a_second(plane: dict[str, Any]) -> None:
    url, client = plane["stack"].url, plane["redis"]
    first = wait_for(lambda: published(client), 3, "a first policy")
    assert not first.cost_model_fitted  # nothing fitted yet: only the controller's starting guess
    wait_for(lambda: metric(url, "smartspec_policy_version") == first.version, 2, "the first version in force")
    set_spec(client, "smartspec", {"mode": "fixed", "maxSpeculationLength": 3, "fixedSpeculationLength": 2})
    doc = wait_for(lambda: (d := published(client)) and d.mode == "fixed" and d.max_k == 3 and d, 3, "new policy")
    seen = wait_for(lambda: metric(url, "smartspec_policy_version") >= doc.version and time.time(), 2,
                    "the new version in /metrics")
    print(f"policy v{doc.version} in force {seen - doc.issued_at:.3f}s after it was issued")
    assert seen - doc.issued_at < 1.0
    # ... and it is obeyed: no request drafts more than the published K.
    out = complete(url, PROMPTS[0], max_tokens=24)
    assert out["usage"]["speculation"]["mean_k"] <= 2.0


def test_otlp_metrics_reach_the_controller(plane: dict[str, Any]) -> None:
    url, ctl = plane["stack"].url, plane["ctl"]
    complete_many(url, PROMPTS[:4])
    view = ctl.view

    def seen() -> bool:
        vals = view.values.get("target-0", {})
        return all(n in vals for n in ("smartspec_num_requests_running", "smartspec_num_requests_waiting")) and \
            vals.get("smartspec_generation_tokens", (0.0, 0))[0] >= 4 * 24 and \
            vals.get("smartspec_spec_decode_num_accepted_tokens", (0.0, 0))[0] > 0

    wait_for(seen, 5, "OTLP data points from the target")
    assert view.latest("smartspec_num_requests_running", max_age_s=5.0) == {"target-0": 0.0}
    wait_for(lambda: view.spans["decode"] >= 4, 5, "request spans over OTLP")
    assert view.spans["text_completion target"] >= 4


def test_a_new_recommended_k_alone_goes_to_the_status_not_into_a_new_policy(
        loop_thread: LoopThread, redis_db: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    ctl = Controller(ControllerSettings(redis_url=redis_db.url, http_port=0, otlp_port=0))  # decides when told to
    client = redis_db.client()
    try:
        first = loop_thread.run(ctl.decide_once())
        assert first is not None and published(client) == first
        before = json.loads(client.get(status_key("smartspec")))["recommended_k"]
        assert before and all(0 <= k <= first.max_k for k in before.values())
        # Only the recommended k per batch size moves (e.g. the load shifted which k pays at each size).
        monkeypatch.setattr(decide, "k_at", lambda batch, *_: (before[str(batch)] + 1) % (first.max_k + 1))
        assert loop_thread.run(ctl.decide_once()) is None
        status = json.loads(client.get(status_key("smartspec")))
        assert status["recommended_k"] == {b: (k + 1) % (first.max_k + 1) for b, k in before.items()} != before
        assert published(client) == first and status["policy_version"] == first.version
    finally:
        stop_all(lambda: loop_thread.run(ctl.redis.aclose()), ctl.metrics.shutdown, client.close)


def test_a_goodput_target_calibrates_reports_the_profile_and_keeps_its_model_until_the_controller_fits(
        loop_thread: LoopThread, tiny_svc_models: dict[str, Any], redis_db: Any) -> None:
    client = redis_db.client()
    ctl = start_controller(loop_thread, redis_db.url)
    stack = start_stack(loop_thread, tiny_svc_models, redis_url=redis_db.url, replica="target-0", policy="goodput")
    try:
        scheduler = stack.target.ctx.engine.scheduler
        profile = wait_for(lambda: [r for _, f in client.xrange(steps_key("smartspec"))
                                    if (r := records.decode(f)).calibration], 5, "the start-up profile's records")
        assert {r.max_k for r in profile} >= {0, 1, 8} and all(not r.acceptance for r in profile)
        doc = wait_for(lambda: published(client), 3, "a first policy")
        wait_for(lambda: scheduler.in_force.version >= doc.version, 3, "the policy in force")
        assert not doc.cost_model_fitted
        # The controller's starting guess did not replace the target's calibrated model, and it keeps refitting.
        assert scheduler.policy.cost_model.name == "online" and scheduler.in_force.refit
        wait_for(lambda: ctl.window.calibration_samples >= len(profile), 5, "the controller to read the profile")
        assert ctl.window.recent.maxlen and not [r for r in ctl.window.recent if r.calibration]
    finally:
        stop_all(stack.stop, lambda: loop_thread.run(ctl.stop()), client.close)
