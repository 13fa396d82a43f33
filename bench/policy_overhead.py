"""Policy decision time per step vs the real pair's step time (goal: <= 1 % at batch 64), the online
refit's time (every `RefitConfig.every_steps` steps) per step, and what the step loop's thread pays per
step with the refit inside the loop and beside it (`RefitConfig.background`).

    .venv/bin/python bench/policy_overhead.py [--batches 1 64 256] [--reps 200] [--no-engine]
        [--loop-steps 320] [--device-wait-ms 7]

The loop measurement runs the real Scheduler and goodput policy over the simulator's engine (its steps cost
nothing real; its bookkeeping stands in for the engine's) and sleeps `--device-wait-ms` after each step, as
the host waits on a GPU forward with the GIL released; it times each `Scheduler.step` call.

The decision is SpeculationPolicy.choose (acceptance lookup for every request, exact goodput
selection over k = 0 … 8, probing) with per-request acceptance histories and a cost model fitted
to this engine. The step it is compared with is the real pair's k = 0 engine step at the same
batch size (bf16), the cheapest step there is — so the share is an upper bound.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import quiet, real_pair_paths, write_report
from smartspec.engine.refit import RefitConfig, judge_refit
from smartspec.engine.sampling import SamplingParams
from smartspec.engine.scheduler import Scheduler
from smartspec.policy.acceptance import AcceptanceConfig, AcceptanceTracker
from smartspec.policy.cost_fit import StepSample
from smartspec.policy.cost_model import StepShape, default_cost_model
from smartspec.policy.policy import BatchRequest, PolicyConfig, SpeculationPolicy
from smartspec.sim.engine import SimEngine, VirtualClock
from smartspec.sim.workload import SimRequest


def decision_seconds(batch: int, reps: int) -> float:
    rng = np.random.default_rng(0)
    tracker = AcceptanceTracker(AcceptanceConfig(max_k=8))
    policy = SpeculationPolicy(PolicyConfig(mode="goodput", max_k=8), default_cost_model(), tracker)
    reqs = [BatchRequest(i, 8, int(rng.integers(50, 1500))) for i in range(batch)]
    for r in reqs:
        tracker.add(r.seq_id)
    for _ in range(20):  # give every request its own history
        ks = rng.integers(1, 9, size=batch)
        tracker.observe([r.seq_id for r in reqs], ks.tolist(), rng.binomial(ks, 0.7).tolist())
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        policy.choose(reqs)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def refit_seconds(batch: int, reps: int) -> float:
    """Median time of one refit as the scheduler runs it (fit, plausibility, error of the fit and of the model
    in force) over a full window of synthetic steps of this batch size."""
    rng = np.random.default_rng(2)
    cfg = RefitConfig()
    truth = default_cost_model()
    samples = []
    for i in range(cfg.window + cfg.spec_window):
        ks = rng.integers(0, 9, size=batch) * (i % 3 > 0)
        prefill = int(rng.integers(20, 400)) * (i % 50 == 0)
        shape = StepShape(batch, int(rng.integers(50, 1500)) * batch, int(ks.max()), int(ks.sum()), prefill,
                          int(rng.integers(0, 30)) * batch * (ks.max() > 0), prefill)
        d, v, o = (x * float(rng.normal(1.0, 0.05)) for x in truth.components(shape))
        samples.append(StepSample(shape, d, v, o))
    times = []
    for _ in range(max(3, reps // 20)):
        t0 = time.perf_counter()
        judge_refit(samples, truth, 8)  # the fit and the scheduler's adoption test
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def loop_step_ms(batch: int, background: bool, steps: int, wait_s: float) -> np.ndarray:
    """Host milliseconds of each `Scheduler.step` at a steady `batch`, goodput policy learning online, with the
    refit in the loop or beside it; `wait_s` of sleep between steps stands for the device's forward."""
    requests = {i: SimRequest(i, 0.0, 200, steps + 64, (0.8,) * 8, 0.0) for i in range(batch)}
    clock = VirtualClock()
    engine = SimEngine(requests, default_cost_model(), clock, num_slots=batch, max_k=8, seed=3)
    policy = SpeculationPolicy(PolicyConfig(mode="goodput", max_k=8), default_cost_model())
    sched = Scheduler(engine, policy, refit=RefitConfig(background=background), clock=clock)
    for i in requests:
        sched.submit(i, [0] * 200, SamplingParams(max_tokens=steps + 64, ignore_eos=True))
    sched.step()  # the prefill
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        sched.step()
        times.append(time.perf_counter() - t0)
        time.sleep(wait_s)
    sched.wait_for_refit(timeout_s=10)
    return 1000 * np.array(times)


