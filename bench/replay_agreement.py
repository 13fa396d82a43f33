"""Policies replayed on the draft/target agreement a real batch-1 run recorded: tokens/s over the best static k.

The requests of one or more static runs of the same prompts (smartspec.sim.replay) go one at a time through
the real Scheduler and SpeculationPolicy on the simulator, whose steps cost what a cost model fitted on the
same run's steps says (`smartspec sim fit STEPS.jsonl --save cost.json`). Unlike a drawn acceptance, this
keeps what the real pair does request by request (e.g. a rejection at position 3 in the first step of half
the HumanEval requests, then none), so it shows how a choice of the acceptance estimator or the policy's knobs
would have done on that run, in seconds instead of a 30-minute real run. Prints per policy: tokens/s, the
ratio of total time to the reference's with a 95 % interval over requests (paired), and the mean k.

    python -m bench.replay_agreement --cost-model cost.json RUN/steps-fixed-3.jsonl RUN/steps-fixed-5.jsonl \\
        RUN/steps-fixed-7.jsonl
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from smartspec.engine.calibration import CalibrationConfig
from smartspec.engine.refit import RefitConfig
from smartspec.policy.acceptance import AcceptanceConfig, AcceptanceTracker
from smartspec.policy.cost_model import CostModel, default_cost_model
from smartspec.policy.policy import SpeculationPolicy
from smartspec.sim.effects import SimEffects
from smartspec.sim.policies import policy_config
from smartspec.sim.replay import read_files
from smartspec.sim.run import EngineConfig, simulate
from smartspec.sim.workload import SimRequest

GAP_S = 1e4  # arrivals this far apart: one request at a time, as in the recorded closed loop


def run(name: str, requests: list[SimRequest], cost: CostModel, *, seed: int, noise: float,
        cold: bool) -> tuple[np.ndarray, float]:
    """Per-request latency and mean k of `policy[@m]` (m: a fixed acceptance prior strength, or `learnt`)."""
    policy_name, _, strength = name.partition("@")
    base = AcceptanceConfig()
    acc = base if strength in ("", "learnt") else replace(base, prior_strength=float(strength), strength_grid=())
    adaptive = policy_name.startswith("goodput")
    # As the target starts: the default cost model, its start-up profile, then refits from its own steps.
    start = default_cost_model() if cold and adaptive else cost
    policy = SpeculationPolicy(policy_config(policy_name, 8), start, AcceptanceTracker(acc))
    res = simulate(requests, policy, cost, label=name, engine=EngineConfig(max_batch=4, max_k=8), seed=seed,
                   refit=RefitConfig(enabled=cold and adaptive), effects=SimEffects(noise_sigma=noise),
                   calibration=CalibrationConfig() if cold else None)
    return np.array([r.e2e_s for r in res.records], dtype=float), res.tally.mean_k


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("steps", nargs="+", type=Path, help="step records (JSON lines) of batch-1 runs of the same prompts")
    ap.add_argument("--cost-model", required=True, type=Path, help="a JSON cost model (smartspec sim fit --save)")
    ap.add_argument("--policies", default="off,fixed:3,fixed:5,fixed:7,goodput@4,goodput@learnt",
                    help="policy[@m]: m is the acceptance prior strength, a number or `learnt` (default)")
    ap.add_argument("--reference", default="fixed:7")
    ap.add_argument("--seeds", type=int, default=3, help="timing-noise seeds per policy (latencies pooled)")
    ap.add_argument("--noise-sigma", type=float, default=0.06, help="lognormal step-time noise (sim fit prints it)")
    ap.add_argument("--warm", action="store_true",
                    help="the policy starts from the fitted cost model and never refits (default: cold, as a target)")
    ap.add_argument("--boot", type=int, default=2000, help="bootstrap resamples for the interval")
    args = ap.parse_args(argv)
    recorded, conflicts = read_files(args.steps)
    cost = CostModel.from_dict(json.loads(args.cost_model.read_text()))
    requests = [SimRequest(i, i * GAP_S, r.prompt_len, r.output_len, (0.5,), 0.0, agreement=r.agreement())
                for i, r in enumerate(recorded)]
    known = sum(len(r.known) for r in recorded)
    total = sum(r.output_len for r in recorded)
    agree = sum(ok for r in recorded for ok in r.known.values())
    print(f"{len(recorded)} requests, {total} output positions, {known} tested ({agree / max(known, 1):.3f} agreed), "
          f"{conflicts} positions where the runs disagreed\n")
    names = [n.strip() for n in args.policies.split(",") if n.strip()]
    if args.reference not in names:
        names.insert(0, args.reference)
    results = {}
    for n in names:
        runs = [run(n, requests, cost, seed=s, noise=args.noise_sigma, cold=not args.warm) for s in range(args.seeds)]
        results[n] = (np.concatenate([lat for lat, _ in runs]), float(np.mean([k for _, k in runs])))
    ref = results[args.reference][0]
    tokens = np.tile(np.array([r.output_len for r in recorded], dtype=float), args.seeds)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(ref), size=(args.boot, len(ref)))
    print(f"| policy | tok/s | time / {args.reference} [95 % CI] | mean k |")
    print("|---|---|---|---|")
    for name, (lat, mean_k) in results.items():
        ratio = lat.sum() / ref.sum()
        boots = lat[idx].sum(axis=1) / ref[idx].sum(axis=1)
        lo, hi = np.quantile(boots, [0.025, 0.975])
        print(f"| {name} | {tokens.sum() / lat.sum():.2f} | {ratio:.3f} [{lo:.3f}, {hi:.3f}] | {mean_k:.2f} |")


if __name__ == "__main__":
    main()
