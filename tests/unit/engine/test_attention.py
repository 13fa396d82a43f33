"""smartspec_sdpa: grouped-query attention without repeat_kv gives transformers' sdpa results."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from smartspec.engine.attention import NAME, gqa_sdpa_forward, use_gqa_attention
from smartspec.engine.runner import ModelRunner, RowInput


class _Module(torch.nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True


def _ragged_mask(lens: list[int], width: int, kv: int) -> torch.Tensor:
    pos = torch.tensor(lens)[:, None] + torch.arange(width)[None, :]
    allowed = torch.arange(kv)[None, None, :] <= pos[:, :, None]
    mask = torch.zeros((len(lens), 1, width, kv))
    return mask.masked_fill_(~allowed[:, None], torch.finfo(torch.float32).min)


@pytest.mark.parametrize("width", [1, 2, 5])
@pytest.mark.parametrize("heads,kv_heads", [(4, 2), (12, 2), (4, 4)])
def test_packed_heads_equal_repeated_kv(width: int, heads: int, kv_heads: int) -> None:
    torch.manual_seed(0)
    batch, dim, kv = 3, 16, 11
    q = torch.randn(batch, heads, width, dim)
    k, v = torch.randn(batch, kv_heads, kv, dim), torch.randn(batch, kv_heads, kv, dim)
    mask = _ragged_mask([2, 6, 0], width, kv)
    module = _Module(heads // kv_heads)
    got, _ = gqa_sdpa_forward(module, q, k, v, mask, scaling=dim**-0.5)
    ref, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=dim**-0.5)
    assert got.shape == ref.shape == (batch, width, heads, dim)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)


def test_model_switch_keeps_runner_logits(tiny: Any) -> None:
    base = tiny.target
    grouped = copy.deepcopy(base)
    assert use_gqa_attention(grouped) and grouped.config._attn_implementation == NAME
    runners = [ModelRunner(m, num_slots=3, max_len=64) for m in (base, grouped)]
    prompts = {0: [5, 6, 7, 8, 9], 1: [11, 12], 2: [13, 14, 15, 16]}
    for runner in runners:
        for sid, toks in prompts.items():
            runner.add(sid)
            runner.forward([RowInput(sid, toks, 1)])
            runner.commit(sid, len(toks))
    rows = [RowInput(0, [20], 1), RowInput(1, [21, 22, 23, 24], 4), RowInput(2, [25, 26], 2)]
    a, b = (r.forward(rows) for r in runners)
    torch.testing.assert_close(b.logits, a.logits, atol=1e-5, rtol=1e-5)


def test_models_without_groups_stay_on_sdpa(tiny: Any) -> None:
    model = copy.deepcopy(tiny.target)
    model.config.num_key_value_heads = model.config.num_attention_heads
    assert not use_gqa_attention(model)
    assert model.config._attn_implementation == "sdpa"
