"""One decode step on an accelerator: transformers' own forward (DynamicCache) vs smartspec's engine at k = 0.

Same random-weight Llama-8B-shaped model, same batch and context, median of N steps. If both are far
above the memory-bandwidth floor (weights bytes / HBM bandwidth), the step is bound by host-side work
(Python and kernel launches), not by the GPU; the ratio says how much of that smartspec adds.
Stock image Python is enough: `PYTHONPATH=. python3 bench/gpu_forward_baseline.py`.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch
from transformers import DynamicCache

from bench.gpu_step_curve import build
from smartspec.engine.engine import SpecEngine
from smartspec.engine.runner import ModelRunner
from smartspec.engine.sampling import SamplingParams

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def hf_step_ms(model: Any, batch: int, context: int, steps: int) -> float:
    ids = torch.randint(0, model.config.vocab_size, (batch, context), device=DEVICE)
    cache = DynamicCache()
    with torch.inference_mode():
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        times = []
        for _ in range(steps + 2):
            sync()
            t0 = time.perf_counter()
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
            nxt = out.logits[:, -1:].argmax(-1)
            sync()
            times.append(time.perf_counter() - t0)
    return 1000 * median(times[2:])


def engine_step_ms(model: Any, batch: int, context: int, steps: int) -> float:
    runner = ModelRunner(model, num_slots=batch, max_len=context + steps + 8)
    engine = SpecEngine(runner, None, eos_token_ids=(), max_k=0)
    for sid in range(batch):
        prompt = torch.randint(0, runner.vocab_size, (context,)).tolist()
        engine.add_request(sid, prompt, SamplingParams(max_tokens=steps + 4, ignore_eos=True))
    while engine.waiting:
        engine.step({})
    times = []
    for _ in range(steps + 2):
        sync()
        t0 = time.perf_counter()
        engine.step({})
        sync()
        times.append(time.perf_counter() - t0)
    return 1000 * median(times[2:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="llama8b")
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    model = build(args.shape, torch.bfloat16, DEVICE)
    weight_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 1e9
    device = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    print(json.dumps({"device": device, "weights_GB": round(weight_gb, 1)}))
    for b in [int(x) for x in args.batches.split(",")]:
        hf = hf_step_ms(model, b, args.context, args.steps)
        ours = engine_step_ms(model, b, args.context, args.steps)
        print(json.dumps({"batch": b, "transformers_ms": round(hf, 2), "smartspec_k0_ms": round(ours, 2),
                          "smartspec_over_transformers": round(ours / hf, 3)}), flush=True)
        if DEVICE == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
