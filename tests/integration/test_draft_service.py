"""The draft service over a real Session stream: statuses in-band, step ids echoed, state freed on close."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from smartspec.v1 import common_pb2, draft_pb2, draft_pb2_grpc
from smartspec_draft import server as draft_server
from smartspec_draft.settings import DraftSettings
from tests.conftest import hf_greedy
from tests.integration.conftest import LoopThread

S = draft_pb2.SequenceStatus


@pytest.fixture(scope="module")
def draft(loop_thread: LoopThread, tiny_svc_models: dict[str, Any]) -> Iterator[Any]:
    running, servicer = loop_thread.run(draft_server.start(
        DraftSettings(model=tiny_svc_models["draft"], port=0, dtype="float32", q_top_k=8)))
    yield running, servicer
    loop_thread.run(running.stop())


class Session:
    """A blocking client for one Session stream."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.requests: queue.Queue[Any] = queue.Queue()
        self.responses = draft_pb2_grpc.DraftServiceStub(self.channel).Session(iter(self.requests.get, None))
        self.step = 0

    def send(self, **payload: Any) -> draft_pb2.SessionResponse:
        self.step += 1
        self.requests.put(draft_pb2.SessionRequest(step_id=self.step, **payload))
        resp = next(self.responses)
        assert resp.step_id == self.step
        return resp

    def close(self) -> None:
        self.requests.put(None)
        self.channel.close()


def test_admit_propose_release(draft: Any, tiny_svc_models: dict[str, Any]) -> None:
    running, _ = draft
    pair = tiny_svc_models["pair"]
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
        info = draft_pb2_grpc.DraftServiceStub(ch).GetInfo(draft_pb2.DraftInfoRequest()).model
    assert info.vocab_size == len(pair.tokenizer) and info.method == "draftModel" and info.tokenizer_fingerprint
    prompt = pair.tokenizer("def f(x):").input_ids
    s = Session(f"127.0.0.1:{running.port}")
    r = s.send(admit=draft_pb2.Admit(sequences=[
        draft_pb2.AdmitSequence(seq_id=7, token_ids=prompt[:-1]),
        draft_pb2.AdmitSequence(seq_id=8, token_ids=[10**6])]))
    assert [x.status for x in r.results] == [S.SEQUENCE_STATUS_OK, S.SEQUENCE_STATUS_INVALID]
    r = s.send(propose=draft_pb2.Propose(sequences=[
        draft_pb2.ProposeSequence(seq_id=7, num_accepted=0, new_token_ids=[prompt[-1]], committed_len=len(prompt),
                                  num_speculative_tokens=4),
        draft_pb2.ProposeSequence(seq_id=99, new_token_ids=[1], committed_len=2, num_speculative_tokens=4)]))
    first, unknown = r.proposals
    assert first.status == S.SEQUENCE_STATUS_OK and list(first.draft_token_ids) == hf_greedy(pair.draft, prompt, 4)
    assert not first.draft_dists  # greedy: one-hot, nothing to send
    assert unknown.status == S.SEQUENCE_STATUS_UNKNOWN_SEQUENCE
    # Verdict: 2 accepted, then the target emitted token 5; a wrong committed_len is a mismatch.
    drafts = list(first.draft_token_ids)
    ctx = prompt + drafts[:2] + [5]
    r = s.send(propose=draft_pb2.Propose(sequences=[draft_pb2.ProposeSequence(
        seq_id=7, num_accepted=2, new_token_ids=[5], committed_len=len(ctx), num_speculative_tokens=3)]))
    assert list(r.proposals[0].draft_token_ids) == hf_greedy(pair.draft, ctx, 3)
    r = s.send(propose=draft_pb2.Propose(sequences=[draft_pb2.ProposeSequence(
        seq_id=7, num_accepted=0, new_token_ids=[6], committed_len=999, num_speculative_tokens=3)]))
    assert r.proposals[0].status == S.SEQUENCE_STATUS_LENGTH_MISMATCH  # dropped: the target re-admits
    r = s.send(release=draft_pb2.Release(seq_ids=[7]))
    assert r.results[0].status == S.SEQUENCE_STATUS_UNKNOWN_SEQUENCE
    s.close()


