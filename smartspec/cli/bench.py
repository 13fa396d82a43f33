"""`smartspec bench sweep`: latency vs request rate for each speculation policy on the local stack.

The experiment code is smartspec/loadtest (imported lazily: it needs the `bench` extra); see
bench/README.md, section "The load sweep".
"""

from __future__ import annotations

import argparse
import math
import shlex
import signal
import sys
from pathlib import Path

from smartspec.errors import InvalidRequest, SmartspecError
from smartspec.sim.trace import parse_trace

DEFAULT_RATES = "0.02,0.05,0.1,0.2,0.3,0.4"  # the real pair on a 2-core CPU: batch 1 to past saturation


class BenchFailed(SmartspecError):
    error_type = "server_error"
    http_status = 500


def register(sub: argparse._SubParsersAction) -> None:
    b = sub.add_parser("bench", help="benchmarks on the local stack (load sweep)")
    bsub = b.add_subparsers(dest="bench_command", required=True)
    s = bsub.add_parser(
        "sweep", help="mean/p99 latency vs request rate for each policy (restarts `smartspec up` per policy)",
        description="For each policy: start `smartspec up`, warm up, optionally run a closed loop (one request at a "
                    "time), drive it open loop at each rate on one or more arrival traces, read the target's step "
                    "records; write CSVs, plots and a README (with the adaptive-vs-static ratios and their 95 % "
                    "intervals) into the results folder.")
    s.add_argument("--models", choices=["real", "tiny"], default="real", help="as `smartspec up --models`")
    s.add_argument("--workload", choices=["humaneval", "gsm8k", "mixed", "synthetic"], default="humaneval",
                   help="prompt set; mixed = HumanEval and GSM8K alternating, each request tagged with its source")
    s.add_argument("--policies", default="off,fixed:1,fixed:3,fixed:5,fixed:7,goodput",
                   help="comma-separated: off, fixed:K (K 1..8), goodput, goodput-uniform (one k for the whole batch), "
                        "each optionally +controller (default %(default)s)")
    s.add_argument("--controller", choices=["on", "off"], default="off",
                   help="run the controller for every policy (default off: each target keeps its local policy; "
                        "a `+controller` policy label turns it on for that policy only)")
    s.add_argument("--rates", default=DEFAULT_RATES,
                   help="offered request rates, req/s (default %(default)s); none = no open-loop rate point")
    s.add_argument("--requests", type=int,
                   help="requests per rate and trace (default 20); with --duration-s, the least number")
    s.add_argument("--duration-s", type=float,
                   help="send arrivals for this long per rate and trace (rate x duration requests, at least "
                        "--requests)")
    s.add_argument("--traces", type=int, default=1, metavar="R",
                   help="independent Poisson arrival traces per rate, and draws of the dynamic --trace, every policy "
                        "on the same ones (default 1); ratios get a t-interval over traces and the best static is "
                        "chosen on the other traces")
    s.add_argument("--closed-loop", type=int, default=0, metavar="N",
                   help="also run N requests one at a time per policy (same prompts, same order): light load, "
                        "ratios paired per request with a t-interval")
    s.add_argument("--interleave", action="store_true",
                   help="start every policy's stack at once and send each closed-loop request, each (rate, trace) and "
                        "the dynamic trace to every policy in turn (a random order per round), so that host drift "
                        "falls on both sides of each ratio; needs the memory of all stacks at once")
    s.add_argument("--cv", type=float, default=1.0,
                   help="coefficient of variation of inter-arrival times: 1 = Poisson (default), >1 bursty (gamma)")
    s.add_argument("--trace", help="also run a dynamic trace per policy: comma-separated phases DURATIONs@RATE, "
                                   "DURATIONm@RATE or COUNT@RATE (a bare number is a request count; 10s@0 pauses), "
                                   "e.g. '60s@0.05,120s@0.3,20@0.05'")
    s.add_argument("--max-tokens", type=int, help="output tokens per request (default: the workload's)")
    s.add_argument("--synthetic-words", type=int, default=24, help="prompt length of --workload synthetic, in words")
    s.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    s.add_argument("--max-batch-size", type=int, default=32)
    s.add_argument("--draft-method", choices=["draftModel", "ngram"], default="draftModel")
    s.add_argument("--emulate-acceptance", type=float, metavar="ALPHA",
                   help="the target accepts each draft token with probability ALPHA instead of verifying it "
                        "(outputs are then NOT the target's; records and README say so)")
    s.add_argument("--warmup", type=int, default=2, help="warm-up requests after each stack start")
    s.add_argument("--seed", type=int, default=0, help="arrival times and prompt order")
    s.add_argument("--tag", help="results folder name after the date (default sweep-WORKLOAD-MODELS)")
    s.add_argument("--out", type=Path, help="results folder (default results/<date>-<tag>)")
    s.add_argument("--resume", action="store_true",
                   help="keep the policies already complete in --out and run only the others")
    s.add_argument("--log-dir", type=Path, help="keep each stack's log here (default: a temporary folder)")
    s.add_argument("--ready-timeout-s", type=float, default=900.0, help="longest wait for a stack to start")
    s.add_argument("--request-timeout-s", type=float, default=1800.0, help="longest silence on one response stream")
    s.add_argument("--no-progress", action="store_true", help="no progress bars")
    s.set_defaults(func=run_sweep_command)


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through the sweep's finally blocks, which stop the stack


