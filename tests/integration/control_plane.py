"""Helpers for control-plane tests: a controller in the loop thread, concurrent completions, metric reads."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from smartspec.policy.document import PolicyDocument, parse_document
from smartspec.telemetry.keys import policy_key, policy_spec_key
from smartspec.telemetry.metrics import counter_value
from smartspec_controller.server import Controller
from smartspec_controller.settings import ControllerSettings
from tests.integration.conftest import LoopThread


def start_controller(loop: LoopThread, redis_url: str, **kw: Any) -> Controller:
    settings = ControllerSettings(redis_url=redis_url, http_port=0, otlp_port=0, interval_s=kw.pop("interval_s", 0.2),
                                  **kw)
    ctl = Controller(settings)
    loop.run(ctl.start())
    return ctl


def otlp_reaches(loop: LoopThread, models: dict[str, Any], ctl: Controller, **target_kw: Any) -> None:
    """A target (without a draft) sending OTLP to `ctl` with `target_kw`: its metrics and its spans arrive."""
    from tests.integration.services import start_stack

    stack = start_stack(loop, models, draft=None, replica="target-0", otlp_interval_s=0.3,
                        otlp_endpoint=f"127.0.0.1:{ctl.otlp_port}", **target_kw)
    try:
        r = httpx.post(f"{stack.url}/v1/completions", timeout=60,
                       json={"model": "target", "prompt": "x", "max_tokens": 4, "ignore_eos": True})
        assert r.status_code == 200
        wait_for(lambda: ctl.view.latest("smartspec_num_requests_running", max_age_s=5).get("target-0") == 0.0, 10,
                 f"the target's metrics over OTLP ({', '.join(target_kw)})")
        wait_for(lambda: ctl.view.spans["decode"] >= 1, 10, "its spans too")
    finally:
        stack.stop()


def complete(url: str, prompt: str, max_tokens: int = 24, **extra: Any) -> dict[str, Any]:
    body = {"model": "target", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
            **extra}
    r = httpx.post(f"{url}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return dict(r.json())


def complete_many(url: str, prompts: list[str], **extra: Any) -> list[str]:
    """Concurrent greedy completions (so the engine batches them); returns the texts in order."""
    with ThreadPoolExecutor(len(prompts)) as pool:
        outs = list(pool.map(lambda p: complete(url, p, **extra), prompts))
    return [o["choices"][0]["text"] for o in outs]


def metric(url: str, name: str, labels: dict[str, str] | None = None) -> float:
    return counter_value(httpx.get(f"{url}/metrics", timeout=10).text, name, labels)


def set_spec(client: Any, service: str, spec: dict[str, Any]) -> None:
    client.set(policy_spec_key(service), json.dumps(spec))


def published(client: Any, service: str = "smartspec") -> PolicyDocument | None:
    raw = client.get(policy_key(service))
    return None if raw is None else parse_document(raw)


def wait_for(predicate: Any, timeout_s: float, what: str, every_s: float = 0.02) -> Any:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def stop_all(*stoppers: Any) -> None:
    """Run every stopper even if an earlier one fails (a controller left running on the session loop
    would keep publishing into the next test), then raise the first failure."""
    errors: list[BaseException] = []
    for stop in stoppers:
        try:
            stop()
        except BaseException as exc:
            errors.append(exc)
    if errors:
        raise errors[0]
