"""Simulator vs a measured `smartspec bench sweep`: same prompts, request counts, acceptance and cost model.

For each rate of the measured sweep the simulator replays that rate's prompt lengths (the `off`
policy's records, in order), sends as many requests as the measured point had, uses the cost model
and per-position acceptance fitted from the sweep's raw step records (`smartspec sim fit`), and
averages the simulated mean latency over several arrival seeds (a measured point is one draw).
Prints a markdown table: measured mean, simulated mean, and the error, per policy and rate.

    python -m bench.sim_validation bench/results/2026-11-26-sweep-humaneval-real --seeds 8
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from smartspec.sim.calibrate import read_records, step_samples  # noqa: F401  (fails early without the sim)

POLICIES = ("off", "fixed:3", "fixed:7", "goodput")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--fit-from", default="steps-off.jsonl,steps-goodput-controller.jsonl")
    args = ap.parse_args()
    sweep: Path = args.sweep
    with tempfile.TemporaryDirectory(prefix="smartspec-simval-") as tmp:
        work = Path(tmp)
        steps = work / "steps.jsonl"
        steps.write_text("".join((sweep / name).read_text() for name in args.fit_from.split(",")))
        model = work / "cost.json"
        cli = [sys.executable, "-m", "smartspec.cli.main", "sim"]
        fit = subprocess.run([*cli, "fit", str(steps), "--save", str(model)],
                             check=True, capture_output=True, text=True).stdout
        acceptance = next(line.split("--acceptance ")[1].split()[0] for line in fit.splitlines()
                          if "--acceptance" in line)
        records = list(csv.DictReader((sweep / "records.csv").open()))
        measured = {(r["policy"], float(r["rate"])): float(r["mean_s"])
                    for r in csv.DictReader((sweep / "summary.csv").open())}
        rates = sorted({float(r["rate"]) for r in records})
        print(fit.splitlines()[0])
        print("\n| rate (req/s) | requests | " + " | ".join(f"{p}: measured / sim (error)" for p in POLICIES) + " |")
        print("|---|---|" + "---|" * len(POLICIES))
        errors = []
        for rate in rates:
            mine = [r for r in records if r["policy"] == "off" and float(r["rate"]) == rate]
            replay = work / f"replay-{rate}.csv"
            with replay.open("w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(mine[0]))
                w.writeheader()
                w.writerows(mine)
            sims: dict[str, list[float]] = {p: [] for p in POLICIES}
            for seed in range(args.seeds):
                out = work / f"sim-{rate}-{seed}"
                subprocess.run([sys.executable, "-m", "smartspec.cli.main", "sim", "sweep", "--cost-model", str(model),
                                "--rates", str(rate), "--policies", ",".join(POLICIES), "--requests", str(len(mine)),
                                "--acceptance", acceptance, "--prompt-len", f"replay:{replay}",
                                "--output-len", f"fixed:{mine[0]['completion_tokens']}", "--max-batch", "32",
                                "--max-k", "8", "--no-oracle", "--seed", str(seed), "--out", str(out), "--quiet"],
                               check=True, capture_output=True)
                for r in csv.DictReader((out / "summary.csv").open()):
                    sims[r["policy"]].append(float(r["mean_s"]))
            cells = []
            for p in POLICIES:
                sim, real = statistics.mean(sims[p]), measured[(p, rate)]
                errors.append(abs(sim / real - 1))
                cells.append(f"{real:.1f} / {sim:.1f} ({sim / real - 1:+.0%})")
            print(f"| {rate:g} | {len(mine)} | " + " | ".join(cells) + " |")
        print(f"\nMedian |error| {statistics.median(errors):.0%}, max {max(errors):.0%} over {len(errors)} points; "
              f"simulated means averaged over {args.seeds} arrival seeds.")


if __name__ == "__main__":
    main()
