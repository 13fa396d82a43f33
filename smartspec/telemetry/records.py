"""The step record: one spelling, with a schema version, for every sink and every reader.

A target writes one record per engine step to `smartspec:{service}:steps` (RedisStepSink) and, with
`smartspec generate --steps-jsonl`, as one JSON object per line (JsonlSink): the same `encode` map
both ways. The controller, `smartspec sim fit`, `smartspec policy explain --fit` and the benches read
it back with `decode` (`read_jsonl` for files); nothing else parses it.

Values are strings (Redis stream entries are flat string maps), lists and maps as JSON. Fields:
v (schema), ts (unix s), replica, step, batch_size, num_prefills, prefill_tokens, sum_k, max_k,
context_tokens, draft_catchup_tokens, proposed_per_pos / accepted_per_pos (JSON lists, position
0 = first draft), acceptance (JSON {class: [tested per pos, accepted per pos]}), emitted,
draft_s, verify_s, overhead_s, decision_s, policy_version; and, optional (older targets omit them):
prefill_padded_tokens, pending_catchup_tokens (Σ context the draft had not seen), draft_deadline_s,
missed_max_k / missed_sum_k (the drafts asked for when they missed the deadline; 0 otherwise),
predicted_step_s (what the policy's cost model expected), calibration ("1" on start-up profile steps) and
graph_forwards (forwards that replayed a captured step; written when > 0).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smartspec.policy.cost_fit import StepSample
from smartspec.policy.cost_model import StepShape
from smartspec.policy.limits import MAX_K_LIMIT, MAX_POLICY_VERSION
from smartspec.telemetry.keys import SCHEMA_VERSION

if TYPE_CHECKING:  # the controller parses records without torch installed
    from smartspec.engine.engine import StepStats

FIELDS = (
    "v", "ts", "replica", "step", "batch_size", "num_prefills", "prefill_tokens", "sum_k", "max_k",
    "context_tokens", "draft_catchup_tokens", "proposed_per_pos", "accepted_per_pos", "acceptance", "emitted",
    "draft_s", "verify_s", "overhead_s", "decision_s", "policy_version",
)
# Written by this version, read when present (records of older targets lack them).
OPTIONAL_FIELDS = (
    "prefill_padded_tokens", "pending_catchup_tokens", "missed_max_k", "missed_sum_k", "draft_deadline_s",
    "predicted_step_s", "calibration", "graph_forwards",
)


def encode(stats: StepStats, replica: str, ts: float) -> dict[str, str]:
    """A step as a Redis stream entry."""
    return {
        "v": str(SCHEMA_VERSION), "ts": f"{ts:.6f}", "replica": replica, "step": str(stats.step_id),
        "batch_size": str(stats.batch_size), "num_prefills": str(stats.num_prefills),
        "prefill_tokens": str(stats.prefill_tokens), "sum_k": str(sum(stats.ks)),
        "max_k": str(max(stats.ks, default=0)), "context_tokens": str(stats.context_tokens),
        "draft_catchup_tokens": str(stats.draft_catchup_tokens),
        "proposed_per_pos": json.dumps(stats.num_proposed_per_pos),
        "accepted_per_pos": json.dumps(stats.num_accepted_per_pos),
        "acceptance": json.dumps(stats.acceptance_by_class, separators=(",", ":")), "emitted": str(stats.num_emitted),
        "draft_s": f"{stats.draft_s:.6g}", "verify_s": f"{stats.verify_s:.6g}", "overhead_s": f"{stats.overhead_s:.6g}",
        "decision_s": f"{stats.decision_s:.6g}", "policy_version": str(stats.policy_version),
        "prefill_padded_tokens": str(stats.prefill_padded_tokens),
        "pending_catchup_tokens": str(stats.pending_catchup_tokens),
        "missed_max_k": str(max(stats.missed_ks, default=0)), "missed_sum_k": str(sum(stats.missed_ks)),
        **({} if stats.draft_deadline_s is None else {"draft_deadline_s": f"{stats.draft_deadline_s:.6g}"}),
        **({} if stats.predicted_step_s is None else {"predicted_step_s": f"{stats.predicted_step_s:.6g}"}),
        **({"calibration": "1"} if stats.calibration else {}),
        **({"graph_forwards": str(stats.graph_forwards)} if stats.graph_forwards else {}),
    }


@dataclass(frozen=True)
class StepRecord:
    """A decoded step record (what the controller works with)."""

    ts: float
    replica: str
    step: int
    batch_size: int
    num_prefills: int
    emitted: int
    sum_k: int
    max_k: int
    policy_version: int
    acceptance: dict[str, list[list[int]]]
    sample: StepSample  # shape + measured draft/verify/overhead seconds
    predicted_step_s: float | None = None
    pending_catchup_tokens: int = 0
    calibration: bool = False  # a target's start-up profile: a cost sample, not load or acceptance

    @property
    def deadline_missed(self) -> bool:
        return self.sample.draft_shape is not None

    @property
    def step_s(self) -> float:
        return self.sample.total_s


class BadRecord(ValueError):
    """A stream entry that is not a step record of a schema this code reads."""


# What a real step can be: anything outside is a bug or a forgery, and one NaN or 1e300 in the fit
# window would steer the fleet's cost model. Generous: a step of an hour, a million-token batch.
MAX_STEP_SECONDS = 3600.0
MAX_BATCH = 65_536
MAX_TOKENS = 1_000_000_000
MAX_CLASSES = 64  # acceptance classes per record (as in a policy document)
MAX_NAME = 253  # a replica name (a DNS name: pod names are at most this)


def decode(fields: Mapping[str, str | bytes] | Mapping[bytes, str | bytes]) -> StepRecord:
    raw: dict[str, Any] = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                           for k, v in fields.items()}
    if raw.get("v") != str(SCHEMA_VERSION):
        raise BadRecord(f"step record schema {raw.get('v')!r}, this code reads {SCHEMA_VERSION}")
    missing = [f for f in FIELDS if f not in raw]
    if missing:
        raise BadRecord(f"step record lacks {missing}")
    if len(raw["replica"]) > MAX_NAME or len(raw["acceptance"]) > MAX_CLASSES * (MAX_K_LIMIT * 32 + 80):
        raise BadRecord("step record with an oversized replica name or acceptance map")
    try:
        acceptance = json.loads(raw["acceptance"])
        rec = StepRecord(
            ts=float(raw["ts"]), replica=raw["replica"], step=int(raw["step"]), batch_size=int(raw["batch_size"]),
            num_prefills=int(raw["num_prefills"]), emitted=int(raw["emitted"]), sum_k=int(raw["sum_k"]),
            max_k=int(raw["max_k"]), policy_version=int(raw["policy_version"]),
            acceptance={str(c): [[int(x) for x in v[0]], [int(x) for x in v[1]]] for c, v in acceptance.items()},
            sample=_sample(raw),
            predicted_step_s=_finite_or_none(raw.get("predicted_step_s")),
            pending_catchup_tokens=int(raw.get("pending_catchup_tokens", 0)),
            calibration=raw.get("calibration") == "1",
        )
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise BadRecord(f"malformed step record: {exc}") from None
    _check_ranges(rec)
    return rec


def read_jsonl(path: str | Path) -> list[StepRecord]:
    """Every record of a JSON-lines file (one `encode` map per line), or BadRecord naming the first bad line."""
    out = []
    with Path(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                if not isinstance(raw, dict):
                    raise BadRecord("not a JSON object")
                out.append(decode({str(k): str(v) for k, v in raw.items()}))
            except (BadRecord, ValueError) as exc:
                raise BadRecord(f"{path}, line {n}: {exc}") from None
    return out


def _sample(raw: Mapping[str, str]) -> StepSample:
    """The step's shape and timings; drafts that missed the deadline are priced at the shape asked for."""
    shape = StepShape(
        batch=int(raw["batch_size"]), context_tokens=int(raw["context_tokens"]), max_k=int(raw["max_k"]),
        draft_tokens=int(raw["sum_k"]), prefill_tokens=int(raw["prefill_tokens"]),
        draft_catchup_tokens=int(raw["draft_catchup_tokens"]),
        prefill_padded_tokens=int(raw.get("prefill_padded_tokens", 0)),
    )
    missed = int(raw.get("missed_max_k", 0))
    draft_shape = replace(shape, max_k=missed, draft_tokens=int(raw.get("missed_sum_k", 0))) if missed > 0 else None
    return StepSample(shape, float(raw["draft_s"]), float(raw["verify_s"]), float(raw["overhead_s"]), draft_shape)


