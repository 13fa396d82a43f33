"""Request bodies of the OpenAI-compatible endpoints (strict types; unknown fields ignored)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

_UNSUPPORTED = ("logprobs", "top_logprobs", "echo", "suffix", "tools", "tool_choice", "functions", "function_call",
                "logit_bias", "presence_penalty", "frequency_penalty", "repetition_penalty", "prediction", "audio",
                "guided_json", "guided_regex", "guided_choice", "guided_grammar")


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

    model: str = Field(max_length=256)
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
    user: str | None = Field(None, max_length=256)

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
        # Set to anything but their "off" value these change what comes back; refusing beats ignoring them.
        for name in _UNSUPPORTED:
            if extra.get(name) not in (None, False, 0, 0.0, "", [], {}, "none"):
                return name, f"{name} is not supported by this server"
        fmt = extra.get("response_format")
        if fmt not in (None, {"type": "text"}):
            return "response_format", "response_format: only {\"type\": \"text\"} is supported by this server"
        if extra.get("modalities") not in (None, ["text"]):
            return "modalities", "modalities: only [\"text\"] is supported by this server"
        return None


class CompletionRequest(CommonParams):
    prompt: str | list[str] | list[int]


class TextPart(BaseModel):
    """A content part; only text is served (images, audio and files are refused with the part's type)."""

    model_config = ConfigDict(strict=True, extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[TextPart]

    @property
    def text(self) -> str:
        # The parts of one message are one text, as OpenAI's own models see them.
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(CommonParams):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
