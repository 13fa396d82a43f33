"""Predicted vs actual step time by step class, from a sweep's raw step records (`steps-<policy>.jsonl`).

Classes: admission (the step prefilled prompts), deadline miss (drafts were asked for and missed),
decode with catch-up (speculating, the draft ingested more than the steady 1-2 tokens per request),
speculating decode, and k = 0 decode. "Predicted" is what the policy's cost model in force expected
when it chose k (the record's `predicted_step_s`); steps without one (static policies before this
field, or the first step) are left out.

    python -m bench.step_classes bench/results/<folder> [--policies goodput,goodput+controller]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

CLASSES = ("k = 0 decode", "speculating decode", "decode with catch-up", "admission", "deadline miss")


def step_class(rec: dict[str, str]) -> str:
    if int(rec.get("num_prefills", 0)):
        return "admission"
    if int(rec.get("missed_max_k", 0) or 0):
        return "deadline miss"
    if int(rec.get("max_k", 0)):
        return "decode with catch-up" if int(rec.get("draft_catchup_tokens", 0)) else "speculating decode"
    return "k = 0 decode"


def table(folder: Path, policies: list[str] | None) -> str:
    rows = []
    for path in sorted(folder.glob("steps-*.jsonl")):
        policy = path.stem.removeprefix("steps-")
        if policies and policy not in policies:
            continue
        by_class: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            pred = rec.get("predicted_step_s")
            if not pred or (int(rec.get("batch_size", 0)) == 0 and not int(rec.get("num_prefills", 0))):
                continue
            actual = float(rec["draft_s"]) + float(rec["verify_s"]) + float(rec["overhead_s"])
            by_class[step_class(rec)].append((actual, float(pred)))
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