def engine_step_seconds(batch: int, steps: int = 4) -> float:
    from smartspec.engine.builder import EngineSpec, build_engine
    from smartspec.engine.sampling import SamplingParams

    target, draft = real_pair_paths()
    engine, _ = build_engine(EngineSpec(target, draft, dtype="bfloat16", num_slots=batch, max_len=64))
    rng = np.random.default_rng(1)
    for i in range(batch):
        engine.add_request(i, rng.integers(100, 20000, size=32).tolist(), SamplingParams(max_tokens=steps + 2,
                                                                                           ignore_eos=True))
    engine.step()  # prefill
    times = []
    for _ in range(steps):
        st = engine.step({}).stats
        assert st is not None
        times.append(st.step_s)
    return statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64, 256])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--no-engine", action="store_true", help="decision times only")
    ap.add_argument("--loop-steps", type=int, default=320, help="steps per arm of the loop measurement (0: skip)")
    ap.add_argument("--loop-repeats", type=int, default=3, help="alternating runs of each arm, pooled")
    ap.add_argument("--device-wait-ms", type=float, default=7.0,
                    help="sleep after each loop step, standing for a GPU forward (7: an 8B decode on an H200)")
    args = ap.parse_args()
    quiet()
    refit = RefitConfig()
    every = refit.every_steps
    rows = [f"| batch | decision ms | refit ms (every {every} steps) | decision + refit / {every}, ms per step "
            "| real-pair k=0 step ms | share of step |", "|---|---|---|---|---|---|"]
    for b in args.batches:
        d = decision_seconds(b, args.reps)
        r = refit_seconds(b, args.reps)
        per_step = d + r / every
        if args.no_engine:
            rows.append(f"| {b} | {1000 * d:.3f} | {1000 * r:.1f} | {1000 * per_step:.2f} | | |")
        else:
            s = engine_step_seconds(b)
            rows.append(f"| {b} | {1000 * d:.3f} | {1000 * r:.1f} | {1000 * per_step:.2f} | {1000 * s:.0f} "
                        f"| {100 * per_step / s:.2f} % |")
        print(rows[-1], flush=True)
    window = refit.window + refit.spec_window
    body = (f"K = 8, goodput mode, per-request acceptance histories; median of decisions. A refit fits a full window "
            f"({window} synthetic steps) as the scheduler does.\n\n" + "\n".join(rows))
    if args.loop_steps:
        loop = [f"| batch | refit | mean ms | median | p99 | max | steps over {2 * args.device_wait_ms:g} ms |",
                "|---|---|---|---|---|---|---|"]
        for b in args.batches:
            # Same seed and requests in every run: the same decisions until a fit lands. The arms alternate
            # and each pools its runs, so a slow minute of this shared VM falls on both.
            runs: dict[bool, list[np.ndarray]] = {False: [], True: []}
            for _ in range(args.loop_repeats):
                for background in (False, True):
                    runs[background].append(loop_step_ms(b, background, args.loop_steps, args.device_wait_ms / 1000))
            for background in (False, True):
                ms = np.concatenate(runs[background])
                loop.append(f"| {b} | {'beside the loop' if background else 'in the loop'} | {ms.mean():.2f} "
                            f"| {np.median(ms):.2f} | {np.percentile(ms, 99):.2f} | {ms.max():.1f} "
                            f"| {int((ms > 2 * args.device_wait_ms).sum())} |")
                print(loop[-1], flush=True)
        body += (f"\n\nHost time of each `Scheduler.step` ({args.loop_repeats} alternating runs × {args.loop_steps} "
                 "steps per arm; goodput policy, default "
                 f"cost model, refit every {every} steps; the simulator's engine; {args.device_wait_ms:g} ms of sleep "
                 "after each step standing for a GPU forward):\n\n" + "\n".join(loop))
    print(f"written to {write_report('policy-overhead', 'Policy decision time', body)}")


if __name__ == "__main__":
    main()
