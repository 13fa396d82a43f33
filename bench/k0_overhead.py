"""k = 0 for every request vs plain batched decoding (transformers + DynamicCache), same model.

Both decode greedily, one token per request per step, from equal-length prompts (so the plain
baseline needs no padding). smartspec's number is a whole engine step (runner forward through the
slot cache and 4D mask, verification, bookkeeping) with a draft proposer attached but k = 0.
Prints the median step time of each and the ratio (goal <= 1.05).

    .venv/bin/python bench/k0_overhead.py [--batches 1 8 32] [--context 256] [--steps 12] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.common import median, quiet, real_pair_paths, write_report
from smartspec.engine.builder import EngineSpec, build_engine
from smartspec.engine.sampling import SamplingParams


def plain_steps(model: Any, prompts: torch.Tensor, steps: int) -> list[float]:
    import time

    from transformers import DynamicCache

    kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = DynamicCache(config=model.config)
    times = []
    with torch.inference_mode():
        logits = model(input_ids=prompts, use_cache=True, logits_to_keep=1, **{kw: cache}).logits
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(steps):
            t0 = time.perf_counter()
            logits = model(input_ids=nxt, use_cache=True, **{kw: cache}).logits
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            times.append(time.perf_counter() - t0)
    return times


def smartspec_steps(engine, prompts: torch.Tensor, steps: int) -> list[float]:  # type: ignore[no-untyped-def]
    params = SamplingParams(max_tokens=steps + 2, ignore_eos=True)
    for i, row in enumerate(prompts.tolist()):
        engine.add_request(i, row, params)
    engine.step()  # prefill
    times = []
    for _ in range(steps):
        out = engine.step({sid: 0 for sid in engine.running})
        st = out.stats
        times.append(st.draft_s + st.verify_s + st.overhead_s)
        assert st.num_forwards == 1 and st.padded_tokens == st.batch_size
    while engine.has_unfinished:
        engine.step()
    for i in range(prompts.shape[0]):
        engine.pop_finished(i)
    return times


def runner_steps(engine, prompts: torch.Tensor, steps: int) -> list[float]:  # type: ignore[no-untyped-def]
    """The bare runner forward (no verification, no bookkeeping): the engine's floor at k = 0."""
    import time

    from smartspec.engine.runner import RowInput

    runner = engine.runner
    rows = prompts.tolist()
    for i in range(len(rows)):
        runner.add(1000 + i)
    out = runner.forward([RowInput(1000 + i, row, 1) for i, row in enumerate(rows)])
    for i, row in enumerate(rows):
        runner.commit(1000 + i, len(row))
    nxt = out.logits.argmax(-1).tolist()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        out = runner.forward([RowInput(1000 + i, [nxt[i]], 1) for i in range(len(rows))])
        nxt = out.logits.argmax(-1).tolist()
        times.append(time.perf_counter() - t0)
        for i in range(len(rows)):
            runner.commit(1000 + i, 1)
    for i in range(len(rows)):
        runner.remove(1000 + i)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args()
    quiet()
    target, draft = real_pair_paths()
    max_b = max(args.batches)
    engine, _ = build_engine(EngineSpec(target, draft, dtype=args.dtype, num_slots=max_b,
                                        max_len=args.context + args.steps + 16))
    model = engine.runner.model
    gen = torch.Generator().manual_seed(0)
    rows = ["| batch | plain decode (transformers, DynamicCache) ms/step | smartspec runner forward only ms/step "
            "| smartspec engine step, k=0 ms/step | ratio engine / plain |", "|---|---|---|---|---|"]
    for b in args.batches:
        prompts = torch.randint(100, 20000, (b, args.context), generator=gen)
        # Interleave: plain, smartspec, plain, smartspec — so drift hits both alike.
        plain, bare, ours = [], [], []
        for _ in range(2):
            plain += plain_steps(model, prompts, args.steps)[1:]
            bare += runner_steps(engine, prompts, args.steps)[1:]
            ours += smartspec_steps(engine, prompts, args.steps)[1:]
        p, r, s = median(plain), median(bare), median(ours)
        rows.append(f"| {b} | {1000 * p:.1f} | {1000 * r:.1f} | {1000 * s:.1f} | {s / p:.3f} |")
        print(rows[-1], flush=True)
    body = (f"Target Qwen2.5-Coder-1.5B-Instruct, {args.dtype}, context {args.context} tokens, "
            f"median of {2 * (args.steps - 1)} decode steps each.\n\n" + "\n".join(rows))
    print(body)
    print(f"written to {write_report('k0-overhead', 'k = 0 vs plain batched decoding', body)}")


if __name__ == "__main__":
    main()
