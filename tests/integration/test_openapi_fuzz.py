"""schemathesis against the target's served OpenAPI description (real server, tiny models, API key on):
whatever it generates, no 5xx and every documented response matches its schema."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance
from schemathesis.core.result import Ok

from tests.integration.conftest import LoopThread
from tests.integration.services import Stack, start_stack

KEY = secrets.token_urlsafe(32)


@pytest.fixture(scope="module")
def fuzzed(loop_thread: LoopThread, tiny_svc_models: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Stack]:
    keys = tmp_path_factory.mktemp("fuzz") / "keys"
    keys.write_text(KEY + "\n")
    # A short context bounds every generation, whatever max_tokens hypothesis picks.
    s = start_stack(loop_thread, tiny_svc_models, policy="fixed", fixed_k=2, max_len=48, api_key_file=str(keys))
    yield s
    s.stop()


def test_no_input_makes_a_5xx_or_breaks_the_schema(fuzzed: Stack) -> None:
    # schemathesis's Python API driven by hypothesis directly (its pytest plugin does not load on this pytest).
    auth = {"Authorization": f"Bearer {KEY}"}
    schema = schemathesis.openapi.from_url(f"{fuzzed.url}/openapi.json", headers=auth)
    results = list(schema.get_all_operations())
    operations = [r.ok() for r in results if isinstance(r, Ok)]
    assert len(operations) == len(results), [r for r in results if not isinstance(r, Ok)]
    assert {op.path for op in operations} >= {"/v1/completions", "/v1/chat/completions", "/v1/models"}
    for op in operations:
        @given(case=op.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case: Any) -> None:
            case.call_and_validate(base_url=fuzzed.url, headers=auth,
                                   checks=[not_a_server_error, response_schema_conformance, content_type_conformance])

        fuzz()


def test_the_server_is_healthy_after_the_fuzzing(fuzzed: Stack) -> None:
    assert httpx.get(f"{fuzzed.url}/health").status_code == 200
    r = httpx.post(f"{fuzzed.url}/v1/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                   json={"model": "target", "prompt": "x", "max_tokens": 4, "temperature": 0, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 4
