"""Tiny pairs (seeded, saved, reloaded) and the tokenizer check that guards draft/target pairing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from smartspec.errors import IncompatibleModels, ModelNotFound
from smartspec.models.loading import check_pair, load_model, load_tokenizer, tokenizer_fingerprint
from smartspec.models.tiny import byte_tokenizer, tiny_pair


def test_tiny_pair_is_seeded_and_shares_a_tokenizer() -> None:
    a, b = tiny_pair("qwen2", seed=3), tiny_pair("qwen2", seed=3)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(a.target(ids).logits, b.target(ids).logits)
        assert not torch.equal(a.target(ids).logits, tiny_pair("qwen2", seed=4).target(ids).logits)
    assert a.target.config.vocab_size == a.draft.config.vocab_size == len(a.tokenizer)


def test_byte_tokenizer_round_trips_any_text() -> None:
    tok = byte_tokenizer()
    text = "def f(x):\n    return x ** 2  # ünïcödé ✓"
    assert tok.decode(tok(text).input_ids) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert chat.endswith("<|im_start|>assistant\n")


def test_saved_pair_reloads_identically(tiny_dirs: tuple[Path, Path], tiny_llama: Any) -> None:
    target_dir, draft_dir = tiny_dirs
    model = load_model(target_dir, "float32")
    ids = torch.tensor([[9, 8, 7]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, tiny_llama.target(ids).logits)
    check_pair(load_tokenizer(target_dir), load_tokenizer(draft_dir))


def test_mismatched_tokenizers_are_refused(tiny_dirs: tuple[Path, Path]) -> None:
    tok = load_tokenizer(tiny_dirs[0])
    other = load_tokenizer(tiny_dirs[1])
    other.add_tokens(["<extra>"])
    assert tokenizer_fingerprint(tok) != tokenizer_fingerprint(other)
    with pytest.raises(IncompatibleModels, match="tokenizer"):
        check_pair(tok, other)


def test_missing_model_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound, match=r"config\.json"):
        load_model(tmp_path / "nope")
