"""Run the operator: kopf with our handlers, credentials, Redis store and liveness endpoint."""

from __future__ import annotations

import asyncio
import logging

import kopf

from smartspec_operator.kube import Kube
from smartspec_operator.settings import OperatorSettings
from smartspec_operator.store import Store

log = logging.getLogger(__name__)


async def operate(settings: OperatorSettings, stop_flag: asyncio.Event | None = None) -> None:
    """Until SIGTERM/SIGINT (or `stop_flag`): reconcile smartspec objects in the watched namespaces."""
    import smartspec_operator.handlers  # noqa: F401  (registers the handlers with kopf)

    namespaces = settings.watched_namespaces()
    memo = kopf.Memo(settings=settings, kube=Kube(settings.request_timeout_s), store=Store())
    liveness = f"http://{settings.health_host}:{settings.health_port}/healthz" if settings.health_port else None
    log.info("operator: watching %s; default Redis %s", ", ".join(namespaces) or "all namespaces",
             settings.redis_url)
    # standalone: one operator replica, no KopfPeering objects to install or contend for.
    await kopf.operator(standalone=True, clusterwide=not namespaces, namespaces=namespaces,
                        liveness_endpoint=liveness, memo=memo, stop_flag=stop_flag)
