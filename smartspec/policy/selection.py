"""Choose k per request on the decode step alone, exactly: the best k⃗ at a price of time, and the best ratio.

The objective is the step's *decode* work (prefill and k-independent overhead are not k's to
change; with prefill in, any step that admits a prompt looks cheap to speculate in). Its time is

    T(k⃗) = α(M) + β(M)·S + Σ_{i: k_i > 0} (f_i + a_i·E_i(k_i)),

M = max k_i, S = Σ k_i; α, β from the cost model at the decode-only shape (affine in S for a fixed
M); f_i and a_i are request i's own draft catch-up (see `CatchUp`). At a price λ (tokens per
second of step time) the value V(k⃗) = Σ E_i(k_i) − λ·T(k⃗) separates for a fixed M into
per-request terms

    v_i(k) = Σ_{j≤k} (s_ij·(1 − λ·a_i) − λ·β) − λ·(f_i + a_i),  v_i(0) = 0,

whose increments are non-increasing in j (survival s_ij is), so each request takes positions while
the increment is positive and then keeps k > 0 only if v_i > 0: exact. Scanning M = 1 … K (a
solution found under cap M is re-scored at its true max) gives the best k⃗ at λ.

Two policies on top (`objective`):
- "ratio": the best goodput Σ E / T — Dinkelbach from λ₀ = h·B/T(0⃗): if nothing beats λ₀ the
  answer is k = 0 (speculation must beat the k = 0 rate by the hysteresis h), otherwise λ rises to
  the ratio just achieved until it stops rising.
- "marginal": one evaluation at λ₀: the extra expected tokens Σ (E_i − 1) against the extra decode
  time T(k⃗) − T(0⃗) priced at h (× a queue weight) times the k = 0 rate.
Cost: O(iterations · K · B · K) numpy operations — no per-request Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from smartspec.policy.cost_model import CostModel, StepShape

Objective = Literal["ratio", "marginal"]
_MAX_DINKELBACH_ITERS = 32


@dataclass(frozen=True)
class CatchUp:
    """Per-request seconds of draft catch-up charged when the request speculates: `fixed` once in the
    step, or `per_token` for every token it is expected to emit (a one-off cost spread over the tokens
    it enables, when the request is expected to keep speculating)."""

    fixed: np.ndarray  # [B] seconds, f_i
    per_token: np.ndarray  # [B] seconds per expected emitted token, a_i

    @staticmethod
    def none(batch: int) -> CatchUp:
        return CatchUp(np.zeros(batch), np.zeros(batch))


@dataclass(frozen=True)
class Selection:
    ks: np.ndarray  # [B] chosen k per request
    goodput: float  # predicted decode tokens/s of the chosen k⃗
    goodput_k0: float  # predicted decode tokens/s with every k = 0
    step_s: float  # predicted decode step time of the chosen k⃗ (catch-up included)
    step_k0_s: float  # ... with every k = 0


def expected_total(survival: np.ndarray, ks: np.ndarray) -> float:
    """Σ_i E_i(k_i) = Σ_i (1 + Σ_{j≤k_i} s_ij)."""
    return float(len(ks) + expected_each(survival, ks).sum() - len(ks))


def expected_each(survival: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """E_i(k_i) per request."""
    cols = np.arange(survival.shape[1])[None, :]
    return 1.0 + (survival * (cols < ks[:, None])).sum(axis=1)


def step_time(cost: CostModel, ks: np.ndarray, context_tokens: int, survival: np.ndarray,
              catchup: CatchUp | None = None) -> float:
    """T(k⃗): the decode step's predicted seconds, each speculating request's catch-up included."""
    t = cost.step_time(StepShape(len(ks), context_tokens, int(ks.max(initial=0)), int(ks.sum())))
    if catchup is not None and len(ks):
        on = ks > 0
        t += float((catchup.fixed[on] + catchup.per_token[on] * expected_each(survival[on], ks[on])).sum())
    return t


def select_goodput(
    survival: np.ndarray,  # [B, K] P(drafts 1..j all accepted) per request
    caps: np.ndarray,  # [B] per-request upper bound on k (0 … K)
    cost: CostModel,
    *,
    context_tokens: int,
    catchup: CatchUp | None = None,
    hysteresis: float = 1.0,
    objective: Objective = "ratio",
    price_weight: float = 1.0,
) -> Selection:
    """The best k⃗ for the decode step (see the module docstring); all zeros unless it pays."""
    batch = survival.shape[0]
    zeros = np.zeros(batch, dtype=int)
    t0 = step_time(cost, zeros, context_tokens, survival)
    g0 = batch / t0 if t0 > 0 else 0.0
    if batch == 0 or t0 <= 0:
        return Selection(zeros, g0, g0, t0, t0)
    surv = np.minimum.accumulate(np.clip(survival, 0.0, 1.0), axis=1)  # guard monotonicity
    caps = np.clip(caps, 0, surv.shape[1]).astype(int)
    catchup = catchup or CatchUp.none(batch)
    lam = hysteresis * price_weight * g0
    best, best_t = zeros, t0
    if objective == "marginal":  # one price: the best k⃗ against k = 0 at λ₀
        best = best_at_price(surv, caps, cost, context_tokens, catchup, lam)
        best_t = step_time(cost, best, context_tokens, surv, catchup) if best.any() else t0
    else:
        for _ in range(_MAX_DINKELBACH_ITERS):
            ks = best_at_price(surv, caps, cost, context_tokens, catchup, lam)
            if not ks.any():
                break
            t = step_time(cost, ks, context_tokens, surv, catchup)
            ratio = expected_total(surv, ks) / t
            if ratio <= lam * (1 + 1e-12):
                break  # nothing beats the current price (the hysteresis first, then the ratio so far)
            best, best_t, lam = ks, t, ratio
    goodput = expected_total(surv, best) / best_t if best_t > 0 else 0.0
    return Selection(best.astype(int), goodput, g0, best_t, t0)


def best_at_price(surv: np.ndarray, caps: np.ndarray, cost: CostModel, context_tokens: int, catchup: CatchUp,
                  lam: float) -> np.ndarray:
    """argmax over k⃗ of Σ E_i(k_i) − λ·T(k⃗), exactly (see the module docstring); zeros if none beats k = 0."""
    batch = surv.shape[0]
    zeros = np.zeros(batch, dtype=int)
    best, best_value = zeros, batch - lam * step_time(cost, zeros, context_tokens, surv)
    cols = np.arange(surv.shape[1])[None, :]
    scale = 1.0 - lam * catchup.per_token  # [B]
    for m in range(1, int(caps.max(initial=0)) + 1):
        alpha = cost.step_time(StepShape(batch, context_tokens, m, 0))
        beta = cost.step_time(StepShape(batch, context_tokens, m, 1)) - alpha
        capped = np.minimum(caps, m)
        inc = surv * scale[:, None] - lam * beta  # [B, K] value of each position
        take = (inc > 0) & (cols < capped[:, None])
        ks = take.cumprod(axis=1).sum(axis=1)
        gain = (inc * (cols < ks[:, None])).sum(axis=1) - lam * (catchup.fixed + catchup.per_token)
        ks = np.where((ks > 0) & (gain > 0), ks, 0)
        if not ks.any():
            continue
        value = expected_total(surv, ks) - lam * step_time(cost, ks, context_tokens, surv, catchup)  # at its true max
        if value > best_value:
            best, best_value = ks, value
    return best


def select_uniform(
    survival: np.ndarray, caps: np.ndarray, cost: CostModel, *, context_tokens: int, catchup: CatchUp | None = None,
    hysteresis: float = 1.0,
) -> Selection:
    """One k for the whole batch (each request at min(k, its cap)), the best goodput over k = 0 … K, as the
    authors' code decides; k = 0 unless the best beats it by the hysteresis."""
    batch = survival.shape[0]
    zeros = np.zeros(batch, dtype=int)
    t0 = step_time(cost, zeros, context_tokens, survival)
    g0 = batch / t0 if t0 > 0 else 0.0
    best, best_g, best_t = zeros, g0 * hysteresis, t0
    surv = np.minimum.accumulate(np.clip(survival, 0.0, 1.0), axis=1) if batch else survival
    for k in range(1, int(caps.max(initial=0)) + 1):
        ks = np.minimum(caps, k).astype(int)
        t = step_time(cost, ks, context_tokens, surv, catchup)
        g = expected_total(surv, ks) / t if t > 0 else 0.0
        if g > best_g:
            best, best_g, best_t = ks, g, t
    goodput = expected_total(surv, best) / best_t if batch and best_t > 0 else 0.0
    return Selection(best, goodput, g0, best_t, t0)


def goodput(survival: np.ndarray, ks: np.ndarray, cost: CostModel, *, context_tokens: int,
            catchup: CatchUp | None = None) -> float:
    """Predicted decode tokens/s of a given k⃗."""
    t = step_time(cost, ks, context_tokens, survival, catchup)
    return expected_total(survival, ks) / t if t > 0 else 0.0
