"""Assemble engines and proposers from model folders: the one place the target's engine and every proposer are built.

`build_engine` (the CLI's in-process engine and the benches), the target service (whose proposer is the
remote draft) and the draft service (a proposer without an engine) all go through `draft_proposer` and
`assemble_engine`, so an engine is put together the same way wherever it runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Literal

from smartspec.engine.engine import SpecEngine
from smartspec.engine.graph_runner import GraphRunner
from smartspec.engine.graph_step import BucketConfig
from smartspec.engine.head import SubsetHead, head_ids
from smartspec.engine.proposers.base import Proposer
from smartspec.engine.proposers.draft_model import NARROW_ROW_TOKENS, DraftModelProposer
from smartspec.engine.proposers.ngram import NgramProposer
from smartspec.engine.quant import quantize
from smartspec.engine.runner import ModelRunner
from smartspec.engine.steps import AdmissionLimits
from smartspec.models.loading import check_pair, load_model, load_tokenizer

NGRAM = "ngram"
log = logging.getLogger(__name__)


@dataclass
class EngineSpec:
    """What to build: model folders (draft may be 'ngram' or None), dtype, capacity and admission."""

    target: str
    draft: str | None
    dtype: str = "bfloat16"
    num_slots: int = 8
    max_len: int = 2048
    max_k: int = 8
    max_prefill_tokens: int | None = None  # prompt tokens prefilled per step (None: no budget)
    emulate_acceptance: float | None = None  # experiments only: drafts accepted at random (engine/emulation.py)
    graphs: str = "auto"  # replay verify steps as graphs: auto (on CUDA), on, off
    draft_head_vocab: int | None = None  # draft only among the first N token ids (+ EOS): engine/head.py
    draft_quant: str | None = None  # 'int8': the draft's Linear weights as int8 rows (engine/quant.py)
    cpu_kernels: Literal["auto", "on", "off"] = "auto"  # bf16 Linear layers on AVX2 CPUs (engine/cpu_bf16.py)


def make_runner(model: Any, *, num_slots: int, max_len: int, graphs: str = "auto", max_k: int = 8,
                buckets: BucketConfig | None = None) -> ModelRunner:
    """The target's runner: a GraphRunner where `graphs` is on (auto: on CUDA), else the eager one."""
    if graphs not in ("auto", "on", "off"):
        raise ValueError(f"graphs must be auto, on or off, got {graphs!r}")
    device = next(model.parameters()).device
    if graphs == "off" or (graphs == "auto" and device.type != "cuda"):
        return ModelRunner(model, num_slots=num_slots, max_len=max_len)
    cfg = buckets or BucketConfig()
    cfg = replace(cfg, max_width=max_k + 1)  # widths 1 … K + 1
    runner = GraphRunner(model, num_slots=num_slots, max_len=max_len, buckets=cfg)
    log.info("graph runner on %s: batch sizes %s, widths 1-%d, KV lengths %s", device, cfg.batch_sizes, max_k + 1,
             cfg.kv_sizes)
    return runner


def eos_ids(tokenizer: Any, model: Any) -> set[int]:
    """EOS ids from the tokenizer and the generation config (instruct models often have two)."""
    ids: set[int] = set()
    if tokenizer is not None and tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(int(t) for t in gen_eos)
    return ids


def draft_proposer(draft: str, *, dtype: str, num_slots: int, max_len: int, target_vocab: int | None = None,
                   q_top_k: int | None = None, ngram_max: int = 4, ngram_min: int = 2,
                   model: Any = None, graphs: str = "auto", max_k: int = 8,
                   head_vocab: int | None = None, quant: str | None = None,
                   cpu_kernels: Literal["auto", "on", "off"] = "auto") -> tuple[Proposer, ModelRunner | None]:
    """The proposer for `draft` ('ngram' or a model folder; `model` if already loaded) and its runner (None for
    n-gram). `target_vocab` bounds the draft's q to the target's vocabulary (None: the draft's own); `head_vocab`
    drafts only among the first N ids and the end-of-sequence ids (engine/head.py); `quant` ('int8') stores the
    draft's Linear weights as int8 rows (engine/quant.py, in place on the model)."""
    if draft == NGRAM:
        return NgramProposer(max_n=ngram_max, min_n=ngram_min), None
    if model is None:
        model = load_model(draft, dtype, cpu_kernels)
    if quant is not None:
        log.info("draft: %d Linear layers stored as %s", quantize(model, quant), quant)
    # With graphs, drafting (greedy or sampled) replays one chain: a catch-up of up to 4 tokens, then one at a time.
    runner = make_runner(model, num_slots=num_slots,
                         max_len=max_len, graphs=graphs, max_k=max(max_k, NARROW_ROW_TOKENS - 1))
    if head_vocab is not None:
        runner.head = SubsetHead(runner.lm_head, head_ids(runner.vocab_size, head_vocab, eos_ids(None, runner.model)))
    vocab = runner.vocab_size if target_vocab is None else target_vocab
    return DraftModelProposer(runner, vocab, q_top_k=q_top_k), runner


def assemble_engine(runner: ModelRunner, model: Any, tokenizer: Any, proposer: Proposer | None,
                    spec: EngineSpec) -> SpecEngine:
    """The engine over a target runner and any proposer (in-process, remote or none)."""
    return SpecEngine(runner, proposer, eos_token_ids=eos_ids(tokenizer, model), max_k=spec.max_k,
                      limits=AdmissionLimits(max_prefill_tokens=spec.max_prefill_tokens),
                      emulate_acceptance=spec.emulate_acceptance)


def build_engine(spec: EngineSpec) -> tuple[SpecEngine, Any]:
    """Load everything and return (engine, target tokenizer). Raises smartspec errors on bad input."""
    tokenizer = load_tokenizer(spec.target)
    if spec.draft not in (None, NGRAM):
        check_pair(tokenizer, load_tokenizer(spec.draft))  # before loading any weights: fail fast
    target = load_model(spec.target, spec.dtype, spec.cpu_kernels)
    runner = make_runner(target, num_slots=spec.num_slots, max_len=spec.max_len, graphs=spec.graphs, max_k=spec.max_k)
    proposer: Proposer | None = None
    if spec.draft is not None:
        # The draft holds the same tokens as the target plus up to max_k drafts in flight.
        proposer, _ = draft_proposer(spec.draft, dtype=spec.dtype, num_slots=spec.num_slots,
                                     max_len=runner.max_len + spec.max_k, target_vocab=runner.vocab_size,
                                     graphs=spec.graphs, max_k=spec.max_k, head_vocab=spec.draft_head_vocab,
                                     quant=spec.draft_quant, cpu_kernels=spec.cpu_kernels)
    return assemble_engine(runner, target, tokenizer, proposer, spec), tokenizer
