"""The SpeculativeService spec as typed models (the CRD's schema, defaults included, in pydantic)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

GROUP = "smartspec.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
SERVICES = "speculativeservices"
POLICIES = "speculationpolicies"
DEFAULT_POLICY = "default"


class _Spec(BaseModel):
    # Unknown fields are refused: the API server prunes them, so seeing one means the CRD and this model drifted.
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ModelRef(_Spec):
    name: str = Field(..., min_length=1, max_length=253)
    # A model folder: the images load weights offline, so hub ids are not accepted here.
    uri: str = Field(..., pattern=r"^(pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?|/.+)$")

    @property
    def location(self) -> str:
        return self.uri


class Resources(_Spec):
    requests: dict[str, int | str] = Field(default_factory=dict)
    limits: dict[str, int | str] = Field(default_factory=dict)


class EnvVar(_Spec):
    name: str = Field(..., min_length=1)
    value: str | None = None
    value_from: dict[str, Any] | None = Field(None, alias="valueFrom")


class _Pod(_Spec):
    replicas: int = Field(1, ge=0, le=128)
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    # Replay fixed-shape steps as captured CUDA graphs (engine/graph_runner.py); auto: on where the pod has CUDA.
    graphs: Literal["auto", "on", "off"] = "auto"
    image: str | None = None
    resources: Resources = Field(default_factory=lambda: Resources.model_validate({}))
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list)


class TargetSpec(_Pod):
    model: ModelRef
    max_batch_size: int = Field(32, ge=1, le=1024, alias="maxBatchSize")
    max_len: int = Field(4096, ge=16, le=1_048_576, alias="maxLen")


class DraftSpec(_Pod):
    method: Literal["draftModel", "ngram"] = "draftModel"
    model: ModelRef | None = None

    @model_validator(mode="after")
    def _model_needed(self) -> DraftSpec:
        if self.method == "draftModel" and self.model is None:
            raise ValueError("draft.method draftModel needs draft.model")
        return self


class PolicyRef(_Spec):
    name: str = Field(DEFAULT_POLICY, min_length=1, max_length=253)


class RedisSpec(_Spec):
    url: str | None = Field(None, pattern=r"^rediss?://")


class TelemetrySpec(_Spec):
    otlp_endpoint: str | None = Field(None, alias="otlpEndpoint", pattern=r"^[^/]+:[0-9]+$")


class ControllerSpec(_Spec):
    image: str | None = None
    resources: Resources = Field(default_factory=lambda: Resources.model_validate({}))


class AuthSpec(_Spec):
    # A Secret in the service's namespace whose key `api-keys` lists the accepted keys, one per line; without
    # one the operator generates a key into the service's own `<name>-auth` Secret.
    api_key_secret: str | None = Field(None, alias="apiKeySecret", min_length=1, max_length=253,
                                       pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class TlsSpec(_Spec):
    # Mutual TLS between the service's parts. Without secret_name the operator issues the service its own CA
    # and certificate (Secret `<name>-tls`); with one, a kubernetes.io/tls Secret (tls.crt, tls.key, ca.crt),
    # e.g. a cert-manager Certificate's, naming `<name>-draft` and `<name>-controller`.
    enabled: bool = True
    secret_name: str | None = Field(None, alias="secretName", min_length=1, max_length=253,
                                    pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class ServiceSpec(_Spec):
    target: TargetSpec
    draft: DraftSpec | None = None
    policy_ref: PolicyRef = Field(default_factory=lambda: PolicyRef.model_validate({}), alias="policyRef")
    redis: RedisSpec = Field(default_factory=lambda: RedisSpec.model_validate({}))
    telemetry: TelemetrySpec = Field(default_factory=lambda: TelemetrySpec.model_validate({}))
    controller: ControllerSpec = Field(default_factory=lambda: ControllerSpec.model_validate({}))
    auth: AuthSpec = Field(default_factory=lambda: AuthSpec.model_validate({}))
    tls: TlsSpec = Field(default_factory=lambda: TlsSpec.model_validate({}))


def parse_service_spec(spec: dict[str, Any]) -> ServiceSpec:
    """Validate a SpeculativeService spec; ValueError names each offending field."""
    try:
        return ServiceSpec.model_validate(spec)
    except ValidationError as exc:
        reasons = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"invalid SpeculativeService spec: {reasons}") from None
