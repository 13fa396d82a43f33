"""SpecEngine on tiny models: greedy output equals target-only greedy under any k schedule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch

from smartspec.engine.engine import SpecEngine
from smartspec.engine.proposers.base import Proposal, ProposeRequest
from smartspec.engine.proposers.draft_model import DraftModelProposer
from smartspec.engine.proposers.ngram import NgramProposer
from smartspec.engine.runner import ModelRunner
from smartspec.engine.sampling import SamplingParams
from smartspec.errors import InvalidRequest, UnknownSequence
from tests.conftest import hf_greedy

PROMPTS = [
    "def add(a, b):\n    return a + b\n\ndef add(",
    "import os\nimport sys\nimport os\nimport",
    "x",
    "class Stack:\n    def push(self, item):\n        self.items.append(item)\n",
    "for i in range(10):\n    print(i)\nfor i in range(",
    "hello hello hello hello",
    "SELECT * FROM t WHERE a = 1;\nSELECT * FROM",
    "The quick brown fox",
]


def make_engine(pair: Any, proposer: str, slots: int = 8, max_len: int = 256) -> SpecEngine:
    runner = ModelRunner(pair.target, num_slots=slots, max_len=max_len)
    prop: Any = None
    if proposer == "draft":
        prop = DraftModelProposer(ModelRunner(pair.draft, num_slots=slots, max_len=max_len + 8), runner.vocab_size)
    elif proposer == "ngram":
        prop = NgramProposer()
    return SpecEngine(runner, prop, eos_token_ids=(), max_k=8)


def run_schedule(
    engine: SpecEngine, requests: list[tuple[int, list[int], int, int]], k_of: Any
) -> dict[int, list[int]]:
    """requests: (seq_id, prompt, max_tokens, join_step). k_of(seq_id, step) -> k."""
    outputs: dict[int, list[int]] = {}
    step = 0
    pending = sorted(requests, key=lambda r: r[3])
    while pending or engine.has_unfinished:
        while pending and pending[0][3] <= step:
            sid, prompt, max_tokens, _ = pending.pop(0)
            engine.add_request(sid, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True))
        out = engine.step({sid: k_of(sid, step) for sid in engine.running})
        for sid in out.finished:
            outputs[sid] = engine.pop_finished(sid).output_ids
        step += 1
    return outputs


@pytest.mark.parametrize("proposer", ["draft", "ngram"])
@pytest.mark.parametrize("k", [1, 3, 5, 8])
def test_greedy_fixed_k_matches_target_only(tiny: Any, proposer: str, k: int) -> None:
    prompts = [tiny.tokenizer(p).input_ids for p in PROMPTS[:4]]
    refs = [hf_greedy(tiny.target, p, 24) for p in prompts]
    engine = make_engine(tiny, proposer)
    out = run_schedule(engine, [(i, p, 24, 0) for i, p in enumerate(prompts)], lambda sid, step: k)
    assert [out[i] for i in range(len(prompts))] == refs


@pytest.mark.parametrize("batch", [1, 2, 5, 8])
@pytest.mark.parametrize("proposer", ["draft", "ngram"])
def test_ragged_k_joins_and_finishes_mid_batch(tiny: Any, proposer: str, batch: int) -> None:
    """Each request has its own k every step (0 … 8), joins at its own step, stops at its own length."""
    prompts = [tiny.tokenizer(p).input_ids for p in PROMPTS[:batch]]
    lengths = [9 + 7 * (i % 4) for i in range(batch)]
    joins = [(3 * i) % 7 for i in range(batch)]
    refs = [hf_greedy(tiny.target, p, n) for p, n in zip(prompts, lengths, strict=True)]
    engine = make_engine(tiny, proposer, slots=max(2, batch - 1))  # fewer slots than requests: some wait
    reqs = [(i, p, n, j) for i, (p, n, j) in enumerate(zip(prompts, lengths, joins, strict=True))]
    out = run_schedule(engine, reqs, lambda sid, step: (sid * 3 + step * 5) % 9)
    assert [out[i] for i in range(batch)] == refs


def test_k0_steps_never_call_the_proposer_and_score_one_position(tiny_llama: Any) -> None:
    calls: list[int] = []

    class Recording(NgramProposer):
        def propose(self, requests: list[ProposeRequest], deadline_s: float | None = None) -> dict[int, Proposal]:
            calls.append(len(requests))
            return super().propose(requests)

    engine = SpecEngine(ModelRunner(tiny_llama.target, num_slots=4, max_len=128), Recording(), max_k=8)
    for i in range(3):
        engine.add_request(i, tiny_llama.tokenizer(PROMPTS[i]).input_ids, SamplingParams(max_tokens=6, ignore_eos=True))
    engine.step()  # prefill
    for _ in range(3):
        stats = engine.step({sid: 0 for sid in engine.running}).stats
        assert stats is not None
        assert stats.real_tokens == stats.padded_tokens == stats.batch_size == 3
        assert stats.num_forwards == 1 and stats.ks == [0, 0, 0] and stats.draft_s == 0.0
    assert calls == []


def test_misbehaving_proposer_cannot_change_the_output(tiny_llama: Any) -> None:
    class Liar:
        name = "liar"

        def __init__(self) -> None:
            self.n = 0

        def propose(self, requests: list[ProposeRequest], deadline_s: float | None = None) -> dict[int, Proposal]:
            self.n += 1
            bad = [
                Proposal([10**9]),  # token id outside the vocabulary
                Proposal([1] * (requests[0].k + 3)),  # more drafts than asked for
                Proposal([1, 2], torch.ones(5, 3)),  # q of the wrong shape
                Proposal([7, 7], torch.full((2, 259), 1 / 259)),  # well-formed but useless
            ]
            return {r.seq_id: bad[(self.n + i) % len(bad)] for i, r in enumerate(requests)}

        def unseen(self, seq_id: int, token_ids: Sequence[int]) -> int:
            return 0

        def release(self, seq_id: int) -> None:
            return None

    prompts = [tiny_llama.tokenizer(p).input_ids for p in PROMPTS[:3]]
    refs = [hf_greedy(tiny_llama.target, p, 16) for p in prompts]
    engine = SpecEngine(ModelRunner(tiny_llama.target, num_slots=4, max_len=128), Liar(), max_k=4)
    out = run_schedule(engine, [(i, p, 16, 0) for i, p in enumerate(prompts)], lambda sid, step: 4)
    assert [out[i] for i in range(3)] == refs


def test_cancel_frees_target_and_draft_slots(tiny_llama: Any) -> None:
    engine = make_engine(tiny_llama, "draft", slots=2)
    prompt = tiny_llama.tokenizer(PROMPTS[0]).input_ids
    for i in range(3):
        engine.add_request(i, prompt, SamplingParams(max_tokens=50, ignore_eos=True))
    engine.step()
    engine.step({0: 3, 1: 3})
    draft = engine.proposer
    assert isinstance(draft, DraftModelProposer)
    assert engine.runner.free_slots == 0 and draft.runner.num_sequences == 2
    engine.cancel(0)
    engine.cancel(2)  # still waiting
    assert engine.seqs[0].finish_reason == "cancelled" and engine.seqs[2].finish_reason == "cancelled"
    assert engine.runner.free_slots == 1 and draft.runner.num_sequences == 1
    with pytest.raises(UnknownSequence):
        engine.cancel(0)
    ref = hf_greedy(tiny_llama.target, prompt, 50)
    while engine.has_unfinished:
        engine.step({1: 5})
    assert engine.pop_finished(1).output_ids == ref


def test_eos_and_stop_tokens_end_a_request_mid_step(tiny_llama: Any) -> None:
    prompt = tiny_llama.tokenizer(PROMPTS[1]).input_ids
    ref = hf_greedy(tiny_llama.target, prompt, 30)
    stop = ref[12]
    engine = make_engine(tiny_llama, "draft")
    engine.add_request(0, prompt, SamplingParams(max_tokens=30, stop_token_ids=(stop,)))
    while engine.has_unfinished:
        engine.step({0: 8})
    seq = engine.pop_finished(0)
    assert seq.finish_reason == "stop"
    assert seq.output_ids == ref[: ref.index(stop) + 1]


@pytest.mark.parametrize(
    ("prompt", "params", "match"),
    [
        ([], SamplingParams(), "empty"),
        ([1, 2], SamplingParams(max_tokens=0), "max_tokens"),
        ([1, 2], SamplingParams(temperature=-0.5), "temperature"),
        ([1, 2], SamplingParams(top_p=0.0), "top_p"),
        ([1, 2], SamplingParams(top_p=1.5), "top_p"),
        ([1, 2], SamplingParams(top_k=-1), "top_k"),
        ([1, 999], SamplingParams(), "outside"),
        ([1] * 300, SamplingParams(), "exceeds"),
        ([1] * 100, SamplingParams(max_tokens=200), "exceeds"),
    ],
)
def test_bad_requests_are_refused_and_the_engine_keeps_serving(
    tiny_llama: Any, prompt: list[int], params: SamplingParams, match: str
) -> None:
    engine = make_engine(tiny_llama, "draft")
    engine.add_request(0, [5, 6, 7], SamplingParams(max_tokens=5, ignore_eos=True))
    with pytest.raises(InvalidRequest, match=match):
        engine.add_request(1, prompt, params)
    while engine.has_unfinished:
        engine.step({0: 2})
    assert len(engine.pop_finished(0).output_ids) == 5


def test_sampling_is_reproducible_per_seed(tiny_llama: Any) -> None:
    prompt = tiny_llama.tokenizer(PROMPTS[0]).input_ids
    params = SamplingParams(max_tokens=20, temperature=0.8, top_p=0.9, seed=1234, ignore_eos=True)

    def once() -> list[int]:
        engine = make_engine(tiny_llama, "draft")
        engine.add_request(0, prompt, params)
        while engine.has_unfinished:
            engine.step({0: 3})
        return engine.pop_finished(0).output_ids

    first = once()
    assert first == once()
    assert len(first) == 20 and all(0 <= t < 259 for t in first)
