"""Control-plane faults: Redis or the controller going away never stops serving or changes outputs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from smartspec.telemetry.keys import steps_key
from tests.integration.conftest import LoopThread, free_port
from tests.integration.control_plane import (
    complete_many,
    metric,
    published,
    set_spec,
    start_controller,
    stop_all,
    wait_for,
)
from tests.integration.services import start_stack

PROMPTS = ["def fib(n):", "import numpy as np\n", "SELECT name FROM", "The quick brown fox"]
TOKENS = 96  # >= 24 engine steps even when drafts of 8 are mostly accepted


class ControllerProcess:
    """`smartspec controller` as a child process, so a test can kill -9 it and start another."""

    def __init__(self, redis_url: str) -> None:
        self.redis_url = redis_url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ControllerProcess:
        port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "smartspec.cli.main", "controller", "--redis-url", self.redis_url,
             "--http-port", str(port), "--otlp-port", "0", "--interval-s", "0.2"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ})
        wait_for(lambda: self._healthy(port), 30, "the controller process", every_s=0.1)
        return self

    def _healthy(self, port: int) -> bool:
        assert self.proc is not None and self.proc.poll() is None, "controller process died"
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def faulty(loop_thread: LoopThread, tiny_svc_models: dict[str, Any], redis_db: Any) -> Iterator[dict[str, Any]]:
    yield {"loop": loop_thread, "models": tiny_svc_models, "redis": redis_db}


def test_redis_outage_drops_records_but_never_a_request(faulty: dict[str, Any]) -> None:
    loop, redis_server = faulty["loop"], faulty["redis"]
    ctl = start_controller(loop, redis_server.url)
    stack = start_stack(loop, faulty["models"], redis_url=redis_server.url, telemetry_buffer=10)
    client = redis_server.client()
    try:
        url = stack.url
        reference = complete_many(url, PROMPTS, max_tokens=TOKENS)
        before = wait_for(lambda: published(client), 3, "a policy")
        wait_for(lambda: metric(url, "smartspec_policy_version") >= before.version, 2, "the policy in force")
        redis_server.stop()
        in_force = metric(url, "smartspec_policy_version")  # nothing newer can arrive without Redis
        assert complete_many(url, PROMPTS, max_tokens=TOKENS) == reference  # serving goes on, same outputs
        dropped = metric(url, "smartspec_telemetry_records_dropped_total")
        assert dropped > 0, "a 10-record buffer must overflow while 4 requests x 96 tokens run without Redis"
        assert metric(url, "smartspec_policy_version") == in_force  # still valid: kept
        redis_server.start()  # empty: no persistence
        written = metric(url, "smartspec_telemetry_records_written_total")
        assert complete_many(url, PROMPTS, max_tokens=TOKENS) == reference
        wait_for(lambda: metric(url, "smartspec_telemetry_records_written_total") > written, 5, "records again")
        assert client.xlen(steps_key("smartspec")) > 0
        # The controller re-creates its consumer group and publishes again, versions still rising.
        after = wait_for(lambda: published(client), 5, "a policy after the outage")
        assert after.version > before.version
        wait_for(lambda: metric(url, "smartspec_policy_version") >= after.version, 3, "the new policy in force")
    finally:
        stop_all(stack.stop, lambda: loop.run(ctl.stop()), client.close)


def test_a_hung_redis_never_slows_a_step(faulty: dict[str, Any]) -> None:
    """Redis frozen (SIGSTOP: connections open, no answers) — the slow case, not the refused one."""
    import signal

    from smartspec.telemetry.records import decode

    loop, redis_server = faulty["loop"], faulty["redis"]
    stack = start_stack(loop, faulty["models"], redis_url=redis_server.url, telemetry_buffer=10)
    client = redis_server.client()
    try:
        url = stack.url
        reference = complete_many(url, PROMPTS, max_tokens=TOKENS)
        before = [decode(f).step_s for _, f in client.xrange(steps_key("smartspec"))]
        assert redis_server.proc is not None
        redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            t0 = time.perf_counter()
            assert complete_many(url, PROMPTS, max_tokens=TOKENS) == reference
            frozen_s = time.perf_counter() - t0
            assert metric(url, "smartspec_telemetry_records_dropped_total") > 0
        finally:
            redis_server.proc.send_signal(signal.SIGCONT)
        t0 = time.perf_counter()
        assert complete_many(url, PROMPTS, max_tokens=TOKENS) == reference
        normal_s = time.perf_counter() - t0
        print(f"4 x {TOKENS} tokens: {frozen_s:.2f}s with Redis frozen, {normal_s:.2f}s with it answering; "
              f"median step before {sorted(before)[len(before) // 2] * 1e3:.1f} ms")
        # The writer thread waits out its 1 s socket timeouts; the steps never do.
        assert frozen_s < 2 * normal_s + 0.5
    finally:
        stack.stop()
        client.close()


def test_controller_death_keeps_the_policy_until_expiry_then_the_local_default(faulty: dict[str, Any]) -> None:
    loop, redis_server = faulty["loop"], faulty["redis"]
    client = redis_server.client()
    set_spec(client, "smartspec", {"mode": "fixed", "maxSpeculationLength": 4, "fixedSpeculationLength": 2,
                                   "policyExpirySeconds": 3})
    ctl = ControllerProcess(redis_server.url).start()
    stack = start_stack(loop, faulty["models"], redis_url=redis_server.url, policy_poll_s=0.2)
    try:
        url = stack.url
        doc = wait_for(lambda: published(client), 5, "a policy")
        wait_for(lambda: metric(url, "smartspec_policy_version") >= doc.version, 2, "the policy in force")
        reference = complete_many(url, PROMPTS, max_tokens=32)
        ctl.kill()
        last = published(client)
        assert last is not None
        assert metric(url, "smartspec_policy_version") == last.version  # kept while valid
        assert complete_many(url, PROMPTS, max_tokens=32) == reference
        wait_for(lambda: metric(url, "smartspec_policy_version") == 0, last.expires_at - time.time() + 2,
                 "the fall-back to the local default")
        assert metric(url, "smartspec_policy_fallback_total", {"reason": "expired"}) >= 1
        assert complete_many(url, PROMPTS, max_tokens=32) == reference
        ctl = ControllerProcess(redis_server.url).start()
        again = wait_for(lambda: (d := published(client)) and d.version > last.version and d, 5, "a new policy")
        wait_for(lambda: metric(url, "smartspec_policy_version") >= again.version, 2, "the new policy in force")
        assert complete_many(url, PROMPTS, max_tokens=32) == reference
    finally:
        stop_all(stack.stop, ctl.kill, client.close)


def test_a_restarted_controller_resumes_the_stream_and_never_reuses_a_version(faulty: dict[str, Any]) -> None:
    from smartspec.engine.engine import StepStats
    from smartspec.telemetry import records
    from smartspec.telemetry.keys import policy_key

    loop, redis_server = faulty["loop"], faulty["redis"]
    client = redis_server.client()

    def write_steps(n: int, first: int) -> None:
        for i in range(first, first + n):
            stats = StepStats(step_id=i, batch_size=2, num_prefills=0, ks=[2, 2], num_proposed_per_pos=[2, 2],
                              num_accepted_per_pos=[2, 1], num_emitted=5, context_tokens=40, num_forwards=1,
                              real_tokens=6, padded_tokens=6, draft_s=0.01, verify_s=0.02, overhead_s=0.001)
            client.xadd(steps_key("smartspec"), records.encode(stats, "r0", time.time()))

    ctl = start_controller(loop, redis_server.url)
    try:
        write_steps(10, 1)
        wait_for(lambda: ctl.window.records == 10, 5, "the first records")
    finally:
        loop.run(ctl.stop())
    write_steps(15, 11)  # while no controller runs
    # Another controller (a rolling update) published a higher version meanwhile: never overwritten.
    doc = published(client)
    assert doc is not None
    rival = doc.model_copy(update={"version": doc.version + 100, "decided_by": "rival",
                                   "issued_at": time.time(), "expires_at": time.time() + 30})
    client.set(policy_key("smartspec"), rival.model_dump_json())
    ctl = start_controller(loop, redis_server.url)
    try:
        wait_for(lambda: ctl.window.records == 15, 5, "the records written while it was down")
        nxt = wait_for(lambda: (d := published(client)) and d.decided_by != "rival" and d, 5, "its next policy")
        assert nxt.version > rival.version
    finally:
        loop.run(ctl.stop())
        client.close()
