"""ModelRunner + slot KV cache: ragged rows in one forward equal per-sequence full forwards."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from smartspec.engine.runner import ModelRunner, RowInput
from smartspec.errors import CapacityExceeded, UnknownSequence, UnsupportedModel

TOL: dict[str, Any] = {"atol": 1e-4, "rtol": 1e-4}


def full_logits(model: Any, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0]


def test_prefill_decode_and_verify_rows_in_one_forward(tiny: Any) -> None:
    model = tiny.target
    runner = ModelRunner(model, num_slots=4, max_len=128)
    history = {0: [5, 6, 7, 8, 9, 10], 1: [11, 12], 2: [13, 14, 15]}
    for sid, toks in history.items():
        runner.add(sid)
        runner.forward([RowInput(sid, toks, 1)])
        runner.commit(sid, len(toks))
    runner.add(3)
    rows = [
        RowInput(0, [20], 1),  # decode at k = 0
        RowInput(1, [21, 22, 23, 24], 4),  # verify: last token + 3 drafts
        RowInput(3, [30, 31, 32, 33, 34, 35, 36], 1),  # prefill, only its last logits
        RowInput(2, [25, 26], 2),  # verify with k = 1
    ]
    out = runner.forward(rows)
    assert out.stats.batch_size == 4 and out.stats.width == 7 and out.stats.padded_tokens == 28
    assert out.stats.real_tokens == 14
    for r, row in enumerate(rows):
        past = history.get(row.seq_id, [])
        ref = full_logits(model, past + row.token_ids)[-row.num_logits :]
        got = out.logits[out.offsets[r] : out.offsets[r] + row.num_logits]
        torch.testing.assert_close(got, ref, **TOL)


def test_partial_commit_rolls_back_rejected_positions(tiny: Any) -> None:
    model = tiny.target
    runner = ModelRunner(model, num_slots=2, max_len=64)
    runner.add(0)
    runner.forward([RowInput(0, [1, 2, 3], 1)])
    runner.commit(0, 3)
    runner.forward([RowInput(0, [4, 50, 51, 52], 4)])  # drafts 50..52 are rejected after 1
    runner.commit(0, 2)
    assert runner.committed_len(0) == 5
    out = runner.forward([RowInput(0, [60, 61], 2)])
    torch.testing.assert_close(out.logits, full_logits(model, [1, 2, 3, 4, 50, 60, 61])[-2:], **TOL)
    runner.commit(0, 2)
    runner.truncate(0, 4)  # the proposer's rollback path
    out = runner.forward([RowInput(0, [70], 1)])
    torch.testing.assert_close(out.logits, full_logits(model, [1, 2, 3, 4, 70])[-1:], **TOL)


def test_freeing_a_slot_moves_the_last_one_with_its_uncommitted_tokens(tiny: Any) -> None:
    model = tiny.target
    runner = ModelRunner(model, num_slots=3, max_len=64)
    seqs = {0: [1, 2, 3], 1: [4, 5], 2: [6, 7, 8, 9]}
    for sid in seqs:
        runner.add(sid)
    runner.forward([RowInput(sid, toks, 1) for sid, toks in seqs.items()])
    runner.commit(0, 3)
    runner.commit(1, 2)
    # Sequence 2 (last slot) still has appended tokens pending when sequence 0 leaves.
    runner.remove(0)
    runner.commit(2, 4)
    assert runner.committed_len(2) == 4 and runner.num_sequences == 2
    out = runner.forward([RowInput(2, [10], 1), RowInput(1, [11], 1)])
    torch.testing.assert_close(out.logits[out.offsets[0]], full_logits(model, [6, 7, 8, 9, 10])[-1], **TOL)
    torch.testing.assert_close(out.logits[out.offsets[1]], full_logits(model, [4, 5, 11])[-1], **TOL)


def test_capacity_and_bookkeeping_errors(tiny_llama: Any) -> None:
    runner = ModelRunner(tiny_llama.target, num_slots=1, max_len=8)
    runner.add(0)
    with pytest.raises(CapacityExceeded):
        runner.add(1)
    with pytest.raises(CapacityExceeded):
        runner.forward([RowInput(0, list(range(9)), 1)])
    with pytest.raises(UnknownSequence):
        runner.forward([RowInput(7, [1], 1)])
    runner.forward([RowInput(0, [1, 2], 2)])
    with pytest.raises(ValueError):
        runner.commit(0, 3)
    with pytest.raises(ValueError):
        runner.forward([RowInput(0, [1], 2)])  # more logits than tokens


def test_sliding_window_models_are_refused() -> None:
    from transformers import MistralConfig, MistralForCausalLM

    cfg = MistralConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        num_key_value_heads=1, intermediate_size=64, sliding_window=16)
    with pytest.raises(UnsupportedModel, match="sliding"):
        ModelRunner(MistralForCausalLM(cfg), num_slots=1, max_len=32)
