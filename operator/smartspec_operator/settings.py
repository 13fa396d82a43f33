"""OperatorSettings: how the operator is configured (env prefix SMARTSPEC_OPERATOR_)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from smartspec import __version__


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SMARTSPEC_OPERATOR_", extra="ignore")

    kube_url: str | None = Field(None, description="API server URL without auth (tests, kubectl proxy); "
                                                    "none: in-cluster service account, then kubeconfig")
    namespaces: str = Field("", description="comma-separated namespaces to watch; empty: all namespaces")
    redis_url: str = Field("redis://smartspec-redis:6379",
                           description="Redis for services whose spec has no redis.url (the chart's in-chart Redis)")
    redis_password_file: str | None = Field(
        None, description="the default Redis's admin password (a mounted Secret). With it, each service gets its own "
        "Redis user that can touch only smartspec:{service}:* keys and channels")
    # The tags scripts/build_images.sh gives the images (the chart passes its own, from its appVersion).
    target_image: str = Field(f"smartspec/target:{__version__}", description="default target image")
    draft_image: str = Field(f"smartspec/draft:{__version__}", description="default draft image")
    controller_image: str = Field(f"smartspec/controller:{__version__}", description="default controller image")
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    image_pull_secrets: str = Field("", description="comma-separated Secret names for the pods the operator creates")
    status_interval_s: float = Field(10.0, gt=0, description="how often each service's status is refreshed")
    converge_interval_s: float = Field(60.0, gt=0, description="how often each service's objects and policy spec "
                                       "are re-checked against its spec even when nothing changed (level trigger)")
    telemetry_stale_s: float = Field(30.0, gt=0, description="controller status older than this: Degraded")
    allowed_images: str = Field(
        "", description="comma-separated images a SpeculativeService may name (an entry ending in / allows every "
        "image under it); the default images are always allowed")
    allow_env_from_secrets: bool = Field(
        False, description="let a SpeculativeService's env read Secrets (valueFrom.secretKeyRef)")
    network_policies: bool = Field(True, description="give each service NetworkPolicies: its draft and its "
                                   "controller's OTLP port accept only its own targets")
    health_host: str = "0.0.0.0"
    health_port: int = Field(8080, ge=0, le=65535, description="liveness endpoint /healthz (0: off)")
    request_timeout_s: float = Field(10.0, gt=0, description="one Kubernetes API request at most")

    def watched_namespaces(self) -> list[str]:
        return _names(self.namespaces)

    def pull_secrets(self) -> list[str]:
        return _names(self.image_pull_secrets)

    def allowed_image_prefixes(self) -> list[str]:
        return [self.target_image, self.draft_image, self.controller_image, *_names(self.allowed_images)]


def _names(csv: str) -> list[str]:
    return [n.strip() for n in csv.split(",") if n.strip()]
