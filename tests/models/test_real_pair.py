"""The real Qwen2.5-Coder 1.5B/0.5B pair in fp32: speculative greedy output is token-identical
to target-only greedy, for both proposers, fixed and ragged k, joins and finishes mid-batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from smartspec.engine.engine import SpecEngine
from smartspec.engine.proposers.draft_model import DraftModelProposer
from smartspec.engine.proposers.ngram import NgramProposer
from smartspec.engine.runner import ModelRunner
from smartspec.models.loading import check_pair, load_model, load_tokenizer
from tests.conftest import hf_greedy
from tests.unit.engine.test_engine import run_schedule

pytestmark = pytest.mark.realpair

PROMPTS = [
    "Write a Python function that checks whether a number is prime.",
    "Explain what a hash map is in two sentences.",
    "Complete: def quicksort(arr):",
    "Write a SQL query that counts orders per customer.",
    "What does `git rebase` do?",
]
LENGTHS = [20, 14, 24, 10, 17]


@pytest.fixture(scope="module")
def pair(real_pair: tuple[Path, Path]) -> dict[str, Any]:
    target_dir, draft_dir = real_pair
    tok = load_tokenizer(target_dir)
    check_pair(tok, load_tokenizer(draft_dir))
    target = load_model(target_dir, "float32")
    draft = load_model(draft_dir, "float32")
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True,
                                return_dict=False)
        for p in PROMPTS
    ]
    refs = [hf_greedy(target, p, n) for p, n in zip(prompts, LENGTHS, strict=True)]
    return {"target": target, "draft": draft, "prompts": prompts, "refs": refs}


def engine_for(pair: dict[str, Any], proposer: str, slots: int) -> SpecEngine:
    runner = ModelRunner(pair["target"], num_slots=slots, max_len=160)
    prop: Any = NgramProposer()
    if proposer == "draft":
        prop = DraftModelProposer(ModelRunner(pair["draft"], num_slots=slots, max_len=170), runner.vocab_size)
    return SpecEngine(runner, prop, max_k=8)


@pytest.mark.parametrize("k", [1, 3, 5, 8])
def test_fixed_k_draft_model_is_exact(pair: dict[str, Any], k: int) -> None:
    engine = engine_for(pair, "draft", slots=3)
    reqs = [(i, pair["prompts"][i], LENGTHS[i], 0) for i in range(3)]
    out = run_schedule(engine, reqs, lambda sid, step: k)
    assert [out[i] for i in range(3)] == pair["refs"][:3]


@pytest.mark.parametrize("proposer", ["draft", "ngram"])
def test_ragged_k_with_joins_and_finishes_is_exact(pair: dict[str, Any], proposer: str) -> None:
    # 5 requests, 3 slots: two wait and join later; k differs per request and per step (0 … 8).
    engine = engine_for(pair, proposer, slots=3)
    reqs = [(i, p, n, (2 * i) % 5) for i, (p, n) in enumerate(zip(pair["prompts"], LENGTHS, strict=True))]
    out = run_schedule(engine, reqs, lambda sid, step: (sid * 5 + step * 3) % 9)
    assert [out[i] for i in range(5)] == pair["refs"]


def test_goodput_scheduler_is_exact(pair: dict[str, Any]) -> None:
    # The policy decides k per request per step (with the default cost model, refitted online after
    # a few steps); whatever it decides, greedy output is the target's.
    from smartspec.engine.refit import RefitConfig
    from smartspec.engine.sampling import SamplingParams
    from smartspec.engine.scheduler import Scheduler
    from smartspec.policy.policy import PolicyConfig, SpeculationPolicy

    engine = engine_for(pair, "draft", slots=3)
    sch = Scheduler(engine, SpeculationPolicy(PolicyConfig(mode="goodput")),
                    refit=RefitConfig(min_samples=6, every_steps=6))
    joins = {0: [0, 1], 2: [2], 4: [3, 4]}
    step, done = 0, {}
    while step <= max(joins) or sch.has_unfinished:
        for i in joins.get(step, []):
            sch.submit(i, pair["prompts"][i], SamplingParams(max_tokens=LENGTHS[i]))
        out = sch.step()
        for sid in out.finished:
            done[sid] = sch.pop_finished(sid)
        step += 1
    assert [done[i].output_ids for i in range(5)] == pair["refs"]
    assert any(k > 0 for i in range(5) for k in done[i].stats.k_history)
