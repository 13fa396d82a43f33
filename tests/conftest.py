"""Shared fixtures: seeded tiny pairs (in memory and on disk), the real pair's folders, HF references."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch

# No test may reach a model hub; local folders only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(max(1, torch.get_num_threads()))


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def tiny(request: pytest.FixtureRequest) -> Any:
    from smartspec.models.tiny import tiny_pair

    return tiny_pair(request.param, seed=0)


@pytest.fixture(scope="session")
def tiny_llama() -> Any:
    from smartspec.models.tiny import tiny_pair

    return tiny_pair("llama", seed=0)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Any) -> tuple[Path, Path]:
    return tiny_llama.save(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def real_pair() -> tuple[Path, Path]:
    """The converted real pair; fails (not skips) with the fix when it has not been fetched."""
    from smartspec.models.fetch import model_path
    from smartspec.models.settings import ModelSettings

    settings = ModelSettings()
    return model_path(settings, "target"), model_path(settings, "draft")


def hf_greedy(model: Any, prompt: list[int], max_new_tokens: int) -> list[int]:
    """Target-only greedy reference: plain transformers forwards with a DynamicCache, no EOS stop.

    Written out instead of `generate` because generate refills a cleared EOS from the model's
    generation config; nothing of smartspec is used here.
    """
    import inspect

    from transformers import DynamicCache

    kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = DynamicCache(config=model.config)
    ids = torch.tensor([prompt])
    out: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = model(input_ids=ids, use_cache=True, **{kw: cache}).logits
            nxt = int(logits[0, -1].argmax())
            out.append(nxt)
            ids = torch.tensor([[nxt]])
    return out
