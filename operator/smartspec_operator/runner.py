"""Run the operator: kopf with our handlers, credentials, Redis store and liveness endpoint."""

from __future__ import annotations

import asyncio
import logging

import kopf

from smartspec.auth import read_secret, redact_url
from smartspec_operator.kube import Kube
from smartspec_operator.settings import OperatorSettings
from smartspec_operator.store import Store

log = logging.getLogger(__name__)


async def operate(settings: OperatorSettings, stop_flag: asyncio.Event | None = None) -> None:
    """Until SIGTERM/SIGINT (or `stop_flag`): reconcile smartspec objects in the watched namespaces."""
    import smartspec_operator.handlers  # noqa: F401  (registers the handlers with kopf)

    namespaces = settings.watched_namespaces()
    admin = read_secret(settings.redis_password_file, "redis_password_file") if settings.redis_password_file else None
    store = Store(passwords={settings.redis_url: admin} if admin else None)
    memo = kopf.Memo(settings=settings, kube=Kube(settings.request_timeout_s), store=store)
    liveness = f"http://{settings.health_host}:{settings.health_port}/healthz" if settings.health_port else None
    log.info("operator: watching %s; default Redis %s (%s)", ", ".join(namespaces) or "all namespaces",
             redact_url(settings.redis_url), "a Redis user per service" if admin else "no Redis auth")
    # standalone: one operator replica, no KopfPeering objects to install or contend for.
    await kopf.operator(standalone=True, clusterwide=not namespaces, namespaces=namespaces,
                        liveness_endpoint=liveness, memo=memo, stop_flag=stop_flag)
