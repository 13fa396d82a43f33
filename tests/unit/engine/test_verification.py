"""verify_rows: a step's verdicts for ragged greedy rows, in row order, next to sampled rows."""

from __future__ import annotations

import torch

from smartspec.engine.proposers.base import Proposal
from smartspec.engine.sampling import SamplingParams
from smartspec.engine.sequence import Sequence
from smartspec.engine.verification import ScoredRow, verify_rows


def greedy_reference(logits: torch.Tensor, drafts: list[int]) -> tuple[int, list[int]]:
    """The longest prefix of drafts equal to the target's argmax, then the target's own next token."""
    target = logits.argmax(dim=-1).tolist()
    n = 0
    while n < len(drafts) and drafts[n] == target[n]:
        n += 1
    return n, [*drafts[:n], target[n]]


def test_ragged_greedy_rows_get_each_their_own_verdict_in_order() -> None:
    gen = torch.Generator().manual_seed(0)
    # k = 0 with no proposal, k = 0 with an empty one, then k = 2, 5, 3, 1 accepting 2, 3, 0 and 1 drafts.
    plan: list[tuple[int | None, int]] = [(None, 0), (0, 0), (2, 2), (5, 3), (3, 0), (1, 1)]
    rows, want = [], []
    for i, (k, accept) in enumerate(plan):
        logits = torch.randn((k or 0) + 1, 50, generator=gen)
        target = logits.argmax(dim=-1).tolist()
        drafts = [*target[:accept], *[(t + 1) % 50 for t in target[accept: k or 0]]]
        seq = Sequence.create(i, [1, 2], SamplingParams(max_tokens=16))
        # Half the rows carry the batch's argmax view (as the engine passes it), half leave it to verify_rows.
        rows.append(ScoredRow(seq, None if k is None else Proposal(drafts), logits,
                              logits.argmax(dim=-1) if i % 2 else None))
        want.append(greedy_reference(logits, drafts))
    assert verify_rows(rows) == want
    assert [n for n, _ in want] == [0, 0, 2, 3, 0, 1]


def test_greedy_and_sampled_rows_keep_the_batch_order() -> None:
    gen = torch.Generator().manual_seed(1)
    rows, greedy_want = [], {}
    for i in range(5):
        logits = torch.randn(3, 40, generator=gen)
        target = logits.argmax(dim=-1).tolist()
        sampled = i % 2 == 1
        params = SamplingParams(max_tokens=16, temperature=0.8, seed=i) if sampled else SamplingParams(max_tokens=16)
        rows.append(ScoredRow(Sequence.create(i, [1], params), Proposal(target[:2]), logits))
        if not sampled:
            greedy_want[i] = (2, target)
    verdicts = verify_rows(rows)
    assert len(verdicts) == 5
    for i, (n, tokens) in enumerate(verdicts):
        assert len(tokens) == n + 1 and 0 <= n <= 2
        if i in greedy_want:
            assert (n, tokens) == greedy_want[i]
