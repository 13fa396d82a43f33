"""The paper's experiment: latency vs request rate per speculation policy on `smartspec up`, with paired statistics.

For each policy the local stack is started afresh (`smartspec up` as a subprocess, with the
policy's --policy/--fixed-k, the controller on or off) and warmed up with a few requests. Then,
optionally, a closed loop of N requests one at a time (light load, paired per request across
policies), then each rate of the sweep open loop on R independent arrival traces, then,
optionally, a dynamic trace. Before the stack stops, the target's step records are read from
Redis (`smartspec:{service}:steps`) to show which k the policy chose over time. Every policy sees
the same arrival times and prompts on a given (rate, trace) and in the closed loop, and generates
the same number of tokens per request (ignore_eos).

Output folder (default `results/<date>-<tag>/`): records.csv (one row per request; `trace`
= which arrival trace), closed_records.csv, points.csv, summary.csv, ratios.csv (the pass/fail
comparisons with 95 % intervals), means.csv, steps.csv, trace_*.csv for a dynamic trace, plots
and README.md (smartspec/loadtest/report.py).

Runs with `smartspec bench sweep …` (smartspec/cli/bench.py); nothing here imports torch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from smartspec.loadtest.config import (
    LEGACY_SETTINGS,
    POINT_FIELDS,
    RATIO_FIELDS,
    LoadSweepConfig,
    Point,
    PolicyArm,
    default_out,
    load_points,
    parse_policies,
    parse_rates,
    pooled,
    read_rows,
    write_rows,
)
from smartspec.loadtest.loadgen import (
    Arrival,
    LoadSpec,
    arrivals,
    run_closed_loop,
    run_load,
    seeded_rng,
    trace_arrivals,
)
from smartspec.loadtest.stack import (
    STEP_FIELDS,
    LocalStack,
    SweepError,
    read_steps,
    slug,
    step_rows,
    typed_step,
    window_stats,
)
from smartspec.loadtest.workloads import Workload, load
from smartspec.sim import compare, report
from smartspec.sim.report import RequestRecord

__all__ = [
    "LoadSweepConfig",
    "Point",
    "PolicyArm",
    "Sweep",
    "SweepError",
    "default_out",
    "parse_policies",
    "parse_rates",
    "run_sweep",
]

# ---------------------------------------------------------------------------------------------
# The sweep


class Sweep:
    def __init__(self, cfg: LoadSweepConfig, command: str) -> None:
        self.cfg, self.command = cfg, command
        self.workload: Workload = load(cfg.workload, seed=cfg.seed, synthetic_words=cfg.synthetic_words)
        self.max_tokens = cfg.max_tokens or self.workload.default_max_tokens
        self.records: list[RequestRecord] = []
        self.closed_records: list[RequestRecord] = []
        self.trace_records: list[RequestRecord] = []
        self.points: list[Point] = []
        self.steps: list[dict[str, Any]] = []
        self.served_model = ""
        self.commands = [command]
        self.log_dir = cfg.log_dir
        self._tmp_logs: tempfile.TemporaryDirectory[str] | None = None

    # -- schedules and prompts: the same for every policy --------------------------------------
    def _rng(self, rate: float, trace: int, what: str = "rate") -> random.Random:
        """A generator seeded by (seed, what, rate, trace); trace 0's arrivals keep the seeding of the sweeps before
        --traces, so a resumed older folder gets the same arrivals for its remaining policies."""
        if trace == 0 and what == "rate":
            return seeded_rng(self.cfg.seed, "rate", rate)
        return seeded_rng(self.cfg.seed, what, rate, "trace", trace)

    def schedule(self, rate: float, trace: int = 0) -> list[Arrival]:
        c = self.cfg
        count = c.requests
        if c.duration_s is not None:
            timed = arrivals(rate, duration_s=c.duration_s, cv=c.cv, rng=self._rng(rate, trace))
            count = max(len(timed), c.requests or 0)
        # The same generator again: a longer schedule starts with the timed one.
        return arrivals(rate, count=count, cv=c.cv, rng=self._rng(rate, trace))

    def prompts(self, rate: float, trace: int) -> Workload:
        """Trace 0 sends the workload's seeded order; every other trace draws its own (seeded by seed, rate, trace)."""
        return self.workload if trace == 0 else self.workload.reshuffled(self._rng(rate, trace, "prompts"))

    def trace_schedule(self, trace: int = 0) -> list[Arrival]:
        """Draw `trace` of the dynamic trace; draw 0 keeps the seeding of the sweeps before --traces applied to it."""
        assert self.cfg.trace is not None
        rng = seeded_rng(self.cfg.seed, "trace") if trace == 0 else seeded_rng(self.cfg.seed, "trace", trace)
        return trace_arrivals(self.cfg.trace, cv=self.cfg.cv, rng=rng)

    def trace_prompts(self, trace: int) -> Workload:
        """Draw 0 of the dynamic trace sends the workload's seeded order; every other draw its own."""
        return self.workload if trace == 0 else self.workload.reshuffled(
            seeded_rng(self.cfg.seed, "trace", "prompts", trace))

    def spec(self, policy: str, workload: Workload | None = None, trace: int = 0) -> LoadSpec:
        return LoadSpec(workload=workload or self.workload, policy=policy, max_tokens=self.max_tokens,
                        acceptance_emulated=self.cfg.emulate_acceptance is not None,
                        timeout_s=self.cfg.request_timeout_s, trace=trace)

    # -- resume --------------------------------------------------------------------------------
    def labels(self) -> list[str]:
        """Every policy in the results: those kept from earlier runs (--resume), then this run's."""
        return list(dict.fromkeys([*(p.policy for p in self.points), *(p.label for p in self.cfg.policies)]))

    def settings(self) -> dict[str, Any]:
        """What must match for the results of two runs to be comparable (checked by --resume)."""
        c = self.cfg
        return {"workload": c.workload, "max_tokens": self.max_tokens, "models": c.models, "dtype": c.dtype,
                "max_batch_size": c.max_batch_size, "draft_method": c.draft_method, "requests": c.requests,
                "duration_s": c.duration_s, "cv": c.cv, "seed": c.seed, "trace": c.trace_text,
                "emulate_acceptance": c.emulate_acceptance, "synthetic_words": c.synthetic_words,
                "traces": c.traces, "closed_loop": c.closed_loop, "interleave": c.interleave}

    def _done(self, policy: str) -> bool:
        c = self.cfg
        mine = [p for p in self.points if p.policy == policy]
        rates = {(p.rate, p.trace) for p in mine if p.kind == "rate"}
        trace_done = c.trace is None or {p.trace for p in mine if p.kind == "trace"} >= set(range(c.traces))
        closed_done = c.closed_loop == 0 or any(p.kind == "closed" for p in mine)
        return {(r, t) for r in c.rates for t in range(c.traces)} <= rates and trace_done and closed_done

    def _load_previous(self) -> None:
        out = self.cfg.out
        if not (out / "points.csv").exists():
            return
        settings = out / "sweep.json"
        if settings.exists():
            before = {**LEGACY_SETTINGS, **json.loads(settings.read_text())}
            self.served_model = str(before.get("served_model") or "")
            differ = {k: (before.get(k), v) for k, v in self.settings().items() if before.get(k) != v}
            if differ:
                raise SweepError(f"--resume: {out} holds a sweep with other settings: "
                                 + ", ".join(f"{k} {a!r} there, {b!r} now" for k, (a, b) in differ.items()))
        self.points = load_points(out / "points.csv")
        done = {p.policy for p in self.points if self._done(p.policy)}  # also policies not named this time
        self.points = [p for p in self.points if p.policy in done]
        for name, attr in (("records.csv", "records"), ("closed_records.csv", "closed_records"),
                           ("trace_records.csv", "trace_records")):
            if (out / name).exists():
                setattr(self, attr, [r for r in report.read_csv(out / name) if r.policy in done])
        if (out / "steps.csv").exists():
            self.steps = [typed_step(r) for r in read_rows(out / "steps.csv") if r["policy"] in done]
        if (out / "commands.txt").exists():
            old = (out / "commands.txt").read_text().splitlines()
            self.commands = list(dict.fromkeys([*old, *self.commands]))
        if done:
            print(f"bench sweep: resuming; already done: {', '.join(sorted(done))}", file=sys.stderr, flush=True)

    # -- running -------------------------------------------------------------------------------
    def run(self) -> Path:
        out = self.cfg.out
        out.mkdir(parents=True, exist_ok=True)
        if self.cfg.resume:
            self._load_previous()
        if self.log_dir is None:
            self._tmp_logs = tempfile.TemporaryDirectory(prefix="smartspec-bench-logs-")
            self.log_dir = Path(self._tmp_logs.name)
        try:
            self.run_pending([p for p in self.cfg.policies if not self._done(p.label)])
            self.save()
            self.write_readme()
        finally:
            if self._tmp_logs is not None:
                self._tmp_logs.cleanup()
        return out

    def run_pending(self, arms: Sequence[PolicyArm]) -> None:
        """The policies not done yet, one after another (a stack each); saved after each."""
        for policy in arms:
            self.run_policy(policy)
            self.save()

    def run_policy(self, policy: PolicyArm) -> None:
        assert self.log_dir is not None
        c = self.cfg
        stack = LocalStack(c, policy, self.log_dir / f"{policy.label.replace(':', '-')}.log")
        print(f"bench sweep: starting the stack for {policy.label}", file=sys.stderr, flush=True)
        t0 = time.time()
        points: list[Point] = []
        try:
            base = stack.start()
            t0 = time.time()
            self.served_model = asyncio.run(self._warmup(base, policy))
            if c.closed_loop:
                start = time.time()
                recs = asyncio.run(run_closed_loop(base, self.spec(policy.label), c.closed_loop, progress=c.progress,
                                                   desc=f"{policy.label} closed loop", model=self.served_model))
                self.closed_records += recs
                points.append(Point(policy.label, "closed", 0.0, len(recs), self._wall(recs), start, time.time()))
                self._check(stack, recs, f"{policy.label} closed loop")
                time.sleep(c.settle_s)
            for rate in c.rates:
                for trace in range(c.traces):
                    what = f"{policy.label} @ {rate:g} req/s" + (f", trace {trace + 1}/{c.traces}" if c.traces > 1
                                                                   else "")
                    start = time.time()
                    recs = asyncio.run(run_load(base, self.spec(policy.label, self.prompts(rate, trace), trace),
                                                self.schedule(rate, trace), progress=c.progress, desc=what,
                                                model=self.served_model))
                    self.records += recs
                    points.append(Point(policy.label, "rate", rate, len(recs), self._wall(recs), start, time.time(),
                                        trace=trace))
                    self._check(stack, recs, what)
                    time.sleep(c.settle_s)
            for trace in range(c.traces if c.trace is not None else 0):
                what = f"{policy.label} trace" + (f" {trace + 1}/{c.traces}" if c.traces > 1 else "")
                start = time.time()
                recs = asyncio.run(run_load(base, self.spec(policy.label, self.trace_prompts(trace), trace),
                                            self.trace_schedule(trace), progress=c.progress, desc=what,
                                            model=self.served_model))
                self.trace_records += recs
                points.append(Point(policy.label, "trace", math.nan, len(recs), self._wall(recs), start, time.time(),
                                    trace=trace))
                self._check(stack, recs, what)
                time.sleep(c.settle_s)
            time.sleep(max(0.5, c.settle_s))  # the step sink flushes every 50 ms
            self._read_steps(stack, policy, t0, points)
        finally:
            stack.stop()
            self.points += points

    def _read_steps(self, stack: LocalStack, policy: PolicyArm, t0: float, points: Sequence[Point]) -> None:
        redis_url = stack.info.get("redis_url")
        if not redis_url:
            print("bench sweep: no redis-server, so no step records (install Debian's redis-server)",
                  file=sys.stderr, flush=True)
            return
        raw = read_steps(str(redis_url), self.cfg.service)
        # The full records too (one JSON object per line, as in Redis): `smartspec sim fit` reads them.
        with (self.cfg.out / f"steps-{slug(policy.label)}.jsonl").open("w") as f:
            f.writelines(json.dumps(r) + "\n" for r in raw)
        steps = step_rows(raw, policy.label, t0, points)
        for p in points:
            p.mean_k, p.mean_batch, p.steps = window_stats(steps, p.start_unix, p.end_unix)
        self.steps += steps

    async def _warmup(self, base: str, policy: PolicyArm) -> str:
        import httpx

        from smartspec.loadtest.loadgen import served_model

        async with httpx.AsyncClient(timeout=60) as client:
            model = await served_model(client, base)
        spec = dataclasses.replace(self.spec(f"warmup:{policy.label}"), max_tokens=min(16, self.max_tokens))
        for i in range(self.cfg.warmup):
            (rec,) = await run_load(base, spec, [Arrival(0.0, 0.0, "warmup")], progress=False, model=model)
            if rec.error:
                raise SweepError(f"warm-up request {i + 1} for {policy.label} failed: {rec.error}")
        return model

    @staticmethod
    def _wall(recs: Sequence[RequestRecord]) -> float:
        ends = [r.arrival_s + (r.e2e_s or 0.0) for r in recs]
        return max(ends) - min(r.arrival_s for r in recs) if recs else 0.0

    @staticmethod
    def _check(stack: LocalStack, recs: Sequence[RequestRecord], what: str) -> None:
        errors = [r.error for r in recs if r.error]
        if errors:
            print(f"bench sweep: {what}: {len(errors)} of {len(recs)} requests failed, e.g. {errors[0]}",
                  file=sys.stderr, flush=True)
        if not stack.alive():
            raise SweepError(f"the stack died during {what}:\n{stack.log_tail()}")

    # -- results -------------------------------------------------------------------------------
    def summary(self) -> list[dict[str, Any]]:
        """Per policy and rate, every trace's requests pooled; `traces` says how many."""
        rows = report.summarize(self.records)
        for r in rows:
            pts = [p for p in self.points if p.kind == "rate" and (p.policy, p.rate) == (r["policy"], r["rate"])]
            r["traces"] = len({p.trace for p in pts})
            r["mean_k"], r["mean_batch"], r["wall_s"] = pooled(pts) if pts else (math.nan, math.nan, math.nan)
        return rows

    def closed_summary(self) -> list[dict[str, Any]]:
        rows = report.summarize(self.closed_records)
        for r in rows:
            pts = [p for p in self.points if p.kind == "closed" and p.policy == r["policy"]]
            r["mean_k"], r["mean_batch"], r["wall_s"] = pooled(pts) if pts else (math.nan, math.nan, math.nan)
            # One request at a time: tokens over the time the policy was serving (an interleaved loop's span
            # also holds the other policies' requests).
            ok = [x for x in self.closed_records if x.policy == r["policy"] and x.error is None and x.e2e_s]
            busy = sum(float(x.e2e_s or 0.0) for x in ok)
            r["tokens_per_s"] = sum(x.completion_tokens for x in ok) / busy if busy > 0 else math.nan
        return rows

    def trace_summary(self) -> list[dict[str, Any]]:
        rows = []
        phases = list(dict.fromkeys(r.phase for r in self.trace_records))
        for phase in phases:
            for row in report.summarize(r for r in self.trace_records if r.phase == phase):
                rows.append({"phase": phase, **row})
        return rows

    def mean_tables(self) -> dict[str, list[dict[str, Any]]]:
        """Per adaptive policy, per rate: every policy's mean latency and the best static in hindsight."""
        rows = report.summarize(self.records)
        labels = dict.fromkeys(r["policy"] for r in rows)
        return {a: report.ratio_table(rows, adaptive=a) for a in labels if report.is_adaptive(a)}

    def comparisons(self) -> list[dict[str, Any]]:
        """The pass/fail table (ratios.csv): the closed loop paired per request, each rate over its traces, the
        dynamic trace (whole, all phases) over its draws."""
        closed = [{"point": "closed loop", "rate": math.nan, **r}
                  for r in compare.closed_loop_table(self.closed_records)]
        loaded = [{"point": f"rate {r['rate']:g}", **r} for r in compare.loaded_table(self.records)]
        dynamic = [{"point": "dynamic trace", **r, "rate": math.nan}
                   for r in compare.loaded_table(self.trace_records, point=lambda _: 0.0)]
        return closed + loaded + dynamic

    def save(self) -> None:
        out = self.cfg.out
        (out / "commands.txt").write_text("\n".join(self.commands) + "\n")
        meta = {**self.settings(), "served_model": self.served_model}
        (out / "sweep.json").write_text(json.dumps(meta, indent=2) + "\n")
        report.write_csv(out / "records.csv", self.records)
        write_rows(out / "points.csv", [dataclasses.asdict(p) for p in self.points], POINT_FIELDS)
        write_rows(out / "summary.csv", self.summary())
        write_rows(out / "ratios.csv", self.comparisons(), RATIO_FIELDS)
        write_rows(out / "means.csv", [{"adaptive": a, **r} for a, rows in self.mean_tables().items() for r in rows])
        write_rows(out / "steps.csv", self.steps, STEP_FIELDS)
        if self.cfg.closed_loop or self.closed_records:
            report.write_csv(out / "closed_records.csv", self.closed_records)
        if self.cfg.trace is not None:
            report.write_csv(out / "trace_records.csv", self.trace_records)
            write_rows(out / "trace_summary.csv", self.trace_summary())

    def write_readme(self) -> None:
        from smartspec.loadtest.report import write_readme

        write_readme(self)


def run_sweep(cfg: LoadSweepConfig, command: str) -> Path:
    if cfg.interleave:
        from smartspec.loadtest.interleave import InterleavedSweep

        return InterleavedSweep(cfg, command).run()
    return Sweep(cfg, command).run()
