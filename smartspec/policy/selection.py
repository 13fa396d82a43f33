"""Choose k per request to maximise goodput G(k⃗) = Σ_i E_i(k_i) / T(k⃗) — exactly.

T depends on k⃗ only through M = max k_i (padded width, draft forwards, "speculating at all")
and S = Σ k_i, and for a fixed M it is affine in S: T = α(M) + β(M)·S. For fixed M the problem
is a linear-fractional one over separable, concave numerators (E_i's increments are the survival
probabilities s_ij, non-increasing in j), which Dinkelbach's method solves exactly: for a trial
ratio g, each request independently takes every position whose survival beats g·β(M); then g
becomes the ratio just achieved, until it stops rising. Scanning M = 1 … K and keeping the best
gives the global optimum (a solution found under cap M but with max k < M is re-scored exactly
at its true max). Cost: O(K · iterations · B · K) numpy operations — no per-request Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from smartspec.policy.cost_model import CostModel, StepShape

_MAX_DINKELBACH_ITERS = 32


@dataclass(frozen=True)
class Selection:
    ks: np.ndarray  # [B] chosen k per request
    goodput: float  # predicted tokens/s of the chosen k⃗
    goodput_k0: float  # predicted tokens/s with every k = 0
    step_s: float  # predicted step time of the chosen k⃗


def _shape(batch: int, context: int, prefill: int, ks: np.ndarray) -> StepShape:
    return StepShape(batch, context, int(ks.max(initial=0)), int(ks.sum()), prefill)


def _ks_for(survival: np.ndarray, caps: np.ndarray, threshold: float) -> np.ndarray:
    # Take position j while its survival beats the threshold (survival is non-increasing in j).
    cols = np.arange(survival.shape[1])[None, :]
    take = (survival > threshold) & (cols < caps[:, None])
    return take.cumprod(axis=1).sum(axis=1)


def select_goodput(
    survival: np.ndarray,  # [B, K] P(drafts 1..j all accepted) per request
    caps: np.ndarray,  # [B] per-request upper bound on k (0 … K)
    cost: CostModel,
    *,
    context_tokens: int,
    prefill_tokens: int = 0,
    hysteresis: float = 1.0,
) -> Selection:
    """The goodput-optimal k⃗; all zeros unless the best beats k = 0 by `hysteresis`."""
    batch, k_max = survival.shape
    zeros = np.zeros(batch, dtype=int)
    t0 = cost.step_time(_shape(batch, context_tokens, prefill_tokens, zeros))
    g0 = batch / t0 if t0 > 0 else 0.0
    if batch == 0:
        return Selection(zeros, 0.0, 0.0, t0)
    surv = np.minimum.accumulate(np.clip(survival, 0.0, 1.0), axis=1)  # guard monotonicity
    caps = np.clip(caps, 0, k_max).astype(int)
    best_ks, best_g, best_t = zeros, g0, t0
    for m in range(1, int(caps.max(initial=0)) + 1):
        ks = _best_under_cap(surv, np.minimum(caps, m), cost, StepShape(batch, context_tokens, m, 0, prefill_tokens))
        if ks is None or ks.max(initial=0) == 0:
            continue
        true_t = cost.step_time(_shape(batch, context_tokens, prefill_tokens, ks))  # exact at its own max
        true_g = expected_total(surv, ks) / true_t if true_t > 0 else 0.0
        if true_g > best_g:
            best_ks, best_g, best_t = ks, true_g, true_t
    if best_ks.max(initial=0) > 0 and best_g < hysteresis * g0:
        return Selection(zeros, g0, g0, t0)
    return Selection(best_ks.astype(int), best_g, g0, best_t)


def _best_under_cap(surv: np.ndarray, capped: np.ndarray, cost: CostModel, at_m: StepShape) -> np.ndarray | None:
    """Dinkelbach for a fixed M: maximise Σ E_i / (α + β·S) with k_i <= capped_i."""
    alpha = cost.step_time(at_m)
    beta = cost.step_time(StepShape(at_m.batch, at_m.context_tokens, at_m.max_k, 1, at_m.prefill_tokens)) - alpha
    if beta <= 0:  # extra drafts cost nothing under this model: every position adds tokens
        return capped
    best: np.ndarray | None = None
    g = 0.0
    for _ in range(_MAX_DINKELBACH_ITERS):
        ks = _ks_for(surv, capped, g * beta)
        denom = alpha + beta * float(ks.sum())
        if denom <= 0:
            return best
        ratio = expected_total(surv, ks) / denom
        if ratio <= g * (1 + 1e-12):
            break
        best, g = ks, ratio
    return best


def expected_total(survival: np.ndarray, ks: np.ndarray) -> float:
    """Σ_i E_i(k_i) = Σ_i (1 + Σ_{j≤k_i} s_ij)."""
    cols = np.arange(survival.shape[1])[None, :]
    return float(len(ks) + (survival * (cols < ks[:, None])).sum())


def goodput(survival: np.ndarray, ks: np.ndarray, cost: CostModel, *, context_tokens: int,
            prefill_tokens: int = 0) -> float:
    """Predicted tokens/s of a given k⃗."""
    t = cost.step_time(_shape(len(ks), context_tokens, prefill_tokens, ks))
    return expected_total(survival, ks) / t if t > 0 else 0.0
