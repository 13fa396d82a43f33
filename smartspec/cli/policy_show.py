"""`smartspec policy show`: the controller's policy in force for a service, its age, and the controller's status."""

from __future__ import annotations

import json
import time
from typing import Any

from smartspec.auth import read_secret, redact_url
from smartspec.cli import stackfile
from smartspec.errors import InvalidRequest, ResourceShortage
from smartspec.policy.document import PolicyDocument, parse_document
from smartspec.telemetry.keys import check_service, policy_key, status_key
from smartspec.telemetry.status import ControllerStatus, parse_status
from smartspec.tls import redis_kwargs


def _where(service: str | None, redis_url: str | None) -> tuple[str, str]:
    stack = stackfile.read() if service is None or redis_url is None else None
    if redis_url is None:
        if stack is None:
            raise InvalidRequest("no running `smartspec up` stack found; pass --redis-url (and --service)",
                                 param="redis_url")
        redis_url = str(stack["redis_url"])
    if service is None:
        service = str(stack["service"]) if stack else "smartspec"
    try:
        return check_service(service), redis_url
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="service") from None


def show_policy(service: str | None, redis_url: str | None, as_json: bool, password_file: str | None = None,
                tls_dir: str | None = None) -> int:
    import redis

    service, redis_url = _where(service, redis_url)
    password = read_secret(password_file, "redis_password_file") if password_file else None
    client = redis.Redis.from_url(redis_url, socket_timeout=3, socket_connect_timeout=3,
                                  **redis_kwargs(redis_url, tls_dir, password))
    try:
        raw, raw_status = client.get(policy_key(service)), client.get(status_key(service))
    except (redis.RedisError, OSError) as exc:
        raise ResourceShortage(f"cannot read the policy from {redact_url(redis_url)}: {exc}") from None
    finally:
        client.close()
    status = parse_status(raw_status)
    doc = parse_document(raw) if raw else None
    now = time.time()
    if as_json:
        out: dict[str, Any] = {"service": service, "policy": None if doc is None else json.loads(doc.model_dump_json()),
                               "age_s": None if doc is None else now - doc.issued_at,
                               "expired": None if doc is None else doc.expired(now),
                               "status": None if status is None else json.loads(status.to_json())}
        print(json.dumps(out, indent=2))
        return 0
    if doc is None:
        print(f"service {service}: no policy published (targets run on their local default policy)")
        return 0
    _print(doc, status, now)
    return 0


def _print(doc: PolicyDocument, status: ControllerStatus | None, now: float) -> None:
    state = "EXPIRED (targets use their local default)" if doc.expired(now) else \
        f"expires in {doc.expires_at - now:.0f}s"
    r2 = "n/a" if doc.r2 is None else f"{doc.r2:.3f}"
    print(f"service {doc.service}: policy v{doc.version}, {now - doc.issued_at:.1f}s old, {state}")
    print(f"  decided by {doc.decided_by}")
    print(f"  mode {doc.mode}, K {doc.max_k}, fixed k {doc.fixed_k}, hysteresis {doc.hysteresis}, "
          f"per-request override {'allowed' if doc.per_request_override else 'off'}")
    print(f"  cost model {doc.cost_model.get('name')}, R² {r2} (held out), {doc.cost_model.get('samples', 0)} steps")
    gp = doc.goodput
    if gp.measured is not None or gp.predicted is not None:
        fmt = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
        print(f"  goodput tokens/s: measured {fmt(gp.measured)}, predicted {fmt(gp.predicted)}")
    prior = doc.acceptance_prior.get("default")
    if prior:
        print("  acceptance (default class, per position): " + " ".join(f"{a:.2f}" for a in prior))
    if status is not None:  # what the controller recommends at each load is status, not part of the policy
        if status.current:
            print(f"  current load: {status.current.batch_size:.2f} running per step -> k {status.current.k}")
        table = status.recommended_k
        print("  recommended k:  " + ("  ".join(f"batch {b}: {k}" for b, k in table.items()) or "n/a"))
        age = status.telemetry_age_s
        print(f"  replicas reporting: {', '.join(status.replicas) or 'none'}; newest step record "
              f"{'n/a' if age is None else f'{age:.1f}s'} ago")
        if status.spec_error:
            print(f"  spec error: {status.spec_error}")
    else:
        print("  no controller status (the load and the recommended k per batch size are reported there)")
