"""The two JSON documents of the control plane: the operator's PolicySpec and the controller's PolicyDocument.

`PolicySpec` is a `SpeculationPolicy` CR's spec (camelCase, as in the CRD) that the operator writes
to `smartspec:{service}:policy-spec`; `PolicyDocument` is what the controller publishes to
`smartspec:{service}:policy` and every target validates before it swaps it in.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from smartspec.policy.cost_model import PRESETS, CostModel
from smartspec.policy.limits import MAX_DOCUMENT_BYTES, MAX_K_LIMIT, MAX_POLICY_EXPIRY_S, MAX_POLICY_VERSION
from smartspec.policy.modes import Mode
from smartspec.telemetry.keys import SCHEMA_VERSION

MAX_ACCEPTANCE_CLASSES = 64  # prompt classes with their own pooled acceptance; a real service has a handful

# Fields older controllers published in the document; the status key carries them now (a change of
# the recommended k per batch size is not a new policy). Dropped on parsing, so those documents stay valid.
_MOVED_TO_STATUS = ("recommended_k", "current")


class _Strict(BaseModel):
    # No NaN/Infinity: a document with `expires_at: Infinity` would never expire.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class AcceptanceSpec(_Strict):
    window: int = Field(2000, ge=10, le=1_000_000, description="recent steps pooled for the acceptance estimate")
    prior: float = Field(0.9, gt=0.0, lt=1.0, description="conditional acceptance assumed before any data")


class CostModelSpec(_Strict):
    source: Literal["online", "preset", "coefficients"] = "online"
    preset: str | None = None
    coefficients: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> CostModelSpec:
        if self.source == "preset" and self.preset not in (*PRESETS, "default"):
            raise ValueError(f"costModel.preset must be one of default, {', '.join(PRESETS)}; got {self.preset!r}")
        if self.source == "coefficients":
            if not self.coefficients:
                raise ValueError("costModel.source 'coefficients' needs costModel.coefficients")
            CostModel.from_dict(self.coefficients)  # raises with the offending key
        return self


class OverrideSpec(_Strict):
    allowed: bool = True


class PolicySpec(_Strict):
    """What an operator asks for (the `SpeculationPolicy` spec)."""

    schema_version: int = Field(SCHEMA_VERSION, alias="schemaVersion")
    mode: Mode = "goodput"
    max_k: int = Field(8, ge=0, le=MAX_K_LIMIT, alias="maxSpeculationLength")
    fixed_k: int = Field(3, ge=0, le=MAX_K_LIMIT, alias="fixedSpeculationLength")
    hysteresis: float = Field(1.1, ge=1.0, le=10.0)
    acceptance: AcceptanceSpec = Field(default_factory=lambda: AcceptanceSpec.model_validate({}))
    cost_model: CostModelSpec = Field(default_factory=lambda: CostModelSpec(), alias="costModel")
    per_request_override: OverrideSpec = Field(default_factory=lambda: OverrideSpec(), alias="perRequestOverride")
    expiry_s: int = Field(30, ge=2, le=MAX_POLICY_EXPIRY_S, alias="policyExpirySeconds")

    @model_validator(mode="after")
    def _bounds(self) -> PolicySpec:
        if self.schema_version != SCHEMA_VERSION:
            raise ValueError(f"schemaVersion {self.schema_version} is not supported (this is {SCHEMA_VERSION})")
        if self.fixed_k > self.max_k and "fixed_k" not in self.model_fields_set:
            self.fixed_k = self.max_k  # only the default exceeds K: follow K down
        if self.fixed_k > self.max_k:
            raise ValueError(f"fixedSpeculationLength ({self.fixed_k}) must be <= maxSpeculationLength ({self.max_k})")
        return self


class GoodputReport(_Strict):
    measured: float | None = None  # emitted tokens per engine-second over the recent window
    predicted: float | None = None  # what the published model expects for the same steps


class PolicyDocument(_Strict):
    """What the controller publishes; targets apply it between two steps."""

    schema_version: int = SCHEMA_VERSION
    service: str = Field(..., min_length=1, max_length=253)
    version: int = Field(..., ge=1, le=MAX_POLICY_VERSION)
    mode: Mode
    max_k: int = Field(..., ge=0, le=MAX_K_LIMIT)
    fixed_k: int = Field(..., ge=0, le=MAX_K_LIMIT)
    hysteresis: float = Field(..., ge=1.0, le=10.0)
    per_request_override: bool = True
    cost_model: dict[str, Any]
    # False while the spec asks for the online fit and the controller has fitted nothing yet: `cost_model` is
    # then only its starting guess, and a target keeps its own (start-up calibrated, locally refitted) one.
    cost_model_fitted: bool = True
    acceptance_prior: dict[str, list[float]] = Field(default_factory=dict)
    goodput: GoodputReport = Field(default_factory=lambda: GoodputReport())
    issued_at: float = Field(..., ge=0)
    expires_at: float
    decided_by: str = Field(..., max_length=253)

    @model_validator(mode="before")
    @classmethod
    def _drop_moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(k in data for k in _MOVED_TO_STATUS):
            return {k: v for k, v in data.items() if k not in _MOVED_TO_STATUS}
        return data

    @field_validator("schema_version")
    @classmethod
    def _schema(cls, v: int) -> int:
        if v != SCHEMA_VERSION:
            raise ValueError(f"policy schema_version {v} is not supported (this is {SCHEMA_VERSION})")
        return v

    @field_validator("acceptance_prior")
    @classmethod
    def _rates(cls, v: dict[str, list[float]]) -> dict[str, list[float]]:
        if len(v) > MAX_ACCEPTANCE_CLASSES:
            raise ValueError(f"at most {MAX_ACCEPTANCE_CLASSES} acceptance classes, got {len(v)}")
        for klass, rates in v.items():
            if len(rates) > MAX_K_LIMIT or len(klass) > 64:
                raise ValueError(f"acceptance_prior[{klass[:64]!r}]: class names of at most 64 characters, "
                                 f"at most {MAX_K_LIMIT} positions")
            if not rates or any(not 0.0 <= r <= 1.0 for r in rates):
                raise ValueError(f"acceptance_prior[{klass!r}] must be a non-empty list of rates in [0, 1]")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> PolicyDocument:
        if self.fixed_k > self.max_k:
            raise ValueError(f"fixed_k ({self.fixed_k}) must be <= max_k ({self.max_k})")
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at must be after issued_at")
        if self.expires_at - self.issued_at > MAX_POLICY_EXPIRY_S:
            raise ValueError(f"a policy lives at most {MAX_POLICY_EXPIRY_S} s (expires_at - issued_at)")
        self.model_cost()  # a document whose cost model does not load is invalid
        return self

    def model_cost(self) -> CostModel:
        return CostModel.from_dict(self.cost_model)

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires_at

    @property
    def r2(self) -> float | None:
        r2 = self.cost_model.get("r2")
        return None if r2 is None else float(r2)


def default_spec() -> PolicySpec:
    """The spec in force when the operator has written none."""
    return PolicySpec.model_validate({})


def parse_document(raw: str | bytes) -> PolicyDocument:
    """Validate a published policy; raises ValueError with pydantic's field-by-field reason."""
    _bounded(raw, "policy document")
    try:
        return PolicyDocument.model_validate_json(raw)
    except ValidationError as exc:
        raise ValueError(f"invalid policy document: {_reasons(exc)}") from None


def parse_spec(raw: str | bytes | dict[str, Any]) -> PolicySpec:
    if not isinstance(raw, dict):
        _bounded(raw, "policy spec")
    try:
        if isinstance(raw, dict):
            return PolicySpec.model_validate(raw)
        return PolicySpec.model_validate_json(raw)
    except ValidationError as exc:
        raise ValueError(f"invalid policy spec: {_reasons(exc)}") from None


def _reasons(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(document)'}: {e['msg']}" for e in exc.errors())


def _bounded(raw: str | bytes, what: str) -> None:
    # Checked before parsing: a document planted in Redis must not cost a parse of megabytes every poll.
    size = len(raw) if isinstance(raw, bytes) else len(raw.encode())
    if size > MAX_DOCUMENT_BYTES:
        raise ValueError(f"invalid {what}: {size} bytes, more than the {MAX_DOCUMENT_BYTES} a {what} may have")
