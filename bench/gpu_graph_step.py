"""Eager vs replayed verify steps per (batch, width), the memory floor, and goodput per k at an emulated α.

Random-weight models of real shapes (Llama-3.1-8B target, Llama-3.2-1B draft, built from configs: no
weights travel), each request holding `--context` tokens of KV. Per batch × width it times the eager
runner's forward and the GraphRunner's replay of the same rows (median, host work and one device sync
included, as a serving step pays them), and the time reading the weights and the KV would take at the
measured copy bandwidth (the floor). The draft is timed as a greedy chain (one catch-up token, then
k - 1 one-token replays fed back on the device, one sync). Goodput per k at α: every request emits
1 + α + … + α^k tokens per step of time verify(k + 1) + chain(k). An fp32 check compares graph and eager
logits on a smaller model. Needs torch, transformers and numpy only:

    PYTHONPATH=. python3 bench/gpu_graph_step.py [--quick] [--out DIR]
    PYTHONPATH=. python3 bench/gpu_graph_step.py --device cpu --target tiny --draft tiny --quick   # a dry run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench.gpu_step_curve import SHAPES, build, expected_tokens, sync
from smartspec.engine.graph_runner import GraphRunner
from smartspec.engine.graph_step import BucketConfig
from smartspec.engine.runner import ModelRunner, RowInput


def timed_ms(fn: Callable[[], Any], device: str, repeats: int) -> float:
    """Median wall ms of `fn` with a device sync after each call, after one untimed call (capture, warm-up)."""
    fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(1000 * (time.perf_counter() - t0))
    return statistics.median(times)


def copy_bandwidth(device: str) -> float:
    """Bytes per second of a large device-to-device copy (read + write counted)."""
    n = (1 << 30) if device.startswith("cuda") else (1 << 26)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = timed_ms(lambda: dst.copy_(src), device, 5)
    return 2 * n / (ms / 1000)


def param_bytes(model: Any) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def fill(runner: GraphRunner, batch: int, context: int, vocab: int) -> list[int]:
    """`batch` sequences of `context` random tokens in slots 0 … batch-1 (eager prefill, 8 at a time)."""
    gen = torch.Generator().manual_seed(batch)
    ids = list(range(batch))
    for start in range(0, batch, 8):
        group = ids[start : start + 8]
        for sid in group:
            runner.add(sid)
        rows = [RowInput(sid, torch.randint(0, vocab, (context,), generator=gen).tolist(), 1) for sid in group]
        ModelRunner.forward(runner, rows)
        for sid in group:
            runner.commit(sid, context)
    return ids


def empty(runner: GraphRunner, ids: list[int]) -> None:
    for sid in reversed(ids):
        runner.remove(sid)


def verify_table(runner: GraphRunner, model: Any, batches: list[int], widths: list[int], context: int,
                 device: str, repeats: int, bandwidth: float) -> list[dict[str, Any]]:
    rows_out = []
    weights = param_bytes(model)
    per_token = runner.cache.bytes_per_token()
    for batch in batches:
        ids = fill(runner, batch, context, runner.vocab_size)
        for width in widths:
            rows = [RowInput(sid, [7] * width, width) for sid in ids]  # uncommitted: every call writes the same cells
            eager = timed_ms(lambda: ModelRunner.forward(runner, rows), device, repeats)  # noqa: B023
            graph = timed_ms(lambda: runner.forward(rows), device, repeats)  # noqa: B023
            floor = 1000 * (weights + batch * (context + width) * per_token) / bandwidth
            rows_out.append({"batch": batch, "width": width, "eager_ms": round(eager, 3), "graph_ms": round(graph, 3),
                             "floor_ms": round(floor, 3), "graph_over_floor": round(graph / floor, 2)})
            print(json.dumps(rows_out[-1]), flush=True)
        empty(runner, ids)
    return rows_out


def chain_table(runner: GraphRunner, batches: list[int], ks: list[int], context: int, device: str,
                repeats: int) -> dict[tuple[int, int], float]:
    """ms of a greedy draft chain of k tokens (one catch-up token first) per batch."""
    out = {}
    for batch in batches:
        ids = fill(runner, batch, context, runner.vocab_size)
        rows = [RowInput(sid, [7], 1) for sid in ids]
        for k in ks:
            if k:
                out[(batch, k)] = timed_ms(lambda: runner.chain(rows, k), device, repeats)  # noqa: B023
                print(json.dumps({"draft_batch": batch, "k": k, "chain_ms": round(out[(batch, k)], 3)}), flush=True)
        empty(runner, ids)
    return out


def fp32_check(shape: str, device: str, context: int) -> dict[str, Any]:
    """Graph vs eager logits in fp32 on the same rows (a ragged verify at batch 3 → bucket 4)."""
    model = build(shape, torch.float32, device)
    runner = GraphRunner(model, num_slots=4, max_len=context + 16, buckets=BucketConfig(batch_sizes=(4,)))
    ids = fill(runner, 3, context, runner.vocab_size)
    rows = [RowInput(sid, [5 + sid] * (sid + 2), sid + 2) for sid in ids]
    eager = ModelRunner.forward(runner, rows).logits
    graph = runner.forward(rows).logits  # captures (running it), then replays below
    graph = runner.forward(rows).logits
    diff = float((graph - eager).abs().max())
    agree = float((graph.argmax(-1) == eager.argmax(-1)).float().mean())
    return {"shape": shape, "max_abs_diff": diff, "argmax_agreement": agree}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="llama8b", choices=sorted(SHAPES))
    ap.add_argument("--draft", default="llama1b", choices=sorted(SHAPES))
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--widths", default="1,2,4,5")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--alpha", type=float, default=0.8)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="5 repeats (a run well inside 6 minutes)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--fp32-shape", default=None, help="model for the fp32 check (default: the draft's shape)")
    ap.add_argument("--out", default="results/gpu-graph-step")
    args = ap.parse_args()
    torch.manual_seed(0)
    repeats = 5 if args.quick else args.repeats
    dtype = getattr(torch, args.dtype)
    batches = [int(b) for b in args.batches.split(",")]
    widths = [int(w) for w in args.widths.split(",")]
    buckets = BucketConfig(batch_sizes=tuple(batches), max_width=max(widths),
                           kv_sizes=(args.context + max(widths) + 16,), max_cells=max(batches) * max(widths))
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    t0 = time.perf_counter()
    bandwidth = copy_bandwidth(args.device)
    target = build(args.target, dtype, args.device)
    runner = GraphRunner(target, num_slots=max(batches), max_len=args.context + 16, buckets=buckets)
    verify = verify_table(runner, target, batches, widths, args.context, args.device, repeats, bandwidth)
    prepare_s = runner.graph_stats.prepare_s
    del runner, target
    draft = build(args.draft, dtype, args.device)
    ks = [w - 1 for w in widths]
    draft_runner = GraphRunner(draft, num_slots=max(batches), max_len=args.context + 16, buckets=buckets)
    chains = chain_table(draft_runner, batches, ks, args.context, args.device, repeats)
    del draft_runner, draft
    exact = fp32_check(args.fp32_shape or args.draft, args.device, min(args.context, 128))
    print(json.dumps({"fp32": exact}), flush=True)
    goodput = []
    for batch in batches:
        step = {r["width"]: r["graph_ms"] for r in verify if r["batch"] == batch}
        for k in ks:
            ms = step[k + 1] + chains.get((batch, k), 0.0)
            goodput.append({"batch": batch, "k": k, "step_ms": round(ms, 3),
                            "goodput": round(batch * expected_tokens(args.alpha, k) / (ms / 1000), 1)})
    best = {b: max((g for g in goodput if g["batch"] == b), key=lambda g: g["goodput"]) for b in batches}
    k0 = {g["batch"]: g["goodput"] for g in goodput if g["k"] == 0}
    wall = time.perf_counter() - t0
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps({"verify": verify, "draft_chain_ms": {f"{b},{k}": v for (b, k), v
                                                    in chains.items()}, "goodput": goodput, "fp32": exact}, indent=1))
    lines = [f"# Graph vs eager verify: {args.target} target + {args.draft} draft, random weights, {args.dtype}", "",
             f"Device: {device_name}; torch {torch.__version__}; context {args.context} tokens per request; median of "
             f"{repeats} calls; copy bandwidth {bandwidth / 1e9:.0f} GB/s; graph capture {prepare_s:.1f} s; "
             f"run {wall:.0f} s.", "",
             "| batch | width | eager ms | graph ms | floor ms | graph / floor |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['width']} | {r['eager_ms']} | {r['graph_ms']} | {r['floor_ms']} | "
              f"{r['graph_over_floor']} |" for r in verify]
    lines += ["", f"Draft chain ({args.draft}, greedy, device-side feedback): "
              + ", ".join(f"batch {b} k {k}: {v:.2f} ms" for (b, k), v in chains.items()), "",
              f"**ACCEPTANCE EMULATED at α = {args.alpha}** (the weights are random): goodput per k, tokens/s", "",
              "| batch | k | step ms | goodput |", "|---|---|---|---|"]
    lines += [f"| {g['batch']} | {g['k']} | {g['step_ms']} | {g['goodput']} |" for g in goodput]
    lines += ["", "Best k: " + ", ".join(f"batch {b}: k = {g['k']} ({g['goodput'] / k0[b]:.2f}x k = 0)"
                                         for b, g in best.items()),
              "", f"fp32 graph vs eager ({exact['shape']}): max |Δ logit| {exact['max_abs_diff']:.3g}, "
              f"argmax agreement {exact['argmax_agreement']:.3f}", ""]
    (folder / "README.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
