"""`smartspec up` as a subprocess for the load sweep, and the target's step records read back from its Redis."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from smartspec.loadtest.sweep import LoadSweepConfig, Point, PolicyArm

EMULATE_ENV = "SMARTSPEC_TARGET_EMULATE_ACCEPTANCE"


class SweepError(RuntimeError):
    """The sweep cannot go on (a stack did not start or died, bad arguments, a results folder that does not match)."""


def terminate(proc: subprocess.Popen[Any], timeout_s: float = 120.0) -> None:
    """SIGTERM (`smartspec up` drains its parts on it), then SIGKILL if it has not exited in `timeout_s`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalStack:
    """`smartspec up` in a subprocess, found through its stack file; stopped with SIGTERM (it drains)."""

    def __init__(self, cfg: LoadSweepConfig, policy: PolicyArm, log_path: Path) -> None:
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
                # Loopback, one client: the bench measures serving, not key handling (one hmac per request).
                "--no-auth", *self.policy.up_args()]

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
        if self.proc is not None:
            terminate(self.proc)
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


def slug(label: str) -> str:
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
                    window, rate = p.window, p.rate
                    break
            if all(ts < p.start_unix for p in points):
                window = "warmup"
            if r.get("calibration") == "1":  # the target's start-up profile, before the warm-up
                window = "calibration"
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



def typed_step(r: dict[str, Any]) -> dict[str, Any]:
    ints = ("step", "batch_size", "num_prefills", "prefill_tokens", "sum_k", "max_k", "emitted", "policy_version")
    floats = ("t_s", "ts", "rate", "mean_k", "step_s", "draft_s", "verify_s")
    return {k: (int(v) if k in ints else float(v or "nan") if k in floats else v) for k, v in r.items()}
