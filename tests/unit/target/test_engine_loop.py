"""EngineLoop in process on a tiny pair: the command queue (submit, cancel, policy) applied in order on the
engine thread between steps, refusals before streaming, shedding, draining, and a failed step that ends
every stream with an error instead of hanging it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest

from smartspec.engine.sampling import SamplingParams
from smartspec.engine.scheduler import RequestSpec, Scheduler
from smartspec.engine.sinks import MemorySink
from smartspec.errors import InvalidRequest
from smartspec.policy.policy import PolicyConfig
from smartspec.telemetry.metrics import TargetMetrics, counter_value
from smartspec_target.engine_loop import Delta, Draining, EngineFailed, EngineLoop, Overloaded
from smartspec_target.policy_sync import PolicySwitch
from tests.conftest import hf_greedy
from tests.unit.engine.test_scheduler import scheduler
from tests.unit.policy.test_document import doc

AUTO = RequestSpec()


@pytest.fixture
def metrics() -> Iterator[TargetMetrics]:
    m = TargetMetrics()
    yield m
    m.shutdown()


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, ignore_eos=True)


def with_loop(sch: Scheduler[Any], metrics: TargetMetrics, body: Callable[[EngineLoop], Awaitable[None]],
              **kw: Any) -> None:
    """Run `body` against an EngineLoop started on this event loop, and always stop its thread."""
    async def main() -> None:
        loop = EngineLoop(sch, metrics, asyncio.get_running_loop(), **kw)
        loop.start()
        try:
            await asyncio.wait_for(body(loop), timeout=60)
        finally:
            loop.stop()
    asyncio.run(main())


async def collect(stream: AsyncIterator[Delta]) -> list[Delta]:
    return [d async for d in stream]


def test_streams_carry_exactly_the_engines_tokens_and_end_with_one_finish(tiny_llama: Any,
                                                                          metrics: TargetMetrics) -> None:
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    sch = scheduler(tiny_llama, PolicyConfig(mode="fixed", fixed_k=3))

    async def body(loop: EngineLoop) -> None:
        handles = [await loop.submit(p, greedy(9), AUTO) for p in prompts]
        streams = await asyncio.gather(*(collect(h.stream()) for h in handles))
        for p, deltas in zip(prompts, streams, strict=True):
            assert [t for d in deltas for t in d.token_ids] == hf_greedy(tiny_llama.target, p, 9)
            assert [d.finish_reason for d in deltas][-1] == "length"
            assert all(d.finish_reason is None for d in deltas[:-1])
            assert deltas[-1].draft_tokens > 0  # it speculated
        assert loop.in_flight == 0
    with_loop(sch, metrics, body)


def test_a_refused_submit_raises_before_streaming_and_leaves_the_loop_serving(tiny_llama: Any,
                                                                             metrics: TargetMetrics) -> None:
    sch = scheduler(tiny_llama, PolicyConfig(mode="off"))

    async def body(loop: EngineLoop) -> None:
        with pytest.raises(InvalidRequest):
            await loop.submit([], greedy(4), AUTO)  # the engine thread's own check, raised here
        with pytest.raises(InvalidRequest):
            await loop.submit([5, 6], greedy(4), RequestSpec(max_k=-1))
        assert loop.in_flight == 0 and loop.healthy
        deltas = await collect((await loop.submit([5, 6], greedy(4), AUTO)).stream())
        assert sum(len(d.token_ids) for d in deltas) == 4
    with_loop(sch, metrics, body)


def test_cancel_ends_the_stream_with_cancelled_and_frees_the_request(tiny_llama: Any,
                                                                     metrics: TargetMetrics) -> None:
    sch = scheduler(tiny_llama, PolicyConfig(mode="off"))

    async def body(loop: EngineLoop) -> None:
        handle = await loop.submit([5, 6, 7], greedy(200), AUTO)
        first = await handle.deltas.get()
        assert first.finish_reason is None
        loop.cancel(handle.seq_id)
        loop.cancel(handle.seq_id)  # twice, and an id nobody has: both ignored
        loop.cancel(10_000)
        rest = await collect(handle.stream())
        assert rest[-1].finish_reason == "cancelled"
        assert len(first.token_ids) + sum(len(d.token_ids) for d in rest) < 200
        assert loop.in_flight == 0 and not sch.has_unfinished
    with_loop(sch, metrics, body)


def test_a_policy_command_takes_effect_between_two_steps_in_queue_order(tiny_llama: Any,
                                                                        metrics: TargetMetrics) -> None:
    sink = MemorySink()
    sch = scheduler(tiny_llama, PolicyConfig(mode="off", max_k=8), sinks=[sink])
    switch = PolicySwitch(sch, metrics, can_speculate=True)

    async def body(loop: EngineLoop) -> None:
        loop.set_policy(doc(version=4, mode="fixed", fixed_k=2, max_k=8))
        deltas = await collect((await loop.submit([5, 6, 7], greedy(12), AUTO)).stream())
        assert sch.in_force.version == 4
        assert deltas[-1].k_sum > 0  # the request was served under the published policy from its first step
        assert max(k for st in sink.records for k in st.ks) == 2  # fewer only where the request ends sooner
        sink.records.clear()
        loop.set_policy(None, "expired")
        await collect((await loop.submit([5, 6, 7], greedy(6), AUTO)).stream())
        assert sch.in_force.version == 0 and {k for st in sink.records for k in st.ks} == {0}
    with_loop(sch, metrics, body, switch=switch)


def test_a_policy_that_cannot_be_applied_falls_back_to_the_local_default(tiny_llama: Any,
                                                                        metrics: TargetMetrics,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    sch = scheduler(tiny_llama, PolicyConfig(mode="off"))
    switch = PolicySwitch(sch, metrics, can_speculate=True)
    switch.apply(doc(version=2, mode="fixed", fixed_k=1))
    broken = doc(version=3, mode="fixed", fixed_k=2)
    real_apply = switch.apply

    def apply(d: Any, reason: str = "") -> None:
        if d is broken:
            raise RuntimeError("cannot build this policy")
        real_apply(d, reason)
    monkeypatch.setattr(switch, "apply", apply)

    async def body(loop: EngineLoop) -> None:
        loop.set_policy(broken)
        deltas = await collect((await loop.submit([5, 6], greedy(3), AUTO)).stream())
        assert deltas[-1].finish_reason == "length" and loop.healthy
        assert sch.in_force.version == 0 and switch.doc is None
        text = metrics.prometheus_text().decode()
        assert counter_value(text, "smartspec_policy_rejected_total", {"reason": "apply"}) == 1
    with_loop(sch, metrics, body, switch=switch)


def test_in_flight_limit_sheds_and_draining_refuses(tiny_llama: Any, metrics: TargetMetrics) -> None:
    sch = scheduler(tiny_llama, PolicyConfig(mode="off"))

    async def body(loop: EngineLoop) -> None:
        held = [await loop.submit([5, 6], greedy(200), AUTO) for _ in range(2)]
        with pytest.raises(Overloaded):
            await loop.submit([5, 6], greedy(4), AUTO)
        text = metrics.prometheus_text().decode()
        assert counter_value(text, "smartspec_requests_shed_total") == 1
        drained = asyncio.create_task(loop.drain(timeout_s=30))
        await asyncio.sleep(0)
        with pytest.raises(Draining):
            await loop.submit([5, 6], greedy(4), AUTO)
        for h in held:  # running requests still finish while draining
            assert (await collect(h.stream()))[-1].finish_reason == "length"
        assert await drained
    with_loop(sch, metrics, body, max_in_flight=2)


def test_a_failing_step_ends_every_stream_with_an_error_and_refuses_new_work(tiny_llama: Any,
                                                                            metrics: TargetMetrics,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    sch = scheduler(tiny_llama, PolicyConfig(mode="off"))
    fault = threading.Event()
    real_step = sch.step

    def step() -> Any:
        if fault.is_set():
            raise RuntimeError("device fault")
        return real_step()
    monkeypatch.setattr(sch, "step", step)

    async def body(loop: EngineLoop) -> None:
        handles = [await loop.submit([5, 6, 7], greedy(200), AUTO) for _ in range(2)]
        fault.set()  # both streams are live now
        for h in handles:
            with pytest.raises(EngineFailed, match="device fault"):
                await collect(h.stream())
        assert not loop.healthy and loop.in_flight == 0
        with pytest.raises(EngineFailed):
            await loop.submit([5, 6], greedy(2), AUTO)
    with_loop(sch, metrics, body)
