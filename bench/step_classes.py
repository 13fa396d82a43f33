"""Predicted vs actual step time by step class, from a sweep's raw step records (`steps-<policy>.jsonl`).

Classes: admission (the step prefilled prompts), deadline miss (drafts were asked for and missed),
decode with catch-up (speculating, the draft ingested more than the steady 1-2 tokens per request),
speculating decode, and k = 0 decode. "Predicted" is what the policy's cost model in force expected
when it chose k (the record's `predicted_step_s`); steps without one (static policies before this
field, or the first step) are left out.

    python -m bench.step_classes results/<folder> [--policies goodput,goodput+controller]
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict
from pathlib import Path

from smartspec.telemetry.records import StepRecord, read_jsonl

CLASSES = ("k = 0 decode", "speculating decode", "decode with catch-up", "admission", "deadline miss")


def step_class(rec: StepRecord) -> str:
    if rec.num_prefills:
        return "admission"
    if rec.deadline_missed:
        return "deadline miss"
    if rec.max_k:
        return "decode with catch-up" if rec.sample.shape.draft_catchup_tokens else "speculating decode"
    return "k = 0 decode"


def table(folder: Path, policies: list[str] | None) -> str:
    rows = []
    for path in sorted(folder.glob("steps-*.jsonl")):
        policy = path.stem.removeprefix("steps-")
        if policies and policy not in policies:
            continue
        by_class: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for rec in read_jsonl(path):
            if not rec.predicted_step_s or (rec.batch_size == 0 and not rec.num_prefills):
                continue
            by_class[step_class(rec)].append((rec.step_s, rec.predicted_step_s))
        for klass in CLASSES:
            pairs = by_class.get(klass)
            if not pairs:
                continue
            actual = sum(a for a, _ in pairs)
            predicted = sum(p for _, p in pairs)
            median = statistics.median(a / p for a, p in pairs if p > 0)
            rows.append(f"| {policy} | {klass} | {len(pairs)} | {actual / len(pairs):.3f} | "
                        f"{predicted / len(pairs):.3f} | {actual / predicted:.2f} | {median:.2f} |")
    head = ("| policy | step class | steps | mean actual s | mean predicted s | Σ actual / Σ predicted "
            "| median actual / predicted |\n|---|---|---|---|---|---|---|")
    return head + "\n" + "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path)
    ap.add_argument("--policies", default=None, help="comma-separated policy labels (default: every steps file)")
    args = ap.parse_args()
    print(table(args.folder, args.policies.split(",") if args.policies else None))


if __name__ == "__main__":
    main()
