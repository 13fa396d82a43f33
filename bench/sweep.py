"""The paper's experiment: mean/p99 latency vs request rate for each speculation policy, on `smartspec up`.

For each policy the local stack is started afresh (`smartspec up` as a subprocess, with the
policy's --policy/--fixed-k, the controller on or off), warmed up with a few requests, and then
driven open loop at each rate of the sweep (and, optionally, through a dynamic trace). Before the
stack stops, the target's step records are read from Redis (`smartspec:{service}:steps`) to show
which k the policy chose over time. Every policy sees the same arrival times and prompts at a
given rate (seeded per rate), and generates the same number of tokens per request (ignore_eos).

Output folder (default `bench/results/<date>-<tag>/`): records.csv (one row per request),
points.csv (wall time and step statistics per policy and rate), summary.csv, ratios.csv,
steps.csv (one row per target step), trace_*.csv for a dynamic trace, plots (PNG) and README.md.

Runs with `smartspec bench sweep …` (smartspec/cli/bench.py); nothing here imports torch.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from bench.loadgen import Arrival, LoadSpec, Phase, arrivals, run_load, seeded_rng, trace_arrivals
from bench.workloads import Workload, load
from smartspec.sim import report
from smartspec.sim.report import RequestRecord

DEFAULT_POLICIES = "off,fixed:1,fixed:3,fixed:5,fixed:7,goodput"
ADAPTIVE_LABELS = ("goodput", "goodput+controller")
EMULATE_ENV = "SMARTSPEC_TARGET_EMULATE_ACCEPTANCE"


class SweepError(RuntimeError):
    """The sweep cannot go on (a stack did not start, bad arguments)."""


# ---------------------------------------------------------------------------------------------
# Policies


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    label: str  # as in the records: "off", "fixed:3", "goodput", "goodput+controller"
    mode: str  # smartspec up --policy
    fixed_k: int
    controller: bool

    def up_args(self) -> list[str]:
        args = ["--policy", self.mode, "--fixed-k", str(self.fixed_k)]
        return args if self.controller else [*args, "--no-controller"]


def parse_policies(text: str, controller: bool = False) -> list[PolicySpec]:
    """`off`, `fixed:K`, `goodput`; a `+controller` suffix runs that policy with the controller on
    whatever `controller` (the --controller flag) says for the others."""
    out = []
    for raw in (p.strip() for p in text.split(",")):
        if not raw:
            continue
        base, plus, suffix = raw.partition("+")
        if plus and suffix != "controller":
            raise ValueError(f"policy {raw!r}: the only suffix is '+controller'")
        with_controller = controller or bool(plus)
        if base == "off":
            spec = PolicySpec(raw, "off", 0, with_controller)
        elif base == "goodput":
            spec = PolicySpec(raw, "goodput", 3, with_controller)
        elif base.startswith("fixed:"):
            try:
                k = int(base.split(":", 1)[1])
            except ValueError:
                raise ValueError(f"policy {raw!r}: fixed:K needs an integer K") from None
            if not 1 <= k <= 8:
                raise ValueError(f"policy {raw!r}: K must be in 1..8 (the target's max k)")
            spec = PolicySpec(raw, "fixed", k, with_controller)
        else:
            raise ValueError(f"unknown policy {raw!r}; use off, fixed:K, goodput, goodput+controller")
        out.append(spec)
    labels = [p.label for p in out]
    if not out or len(set(labels)) != len(labels):
        raise ValueError(f"--policies must name distinct policies, got {text!r}")
    return out


def parse_rates(text: str) -> list[float]:
    try:
        rates = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise ValueError(f"--rates must be comma-separated numbers, got {text!r}") from None
    if not rates or any(not (r > 0 and math.isfinite(r)) for r in rates):
        raise ValueError(f"--rates must be positive, got {text!r}")
    return sorted(set(rates))


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclasses.dataclass
class SweepConfig:
    policies: list[PolicySpec]
    rates: list[float]
    out: Path
    requests: int | None = 20  # per rate (with duration_s: at least this many)
    duration_s: float | None = None  # arrivals during this long per rate
    workload: str = "humaneval"
    max_tokens: int | None = None  # None: the workload's default
    cv: float = 1.0  # inter-arrival coefficient of variation (1: Poisson)
    trace: list[Phase] | None = None
    trace_text: str = ""
    models: str = "real"
    dtype: str = "bfloat16"
    max_batch_size: int = 32
    draft_method: str = "draftModel"
    controller: bool = False
    emulate_acceptance: float | None = None
    warmup: int = 2
    seed: int = 0
    service: str = "bench"
    ready_timeout_s: float = 900.0
    request_timeout_s: float = 1800.0
    settle_s: float = 1.0
    log_dir: Path | None = None
    progress: bool = True
    resume: bool = False
    synthetic_words: int = 24


@dataclasses.dataclass
class Point:
    """One (policy, rate) run, or one trace run: what the records alone do not say."""

    policy: str
    kind: str  # "rate" | "trace"
    rate: float
    requests: int
    wall_s: float  # first send to last response
    start_unix: float
    end_unix: float
    mean_k: float = math.nan  # Σk / Σ running requests over the decode steps in the window
    mean_batch: float = math.nan
    steps: int = 0


# ---------------------------------------------------------------------------------------------
# The stack


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalStack:
    """`smartspec up` in a subprocess, found through its stack file; stopped with SIGTERM (it drains)."""

    def __init__(self, cfg: SweepConfig, policy: PolicySpec, log_path: Path) -> None:
        self.cfg, self.policy, self.log_path = cfg, policy, log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmp = tempfile.TemporaryDirectory(prefix="smartspec-bench-")
        self.stack_file = Path(self.tmp.name) / "stack.json"
        self.info: dict[str, Any] = {}

    def command(self, port: int) -> list[str]:
        c = self.cfg
        return [sys.executable, "-m", "smartspec.cli.main", "up", "--models", c.models, "--port", str(port),
                "--dtype", c.dtype, "--max-batch-size", str(c.max_batch_size), "--service", c.service,
                "--draft-method", c.draft_method, "--ready-timeout-s", str(c.ready_timeout_s),
                *self.policy.up_args()]

    def env(self) -> dict[str, str]:
        env = {**os.environ, "SMARTSPEC_STACK_FILE": str(self.stack_file)}
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.pop(EMULATE_ENV, None)
        if self.cfg.emulate_acceptance is not None:
            env[EMULATE_ENV] = str(self.cfg.emulate_acceptance)
        return env

    def start(self) -> str:
        """Start and wait until the target answers; returns its base URL."""
        port = free_port()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            # Own session: a Ctrl-C at the terminal reaches the sweep, which stops the stack in order.
            self.proc = subprocess.Popen(self.command(port), stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                                         start_new_session=True)
        deadline = time.monotonic() + self.cfg.ready_timeout_s + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SweepError(f"smartspec up ({self.policy.label}) exited with status {self.proc.returncode}:\n"
                                 f"{self.log_tail()}")
            try:
                info = json.loads(self.stack_file.read_text())
                if info.get("pid") == self.proc.pid and info.get("target_url"):
                    self.info = info
                    return str(info["target_url"])
            except (OSError, ValueError):
                pass
            time.sleep(0.2)
        raise SweepError(f"smartspec up ({self.policy.label}) not ready in {self.cfg.ready_timeout_s:.0f}s:\n"
                         f"{self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.tmp.cleanup()


def health(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=5) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# Step records from Redis

STEP_FIELDS = ("policy", "t_s", "ts", "window", "rate", "step", "batch_size", "num_prefills", "prefill_tokens",
               "sum_k", "max_k", "mean_k", "emitted", "step_s", "draft_s", "verify_s", "policy_version")


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label)


def read_steps(redis_url: str, service: str) -> list[dict[str, str]]:
    """Every entry of the target's step stream (flat string maps, schema v1)."""
    import redis

    from smartspec.telemetry.keys import SCHEMA_VERSION, steps_key

    client = redis.Redis.from_url(redis_url, socket_timeout=10, decode_responses=True)
    out: list[dict[str, str]] = []
    start = "-"
    try:
        while True:
            batch: list[tuple[str, dict[str, str]]] = client.xrange(  # type: ignore[assignment]
                steps_key(service), min=start, max="+", count=5000)
            if not batch:
                break
            out += [dict(fields) for _, fields in batch if fields.get("v") == str(SCHEMA_VERSION)]
            start = "(" + batch[-1][0]
    finally:
        client.close()
    return out


