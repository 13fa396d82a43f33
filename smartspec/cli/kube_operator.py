"""`smartspec operator`: run the Kubernetes operator in the foreground (env SMARTSPEC_OPERATOR_*)."""

from __future__ import annotations

import argparse
import asyncio

from smartspec.cli.serve import _settings


def register(sub: argparse._SubParsersAction) -> None:
    o = sub.add_parser("operator", help="run the kopf operator for SpeculativeService/SpeculationPolicy")
    o.add_argument("--namespaces", help="comma-separated namespaces to watch (default: all)")
    o.add_argument("--kube-url", help="API server URL without auth, e.g. from `kubectl proxy` (default: in-cluster, "
                                      "then kubeconfig)")
    o.add_argument("--redis-url", help="Redis for services whose spec has no redis.url")
    o.add_argument("--status-interval-s", type=float)
    o.add_argument("--health-port", type=int, help="liveness endpoint /healthz (0: off)")
    o.set_defaults(func=_operate)


def _operate(args: argparse.Namespace) -> int:
    from smartspec.logs import configure
    from smartspec_operator.runner import operate
    from smartspec_operator.settings import OperatorSettings

    settings = _settings(OperatorSettings, args)
    configure()
    asyncio.run(operate(settings))
    return 0
