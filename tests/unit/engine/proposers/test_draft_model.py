"""Draft-model proposer: batched k-step drafting equals the draft's own greedy continuation."""

from __future__ import annotations

from typing import Any

import torch

from smartspec.engine.proposers.base import ProposeRequest
from smartspec.engine.proposers.draft_model import DraftModelProposer
from smartspec.engine.runner import ModelRunner
from smartspec.engine.sampling import SamplingParams
from tests.conftest import hf_greedy


def test_drafts_match_draft_greedy_through_rollbacks(tiny_llama: Any) -> None:
    draft = tiny_llama.draft
    prop = DraftModelProposer(ModelRunner(draft, num_slots=4, max_len=128), target_vocab_size=259)
    text = hf_greedy(tiny_llama.target, tiny_llama.tokenizer("def f(x):").input_ids, 30)
    base = tiny_llama.tokenizer("def f(x):").input_ids
    # Walk along the target's text, as the engine would after each verdict; k varies per call.
    for n, k in zip(range(0, 30, 3), [1, 4, 2, 5, 3, 1, 4, 5, 2, 3], strict=True):
        ctx = base + text[:n]
        other = tiny_llama.tokenizer("import").input_ids + text[: n // 2]
        params = SamplingParams()
        out = prop.propose([ProposeRequest(0, ctx, k, params), ProposeRequest(1, other, 6 - k, params)])
        assert out[0].draft_token_ids == hf_greedy(draft, ctx, k)
        assert out[1].draft_token_ids == hf_greedy(draft, other, 6 - k)
        assert out[0].draft_probs is None


def test_sampling_requests_get_q_that_matches_the_sampled_tokens(tiny_llama: Any) -> None:
    prop = DraftModelProposer(ModelRunner(tiny_llama.draft, num_slots=2, max_len=64), target_vocab_size=259)
    params = SamplingParams(temperature=0.7, top_k=20, seed=5)
    out = prop.propose([ProposeRequest(0, [5, 6, 7], 4, params)])[0]
    assert out.draft_probs is not None and out.draft_probs.shape == (4, 259)
    torch.testing.assert_close(out.draft_probs.sum(dim=-1), torch.ones(4))
    assert ((out.draft_probs > 0).sum(dim=-1) <= 20).all()
    for j, tok in enumerate(out.draft_token_ids):
        assert out.draft_probs[j, tok] > 0


def test_release_frees_the_draft_slot(tiny_llama: Any) -> None:
    runner = ModelRunner(tiny_llama.draft, num_slots=1, max_len=64)
    prop = DraftModelProposer(runner, target_vocab_size=259)
    assert prop.propose([ProposeRequest(0, [1, 2], 2, SamplingParams())])
    assert prop.propose([ProposeRequest(1, [1, 2], 2, SamplingParams())]) == {}  # no slot: k = 0
    prop.release(0)
    prop.release(42)  # unknown: no-op
    assert runner.num_sequences == 0
    assert prop.propose([ProposeRequest(1, [1, 2], 2, SamplingParams())])
