"""The draft gRPC service: GetInfo and one bidirectional Session stream per target replica."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc

from smartspec import tls
from smartspec.auth import keys_for
from smartspec.engine.builder import NGRAM, draft_proposer
from smartspec.models.loading import load_tokenizer, tokenizer_fingerprint
from smartspec.rpc import RunningServer, start_server, wait_for_signal
from smartspec.v1 import common_pb2, draft_pb2, draft_pb2_grpc
from smartspec_draft.session import DraftCore, StreamSession
from smartspec_draft.settings import DraftSettings

log = logging.getLogger(__name__)
SERVICE_NAME = draft_pb2.DESCRIPTOR.services_by_name["DraftService"].full_name


class DraftServicer(draft_pb2_grpc.DraftServiceServicer):
    def __init__(self, core: DraftCore, info: common_pb2.ModelInfo) -> None:
        self.core = core
        self.info = info
        self.sessions = 0  # open streams, for tests and logs

    async def GetInfo(self, request: Any, context: Any) -> draft_pb2.DraftInfoResponse:
        return draft_pb2.DraftInfoResponse(model=self.info)

    async def Session(
        self, request_iterator: AsyncIterator[draft_pb2.SessionRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[draft_pb2.SessionResponse]:
        session = StreamSession(self.core)
        self.sessions += 1
        last = 0
        try:
            async for req in request_iterator:
                if req.step_id <= last:
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                        f"step_id {req.step_id} is not above the previous {last}")
                last = req.step_id
                # The model runs in a worker thread so health checks and other streams stay live.
                yield await asyncio.to_thread(session.handle, req, time.monotonic())
        finally:
            self.sessions -= 1
            # Synchronous on purpose: a cancelled RPC may not get to resume an await in here, and
            # the stream's draft state must be freed whatever ended it. It waits only for the lock.
            try:
                session.close()
            except Exception:
                log.exception("freeing a closed stream's sequences failed")


def build_core(settings: DraftSettings) -> tuple[DraftCore, common_pb2.ModelInfo]:
    """Load the proposer named by the settings and describe it for GetInfo."""
    if settings.method == "ngram":
        proposer, _ = draft_proposer(NGRAM, dtype=settings.dtype, num_slots=settings.max_sequences,
                                     max_len=settings.max_len, ngram_max=settings.ngram_max,
                                     ngram_min=settings.ngram_min)
        fingerprint = tokenizer_fingerprint(load_tokenizer(settings.tokenizer)) if settings.tokenizer else ""
        info = common_pb2.ModelInfo(model_id=settings.model_id or "ngram", vocab_size=0,
                                    tokenizer_fingerprint=fingerprint, dtype="", device_type="cpu",
                                    max_num_speculative_tokens=settings.max_k, method="ngram")
        return DraftCore(proposer, None, settings.max_k, settings.max_sequences), info
    assert settings.model is not None
    tokenizer = load_tokenizer(settings.model)
    proposer, runner = draft_proposer(settings.model, dtype=settings.dtype, num_slots=settings.max_sequences,
                                      max_len=settings.max_len, q_top_k=settings.q_top_k, graphs=settings.graphs,
                                      max_k=settings.max_k, head_vocab=settings.head_vocab, quant=settings.quant,
                                      cpu_kernels=settings.cpu_kernels)
    assert runner is not None
    info = common_pb2.ModelInfo(
        model_id=settings.model_id or Path(settings.model).name, vocab_size=runner.vocab_size,
        tokenizer_fingerprint=tokenizer_fingerprint(tokenizer), dtype=settings.dtype,
        device_type=runner.device.type, max_num_speculative_tokens=settings.max_k, method="draftModel",
    )
    return DraftCore(proposer, runner.vocab_size, settings.max_k, settings.max_sequences), info


async def start(settings: DraftSettings, core: DraftCore | None = None,
                info: common_pb2.ModelInfo | None = None) -> tuple[RunningServer, DraftServicer]:
    # Before loading anything: a deployment without keys fails fast. Without a key anyone who can reach
    # the port can open sessions and take every draft slot from the real targets.
    keys = keys_for("draft gRPC", settings.auth_token_file, settings.host, settings.allow_unauthenticated,
                    setting="auth_token_file")
    if settings.tls_dir:
        tls.load(settings.tls_dir, "tls_dir")
    tls.note_plaintext("draft gRPC", settings.host, settings.tls_dir)
    if core is None or info is None:
        core, info = build_core(settings)
    servicer = DraftServicer(core, info)
    running = await start_server(
        [(draft_pb2_grpc.add_DraftServiceServicer_to_server, servicer, SERVICE_NAME)], settings.host, settings.port,
        keys=keys, tls_dir=settings.tls_dir)
    log.info("draft service (%s, %s) listening on %s:%d", info.method, info.model_id, settings.host, running.port)
    return running, servicer


async def serve(settings: DraftSettings) -> None:
    """Run until SIGINT/SIGTERM; on either, stop taking streams and exit."""
    running, _ = await start(settings)
    print(f"smartspec draft service listening on {settings.host}:{running.port}", flush=True)
    await wait_for_signal()
    await running.stop()
