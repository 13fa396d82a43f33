"""Request bodies of the OpenAI-compatible endpoints (strict types; unknown fields ignored)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Speculation(BaseModel):
    """smartspec's per-request extension: `"speculation": {"mode": "auto"|"off", "max_k": N}`."""

    model_config = ConfigDict(strict=True, extra="forbid")
    mode: Literal["auto", "off"] = "auto"
    max_k: int | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class CommonParams(BaseModel):
    # OpenAI clients send many optional fields; those we do not implement are ignored unless
    # setting them would change the result (see `unsupported`).
    model_config = ConfigDict(strict=True, extra="allow")

    model: str
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # extension (vLLM-style); 0 = off
    seed: int | None = None
    n: int = 1
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False  # extension, for benchmarks
    speculation: Speculation | None = None
    user: str | None = None

    def stop_strings(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def unsupported(self) -> tuple[str, str] | None:
        """(field, message) for a set field this server cannot honour."""
        extra = self.model_extra or {}
        if self.n != 1:
            return "n", f"n must be 1 (got {self.n}); this server returns one choice per request"
        for name in ("best_of",):
            if extra.get(name) not in (None, 1):
                return name, f"{name} is not supported"
        for name in ("logprobs", "top_logprobs", "echo", "suffix", "tools", "functions", "logit_bias"):
            if extra.get(name) not in (None, False, 0, "", [], {}):
                return name, f"{name} is not supported by this server"
        return None


class CompletionRequest(CommonParams):
    prompt: str | list[str] | list[int]


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]
    content: str


class ChatCompletionRequest(CommonParams):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
