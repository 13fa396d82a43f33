"""`smartspec policy show`: the policy in force, read from a real Redis, found from `up`'s stack file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from smartspec.cli import stackfile
from smartspec.cli.main import main
from smartspec.telemetry.keys import status_key
from tests.integration.conftest import LoopThread
from tests.integration.control_plane import published, set_spec, start_controller, wait_for


def test_show_prints_the_policy_in_force(loop_thread: LoopThread, redis_db: Any, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTSPEC_STACK_FILE", str(tmp_path / "stack.json"))
    assert main(["policy", "show"]) == 2
    assert "no running `smartspec up` stack" in capsys.readouterr().err
    assert main(["policy", "show", "--redis-url", redis_db.url]) == 0
    assert "no policy published" in capsys.readouterr().out

    client = redis_db.client()
    set_spec(client, "smartspec", {"mode": "goodput", "maxSpeculationLength": 5})
    ctl = start_controller(loop_thread, redis_db.url)
    try:
        doc = wait_for(lambda: (d := published(client)) and d.max_k == 5 and d, 5, "a policy")
        # The recommended k per batch size is in the controller's status (written after each decision).
        wait_for(lambda: client.get(status_key("smartspec")), 5, "the controller's status")
        stackfile.write({"service": "smartspec", "redis_url": redis_db.url})  # as `smartspec up` does
        assert main(["policy", "show"]) == 0
        out = capsys.readouterr().out
        assert f"service smartspec: policy v{doc.version}" in out and "mode goodput, K 5" in out
        assert "recommended k:" in out and "batch 64:" in out and "expires in" in out
        assert main(["policy", "show", "--service", "smartspec", "--redis-url", redis_db.url, "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["policy"]["version"] >= doc.version and shown["expired"] is False
        assert shown["age_s"] >= 0 and shown["status"]["service"] == "smartspec"
        assert "recommended_k" not in shown["policy"] and shown["status"]["recommended_k"]["64"] >= 0
        assert main(["policy", "show", "--service", "Not_A_Label", "--redis-url", redis_db.url]) == 2
        assert "DNS-1123" in capsys.readouterr().err
    finally:
        loop_thread.run(ctl.stop())
        stackfile.remove()
        client.close()
    assert not os.path.exists(tmp_path / "stack.json")


def test_up_hands_its_policy_flags_to_the_controller(redis_db: Any) -> None:
    from smartspec.cli.up import _write_spec
    from smartspec.errors import InvalidRequest
    from smartspec.policy.document import parse_spec
    from smartspec.telemetry.keys import policy_spec_key

    client = redis_db.client()
    _write_spec(redis_db.url, "smartspec", "fixed", 5)
    spec = parse_spec(client.get(policy_spec_key("smartspec")))
    assert (spec.mode, spec.fixed_k, spec.max_k) == ("fixed", 5, 8)
    _write_spec(redis_db.url, "smartspec", "off", 3)
    assert parse_spec(client.get(policy_spec_key("smartspec"))).mode == "off"
    with pytest.raises(InvalidRequest, match="fixed"):
        _write_spec(redis_db.url, "smartspec", "fixed", 40)
    client.close()
