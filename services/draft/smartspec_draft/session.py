"""One Session stream's state: its sequences, their verdicts, and drafting through the shared proposer.

The draft keeps, per sequence, the token list the target has confirmed and the drafts it last
proposed. A Propose names how many of those drafts were accepted and the tokens the target emitted
after them; the draft rebuilds the confirmed list, checks it against `committed_len`, and drafts
again from it (the proposer reconciles its KV with the list itself). All sequences of one message
are drafted in one batched pass. Per-sequence problems are answered in-band with a status; they
never end the stream.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from smartspec.engine.proposers.base import Proposal, Proposer, ProposeRequest
from smartspec.engine.sampling import SamplingParams
from smartspec.policy.limits import cap_k
from smartspec.rpc import sampling_from_wire
from smartspec.v1 import common_pb2, draft_pb2

S = draft_pb2.SequenceStatus


@dataclass
class DraftCore:
    """The proposer all streams share (one model, one lock), with sequence ids unique across streams."""

    proposer: Proposer
    vocab_size: int | None  # None: any token id is fine (n-gram copies ids, it never embeds them)
    max_k: int
    max_sequences: int
    lock: threading.Lock = field(default_factory=threading.Lock)
    live: int = 0
    _ids: Any = field(default_factory=lambda: itertools.count(1))

    def new_id(self) -> int:
        return int(next(self._ids))


@dataclass
class _Seq:
    internal_id: int
    tokens: list[int]
    params: SamplingParams
    outstanding: list[int] = field(default_factory=list)


def sparse(q: torch.Tensor) -> list[common_pb2.SparseDist]:
    """The exact q rows as (support, probability) lists."""
    out = []
    for row in q:
        ids = torch.nonzero(row > 0).squeeze(-1)
        out.append(common_pb2.SparseDist(token_ids=ids.tolist(), probs=row[ids].tolist()))
    return out


class StreamSession:
    """Applies one stream's Admit / Propose / Release messages in order."""

    def __init__(self, core: DraftCore) -> None:
        self.core = core
        self.seqs: dict[int, _Seq] = {}
        self.stale_proposes = 0  # Proposes answered without drafts because their budget had passed

    def handle(self, req: draft_pb2.SessionRequest, received: float | None = None) -> draft_pb2.SessionResponse:
        """Apply one message; `received` (time.monotonic()) dates a Propose for its budget."""
        t0 = time.perf_counter_ns()
        kind = req.WhichOneof("payload")
        resp = draft_pb2.SessionResponse(step_id=req.step_id)
        with self.core.lock:
            if kind == "admit":
                resp.results.extend(self._admit(req.admit))
            elif kind == "propose":
                budget = req.propose.budget_ms / 1e3
                # Work nobody waits for any more (queued behind a slow step, or a stopped process
                # resuming) would only steal cores from the target: apply the tokens, draft nothing.
                late = received is not None and budget > 0 and time.monotonic() - received > budget
                if late:
                    self.stale_proposes += 1
                resp.proposals.extend(self._propose(req.propose, draft=not late))
            elif kind == "release":
                resp.results.extend(self._release(list(req.release.seq_ids)))
        resp.compute_ns = time.perf_counter_ns() - t0
        return resp

    def close(self) -> None:
        """The stream ended: forget every sequence it admitted."""
        with self.core.lock:
            self._release(list(self.seqs))

    def _valid(self, tokens: list[int]) -> bool:
        vocab = self.core.vocab_size
        return vocab is None or all(0 <= t < vocab for t in tokens)

    def _admit(self, msg: draft_pb2.Admit) -> list[draft_pb2.SequenceResult]:
        results = []
        for a in msg.sequences:
            tokens = list(a.token_ids)
            if a.seq_id in self.seqs:  # re-admission replaces the old state
                self._release([a.seq_id])
            if not tokens or not self._valid(tokens):
                status = S.SEQUENCE_STATUS_INVALID
            elif self.core.live >= self.core.max_sequences:
                status = S.SEQUENCE_STATUS_OUT_OF_CAPACITY
            else:
                params = sampling_from_wire(a.sampling)
                self.seqs[a.seq_id] = _Seq(self.core.new_id(), tokens, params)
                self.core.live += 1
                status = S.SEQUENCE_STATUS_OK
            results.append(draft_pb2.SequenceResult(seq_id=a.seq_id, status=status))
        return results

    def _release(self, seq_ids: list[int]) -> list[draft_pb2.SequenceResult]:
        results = []
        for sid in seq_ids:
            seq = self.seqs.pop(sid, None)
            if seq is None:
                results.append(draft_pb2.SequenceResult(seq_id=sid, status=S.SEQUENCE_STATUS_UNKNOWN_SEQUENCE))
                continue
            self.core.proposer.release(seq.internal_id)
            self.core.live -= 1
            results.append(draft_pb2.SequenceResult(seq_id=sid, status=S.SEQUENCE_STATUS_OK))
        return results

    def _propose(self, msg: draft_pb2.Propose, draft: bool = True) -> list[draft_pb2.DraftProposal]:
        status: dict[int, Any] = {}
        reqs: list[ProposeRequest] = []
        order = [p.seq_id for p in msg.sequences]
        for p in msg.sequences:
            seq = self.seqs.get(p.seq_id)
            if seq is None:
                status[p.seq_id] = S.SEQUENCE_STATUS_UNKNOWN_SEQUENCE
                continue
            new = list(p.new_token_ids)
            if p.num_accepted > len(seq.outstanding) or not new or not self._valid(new):
                status[p.seq_id] = S.SEQUENCE_STATUS_INVALID
                continue
            tokens = seq.tokens + seq.outstanding[: p.num_accepted] + new
            if len(tokens) != p.committed_len:
                # The two sides disagree about the context: drop it, the target re-admits.
                self._release([p.seq_id])
                status[p.seq_id] = S.SEQUENCE_STATUS_LENGTH_MISMATCH
                continue
            seq.tokens, seq.outstanding = tokens, []
            status[p.seq_id] = S.SEQUENCE_STATUS_OK
            k = cap_k(p.num_speculative_tokens, self.core.max_k) if draft else 0
            if k > 0:
                reqs.append(ProposeRequest(seq.internal_id, seq.tokens, k, seq.params))
        drafted: dict[int, Proposal] = self.core.proposer.propose(reqs) if reqs else {}
        wanted = {r.seq_id for r in reqs}
        out = []
        for sid in order:
            prop = draft_pb2.DraftProposal(seq_id=sid, status=status[sid])
            seq = self.seqs.get(sid)
            if seq is not None and status[sid] == S.SEQUENCE_STATUS_OK and seq.internal_id in wanted:
                got = drafted.get(seq.internal_id)
                if got is None:  # the proposer had no KV slot (or, for n-gram, no match)
                    if self.core.vocab_size is not None:
                        prop.status = S.SEQUENCE_STATUS_OUT_OF_CAPACITY
                else:
                    seq.outstanding = list(got.draft_token_ids)
                    prop.draft_token_ids.extend(got.draft_token_ids)
                    if got.draft_probs is not None:
                        prop.draft_dists.extend(sparse(got.draft_probs))
            out.append(prop)
        return out
