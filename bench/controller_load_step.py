"""Controller on, real pair: load steps 1 → N → 1 concurrent requests; does the recommended k follow?

Starts `smartspec up` (redis, controller, draft, target as processes), runs closed-loop chat
clients (1, then N, then 1 concurrent), and samples once a second the policy version the controller
published (`smartspec:{service}:policy`) and its status (`smartspec:{service}:status`: the k recommended
at the current batch size, mean batch size, goodput of decode steps). Prints the time series and how
long k took to move after each load step; writes them to results/<date>-controller-load-step/.

    python -m bench.controller_load_step [--models real|tiny] [--high 16] [--phase-s 40,60,40]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from bench.common import PROMPTS, write_report
from smartspec.cli.up import free_port
from smartspec.telemetry.keys import policy_key, status_key


def start_stack(models: str, port: int, stack_file: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SMARTSPEC_STACK_FILE": str(stack_file)}
    proc = subprocess.Popen([sys.executable, "-m", "smartspec.cli.main", "up", "--models", models, "--port", str(port),
                             "--no-auth"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        print("  up:", line.rstrip(), flush=True)
        if "smartspec is up" in line:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
            return proc
    raise RuntimeError("smartspec up exited before the stack was up")


class Clients:
    """Closed-loop clients: `active` of them keep one chat completion in flight each."""

    def __init__(self, base: str, max_tokens: int, limit: int) -> None:
        self.base, self.max_tokens = base, max_tokens
        self.active = 0
        self.done_tokens = 0
        self.stop = False
        self.error: str | None = None
        self.model = httpx.get(f"{base}/v1/models", timeout=30).json()["data"][0]["id"]
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(limit)]
        for t in self.threads:
            t.start()

    def _run(self, i: int) -> None:
        with httpx.Client(base_url=self.base, timeout=600) as client:
            n = 0
            while not self.stop:
                if i >= self.active:
                    time.sleep(0.05)
                    continue
                prompt = PROMPTS[(i + n) % len(PROMPTS)]
                n += 1
                r = client.post("/v1/chat/completions", json={
                    "model": self.model, "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": self.max_tokens, "temperature": 0})
                if r.status_code != 200:  # a benchmark that measures errors measures nothing
                    self.error = f"request failed: {r.status_code} {r.text[:200]}"
                    return
                self.done_tokens += r.json()["usage"]["completion_tokens"]


def sample(client: redis.Redis, service: str, t0: float, concurrency: int) -> dict[str, Any]:
    doc = client.get(policy_key(service))
    st = client.get(status_key(service))
    d: dict[str, Any] = json.loads(doc) if doc else {}
    s: dict[str, Any] = json.loads(st) if st else {}
    cur = s.get("current") or {}  # the recommended k is in the status, not the policy
    return {"t": round(time.time() - t0, 1), "clients": concurrency, "version": d.get("version"),
            "batch": s.get("mean_batch_size"), "k_recommended": cur.get("k"), "mean_k_served": s.get("mean_k"),
            "goodput": s.get("measured_goodput"), "predicted": s.get("predicted_goodput"),
            "r2": ((s.get("cost_model") or {}).get("last_fit") or {}).get("r2_in_force")}


def fmt(v: Any, digits: int = 1) -> str:
    return "-" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", choices=["real", "tiny"], default="real")
    ap.add_argument("--high", type=int, default=16, help="concurrent requests in the middle phase")
    ap.add_argument("--phase-s", default="40,60,40", help="seconds at 1, at --high, at 1 again")
    ap.add_argument("--max-tokens", type=int, default=64)
    args = ap.parse_args()
    phases = [float(x) for x in args.phase_s.split(",")]
    levels = [1, args.high, 1]
    with tempfile.TemporaryDirectory() as tmp:
        stack_file = Path(tmp) / "stack.json"
        port = free_port()
        proc = start_stack(args.models, port, stack_file)
        try:
            info = json.loads(stack_file.read_text())
            client = redis.Redis.from_url(info["redis_url"])
            clients = Clients(f"http://127.0.0.1:{port}", args.max_tokens, args.high)
            rows: list[dict[str, Any]] = []
            t0 = time.time()
            steps_at = []
            for level, seconds in zip(levels, phases, strict=True):
                clients.active = level
                steps_at.append(time.time() - t0)
                end = time.time() + seconds
                while time.time() < end:
                    time.sleep(1.0)
                    if clients.error:
                        raise RuntimeError(clients.error)
                    row = sample(client, info["service"], t0, level)
                    rows.append(row)
                    print("  " + "  ".join(f"{k}={fmt(v, 2)}" for k, v in row.items()), flush=True)
            clients.stop = True
            final = {"policy": json.loads(client.get(policy_key(info["service"])) or "null"),
                     "status": json.loads(client.get(status_key(info["service"])) or "null")}
        finally:
            proc.send_signal(2)
            proc.wait(timeout=120)
    table = ["| t s | clients | policy version | mean batch | recommended k | mean k served | goodput tok/s "
             "| predicted tok/s | cost-model R² |", "|---|---|---|---|---|---|---|---|---|"]
    table += [f"| {r['t']} | {r['clients']} | {fmt(r['version'])} | {fmt(r['batch'], 2)} | {fmt(r['k_recommended'])} "
              f"| {fmt(r['mean_k_served'], 2)} | {fmt(r['goodput'])} | {fmt(r['predicted'])} | {fmt(r['r2'], 3)} |"
              for r in rows]
    moves = []
    bounds = [*steps_at, rows[-1]["t"] + 1 if rows else 0.0]
    for i, level in enumerate(levels):  # per phase: the k it settled on (median of its second half)
        mid, end = (bounds[i] + bounds[i + 1]) / 2, bounds[i + 1]
        settled = sorted(r["k_recommended"] for r in rows if mid <= r["t"] < end and r["k_recommended"] is not None)
        if not settled:
            moves.append(f"phase {i + 1} ({level} clients): no recommended k")
            continue
        k = settled[len(settled) // 2]
        reached = next((r["t"] for r in rows if bounds[i] <= r["t"] < end and r["k_recommended"] == k), None)
        when = "" if reached is None or i == 0 else f", first recommended {reached - bounds[i]:.0f}s after the step"
        moves.append(f"phase {i + 1} ({level} clients, t={bounds[i]:.0f}-{end:.0f}s): recommended k settled at "
                     f"{k}{when}")
    body = "\n".join(["## Recommended k per load phase", "", *[f"- {m}" for m in moves], "",
                      "## Time series (1 s samples)", "", *table])
    print("\n" + body)
    report = write_report("controller-load-step", "Controller on: load steps and recommended k", body)
    (report.parent / "final-policy-and-status.json").write_text(json.dumps(final, indent=2) + "\n")
    print(f"\nwritten to {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
