"""One request from the API's point of view: submit, detokenise incrementally, stop strings, usage.

Shared by the HTTP and gRPC front ends. Leaving the iterator early (client gone) cancels the
request in the engine, which frees its target slot and its draft state.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from smartspec.engine.sampling import SamplingParams
from smartspec.engine.scheduler import RequestSpec
from smartspec.errors import InvalidRequest
from smartspec_target.engine_loop import Delta, EngineLoop

MAX_STOP_STRINGS, MAX_STOP_CHARS = 16, 256


@dataclass(frozen=True)
class GenerationRequest:
    prompt_ids: list[int]
    params: SamplingParams
    stop: tuple[str, ...] = ()
    spec: RequestSpec = field(default_factory=RequestSpec)

    def __post_init__(self) -> None:
        # Every step matches each stop string against the new text: bound their number and length.
        if len(self.stop) > MAX_STOP_STRINGS:
            raise InvalidRequest(f"at most {MAX_STOP_STRINGS} stop strings (got {len(self.stop)})", param="stop")
        longest = max(map(len, self.stop), default=0)
        if longest > MAX_STOP_CHARS:
            raise InvalidRequest(f"a stop string has at most {MAX_STOP_CHARS} characters (got {longest})",
                                 param="stop")


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int = 0
    draft_tokens: int = 0
    accepted_tokens: int = 0
    steps: int = 0
    mean_k: float = 0.0
    acceptance_emulated: bool = False  # experiments only: the text is not the target's (see engine/emulation.py)

    @property
    def acceptance_rate(self) -> float | None:
        return self.accepted_tokens / self.draft_tokens if self.draft_tokens else None

    def openai(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "speculation": {
                "draft_tokens": self.draft_tokens,
                "accepted_tokens": self.accepted_tokens,
                "acceptance_rate": self.acceptance_rate,
                "mean_k": self.mean_k,
                **({"acceptance_emulated": True} if self.acceptance_emulated else {}),
            },
        }


@dataclass
class Chunk:
    text: str  # new visible text
    token_ids: list[int]
    finish_reason: str | None
    usage: Usage


class IncrementalDetokenizer:
    """Decodes a growing token list into text deltas, never cutting a multi-byte character."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] decode to text already handed out (kept as context)
        self.read = 0

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True))

    def push(self, token_ids: list[int], final: bool = False) -> str:
        self.ids.extend(token_ids)
        before = self._decode(self.ids[self.prefix : self.read])
        after = self._decode(self.ids[self.prefix :])
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            self.prefix, self.read = self.read, len(self.ids)
            return after[len(before) :]
        return ""


class StopStrings:
    """Holds back text that could still become a stop string; cuts the output at the first one."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.text = ""
        self.sent = 0

    def push(self, delta: str, final: bool) -> tuple[str, bool]:
        """(text safe to send now, whether a stop string was hit)."""
        self.text += delta
        if self.stops:
            start = max(0, self.sent - max(len(s) for s in self.stops))
            hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
            if hits:
                end = min(hits)
                out, self.sent = self.text[self.sent : end], end
                return out, True
        end = len(self.text) if final else self._safe_end()
        out, self.sent = self.text[self.sent : end], max(self.sent, end)
        return out, False

    def _safe_end(self) -> int:
        # Keep back the longest tail that is a proper prefix of some stop string.
        hold = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.text)), 0, -1):
                if self.text.endswith(s[:n]):
                    hold = max(hold, n)
                    break
        return len(self.text) - hold


async def generate(engine: EngineLoop, tokenizer: Any, req: GenerationRequest) -> AsyncGenerator[Chunk, None]:
    """Submit and stream; raises the engine's error before the first chunk if the request is refused."""
    handle = await engine.submit(req.prompt_ids, req.params, req.spec)
    usage = Usage(prompt_tokens=len(req.prompt_ids),
                  acceptance_emulated=engine.scheduler.engine.emulator is not None)
    detok = IncrementalDetokenizer(tokenizer)
    stops = StopStrings(req.stop)
    finished = False
    try:
        async for delta in handle.stream():
            _account(usage, delta)
            final = delta.finish_reason is not None
            text, hit = stops.push(detok.push(delta.token_ids, final=final), final=final)
            if hit:
                finished = True
                engine.cancel(handle.seq_id)  # stop drafting and verifying beyond the stop string
                yield Chunk(text, delta.token_ids, "stop", usage)
                return
            reason = None if not final else ("length" if delta.finish_reason == "length" else "stop")
            if final:
                finished = True
            yield Chunk(text, delta.token_ids, reason, usage)
            if final:
                return
    finally:
        if not finished:  # the consumer went away (client disconnect): free the request's slots
            engine.cancel(handle.seq_id)


def _account(usage: Usage, delta: Delta) -> None:
    usage.completion_tokens += len(delta.token_ids)
    usage.draft_tokens = delta.draft_tokens
    usage.accepted_tokens = delta.accepted_tokens
    usage.steps = delta.steps
    usage.mean_k = delta.k_sum / delta.k_steps if delta.k_steps else 0.0