def _check_ranges(rec: StepRecord) -> None:
    s, shape = rec.sample, rec.sample.shape
    times = {"draft_s": s.draft_s, "verify_s": s.verify_s, "overhead_s": s.overhead_s}
    bad = [n for n, v in times.items() if not 0.0 <= v <= MAX_STEP_SECONDS]  # also catches NaN
    if not math.isfinite(rec.ts) or rec.ts < 0:
        bad.append("ts")
    counts = {"batch_size": (rec.batch_size, MAX_BATCH), "num_prefills": (rec.num_prefills, MAX_BATCH),
              "max_k": (rec.max_k, MAX_K_LIMIT), "sum_k": (rec.sum_k, MAX_BATCH * MAX_K_LIMIT),
              "emitted": (rec.emitted, MAX_BATCH * (MAX_K_LIMIT + 1)), "step": (rec.step, 2**63 - 1),
              "policy_version": (rec.policy_version, MAX_POLICY_VERSION),
              "context_tokens": (shape.context_tokens, MAX_TOKENS),
              "prefill_tokens": (shape.prefill_tokens, MAX_TOKENS),
              "draft_catchup_tokens": (shape.draft_catchup_tokens, MAX_TOKENS),
              "prefill_padded_tokens": (shape.prefill_padded_tokens, MAX_TOKENS),
              "pending_catchup_tokens": (rec.pending_catchup_tokens, MAX_TOKENS)}
    if s.draft_shape is not None:
        counts["missed_max_k"] = (s.draft_shape.max_k, MAX_K_LIMIT)
    bad += [n for n, (v, top) in counts.items() if not 0 <= v <= top]
    if len(rec.acceptance) > MAX_CLASSES:
        bad.append("acceptance (classes)")
    for klass, (tested, accepted) in rec.acceptance.items():
        if (len(klass) > 64 or len(tested) > MAX_K_LIMIT or len(accepted) > len(tested)
                or any(not 0 <= a <= t for a, t in zip(accepted, tested, strict=False))):
            bad.append(f"acceptance[{klass[:64]!r}]")
            break
    if bad:
        raise BadRecord(f"step record out of range: {', '.join(bad)}")


def _finite_or_none(text: str | None) -> float | None:
    if text is None:
        return None
    value = float(text)
    return value if math.isfinite(value) else None
