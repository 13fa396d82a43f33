"""ControllerSettings: how the controller is configured (env prefix SMARTSPEC_CONTROLLER_)."""

from __future__ import annotations

import os
import socket

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_name() -> str:
    return f"controller/{socket.gethostname()}-{os.getpid()}"


class ControllerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SMARTSPEC_CONTROLLER_", extra="ignore")

    service: str = Field("smartspec", description="service name in the Redis keys smartspec:{service}:…")
    redis_url: str = Field("redis://127.0.0.1:6379", description="redis://[user@]host:port (or rediss://)")
    redis_password_file: str | None = Field(None, description="file holding the Redis password (a mounted Secret)")
    redis_tls_dir: str | None = Field(
        None, description="for a rediss:// URL: directory with ca.crt (and tls.crt/tls.key where Redis wants a "
        "client certificate); none: the system's CAs")
    host: str = "127.0.0.1"
    http_port: int = Field(8090, ge=0, le=65535, description="/metrics, /health, /policy, /status (0: any free port)")
    otlp_port: int = Field(4317, ge=0, le=65535, description="OTLP gRPC receiver for the targets' metrics (0: any)")
    otlp_token_file: str | None = Field(
        None, description="tokens an OTLP sender (a target) must present, one per line (a mounted Secret); without "
        "one the receiver serves only on a loopback host")
    allow_unauthenticated: bool = Field(False, description="receive OTLP on a non-loopback host without tokens")
    tls_dir: str | None = Field(
        None, description="directory with tls.crt, tls.key and ca.crt (a kubernetes.io/tls Secret): the OTLP "
        "receiver serves mutual TLS only, senders need a certificate from ca.crt; none: plaintext")
    name: str = Field(default_factory=_default_name, description="decided_by in published policies")
    consumer_group: str = Field("smartspec-controller", description="Redis consumer group on the step stream")
    consumer: str = Field(default_factory=socket.gethostname,
                          description="this controller's consumer name in the group (stable across restarts)")
    interval_s: float = Field(1.0, gt=0, description="how often to decide (the slow loop)")
    cost_model: str = Field("default", description="starting cost model: default, a preset, or a JSON file")
    fit_window: int = Field(2000, ge=16, description="most recent steps the cost model is fitted on")
    min_fit_samples: int = Field(40, ge=8, description="steps needed before the first fit")
    fit_ridge: float = Field(1e-5, ge=0, description="pull of each refit toward the model in force")
    holdout_fraction: float = Field(0.25, gt=0, lt=0.9, description="share of steps kept out of the fit to judge it")
    load_window_s: float = Field(5.0, gt=0, description="recent seconds that define the current load")
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64],
                                   description="batch sizes in the recommended-k table")
    refresh_fraction: float = Field(0.3, gt=0, lt=1, description="republish after this fraction of the expiry")
