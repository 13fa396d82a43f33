"""Assemble a SpecEngine from model folders: target runner, optional draft or n-gram proposer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from smartspec.engine.engine import SpecEngine
from smartspec.engine.proposers.base import Proposer
from smartspec.engine.proposers.draft_model import DraftModelProposer
from smartspec.engine.proposers.ngram import NgramProposer
from smartspec.engine.runner import ModelRunner
from smartspec.models.loading import check_pair, load_model, load_tokenizer

NGRAM = "ngram"


@dataclass
class EngineSpec:
    """What to build: model folders (draft may be 'ngram' or None), dtype and capacity."""

    target: str
    draft: str | None
    dtype: str = "bfloat16"
    num_slots: int = 8
    max_len: int = 2048
    max_k: int = 8


def eos_ids(tokenizer: Any, model: Any) -> set[int]:
    """EOS ids from the tokenizer and the generation config (instruct models often have two)."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(int(t) for t in gen_eos)
    return ids


def build_engine(spec: EngineSpec) -> tuple[SpecEngine, Any]:
    """Load everything and return (engine, target tokenizer). Raises smartspec errors on bad input."""
    tokenizer = load_tokenizer(spec.target)
    draft_tokenizer = None
    if spec.draft not in (None, NGRAM):
        draft_tokenizer = load_tokenizer(spec.draft)
        check_pair(tokenizer, draft_tokenizer)  # before loading any weights: fail fast
    target = load_model(spec.target, spec.dtype)
    runner = ModelRunner(target, num_slots=spec.num_slots, max_len=spec.max_len)
    proposer: Proposer | None = None
    if spec.draft == NGRAM:
        proposer = NgramProposer()
    elif spec.draft is not None:
        draft = load_model(spec.draft, spec.dtype)
        # The draft holds the same tokens as the target plus up to max_k drafts in flight.
        draft_runner = ModelRunner(draft, num_slots=spec.num_slots, max_len=runner.max_len + spec.max_k)
        proposer = DraftModelProposer(draft_runner, runner.vocab_size)
    engine = SpecEngine(runner, proposer, eos_token_ids=eos_ids(tokenizer, target), max_k=spec.max_k)
    return engine, tokenizer
