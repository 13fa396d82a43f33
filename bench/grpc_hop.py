"""The draft gRPC hop, and the whole stack against the in-process engine.

    .venv/bin/python bench/grpc_hop.py [--calls 300] [--skip-e2e]

Part 1 — hop cost: a real draft service and the target's RemoteProposer on loopback; each Propose
round trip minus the draft's own compute (reported by the draft) is what the split into two
services costs per step: serialisation, the stream, the thread hand-off. Batch 1 and 32 at
k = 8, greedy (token ids only) and sampling (top-64 q per draft token). Tiny models: the hop does
not depend on model size, only on what crosses the wire. Goal: ≤ 1 ms p50.

Part 2 — end to end: batch-1 tokens/s of `smartspec up` (three processes, OpenAI HTTP) vs the
in-process engine, same real pair, same fixed k, same prompts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import PROMPTS, chat_ids, quiet, real_pair_paths, write_report
from smartspec.engine.proposers.base import ProposeRequest
from smartspec.engine.sampling import SamplingParams
from smartspec.models.loading import load_tokenizer, tokenizer_fingerprint
from smartspec.models.tiny import tiny_pair
from smartspec.telemetry.metrics import TargetMetrics
from smartspec_draft import server as draft_server
from smartspec_draft.settings import DraftSettings
from smartspec_target.remote_proposer import RemoteProposer


def hop_costs(calls: int) -> list[str]:
    tmp = tempfile.TemporaryDirectory()
    target, draft = tiny_pair("qwen2").save(Path(tmp.name))
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def run(coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, loop).result(120)

    running, _ = run(draft_server.start(DraftSettings(model=str(draft), port=0, dtype="float32", max_sequences=64)))
    tok = load_tokenizer(target)
    client = RemoteProposer(f"127.0.0.1:{running.port}", loop, target_vocab=len(tok),
                            fingerprint=tokenizer_fingerprint(tok), deadline_s=30.0, metrics=TargetMetrics())
    run(client.start())
    assert run(client.wait_connected(30))
    rows = ["| batch | k | q sent | round trip p50 ms | draft compute p50 ms | hop p50 ms | hop p99 ms |",
            "|---|---|---|---|---|---|---|"]
    rng = np.random.default_rng(0)
    for batch in (1, 32):
        for sampling in (False, True):
            params = SamplingParams(temperature=1.0 if sampling else 0.0, seed=1)
            base = 1000 * batch + (500 if sampling else 0)
            contexts = {base + i: rng.integers(3, 250, size=100).tolist() for i in range(batch)}
            client.hops.clear()
            for step in range(calls + 10):
                reqs = [ProposeRequest(sid, ctx, 8, params) for sid, ctx in contexts.items()]
                out = client.propose(reqs)
                for sid, ctx in contexts.items():  # the target "accepted" the first draft and emitted a token
                    drafts = out[sid].draft_token_ids if sid in out else []
                    ctx.extend([*drafts[:1], int(rng.integers(3, 250))])
                if step == 9:
                    client.hops.clear()  # warm-up done
            hops = list(client.hops)
            rtt = [h.rtt_s * 1000 for h in hops]
            comp = [h.compute_s * 1000 for h in hops]
            cost = sorted(h.rtt_s * 1000 - h.compute_s * 1000 for h in hops)
            p99 = cost[int(0.99 * (len(cost) - 1))]
            rows.append(f"| {batch} | 8 | {'top-64 q' if sampling else 'ids only'} | {statistics.median(rtt):.2f} "
                        f"| {statistics.median(comp):.2f} | {statistics.median(cost):.3f} | {p99:.3f} |")
            print(rows[-1], flush=True)
            for sid in contexts:
                client.release(sid)
    run(client.close())
    run(running.stop())
    tmp.cleanup()
    return rows


def _http_tps(base_url: str, model: str, prompts: list[str], tokens: int) -> tuple[float, float]:
    import httpx

    total_t, total_n, drafted, accepted = 0.0, 0, 0, 0
    for p in prompts:
        t0 = time.perf_counter()
        r = httpx.post(f"{base_url}/v1/chat/completions", timeout=600, json={
            "model": model, "messages": [{"role": "user", "content": p}], "max_tokens": tokens, "temperature": 0})
        total_t += time.perf_counter() - t0
        usage = r.json()["usage"]
        total_n += usage["completion_tokens"]
        drafted += usage["speculation"]["draft_tokens"]
        accepted += usage["speculation"]["accepted_tokens"]
    return total_n / total_t, accepted / max(drafted, 1)


def end_to_end(k: int, tokens: int, n_prompts: int) -> list[str]:
    from smartspec.engine.builder import EngineSpec, build_engine
    from smartspec.engine.refit import RefitConfig
    from smartspec.engine.scheduler import Scheduler
    from smartspec.policy.policy import PolicyConfig, SpeculationPolicy

    target, _ = real_pair_paths()
    prompts = PROMPTS[:n_prompts]
    port = 18000 + os.getpid() % 1000
    up = subprocess.Popen([sys.executable, "-m", "smartspec.cli.main", "up", "--port", str(port), "--policy", "fixed",
                           "--fixed-k", str(k), "--max-batch-size", "4", "--no-auth"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    try:
        assert up.stdout is not None
        for line in up.stdout:
            if "smartspec is up" in line:
                break
        stack_tps, stack_acc = _http_tps(f"http://127.0.0.1:{port}", Path(target).name, prompts, tokens)
    finally:
        up.terminate()
        up.wait(60)
    engine, tok = build_engine(EngineSpec(*real_pair_paths(), dtype="bfloat16", num_slots=1, max_len=1024, max_k=8))
    sch = Scheduler(engine, SpeculationPolicy(PolicyConfig(mode="fixed", fixed_k=k, max_k=8)),
                    refit=RefitConfig(enabled=False))
    total_t, total_n = 0.0, 0
    for i, p in enumerate(prompts):
        ids = chat_ids(tok, p)
        t0 = time.perf_counter()
        sch.submit(i, ids, SamplingParams(max_tokens=tokens))
        while sch.has_unfinished:
            sch.step()
        total_t += time.perf_counter() - t0
        total_n += sch.pop_finished(i).num_output
    local = total_n / total_t
    return ["| path | tokens/s | ratio |", "|---|---|---|",
            f"| in-process engine (fixed k={k}) | {local:.2f} | 1.00 |",
            f"| `smartspec up`: HTTP → target process → gRPC → draft process (acceptance {stack_acc:.2f}) "
            f"| {stack_tps:.2f} | {stack_tps / local:.2f} |"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--skip-hop", action="store_true")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--prompts", type=int, default=3)
    args = ap.parse_args()
    quiet()
    if not args.skip_hop:
        body = ["Tiny models; round trip minus the draft's own compute, median and 99th percentile.\n",
                *hop_costs(args.calls)]
        print(f"written to {write_report('grpc-hop', 'Draft gRPC hop on loopback', chr(10).join(body))}")
    if not args.skip_e2e:
        rows = end_to_end(args.k, args.tokens, args.prompts)
        print("\n".join(rows), flush=True)
        body = [f"Real pair, bf16, batch 1: {args.prompts} prompts x up to {args.tokens} tokens.\n", *rows]
        print(f"written to {write_report('stack-e2e', 'smartspec up vs the in-process engine', chr(10).join(body))}")


if __name__ == "__main__":
    main()
