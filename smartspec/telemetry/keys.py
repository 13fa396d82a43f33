"""Redis key names (ARCHITECTURE.md §5): the only shared state between targets, controller and operator."""

from __future__ import annotations

import re

SCHEMA_VERSION = 1
_SERVICE = re.compile(r"^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$")


def check_service(service: str) -> str:
    """A service name is a DNS-1123 subdomain (the operator uses `namespace.name`), so keys stay unambiguous."""
    if not _SERVICE.match(service):
        raise ValueError("service name must be lower-case letters, digits, '-' and '.' (a DNS-1123 subdomain, "
                         f"e.g. 'chat' or 'prod.chat'), got {service!r}")
    return service


def steps_key(service: str) -> str:
    return f"smartspec:{service}:steps"


def policy_key(service: str) -> str:
    """The policy document (string) and the pub/sub channel that announces a new one."""
    return f"smartspec:{service}:policy"


def policy_spec_key(service: str) -> str:
    return f"smartspec:{service}:policy-spec"


def status_key(service: str) -> str:
    return f"smartspec:{service}:status"


def service_keys(service: str) -> list[str]:
    """Every key a service owns (the operator deletes them with the service)."""
    return [steps_key(service), policy_key(service), policy_spec_key(service), status_key(service)]
