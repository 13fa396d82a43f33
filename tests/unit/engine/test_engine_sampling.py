"""End to end through the engine: sampled tokens follow the target's distribution, drafts or not."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from smartspec.engine.engine import SpecEngine
from smartspec.engine.proposers.base import Proposal, ProposeRequest
from smartspec.engine.proposers.draft_model import DraftModelProposer
from smartspec.engine.runner import ModelRunner
from smartspec.engine.sampling import SamplingParams
from tests.stats import chisquare_pvalue

TOP_K, TEMPERATURE, LENGTH, SAMPLES, SLOTS = 4, 1.3, 3, 3000, 600


def target_dist(model: Any, tokens: list[int]) -> dict[int, float]:
    """Reference p(next | tokens) with plain torch: softmax(logits / T), top-k, renormalised."""
    with torch.no_grad():
        logits = model(torch.tensor([tokens])).logits[0, -1].double() / TEMPERATURE
    top = torch.topk(torch.softmax(logits, dim=-1), TOP_K)
    return {int(i): float(v) / float(top.values.sum()) for i, v in zip(top.indices, top.values, strict=True)}


def exact_joint(model: Any, prompt: list[int]) -> dict[tuple[int, ...], float]:
    joint: dict[tuple[int, ...], float] = {(): 1.0}
    for _ in range(LENGTH):
        nxt = {}
        for prefix, prob in joint.items():
            for tok, p in target_dist(model, prompt + list(prefix)).items():
                nxt[(*prefix, tok)] = prob * p
        joint = nxt
    return joint


class OneHotDraft(DraftModelProposer):
    """The draft model's greedy tokens sent as one-hot q, like a model-free proposer would."""

    def propose(self, requests: list[ProposeRequest], deadline_s: float | None = None) -> dict[int, Proposal]:
        greedy = [ProposeRequest(r.seq_id, r.token_ids, r.k, SamplingParams()) for r in requests]
        out = super().propose(greedy)
        assert all(p.draft_probs is None for p in out.values())
        return out


@pytest.mark.parametrize("proposer", ["draft-q", "draft-onehot"])
def test_sampled_sequences_match_target_only_distribution(tiny_llama: Any, proposer: str) -> None:
    prompt = tiny_llama.tokenizer("def f(x):\n    return").input_ids
    runner = ModelRunner(tiny_llama.target, num_slots=SLOTS, max_len=32)
    draft_cls = DraftModelProposer if proposer == "draft-q" else OneHotDraft
    prop = draft_cls(ModelRunner(tiny_llama.draft, num_slots=SLOTS, max_len=40), runner.vocab_size)
    engine = SpecEngine(runner, prop, max_k=4)
    params = [SamplingParams(max_tokens=LENGTH, temperature=TEMPERATURE, top_k=TOP_K, seed=10_000 + i,
                             ignore_eos=True) for i in range(SAMPLES)]
    for i, p in enumerate(params):
        engine.add_request(i, prompt, p)
    counts: dict[tuple[int, ...], int] = {}
    drafted = accepted = 0
    while engine.has_unfinished:
        out = engine.step({sid: 1 + sid % 4 for sid in engine.running})
        assert out.stats is not None
        drafted += out.stats.num_draft_tokens
        accepted += out.stats.num_accepted_tokens
        for sid in out.finished:
            key = tuple(engine.pop_finished(sid).output_ids)
            counts[key] = counts.get(key, 0) + 1
    # Both the accept path and the reject (recovered token) path ran many times.
    assert drafted > 1000 and 0.1 * drafted < accepted < 0.9 * drafted

    joint = exact_joint(tiny_llama.target, prompt)
    assert set(counts) <= set(joint), "emitted a sequence outside the target's top-k support"
    cells = list(joint)
    exp = np.array([joint[c] for c in cells])
    exp = exp / exp.sum() * SAMPLES
    obs = np.array([counts.get(c, 0) for c in cells], dtype=float)
    pvalue = chisquare_pvalue(obs, exp)
    assert pvalue > 1e-4, f"p-value {pvalue:.2e}"

