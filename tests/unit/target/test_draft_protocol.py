"""The draft protocol in process: the target's DraftMirror against the draft's StreamSession (n-gram).

No stream, no server: the mirror's messages go straight into the session and its answers straight
back. What the draft holds must be exactly the target's tokens after every Propose, the catch-up
the mirror reports must be what the draft really had to ingest, and the drafts must be what the
proposer makes from the target's own tokens — through admit, propose, confirm, release, re-admit,
a reset stream and garbage on either side.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import numpy as np
import pytest

from smartspec.engine.proposers.base import Proposal, ProposeRequest
from smartspec.engine.proposers.ngram import NgramProposer, lookup
from smartspec.engine.sampling import SamplingParams
from smartspec.v1 import common_pb2, draft_pb2
from smartspec_draft.session import DraftCore, StreamSession
from smartspec_target.draft_mirror import DraftMirror, ProposePlan

S = draft_pb2.SequenceStatus
V = 40
GREEDY = SamplingParams(max_tokens=1_000)


def stream(seed: int, n: int = 400) -> list[int]:
    """A target's output: a motif repeated with mutations, so n-gram drafts are often right and sometimes not."""
    rng = random.Random(seed)
    motif = [rng.randrange(V) for _ in range(rng.randrange(4, 9))]
    out: list[int] = []
    while len(out) < n:
        out += motif if rng.random() < 0.75 else [rng.randrange(V) for _ in range(rng.randrange(1, 4))]
    return out[:n]


class Pair:
    """A target-side mirror wired to a draft-side session, message by message."""

    def __init__(self, vocab: int | None = None, max_sequences: int = 64) -> None:
        self.core = DraftCore(NgramProposer(), vocab, max_k=8, max_sequences=max_sequences)
        self.session = StreamSession(self.core)
        self.mirror = DraftMirror(V)
        self.step_id = 0
        self.accepted = 0  # drafts the Proposes confirmed, over the run

    def send(self, **payload: object) -> draft_pb2.SessionResponse:
        self.step_id += 1
        return self.session.handle(draft_pb2.SessionRequest(step_id=self.step_id, **payload))  # type: ignore[arg-type]

    def step(self, requests: list[ProposeRequest], tamper: Callable[[ProposePlan], None] | None = None,
             answer: Callable[[draft_pb2.SessionResponse], None] | None = None
             ) -> tuple[dict[int, Proposal], dict[int, int], int]:
        plan = self.mirror.plan(requests)
        self.accepted += sum(p.num_accepted for p in plan.propose)
        if tamper is not None:
            tamper(plan)
        if plan.admit is not None:
            admitted = self.send(admit=plan.admit)
            assert all(r.status == S.SEQUENCE_STATUS_OK for r in admitted.results), admitted
        resp = self.send(propose=draft_pb2.Propose(sequences=plan.propose))
        if answer is not None:
            answer(resp)
        out, invalid = self.mirror.accept(resp.proposals, plan)
        return out, {p.seq_id: p.status for p in resp.proposals}, invalid

    def release(self, seq_id: int) -> None:
        if self.mirror.forget(seq_id):
            (res,) = self.send(release=draft_pb2.Release(seq_ids=[seq_id])).results
            assert res.status == S.SEQUENCE_STATUS_OK

    def reconnect(self) -> None:
        """The stream broke: the draft forgets the stream's sequences, the mirror forgets everything."""
        self.session.close()
        self.session = StreamSession(self.core)
        self.mirror.clear()


def draft_holds(pair: Pair, seq_id: int) -> tuple[list[int], list[int]] | None:
    seq = pair.session.seqs.get(seq_id)
    return None if seq is None else (list(seq.tokens), list(seq.outstanding))


def oracle_unseen(held: tuple[list[int], list[int]] | None, tokens: list[int]) -> int:
    """What the draft must ingest to continue from `tokens`: everything past its confirmed context that is
    not one of its own drafts, written out apart from the mirror's rule (the newest token is always new)."""
    if held is None:
        return len(tokens)
    known, drafts = held
    assert tokens[: len(known)] == known, "the draft holds tokens the target never had"
    tail = tokens[len(known):]
    reused = 0
    for j, d in enumerate(drafts):
        if j >= len(tail) - 1 or tail[j] != d:
            break
        reused += 1
    return len(tail) - reused


def verify(tokens: list[int], truth: list[int], drafts: list[int]) -> list[int]:
    """The target's verdict: the drafts that match its own continuation, then one token of its own."""
    n, a = len(tokens), 0
    while a < len(drafts) and drafts[a] == truth[n + a]:
        a += 1
    return truth[: n + a + 1]


