"""Open-loop load generator for the OpenAI endpoint of a running stack.

Requests are sent at pre-drawn arrival times whether or not earlier ones have finished (open
loop: the offered load does not adapt to the server, so queueing shows up as latency, as in the
paper's request-rate sweeps). Inter-arrival times are exponential (Poisson arrivals) or gamma with
a chosen coefficient of variation (CV > 1 is burstier than Poisson, CV < 1 smoother); a dynamic
trace is a list of phases, each a rate for a duration or a number of requests (the grammar is
smartspec/sim/trace.py's, shared with the simulator). A closed loop (`run_closed_loop`) sends one
request at a time instead: the light-load point whose requests can be paired across policies.

Every request streams (SSE) so the client sees when each token arrives: TTFT is the first chunk
that carries a choice, the inter-token gap is the mean gap between such chunks after the first
(one chunk may carry several tokens when a step accepts drafts), e2e is the last one. The final
usage chunk (`stream_options.include_usage`) gives prompt/completion tokens and smartspec's
`usage.speculation` (draft and accepted tokens). A failed request is a record with `error` set.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from smartspec.loadtest.workloads import Workload
from smartspec.sim.report import CLOSED_LOOP_PHASE, RequestRecord
from smartspec.sim.trace import Phase, parse_trace

__all__ = ["Arrival", "LoadSpec", "Phase", "load_client", "parse_trace", "run_closed_loop", "run_load", "send_one",
           "trace_arrivals"]

# ---------------------------------------------------------------------------------------------
# Arrivals


@dataclass(frozen=True)
class Arrival:
    t: float  # seconds from the start of the run
    rate: float  # the offered rate in force (req/s)
    phase: str = ""


def interarrival(rate: float, cv: float, rng: random.Random) -> float:
    """One gap with mean 1/rate: exponential at cv = 1, gamma(shape 1/cv², scale cv²/rate) otherwise, constant at 0."""
    if rate <= 0:
        raise ValueError(f"rate must be positive, got {rate}")
    if cv < 0:
        raise ValueError(f"cv must be >= 0, got {cv}")
    if cv == 0:
        return 1.0 / rate
    if cv == 1:
        return rng.expovariate(rate)
    shape = 1.0 / (cv * cv)
    return rng.gammavariate(shape, 1.0 / (rate * shape))


def arrivals(rate: float, *, count: int | None = None, duration_s: float | None = None, cv: float = 1.0,
             rng: random.Random | None = None, start: float = 0.0, phase: str = "") -> list[Arrival]:
    """Arrival times at `rate` req/s: `count` of them, or all those before `duration_s`.

    The first request goes at `start` (no idle lead-in), the rest after drawn gaps."""
    if (count is None) == (duration_s is None):
        raise ValueError("give either count or duration_s")
    rng = rng or random.Random(0)
    out: list[Arrival] = []
    t = start
    while True:
        if count is not None and len(out) >= count:
            break
        if duration_s is not None and t >= start + duration_s:
            break
        out.append(Arrival(t, rate, phase))
        t += interarrival(rate, cv, rng)
    return out


def poisson_arrivals(rate: float, count: int | None = None, duration_s: float | None = None,
                     rng: random.Random | None = None) -> list[Arrival]:
    return arrivals(rate, count=count, duration_s=duration_s, cv=1.0, rng=rng)


def gamma_arrivals(rate: float, cv: float, count: int | None = None, duration_s: float | None = None,
                   rng: random.Random | None = None) -> list[Arrival]:
    return arrivals(rate, count=count, duration_s=duration_s, cv=cv, rng=rng)


def trace_arrivals(phases: Sequence[Phase], cv: float = 1.0, rng: random.Random | None = None) -> list[Arrival]:
    """Phases back to back: a timed phase ends at its duration, a counted one after its last request's gap."""
    rng = rng or random.Random(0)
    out: list[Arrival] = []
    t = 0.0
    for ph in phases:
        if ph.rate == 0:
            t += float(ph.duration_s or 0)
            continue
        part = arrivals(ph.rate, count=ph.count, duration_s=ph.duration_s, cv=cv, rng=rng, start=t, phase=ph.name)
        out += part
        if ph.duration_s is not None:
            t += ph.duration_s
        elif part:
            t = part[-1].t + interarrival(ph.rate, cv, rng)
    return out


# ---------------------------------------------------------------------------------------------
# Server-sent events


