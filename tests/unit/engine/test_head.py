"""SubsetHead: the kept ids' logits unchanged, the others never drafted, the target's output unchanged."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from smartspec.engine.engine import SpecEngine
from smartspec.engine.head import SubsetHead, head_ids
from smartspec.engine.proposers.draft_model import DraftModelProposer
from smartspec.engine.runner import ModelRunner
from smartspec.engine.sampling import SamplingParams


def test_kept_ids_keep_their_logits_and_the_rest_are_minus_inf() -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 20, bias=True)
    ids = head_ids(20, 5, always=[17, 99])
    assert ids.tolist() == [0, 1, 2, 3, 4, 17]
    hidden = torch.randn(3, 8)
    got = SubsetHead(head, ids)(hidden)
    full = head(hidden)
    torch.testing.assert_close(got[:, ids], full[:, ids])
    rest = torch.ones(20, dtype=torch.bool)
    rest[ids] = False
    assert torch.isneginf(got[:, rest]).all()
    with pytest.raises(ValueError):
        head_ids(20, 0)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_drafts_stay_in_the_subset_and_outputs_match_the_whole_head(tiny: Any, temperature: float) -> None:
    keep = head_ids(tiny.target.config.vocab_size, 120, always=[tiny.target.config.eos_token_id])
    outs = []
    for subset in (False, True):
        draft = ModelRunner(tiny.draft, num_slots=2, max_len=96)
        if subset:
            draft.head = SubsetHead(draft.lm_head, keep)
        engine = SpecEngine(ModelRunner(tiny.target, num_slots=2, max_len=96),
                            DraftModelProposer(draft, draft.vocab_size), max_k=4)
        engine.add_request(0, [5, 6, 7, 8, 9], SamplingParams(max_tokens=30, temperature=temperature, seed=3,
                                                              ignore_eos=True))
        drafted: list[int] = []
        original = engine.proposer.propose  # type: ignore[union-attr]

        def spy(reqs: Any, deadline_s: Any = None, original: Any = original, drafted: list[int] = drafted) -> Any:
            got = original(reqs, deadline_s)
            for prop in got.values():
                drafted.extend(prop.draft_token_ids)
            return got

        engine.proposer.propose = spy  # type: ignore[union-attr,method-assign]
        while engine.has_unfinished:
            engine.step({0: 4})
        outs.append(engine.pop_finished(0).output_ids)
        if subset:
            assert drafted and set(drafted) <= set(keep.tolist())
    if temperature == 0.0:  # greedy verification emits the target's argmax whichever tokens were drafted
        assert outs[1] == outs[0]
