"""Int8 draft weights: each layer close to its float original, the draft still drafts, the target's output unchanged."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from smartspec.engine.engine import SpecEngine
from smartspec.engine.head import SubsetHead, head_ids
from smartspec.engine.proposers.draft_model import DraftModelProposer
from smartspec.engine.quant import Int8Linear, quantize
from smartspec.engine.runner import ModelRunner
from smartspec.engine.sampling import SamplingParams


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_layer_is_within_its_rounding_of_the_float_layer(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 48, bias=True).to(dtype)
    q = Int8Linear.from_weight(layer.weight, layer.bias)
    assert q.weight.dtype == torch.int8 and q.weight.shape == layer.weight.shape and q.out_features == 48
    x = torch.randn(2, 5, 64, dtype=dtype)
    got, want = q(x).float(), layer(x).float()
    # Each weight is off by at most half its row's step (amax / 127 / 2): bound the sum by |x| · that.
    bound = x.float().abs() @ (q.scales.float()[:, None].expand(48, 64) / 2).T
    slack = 0.02 * want.abs() + (0.05 if dtype == torch.bfloat16 else 1e-4)  # bf16 rounds the output too
    assert bool((got - want).abs().le(bound + slack).all())
    ids = torch.tensor([3, 7, 40])
    torch.testing.assert_close(q.rows(ids)(x), q(x)[..., ids])


def test_quantize_replaces_every_linear_and_refuses_unknown_modes(tiny: Any) -> None:
    model = copy.deepcopy(tiny.draft)
    linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert quantize(model, "int8") == linears > 0
    assert not any(isinstance(m, torch.nn.Linear) for m in model.modules())
    assert isinstance(model.get_output_embeddings(), Int8Linear)
    with pytest.raises(ValueError, match="int8"):
        quantize(model, "int4")


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_a_quantised_draft_never_changes_the_greedy_output(tiny: Any, temperature: float) -> None:
    quantised = copy.deepcopy(tiny.draft)
    quantize(quantised, "int8")
    keep = head_ids(tiny.target.config.vocab_size, 150, always=[tiny.target.config.eos_token_id])
    outs = []
    for draft_model, subset in ((tiny.draft, False), (quantised, False), (quantised, True)):
        draft = ModelRunner(draft_model, num_slots=2, max_len=96)
        if subset:  # a subset head over the int8 head reads the kept int8 rows
            draft.head = SubsetHead(draft.lm_head, keep)
        engine = SpecEngine(ModelRunner(tiny.target, num_slots=2, max_len=96),
                            DraftModelProposer(draft, draft.vocab_size), max_k=4)
        engine.add_request(0, [5, 6, 7, 8, 9], SamplingParams(max_tokens=30, temperature=temperature, seed=3,
                                                              ignore_eos=True))
        while engine.has_unfinished:
            engine.step({0: 4})
        outs.append(engine.pop_finished(0).output_ids)
    assert all(len(o) == 30 for o in outs)
    if temperature == 0.0:  # greedy verification emits the target's argmax whichever tokens were drafted
        assert outs[1] == outs[0] and outs[2] == outs[0]
