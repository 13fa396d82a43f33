"""Simulator vs a measured `smartspec bench sweep`: same prompts, request counts, acceptance and cost model.

For each rate of the measured sweep the simulator replays that rate's prompt lengths and arrival
times (the `off` policy's records, in order; every policy of a point had the same ones), sends as
many requests as the measured point had, uses the cost model, per-position acceptance and timing
noise fitted from the sweep's raw step records (`smartspec sim fit`; step records older than the
`prefill_padded_tokens` field get it back from the requests' prompts, see `with_prefill_padding`),
and averages the simulated mean latency over several seeds (acceptance draws and noise; with
`--no-replay-arrivals` also fresh Poisson arrivals at the nominal rate, as this script did before).
Prints a markdown table: measured mean, simulated mean and the error per rate and policy.

The static policies (`off`, `fixed:3`, `fixed:7`) are replayed as they ran: the measured sweep's
constant draft deadline (`--measured-deadline-s`). The goodput policy's code may have changed since
the sweep, so its simulated column is a prediction of the current code as the target starts it
(`--cold-start`: the default cost model with online refit, the target's own deadline), set beside
the old measurement, not an error. With `--no-effects` every policy runs as the simulator did before
it modelled deadlines, shared cores, prefill padding, noise and cold starts (the fitted model, warm).

    python -m bench.sim_validation results/2026-11-26-sweep-humaneval-real --seeds 8
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from smartspec.sim.calibrate import read_records, step_samples  # noqa: F401  (fails early without the sim)

STATIC = ("off", "fixed:3", "fixed:7")
PREDICTED = "goodput"
CLI = [sys.executable, "-m", "smartspec.cli.main", "sim"]


def effect_args(on: bool, noise: float, deadline_s: float | None) -> list[str]:
    """`sim sweep` flags for one run: the engine effects, and the measured constant deadline (None: the target's)."""
    if not on:
        return ["--no-deadline", "--cores", "0", "--noise-sigma", "0"]
    flags = ["--cold-start", "--noise-sigma", f"{noise:g}"]
    if deadline_s is not None:
        flags += ["--draft-deadline-floor-s", f"{deadline_s:g}", "--draft-deadline-s", f"{deadline_s:g}"]
    return flags


def with_prefill_padding(steps: list[dict[str, Any]], requests: Sequence[dict[str, str]]) -> int:
    """Add `prefill_padded_tokens` (P prompts × the longest) to step records that predate it, in place; returns how
    many prefill steps it matched. The engine admits FIFO, so a stack's prefill steps take its requests' prompts in
    arrival order: a step that prefilled P prompts of T tokens took the next P if they add up to T (a step that
    does not match, e.g. a warm-up request, takes none and keeps the field unset)."""
    queue = [int(r["prompt_tokens"]) for r in sorted(requests, key=lambda r: (float(r["rate"]), float(r["arrival_s"])))]
    i = matched = 0
    for step in steps:
        count, tokens = int(step.get("num_prefills", 0)), int(step.get("prefill_tokens", 0))
        if count and "prefill_padded_tokens" not in step and sum(queue[i:i + count]) == tokens:
            step["prefill_padded_tokens"] = str(count * max(queue[i:i + count]))
            i, matched = i + count, matched + 1
    return matched


def simulate(work: Path, tag: str, base: list[str], policies: tuple[str, ...], extra: list[str],
             seed: int) -> dict[str, tuple[float, int]]:
    """(mean latency, deadline misses) per policy of one `sim sweep` run."""
    out = work / f"sim-{tag}-{seed}"
    subprocess.run([*CLI, "sweep", *base, "--policies", ",".join(policies), "--seed", str(seed), *extra,
                    "--out", str(out), "--quiet"], check=True, capture_output=True)
    means = {r["policy"]: float(r["mean_s"]) for r in csv.DictReader((out / "summary.csv").open())}
    misses = {r["policy"]: int(r["deadline_misses"]) for r in csv.DictReader((out / "runs.csv").open())}
    return {p: (means[p], misses[p]) for p in policies}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--fit-from", default="steps-off.jsonl,steps-goodput-controller.jsonl")
    ap.add_argument("--effects", action=argparse.BooleanOptionalAction, default=True,
                    help="deadline, shared cores, timing noise and a cold start (default on)")
    ap.add_argument("--noise-sigma", type=float, default=None, help="default: what `sim fit` measured")
    ap.add_argument("--replay-arrivals", action=argparse.BooleanOptionalAction, default=True,
                    help="replay each point's measured arrival times (default), or draw Poisson arrivals per seed")
    ap.add_argument("--measured-deadline-s", type=float, default=5.0,
                    help="the constant draft deadline the measured sweep ran with (2026-11-26: 5 s)")
    args = ap.parse_args()
    sweep: Path = args.sweep
    with tempfile.TemporaryDirectory(prefix="smartspec-simval-") as tmp:
        work = Path(tmp)
        records = list(csv.DictReader((sweep / "records.csv").open()))
        steps = work / "steps.jsonl"
        lines, matched = [], 0
        for name in args.fit_from.split(","):  # steps-<policy>.jsonl, `+controller` spelled `-controller`
            policy = name.removeprefix("steps-").removesuffix(".jsonl").replace("-controller", "+controller")
            raw = [json.loads(line) for line in (sweep / name).read_text().splitlines() if line.strip()]
            if args.effects:  # the padding price is one of the effects (--no-effects: the fit as it was)
                matched += with_prefill_padding(raw, [r for r in records if r["policy"] == policy])
            lines += [json.dumps(r) for r in raw]
        steps.write_text("\n".join(lines) + "\n")
        model = work / "cost.json"
        fit = subprocess.run([*CLI, "fit", str(steps), "--save", str(model)],
                             check=True, capture_output=True, text=True).stdout
        hint = next(line for line in fit.splitlines() if "--acceptance" in line)
        acceptance = hint.split("--acceptance ")[1].split()[0]
        noise = args.noise_sigma if args.noise_sigma is not None else float(hint.split("--noise-sigma ")[1].split()[0])
        measured = {(r["policy"], float(r["rate"])): float(r["mean_s"])
                    for r in csv.DictReader((sweep / "summary.csv").open())}
        rates = sorted({float(r["rate"]) for r in records})
        print(fit.splitlines()[0] + f"; prefill padding restored on {matched} prefill steps from the prompts")
        print(f"effects: {'on' if args.effects else 'off'}; timing noise σ {noise if args.effects else 0:g}; "
              f"static policies at the measured {args.measured_deadline_s:g} s deadline; arrivals "
              f"{'replayed' if args.replay_arrivals else 'Poisson, drawn per seed'}")
        print("\n| rate (req/s) | requests | " + " | ".join(f"{p}: measured / sim (error)" for p in STATIC) +
              f" | {PREDICTED}: measured (old code) / simulated (current code) | deadline misses per run |")
        print("|---|---|" + "---|" * (len(STATIC) + 2))
        errors = []
        for rate in rates:
            mine = [r for r in records if r["policy"] == "off" and float(r["rate"]) == rate]
            replay = work / f"replay-{rate}.csv"
            with replay.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(mine[0]))
                w.writeheader()
                w.writerows(mine)
            base = ["--cost-model", str(model), "--rates", str(rate), "--requests", str(len(mine)),
                    "--acceptance", acceptance, "--prompt-len", f"replay:{replay}",
                    "--output-len", f"fixed:{mine[0]['completion_tokens']}", "--max-batch", "32", "--max-k", "8",
                    "--no-oracle", *(["--arrivals", f"replay:{replay}"] if args.replay_arrivals else [])]
            runs: dict[str, list[tuple[float, int]]] = {p: [] for p in (*STATIC, PREDICTED)}
            for seed in range(args.seeds):
                for tag, policies, deadline in ((f"static-{rate}", STATIC, args.measured_deadline_s),
                                                (f"goodput-{rate}", (PREDICTED,), None)):
                    got = simulate(work, tag, base, policies, effect_args(args.effects, noise, deadline), seed)
                    for p, v in got.items():
                        runs[p].append(v)
            cells = []
            for p in STATIC:
                sim, real = statistics.mean(m for m, _ in runs[p]), measured[(p, rate)]
                errors.append(abs(sim / real - 1))
                cells.append(f"{real:.1f} / {sim:.1f} ({sim / real - 1:+.0%})")
            gp = statistics.mean(m for m, _ in runs[PREDICTED])
            cells.append(f"{measured[(PREDICTED, rate)]:.1f} / {gp:.1f}")
            cells.append(" / ".join(f"{statistics.mean(n for _, n in runs[p]):.1f}" for p in (*STATIC, PREDICTED)))
            print(f"| {rate:g} | {len(mine)} | " + " | ".join(cells) + " |")
        print(f"\nStatic policies: median |error| {statistics.median(errors):.0%}, max {max(errors):.0%} over "
              f"{len(errors)} points; simulated means averaged over {args.seeds} seeds. Misses are per "
              f"simulated run, in the order {', '.join((*STATIC, PREDICTED))}.")


if __name__ == "__main__":
    main()
