"""A sweep's results folder: records and summary CSVs, README with the tables, command and machine, and plots."""

from __future__ import annotations

import csv
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from smartspec.sim.policies import canonical
from smartspec.sim.report import cpu_name, markdown, oracle_table, ratio_table, summarize, write_csv, write_rows_csv
from smartspec.sim.sweep import TRACE_RATE, SweepResult

SUMMARY_COLUMNS = ["policy", "rate", "requests", "mean_s", "ci95_s", "p50_s", "p99_s", "ttft_mean_s", "itl_mean_s",
                   "tokens_per_s", "acceptance"]


def machine() -> str:
    """One line: CPU, cores, Python and numpy (simulated times do not depend on it; the wall time does)."""
    return (f"{cpu_name()}, {os.cpu_count()} cores visible; python {platform.python_version()}, "
            f"numpy {np.__version__}; {platform.system()} {platform.release()}")


def _setup(result: SweepResult) -> str:
    cfg = result.config
    w = cfg.workload
    cost = cfg.cost
    coef = "; ".join(f"{part} {{{', '.join(f'{k}: {v:.4g}' for k, v in getattr(cost, part).items())}}}"
                     for part in ("verify", "draft", "overhead") if getattr(cost, part))
    load = (f"trace {', '.join(p.describe() for p in cfg.trace)}" if cfg.trace
            else f"rates {', '.join(f'{r:g}' for r in cfg.rates)} req/s, {cfg.requests} requests per rate")
    kn = cfg.knobs
    budget = f"{cfg.engine.max_prefill_tokens} tokens/step" if cfg.engine.max_prefill_tokens else "unlimited"
    start = ("warm (every policy on the true cost model)" if not cfg.cold_start
             else "cold (the start-up calibration, then online refit)" if cfg.calibration
             else "cold (every policy on the default cost model, online refit on; no start-up calibration)")
    return "\n".join([
        f"- cost model `{cost.name}`: {coef}; draft = {cost.draft_fraction:g}×verify, overhead = "
        f"{cost.overhead_fraction:g}×verify when speculating; pads to max k: {cost.pads_to_max_k}",
        f"- load: {load}; arrivals {w.arrivals.label()}",
        f"- prompts {w.prompt_len.label()} tokens, outputs {w.output_len.label()} tokens",
        f"- acceptance `{w.acceptance.label()}` (mean α {w.acceptance.mean:.3f}), drawn per request; draft j "
        "passes with that rate given j − 1 passed",
        f"- engine: max batch {cfg.engine.max_batch}, K = {cfg.engine.max_k}, prefill budget "
        f"{budget}; seed {w.seed}",
        f"- goodput policy: hysteresis {kn.hysteresis:g}, probe every {kn.probe_every or 'default'}, explore every "
        f"{'default' if kn.explore_every is None else kn.explore_every}, acceptance prior "
        f"{kn.acceptance_prior or 'default'}; online refit {'on' if cfg.refit else 'off'}",
        f"- start: {start}; "
        f"draft deadline {cfg.deadline.factor:g}× the predicted draft time within [{cfg.deadline.floor_s:g}, "
        f"{cfg.deadline.max_s:g}] s; {cfg.effects.describe()}",
    ])


def _runs_table(result: SweepResult, policy: str) -> list[dict[str, Any]]:
    rows = []
    for run in result.runs:
        if run.policy != policy:
            continue
        total = sum(run.k_counts.values()) or 1
        dist = " ".join(f"{k}:{100 * c / total:.0f}%" for k, c in run.k_counts.items() if c / total >= 0.005)
        rows.append({"rate": "trace" if run.rate == TRACE_RATE and result.config.trace else run.rate,
                     "steps": run.steps, "mean_batch": run.mean_batch, "mean_k": run.mean_k,
                     "busy_share": run.busy_s / run.sim_s if run.sim_s > 0 else float("nan"),
                     "deadline_misses": run.misses, "refits": run.refits, "k per request-step": dist})
    return rows


def write_results(out: Path, result: SweepResult, command: str, note: str | None = None) -> list[Path]:
    """Write the folder; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = result.config
    named = {canonical(p) for p in cfg.policies} | ({"off"} if cfg.oracle else set())
    summary = summarize(result.records)
    files = [out / "records.csv", out / "summary.csv", out / "runs.csv", out / "README.md"]
    write_csv(files[0], result.records)
    write_rows_csv(files[1], summary)
    with files[2].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["policy", "rate", "requests", "steps", "mean_batch", "mean_k", "k_counts", "sim_s", "busy_s",
                    "wall_s", "refits", "deadline_misses"])
        for r in result.runs:
            w.writerow([r.policy, r.rate, r.requests, r.steps, f"{r.mean_batch:.3f}", f"{r.mean_k:.3f}",
                        " ".join(f"{k}:{c}" for k, c in r.k_counts.items()), f"{r.sim_s:.3f}", f"{r.busy_s:.3f}",
                        f"{r.wall_s:.3f}", r.refits, r.misses])
    shown = [r for r in summary if r["policy"] in named]
    ratios = ratio_table(shown)
    oracle = oracle_table(summary)
    plots = _plots(out, shown)
    n_req = len(result.records)
    body = [
        f"# Simulated sweep: `{cfg.cost.name}`\n",
        f"Command: `{command}`\n",
        f"Machine: {machine()}\n",
        f"Sweep wall time: {result.wall_s:.1f} s for {len(result.runs)} simulated runs ({n_req} requests). "
        "Latencies are simulated seconds: the real Scheduler and SpeculationPolicy ran on a virtual clock, each "
        "step lasting what the cost model says for its shape (smartspec/sim).\n",
        "## Setup\n", _setup(result) + "\n",
        *([note.strip() + "\n"] if note else []),
        "## Mean latency (s) per policy\n",
        "`vs_best_static` = goodput mean / best of the static policies in this table; `speedup_vs_off` = off / "
        "goodput.\n",
        markdown(ratios),
    ]
    if cfg.oracle:
        body += [f"## Against the oracle: best static k in hindsight over off, fixed:1 … fixed:{cfg.engine.max_k}\n",
                 "Goal: `vs_oracle` ≤ 1.03 at every rate.\n", markdown(oracle)]
    body += ["## Latency, TTFT, inter-token time, throughput\n", markdown(shown, SUMMARY_COLUMNS),
             "## What the goodput policy chose\n", markdown(_runs_table(result, "goodput"))]
    if plots:
        body += ["## Plots\n", "\n".join(f"![{p.stem}]({p.name})" for p in plots) + "\n"]
    else:
        body += ["(No plots: matplotlib is not installed; `pip install smartspec[bench]`.)\n"]
    files[3].write_text("\n".join(body))
    return files + plots


def _plots(out: Path, rows: list[dict[str, Any]]) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    policies = sorted({r["policy"] for r in rows}, key=lambda p: (p == "goodput", p != "off", p))
    paths = []
    for key, ylabel, name, log in (("mean_s", "mean latency (s)", "latency-mean", True),
                                   ("p99_s", "p99 latency (s)", "latency-p99", True),
                                   ("tokens_per_s", "output tokens/s", "throughput", False)):
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for p in policies:
            pts = sorted((r["rate"], r[key]) for r in rows if r["policy"] == p)
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=p,
                    linewidth=2.5 if p == "goodput" else 1.2, color="black" if p == "goodput" else None)
        ax.set_xlabel("request rate (req/s)")
        ax.set_ylabel(ylabel)
        if log:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
