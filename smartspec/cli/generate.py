"""`smartspec generate`: run prompts through the in-process scheduler, for humans, checks and load."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import replace
from typing import Any

from smartspec.engine.builder import NGRAM, EngineSpec, build_engine
from smartspec.engine.refit import RefitConfig
from smartspec.engine.sampling import SamplingParams
from smartspec.engine.scheduler import Scheduler
from smartspec.engine.sequence import Sequence
from smartspec.engine.workload import WorkItem, poisson_arrivals, run_open_loop
from smartspec.errors import InvalidRequest
from smartspec.models.loading import DTYPES, load_tokenizer
from smartspec.policy.cost_model import load_cost_model
from smartspec.policy.limits import MAX_K_LIMIT, within
from smartspec.policy.policy import PolicyConfig, SpeculationPolicy
from smartspec.telemetry.jsonl_sink import JsonlSink


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("generate", help="generate for prompts in-process (one batch, or arrivals at a rate)")
    g.add_argument("--target", required=True, help="target model folder")
    g.add_argument("--draft", default=None, help="draft model folder, or 'ngram' for prompt lookup")
    g.add_argument("--prompt", action="append", default=[], help="prompt text; repeat for a batch")
    g.add_argument("--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    g.add_argument("--max-tokens", type=int, default=64)
    g.add_argument("--policy", default="off", help="off | fixed:K | goodput")
    g.add_argument("--max-k", type=int, default=8, help="upper bound K on any request's k")
    g.add_argument("--hysteresis", type=float, default=1.1, help="goodput: speculate only if this much better")
    g.add_argument("--cost-model", default="default",
                   help="goodput: initial cost model (default, a preset name, or a JSON file); refitted online")
    g.add_argument("--no-refit", action="store_true", help="keep --cost-model fixed (no online refitting)")
    g.add_argument("--rate", type=float, default=None, help="Poisson arrivals at this many requests/s")
    g.add_argument("--num-requests", type=int, default=None, help="requests to send (prompts are cycled)")
    g.add_argument("--max-batch-size", type=int, default=32, help="running requests at most (KV slots)")
    g.add_argument("--steps-jsonl", default=None, help="append every step record to this file")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--ignore-eos", action="store_true", help="always generate max-tokens tokens")
    g.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    g.add_argument("--json", action="store_true", help="one JSON object per request on stdout")
    g.set_defaults(func=run)


def parse_policy(text: str, max_k: int) -> PolicyConfig:
    """`off`, `fixed:K` or `goodput` as a PolicyConfig bounded by `max_k`."""
    if text == "off":
        return PolicyConfig(mode="off", max_k=max_k)
    if text == "goodput":
        return PolicyConfig(mode="goodput", max_k=max_k)
    if text.startswith("fixed:"):
        try:
            k = int(text.split(":", 1)[1])
        except ValueError:
            k = -1
        if not 1 <= k <= max_k:
            raise InvalidRequest(f"--policy fixed:K needs 1 <= K <= --max-k ({max_k}), got {text!r}", param="policy")
        return PolicyConfig(mode="fixed", max_k=max_k, fixed_k=k)
    raise InvalidRequest(f"unknown --policy {text!r}; use off, fixed:K or goodput", param="policy")


def encode_prompts(tokenizer: Any, prompts: list[str], chat: bool) -> list[list[int]]:
    out = []
    for i, text in enumerate(prompts):
        if not text:
            raise InvalidRequest(f"prompt {i + 1} is empty", param="prompt")
        if chat:
            ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                tokenize=True, return_dict=False)
        else:
            ids = tokenizer(text, add_special_tokens=True).input_ids
        out.append([int(t) for t in ids])
    return out


def _check_args(args: argparse.Namespace) -> tuple[PolicyConfig, SamplingParams, int]:
    if not within(args.max_k, MAX_K_LIMIT):
        raise InvalidRequest(f"--max-k must be in [0, {MAX_K_LIMIT}], got {args.max_k}", param="max_k")
    config = parse_policy(args.policy, args.max_k)
    try:
        config = replace(config, hysteresis=args.hysteresis)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="hysteresis") from None
    if config.mode != "off" and args.draft is None:
        raise InvalidRequest(f"--policy {args.policy} needs --draft (a model folder or '{NGRAM}')", param="draft")
    if not args.prompt:
        raise InvalidRequest("give at least one --prompt", param="prompt")
    n = args.num_requests if args.num_requests is not None else len(args.prompt)
    if n < 1:
        raise InvalidRequest(f"--num-requests must be >= 1, got {n}", param="num_requests")
    if args.rate is not None and args.rate <= 0:
        raise InvalidRequest(f"--rate must be > 0 requests/s, got {args.rate}", param="rate")
    if args.max_batch_size < 1:
        raise InvalidRequest(f"--max-batch-size must be >= 1, got {args.max_batch_size}", param="max_batch_size")
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, seed=args.seed, ignore_eos=args.ignore_eos)
    params.validate()  # before minutes of model loading
    return config, params, n


def run(args: argparse.Namespace) -> int:
    config, params, n = _check_args(args)
    cost = load_cost_model(args.cost_model)
    ids = encode_prompts(load_tokenizer(args.target), args.prompt, args.chat)
    slots = min(n, args.max_batch_size)
    # Size each KV slot for the longest request (prompt + max_tokens + drafts in flight).
    spec = EngineSpec(target=args.target, draft=args.draft if config.mode != "off" else None, dtype=args.dtype,
                      num_slots=slots, max_k=args.max_k,
                      max_len=max(len(x) for x in ids) + params.max_tokens + args.max_k + 1)
    engine, tokenizer = build_engine(spec)
    sink = JsonlSink(args.steps_jsonl) if args.steps_jsonl else None
    scheduler = Scheduler(engine, SpeculationPolicy(config, cost), sinks=[sink] if sink else [],
                          refit=RefitConfig(enabled=not args.no_refit, background=True))
    arrivals = poisson_arrivals(n, args.rate, seed=args.seed or 0)
    items = [WorkItem(i, ids[i % len(ids)], params, arrivals[i]) for i in range(n)]
    t0 = time.perf_counter()
    try:
        seqs = run_open_loop(scheduler, items)
    finally:
        if sink:
            sink.close()
    wall = time.perf_counter() - t0
    for i, seq in enumerate(seqs):
        record = result_record(seq, tokenizer)
        if args.json:
            print(json.dumps(record), flush=True)
        else:
            _print_human(i, record)
    _print_summary(args.policy, seqs, wall, scheduler)
    return 0


def _print_summary(policy: str, seqs: list[Sequence], wall: float, scheduler: Scheduler) -> None:
    total = sum(s.num_output for s in seqs)
    lat = [(s.stats.finish_s or 0.0) - s.stats.arrival_s for s in seqs]
    ks = Counter(k for s in seqs for k in s.stats.k_history)
    dist = " ".join(f"k={k}:{100 * c / max(1, sum(ks.values())):.0f}%" for k, c in sorted(ks.items()))
    model = scheduler.policy.cost_model
    r2 = "n/a" if model.r2 is None else f"{model.r2:.3f}"
    print(f"# policy {policy}: {total} tokens for {len(seqs)} request(s) in {wall:.2f}s ({total / wall:.2f} tok/s, "
          f"{scheduler.steps} steps); mean latency {sum(lat) / len(lat):.2f}s; k per request-step: {dist}; "
          f"cost model {model.name} (R² {r2})", file=sys.stderr)


def result_record(seq: Sequence, tokenizer: Any) -> dict[str, Any]:
    st = seq.stats
    elapsed = (st.finish_s or st.arrival_s) - st.arrival_s
    return {
        "text": tokenizer.decode(seq.output_ids, skip_special_tokens=True),
        "token_ids": seq.output_ids,
        "finish_reason": seq.finish_reason,
        "stats": {
            "steps": st.steps,
            "num_draft_tokens": st.num_draft_tokens,
            "num_accepted_tokens": st.num_accepted_tokens,
            "acceptance_rate": st.acceptance_rate,
            "tokens_per_second": seq.num_output / elapsed if elapsed > 0 else None,
            "latency_s": elapsed,
            "ttft_s": None if st.first_token_s is None else st.first_token_s - st.arrival_s,
            "ks": st.k_history,
        },
    }


def _print_human(i: int, record: dict[str, Any]) -> None:
    st = record["stats"]
    acc = "n/a" if st["acceptance_rate"] is None else f"{100 * st['acceptance_rate']:.1f}%"
    tps = "n/a" if st["tokens_per_second"] is None else f"{st['tokens_per_second']:.2f}"
    print(f"--- prompt {i + 1} ---\n{record['text']}")
    print(f"[{len(record['token_ids'])} tokens in {st['steps']} steps; drafted {st['num_draft_tokens']}, "
          f"accepted {st['num_accepted_tokens']} ({acc}); {tps} tok/s; finish: {record['finish_reason']}]")
