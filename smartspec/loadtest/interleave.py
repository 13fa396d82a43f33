"""The interleaved load sweep: every policy's stack up at once, the same requests sent to each in turn.

On a small shared machine the host's speed drifts by tens of percent within minutes (the same
batch-1 step took 0.87 s and then 1.43 s seven minutes later, results/2026-12-05-closed-loop-
humaneval-real-avx512-adjacent), so policies run one after another compare machines, not policies.
Here every stack starts first. Then closed-loop request i goes to every policy, in a seeded random
order, before request i + 1 goes to any; each (rate, trace) of the open loop and the dynamic trace
run on every policy in turn before the next. One stack works at a time; the others sit idle (a
target runs no step without a request), so the two sides of each paired ratio ran minutes apart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
import sys
import time
from collections.abc import Sequence

from smartspec.loadtest.config import Point, PolicyArm
from smartspec.loadtest.loadgen import Arrival, load_client, run_load, seeded_rng, send_one
from smartspec.loadtest.stack import LocalStack, SweepError
from smartspec.loadtest.sweep import Sweep
from smartspec.sim.report import CLOSED_LOOP_PHASE, RequestRecord

GIB = 2**30
# Left free after the last stack starts: its memory grows while it serves, and the sweep needs some. Measured:
# three real-pair stacks at max batch 32 with 3.6 GiB available (the mapped weights included) stalled on memory
# more than half the time (/proc/pressure/memory) and their steps ran several times slower.
MEMORY_MARGIN = 2 * GIB


def mem_available() -> int | None:
    """What a new stack can have, in bytes: MemAvailable less the mapped file pages (the stacks' memory-mapped
    weights, which MemAvailable counts as reclaimable but every forward reads); None where the kernel does not say."""
    fields: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                name, _, rest = line.partition(":")
                fields[name] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    if "MemAvailable" not in fields:
        return None
    return max(0, fields["MemAvailable"] - fields.get("Mapped", 0))


def memory_shortfall(per_stack: int, available: int | None, *, started: int, total: int) -> str | None:
    """Why the next stack must not start (None: it may): less memory left than the first stack took, plus a margin.
    Nothing is known before the first stack has started, or where the kernel does not say."""
    if not per_stack or available is None or available >= per_stack + MEMORY_MARGIN:
        return None
    return (f"--interleave keeps every policy's stack up at once: {total} stacks need about "
            f"{total * per_stack / GIB:.1f} GiB, and with {started} up only {available / GIB:.1f} GiB is available; "
            "interleave fewer policies per run (--resume adds the others to the same folder) or lower --max-batch-size "
            "(each target preallocates its KV cache for that many sequences)")


@dataclasses.dataclass
class LiveArm:
    """One policy's running stack and what this run measured on it."""

    arm: PolicyArm
    stack: LocalStack
    base: str = ""
    t0: float = 0.0  # when its stack was ready: steps.csv's t_s counts from here
    points: list[Point] = dataclasses.field(default_factory=list)


