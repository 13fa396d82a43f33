"""The goodput policy's design choices compared in simulation: each variant's mean latency over the best static.

Every variant runs the real Scheduler and SpeculationPolicy on the simulator (smartspec/sim) with the
same requests per seed; the table gives, per rate, the geometric mean over seeds of mean latency /
the best of off, fixed:3, fixed:5, fixed:7 on that seed, and the mean k. This is how the policy's
defaults were chosen (2026-12-01): no speculation in admission steps, the ratio objective, no queue
weight, hysteresis 1.1, an optimistic cold prior.

    smartspec sim fit STEPS.jsonl --save cost.json
    python -m bench.sim_variants --cost-model cost.json --acceptance beta:19,1 --rates 0.1,0.3,0.6
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from smartspec.policy.acceptance import AcceptanceConfig, AcceptanceTracker
from smartspec.policy.cost_model import CostModel
from smartspec.policy.policy import PolicyConfig, SpeculationPolicy
from smartspec.sim.acceptance import parse_acceptance
from smartspec.sim.run import EngineConfig, simulate
from smartspec.sim.workload import WorkloadSpec, parse_arrivals, parse_lengths

STATICS: dict[str, dict[str, Any]] = {
    "off": {"mode": "off"}, "fixed:3": {"mode": "fixed", "fixed_k": 3},
    "fixed:5": {"mode": "fixed", "fixed_k": 5}, "fixed:7": {"mode": "fixed", "fixed_k": 7},
}
VARIANTS: dict[str, dict[str, Any]] = {
    "goodput": {"mode": "goodput"},
    "marginal": {"mode": "goodput", "objective": "marginal"},
    "decode-only admission": {"mode": "goodput", "admission": "decode-only"},
    "queue weight": {"mode": "goodput", "queue_weight": True},
    "hysteresis 1.3": {"mode": "goodput", "hysteresis": 1.3},
    "no upward exploration": {"mode": "goodput", "explore_up_batch": 0},
    "goodput-uniform": {"mode": "goodput-uniform"},
    "probe every 4": {"mode": "goodput", "probe_every": 4},
}


def _run(job: tuple[str, dict[str, Any], float, int, argparse.Namespace]) -> tuple[str, float, int, float, float]:
    name, knobs, rate, seed, args = job
    cost = CostModel.from_dict(json.loads(Path(args.cost_model).read_text()))
    workload = WorkloadSpec(parse_lengths(args.prompt_len), parse_lengths(args.output_len),
                            parse_acceptance(args.acceptance), parse_arrivals("poisson"), 8, seed)
    tracker = AcceptanceTracker(AcceptanceConfig(max_k=8, prior=(args.prior,)))
    policy = SpeculationPolicy(PolicyConfig(max_k=8, **knobs), cost, tracker)
    res = simulate(workload.requests(args.requests, rate), policy, cost, label=name,
                   engine=EngineConfig(max_batch=32, max_k=8), seed=seed)
    return name, rate, seed, statistics.mean(r.e2e_s or math.nan for r in res.records), res.tally.mean_k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cost-model", required=True, help="a JSON cost model (smartspec sim fit --save)")
    ap.add_argument("--acceptance", default="beta:19,1")
    ap.add_argument("--rates", default="0.1,0.3,0.6")
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--prompt-len", default="lognormal:180,0.3,600")
    ap.add_argument("--output-len", default="fixed:64")
    ap.add_argument("--prior", type=float, default=AcceptanceConfig().prior[0], help="the tracker's cold prior")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    everyone = {**STATICS, **VARIANTS}
    jobs = [(n, k, r, s, args) for (n, k), r, s in itertools.product(everyone.items(), rates, range(args.seeds))]
    with ProcessPoolExecutor(args.jobs) as pool:
        out = list(pool.map(_run, jobs))
    mean = {(n, r, s): m for n, r, s, m, _ in out}
    ks: dict[tuple[str, float], list[float]] = {}
    for n, r, _, _, k in out:
        ks.setdefault((n, r), []).append(k)
    print(f"acceptance {args.acceptance}, {args.requests} requests x {args.seeds} seeds, prior {args.prior}; "
          "latency / best static per seed (geometric mean), and mean k\n")
    print("| rate | best static | " + " | ".join(VARIANTS) + " |")
    print("|---|---|" + "---|" * len(VARIANTS))
    for rate in rates:
        best = [min(mean[(st, rate, s)] for st in STATICS) for s in range(args.seeds)]
        cells = []
        for name in VARIANTS:
            ratio = math.exp(statistics.mean(math.log(mean[(name, rate, s)] / best[s]) for s in range(args.seeds)))
            cells.append(f"{ratio:.3f} (k {statistics.mean(ks[(name, rate)]):.1f})")
        top = min(STATICS, key=lambda st: statistics.mean(mean[(st, rate, s)] for s in range(args.seeds)))
        print(f"| {rate:g} | {top} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
