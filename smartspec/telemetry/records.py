"""The step record: what a target writes to `smartspec:{service}:steps` for every engine step.

Redis stream entries are flat string maps, so lists and maps travel as JSON. Fields:
v (schema), ts (unix s), replica, step, batch_size, num_prefills, prefill_tokens, sum_k, max_k,
context_tokens, draft_catchup_tokens, proposed_per_pos / accepted_per_pos (JSON lists, position
0 = first draft), acceptance (JSON {class: [tested per pos, accepted per pos]}), emitted,
draft_s, verify_s, overhead_s, decision_s, policy_version; and, optional (older targets omit them):
prefill_padded_tokens, pending_catchup_tokens (Σ context the draft had not seen), draft_deadline_s,
missed_max_k / missed_sum_k (the drafts asked for when they missed the deadline; 0 otherwise) and
predicted_step_s (what the policy's cost model expected).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from smartspec.policy.cost_model import StepSample
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
    "predicted_step_s", "calibration",
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


def decode(fields: Mapping[str | bytes, str | bytes]) -> StepRecord:
    raw: dict[str, Any] = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
                           for k, v in fields.items()}
    if raw.get("v") != str(SCHEMA_VERSION):
        raise BadRecord(f"step record schema {raw.get('v')!r}, this code reads {SCHEMA_VERSION}")
    missing = [f for f in FIELDS if f not in raw]
    if missing:
        raise BadRecord(f"step record lacks {missing}")
    try:
        acceptance = json.loads(raw["acceptance"])
        return StepRecord(
            ts=float(raw["ts"]), replica=raw["replica"], step=int(raw["step"]), batch_size=int(raw["batch_size"]),
            num_prefills=int(raw["num_prefills"]), emitted=int(raw["emitted"]), sum_k=int(raw["sum_k"]),
            max_k=int(raw["max_k"]), policy_version=int(raw["policy_version"]),
            acceptance={str(c): [[int(x) for x in v[0]], [int(x) for x in v[1]]] for c, v in acceptance.items()},
            sample=StepSample.from_record(raw),
            predicted_step_s=_finite_or_none(raw.get("predicted_step_s")),
            pending_catchup_tokens=int(raw.get("pending_catchup_tokens", 0)),
            calibration=raw.get("calibration") == "1",
        )
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise BadRecord(f"malformed step record: {exc}") from None


def _finite_or_none(text: str | None) -> float | None:
    if text is None:
        return None
    value = float(text)
    return value if math.isfinite(value) else None
