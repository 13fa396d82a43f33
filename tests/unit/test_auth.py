"""smartspec.auth: key files, Bearer checks, the start-without-keys rule, URLs without their passwords."""

from __future__ import annotations

from pathlib import Path

import pytest

from smartspec.auth import ApiKeys, is_loopback, keys_for, read_token, redact_url
from smartspec.errors import InvalidRequest

KEY, OTHER = "k" * 16 + "-one", "o" * 20


def test_bearer_keys_match_exactly() -> None:
    keys = ApiKeys([KEY, OTHER])
    assert keys.accepts(f"Bearer {KEY}") and keys.accepts(f"Bearer {OTHER}".encode()) and len(keys) == 2
    for bad in (None, "", KEY, f"bearer {KEY}", f"Basic {KEY}", f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", "Bearer "):
        assert not keys.accepts(bad), bad


def test_key_files_skip_comments_and_refuse_weak_or_empty_ones(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text(f"# team A\n\n  {KEY}  \n{OTHER}\n")
    assert ApiKeys.from_file(f).accepts(f"Bearer {KEY}") and read_token(f, "t") == KEY
    f.write_text("# nothing but comments\n")
    with pytest.raises(InvalidRequest, match="holds no key"):
        ApiKeys.from_file(f)
    f.write_text("short\n")
    with pytest.raises(InvalidRequest, match="at least 16"):
        read_token(f, "draft_token_file")


def test_no_keys_only_on_loopback_or_when_told(tmp_path: Path) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.5") and not is_loopback("target.svc")
    assert keys_for("x", None, "127.0.0.1", False) is None
    assert keys_for("x", None, "0.0.0.0", True) is None
    with pytest.raises(InvalidRequest, match="--api-key-file"):
        keys_for("x", None, "0.0.0.0", False)


def test_urls_lose_their_passwords_for_logs() -> None:
    assert redact_url("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redact_url("rediss://user:s3cret@host/1") == "rediss://user:***@host/1"
    assert redact_url("redis://127.0.0.1:6379") == "redis://127.0.0.1:6379"