def step_rows(raw: Iterable[dict[str, str]], policy: str, t0: float, points: Sequence[Point]) -> list[dict[str, Any]]:
    """Steps with time from the policy's start and the window (rate point, trace, warm-up) they fell in."""
    rows = []
    for r in raw:
        try:
            ts = float(r["ts"])
            batch, sum_k = int(r["batch_size"]), int(r["sum_k"])
            step_s = float(r["draft_s"]) + float(r["verify_s"]) + float(r["overhead_s"])
            window, rate = "idle", math.nan
            for p in points:
                if p.start_unix <= ts <= p.end_unix + 0.5:
                    window, rate = (f"rate {p.rate:g}" if p.kind == "rate" else "trace"), p.rate
                    break
            if all(ts < p.start_unix for p in points):
                window = "warmup"
            rows.append({
                "policy": policy, "t_s": round(ts - t0, 4), "ts": ts, "window": window, "rate": rate,
                "step": int(r["step"]), "batch_size": batch, "num_prefills": int(r["num_prefills"]),
                "prefill_tokens": int(r["prefill_tokens"]), "sum_k": sum_k, "max_k": int(r["max_k"]),
                "mean_k": sum_k / batch if batch else math.nan, "emitted": int(r["emitted"]),
                "step_s": step_s, "draft_s": float(r["draft_s"]), "verify_s": float(r["verify_s"]),
                "policy_version": int(r["policy_version"]),
            })
        except (KeyError, ValueError):
            continue
    return rows


