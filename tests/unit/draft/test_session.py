"""StreamSession alone: a hostile or confused target's messages are refused per sequence, and the others keep going."""

from __future__ import annotations

from smartspec.engine.proposers.ngram import NgramProposer
from smartspec.v1 import draft_pb2
from smartspec_draft.session import DraftCore, StreamSession

S = draft_pb2.SequenceStatus
V = 40


def session(max_sequences: int = 8) -> StreamSession:
    return StreamSession(DraftCore(NgramProposer(), V, max_k=8, max_sequences=max_sequences))


def msg(step: int, **payload: object) -> draft_pb2.SessionRequest:
    return draft_pb2.SessionRequest(step_id=step, **payload)  # type: ignore[arg-type]


def admit(*seqs: tuple[int, list[int]]) -> draft_pb2.Admit:
    return draft_pb2.Admit(sequences=[draft_pb2.AdmitSequence(seq_id=i, token_ids=t) for i, t in seqs])


def propose(*entries: tuple[int, int, list[int], int]) -> draft_pb2.Propose:
    """(seq_id, num_accepted, new tokens, committed_len) each, k = 3."""
    return draft_pb2.Propose(sequences=[draft_pb2.ProposeSequence(
        seq_id=i, num_accepted=a, new_token_ids=new, committed_len=n, num_speculative_tokens=3)
        for i, a, new, n in entries])


def test_bad_entries_are_refused_one_by_one_and_nothing_of_theirs_is_applied() -> None:
    s = session()
    good, other = [1, 2, 3, 1, 2], [7, 8, 9, 7]
    s.handle(msg(1, admit=admit((1, good), (2, other))))
    first = s.handle(msg(2, propose=propose((1, 0, [3], 6), (2, 0, [8], 5))))
    assert [p.status for p in first.proposals] == [S.SEQUENCE_STATUS_OK, S.SEQUENCE_STATUS_OK]
    drafts = list(first.proposals[0].draft_token_ids)
    assert drafts == [1, 2, 3]  # the n-gram continues 1 2 3 | 1 2 3
    bad = s.handle(msg(3, propose=propose(
        (1, len(drafts) + 1, [5], 6 + len(drafts) + 2),  # confirms more drafts than were made
        (2, 0, [V], 6),  # a token outside the vocabulary
        (3, 0, [1], 1),  # a sequence nobody admitted
        (2, 0, [], 5),  # no new token at all
    )))
    assert [p.status for p in bad.proposals] == [S.SEQUENCE_STATUS_INVALID, S.SEQUENCE_STATUS_INVALID,
                                                 S.SEQUENCE_STATUS_UNKNOWN_SEQUENCE, S.SEQUENCE_STATUS_INVALID]
    assert s.seqs[1].tokens == [*good, 3] and s.seqs[1].outstanding == drafts  # untouched
    assert s.seqs[2].tokens == [*other, 8]
    # The sequences still work: confirm two drafts, reject the third (the target chose 3), and go on.
    again = s.handle(msg(4, propose=propose((1, 2, [3], 9))))
    assert again.proposals[0].status == S.SEQUENCE_STATUS_OK and s.seqs[1].tokens == [*good, 3, 1, 2, 3]
    assert list(again.proposals[0].draft_token_ids) == [1, 2, 3]


def test_a_disputed_length_drops_the_sequence_so_the_target_re_admits_it() -> None:
    s = session()
    s.handle(msg(1, admit=admit((1, [1, 2, 3]))))
    resp = s.handle(msg(2, propose=propose((1, 0, [4], 5))))  # the draft holds 3 + 1 = 4 tokens, not 5
    assert resp.proposals[0].status == S.SEQUENCE_STATUS_LENGTH_MISMATCH
    assert 1 not in s.seqs and s.core.live == 0


def test_admissions_refuse_empty_out_of_vocabulary_and_past_capacity_and_re_admission_replaces() -> None:
    s = session(max_sequences=2)
    res = s.handle(msg(1, admit=admit((1, []), (2, [V + 5]), (3, [1, 2]), (4, [3, 4]), (5, [5, 6])))).results
    assert [r.status for r in res] == [S.SEQUENCE_STATUS_INVALID, S.SEQUENCE_STATUS_INVALID, S.SEQUENCE_STATUS_OK,
                                       S.SEQUENCE_STATUS_OK, S.SEQUENCE_STATUS_OUT_OF_CAPACITY]
    assert s.core.live == 2
    (again,) = s.handle(msg(2, admit=admit((3, [9, 9, 9])))).results  # replaces, does not add
    assert again.status == S.SEQUENCE_STATUS_OK and s.seqs[3].tokens == [9, 9, 9] and s.core.live == 2
    released = s.handle(msg(3, release=draft_pb2.Release(seq_ids=[3, 3]))).results
    assert [r.status for r in released] == [S.SEQUENCE_STATUS_OK, S.SEQUENCE_STATUS_UNKNOWN_SEQUENCE]
    s.close()
    assert s.core.live == 0 and not s.seqs
