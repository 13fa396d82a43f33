"""`smartspec serve-draft` and `smartspec serve-target`: run one service in the foreground."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from pydantic import ValidationError

from smartspec.errors import InvalidRequest
from smartspec.policy.modes import MODES

_TLS = "dir with tls.crt, tls.key, ca.crt (a kubernetes.io/tls Secret)"
_REDIS_TLS = "for rediss://: dir with ca.crt (and a client tls.crt/tls.key)"
_CPU_KERNELS = "bf16 Linear layers through smartspec's kernel on AVX2-only CPUs (auto: where it is built)"


def register(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("serve-draft", help="run the draft gRPC service (env SMARTSPEC_DRAFT_*)")
    d.add_argument("--model", help="draft model folder")
    d.add_argument("--method", choices=["draftModel", "ngram"])
    d.add_argument("--tokenizer", help="tokenizer folder to fingerprint (ngram)")
    d.add_argument("--host")
    d.add_argument("--port", type=int)
    d.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    d.add_argument("--max-sequences", type=int)
    d.add_argument("--max-len", type=int)
    d.add_argument("--max-k", type=int)
    d.add_argument("--graphs", choices=["auto", "on", "off"], help="replay draft chains as graphs (auto: on CUDA)")
    d.add_argument("--head-vocab", type=int, help="draft only among the first N token ids and the EOS ids")
    d.add_argument("--quant", choices=["int8"], help="store the draft's Linear weights as int8 (CPU drafts)")
    d.add_argument("--cpu-kernels", choices=["auto", "on", "off"], help=_CPU_KERNELS)
    d.add_argument("--auth-token-file", help="tokens a caller must present, one per line; none: loopback only")
    d.add_argument("--allow-unauthenticated", action="store_true", default=None,
                   help="serve a non-loopback host without tokens")
    d.add_argument("--tls-dir", help=f"{_TLS}: serve mutual TLS only")
    d.set_defaults(func=_serve_draft)
    t = sub.add_parser("serve-target", help="run the target service: gRPC + OpenAI HTTP (env SMARTSPEC_TARGET_*)")
    t.add_argument("--model", help="target model folder")
    t.add_argument("--served-model-name")
    t.add_argument("--draft-address", help="host:port of a draft service")
    t.add_argument("--host")
    t.add_argument("--http-port", type=int)
    t.add_argument("--grpc-port", type=int)
    t.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    t.add_argument("--policy", choices=MODES)
    t.add_argument("--max-k", type=int)
    t.add_argument("--fixed-k", type=int)
    t.add_argument("--max-batch-size", type=int)
    t.add_argument("--max-len", type=int)
    t.add_argument("--graphs", choices=["auto", "on", "off"], help="replay verify steps as graphs (auto: on CUDA)")
    t.add_argument("--cpu-kernels", choices=["auto", "on", "off"], help=_CPU_KERNELS)
    t.add_argument("--draft-deadline-s", type=float, help="longest a step ever waits for drafts")
    t.add_argument("--draft-deadline-factor", type=float, help="wait this many times the predicted draft time")
    t.add_argument("--draft-deadline-floor-s", type=float, help="... but at least this long")
    t.add_argument("--cost-model")
    t.add_argument("--calibrate-s", type=float, help="start-up profile of step times before serving (0: off)")
    t.add_argument("--service", help="service name in the Redis keys")
    t.add_argument("--replica", help="this replica's name in step records")
    t.add_argument("--redis-url", help="redis://host:port for step records and the controller's policy")
    t.add_argument("--otlp-endpoint", help="host:port of an OTLP gRPC receiver (e.g. the controller)")
    t.add_argument("--otlp-interval-s", type=float)
    t.add_argument("--redis-password-file", help="file holding the Redis password")
    t.add_argument("--otlp-token-file", help="file whose first line is the token presented to the OTLP receiver")
    t.add_argument("--draft-token-file", help="file whose first line is the token presented to the draft")
    t.add_argument("--api-key-file", help="file of accepted API keys, one per line; /v1/* then needs a Bearer key")
    t.add_argument("--allow-unauthenticated", action="store_true", default=None,
                   help="serve /v1/* without keys on a non-loopback host (behind your own gateway)")
    t.add_argument("--tls-dir", help=f"{_TLS}: mutual TLS to the draft")
    t.add_argument("--otlp-tls-dir", help=f"{_TLS}: mutual TLS to the OTLP receiver")
    t.add_argument("--redis-tls-dir", help=_REDIS_TLS)
    t.add_argument("--max-body-bytes", type=int, help="largest request body (413 beyond)")
    t.add_argument("--max-queue", type=int, help="requests waiting for a slot at most (429 + Retry-After beyond)")
    t.set_defaults(func=_serve_target)
    c = sub.add_parser("controller", help="run the goodput controller (env SMARTSPEC_CONTROLLER_*)")
    c.add_argument("--service")
    c.add_argument("--redis-url")
    c.add_argument("--host")
    c.add_argument("--http-port", type=int)
    c.add_argument("--otlp-port", type=int)
    c.add_argument("--interval-s", type=float)
    c.add_argument("--cost-model")
    c.add_argument("--redis-password-file", help="file holding the Redis password")
    c.add_argument("--otlp-token-file", help="tokens an OTLP sender must present; none: loopback only")
    c.add_argument("--allow-unauthenticated", action="store_true", default=None,
                   help="receive OTLP on a non-loopback host without tokens")
    c.add_argument("--tls-dir", help=f"{_TLS}: OTLP over mutual TLS only")
    c.add_argument("--redis-tls-dir", help=_REDIS_TLS)
    c.set_defaults(func=_serve_controller)


def _settings(cls: Any, args: argparse.Namespace, skip: tuple[str, ...] = ("command", "func")) -> Any:
    given = {k: v for k, v in vars(args).items() if v is not None and k not in skip}
    try:
        return cls(**given)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(x) for x in first["loc"]) or "settings"
        raise InvalidRequest(f"{field}: {first['msg']}", param=field) from None


def _logging() -> None:
    from smartspec.logs import configure

    configure()


def _serve_draft(args: argparse.Namespace) -> int:
    from smartspec_draft.server import serve
    from smartspec_draft.settings import DraftSettings

    settings = _settings(DraftSettings, args)
    _logging()
    asyncio.run(serve(settings))
    return 0


def _serve_target(args: argparse.Namespace) -> int:
    from smartspec_target.server import serve
    from smartspec_target.settings import TargetSettings

    settings = _settings(TargetSettings, args)
    _logging()
    asyncio.run(serve(settings))
    return 0


def _serve_controller(args: argparse.Namespace) -> int:
    from smartspec_controller.server import serve
    from smartspec_controller.settings import ControllerSettings

    settings = _settings(ControllerSettings, args)
    _logging()
    asyncio.run(serve(settings))
    return 0