class SSEParser:
    """Incremental `text/event-stream` parser: feed lines (without their newline), get event data.

    Only `data:` fields matter to the OpenAI API; comments (`:`) and other fields are skipped, and
    a multi-line data field is joined with newlines, as the SSE spec says."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        line = line.rstrip("\r")
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None

    def flush(self) -> str | None:
        """The pending event (at a blank line, or at the end of the stream), if any."""
        if not self._data:
            return None
        data = "\n".join(self._data)
        self._data = []
        return data


def parse_events(lines: Iterable[str]) -> list[str]:
    """All event payloads of a complete stream (tests, and small tools)."""
    parser = SSEParser()
    out = [d for d in (parser.feed(line) for line in lines) if d is not None]
    tail = parser.flush()
    return [*out, tail] if tail is not None else out


# ---------------------------------------------------------------------------------------------
# One request


@dataclass
class StreamStats:
    """What one streamed response said, with client-side timestamps (perf_counter seconds)."""

    first_s: float | None = None
    last_s: float | None = None
    chunks: int = 0
    done: bool = False
    usage: dict[str, Any] | None = None
    error: str | None = None
    finish_reason: str | None = None

    def event(self, data: str, now: float) -> None:
        if data == "[DONE]":
            self.done = True
            return
        obj = json.loads(data)
        if obj.get("error"):
            err = obj["error"]
            self.error = str(err.get("message", err) if isinstance(err, dict) else err)
            return
        if obj.get("choices"):
            self.chunks += 1
            if self.first_s is None:
                self.first_s = now
            self.last_s = now
            reason = obj["choices"][0].get("finish_reason")
            if reason:
                self.finish_reason = reason
        if obj.get("usage"):
            self.usage = obj["usage"]


def request_body(model: str, messages: list[dict[str, str]], max_tokens: int, *, temperature: float = 0.0,
                 ignore_eos: bool = True, seed: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens,
                            "temperature": temperature, "stream": True, "stream_options": {"include_usage": True},
                            "ignore_eos": ignore_eos}
    if seed is not None:
        body["seed"] = seed
    return body


def _error_message(status: int, text: str) -> str:
    try:
        err = json.loads(text).get("error", {})
        msg = err.get("message") if isinstance(err, dict) else str(err)
    except (ValueError, AttributeError):
        msg = text.strip()[:200]
    return f"HTTP {status}: {msg}"


async def send(client: httpx.AsyncClient, url: str, body: dict[str, Any], record: RequestRecord,
               t0: float) -> RequestRecord:
    """Send one streamed request; fill `record` (arrival is the actual send time since t0)."""
    sent = time.perf_counter()
    record.arrival_s = sent - t0
    stats = StreamStats()
    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                record.error = _error_message(resp.status_code, (await resp.aread()).decode(errors="replace"))
                return record
            parser = SSEParser()
            async for line in resp.aiter_lines():
                data = parser.feed(line)
                if data is not None:
                    stats.event(data, time.perf_counter())
            tail = parser.flush()
            if tail is not None:
                stats.event(tail, time.perf_counter())
    except (httpx.HTTPError, ValueError, OSError) as exc:  # ValueError: a malformed JSON chunk
        record.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        return record
    if stats.error is not None:
        record.error = f"server error: {stats.error}"
    elif not stats.done:
        record.error = "stream ended without [DONE]"
    elif stats.first_s is None:
        record.error = "no tokens streamed"
    if stats.first_s is not None and stats.last_s is not None:
        record.ttft_s = stats.first_s - sent
        record.e2e_s = stats.last_s - sent
        if stats.chunks > 1:
            record.itl_mean_s = (stats.last_s - stats.first_s) / (stats.chunks - 1)
    usage = stats.usage or {}
    record.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    record.completion_tokens = int(usage.get("completion_tokens") or 0)
    spec = usage.get("speculation") or {}
    record.drafted_tokens = int(spec.get("draft_tokens") or 0)
    record.accepted_tokens = int(spec.get("accepted_tokens") or 0)
    if record.error is None and stats.usage is None:
        record.error = "no usage chunk (stream_options.include_usage ignored?)"
    return record


# ---------------------------------------------------------------------------------------------
# A run


@dataclass
class LoadSpec:
    """What to send: the workload, output length and sampling; the labels every record carries."""

    workload: Workload
    policy: str
    max_tokens: int
    temperature: float = 0.0
    ignore_eos: bool = True
    seed: int | None = None
    acceptance_emulated: bool = False
    timeout_s: float = 1800.0  # longest silence on one stream (queued requests wait for their first token)
    extra: dict[str, Any] = field(default_factory=dict)  # merged into every request body
    trace: int = 0  # which independent arrival trace of a point this run is (records.csv `trace`)

    def record(self, i: int, a: Arrival) -> RequestRecord:
        """The empty record of request i; `workload` is the prompt's own source (mixed workloads have two)."""
        return RequestRecord(policy=self.policy, rate=a.rate, workload=self.workload.tag(i), arrival_s=a.t,
                             ttft_s=None, e2e_s=None, acceptance_emulated=self.acceptance_emulated, phase=a.phase,
                             trace=self.trace, seq=i)

    def body(self, model: str, i: int) -> dict[str, Any]:
        body = request_body(model, self.workload.messages(i), self.max_tokens, temperature=self.temperature,
                            ignore_eos=self.ignore_eos, seed=self.seed)
        body.update(self.extra)
        return body