def run(pair: Pair, rng: random.Random, steps: int, *, reconnect_at: frozenset[int] = frozenset()) -> None:
    truths: dict[int, list[int]] = {}
    tokens: dict[int, list[int]] = {}
    finished: list[int] = []
    refused: set[int] = set()  # the draft said no last time: the target re-admits them in full
    allowed = {S.SEQUENCE_STATUS_OK} if pair.core.vocab_size is None else \
        {S.SEQUENCE_STATUS_OK, S.SEQUENCE_STATUS_OUT_OF_CAPACITY}  # a model draft without drafts to give
    next_id = 1
    for step in range(steps):
        while len(tokens) < 6:  # arrivals; about a third re-use a finished sequence's id
            if finished and rng.random() < 0.3:
                sid = finished.pop(rng.randrange(len(finished)))
            else:
                sid, next_id = next_id, next_id + 1
            truths[sid] = stream(rng.randrange(1 << 30))
            tokens[sid] = truths[sid][: rng.randrange(3, 20)]
        if step in reconnect_at:
            pair.reconnect()
        ks = {sid: rng.choice([0, 0, 1, 2, 3, 5, 8]) for sid in tokens}
        reqs = [ProposeRequest(sid, tuple(tokens[sid]), k, GREEDY) for sid, k in ks.items() if k > 0]
        before = {r.seq_id: pair.mirror.unseen(r.seq_id, r.token_ids) for r in reqs}
        for r in reqs:
            held = None if r.seq_id in refused else draft_holds(pair, r.seq_id)
            assert before[r.seq_id] == oracle_unseen(held, tokens[r.seq_id])
        out, statuses, invalid = pair.step(reqs)
        assert invalid == 0 and set(statuses.values()) <= allowed, statuses
        refused = (refused - statuses.keys()) | {sid for sid, st in statuses.items() if st != S.SEQUENCE_STATUS_OK}
        for r in reqs:
            held = draft_holds(pair, r.seq_id)
            assert held is not None and held[0] == tokens[r.seq_id]  # the draft's context is the target's
            expected = lookup(np.asarray(tokens[r.seq_id]), r.k, 4, 2)
            if expected:
                assert out[r.seq_id].draft_token_ids == expected
                assert out[r.seq_id].fed_tokens == before[r.seq_id]
            else:
                assert r.seq_id not in out
        for sid in list(tokens):
            drafts = out[sid].draft_token_ids if sid in out else []
            tokens[sid] = verify(tokens[sid], truths[sid], drafts)
            if len(tokens[sid]) > 120 or rng.random() < 0.02:  # finished or cancelled
                pair.release(sid)
                del tokens[sid]
                refused.discard(sid)
                finished.append(sid)
        assert pair.core.live == len(pair.session.seqs) == len(pair.mirror)


@pytest.mark.parametrize(("seed", "vocab"), [(0, None), (1, None), (2, V)])
def test_mirror_and_session_agree_through_admit_propose_confirm_release_and_readmit(seed: int,
                                                                                   vocab: int | None) -> None:
    pair = Pair(vocab)  # with a vocabulary the session answers "no drafts" as a model draft does: refused
    run(pair, random.Random(seed), 300)
    assert pair.accepted > 100  # confirmed drafts really travelled
    assert pair.step_id > 300


def test_a_reset_stream_re_admits_everything_and_agrees_again() -> None:
    pair = Pair()
    run(pair, random.Random(7), 120, reconnect_at=frozenset({30, 31, 80}))
    assert pair.core.live == len(pair.mirror)


def test_a_length_the_draft_disputes_drops_the_sequence_and_the_next_step_re_admits_it() -> None:
    pair = Pair()
    truth = stream(3)
    tokens = truth[:12]
    pair.step([ProposeRequest(1, tuple(tokens), 3, GREEDY)])
    tokens = truth[:14]

    def off_by_one(plan: ProposePlan) -> None:
        plan.propose[0].committed_len += 1

    out, statuses, _ = pair.step([ProposeRequest(1, tuple(tokens), 3, GREEDY)], tamper=off_by_one)
    assert statuses == {1: S.SEQUENCE_STATUS_LENGTH_MISMATCH} and not out
    assert 1 not in pair.mirror and 1 not in pair.session.seqs and pair.core.live == 0
    out, statuses, _ = pair.step([ProposeRequest(1, tuple(tokens), 3, GREEDY)])
    assert statuses == {1: S.SEQUENCE_STATUS_OK} and draft_holds(pair, 1) == (tokens, out[1].draft_token_ids)
    assert out[1].fed_tokens == len(tokens)


def garbage(kind: str) -> Callable[[draft_pb2.SessionResponse], None]:
    def edit(resp: draft_pb2.SessionResponse) -> None:
        p = resp.proposals[0]
        if kind == "too many":
            p.draft_token_ids.extend([1] * 9)
        elif kind == "out of vocabulary":
            p.draft_token_ids[0] = V
        elif kind == "q that is not a distribution":
            p.draft_dists.extend(common_pb2.SparseDist(token_ids=[t], probs=[0.5]) for t in p.draft_token_ids)
        elif kind == "duplicate":
            resp.proposals.append(resp.proposals[0])
        elif kind == "unknown":
            resp.proposals.append(draft_pb2.DraftProposal(seq_id=99, status=S.SEQUENCE_STATUS_OK,
                                                          draft_token_ids=[1]))
    return edit


@pytest.mark.parametrize("kind", ["too many", "out of vocabulary", "q that is not a distribution",
                                  "duplicate", "unknown"])
def test_a_malformed_answer_counts_as_invalid_and_never_corrupts_the_mirror(kind: str) -> None:
    pair = Pair()
    truth = [5, 6, 7, 8] * 10
    tokens = truth[:10]
    out, _, invalid = pair.step([ProposeRequest(1, tuple(tokens), 3, GREEDY)], answer=garbage(kind))
    assert invalid == 1 and 1 in pair.mirror  # the draft holds it either way: a release stays due
    dropped = kind not in ("duplicate", "unknown")  # those spoil only the extra entry
    assert (1 in out) is not dropped
    assert (pair.mirror.unseen(1, tokens) == len(tokens)) is dropped  # re-admitted in full next time
    # Either way the next step leaves the two sides agreeing: re-admitted, or confirmed as usual.
    tokens = verify(tokens, truth, out[1].draft_token_ids if 1 in out else [])
    out, statuses, invalid = pair.step([ProposeRequest(1, tuple(tokens), 3, GREEDY)])
    assert invalid == 0 and statuses == {1: S.SEQUENCE_STATUS_OK}
    assert draft_holds(pair, 1) == (tokens, out[1].draft_token_ids) and pair.core.live == 1
