"""Encryption between the parts: mutual TLS from a directory in the layout of a `kubernetes.io/tls` Secret.

A TLS directory holds `tls.crt` (this party's certificate chain), `tls.key` (its private key) and
`ca.crt` (the authority that signs the peers) — exactly what cert-manager writes into a Secret and
what the operator's own `<name>-tls` Secret holds, mounted as files. Servers (the draft, the
controller's OTLP receiver) require a client certificate signed by `ca.crt`; clients (the target)
present theirs and check the server's name against its certificate. Certificates are re-read when
their files change (a rotated Secret), by the server on the next handshake and by the client on
its next connection.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from smartspec.errors import InvalidRequest

if TYPE_CHECKING:  # the operator uses this module without gRPC installed
    import grpc

log = logging.getLogger(__name__)

CERT, KEY, CA = "tls.crt", "tls.key", "ca.crt"
_PEM_LIMIT = 1 << 20  # a certificate bundle is a few KB; refuse to read anything absurd into memory


@dataclass(frozen=True)
class TlsFiles:
    """The PEM bytes of one TLS directory; `key`/`cert` may be absent where only a CA is needed (Redis)."""

    ca: bytes | None
    cert: bytes | None
    key: bytes | None
    stamp: tuple[float, ...]  # the files' mtimes: a change means the Secret was rotated


def _stamp(d: Path) -> tuple[float, ...]:
    # A mounted Secret updates through a symlink swap, so the resolved files' mtimes change.
    return tuple(p.stat().st_mtime if p.exists() else 0.0 for p in (d / CA, d / CERT, d / KEY))


def load(directory: str | Path, setting: str, need_pair: bool = True, need_ca: bool = True) -> TlsFiles:
    """Read a TLS directory, with a clear error naming `setting` for what is missing or unreadable."""
    d = Path(directory)
    if not d.is_dir():
        raise InvalidRequest(f"{setting} {d} is not a directory (expected {CERT}, {KEY}, {CA})", param=setting)

    def read(name: str, needed: bool) -> bytes | None:
        p = d / name
        if not p.exists():
            if needed:
                raise InvalidRequest(f"{setting}: {p} is missing", param=setting)
            return None
        try:
            if p.stat().st_size > _PEM_LIMIT:
                raise InvalidRequest(f"{setting}: {p} is larger than {_PEM_LIMIT} bytes", param=setting)
            data = p.read_bytes()
        except OSError as exc:
            raise InvalidRequest(f"{setting}: cannot read {p}: {exc.strerror}", param=setting) from None
        if b"-----BEGIN " not in data:
            raise InvalidRequest(f"{setting}: {p} is not PEM", param=setting)
        return data

    cert, key = read(CERT, need_pair), read(KEY, need_pair)
    if (cert is None) != (key is None):
        raise InvalidRequest(f"{setting}: {CERT} and {KEY} go together (found only one)", param=setting)
    return TlsFiles(ca=read(CA, need_ca), cert=cert, key=key, stamp=_stamp(d))


def note_plaintext(what: str, host: str, directory: str | None) -> None:
    """Say loudly when a port between pods is served without encryption (allowed: a mesh may encrypt)."""
    from smartspec.auth import is_loopback

    if not directory and not is_loopback(host):
        log.warning("%s on %s: PLAINTEXT (no tls_dir); peers' traffic, tokens included, is readable on the network "
                    "unless a service mesh encrypts it", what, host)


# -- gRPC -----------------------------------------------------------------------------------------

def server_credentials(directory: str | Path, setting: str = "tls_dir") -> grpc.ServerCredentials:
    """Server credentials that demand a client certificate signed by the directory's CA, and pick up
    a rotated certificate on the next handshake."""
    import grpc

    files = load(directory, setting)
    current = [files]

    def config(f: TlsFiles) -> Any:
        return grpc.ssl_server_certificate_configuration([(f.key, f.cert)], root_certificates=f.ca)

    def fetch() -> Any:
        # Called by gRPC before each handshake: None keeps the configuration in force.
        try:
            if _stamp(Path(directory)) == current[0].stamp:
                return None
            fresh = load(directory, setting)
        except (InvalidRequest, OSError) as exc:
            log.warning("%s: keeping the certificate in force; the new one is unusable: %s", setting, exc)
            return None
        current[0] = fresh
        log.info("%s: certificate in %s changed; using the new one", setting, directory)
        return config(fresh)

    return grpc.dynamic_ssl_server_credentials(config(files), fetch, require_client_authentication=True)


def channel_credentials(directory: str | Path, setting: str = "tls_dir") -> grpc.ChannelCredentials:
    """Client credentials: trust the directory's CA and present its certificate (read now, so a client
    that reconnects after a rotation presents the new one)."""
    import grpc

    f = load(directory, setting)
    return grpc.ssl_channel_credentials(root_certificates=f.ca, private_key=f.key, certificate_chain=f.cert)


# -- Redis ----------------------------------------------------------------------------------------

def redis_kwargs(url: str, directory: str | None, password: str | None = None,
                 setting: str = "redis_tls_dir") -> dict[str, Any]:
    """Keyword arguments for `redis.Redis.from_url(url, ...)`: the password, and for `rediss://` the CA
    (and client certificate, where the directory has one) from `directory`; the system CAs without one."""
    kwargs: dict[str, Any] = {"password": password}
    tls = urlsplit(url).scheme == "rediss"
    if directory and not tls:
        raise InvalidRequest(f"{setting} is given but the Redis URL is not rediss:// (TLS would not be used)",
                             param=setting)
    if tls:
        kwargs["ssl_cert_reqs"] = "required"
        kwargs["ssl_check_hostname"] = True
        if directory:
            load(directory, setting, need_pair=False)  # the checks and errors, before a connection fails later
            d = Path(directory)
            kwargs["ssl_ca_certs"] = str(d / CA)
            if (d / CERT).exists():
                kwargs["ssl_certfile"], kwargs["ssl_keyfile"] = str(d / CERT), str(d / KEY)
    return kwargs


# -- self-signed (`smartspec up`, the operator's default) ----------------------------------------

def issue(names: list[str], days: int = 825) -> dict[str, bytes]:
    """A fresh CA and one certificate for `names` (DNS names or IP addresses; usable as server and as client),
    as {tls.crt, tls.key, ca.crt}. The CA's key is thrown away: nothing can sign another certificate
    this trust domain accepts, and there is no CA key to keep secret."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"smartspec CA {os.urandom(4).hex()}")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    return {
        CERT: leaf.public_bytes(pem),
        KEY: key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        CA: ca.public_bytes(pem),
    }


def write_dir(directory: str | Path, files: dict[str, bytes]) -> Path:
    """Write `issue()`'s files into `directory` (created 0700; the key 0600)."""
    d = Path(directory)
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, data in files.items():
        p = d / name
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    return d
