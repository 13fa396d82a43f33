"""DraftMirror: the target's record of what its draft holds per sequence, and the Session messages it implies.

Pure — no stream, no event loop, no clock: `RemoteProposer` sends what `plan` returns and hands the
answer to `accept`, and the in-process protocol tests pair it with the draft's `StreamSession`.

Per sequence the mirror keeps `known` (confirmed context tokens the draft holds once it has applied
what was sent) and `outstanding` (the drafts it last proposed). A Propose sends how many of those
drafts the engine's tokens confirm and every token emitted after them: several after steps at
k = 0, which send nothing. A sequence the mirror does not hold is admitted with all but its last
token, which then travels in the Propose like any other new token.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence as TokenIds
from dataclasses import dataclass, field
from typing import Any

import torch

from smartspec.engine.proposers.base import Proposal, ProposeRequest
from smartspec.rpc import sampling_to_wire
from smartspec.v1 import draft_pb2

S = draft_pb2.SequenceStatus


@dataclass(frozen=True)
class Held:
    """What the draft holds for one sequence. Frozen and replaced whole: the engine thread reads it
    (`unseen`) while the event loop applies answers."""

    known: int
    outstanding: tuple[int, ...] = ()


# A sequence the draft may still hold but whose state the mirror no longer trusts (the draft refused it, or
# answered for it with something malformed): it is re-admitted when it next wants drafts (re-admission
# replaces the draft's state), and released like any other when it ends, so the draft never keeps it.
READMIT = Held(known=-1)


@dataclass
class ProposePlan:
    """The messages of one draft step: an optional Admit, then one Propose."""

    admit: draft_pb2.Admit | None
    propose: list[draft_pb2.ProposeSequence]
    asked: dict[int, int]  # seq_id -> k asked for
    fed: dict[int, int] = field(default_factory=dict)  # seq_id -> tokens the draft ingests first (catch-up)


class DraftMirror:
    def __init__(self, target_vocab: int) -> None:
        self.target_vocab = target_vocab
        self._held: dict[int, Held] = {}

    def __contains__(self, seq_id: int) -> bool:
        return seq_id in self._held

    def __len__(self) -> int:
        return len(self._held)

    def unseen(self, seq_id: int, token_ids: TokenIds[int]) -> int:
        """Tokens of `token_ids` the draft has not ingested (all of them for a sequence it does not hold)."""
        held = self._held.get(seq_id)
        if held is None or held is READMIT:
            return len(token_ids)
        return len(token_ids) - held.known - confirmed(held.outstanding, token_ids[held.known:])

    def forget(self, seq_id: int) -> bool:
        """Drop a sequence; True when the draft held it (so a Release is due)."""
        return self._held.pop(seq_id, None) is not None

    def clear(self) -> None:
        """A new stream holds nothing: every sequence is re-admitted when it next wants drafts."""
        self._held.clear()

    def plan(self, requests: Iterable[ProposeRequest]) -> ProposePlan:
        """The Admit and Propose for these requests. From here on the mirror assumes the draft applies
        them (whatever happens to the answer, the draft holds all of each request's tokens), and any
        drafts it makes are unknown until `accept` sees them."""
        admits: list[draft_pb2.AdmitSequence] = []
        plan = ProposePlan(None, [], {})
        for r in requests:
            tokens = r.token_ids
            held = self._held.get(r.seq_id)
            fed = 0
            if held is None or held is READMIT:
                admits.append(draft_pb2.AdmitSequence(seq_id=r.seq_id, token_ids=list(tokens[:-1]),
                                                      sampling=sampling_to_wire(r.params)))
                held = Held(known=len(tokens) - 1)
                fed = held.known
            tail = tokens[held.known:]
            accepted = confirmed(held.outstanding, tail)
            plan.fed[r.seq_id] = fed + len(tail) - accepted
            plan.asked[r.seq_id] = r.k
            plan.propose.append(draft_pb2.ProposeSequence(
                seq_id=r.seq_id, num_accepted=accepted, new_token_ids=list(tail[accepted:]),
                committed_len=len(tokens), num_speculative_tokens=r.k))
            self._held[r.seq_id] = Held(known=len(tokens))
        if admits:
            plan.admit = draft_pb2.Admit(sequences=admits)
        return plan

    def accept(self, proposals: Iterable[draft_pb2.DraftProposal],
               plan: ProposePlan) -> tuple[dict[int, Proposal], int]:
        """The usable proposals of an answer to `plan`, and how many entries were malformed. A sequence
        the draft did not know or disagreed about (it dropped it) is forgotten; one it refused, or
        answered for with something malformed, is marked READMIT."""
        out: dict[int, Proposal] = {}
        invalid = 0
        for p in proposals:
            if p.seq_id not in plan.asked or p.seq_id in out:
                invalid += 1
                continue
            if p.status in (S.SEQUENCE_STATUS_UNKNOWN_SEQUENCE, S.SEQUENCE_STATUS_LENGTH_MISMATCH):
                self._held.pop(p.seq_id, None)  # the draft holds nothing for it now
                continue
            if p.status != S.SEQUENCE_STATUS_OK:
                self._mark(p.seq_id)  # refused (e.g. no KV slot): it may still hold the context
                continue
            tokens = list(p.draft_token_ids)
            if not tokens:
                continue
            q = None
            if len(tokens) <= plan.asked[p.seq_id] and min(tokens) >= 0 and max(tokens) < self.target_vocab:
                q = dense_q(p.draft_dists, tokens, self.target_vocab)
                ok = q is not None or not p.draft_dists
            else:
                ok = False  # more drafts than asked for, or ids the target cannot score
            if not ok:
                invalid += 1
                self._mark(p.seq_id)
                continue
            held = self._held.get(p.seq_id)
            if held is None or held is READMIT:  # released, or the stream reset, while the answer travelled
                continue
            self._held[p.seq_id] = Held(held.known, tuple(tokens))
            out[p.seq_id] = Proposal(tokens, q, fed_tokens=plan.fed.get(p.seq_id, 0))
        return out, invalid


    def _mark(self, seq_id: int) -> None:
        if seq_id in self._held:
            self._held[seq_id] = READMIT


def confirmed(outstanding: TokenIds[int], tail: TokenIds[int]) -> int:
    """How many of the draft's last proposals the tokens emitted since confirm (never the last token:
    it is new to the draft, which has not seen what followed its drafts)."""
    n = 0
    while n < min(len(outstanding), len(tail) - 1) and outstanding[n] == tail[n]:
        n += 1
    return n


def dense_q(dists: TokenIds[Any], tokens: list[int], vocab: int) -> torch.Tensor | None:
    """q as [k, V] from the sparse rows; None if there are none or they are not a valid q for these tokens."""
    if not dists or len(dists) != len(tokens):
        return None
    q = torch.zeros(len(tokens), vocab)
    for j, d in enumerate(dists):
        ids = torch.tensor(list(d.token_ids), dtype=torch.long)
        probs = torch.tensor(list(d.probs), dtype=torch.float32)
        if ids.numel() != probs.numel() or ids.numel() == 0 or int(ids.max()) >= vocab \
                or int(ids.min()) < 0 or bool((probs < 0).any()):
            return None
        q[j, ids] = probs
    sums = q.sum(dim=1)
    if bool(((sums - 1).abs() > 1e-3).any()):
        return None
    return q / sums[:, None]
