"""`smartspec generate`: run prompts through the in-process engine, for humans and for checks."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from smartspec.engine.builder import NGRAM, EngineSpec, build_engine
from smartspec.engine.sampling import SamplingParams
from smartspec.engine.sequence import Sequence
from smartspec.errors import InvalidRequest
from smartspec.models.loading import DTYPES


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("generate", help="generate for one or more prompts (one batch) in-process")
    g.add_argument("--target", required=True, help="target model folder")
    g.add_argument("--draft", default=None, help="draft model folder, or 'ngram' for prompt lookup")
    g.add_argument("--prompt", action="append", default=[], help="prompt text; repeat for a batch")
    g.add_argument("--chat", action="store_true", help="wrap each prompt in the tokenizer's chat template")
    g.add_argument("--max-tokens", type=int, default=64)
    g.add_argument("--policy", default="off", help="off | fixed:K (goodput arrives with the policy work)")
    g.add_argument("--max-k", type=int, default=8, help="upper bound K on any request's k")
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--ignore-eos", action="store_true", help="always generate max-tokens tokens")
    g.add_argument("--dtype", choices=DTYPES, default="bfloat16")
    g.add_argument("--json", action="store_true", help="one JSON object per prompt on stdout")
    g.set_defaults(func=run)


def parse_policy(text: str, max_k: int) -> int:
    """The k every request gets: 0 for `off`, K for `fixed:K`."""
    if text == "off":
        return 0
    if text == "goodput":
        raise InvalidRequest("--policy goodput is not available yet (it arrives with the goodput policy); "
                             "use off or fixed:K", param="policy")
    if text.startswith("fixed:"):
        try:
            k = int(text.split(":", 1)[1])
        except ValueError:
            k = -1
        if not 1 <= k <= max_k:
            raise InvalidRequest(f"--policy fixed:K needs 1 <= K <= --max-k ({max_k}), got {text!r}", param="policy")
        return k
    raise InvalidRequest(f"unknown --policy {text!r}; use off or fixed:K", param="policy")


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


def run(args: argparse.Namespace) -> int:
    k = parse_policy(args.policy, args.max_k)
    if k and args.draft is None:
        raise InvalidRequest(f"--policy {args.policy} needs --draft (a model folder or '{NGRAM}')", param="draft")
    if not args.prompt:
        raise InvalidRequest("give at least one --prompt", param="prompt")
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k, seed=args.seed, ignore_eos=args.ignore_eos)
    params.validate()  # before minutes of model loading
    spec = EngineSpec(target=args.target, draft=args.draft if k else None, dtype=args.dtype,
                      num_slots=len(args.prompt), max_k=args.max_k)
    # Size each KV slot for the longest request (prompt + max_tokens + drafts in flight).
    from smartspec.models.loading import load_tokenizer

    ids = encode_prompts(load_tokenizer(args.target), args.prompt, args.chat)
    spec.max_len = max(len(x) for x in ids) + params.max_tokens + args.max_k + 1
    engine, tokenizer = build_engine(spec)
    for i, prompt_ids in enumerate(ids):
        engine.add_request(i, prompt_ids, params)
    t0 = time.perf_counter()
    steps = 0
    while engine.has_unfinished:
        engine.step({sid: k for sid in engine.running})
        steps += 1
    wall = time.perf_counter() - t0
    seqs = [engine.pop_finished(i) for i in range(len(ids))]
    for i, seq in enumerate(seqs):
        record = result_record(seq, tokenizer)
        if args.json:
            print(json.dumps(record), flush=True)
        else:
            _print_human(i, record)
    total = sum(s.num_output for s in seqs)
    print(f"# policy {args.policy}: {total} tokens for {len(seqs)} prompt(s) in {wall:.2f}s "
          f"({total / wall:.2f} tok/s, {steps} steps)", file=sys.stderr)
    return 0


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
        },
    }


def _print_human(i: int, record: dict[str, Any]) -> None:
    st = record["stats"]
    acc = "n/a" if st["acceptance_rate"] is None else f"{100 * st['acceptance_rate']:.1f}%"
    tps = "n/a" if st["tokens_per_second"] is None else f"{st['tokens_per_second']:.2f}"
    print(f"--- prompt {i + 1} ---\n{record['text']}")
    print(f"[{len(record['token_ids'])} tokens in {st['steps']} steps; drafted {st['num_draft_tokens']}, "
          f"accepted {st['num_accepted_tokens']} ({acc}); {tps} tok/s; finish: {record['finish_reason']}]")
