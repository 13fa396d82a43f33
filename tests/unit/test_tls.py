"""smartspec.tls: the certificates it issues, and the errors for a TLS directory that cannot be used."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from smartspec import tls
from smartspec.errors import InvalidRequest


def test_issued_certificates_name_every_host_and_chain_to_their_ca(tmp_path: Path) -> None:
    files = tls.issue(["svc-draft", "svc-draft.ns.svc", "127.0.0.1"])
    leaf, ca = x509.load_pem_x509_certificate(files[tls.CERT]), x509.load_pem_x509_certificate(files[tls.CA])
    leaf.verify_directly_issued_by(ca)  # raises if the CA did not sign it
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["svc-draft", "svc-draft.ns.svc"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # Every call is its own trust domain: another service's certificate is not signed by this CA.
    with pytest.raises((ValueError, TypeError)):
        x509.load_pem_x509_certificate(tls.issue(["x"])[tls.CERT]).verify_directly_issued_by(ca)
    d = tls.write_dir(tmp_path / "t", files)
    assert d.stat().st_mode & 0o777 == 0o700 and (d / tls.KEY).stat().st_mode & 0o777 == 0o600
    loaded = tls.load(d, "tls_dir")
    assert loaded.cert == files[tls.CERT] and loaded.key == files[tls.KEY] and loaded.ca == files[tls.CA]


@pytest.mark.parametrize(("make", "message"), [
    (lambda d: None, "is not a directory"),
    (lambda d: (d.mkdir(), (d / tls.CERT).write_bytes(b"-----BEGIN X")), r"tls\.key is missing"),
    (lambda d: (d.mkdir(), (d / tls.CERT).write_text("x"), (d / tls.KEY).write_text("y")), "is not PEM"),
    (lambda d: (tls.write_dir(d, tls.issue(["h"])), (d / tls.CA).unlink()), r"ca\.crt is missing"),
])
def test_an_unusable_directory_is_refused_with_what_is_wrong(tmp_path: Path, make: object, message: str) -> None:
    d = tmp_path / "tls"
    make(d)  # type: ignore[operator]
    with pytest.raises(InvalidRequest, match=message) as info:
        tls.load(d, "tls_dir")
    assert info.value.param == "tls_dir"


def test_redis_options_follow_the_url(tmp_path: Path) -> None:
    assert tls.redis_kwargs("redis://h:6379", None, "pw") == {"password": "pw"}
    system = tls.redis_kwargs("rediss://h:6380", None)
    assert system["ssl_cert_reqs"] == "required" and system["ssl_check_hostname"] and "ssl_ca_certs" not in system
    d = tls.write_dir(tmp_path / "t", tls.issue(["h"]))
    mine = tls.redis_kwargs("rediss://h:6380", str(d))
    assert mine["ssl_ca_certs"].endswith("ca.crt") and mine["ssl_certfile"].endswith("tls.crt")
    (d / tls.CERT).unlink()
    (d / tls.KEY).unlink()
    assert "ssl_certfile" not in tls.redis_kwargs("rediss://h:6380", str(d))  # a CA alone: server-side TLS only
    with pytest.raises(InvalidRequest, match="not rediss://"):
        tls.redis_kwargs("redis://h:6379", str(d))
