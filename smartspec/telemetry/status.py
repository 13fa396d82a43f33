"""The controller's status: what it writes to `smartspec:{service}:status` after every decision.

One schema for the writer (the controller) and every reader (the operator's CR status, `smartspec
policy show`). The status is a report, never an instruction: a value that is missing, too large,
half-written or from a foreign writer reads as "no decision" (None), never as an error that stops
a reader. Fields a newer controller adds are ignored by older readers.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from smartspec.telemetry.keys import SCHEMA_VERSION

MAX_STATUS_BYTES = 256 * 1024  # a status lists replicas and OTLP instances: far below this in practice


class _Report(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


class FitReport(_Report):
    """The controller's last cost-model fit: adopted or not, and why, from held-out steps."""

    adopted: bool
    reason: str = ""
    holdout_r2: float | None = None
    r2_in_force: float | None = None
    holdout_error: float | None = None
    error_in_force: float | None = None


class CostModelReport(_Report):
    name: str
    r2: float | None = None
    samples: int = 0
    last_fit: FitReport | None = None


class LoadReport(_Report):
    """The recent load and the k recommended at it (reported here, never in the policy document)."""

    batch_size: float
    k: int


class ControllerStatus(_Report):
    schema_version: int = SCHEMA_VERSION
    service: str = ""
    decided_by: str = ""
    decided_at: float  # unix seconds of the decision this status reports
    policy_version: int = 0
    mode: str = ""
    max_k: int = 0
    spec_error: str | None = None  # the policy spec in Redis is invalid: the last valid one stays in force
    publish_error: str | None = None  # the controller cannot publish (e.g. a version it may not exceed)
    measured_goodput: float | None = None
    predicted_goodput: float | None = None
    mean_k: float | None = None
    mean_batch_size: float | None = None
    current: LoadReport | None = None
    recommended_k: dict[str, int] = Field(default_factory=dict)  # batch size -> k
    cost_model: CostModelReport | None = None
    replicas: list[str] = Field(default_factory=list)  # replicas with a step record in the last 30 s
    telemetry_age_s: float | None = None
    records: int = 0  # step records the controller has read
    otlp_instances: list[str] = Field(default_factory=list)

    def to_json(self) -> str:
        return self.model_dump_json()


def parse_status(raw: str | bytes | None) -> ControllerStatus | None:
    """The status in `raw`, or None for nothing, an oversized value, or one that is not a status."""
    if raw is None or len(raw) > MAX_STATUS_BYTES:
        return None
    try:
        return ControllerStatus.model_validate_json(raw)
    except ValidationError:
        return None
