"""Soak: `smartspec up` (auth on) for a long run at a fraction of its measured capacity; errors, latency
over time and every process's RSS (issue 13: 0 errors, RSS within ±5 % after warm-up).

    python -m bench.soak --minutes 30                 # the real pair, 80 % of capacity
    python -m bench.soak --models tiny --minutes 2 --capacity-minutes 0.5   # a quick look

Capacity is measured first, closed loop (`--clients` requests always in flight) for `--capacity-minutes`;
then Poisson arrivals at `--load` × that rate for `--minutes`. RSS is sampled every `--rss-every-s` from
/proc; "after warm-up" compares the first `--window-minutes` after `--warmup-minutes` of the load phase
with the last `--window-minutes`. Run it on a quiet machine (no tests, no other benchmark).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.common import quiet, write_report
from smartspec.cli.up import free_port
from smartspec.loadtest.loadgen import poisson_arrivals, request_body, send
from smartspec.loadtest.stack import terminate
from smartspec.loadtest.workloads import humaneval, synthetic
from smartspec.sim.report import RequestRecord, write_csv


@dataclass
class Stack:
    proc: subprocess.Popen[bytes]
    url: str
    key: str
    model: str
    tmp: tempfile.TemporaryDirectory[str]
    log: Path
    parts: dict[str, int] = field(default_factory=dict)  # name -> pid


def start(models: str, dtype: str, ready_s: float) -> Stack:
    tmp = tempfile.TemporaryDirectory(prefix="smartspec-soak-")
    stack_file, log = Path(tmp.name) / "stack.json", Path(tmp.name) / "up.log"
    port = free_port()
    env = {**os.environ, "SMARTSPEC_STACK_FILE": str(stack_file), "HF_HUB_OFFLINE": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "smartspec.cli.main", "up", "--models", models, "--port",
                                 str(port), "--dtype", dtype], stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"smartspec up exited:\n{log.read_text()[-3000:]}")
        try:
            info = json.loads(stack_file.read_text())
            if info.get("pid") == proc.pid and info.get("target_url"):
                key = Path(info["api_key_file"]).read_text().strip()
                url = info["target_url"]
                model = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"},
                                  timeout=30).json()["data"][0]["id"]
                stack = Stack(proc, url, key, model, tmp, log)
                stack.parts = parts_of(proc.pid)
                return stack
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    raise RuntimeError("smartspec up did not become ready")


def parts_of(pid: int) -> dict[str, int]:
    """The children of `up`, named by what they run."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != pid:
                continue
            cmd = (stat.parent / "cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        words = [c.decode(errors="replace") for c in cmd if c]
        name: str | None = next((w for w in ("serve-target", "serve-draft", "controller") if w in words), None)
        name = name or ("redis-server" if words and "redis-server" in words[0] else Path(words[0]).name)
        out[name.replace("serve-", "")] = int(stat.parent.name)
    return out


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def stop(stack: Stack) -> None:
    terminate(stack.proc)
    stack.tmp.cleanup()


class Run:
    def __init__(self, stack: Stack, args: argparse.Namespace) -> None:
        self.stack, self.args = stack, args
        self.workload = humaneval() if args.models == "real" else synthetic()
        self.records: list[RequestRecord] = []
        self.rss: list[dict[str, Any]] = []
        self.t0 = time.perf_counter()
        self.i = 0

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(headers={"Authorization": f"Bearer {self.stack.key}"},
                                 limits=httpx.Limits(max_connections=None), timeout=httpx.Timeout(600, connect=30))

    async def one(self, client: httpx.AsyncClient, phase: str) -> RequestRecord:
        i, self.i = self.i, self.i + 1
        body = request_body(self.stack.model, self.workload.messages(i), self.args.max_tokens)
        rec = RequestRecord(policy="goodput", rate=0.0, workload=self.workload.name, arrival_s=0.0, ttft_s=None,
                            e2e_s=None, phase=phase, seq=i)
        await send(client, f"{self.stack.url}/v1/chat/completions", body, rec, self.t0)
        self.records.append(rec)
        return rec

    async def sample_rss(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            row: dict[str, Any] = {"t_s": round(time.perf_counter() - self.t0, 1)}
            row |= {name: rss_mb(pid) for name, pid in self.stack.parts.items()}
            self.rss.append(row)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.args.rss_every_s)

    async def capacity(self) -> float:
        end = time.perf_counter() + 60 * self.args.capacity_minutes
        done: list[RequestRecord] = []
        async with self.client() as client:
            async def worker() -> None:
                while time.perf_counter() < end:
                    done.append(await self.one(client, "capacity"))
            t = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(self.args.clients)))
            took = time.perf_counter() - t
        return sum(1 for r in done if r.error is None) / took

    async def load(self, rate: float) -> float:
        schedule = poisson_arrivals(rate, duration_s=60 * self.args.minutes, rng=random.Random(self.args.seed))
        start = time.perf_counter()
        self.load_start_s = start - self.t0
        async with self.client() as client:
            async def at(t: float) -> None:
                await asyncio.sleep(max(0.0, start + t - time.perf_counter()))
                await self.one(client, "load")
            await asyncio.gather(*(at(a.t) for a in schedule))
        return time.perf_counter() - start

    async def main(self) -> dict[str, Any]:
        stop_rss = asyncio.Event()
        sampler = asyncio.create_task(self.sample_rss(stop_rss))
        cap = await self.capacity()
        rate = self.args.load * cap
        print(f"capacity {cap:.3f} req/s (closed loop, {self.args.clients} clients); soaking at {rate:.3f} req/s "
              f"for {self.args.minutes:g} min", flush=True)
        took = await self.load(rate)
        stop_rss.set()
        await sampler
        return {"capacity": cap, "rate": rate, "load_s": took}


