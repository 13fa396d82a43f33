"""Who may call a smartspec port: API keys and peer tokens read from files, and the rule for starting without.

Keys come from a file (a mounted Kubernetes Secret; one key per line, `#` comments), never from an
env value or a flag, so they land in no ConfigMap, process listing or log. A service with no key
file serves only on a loopback host unless told explicitly that something in front authenticates.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from smartspec.errors import InvalidRequest

log = logging.getLogger(__name__)

MIN_KEY_CHARS = 16  # a key shorter than this is guessable; refuse to start with one


class ApiKeys:
    """The accepted keys; compared in constant time."""

    def __init__(self, keys: list[str], source: str = "api_key_file") -> None:
        if not keys:
            raise InvalidRequest(f"{source} holds no key", param=source)
        weak = [k for k in keys if len(k) < MIN_KEY_CHARS]
        if weak:
            raise InvalidRequest(f"keys in {source} must have at least {MIN_KEY_CHARS} characters "
                                 f"({len(weak)} of {len(keys)} are shorter)", param=source)
        self._keys = [k.encode() for k in keys]

    @classmethod
    def from_file(cls, path: str | Path, setting: str = "api_key_file") -> ApiKeys:
        return cls(read_keys(path, setting), setting)

    def __len__(self) -> int:
        return len(self._keys)

    def accepts(self, authorization: str | bytes | None) -> bool:
        """Whether an `Authorization` value is `Bearer <one of the keys>`."""
        if isinstance(authorization, bytes):
            authorization = authorization.decode("latin-1")
        if not authorization or not authorization.startswith("Bearer "):
            return False
        given = authorization[len("Bearer "):].strip().encode()
        # Every key is compared (no early exit): the time taken says nothing about which one was close.
        return sum(hmac.compare_digest(given, k) for k in self._keys) > 0


def read_keys(path: str | Path, setting: str) -> list[str]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise InvalidRequest(f"cannot read {setting} {path}: {exc.strerror}", param=setting) from None
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]


def read_token(path: str | Path, setting: str) -> str:
    """The first key of a file: what a client (the target, to its draft) presents."""
    keys = read_keys(path, setting)
    ApiKeys(keys, setting)  # the same checks as the server's: present, long enough
    return keys[0]


def read_secret(path: str | Path, setting: str) -> str:
    """A password from a file (a mounted Secret): its first line that is not blank or a comment."""
    keys = read_keys(path, setting)
    if not keys:
        raise InvalidRequest(f"{setting} {path} holds no password", param=setting)
    return keys[0]


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    """gRPC call metadata carrying `token`."""
    return (("authorization", f"Bearer {token}"),)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def keys_for(what: str, key_file: str | None, host: str, allow_unauthenticated: bool,
             setting: str = "api_key_file") -> ApiKeys | None:
    """The keys a service on `host` requires, or None with a loud notice where running open is allowed."""
    flag = "--" + setting.replace("_", "-")
    if key_file:
        keys = ApiKeys.from_file(key_file, setting)
        log.info("%s: %d key(s) from %s; callers must send 'Authorization: Bearer <key>'", what, len(keys), key_file)
        return keys
    if is_loopback(host):
        log.warning("%s: NO KEY: open to every process on this machine (host %s); give %s to require one",
                    what, host, flag)
        return None
    if allow_unauthenticated:
        log.warning("%s: NO KEY on %s: open to anyone who can reach the port (--allow-unauthenticated); "
                    "put an authenticating gateway in front", what, host)
        return None
    raise InvalidRequest(f"{what} would serve {host} without keys: give {flag}, bind a loopback host, or pass "
                         "--allow-unauthenticated", param=setting)


def redact_url(url: str) -> str:
    """`url` without its password, for logs and status (redis://:secret@host -> redis://:***@host)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(unparseable URL)"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
