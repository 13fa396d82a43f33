"""TargetSettings: how the target service is configured (env prefix SMARTSPEC_TARGET_)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, PositiveInt
from pydantic_settings import BaseSettings, SettingsConfigDict

from smartspec.policy.limits import MAX_K_LIMIT
from smartspec.policy.modes import Mode


class TargetSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SMARTSPEC_TARGET_", extra="ignore")

    model: str = Field(..., description="target model folder")
    served_model_name: str | None = Field(None, description="the `model` clients send (default: folder name)")
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    host: str = "127.0.0.1"
    http_port: int = Field(8000, ge=0, le=65535, description="OpenAI-compatible HTTP API (0: any free port)")
    grpc_port: int = Field(50051, ge=0, le=65535, description="gRPC Generate (0: any free port)")
    draft_address: str | None = Field(None, description="host:port of the draft service; none: no speculation")
    draft_deadline_s: float = Field(5.0, gt=0, description="longest a step ever waits for drafts before k = 0")
    draft_deadline_factor: float = Field(
        2.0, ge=1.0, description="a step waits for drafts this many times the time the cost model predicts for them")
    draft_deadline_floor_s: float = Field(0.25, gt=0, description="... but never less than this")
    draft_token_file: str | None = Field(
        None, description="file whose first line is the token presented to the draft service (a mounted Secret)")
    tls_dir: str | None = Field(
        None, description="directory with tls.crt, tls.key and ca.crt (a kubernetes.io/tls Secret, e.g. from "
        "cert-manager): mutual TLS to the draft; none: plaintext")
    draft_connect_timeout_s: float = Field(30.0, ge=0, description="wait this long for the draft at startup")
    draft_backoff_max_s: float = Field(5.0, gt=0, description="longest wait between draft reconnect attempts")
    max_batch_size: int = Field(32, ge=1, description="running requests at most (KV slots)")
    max_len: int = Field(4096, ge=16, description="tokens per request (prompt + output)")
    max_prefill_tokens: int | None = Field(None, ge=1, description="prompt tokens prefilled per step")
    cpu_kernels: Literal["auto", "on", "off"] = Field(
        "auto", description="bf16 Linear layers through smartspec's AVX2 kernel on CPUs without bf16 arithmetic, "
        "so a k-token verify no longer costs k forwards (smartspec/engine/cpu_bf16.py; auto: where it is built)")
    graphs: Literal["auto", "on", "off"] = Field(
        "auto", description="replay verify steps as captured graphs (auto: on CUDA); prefill and shapes past the "
        "largest bucket run eagerly")
    graph_batch_sizes: list[PositiveInt] = Field(
        [1, 2, 4, 8, 16, 24, 32, 48, 64], min_length=1, description="batch sizes that get a graph (a batch runs in "
        "the smallest that holds it)")
    graph_kv_sizes: list[PositiveInt] = Field([256, 512, 1024, 2048, 4096], min_length=1,
                                      description="KV lengths that get a graph (per request, rounded up)")
    policy: Mode = "goodput"
    max_k: int = Field(8, ge=0, le=MAX_K_LIMIT)
    fixed_k: int = Field(3, ge=0, le=MAX_K_LIMIT)
    hysteresis: float = Field(1.1, ge=1.0)
    cost_model: str = Field("default", description="default, a preset name, or a JSON coefficients file")
    calibrate_s: float = Field(
        45.0, ge=0, description="before serving, time steps at k = 0 … K for up to this long and start from the "
        "cost model fitted to them (only with the default cost model and a connected draft; 0: off)")
    emulate_acceptance: float | None = Field(
        None, ge=0.0, le=1.0, description="EXPERIMENTS ONLY: accept each draft token with this probability instead "
        "of comparing with the target (outputs are then not the target's; responses say so)")
    drain_timeout_s: float = Field(600.0, ge=0, description="on SIGTERM, wait this long for running requests")
    # -- the edge: who may call, and how much
    api_key_file: str | None = Field(
        None, description="file of accepted API keys, one per line (a mounted Secret); /v1/* then needs "
        "'Authorization: Bearer <key>'. Without one the target serves only on a loopback host")
    allow_unauthenticated: bool = Field(
        False, description="serve /v1/* without API keys on a non-loopback host (behind your own gateway)")
    max_body_bytes: int = Field(1 << 20, ge=1024, description="largest request body; larger ones get 413")
    max_queue: int = Field(256, ge=0, description="requests waiting for a KV slot at most; more get 429 + Retry-After")
    max_connections: int = Field(2048, ge=16, description="open HTTP connections at most; more get 503 at once")
    header_timeout_s: float = Field(10.0, gt=0, description="a request's headers must arrive within this")
    body_timeout_s: float = Field(30.0, gt=0, description="a request's body must arrive within this (408)")
    # -- control plane (ARCHITECTURE.md §5): all optional; without them the target runs on its local default
    service: str = Field("smartspec", description="service name in the Redis keys smartspec:{service}:…")
    replica: str | None = Field(None, description="this replica's name in step records (default hostname-pid)")
    redis_url: str | None = Field(None, description="redis://[user@]host:port (or rediss://); step records out, "
                                  "policy in. No password here: it would land in ConfigMaps and logs")
    redis_password_file: str | None = Field(None, description="file holding the Redis password (a mounted Secret)")
    redis_tls_dir: str | None = Field(
        None, description="for a rediss:// URL: directory with ca.crt (and tls.crt/tls.key where Redis wants a "
        "client certificate); none: the system's CAs")
    steps_stream_maxlen: int = Field(100_000, ge=100, description="cap (approximate) of the step-record stream")
    telemetry_buffer: int = Field(10_000, ge=10, description="records held while Redis is slow or down")
    policy_poll_s: float = Field(1.0, gt=0, description="also re-read the policy key this often (pub/sub is primary)")
    otlp_endpoint: str | None = Field(None, description="host:port of an OTLP gRPC receiver for metrics and traces")
    otlp_interval_s: float = Field(5.0, gt=0, description="OTLP metric export period")
    otlp_tls_dir: str | None = Field(
        None, description="like tls_dir, for the OTLP receiver (the controller takes the same directory as the "
        "draft; a collector of your own, its own); none: plaintext")
    otlp_token_file: str | None = Field(
        None, description="file whose first line is the token presented to the OTLP receiver (a mounted Secret)")
