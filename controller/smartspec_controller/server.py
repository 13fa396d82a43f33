"""The controller service: consume step records, receive OTLP metrics, decide every interval, publish.

Loops (one asyncio task each): the consumer reads `smartspec:{service}:steps` through a consumer
group (a restarted controller resumes where the group left off, pending entries first); the
decider runs every `interval_s`: reads the operator's spec, refits the cost model, pools
acceptance, predicts, and publishes a new policy version when the decision changed or the one in
force is due for refresh. HTTP serves /metrics, /health, /policy and /status.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Iterator
from typing import Any

import redis.asyncio as aioredis
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from redis.exceptions import RedisError, ResponseError

from smartspec import tls
from smartspec.auth import keys_for, read_secret, redact_url
from smartspec.policy.cost_model import CostModel, load_cost_model
from smartspec.policy.document import (
    GoodputReport,
    PolicyDocument,
    PolicySpec,
    default_spec,
    parse_document,
    parse_spec,
)
from smartspec.policy.limits import MAX_K_LIMIT, MAX_POLICY_VERSION
from smartspec.rpc import RunningServer, start_server, wait_for_signal
from smartspec.telemetry.keys import check_service, policy_key, policy_spec_key, status_key, steps_key
from smartspec.telemetry.records import BadRecord, decode
from smartspec.telemetry.status import ControllerStatus, CostModelReport, FitReport, LoadReport
from smartspec_controller import decide
from smartspec_controller.metrics import ControllerMetrics
from smartspec_controller.otlp_receiver import LoadView, services
from smartspec_controller.settings import ControllerSettings
from smartspec_controller.window import TelemetryWindow, measured

log = logging.getLogger(__name__)
PRIOR_CHANGE = 0.05  # republish when a pooled acceptance rate moved by more than this
# Publish atomically, and only over an older version: two controllers (a rolling update) never
# publish the same version with different content. Returns 0, or the newer version found. Lua numbers
# are doubles: a stored version that is not an integer in [1, ARGV[3]] (exact in a double) is not a
# valid document's, and is overwritten rather than obeyed (2^60 would otherwise lock publishing for good).
_PUBLISH_IF_NEWER = """
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, doc = pcall(cjson.decode, cur)
  local v = ok and type(doc) == 'table' and tonumber(doc['version'])
  if v and v >= 1 and v <= tonumber(ARGV[3]) and v == math.floor(v) and v >= tonumber(ARGV[1]) then
    return v
  end