def test_sampling_sends_the_exact_truncated_q(draft: Any) -> None:
    running, _ = draft
    s = Session(f"127.0.0.1:{running.port}")
    s.send(admit=draft_pb2.Admit(sequences=[draft_pb2.AdmitSequence(
        seq_id=1, token_ids=[5, 6, 7], sampling=common_pb2.SamplingParams(temperature=1.0, seed=3))]))
    r = s.send(propose=draft_pb2.Propose(sequences=[draft_pb2.ProposeSequence(
        seq_id=1, new_token_ids=[8], committed_len=4, num_speculative_tokens=5)]))
    p = r.proposals[0]
    assert len(p.draft_dists) == len(p.draft_token_ids) == 5
    for tok, dist in zip(p.draft_token_ids, p.draft_dists, strict=True):
        assert len(dist.token_ids) <= 8 and abs(sum(dist.probs) - 1) < 1e-5 and tok in dist.token_ids
    s.close()


def wait_for(predicate: Any, timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_closing_the_stream_frees_its_sequences(draft: Any) -> None:
    running, servicer = draft
    # Earlier tests' streams are closed; their clean-up runs asynchronously on the server.
    assert wait_for(lambda: servicer.core.live == 0)
    s = Session(f"127.0.0.1:{running.port}")
    s.send(admit=draft_pb2.Admit(sequences=[draft_pb2.AdmitSequence(seq_id=i, token_ids=[1, 2, 3]) for i in range(5)]))
    assert servicer.core.live == 5
    s.close()
    assert wait_for(lambda: servicer.core.live == 0)


def test_a_step_id_that_does_not_increase_ends_the_stream(draft: Any) -> None:
    running, _ = draft
    s = Session(f"127.0.0.1:{running.port}")
    s.send(release=draft_pb2.Release(seq_ids=[1]))
    s.requests.put(draft_pb2.SessionRequest(step_id=1, release=draft_pb2.Release(seq_ids=[1])))
    with pytest.raises(grpc.RpcError) as err:
        next(s.responses)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    s.close()


def test_a_propose_past_its_budget_applies_its_tokens_but_drafts_nothing(draft: Any,
                                                                       tiny_svc_models: dict[str, Any]) -> None:
    from smartspec_draft.session import StreamSession

    _, servicer = draft
    pair = tiny_svc_models["pair"]
    prompt = pair.tokenizer("def g(y):").input_ids
    session = StreamSession(servicer.core)
    try:
        session.handle(draft_pb2.SessionRequest(step_id=1, admit=draft_pb2.Admit(sequences=[
            draft_pb2.AdmitSequence(seq_id=1, token_ids=prompt[:-1])])))

        def propose(step: int, new: list[int], length: int, received: float) -> draft_pb2.SessionResponse:
            return session.handle(draft_pb2.SessionRequest(step_id=step, propose=draft_pb2.Propose(
                budget_ms=50, sequences=[draft_pb2.ProposeSequence(
                    seq_id=1, new_token_ids=new, committed_len=length, num_speculative_tokens=3)])), received)

        # Waited 1 s for a 50 ms budget (a stopped draft resuming): no drafts, but the tokens count ...
        late = propose(2, [prompt[-1]], len(prompt), time.monotonic() - 1.0)
        assert late.proposals[0].status == S.SEQUENCE_STATUS_OK and not late.proposals[0].draft_token_ids
        assert session.stale_proposes == 1
        # ... so the next, timely Propose continues from them and drafts what the model says.
        fresh = propose(3, [7], len(prompt) + 1, time.monotonic())
        assert list(fresh.proposals[0].draft_token_ids) == hf_greedy(pair.draft, [*prompt, 7], 3)
    finally:
        session.close()
