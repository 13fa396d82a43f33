"""Assemble and run the target service: model, scheduler thread, draft client, gRPC and HTTP front ends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from smartspec import tls
from smartspec.auth import ApiKeys, keys_for, read_token
from smartspec.engine.builder import EngineSpec, assemble_engine, make_runner
from smartspec.engine.calibration import CalibrationConfig, calibrate
from smartspec.engine.graph_step import BucketConfig
from smartspec.engine.refit import RefitConfig
from smartspec.engine.scheduler import DeadlineConfig, Scheduler
from smartspec.models.loading import load_model, load_tokenizer, tokenizer_fingerprint
from smartspec.policy.cost_model import load_cost_model
from smartspec.policy.policy import PolicyConfig, SpeculationPolicy
from smartspec.rpc import RunningServer, start_server, wait_for_signal
from smartspec.v1 import common_pb2, target_pb2_grpc
from smartspec_target.engine_loop import EngineLoop
from smartspec_target.grpc_api import SERVICE_NAME, TargetServicer
from smartspec_target.guards import EdgeGuard, GuardedH11Protocol
from smartspec_target.http_api import ApiContext, build_app
from smartspec_target.policy_sync import PolicySwitch, PolicySync
from smartspec_target.remote_proposer import RemoteProposer
from smartspec_target.settings import TargetSettings
from smartspec_target.telemetry import Telemetry

log = logging.getLogger(__name__)


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handlers: SIGTERM means drain first, which the service runs."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class TargetService:
    settings: TargetSettings
    ctx: ApiContext
    engine: EngineLoop
    draft: RemoteProposer | None
    grpc: RunningServer
    http: _HttpServer
    http_task: asyncio.Task[None]
    http_port: int
    telemetry: Telemetry
    policy_sync: PolicySync | None  # None without Redis: the local default stays in force

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.host}:{self.http_port}"

    async def drain_and_stop(self, timeout_s: float | None = None) -> None:
        """Stop admitting, let running requests finish, then shut every part down."""
        await self.grpc.set_serving(False)
        drained = await self.engine.drain(self.settings.drain_timeout_s if timeout_s is None else timeout_s)
        if not drained:
            log.warning("drain timed out with %d requests still running", self.engine.in_flight)
        self.http.should_exit = True
        await asyncio.gather(self.http_task, return_exceptions=True)
        await self.grpc.stop(grace_s=1.0)
        if self.draft is not None:
            await self.draft.close()
        self.engine.stop()
        if self.policy_sync is not None:
            await self.policy_sync.close()
        await self.telemetry.close()  # shuts the metrics down too


async def start(settings: TargetSettings, model: Any = None, tokenizer: Any = None) -> TargetService:
    """Start everything on the running loop; returns once both front ends accept connections."""
    loop = asyncio.get_running_loop()
    keys = _api_keys(settings)  # before loading anything: a deployment without keys fails fast
    if settings.tls_dir:
        tls.load(settings.tls_dir, "tls_dir")  # ... and one with an unusable certificate too
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(settings.model)
    if model is None:
        model = load_model(settings.model, settings.dtype, cpu_kernels=settings.cpu_kernels)
    name = settings.served_model_name or Path(settings.model).name
    telemetry = Telemetry(settings, name)
    metrics = telemetry.metrics
    runner = make_runner(model, num_slots=settings.max_batch_size, max_len=settings.max_len, graphs=settings.graphs,
                         max_k=settings.max_k, buckets=BucketConfig(tuple(settings.graph_batch_sizes),
                                                                    kv_sizes=tuple(settings.graph_kv_sizes)))
    fingerprint = tokenizer_fingerprint(tokenizer)
    draft = None
    if settings.draft_address:
        draft = RemoteProposer(settings.draft_address, loop, target_vocab=runner.vocab_size, fingerprint=fingerprint,
                               deadline_s=settings.draft_deadline_s, metrics=metrics,
                               backoff_s=(min(0.1, settings.draft_backoff_max_s), settings.draft_backoff_max_s),
                               token=read_token(settings.draft_token_file, "draft_token_file")
                               if settings.draft_token_file else None, tls_dir=settings.tls_dir)
        await draft.start()
        if not await draft.wait_connected(settings.draft_connect_timeout_s):
            log.warning("no draft at %s yet; serving at k = 0 until it connects", settings.draft_address)
    spec = EngineSpec(settings.model, settings.draft_address, dtype=settings.dtype,
                      num_slots=settings.max_batch_size, max_len=settings.max_len, max_k=settings.max_k,
                      max_prefill_tokens=settings.max_prefill_tokens,
                      emulate_acceptance=settings.emulate_acceptance)
    engine = assemble_engine(runner, model, tokenizer, draft, spec)
    if settings.emulate_acceptance is not None:
        log.warning("ACCEPTANCE EMULATION ON (alpha=%.3f): drafts are accepted at random, outputs are NOT the "
                    "target's; for step-time experiments only", settings.emulate_acceptance)
    mode = settings.policy if draft is not None else "off"
    config = PolicyConfig(mode=mode, max_k=settings.max_k, fixed_k=min(settings.fixed_k, settings.max_k),
                          hysteresis=settings.hysteresis)
    cost = load_cost_model(settings.cost_model)
    deadline = DeadlineConfig(factor=settings.draft_deadline_factor, max_s=settings.draft_deadline_s,
                              floor_s=min(settings.draft_deadline_floor_s, settings.draft_deadline_s))
    # The refit runs beside the step loop, not in it (smartspec/engine/refit.py).
    scheduler = Scheduler(engine, SpeculationPolicy(config, cost), sinks=telemetry.sinks, deadline=deadline,
                          refit=RefitConfig(background=True))
    await _calibrate(settings, scheduler, draft, runner.vocab_size)
    switch = PolicySwitch(scheduler, metrics, can_speculate=draft is not None)
    engine_loop = EngineLoop(scheduler, metrics, loop, switch=switch, tracer=telemetry.tracer, model_name=name,
                             max_in_flight=settings.max_batch_size + settings.max_queue)
    engine_loop.start()
    policy_sync = None
    if settings.redis_url:  # follow the controller's policy; without Redis the local default stays
        policy_sync = PolicySync(settings.redis_url, settings.service, engine_loop.set_policy, metrics,
                                 poll_s=settings.policy_poll_s, password=telemetry.redis_password(),
                                 tls_dir=settings.redis_tls_dir)
        policy_sync.start()
    ctx = ApiContext(engine_loop, tokenizer, name, runner.max_len, settings.max_k, metrics,
                     draft_state=draft.state if draft is not None else lambda: "none")
    info = common_pb2.ModelInfo(model_id=name, vocab_size=runner.vocab_size, tokenizer_fingerprint=fingerprint,
                                dtype=settings.dtype, device_type=runner.device.type,
                                max_num_speculative_tokens=settings.max_k, method="target")
    grpc_server = await start_server(
        [(target_pb2_grpc.add_TargetServiceServicer_to_server, TargetServicer(ctx, info), SERVICE_NAME)],
        settings.host, settings.grpc_port, keys=keys)
    app = EdgeGuard(build_app(ctx), keys, settings.max_body_bytes, settings.body_timeout_s)
    http = _HttpServer(uvicorn.Config(app, host=settings.host, port=settings.http_port,
                                      http=GuardedH11Protocol.configure(settings.header_timeout_s),
                                      limit_concurrency=settings.max_connections,
                                      log_level="warning", lifespan="off", timeout_graceful_shutdown=5,
                                      log_config=None))  # uvicorn's records go to our handlers and limiter
    http_task = asyncio.create_task(http.serve())
    while not http.started:
        if http_task.done():
            http_task.result()  # surfaces a bind error
        await asyncio.sleep(0.01)
    port = int(http.servers[0].sockets[0].getsockname()[1])
    log.info("target %s: HTTP on %s:%d, gRPC on %s:%d", name, settings.host, port, settings.host, grpc_server.port)
    return TargetService(settings, ctx, engine_loop, draft, grpc_server, http, http_task, port, telemetry,
                         policy_sync)


def _api_keys(settings: TargetSettings) -> ApiKeys | None:
    return keys_for("target API", settings.api_key_file, settings.host, settings.allow_unauthenticated)


async def _calibrate(settings: TargetSettings, scheduler: Scheduler, draft: RemoteProposer | None,
                     vocab_size: int) -> None:
    """The start-up profile (engine/calibration.py), off the event loop: the draft client needs the loop."""
    if settings.calibrate_s == 0 or settings.cost_model != "default" or not scheduler.policy.config.adaptive:
        return
    if draft is None or not draft.connected:
        log.warning("no draft connected: skipping start-up calibration; the cost model starts from its default")
        return
    cfg = CalibrationConfig(budget_s=settings.calibrate_s)
    report = await asyncio.get_running_loop().run_in_executor(
        None, calibrate, scheduler, vocab_size, settings.max_batch_size, cfg)
    model = scheduler.policy.cost_model
    log.info("start-up calibration: %d steps in %.1fs; cost model %s (R²=%s)", len(report.steps), report.seconds,
             "fitted to them" if report.adopted else "left at its default", model.r2)


async def serve(settings: TargetSettings) -> None:
    """Run until SIGINT/SIGTERM, then drain: finish running requests, refuse new ones, exit."""
    svc = await start(settings)
    print(f"smartspec target listening: HTTP {svc.base_url}  gRPC {settings.host}:{svc.grpc.port}", flush=True)
    await wait_for_signal()
    log.info("signal received: draining")
    await svc.drain_and_stop()
