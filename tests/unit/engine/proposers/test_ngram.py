"""Prompt-lookup proposer: finds the latest earlier match of the longest suffix n-gram."""

from __future__ import annotations

import numpy as np
import pytest

from smartspec.engine.proposers.base import ProposeRequest
from smartspec.engine.proposers.ngram import NgramProposer, lookup
from smartspec.engine.sampling import SamplingParams


def test_lookup_prefers_longest_then_latest_match() -> None:
    toks = np.array([1, 2, 3, 4, 9, 2, 3, 5, 6, 1, 2, 3])
    # suffix [1, 2, 3] occurs at 0 -> continues with 4, 9, 2
    assert lookup(toks, 3, max_n=3, min_n=1) == [4, 9, 2]
    # with max_n = 2, suffix [2, 3] occurs at 1 and 5; the latest (5) continues with 5, 6
    assert lookup(toks, 2, max_n=2, min_n=1) == [5, 6]


def test_lookup_returns_fewer_tokens_at_the_end_and_none_without_match() -> None:
    assert lookup(np.array([7, 8, 7]), 5, max_n=2, min_n=1) == [8, 7]
    assert lookup(np.array([1, 2, 3, 4]), 3, max_n=3, min_n=1) == []
    assert lookup(np.array([5]), 3, max_n=3, min_n=1) == []


def test_proposer_only_answers_requests_with_a_match_and_k_above_zero() -> None:
    prop = NgramProposer(max_n=3, min_n=2)
    params = SamplingParams()
    out = prop.propose([
        ProposeRequest(1, [1, 2, 3, 1, 2], 3, params),
        ProposeRequest(2, [1, 2, 3, 4], 3, params),
        ProposeRequest(3, [1, 2, 3, 1, 2], 0, params),
    ])
    assert set(out) == {1}
    assert out[1].draft_token_ids == [3, 1, 2] and out[1].draft_probs is None


def test_bad_ngram_bounds_are_rejected() -> None:
    with pytest.raises(ValueError):
        NgramProposer(max_n=1, min_n=2)
