"""Host time of verifying one step's greedy rows (`verify_rows`): the Python and tensor bookkeeping between
the target's forward and the commit, which a GPU step pays on top of its replayed graphs.

    .venv/bin/python bench/verify_overhead.py [--batches 1 16 64] [--k 3] [--vocab 32000] [--reps 300]

Rows are built as the engine builds them: one logits tensor for the step, per-row views of it and of its
argmax; drafts match the target's argmax but for the last one, so every row accepts k - 1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.common import quiet, write_report
from smartspec.engine.proposers.base import Proposal
from smartspec.engine.sampling import SamplingParams
from smartspec.engine.sequence import Sequence
from smartspec.engine.verification import ScoredRow, verify_rows


def rows_of(batch: int, k: int, vocab: int) -> list[ScoredRow]:
    gen = torch.Generator().manual_seed(batch)
    logits = torch.randn(batch * (k + 1), vocab, generator=gen)
    argmax = logits.argmax(dim=-1)
    rows = []
    for b in range(batch):
        span = slice(b * (k + 1), (b + 1) * (k + 1))
        drafts = argmax[span][:k].tolist()
        if drafts:
            drafts[-1] = (drafts[-1] + 1) % vocab  # the last draft is rejected
        seq = Sequence.create(b, [1, 2, 3], SamplingParams(max_tokens=64))
        rows.append(ScoredRow(seq, Proposal(drafts), logits[span], argmax[span]))
    return rows


def verify_ms(batch: int, k: int, vocab: int, reps: int) -> float:
    rows = rows_of(batch, k, vocab)
    verdicts = verify_rows(rows)
    assert all(n == max(k - 1, 0) for n, _ in verdicts), verdicts[:2]
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        verify_rows(rows)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--vocab", type=int, default=32000, help="logits width (the verify reads only their argmax)")
    ap.add_argument("--reps", type=int, default=300)
    args = ap.parse_args()
    quiet()
    rows = ["| batch | verify_rows ms (median) |", "|---|---|"]
    for b in args.batches:
        rows.append(f"| {b} | {verify_ms(b, args.k, args.vocab, args.reps):.3f} |")
        print(rows[-1], flush=True)
    body = f"Greedy rows, k = {args.k}, median of {args.reps} calls on CPU tensors.\n\n" + "\n".join(rows)
    print(f"written to {write_report('verify-overhead', 'Verification host time per step', body)}")


if __name__ == "__main__":
    main()
