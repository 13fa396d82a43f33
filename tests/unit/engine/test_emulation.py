"""Acceptance emulation: verdicts follow α (geometric), shapes and KV work stay those of real speculation."""

from __future__ import annotations

from typing import Any

import pytest

from smartspec.engine.emulation import AcceptanceEmulator
from smartspec.engine.engine import SpecEngine
from smartspec.engine.proposers.draft_model import DraftModelProposer
from smartspec.engine.runner import ModelRunner
from smartspec.engine.sampling import SamplingParams


def engine(pair: Any, alpha: float) -> SpecEngine:
    runner = ModelRunner(pair.target, num_slots=4, max_len=256)
    prop = DraftModelProposer(ModelRunner(pair.draft, num_slots=4, max_len=264), runner.vocab_size)
    return SpecEngine(runner, prop, eos_token_ids=(), max_k=8, emulate_acceptance=alpha)


def run(e: SpecEngine, k: int, max_tokens: int = 60) -> tuple[list[int], int, int, int]:
    """(per-step emitted counts of request 0, total proposed, total accepted, output length)."""
    e.add_request(0, [1, 2, 3, 4, 5], SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    e.add_request(1, [9, 8, 7], SamplingParams(max_tokens=max_tokens, ignore_eos=True))
    emitted, proposed, accepted, out_len = [], 0, 0, 0
    while e.has_unfinished:
        out = e.step({sid: k for sid in e.running})
        emitted.append(len(out.emitted.get(0, [])))
        assert out.stats is not None
        proposed += sum(out.stats.num_proposed_per_pos)
        accepted += sum(out.stats.num_accepted_per_pos)
        for sid in out.finished:
            seq = e.pop_finished(sid)
            out_len = len(seq.output_ids) if sid == 0 else out_len
    return emitted, proposed, accepted, out_len


def test_alpha_one_accepts_every_draft_and_zero_none(tiny_llama: Any) -> None:
    emitted, proposed, accepted, n = run(engine(tiny_llama, 1.0), k=4)
    assert accepted == proposed > 0 and n == 60
    assert max(emitted) == 5  # k + 1 per step while room is left
    emitted, proposed, accepted, n = run(engine(tiny_llama, 0.0), k=4)
    assert accepted == 0 and proposed > 0 and n == 60  # one target token per step, still exact length


def test_acceptance_rate_follows_alpha(tiny_llama: Any) -> None:
    _, proposed, accepted, _ = run(engine(tiny_llama, 0.6), k=3, max_tokens=200)
    # Geometric: E[accepted of 3] = 0.6 + 0.36 + 0.216 = 1.176, i.e. 0.392 of the proposed drafts.
    assert 0.32 < accepted / proposed < 0.46


def test_rows_at_k0_keep_the_target_verdict() -> None:
    class Row:
        proposal = None
        k = 0

    assert AcceptanceEmulator(0.9).redraw([Row()], [(0, [42])]) == [(0, [42])]  # type: ignore[list-item]
    with pytest.raises(ValueError):
        AcceptanceEmulator(1.5)
