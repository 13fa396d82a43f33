"""`smartspec sim`: sweep policies × request rates in the simulator, or fit it to a real run's step records."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shlex
import time
from dataclasses import replace
from pathlib import Path

from smartspec.engine.scheduler import DeadlineConfig
from smartspec.errors import InvalidRequest
from smartspec.policy.cost_model import CostModel, load_cost_model
from smartspec.policy.limits import MAX_K_LIMIT, within
from smartspec.sim.effects import Contention, SimEffects
from smartspec.sim.policies import DEFAULT_POLICIES, PolicyKnobs, policy_config


def register(sub: argparse._SubParsersAction) -> None:
    sim = sub.add_parser("sim", help="discrete-event simulator (the real scheduler and policy on a virtual clock)")
    verbs = sim.add_subparsers(dest="verb", required=True)
    s = verbs.add_parser("sweep", help="every policy at every request rate; tables, CSVs and plots in a folder")
    s.add_argument("--cost-model", default="h100-llama8b", help="preset name or a JSON coefficients file")
    s.add_argument("--prefill-cost", default="auto",
                   help="ms per prompt token (per padded slot, P prompts x the longest, for a model that pads) when "
                        "the cost model has no prefill price: auto (its batched-token cost, as the published model "
                        "counts every scheduled token), none, or a number")
    s.add_argument("--rates", default="1,2,4,8,16,24,32", help="request rates (req/s), comma-separated")
    s.add_argument("--trace", default=None, metavar="PHASE,…",
                   help="a dynamic trace instead of --rates, the grammar of `smartspec bench sweep --trace`: phases "
                        "DURATIONs@RATE, DURATIONm@RATE or COUNT@RATE in order (a bare number is a request count; "
                        "10s@0 pauses), e.g. 60s@1,60s@4,500@8")
    s.add_argument("--policies", default=",".join(DEFAULT_POLICIES), help="off, fixed:K, goodput (comma-separated)")
    s.add_argument("--requests", type=int, default=500, help="requests per rate")
    s.add_argument("--acceptance", default="beta:7,3", help="fixed:A | beta:A,B | profile:C1,C2,… (per request)")
    s.add_argument("--prompt-len", default="uniform:128,384",
                   help="fixed:N | uniform:A,B | lognormal:MEDIAN,SIGMA[,MAX] | replay:RECORDS.csv")
    s.add_argument("--output-len", default="uniform:128,384", help="as --prompt-len")
    s.add_argument("--arrivals", default="poisson",
                   help="poisson | gamma:CV (CV > 1 is burstier) | replay:RECORDS.csv (measured arrival times)")
    s.add_argument("--max-batch", type=int, default=256, help="running requests at most (KV slots)")
    s.add_argument("--max-prefill-tokens", type=int, default=None, help="prompt tokens prefilled per step")
    s.add_argument("--max-k", type=int, default=7, help="K: the largest k any request drafts (oracle: fixed:0…K)")
    s.add_argument("--hysteresis", type=float, default=1.1, help="goodput: speculate only if this much better")
    s.add_argument("--probe-every", type=int, default=None, help="goodput: probe k=0 requests (default: target's)")
    s.add_argument("--explore-every", type=int, default=None,
                   help="goodput: one step in N runs the other side for the cost fit (default: target's; 0 = never)")
    s.add_argument("--acceptance-prior", default=None, help="goodput: the tracker's prior (default: target's)")
    s.add_argument("--refit", action="store_true", help="goodput: refit the cost model online (off by default)")
    s.add_argument("--cold-start", action="store_true",
                   help="start every policy as the real target does: the default cost model with online refit on "
                        "(steps still cost what --cost-model says), after its start-up calibration")
    s.add_argument("--no-calibration", action="store_true",
                   help="with --cold-start: skip the start-up calibration (as the target did before 2026-12-01)")
    s.add_argument("--no-deadline", action="store_true",
                   help="drafts always arrive (default: a draft slower than the deadline is a deadline-long wait "
                        "and a k = 0 step, as on the real target)")
    s.add_argument("--draft-deadline-factor", type=float, default=DeadlineConfig.factor,
                   help="the target's deadline: this many times the predicted draft time …")
    s.add_argument("--draft-deadline-floor-s", type=float, default=DeadlineConfig.floor_s, help="… at least this …")
    s.add_argument("--draft-deadline-s", type=float, default=DeadlineConfig.max_s, help="… and at most this")
    s.add_argument("--cores", type=int, default=Contention.cores,
                   help="cores the target and draft share: a missed draft's leftover work slows the next target "
                        "steps (0: the draft has its own cores)")
    s.add_argument("--contention-busy", type=float, default=Contention.busy,
                   help="share of a thread's time that needs a core: overlapping work is 1 + this times slower "
                        "(0.6: 1.6x, the worst measured on this CPU's pair)")
    s.add_argument("--noise-sigma", type=float, default=0.0,
                   help="multiplicative lognormal noise (median 1, seeded by --seed) on every step time "
                        "(`sim fit` prints the recorded steps' σ)")
    s.add_argument("--no-oracle", action="store_true", help="skip the fixed:0…K runs for the oracle")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--jobs", type=int, default=1, help="simulate in this many processes")
    s.add_argument("--tag", default=None, help="folder tag (default: the cost model's name)")
    s.add_argument("--out", default=None, help="results folder (default results/<date>-sim-<tag>)")
    s.add_argument("--note", default=None, help="a paragraph for the README (e.g. why these settings)")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(func=sweep)
    f = verbs.add_parser("fit", help="a cost model and acceptance profile from recorded step records")
    f.add_argument("records", help="JSON lines: `generate --steps-jsonl` records or Redis step-stream entries")
    f.add_argument("--ragged", action="store_true", help="the engine batches ragged (vLLM); default: pads to max k")
    f.add_argument("--klass", default=None, help="acceptance of one workload class only")
    f.add_argument("--save", default=None, metavar="FILE.json", help="write the cost model (for --cost-model)")
    f.set_defaults(func=fit)


def with_prefill_cost(cost: CostModel, setting: str) -> CostModel:
    """The cost model with a prefill price when it has none: `auto` charges a prompt token what the model charges
    a batched token (the published vLLM model's N_batched counts every scheduled token), `none` keeps prefill free.

    The price goes where the engine spends it: per padded slot (`prefill_padded_tokens`, P prompts × the longest)
    for a model of an engine that pads rows (smartspec's runner, `pads_to_max_k`), per prompt token for a ragged
    one (vLLM). A model that prices either already (e.g. one `sim fit` learned) is left as it is."""
    if {"prefill_tokens", "prefill_padded_tokens"} & set(cost.verify) or setting == "none":
        return cost
    feature = "prefill_padded_tokens" if cost.pads_to_max_k else "prefill_tokens"
    if setting == "auto":
        per_token = cost.verify.get("batched_tokens", 0.0)
    else:
        try:
            per_token = float(setting) * 1e-3
        except ValueError:
            per_token = -1.0
        if per_token < 0:
            raise InvalidRequest(f"--prefill-cost must be auto, none or ms >= 0, got {setting!r}", param="prefill_cost")
    return replace(cost, name=f"{cost.name}+prefill", verify={**cost.verify, feature: per_token})


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InvalidRequest(f"{what}: expected numbers separated by commas, got {text!r}") from None
    if not values:
        raise InvalidRequest(f"{what}: give at least one number")
    return values


def _shown_path(value: str) -> str:
    """A path for the README: as given when relative, else relative to here or just its name (no machine paths)."""
    p = Path(value)
    if not p.is_absolute():
        return value
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return p.name


def command_line(args: argparse.Namespace) -> str:
    """The exact sweep, every setting spelled out (reproducible whatever the defaults become)."""
    parts = ["smartspec", "sim", "sweep", "--cost-model", _shown_path(args.cost_model),
             "--prefill-cost", args.prefill_cost]
    parts += ["--trace", args.trace] if args.trace else ["--rates", args.rates, "--requests", str(args.requests)]
    parts += ["--policies", args.policies, "--acceptance", args.acceptance,
              "--prompt-len", _shown_path(args.prompt_len), "--output-len", _shown_path(args.output_len),
              "--arrivals", args.arrivals, "--max-batch", str(args.max_batch), "--max-k", str(args.max_k),
              "--hysteresis", f"{args.hysteresis:g}", "--seed", str(args.seed)]
    for opt in ("max_prefill_tokens", "probe_every", "explore_every", "acceptance_prior"):
        if getattr(args, opt) is not None:
            parts += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
    parts += ["--refit"] if args.refit else []
    parts += ["--cold-start"] if args.cold_start else []
    parts += ["--no-calibration"] if args.no_calibration else []
    parts += ["--no-deadline"] if args.no_deadline else []
    parts += ["--draft-deadline-factor", f"{args.draft_deadline_factor:g}", "--draft-deadline-floor-s",
              f"{args.draft_deadline_floor_s:g}", "--draft-deadline-s", f"{args.draft_deadline_s:g}",
              "--cores", str(args.cores), "--contention-busy", f"{args.contention_busy:g}",
              "--noise-sigma", f"{args.noise_sigma:g}"]
    parts += ["--no-oracle"] if args.no_oracle else []
    parts += ["--out", _shown_path(args.out)] if args.out else []
    return shlex.join(parts)


def sweep(args: argparse.Namespace) -> int:
    from smartspec.sim.acceptance import parse_acceptance
    from smartspec.sim.output import write_results
    from smartspec.sim.run import EngineConfig
    from smartspec.sim.sweep import RunInfo, SimSweepConfig, run_sweep
    from smartspec.sim.trace import parse_trace
    from smartspec.sim.workload import WorkloadSpec, parse_arrivals, parse_lengths

    if args.requests < 1 or args.max_batch < 1 or args.jobs < 1 or not within(args.max_k, MAX_K_LIMIT):
        raise InvalidRequest(f"need --requests, --max-batch and --jobs >= 1 and 0 <= --max-k <= {MAX_K_LIMIT}")
    rates = _floats(args.rates, "--rates")
    if min(rates) <= 0:
        raise InvalidRequest("--rates must be > 0", param="rates")
    policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    prior = _floats(args.acceptance_prior, "--acceptance-prior") if args.acceptance_prior else None
    knobs = PolicyKnobs(args.hysteresis, args.probe_every, args.explore_every, prior)
    for p in policies:
        policy_config(p, args.max_k, knobs)  # bad names and bounds fail before any simulating
    try:
        trace = parse_trace(args.trace) if args.trace else None
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="trace") from None
    try:
        deadline = DeadlineConfig(args.draft_deadline_factor, args.draft_deadline_floor_s, args.draft_deadline_s)
        effects = SimEffects(not args.no_deadline, Contention(args.cores, args.contention_busy), args.noise_sigma)
    except ValueError as exc:
        raise InvalidRequest(f"engine effects: {exc}") from None
    cost = with_prefill_cost(load_cost_model(args.cost_model), args.prefill_cost)
    workload = WorkloadSpec(parse_lengths(args.prompt_len, "prompt_tokens"), parse_lengths(args.output_len),
                            parse_acceptance(args.acceptance), parse_arrivals(args.arrivals), args.max_k, args.seed)
    cfg = SimSweepConfig(cost, workload, rates, policies, args.requests,
                      EngineConfig(args.max_batch, args.max_k, args.max_prefill_tokens), knobs, args.refit,
                      trace, not args.no_oracle, effects=effects, deadline=deadline, cold_start=args.cold_start,
                      calibration=not args.no_calibration)
    tag = args.tag or re.sub(r"[^A-Za-z0-9._-]+", "-", Path(args.cost_model).stem)
    out = Path(args.out) if args.out else Path("results") / f"{dt.date.today().isoformat()}-sim-{tag}"

    def progress(run: RunInfo) -> None:
        if not args.quiet:
            print(f"  {run.policy:>9} @ {run.rate:g}/s: {run.requests} requests, {run.steps} steps, mean batch "
                  f"{run.mean_batch:.1f}, mean k {run.mean_k:.2f} ({run.wall_s:.1f} s)", flush=True)

    t0 = time.perf_counter()
    result = run_sweep(cfg, jobs=args.jobs, progress=progress)
    files = write_results(out, result, command_line(args), note=args.note)
    if not args.quiet:
        print((out / "README.md").read_text())
    print(f"# {len(result.runs)} runs in {time.perf_counter() - t0:.1f} s; wrote {', '.join(p.name for p in files)} "
          f"to {out}")
    return 0


def fit(args: argparse.Namespace) -> int:
    from smartspec.sim.calibrate import fit_cost, read_records, recorded_acceptance, step_samples, timing_noise

    records = read_records(args.records)
    model = fit_cost(records, pads_to_max_k=not args.ragged, name=f"fit:{Path(args.records).stem}")
    noise = timing_noise(model, step_samples(records))
    acc = recorded_acceptance(records, args.klass)
    if args.save:
        Path(args.save).write_text(json.dumps(model.to_dict(), indent=2) + "\n")
    r2 = "n/a" if model.r2 is None else f"{model.r2:.3f}"
    print(f"cost model {model.name}: R² {r2} on {model.samples} steps")
    for part in ("verify", "draft", "overhead"):
        print(f"  {part}: " + ", ".join(f"{k}={v:.4g}" for k, v in getattr(model, part).items()))
    print(f"timing noise: σ {noise:.3f} (robust, log of actual / predicted over the decode steps)")
    if sum(acc.tested):
        print(f"acceptance: mean α {acc.mean_alpha:.3f}; per position " +
              ", ".join(f"{c:.3f}" for c in acc.conditional) + f" (tested {', '.join(map(str, acc.tested))})")
        print(f"simulate with: --acceptance {acc.spec().label()} --noise-sigma {noise:.3f}" +
              (f" --cost-model {_shown_path(args.save)}" if args.save else ""))
    else:
        print("acceptance: no draft was tested in these records")
    return 0
