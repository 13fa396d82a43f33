"""The draft's forward, its dtype's weights vs int8 (engine/quant.py): ms per forward and argmax agreement.

Times a one-token forward (a draft step) and a five-token forward (a catch-up) of the 0.5B draft over
a 300-token context, both ways, interleaved; then feeds the target's own greedy continuation of each
code prompt through both drafts and counts the positions where their argmax agrees (what int8 can
cost in acceptance is bounded by the disagreement).

    python -m bench.draft_quant [--dtype bfloat16] [--repeats 8] [--prompts 3] [--tokens 64]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.common import median, quiet, real_pair_paths, write_report
from bench.engine_microbench import code_prompts
from smartspec.engine.quant import quantize
from smartspec.models.loading import load_model, load_tokenizer


def forward_ms(model: Any, context: torch.Tensor, width: int, repeats: int) -> list[float]:
    from transformers import DynamicCache

    times = []
    with torch.inference_mode():
        cache = DynamicCache(config=model.config)
        model(input_ids=context, cache=cache, use_cache=True)
        new = context[:, :width]
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(input_ids=new, cache=cache, use_cache=True)
            times.append(1000 * (time.perf_counter() - t0))
            cache.crop(-width)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--repeats", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    args = ap.parse_args()
    quiet()
    target_path, draft_path = real_pair_paths()
    plain = load_model(draft_path, args.dtype)
    int8 = copy.deepcopy(plain)
    swapped = quantize(int8, "int8")
    context = torch.randint(100, 20000, (1, 300), generator=torch.Generator().manual_seed(0))
    rows = ["| forward | " + args.dtype + " ms | int8 ms | int8 / " + args.dtype + " |", "|---|---|---|---|"]
    for width in (1, 5):
        a: list[float] = []
        b: list[float] = []
        for _ in range(2):  # interleaved, so drift hits both
            a += forward_ms(plain, context, width, args.repeats)[1:]
            b += forward_ms(int8, context, width, args.repeats)[1:]
        rows.append(f"| {width} token(s) after 300 | {median(a):.1f} | {median(b):.1f} | {median(b) / median(a):.3f} |")
        print(rows[-1], flush=True)
    target = load_model(target_path, args.dtype)
    agree = total = 0
    with torch.inference_mode():
        for n, prompt in enumerate(code_prompts(load_tokenizer(target_path), args.prompts), start=1):
            ids = torch.tensor([prompt])
            seq = target.generate(ids, max_new_tokens=args.tokens, do_sample=False)
            x = seq[:, :-1]
            pa = plain(input_ids=x).logits[0, len(prompt) - 1 :].argmax(-1)
            pb = int8(input_ids=x).logits[0, len(prompt) - 1 :].argmax(-1)
            truth = seq[0, len(prompt) :]
            agree += int((pa == pb).sum())
            total += len(truth)
            rows_acc = (int((pa == truth).sum()), int((pb == truth).sum()))
            rows.append(f"| prompt {n}: draft argmax = target's next token | {rows_acc[0]}/{len(truth)} "
                        f"| {rows_acc[1]}/{len(truth)} | |")
    rows.append(f"| {args.dtype} and int8 drafts agree | | {agree}/{total} | |")
    body = (f"Draft Qwen2.5-Coder-0.5B-Instruct, {args.dtype}; int8: {swapped} Linear layers (LM head included) "
            f"as int8 rows with a scale per output channel. Median of {2 * (args.repeats - 1)} forwards each; "
            f"agreement over the target's greedy continuation of {args.prompts} raw code prompts, "
            f"{args.tokens} tokens each.\n\n" + "\n".join(rows))
    print(body)
    print(f"written to {write_report('draft-int8', 'Draft forward: ' + args.dtype + ' vs int8 weights', body)}")


if __name__ == "__main__":
    main()