async def served_model(client: httpx.AsyncClient, base_url: str) -> str:
    resp = await client.get(f"{base_url}/v1/models")
    resp.raise_for_status()
    return str(resp.json()["data"][0]["id"])


def load_client(spec: LoadSpec) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)  # never queue in the client
    return httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(spec.timeout_s, connect=30.0))


async def send_one(client: httpx.AsyncClient, url: str, spec: LoadSpec, model: str, i: int, a: Arrival,
                    t0: float) -> RequestRecord:
    rec = spec.record(i, a)
    try:
        await send(client, url, spec.body(model, i), rec, t0)
    except Exception as exc:  # never let one request end the run
        rec.error = f"{type(exc).__name__}: {exc}"
    return rec


async def run_load(base_url: str, spec: LoadSpec, schedule: Sequence[Arrival], *, progress: bool = True,
                   desc: str = "", model: str | None = None) -> list[RequestRecord]:
    """Send request i at schedule[i].t (open loop) and return one record per request, in send order."""
    from tqdm import tqdm

    async with load_client(spec) as client:
        model = model or await served_model(client, base_url)
        url = f"{base_url}/v1/chat/completions"
        bar = tqdm(total=len(schedule), desc=desc or spec.policy, file=sys.stderr, unit="req",
                   disable=not progress, dynamic_ncols=True)
        errors = 0

        async def one(i: int, a: Arrival) -> RequestRecord:
            nonlocal errors
            rec = await send_one(client, url, spec, model, i, a, t0)
            errors += rec.error is not None
            bar.set_postfix(errors=errors, refresh=False)
            bar.update(1)
            return rec

        tasks: list[asyncio.Task[RequestRecord]] = []
        t0 = time.perf_counter()
        try:
            for i, a in enumerate(schedule):
                delay = t0 + a.t - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i, a)))
            return list(await asyncio.gather(*tasks))
        finally:
            for t in tasks:
                t.cancel()
            bar.close()


async def run_closed_loop(base_url: str, spec: LoadSpec, count: int, *, progress: bool = True, desc: str = "",
                          model: str | None = None) -> list[RequestRecord]:
    """Send `count` requests one at a time (request i + 1 goes when request i has finished), prompts 0 … count − 1
    in order: every policy serves the same requests alone, so their latencies pair up request by request."""
    from tqdm import tqdm

    async with load_client(spec) as client:
        model = model or await served_model(client, base_url)
        url = f"{base_url}/v1/chat/completions"
        out: list[RequestRecord] = []
        t0 = time.perf_counter()
        with tqdm(total=count, desc=desc or spec.policy, file=sys.stderr, unit="req", disable=not progress,
                  dynamic_ncols=True) as bar:
            for i in range(count):
                out.append(await send_one(client, url, spec, model, i, Arrival(0.0, 0.0, CLOSED_LOOP_PHASE), t0))
                bar.update(1)
        return out


def seeded_rng(seed: int, *labels: object) -> random.Random:
    """The same arrivals for every policy at a given rate: a generator seeded by (seed, labels)."""
    return random.Random(":".join(str(x) for x in (seed, *labels)))


def offered_duration(schedule: Sequence[Arrival]) -> float:
    return schedule[-1].t - schedule[0].t if len(schedule) > 1 else 0.0


def rate_of(schedule: Sequence[Arrival]) -> float:
    """Realised arrival rate of a schedule ((n-1)/span), for sanity checks."""
    span = offered_duration(schedule)
    return (len(schedule) - 1) / span if span > 0 else math.nan
