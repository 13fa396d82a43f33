"""The request table every engine keeps (the real one and the simulator's): waiting, running, finished."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from smartspec.engine.sequence import SeqStatus
from smartspec.errors import InvalidRequest, UnknownSequence

if TYPE_CHECKING:
    from smartspec.engine.params import SamplingParams
    from smartspec.engine.sequence import Sequence


class RequestTable:
    """The request table every engine keeps (the real one and the simulator's): waiting, running, finished,
    and how a request enters and leaves it. Engines add their own checks, clock and resources."""

    def __init__(self) -> None:
        self.seqs: dict[int, Sequence] = {}
        self.waiting: deque[int] = deque()
        self.running: list[int] = []

    def _check_new(self, seq_id: int, prompt_ids: list[int], params: SamplingParams) -> None:
        params.validate()
        if seq_id in self.seqs:
            raise InvalidRequest(f"request id {seq_id} is already in use")
        if not prompt_ids:
            raise InvalidRequest("prompt is empty", param="prompt")

    def _enqueue(self, seq: Sequence) -> Sequence:
        self.seqs[seq.seq_id] = seq
        self.waiting.append(seq.seq_id)
        return seq

    def cancel(self, seq_id: int) -> None:
        """Stop a request now and free what the engine holds for it."""
        seq = self.seqs.get(seq_id)
        if seq is None or seq.finished:
            raise UnknownSequence(f"request {seq_id} is not running")
        if seq_id in self.waiting:
            self.waiting.remove(seq_id)
        self._finish(seq, "cancelled")

    def pop_finished(self, seq_id: int) -> Sequence:
        """Hand a finished request back to the caller and forget it."""
        seq = self.seqs[seq_id]
        if not seq.finished:
            raise ValueError(f"request {seq_id} has not finished")
        self._forget(seq_id)
        return self.seqs.pop(seq_id)

    @property
    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.status = SeqStatus.FINISHED
        seq.finish_reason = reason
        seq.stats.finish_s = self._now()
        if seq.seq_id in self.running:
            self.running.remove(seq.seq_id)
        self._release(seq)

    # -- what each engine supplies
    def _now(self) -> float:
        raise NotImplementedError

    def _release(self, seq: Sequence) -> None:
        """Free the engine's resources for a finished request (KV slots, draft state)."""

    def _forget(self, seq_id: int) -> None:
        """Drop per-request state kept beside `seqs` when the caller takes the request."""