def run_sweep_command(args: argparse.Namespace) -> int:
    try:
        from smartspec.loadtest import sweep
        from smartspec.loadtest.workloads import WorkloadUnavailable
    except ImportError as exc:
        raise BenchFailed(f"`smartspec bench` needs the bench extra (pip install 'smartspec[bench]'): {exc}") from None
    try:
        policies = sweep.parse_policies(args.policies, controller=args.controller == "on")
        rates = sweep.parse_rates(args.rates)
        trace = parse_trace(args.trace) if args.trace else None
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
    if not rates and not args.closed_loop and not args.trace:
        raise InvalidRequest("--rates none needs --closed-loop N or --trace: nothing would run", param="rates")
    if args.traces < 1:
        raise InvalidRequest("--traces must be >= 1", param="traces")
    if args.closed_loop < 0:
        raise InvalidRequest("--closed-loop must be >= 1 (or 0: none)", param="closed_loop")
    if args.requests is not None and args.requests < 1:
        raise InvalidRequest("--requests must be >= 1", param="requests")
    if args.duration_s is not None and not args.duration_s > 0:
        raise InvalidRequest("--duration-s must be > 0", param="duration_s")
    if not (args.cv >= 0 and math.isfinite(args.cv)):
        raise InvalidRequest("--cv must be >= 0", param="cv")
    if args.synthetic_words < 1:
        raise InvalidRequest("--synthetic-words must be >= 1", param="synthetic_words")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise InvalidRequest("--max-tokens must be >= 1", param="max_tokens")
    alpha = args.emulate_acceptance
    if alpha is not None:
        if not 0 <= alpha <= 1:
            raise InvalidRequest("--emulate-acceptance must be in [0, 1]", param="emulate_acceptance")
        _check_emulation_supported()
    tag = args.tag or f"sweep-{args.workload}-{args.models}"
    cfg = sweep.LoadSweepConfig(
        policies=policies, rates=rates, out=args.out or sweep.default_out(tag),
        requests=args.requests if args.duration_s is not None else (args.requests or 20), duration_s=args.duration_s,
        traces=args.traces, closed_loop=args.closed_loop, interleave=args.interleave,
        workload=args.workload, max_tokens=args.max_tokens, cv=args.cv, trace=trace, trace_text=args.trace or "",
        models=args.models, dtype=args.dtype, max_batch_size=args.max_batch_size, draft_method=args.draft_method,
        controller=args.controller == "on", emulate_acceptance=alpha, warmup=args.warmup, seed=args.seed,
        ready_timeout_s=args.ready_timeout_s, request_timeout_s=args.request_timeout_s, log_dir=args.log_dir,
        progress=not args.no_progress, resume=args.resume, synthetic_words=args.synthetic_words)
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        out = sweep.run_sweep(cfg, command=command_line(sys.argv[1:]))
    except (sweep.SweepError, WorkloadUnavailable) as exc:
        raise BenchFailed(str(exc)) from None
    print(f"bench sweep: results in {out}")
    return 0


def command_line(argv: list[str]) -> str:
    """The command as typed, with paths under the working directory made relative (no machine paths in files)."""
    cwd = Path.cwd()

    def rel(arg: str) -> str:
        key, eq, value = arg.partition("=") if arg.startswith("--") else ("", "", arg)
        p = Path(value)
        if p.is_absolute() and p.is_relative_to(cwd):
            value = str(p.relative_to(cwd)) or "."
        return f"{key}{eq}{value}"

    return "smartspec " + shlex.join(rel(a) for a in argv)


def _check_emulation_supported() -> None:
    """Refuse to label records 'emulated' when the installed target would silently ignore the setting."""
    try:
        from smartspec_target.settings import TargetSettings
    except ImportError:
        return
    if "emulate_acceptance" not in TargetSettings.model_fields:
        raise InvalidRequest("this target has no emulate_acceptance setting (SMARTSPEC_TARGET_EMULATE_ACCEPTANCE); "
                             "--emulate-acceptance would be ignored", param="emulate_acceptance")
