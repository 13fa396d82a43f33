"""Step time vs batch size and k on any accelerator, with random-weight models of real shapes.

No trained weights travel to a lent GPU machine, so this builds Llama-shaped models from a config
(random init, bf16), runs the real engine (slot KV cache, batched draft proposer, one ragged verify
forward) with ACCEPTANCE EMULATION at α (engine/emulation.py: acceptance drawn, not compared), and
measures each step's wall time. It fits this engine's cost model from the steps (the same fit the
scheduler does online) and reports, per batch size, the k that maximises emitted tokens per second
at α — the curve the goodput policy rides. Needs only torch, transformers and numpy (no pydantic),
so it runs with an accelerator image's stock Python: `PYTHONPATH=. python3 bench/gpu_step_curve.py`.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from smartspec.engine.engine import SpecEngine
from smartspec.engine.proposers.draft_model import DraftModelProposer
from smartspec.engine.runner import ModelRunner
from smartspec.engine.sampling import SamplingParams
from smartspec.engine.scheduler import sample_of
from smartspec.policy.cost_fit import fit_cost_model
from smartspec.policy.cost_model import PRESETS

# Public architecture shapes (the models' config.json): Llama-3.1-8B and Llama-3.2-1B.
SHAPES: dict[str, dict[str, Any]] = {
    "llama8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                    intermediate_size=14336, vocab_size=128256),
    "llama1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                    intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=128256),
}


def build(shape: str, dtype: torch.dtype, device: str) -> Any:
    config = LlamaConfig(max_position_embeddings=8192, **SHAPES[shape])
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model.eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def expected_tokens(alpha: float, k: int) -> float:
    return float(sum(alpha**j for j in range(k + 1)))  # 1 + α + … + α^k (geometric acceptance)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="llama8b", choices=sorted(SHAPES))
    ap.add_argument("--draft", default="llama1b", choices=sorted(SHAPES))
    ap.add_argument("--batches", default="1,4,16,32,64")
    ap.add_argument("--ks", default="0,1,2,3,4,6,8")
    ap.add_argument("--alpha", type=float, default=0.8, help="emulated per-position acceptance")
    ap.add_argument("--context", type=int, default=512, help="prompt tokens per request")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="results/gpu-step-curve")
    args = ap.parse_args()
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    batches = [int(b) for b in args.batches.split(",")]
    ks = [int(k) for k in args.ks.split(",")]
    per_request = sum((args.warmup + args.steps) * (k + 1) for k in ks) + 16
    max_len = args.context + per_request + max(ks) + 8

    t0 = time.perf_counter()
    target, draft = build(args.target, dtype, args.device), build(args.draft, dtype, args.device)
    runner = ModelRunner(target, num_slots=max(batches), max_len=max_len)
    proposer = DraftModelProposer(ModelRunner(draft, num_slots=max(batches), max_len=max_len + max(ks)),
                                  runner.vocab_size)
    engine = SpecEngine(runner, proposer, eos_token_ids=(), max_k=max(ks), emulate_acceptance=args.alpha)
    build_s = time.perf_counter() - t0
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor()

    rows: list[dict[str, Any]] = []
    samples = []
    next_id = 0
    for b in batches:
        ids = list(range(next_id, next_id + b))
        next_id += b
        gen = torch.Generator().manual_seed(b)
        for sid in ids:
            prompt = torch.randint(0, runner.vocab_size, (args.context,), generator=gen).tolist()
            engine.add_request(sid, prompt, SamplingParams(max_tokens=per_request, ignore_eos=True))
        while engine.waiting:  # prefill everyone first (k = 0 steps)
            engine.step({})
        for k in ks:
            times, emitted = [], []
            for i in range(args.warmup + args.steps):
                sync(args.device)
                s0 = time.perf_counter()
                out = engine.step({sid: k for sid in engine.running})
                sync(args.device)
                wall = time.perf_counter() - s0
                if i >= args.warmup and out.stats is not None:
                    times.append(wall)
                    emitted.append(out.stats.num_emitted)
                    samples.append(sample_of(out.stats))
            step_ms = 1000 * sorted(times)[len(times) // 2]
            rows.append({"batch": b, "k": k, "step_ms": round(step_ms, 2),
                         "emitted_per_step": round(sum(emitted) / len(emitted), 2),
                         "tokens_per_s": round(sum(emitted) / sum(times), 1),
                         "goodput_at_alpha": round(b * expected_tokens(args.alpha, k) / (step_ms / 1000), 1)})
            print(json.dumps(rows[-1]), flush=True)
        for sid in ids:
            engine.cancel(sid)
            engine.pop_finished(sid)

    fitted = fit_cost_model(samples, prior=PRESETS["h100-llama8b"], pads_to_max_k=True,
                            name=f"{args.target}+{args.draft}-{args.dtype}-{device_name}")
    best = {b: max((r for r in rows if r["batch"] == b), key=lambda r: r["goodput_at_alpha"])["k"] for b in batches}
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cost_model.json").write_text(json.dumps(fitted.to_dict(), indent=1) + "\n")
    (folder / "steps.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [f"# Step time vs batch and k: {args.target} target + {args.draft} draft, random weights, {args.dtype}",
             "", f"Device: {device_name}; torch {torch.__version__}; context {args.context} tokens per request; "
             f"median of {args.steps} steps after {args.warmup} warm-up; models built in {build_s:.0f} s.",
             "", f"**ACCEPTANCE EMULATED at α = {args.alpha}** (each draft token accepted with probability α "
             "given the previous one; the weights are random, so real acceptance would be ~0).", "",
             "| batch | k | step ms | emitted/step | tokens/s measured | goodput at α (tokens/s) |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['k']} | {r['step_ms']} | {r['emitted_per_step']} | {r['tokens_per_s']} | "
              f"{r['goodput_at_alpha']} |" for r in rows]
    lines += ["", "Best k per batch size at this α (max goodput): "
              + ", ".join(f"batch {b}: k = {k}" for b, k in best.items()), "",
              f"Fitted cost model (R² {fitted.r2}): `cost_model.json` (load with --cost-model in `smartspec sim`).", ""]
    (folder / "README.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
