"""Engine microbenchmark on the real pair: step time vs batch size and k, and batch-1 tokens/s
against target-only decoding and transformers' assisted generation with the same pair.

    .venv/bin/python bench/engine_microbench.py [--dtype bfloat16] [--batches 1 4 16 32]
        [--ks 0 1 3 5 8] [--tokens 96] [--prompts 3]

Step times are medians over measured steps after one warm-up step, split into draft (proposer),
verify (target forward + verification) and overhead. The verify forward pads every request to
k + 1 positions, so at fixed k it scores batch × (k + 1) tokens.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.common import PROMPTS, chat_ids, median, quiet, real_pair_paths, write_report
from smartspec.engine.builder import EngineSpec, build_engine
from smartspec.engine.engine import SpecEngine
from smartspec.engine.sampling import SamplingParams

MEASURED_STEPS = 3


def step_grid(engine: SpecEngine, tok, batches: list[int], ks: list[int]) -> list[str]:  # type: ignore[no-untyped-def]
    rows = ["| batch | k | step ms | draft ms | verify ms | overhead ms | tokens/step | tokens/s |",
            "|---|---|---|---|---|---|---|---|"]
    sid = 0
    for b in batches:
        for k in ks:
            ids = [chat_ids(tok, PROMPTS[i % len(PROMPTS)]) for i in range(b)]
            params = SamplingParams(max_tokens=(MEASURED_STEPS + 2) * (k + 1) + 2, ignore_eos=True)
            mine = list(range(sid, sid + b))
            sid += b
            for i, p in zip(mine, ids, strict=True):
                engine.add_request(i, p, params)
            engine.step()  # prefill
            engine.step({i: k for i in mine})  # warm-up (draft catches up on the prompt)
            parts: dict[str, list[float]] = {"all": [], "draft": [], "verify": [], "over": [], "emit": []}
            for _ in range(MEASURED_STEPS):
                st = engine.step({i: k for i in mine}).stats
                assert st is not None and st.batch_size == b
                parts["all"].append(st.draft_s + st.verify_s + st.overhead_s)
                parts["draft"].append(st.draft_s)
                parts["verify"].append(st.verify_s)
                parts["over"].append(st.overhead_s)
                parts["emit"].append(st.num_emitted)
            for i in mine:
                if not engine.seqs[i].finished:
                    engine.cancel(i)
                engine.pop_finished(i)
            m = {key: median(v) for key, v in parts.items()}
            rows.append(f"| {b} | {k} | {1000 * m['all']:.0f} | {1000 * m['draft']:.0f} | {1000 * m['verify']:.0f} "
                        f"| {1000 * m['over']:.1f} | {m['emit']:.1f} | {m['emit'] / m['all']:.1f} |")
            print(rows[-1], flush=True)
    return rows


def smartspec_tps(
    engine: SpecEngine, prompts: list[list[int]], tokens: int, k: int
) -> tuple[float, int, float, list[list[int]]]:
    total_tokens, total_s, drafted, accepted = 0, 0.0, 0, 0
    outputs = []
    for n, p in enumerate(prompts):
        engine.add_request(10_000 + n, p, SamplingParams(max_tokens=tokens))
        t0 = time.perf_counter()
        while engine.has_unfinished:
            engine.step({10_000 + n: k})
        total_s += time.perf_counter() - t0
        seq = engine.pop_finished(10_000 + n)
        outputs.append(seq.output_ids)
        total_tokens += seq.num_output
        drafted += seq.stats.num_draft_tokens
        accepted += seq.stats.num_accepted_tokens
    return total_tokens / total_s, total_tokens, accepted / drafted if drafted else float("nan"), outputs


def hf_tps(target, draft, prompts: list[list[int]], tokens: int) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    total_tokens, total_s = 0, 0.0
    for p in prompts:
        ids = torch.tensor([p])
        kwargs = {"assistant_model": draft} if draft is not None else {}
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                                  do_sample=False, **kwargs)
        total_s += time.perf_counter() - t0
        total_tokens += out.shape[1] - len(p)
    return total_tokens / total_s, total_tokens


def batch1(engine: SpecEngine, tok, tokens: int, n_prompts: int, ks: list[int]) -> list[str]:  # type: ignore[no-untyped-def]
    prompts = [chat_ids(tok, PROMPTS[i]) for i in range(n_prompts)]
    target = engine.runner.model
    draft = engine.proposer.runner.model  # type: ignore[union-attr]
    hf_plain, n_plain = hf_tps(target, None, prompts, tokens)
    hf_assist, n_assist = hf_tps(target, draft, prompts, tokens)
    rows = ["| decoder | tokens | tokens/s | vs transformers assisted | vs target-only | same tokens as k=0 |",
            "|---|---|---|---|---|---|"]
    ours0, n0, _, out0 = smartspec_tps(engine, prompts, tokens, 0)
    rows.append(f"| transformers generate, target only | {n_plain} | {hf_plain:.2f} | {hf_plain / hf_assist:.2f} "
                f"| {hf_plain / ours0:.2f} | |")
    rows.append(f"| transformers generate(assistant_model=draft) | {n_assist} | {hf_assist:.2f} | 1.00 "
                f"| {hf_assist / ours0:.2f} | |")
    rows.append(f"| smartspec k=0 (target only) | {n0} | {ours0:.2f} | {ours0 / hf_assist:.2f} | 1.00 | |")
    print("\n".join(rows), flush=True)
    for k in ks:
        if k == 0:
            continue
        tps, n, acc, outs = smartspec_tps(engine, prompts, tokens, k)
        # In bf16 a k+1-token forward rounds differently from a 1-token one, so near-ties can flip.
        same = sum(a == b for a, b in zip(outs, out0, strict=True))
        rows.append(f"| smartspec fixed k={k} (acceptance {acc:.2f}) | {n} | {tps:.2f} | {tps / hf_assist:.2f} "
                    f"| {tps / ours0:.2f} | {same}/{len(prompts)} prompts |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 32])
    ap.add_argument("--ks", type=int, nargs="+", default=[0, 1, 3, 5, 8])
    ap.add_argument("--tokens", type=int, default=96, help="tokens per prompt in the batch-1 comparison")
    ap.add_argument("--prompts", type=int, default=3, help="prompts in the batch-1 comparison")
    ap.add_argument("--skip-grid", action="store_true")
    args = ap.parse_args()
    quiet()
    target, draft = real_pair_paths()
    engine, tok = build_engine(EngineSpec(target, draft, dtype=args.dtype, num_slots=max(args.batches),
                                          max_len=1024, max_k=max(args.ks)))
    body = [f"Real pair (target Qwen2.5-Coder-1.5B-Instruct, draft 0.5B), {args.dtype}, greedy, chat prompts.\n"]
    if not args.skip_grid:
        body += ["## Step time vs batch size and k\n", f"Median of {MEASURED_STEPS} steps after a warm-up step.\n",
                 *step_grid(engine, tok, args.batches, args.ks), ""]
    body += [f"## Batch 1: tokens/s over {args.prompts} prompts x up to {args.tokens} tokens\n",
             *batch1(engine, tok, args.tokens, args.prompts, args.ks)]
    text = "\n".join(body)
    print(f"written to {write_report('engine-microbench', 'Engine microbenchmark', text)}")


if __name__ == "__main__":
    main()
