"""`smartspec models fetch|path`: obtain the real pair once, then print where it is."""

from __future__ import annotations

import argparse
import sys
import time

from smartspec.errors import InvalidRequest
from smartspec.models.fetch import fetch, model_path
from smartspec.models.registry import PAIR, Role
from smartspec.models.settings import ModelSettings


def register(sub: argparse._SubParsersAction) -> None:
    models = sub.add_parser("models", help="fetch the real model pair, print its folders")
    verbs = models.add_subparsers(dest="verb", required=True)
    f = verbs.add_parser("fetch", help="download, check and convert the pinned pair (idempotent)")
    f.add_argument("roles", nargs="*", metavar="ROLE", help="target and/or draft (default: both)")
    f.set_defaults(func=_fetch)
    p = verbs.add_parser("path", help="print the converted folder of the target or draft model")
    p.add_argument("role", choices=list(PAIR))
    p.set_defaults(func=_path)


def _fetch(args: argparse.Namespace) -> int:
    unknown = [r for r in args.roles if r not in PAIR]
    if unknown:
        raise InvalidRequest(f"unknown model role(s) {', '.join(unknown)}; choose from {', '.join(PAIR)}")
    roles: list[Role] = list(args.roles) or list(PAIR)
    start = time.monotonic()

    def progress(msg: str) -> None:
        print(f"[{time.monotonic() - start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    for role, path in fetch(ModelSettings(), roles, progress).items():
        print(f"{role}\t{path}")
    return 0


def _path(args: argparse.Namespace) -> int:
    print(model_path(ModelSettings(), args.role))
    return 0