class InterleavedSweep(Sweep):
    """`smartspec bench sweep --interleave`: the same files as Sweep, the policies run side by side in time."""

    def run_pending(self, arms: Sequence[PolicyArm]) -> None:
        """The policies not done yet (a resumed run keeps the others), side by side in time."""
        if arms:
            self._run_arms(arms)

    def _run_arms(self, arms: Sequence[PolicyArm]) -> None:
        c = self.cfg
        live: list[LiveArm] = []
        try:
            self._start_all(arms, live)
            rng = seeded_rng(c.seed, "interleave")
            if c.closed_loop:
                self._closed_loop(live, rng)
                time.sleep(c.settle_s)
            for rate in c.rates:
                for trace in range(c.traces):
                    for la in self._order(live, rng):
                        label = la.arm.label
                        what = f"{label} @ {rate:g} req/s" + (f", trace {trace + 1}/{c.traces}" if c.traces > 1
                                                             else "")
                        start = time.time()
                        recs = asyncio.run(run_load(la.base, self.spec(label, self.prompts(rate, trace), trace),
                                                    self.schedule(rate, trace), progress=c.progress, desc=what,
                                                    model=self.served_model))
                        self.records += recs
                        la.points.append(Point(label, "rate", rate, len(recs), self._wall(recs), start, time.time(),
                                               trace=trace))
                        self._check(la.stack, recs, what)
                        time.sleep(c.settle_s)
            for trace in range(c.traces if c.trace is not None else 0):
                for la in self._order(live, rng):
                    label = la.arm.label
                    what = f"{label} trace" + (f" {trace + 1}/{c.traces}" if c.traces > 1 else "")
                    start = time.time()
                    recs = asyncio.run(run_load(la.base, self.spec(label, self.trace_prompts(trace), trace),
                                                self.trace_schedule(trace), progress=c.progress, desc=what,
                                                model=self.served_model))
                    self.trace_records += recs
                    la.points.append(Point(label, "trace", math.nan, len(recs), self._wall(recs), start, time.time(),
                                           trace=trace))
                    self._check(la.stack, recs, what)
                    time.sleep(c.settle_s)
            time.sleep(max(0.5, c.settle_s))  # the step sinks flush every 50 ms
            for la in live:
                self._read_steps(la.stack, la.arm, la.t0, la.points)
        finally:
            for la in live:
                la.stack.stop()
                self.points += la.points

    def _start_all(self, arms: Sequence[PolicyArm], live: list[LiveArm]) -> None:
        """Start the stacks one by one (a start-up calibration alone on the cores), then warm each up.

        The first stack's memory is the measure: a next one starts only if that much (and a margin) is
        still available, so a sweep that cannot hold every stack says so instead of being killed mid-run."""
        assert self.log_dir is not None
        per_stack = 0
        for arm in arms:
            before = mem_available()
            short = memory_shortfall(per_stack, before, started=len(live), total=len(arms))
            if short:
                raise SweepError(short)
            stack = LocalStack(self.cfg, arm, self.log_dir / f"{arm.label.replace(':', '-')}.log")
            live.append(LiveArm(arm, stack))
            print(f"bench sweep: starting the stack for {arm.label}", file=sys.stderr, flush=True)
            live[-1].base = stack.start()
            live[-1].t0 = time.time()
            after = mem_available()
            if not per_stack and before is not None and after is not None:
                per_stack = max(0, before - after)
        for la in live:
            self.served_model = asyncio.run(self._warmup(la.base, la.arm))

    @staticmethod
    def _order(live: Sequence[LiveArm], rng: random.Random) -> list[LiveArm]:
        """This round's order: drawn afresh, so no policy always runs first (or right after another)."""
        return rng.sample(list(live), len(live))

    def _closed_loop(self, live: Sequence[LiveArm], rng: random.Random) -> None:
        start = time.time()
        got = asyncio.run(self._closed_rounds(live, rng))
        end = time.time()
        for la in live:
            recs = got[la.arm.label]
            self.closed_records += recs
            # wall_s: the time this policy was serving (its requests' latencies), not the interleaved span.
            busy = sum(r.e2e_s or 0.0 for r in recs)
            la.points.append(Point(la.arm.label, "closed", 0.0, len(recs), busy, start, end))

    async def _closed_rounds(self, live: Sequence[LiveArm], rng: random.Random) -> dict[str, list[RequestRecord]]:
        """Round i sends request i to every policy in turn, one request in flight in all."""
        from tqdm import tqdm

        c = self.cfg
        specs = {la.arm.label: self.spec(la.arm.label) for la in live}
        clients = {label: load_client(spec) for label, spec in specs.items()}
        out: dict[str, list[RequestRecord]] = {label: [] for label in specs}
        t0 = time.perf_counter()
        try:
            with tqdm(total=c.closed_loop, desc="interleaved closed loop", file=sys.stderr, unit="round",
                      disable=not c.progress, dynamic_ncols=True) as bar:
                for i in range(c.closed_loop):
                    for la in self._order(live, rng):
                        label = la.arm.label
                        rec = await send_one(clients[label], f"{la.base}/v1/chat/completions", specs[label],
                                             self.served_model, i, Arrival(0.0, 0.0, CLOSED_LOOP_PHASE), t0)
                        out[label].append(rec)
                        self._check(la.stack, [rec], f"{label} closed loop, request {i}")
                    bar.update(1)
        finally:
            for client in clients.values():
                await client.aclose()
        return out