def pct(xs: list[float], q: int) -> float:
    return statistics.quantiles(xs, n=100)[q - 1] if len(xs) >= 2 else (xs[0] if xs else float("nan"))


def report(run: Run, result: dict[str, Any], args: argparse.Namespace) -> str:
    load = [r for r in run.records if r.phase == "load"]
    errors = [r for r in run.records if r.error]
    start = run.load_start_s
    minutes: list[str] = []
    for m in range(int(args.minutes + 0.999)):
        done = [r for r in load if r.e2e_s is not None and m * 60 <= r.arrival_s - start < (m + 1) * 60]
        e2e = [r.e2e_s for r in done if r.e2e_s is not None and r.error is None]
        ttft = [r.ttft_s for r in done if r.ttft_s is not None and r.error is None]
        minutes.append(f"| {m} | {len(done)} | {sum(1 for r in done if r.error)} | "
                       f"{pct(e2e, 50):.2f} | {pct(e2e, 95):.2f} | {pct(ttft, 50):.2f} | {pct(ttft, 95):.2f} |")
    names = list(run.stack.parts)
    warm0 = start + 60 * args.warmup_minutes
    first = [r for r in run.rss if warm0 <= r["t_s"] < warm0 + 60 * args.window_minutes]
    end = run.rss[-1]["t_s"] if run.rss else 0.0
    last = [r for r in run.rss if r["t_s"] >= end - 60 * args.window_minutes]
    rss_rows = []
    for n in names:
        a = [r[n] for r in first if r.get(n)]
        b = [r[n] for r in last if r.get(n)]
        if a and b:
            ma, mb = statistics.mean(a), statistics.mean(b)
            rss_rows.append(f"| {n} | {ma:.0f} | {mb:.0f} | {100 * (mb / ma - 1):+.1f} % |")
    return "\n".join([
        f"Stack: `smartspec up --models {args.models} --dtype {args.dtype}` (API key on, goodput policy, controller), "
        f"{run.workload.name} prompts, {args.max_tokens} tokens each.",
        "",
        f"- capacity (closed loop, {args.clients} clients, {args.capacity_minutes:g} min): "
        f"**{result['capacity']:.3f} req/s**",
        f"- soak: Poisson arrivals at {args.load:.0%} of it = {result['rate']:.3f} req/s for {args.minutes:g} min "
        f"(took {result['load_s'] / 60:.1f} min to drain): {len(load)} requests, **{len(errors)} errors** "
        f"(all phases)" + (f"; first: `{errors[0].error}`" if errors else ""),
        "",
        "Latency by minute of the soak (seconds; requests by their send time):",
        "",
        "| minute | requests | errors | e2e p50 | e2e p95 | TTFT p50 | TTFT p95 |",
        "|---|---|---|---|---|---|---|",
        *minutes,
        "",
        f"RSS (MB), mean over {args.window_minutes:g} min after {args.warmup_minutes:g} min of warm-up vs the last "
        f"{args.window_minutes:g} min:",
        "",
        "| process | after warm-up | at the end | change |",
        "|---|---|---|---|",
        *rss_rows,
        "",
        "Files: `requests.csv` (every request), `rss.csv` (samples every "
        f"{args.rss_every_s:g} s).",
    ])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", choices=["real", "tiny"], default="real")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--capacity-minutes", type=float, default=3.0)
    ap.add_argument("--clients", type=int, default=8, help="closed-loop concurrency for the capacity run")
    ap.add_argument("--load", type=float, default=0.8, help="fraction of the measured capacity")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--warmup-minutes", type=float, default=5.0)
    ap.add_argument("--window-minutes", type=float, default=3.0)
    ap.add_argument("--rss-every-s", type=float, default=15.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="soak-real-avx2")
    args = ap.parse_args()
    quiet()
    stack = start(args.models, args.dtype, ready_s=600)
    try:
        print(f"stack up: {stack.url}; parts {stack.parts}", flush=True)
        run = Run(stack, args)
        result = asyncio.run(run.main())
    finally:
        stop(stack)
    body = report(run, result, args)
    out = write_report(args.tag, "Soak on the local stack", body)
    write_csv(out.parent / "requests.csv", run.records)
    names = sorted({k for r in run.rss for k in r})
    (out.parent / "rss.csv").write_text("\n".join([",".join(names), *(",".join(
        "" if r.get(n) is None else f"{r[n]:.1f}" for n in names) for r in run.rss)]) + "\n")
    print(body)
    print(f"\nwritten to {out.parent.name}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
