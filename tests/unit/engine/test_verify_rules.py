"""Verification maths: greedy prefix rule, rejection sampling edge cases, and exactness in distribution."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from smartspec.engine.sampling import processed_probs, sample_from
from smartspec.engine.verify_rules import greedy_verify, rejection_sample
from tests.stats import chisquare_pvalue


def test_greedy_accepts_longest_matching_prefix_then_target_token() -> None:
    target = torch.tensor([[5, 6, 7, 8], [5, 9, 7, 8], [1, 2, 3, 4], [4, 4, 4, 4]])
    drafts = torch.tensor([[5, 6, 7], [5, 6, 7], [9, 2, 3], [-1, -1, -1]])
    num_draft = torch.tensor([3, 3, 3, 0])
    res = greedy_verify(target, drafts, num_draft)
    assert res.num_accepted.tolist() == [3, 1, 0, 0]
    assert res.emitted(0) == [5, 6, 7, 8]  # all accepted + bonus
    assert res.emitted(1) == [5, 9]  # first rejected at position 1: target's token instead
    assert res.emitted(2) == [1]
    assert res.emitted(3) == [4]  # k = 0 is plain decoding


def test_greedy_ignores_padding_beyond_each_rows_k() -> None:
    # Row 0 has k = 1 but padding that happens to match the target must not count.
    target = torch.tensor([[3, 4, 5], [3, 4, 5]])
    drafts = torch.tensor([[3, 4], [3, 4]])
    res = greedy_verify(target, drafts, torch.tensor([1, 2]))
    assert res.num_accepted.tolist() == [1, 2]
    assert res.emitted(0) == [3, 4] and res.emitted(1) == [3, 4, 5]


def test_rejection_with_q_equal_p_always_accepts() -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(64, 4, 10, generator=g), dim=-1)
    drafts = torch.stack([torch.multinomial(p[:, j], 1, generator=g).squeeze(1) for j in range(3)], dim=1)
    res = rejection_sample(p, drafts, p[:, :3], torch.full((64,), 3), torch.rand(64, 3, generator=g),
                           torch.rand(64, generator=g))
    assert res.num_accepted.tolist() == [3] * 64


def test_rejection_never_accepts_a_token_the_target_cannot_emit() -> None:
    p = torch.zeros(1, 2, 4)
    p[0, :, 0] = 1.0  # target only ever emits 0
    res = rejection_sample(p, torch.tensor([[2]]), None, torch.tensor([1]), torch.tensor([[0.0]]), torch.tensor([0.5]))
    assert res.num_accepted.tolist() == [0] and res.emitted(0) == [0]


def test_draft_claiming_zero_q_for_its_token_is_rejected() -> None:
    p = torch.full((1, 2, 4), 0.25)
    q = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])  # says it sampled from a point mass on 0 ...
    res = rejection_sample(p, torch.tensor([[3]]), q, torch.tensor([1]), torch.tensor([[0.0]]), torch.tensor([0.1]))
    assert res.num_accepted.tolist() == [0]  # ... but proposes 3: not trusted


def test_sample_from_never_picks_zero_probability() -> None:
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.5, 0.0]]).repeat(1000, 1)
    picks = sample_from(probs, torch.rand(1000, generator=torch.Generator().manual_seed(1)))
    assert set(picks.tolist()) <= {1, 3}
    edge = sample_from(probs[:2], torch.tensor([0.0, 0.9999999]))
    assert edge.tolist() == [1, 3]


def test_processed_probs_temperature_top_k_top_p() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]] * 4))
    probs = processed_probs(
        logits,
        temperature=torch.tensor([1.0, 1.0, 1.0, 0.5]),
        top_p=torch.tensor([1.0, 0.7, 1.0, 1.0]),
        top_k=torch.tensor([0, 0, 2, 0]),
    )
    torch.testing.assert_close(probs[0], torch.tensor([0.5, 0.3, 0.15, 0.05]))
    # top_p 0.7: keep tokens while the mass before them is < 0.7 -> {0, 1}
    torch.testing.assert_close(probs[1], torch.tensor([0.625, 0.375, 0.0, 0.0]))
    torch.testing.assert_close(probs[2], torch.tensor([0.625, 0.375, 0.0, 0.0]))
    expected = torch.tensor([0.25, 0.09, 0.0225, 0.0025])
    torch.testing.assert_close(probs[3], expected / expected.sum())
    tiny_p = processed_probs(logits[:1], torch.tensor([1.0]), torch.tensor([1e-6]), torch.tensor([0]))
    assert tiny_p[0].tolist() == [1.0, 0.0, 0.0, 0.0]  # top-1 always survives


# --- exactness in distribution -------------------------------------------------------------
V, K, LENGTH, TRIALS = 5, 3, 3, 24_000


def _markov(seed: int) -> torch.Tensor:
    """A toy autoregressive 'target': p(next | last token), some zero entries."""
    g = torch.Generator().manual_seed(seed)
    table = torch.rand(V, V, generator=g) ** 3
    table[torch.rand(V, V, generator=g) < 0.25] = 0.0
    table[:, 0] += 0.05  # every row keeps some mass
    return table / table.sum(dim=1, keepdim=True)


def _draft_table(kind: str, p: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 100)
    if kind == "random":
        q = torch.rand(V, V, generator=g)
    elif kind == "adversarial":  # mass exactly where the target has least
        q = (1.0 - p) ** 8 + 1e-3 * torch.rand(V, V, generator=g)
        q[p > 0] *= 0.01
    elif kind == "onehot":  # a model-free proposer: always the target's least likely token
        q = torch.zeros(V, V)
        q[torch.arange(V), p.argmin(dim=1)] = 1.0
    else:
        q = p.clone()
    return q / q.sum(dim=1, keepdim=True)


def _speculate(p_table: torch.Tensor, q_table: torch.Tensor, onehot: bool, seed: int) -> torch.Tensor:
    """Generate LENGTH tokens per trial with ragged random k per trial per step."""
    g = torch.Generator().manual_seed(seed)
    out = torch.full((TRIALS, LENGTH + K + 1), -1, dtype=torch.long)
    count = torch.zeros(TRIALS, dtype=torch.long)
    last = torch.zeros(TRIALS, dtype=torch.long)  # start token 0
    rows = torch.arange(TRIALS)
    while bool((count < LENGTH).any()):
        k = torch.randint(0, K + 1, (TRIALS,), generator=g)
        drafts = torch.full((TRIALS, K), -1, dtype=torch.long)
        q = torch.zeros(TRIALS, K, V)
        p = torch.zeros(TRIALS, K + 1, V)
        prev = last.clone()
        for j in range(K + 1):
            p[:, j] = p_table[prev]
            if j == K:
                break
            q[:, j] = q_table[prev]
            drafts[:, j] = torch.multinomial(q[:, j], 1, generator=g).squeeze(1)
            prev = torch.where(j < k, drafts[:, j], prev)
            # Positions past k keep p at the last real context; they are never read.
        res = rejection_sample(p, drafts, None if onehot else q, k, torch.rand(TRIALS, K, generator=g),
                               torch.rand(TRIALS, generator=g))
        for j in range(K + 1):
            take = (j <= res.num_accepted) & (count < out.shape[1])
            out[rows[take], count[take]] = res.output_token_ids[take, j]
            count += take.long()
        last = out[rows, count - 1]
    return out[:, :LENGTH]


@pytest.mark.parametrize("kind", ["random", "adversarial", "onehot", "same"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_emitted_sequences_follow_the_target_distribution(kind: str, seed: int) -> None:
    p_table = _markov(seed)
    q_table = _draft_table(kind, p_table, seed)
    seqs = _speculate(p_table, q_table, onehot=kind == "onehot", seed=seed)
    # Exact probability of every LENGTH-token sequence under target-only sampling.
    cells = list(itertools.product(range(V), repeat=LENGTH))
    expected = []
    for cell in cells:
        prob, prev = 1.0, 0
        for tok in cell:
            prob *= float(p_table[prev, tok])
            prev = tok
        expected.append(prob)
    exp = np.array(expected) / sum(expected) * TRIALS  # renormalise float32 rounding
    index = {c: i for i, c in enumerate(cells)}
    obs = np.zeros(len(cells))
    for row in seqs.tolist():
        obs[index[tuple(row)]] += 1
    assert obs[exp == 0].sum() == 0, "emitted a sequence the target gives probability 0"
    live = exp > 0
    pvalue = chisquare_pvalue(obs[live], exp[live])
    assert pvalue > 1e-4, f"{kind}/{seed}: p-value {pvalue:.2e}"