def window_stats(steps: Sequence[dict[str, Any]], start: float, end: float) -> tuple[float, float, int]:
    """(mean k per running request, mean running batch, decode steps) over decode steps in [start, end]."""
    dec = [s for s in steps if start <= s["ts"] <= end + 0.5 and s["batch_size"] > 0]
    if not dec:
        return math.nan, math.nan, 0
    rs = sum(s["batch_size"] for s in dec)
    return sum(s["sum_k"] for s in dec) / rs, rs / len(dec), len(dec)


# ---------------------------------------------------------------------------------------------
# Files


def write_rows(path: Path, rows: Sequence[dict[str, Any]], fields: Sequence[str] | None = None) -> None:
    fields = list(fields or dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(v) for k, v in r.items()})


def _fmt(v: Any) -> Any:
    if not isinstance(v, float):
        return v
    return f"{v:.3f}" if abs(v) >= 1e6 else f"{v:.6g}"  # unix times keep their milliseconds


def read_rows(path: Path) -> list[dict[str, Any]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


POINT_FIELDS = [f.name for f in dataclasses.fields(Point)]


def load_points(path: Path) -> list[Point]:
    out = []
    for r in read_rows(path):
        out.append(Point(policy=r["policy"], kind=r["kind"], rate=float(r["rate"]), requests=int(r["requests"]),
                         wall_s=float(r["wall_s"]), start_unix=float(r["start_unix"]), end_unix=float(r["end_unix"]),
                         mean_k=float(r["mean_k"] or "nan"), mean_batch=float(r["mean_batch"] or "nan"),
                         steps=int(r["steps"] or 0)))
    return out


def machine() -> str:
    """The machine, as bench.common.machine() says it, without importing torch in this process."""
    cpu = report.cpu_name()
    try:
        torch = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch = "not installed"
    return (f"{cpu}; torch {torch}; python {platform.python_version()}; "
            f"{platform.system()} {platform.release()}; {os.cpu_count()} logical CPUs")


def default_out(tag: str) -> Path:
    return Path(__file__).parent / "results" / f"{dt.date.today().isoformat()}-{tag}"


# ---------------------------------------------------------------------------------------------
# The sweep


class Sweep:
    def __init__(self, cfg: SweepConfig, command: str) -> None:
        self.cfg, self.command = cfg, command
        self.workload: Workload = load(cfg.workload, seed=cfg.seed, synthetic_words=cfg.synthetic_words)
        self.max_tokens = cfg.max_tokens or self.workload.default_max_tokens
        self.records: list[RequestRecord] = []
        self.trace_records: list[RequestRecord] = []
        self.points: list[Point] = []
        self.steps: list[dict[str, Any]] = []
        self.served_model = ""
        self.commands = [command]
        self.log_dir = cfg.log_dir
        self._tmp_logs: tempfile.TemporaryDirectory[str] | None = None

    # -- schedules: the same for every policy --------------------------------------------------
    def schedule(self, rate: float) -> list[Arrival]:
        c = self.cfg
        count = c.requests
        if c.duration_s is not None:
            timed = arrivals(rate, duration_s=c.duration_s, cv=c.cv, rng=seeded_rng(c.seed, "rate", rate))
            count = max(len(timed), c.requests or 0)
        # The same generator again: a longer schedule starts with the timed one.
        return arrivals(rate, count=count, cv=c.cv, rng=seeded_rng(c.seed, "rate", rate))

    def trace_schedule(self) -> list[Arrival]:
        assert self.cfg.trace is not None
        return trace_arrivals(self.cfg.trace, cv=self.cfg.cv, rng=seeded_rng(self.cfg.seed, "trace"))

    def spec(self, policy: str) -> LoadSpec:
        return LoadSpec(workload=self.workload, policy=policy, max_tokens=self.max_tokens,
                        acceptance_emulated=self.cfg.emulate_acceptance is not None,
                        timeout_s=self.cfg.request_timeout_s)

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
                "emulate_acceptance": c.emulate_acceptance, "synthetic_words": c.synthetic_words}

    def _done(self, policy: str) -> bool:
        rates = {p.rate for p in self.points if p.policy == policy and p.kind == "rate"}
        trace_done = self.cfg.trace is None or any(p.policy == policy and p.kind == "trace" for p in self.points)
        return set(self.cfg.rates) <= rates and trace_done

    def _load_previous(self) -> None:
        out = self.cfg.out
        if not (out / "points.csv").exists():
            return
        settings = out / "sweep.json"
        if settings.exists():
            before = json.loads(settings.read_text())
            self.served_model = str(before.get("served_model") or "")
            differ = {k: (before.get(k), v) for k, v in self.settings().items() if before.get(k) != v}
            if differ:
                raise SweepError(f"--resume: {out} holds a sweep with other settings: "
                                 + ", ".join(f"{k} {a!r} there, {b!r} now" for k, (a, b) in differ.items()))
        self.points = load_points(out / "points.csv")
        done = {p.policy for p in self.points if self._done(p.policy)}  # also policies not named this time
        self.points = [p for p in self.points if p.policy in done]
        if (out / "records.csv").exists():
            self.records = [r for r in report.read_csv(out / "records.csv") if r.policy in done]
        if (out / "trace_records.csv").exists():
            self.trace_records = [r for r in report.read_csv(out / "trace_records.csv") if r.policy in done]
        if (out / "steps.csv").exists():
            self.steps = [_typed_step(r) for r in read_rows(out / "steps.csv") if r["policy"] in done]
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
            for policy in self.cfg.policies:
                if self._done(policy.label):
                    continue
                self.run_policy(policy)
                self.save()
            self.save()
            self.write_readme()
        finally:
            if self._tmp_logs is not None:
                self._tmp_logs.cleanup()
        return out

    def run_policy(self, policy: PolicySpec) -> None:
        assert self.log_dir is not None
        stack = LocalStack(self.cfg, policy, self.log_dir / f"{policy.label.replace(':', '-')}.log")
        print(f"bench sweep: starting the stack for {policy.label}", file=sys.stderr, flush=True)
        t0 = time.time()
        points: list[Point] = []
        try:
            base = stack.start()
            t0 = time.time()
            self.served_model = asyncio.run(self._warmup(base, policy))
            for rate in self.cfg.rates:
                sched = self.schedule(rate)
                start = time.time()
                recs = asyncio.run(run_load(base, self.spec(policy.label), sched, progress=self.cfg.progress,
                                            desc=f"{policy.label} @ {rate:g} req/s", model=self.served_model))
                end = time.time()
                self.records += recs
                points.append(Point(policy.label, "rate", rate, len(recs), self._wall(recs), start, end))
                self._check(stack, recs, f"{policy.label} @ {rate:g} req/s")
                time.sleep(self.cfg.settle_s)
            if self.cfg.trace is not None:
                sched = self.trace_schedule()
                start = time.time()
                recs = asyncio.run(run_load(base, self.spec(policy.label), sched, progress=self.cfg.progress,
                                            desc=f"{policy.label} trace", model=self.served_model))
                end = time.time()
                self.trace_records += recs
                points.append(Point(policy.label, "trace", math.nan, len(recs), self._wall(recs), start, end))
                self._check(stack, recs, f"{policy.label} trace")
            time.sleep(max(0.5, self.cfg.settle_s))  # the step sink flushes every 50 ms
            redis_url = stack.info.get("redis_url")
            if redis_url:
                raw = read_steps(str(redis_url), self.cfg.service)
                # The full records too (one JSON object per line, as in Redis): `smartspec sim fit` reads them.
                with (self.cfg.out / f"steps-{_slug(policy.label)}.jsonl").open("w") as f:
                    f.writelines(json.dumps(r) + "\n" for r in raw)
                steps = step_rows(raw, policy.label, t0, points)
                for p in points:
                    p.mean_k, p.mean_batch, p.steps = window_stats(steps, p.start_unix, p.end_unix)
                self.steps += steps
            else:
                print("bench sweep: no redis-server, so no step records (install Debian's redis-server)",
                      file=sys.stderr, flush=True)
        finally:
            stack.stop()
            self.points += points

    async def _warmup(self, base: str, policy: PolicySpec) -> str:
        import httpx

        from bench.loadgen import served_model

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
        rows = report.summarize(self.records)
        by = {(p.policy, p.rate): p for p in self.points if p.kind == "rate"}
        for r in rows:
            p = by.get((r["policy"], r["rate"]))
            r["mean_k"], r["mean_batch"] = (p.mean_k, p.mean_batch) if p else (math.nan, math.nan)
            r["wall_s"] = p.wall_s if p else math.nan
        return rows

    def trace_summary(self) -> list[dict[str, Any]]:
        rows = []
        phases = list(dict.fromkeys(r.phase for r in self.trace_records))
        for phase in phases:
            for row in report.summarize(r for r in self.trace_records if r.phase == phase):
                rows.append({"phase": phase, **row})
        return rows

    def ratios(self) -> dict[str, list[dict[str, Any]]]:
        rows = report.summarize(self.records)
        labels = {r["policy"] for r in rows}
        return {a: report.ratio_table(rows, adaptive=a) for a in ADAPTIVE_LABELS if a in labels}

    def save(self) -> None:
        out = self.cfg.out
        (out / "commands.txt").write_text("\n".join(self.commands) + "\n")
        meta = {**self.settings(), "served_model": self.served_model}
        (out / "sweep.json").write_text(json.dumps(meta, indent=2) + "\n")
        report.write_csv(out / "records.csv", self.records)
        write_rows(out / "points.csv", [dataclasses.asdict(p) for p in self.points], POINT_FIELDS)
        write_rows(out / "summary.csv", self.summary())
        ratio_rows = [{"adaptive": a, **r} for a, rows in self.ratios().items() for r in rows]
        write_rows(out / "ratios.csv", ratio_rows)
        write_rows(out / "steps.csv", self.steps, STEP_FIELDS)
        if self.cfg.trace is not None:
            report.write_csv(out / "trace_records.csv", self.trace_records)
            write_rows(out / "trace_summary.csv", self.trace_summary())

    def models_text(self) -> str:
        c = self.cfg
        if c.models == "real":
            from smartspec.models.registry import PAIR

            return (f"target {PAIR['target'].name} ({PAIR['target'].description}); "
                    f"draft {PAIR['draft'].name} ({PAIR['draft'].description})")
        return ("tiny random-init Qwen2-architecture pair (`smartspec up --models tiny`, seed 0; "
                "draft = the target's first layers)")

    def write_readme(self) -> None:
        from bench import plots

        c, out = self.cfg, self.cfg.out
        figures = plots.write_all(self, out)
        emulated = c.emulate_acceptance is not None
        labels = self.labels()
        lines = [f"# Load sweep: {self.workload.name}, {c.models} pair, {len(labels)} policies", ""]
        if emulated:
            lines += [
                f"> # ⚠ ACCEPTANCE EMULATED (α = {c.emulate_acceptance})",
                f"> **The target accepted each draft token with probability α = {c.emulate_acceptance} instead of "
                "comparing it with its own choice** (`SMARTSPEC_TARGET_EMULATE_ACCEPTANCE`). Outputs are NOT the "
                "target's; latencies show what acceptance α would give with this pair's costs. Every record has "
                "`acceptance_emulated=True`.", ""]
        if c.duration_s is None:
            per_point = f"{c.requests} requests per point"
        else:
            per_point = f"arrivals during {c.duration_s:g} s per point" + (
                f", at least {c.requests} requests" if c.requests else "")
        arrivals_text = "Poisson" if c.cv == 1 else f"gamma inter-arrivals, CV {c.cv:g}"
        lines += [
            *([f"Command: `{self.commands[0]}`"] if len(self.commands) == 1 else
              ["Commands (one per resumed run):", "", *(f"- `{cmd}`" for cmd in self.commands)]), "",
            f"Machine: {machine()}", "",
            f"Models: {self.models_text()}{f'; served as `{self.served_model}`' if self.served_model else ''}; "
            f"dtype {c.dtype}; "
            f"max batch {c.max_batch_size}; draft method {c.draft_method}.", "",
            f"Workload: {self.workload.name} — {self.workload.source}; chat completions, streamed, temperature 0, "
            f"{self.max_tokens} output tokens per request (ignore_eos).", "",
            f"Load: open loop, {arrivals_text}, {per_point} (seed {c.seed}; the same arrival times and prompts for "
            f"every policy at a rate); rates {', '.join(f'{r:g}' for r in c.rates)} req/s; "
            f"{c.warmup} warm-up requests after each stack start.", "",
            f"Policies: {', '.join(labels)}; controller "
            f"{'on' if c.controller else 'off (targets use their local policy)'}"
            f"{'; `+controller` labels run with the controller' if any('+' in p for p in labels) else ''}."
            " The stack is restarted for every policy.", "",
        ]
        summary = self.summary()
        cols = ["policy", "rate", "requests", "errors", "mean_s", "ci95_s", "p50_s", "p99_s", "ttft_mean_s",
                "itl_mean_s", "tokens_per_s", "acceptance", "mean_k", "mean_batch", "wall_s"]
        lines += ["## Latency per policy and rate", "",
                  "Seconds; `tokens_per_s` = output tokens over the point's span; `mean_k` = Σk / Σ running "
                  "requests over the target's decode steps during the point; `wall_s` = how long the point ran.", "",
                  report.markdown(summary, cols)]
        for adaptive, rows in self.ratios().items():
            lines += [f"## {adaptive} vs the static policies", "",
                      f"Mean latency (s) per policy; `best_static` is the best of off/fixed:k at that rate (the "
                      f"oracle in hindsight); `vs_best_static` = {adaptive} / best static (goal ≤ 1.00); "
                      f"`speedup_vs_off` = off / {adaptive}.", "", report.markdown(rows)]
        if self.trace_records:
            lines += ["## Dynamic trace", "", f"Phases: `{c.trace_text}` ({arrivals_text}).", "",
                      report.markdown(self.trace_summary(),
                                      ["phase", "policy", "rate", "requests", "errors", "mean_s", "p99_s",
                                       "tokens_per_s", "acceptance"])]
        if figures:
            lines += ["## Plots", ""] + [f"![{name}]({name})" for name in figures] + [""]
        lines += ["## Files", "",
                  "- `records.csv`: one row per request (smartspec/sim/report.py RequestRecord; `arrival_s` from the "
                  "point's start, latencies in seconds, drafted/accepted from the server's usage)",
                  "- `points.csv`: per policy and rate: requests, wall time, mean k, mean batch",
                  "- `summary.csv`, `ratios.csv`: the tables above",
                  "- `steps.csv`: every target step read from Redis (`t_s` from the policy's stack start; "
                  "`window` = the rate point it fell in; `mean_k` = Σk / running requests)",
                  *(["- `trace_records.csv`, `trace_summary.csv`: the dynamic trace"] if self.trace_records else []),
                  ""]
        (out / "README.md").write_text("\n".join(lines))


def _typed_step(r: dict[str, Any]) -> dict[str, Any]:
    ints = ("step", "batch_size", "num_prefills", "prefill_tokens", "sum_k", "max_k", "emitted", "policy_version")
    floats = ("t_s", "ts", "rate", "mean_k", "step_s", "draft_s", "verify_s")
    return {k: (int(v) if k in ints else float(v or "nan") if k in floats else v) for k, v in r.items()}


def run_sweep(cfg: SweepConfig, command: str) -> Path:
    return Sweep(cfg, command).run()
