"""DraftSettings: how the draft service is configured (env prefix SMARTSPEC_DRAFT_)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from smartspec.policy.limits import MAX_K_LIMIT


class DraftSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SMARTSPEC_DRAFT_", extra="ignore")

    method: Literal["draftModel", "ngram"] = Field("draftModel", description="draft model or n-gram prompt lookup")
    model: str | None = Field(None, description="draft model folder (method draftModel)")
    tokenizer: str | None = Field(None, description="tokenizer folder to fingerprint (method ngram, optional)")
    model_id: str | None = Field(None, description="name reported by GetInfo (default: the folder name)")
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    host: str = "127.0.0.1"
    port: int = Field(50061, ge=0, le=65535, description="gRPC port (0: any free port)")
    max_sequences: int = Field(64, ge=1, description="sequences with draft KV at once (all streams)")
    max_len: int = Field(4096, ge=16, description="tokens per sequence, drafts included")
    max_k: int = Field(8, ge=1, le=MAX_K_LIMIT, description="most draft tokens per sequence per step")
    q_top_k: int = Field(64, ge=1, description="support of the q sent per draft token when sampling")
    head_vocab: int | None = Field(
        None, ge=1, description="draft only among the first N token ids (BPE merge order, roughly by frequency) and "
        "the end-of-sequence ids: a smaller LM head per draft token; ids left out are never drafted (outputs are "
        "unchanged, acceptance may drop); none: the whole vocabulary")
    quant: Literal["int8"] | None = Field(
        None, description="store the draft's Linear weights as int8 rows with a scale per output channel (a CPU "
        "draft reads half the bytes per token; outputs are unchanged, acceptance may drop); none: the dtype's")
    cpu_kernels: Literal["auto", "on", "off"] = Field(
        "auto", description="bf16 Linear layers through smartspec's AVX2 kernel on CPUs without bf16 arithmetic, "
        "so a k-token verify no longer costs k forwards (smartspec/engine/cpu_bf16.py; auto: where it is built)")
    graphs: Literal["auto", "on", "off"] = Field(
        "auto", description="draft greedy requests as one replayed graph chain (auto: on CUDA)")
    auth_token_file: str | None = Field(
        None, description="file of tokens a caller (the target) must present, one per line (a mounted Secret); "
        "without one the draft serves only on a loopback host")
    allow_unauthenticated: bool = Field(False, description="serve a non-loopback host without tokens")
    tls_dir: str | None = Field(
        None, description="directory with tls.crt, tls.key and ca.crt (a kubernetes.io/tls Secret, e.g. from "
        "cert-manager): serve mutual TLS only, callers need a certificate from ca.crt; none: plaintext")
    ngram_max: int = Field(4, ge=1)
    ngram_min: int = Field(2, ge=1)

    @model_validator(mode="after")
    def _model_needed(self) -> DraftSettings:
        if self.method == "draftModel" and not self.model:
            raise ValueError("method draftModel needs `model` (SMARTSPEC_DRAFT_MODEL or --model)")
        return self