end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PUBLISH', KEYS[1], ARGV[2])
return 0
"""


class _HttpServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Controller:
    def __init__(self, settings: ControllerSettings) -> None:
        self.settings = settings
        self.service = check_service(settings.service)
        password = read_secret(settings.redis_password_file, "redis_password_file") \
            if settings.redis_password_file else None
        self.redis = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5.0, socket_connect_timeout=2.0,
                                             **tls.redis_kwargs(settings.redis_url, settings.redis_tls_dir, password))
        self.metrics = ControllerMetrics(self.service)
        self.view = LoadView()
        self.spec = default_spec()
        self.spec_error: str | None = None
        self.publish_error: str | None = None  # why the last publish could not happen (None: it did)
        self.window = TelemetryWindow(max_k=MAX_K_LIMIT, fit_window=settings.fit_window,
                                      acceptance_window=self.spec.acceptance.window)
        self.online_model: CostModel = load_cost_model(settings.cost_model)
        self.last_fit: decide.FitResult | None = None
        self.doc: PolicyDocument | None = None
        self.version = 0
        self.status: ControllerStatus | None = None
        self.redis_ok = True
        self._republish = False  # Redis came back: it may have restarted empty, so publish again at once
        self._last_id = (0, 0)  # newest stream entry ingested
        self._points_counted = 0  # OTLP data points already added to the counter
        self._tasks: list[asyncio.Task[None]] = []
        self._cas = self.redis.register_script(_PUBLISH_IF_NEWER)
        self.grpc: RunningServer | None = None
        self.http: _HttpServer | None = None
        self.http_port = 0

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        # Forged OTLP metrics would set the "current load" the controller reports: only the targets may send.
        keys = keys_for("controller OTLP", self.settings.otlp_token_file, self.settings.host,
                        self.settings.allow_unauthenticated, setting="otlp_token_file")
        tls.note_plaintext("controller OTLP", self.settings.host, self.settings.tls_dir)
        self.grpc = await start_server(services(self.view), self.settings.host, self.settings.otlp_port, keys=keys,
                                       tls_dir=self.settings.tls_dir)
        self.http = _HttpServer(uvicorn.Config(self._app(), host=self.settings.host, port=self.settings.http_port,
                                               log_level="warning", lifespan="off", timeout_graceful_shutdown=2,
                                               log_config=None))
        self._tasks.append(asyncio.create_task(self.http.serve(), name="http"))
        while not self.http.started:
            if self._tasks[0].done():
                self._tasks[0].result()
            await asyncio.sleep(0.01)
        self.http_port = int(self.http.servers[0].sockets[0].getsockname()[1])
        self._tasks.append(asyncio.create_task(self._consume_loop(), name="consume"))
        self._tasks.append(asyncio.create_task(self._decide_loop(), name="decide"))
        log.info("controller for %s: HTTP %s:%d, OTLP gRPC %s:%d, Redis %s", self.service, self.settings.host,
                 self.http_port, self.settings.host, self.grpc.port, redact_url(self.settings.redis_url))

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop every loop and server; each part gets `timeout_s`, then it is cancelled (never hangs)."""
        if self.http is not None:
            self.http.should_exit = True
        for task in self._tasks[1:]:
            task.cancel()
        _, pending = await asyncio.wait(self._tasks, timeout=timeout_s) if self._tasks else (set(), set())
        for task in pending:  # e.g. the HTTP server still waiting for a client to close its connection
            log.warning("controller: %s did not stop within %.0fs; cancelled", task.get_name(), timeout_s)
            task.cancel()
        if self.grpc is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.grpc.stop(grace_s=0.5), timeout_s)
        with contextlib.suppress(asyncio.TimeoutError, RedisError, OSError):
            await asyncio.wait_for(self.redis.aclose(), timeout_s)
        self.metrics.shutdown()

    @property
    def otlp_port(self) -> int:
        return self.grpc.port if self.grpc else 0

    # -- consuming step records --------------------------------------------------------------------
    async def _ensure_group(self) -> None:
        key, group = steps_key(self.service), self.settings.consumer_group
        try:  # from the start of the (capped) stream: a new controller learns from the history there
            await self.redis.xgroup_create(key, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        # Entries a crashed controller had read but not acknowledged become ours (one controller per
        # service); the "0" cursor then reads them before anything new.
        await self.redis.xautoclaim(key, group, self.settings.consumer, min_idle_time=0, start_id="0-0", count=100_000)

    async def _consume_loop(self) -> None:
        key, group = steps_key(self.service), self.settings.consumer_group
        consumer = self.settings.consumer
        cursor = "0"  # this consumer's pending entries first (delivered before a crash, never acked)
        backoff = 0.1
        need_group = True
        while True:
            try:
                if need_group:
                    await self._ensure_group()
                    need_group = False
                block = None if cursor == "0" else 500
                resp: Any = await self.redis.xreadgroup(group, consumer, {key: cursor}, count=500, block=block)
                entries: list[Any] = resp[0][1] if resp else []
                if cursor == "0" and not entries:
                    cursor = ">"
                    continue
                ids: list[Any] = []
                for entry_id, fields in entries:
                    ids.append(entry_id)
                    eid = _entry_id(entry_id)
                    if fields and eid > self._last_id:  # re-read after a failed XACK: count once
                        self._ingest(fields)
                        self._last_id = eid
                if ids:
                    await self.redis.xack(key, group, *ids)
                self._redis_up()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis restarted empty, or the stream was deleted
                    need_group, cursor = True, "0"
                    continue
                log.exception("controller: Redis refused a read")
                await asyncio.sleep(1.0)
            except (RedisError, OSError) as exc:
                self._redis_down(exc)
                need_group, cursor = True, "0"
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, 2.0)

    def _ingest(self, fields: dict[Any, Any]) -> None:
        try:
            rec = decode(fields)
        except BadRecord as exc:
            self.metrics.bad_records.add(1)
            log.warning("controller: skipped a stream entry: %s", exc)
            return
        self.window.add(rec)
        self.metrics.records.add(1)

    def _redis_up(self) -> None:
        if not self.redis_ok:
            log.info("controller: Redis is back")
            self._republish = True
        self.redis_ok = True

    def _redis_down(self, exc: BaseException) -> None:
        if self.redis_ok:
            log.warning("controller: Redis unavailable (%s); retrying", exc)
        self.redis_ok = False

    # -- deciding -------------------------------------------------------------------------------------
    async def _decide_loop(self) -> None:
        while True:
            try:
                await self.decide_once()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self._redis_down(exc)
            except Exception:
                log.exception("controller: decision failed; keeping the policy in force")
            await asyncio.sleep(self.settings.interval_s)

    async def _read_spec(self) -> None:
        raw = await self.redis.get(policy_spec_key(self.service))
        if raw is None:
            spec, error = default_spec(), None
        else:
            try:
                spec, error = parse_spec(raw), None
            except ValueError as exc:
                spec, error = self.spec, str(exc)  # keep obeying the last valid spec
        if error and error != self.spec_error:
            log.warning("controller: %s; keeping the last valid spec", error)
        self.spec_error = error
        if spec != self.spec:
            log.info("controller: policy spec now %s", spec.model_dump_json(by_alias=True))
            self.window.acceptance_window = spec.acceptance.window
        self.spec = spec

    def _model(self) -> CostModel:
        static = decide.spec_cost_model(self.spec)
        if static is not None:
            return static
        s = self.settings
        if self.window.new_samples >= max(8, s.min_fit_samples // 4) and len(self.window.samples) >= s.min_fit_samples:
            self.window.new_samples = 0
            fit = decide.refit(self.window, self.online_model, s.holdout_fraction, max(self.spec.max_k, 1),
                               ridge=s.fit_ridge)
            if fit is not None:
                self.last_fit = fit
                self.metrics.fits.add(1, {"outcome": "adopted" if fit.adopted else "rejected"})
                if fit.adopted:
                    log.info("controller: cost model refitted (%s; held-out R² %s)", fit.reason, fit.holdout_r2)
                    self.online_model = fit.model
                else:
                    log.info("controller: refit not published: %s", fit.reason)
        return self.online_model

    def _fitted(self) -> bool:
        """Whether the model it publishes is more than its starting guess: an operator's static model, a model
        it was configured with, or a fit it adopted."""
        return (decide.spec_cost_model(self.spec) is not None or self.settings.cost_model != "default"
                or self.online_model.samples > 0)

    async def decide_once(self) -> PolicyDocument | None:
        """One pass of the slow loop; returns the document published now, if any."""
        await self._read_spec()
        now = time.time()
        spec, model = self.spec, self._model()
        recent = self.window.since(self.settings.load_window_s, now)
        seen = measured(recent)
        pri = decide.priors(self.window, spec)
        ctx = decide.context_per_request(recent or list(self.window.recent))
        table = {str(b): decide.k_at(b, model, spec, pri["default"], ctx) for b in self.settings.batch_sizes}
        batch = seen["batch_size"]
        if batch is None:  # no steps lately: the OTLP gauges say whether anything is running
            running = self.view.latest("smartspec_num_requests_running", max_age_s=15.0)
            batch = sum(running.values()) / len(running) if running else None
        current = None if batch is None else decide.CurrentLoad(
            batch_size=round(batch, 3), k=decide.k_at(max(1, round(batch)), model, spec, pri["default"], ctx))
        predicted = decide.predicted_goodput(recent, model, spec, pri["default"])
        cost = model.to_dict()
        if cost.get("r2") is not None and not math.isfinite(cost["r2"]):
            cost["r2"] = None
        published = None
        if self._changed(spec, cost, pri, now):  # the recommended k per load is status, not a new policy
            published = await self._publish(spec, cost, pri, seen["goodput"], predicted, now)
        await self._write_status(seen, predicted, model, table, current, now)
        self._update_metrics(seen["goodput"], predicted, model, current, now)
        return published

    def _changed(self, spec: PolicySpec, cost: dict[str, Any], pri: dict[str, list[float]], now: float) -> bool:
        d = self.doc
        if d is None or self._republish:
            return True
        if now - d.issued_at >= self.settings.refresh_fraction * (d.expires_at - d.issued_at):
            return True
        if (d.mode, d.max_k, d.fixed_k, d.hysteresis, d.per_request_override) != (
                spec.mode, spec.max_k, spec.fixed_k, spec.hysteresis, spec.per_request_override.allowed):
            return True
        if d.cost_model != cost or d.cost_model_fitted != self._fitted():
            return True
        for klass, rates in pri.items():
            old = d.acceptance_prior.get(klass)
            if old is None or max(abs(a - b) for a, b in zip(old, rates, strict=False)) > PRIOR_CHANGE:
                return True
        return False

    async def _publish(self, spec: PolicySpec, cost: dict[str, Any], pri: dict[str, list[float]],
                       measured_gp: float | None, predicted_gp: float | None, now: float) -> PolicyDocument | None:
        key = policy_key(self.service)
        raw = await self.redis.get(key)
        if raw is not None:  # versions continue across controller restarts (and across controllers)
            with contextlib.suppress(ValueError):
                self.version = max(self.version, parse_document(raw).version)
        if self.version >= MAX_POLICY_VERSION:  # only a document written by hand gets here
            if raw is None:  # the key was deleted, as the message below asks: number from 1 again
                self.version = 0
            else:
                self._cannot_publish(f"the policy at {key} has version {self.version}, the largest there is; "
                                     "delete the key and the next policy starts again at version 1 (targets take "
                                     "it once the one they hold expires)")
                return None
        doc = PolicyDocument(
            service=self.service, version=self.version + 1, mode=spec.mode, max_k=spec.max_k, fixed_k=spec.fixed_k,
            hysteresis=spec.hysteresis, per_request_override=spec.per_request_override.allowed, cost_model=cost,
            cost_model_fitted=self._fitted(), acceptance_prior=pri,
            goodput=GoodputReport(measured=measured_gp, predicted=predicted_gp),
            issued_at=now, expires_at=now + spec.expiry_s, decided_by=self.settings.name)
        body = doc.model_dump_json()
        newer = int(await self._cas(keys=[key], args=[doc.version, body, MAX_POLICY_VERSION]))
        if newer:  # another controller got there first: continue after its version next time
            self.version = max(self.version, newer)
            log.warning("controller: policy v%d already published by another controller; not overwriting", newer)
            return doc
        if self.publish_error is not None:
            log.info("controller: publishing again")
        self.version, self.doc, self.publish_error, self._republish = doc.version, doc, None, False
        log.info("controller: published policy v%d (%s, K=%d, cost model %s)", doc.version, doc.mode, doc.max_k,
                 cost.get("name"))
        return doc

    def _cannot_publish(self, why: str) -> None:
        if why != self.publish_error:
            log.error("controller: cannot publish: %s", why)
        self.publish_error = why

    async def _write_status(self, seen: dict[str, float | None], predicted: float | None, model: CostModel,
                            table: dict[str, int], current: decide.CurrentLoad | None, now: float) -> None:
        fit = self.last_fit
        self.status = ControllerStatus(
            service=self.service, decided_by=self.settings.name, decided_at=now, policy_version=self.version,
            mode=self.spec.mode, max_k=self.spec.max_k, spec_error=self.spec_error, publish_error=self.publish_error,
            measured_goodput=seen["goodput"], predicted_goodput=predicted, mean_k=seen["mean_k"],
            mean_batch_size=seen["batch_size"],
            current=None if current is None else LoadReport(batch_size=current.batch_size, k=current.k),
            recommended_k={str(b): k for b, k in table.items()},
            cost_model=CostModelReport(
                name=model.name, r2=model.r2, samples=model.samples,
                last_fit=None if fit is None else FitReport(
                    adopted=fit.adopted, reason=fit.reason, holdout_r2=fit.holdout_r2, r2_in_force=fit.r2_in_force,
                    holdout_error=fit.holdout_error, error_in_force=fit.error_in_force)),
            replicas=self.window.replicas(now=now), telemetry_age_s=self.window.age_s(now),
            records=self.window.records, otlp_instances=sorted(self.view.values))
        await self.redis.set(status_key(self.service), self.status.to_json())

    def _update_metrics(self, measured_gp: float | None, predicted: float | None, model: CostModel,
                        current: decide.CurrentLoad | None, now: float) -> None:
        m = self.metrics
        if measured_gp is not None:
            m.goodput.set(measured_gp, {"kind": "measured"})
        if predicted is not None:
            m.goodput.set(predicted, {"kind": "predicted"})
        m.policy_version.set(self.version)
        # R² of the model in force: the online fit's held-out R²; NaN for an operator's static model.
        r2 = self.last_fit.r2_in_force if self.last_fit is not None else None
        if decide.spec_cost_model(self.spec) is not None:
            m.r2.set(float("nan"))
        elif r2 is not None and math.isfinite(r2):
            m.r2.set(r2)
        age = self.window.age_s(now)
        if age is not None:
            m.telemetry_age.set(age)
        if current is not None:
            m.current_k.set(current.k)
            m.batch_size.set(current.batch_size)
        m.otlp_points.add(self.view.points - self._points_counted)
        self._points_counted = self.view.points

    # -- HTTP ------------------------------------------------------------------------------------------
    def _app(self) -> FastAPI:
        app = FastAPI(title="smartspec controller", docs_url=None, redoc_url=None)

        @app.get("/health")
        async def health() -> JSONResponse:
            ok = self.redis_ok and self.publish_error is None
            return JSONResponse({"status": "ok" if ok else "degraded", "redis": self.redis_ok,
                                 "policy_version": self.version, "publish_error": self.publish_error},
                                status_code=200 if ok else 503)

        @app.get("/metrics")
        async def metrics() -> Response:
            return Response(self.metrics.prometheus_text(), media_type="text/plain; version=0.0.4")

        @app.get("/policy")
        async def policy() -> JSONResponse:
            if self.doc is None:
                return JSONResponse({"error": {"message": "no policy published yet"}}, status_code=404)
            return JSONResponse(json.loads(self.doc.model_dump_json()))

        @app.get("/status")
        async def status() -> JSONResponse:
            if self.status is None:
                return JSONResponse({"error": {"message": "no decision yet"}}, status_code=404)
            return JSONResponse(json.loads(self.status.to_json()))

        return app


def _entry_id(raw: bytes | str) -> tuple[int, int]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


async def serve(settings: ControllerSettings) -> None:
    ctl = Controller(settings)
    await ctl.start()
    print(f"smartspec controller listening: HTTP http://{settings.host}:{ctl.http_port}  "
          f"OTLP {settings.host}:{ctl.otlp_port}", flush=True)
    await wait_for_signal()
    await ctl.stop()
