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
Cost: a few numpy passes over [K, B, K] arrays per Dinkelbach iteration — no per-request Python loop,
and the cost model is evaluated once per decision (`StepCurve`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from smartspec.policy.cost_model import CostModel

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


@dataclass(frozen=True)
class StepCurve:
    """The decode step's time at one batch and context, T = α[M] + β[M]·S (see `CostModel.decode_curve`):
    built once per decision, so pricing a k⃗ is two lookups, not a pass over the cost model's features."""

    alpha: np.ndarray  # [K + 1]
    beta: np.ndarray  # [K + 1], β[0] = 0

    @classmethod
    def of(cls, cost: CostModel, batch: int, context_tokens: int, max_k: int) -> StepCurve:
        return cls(*cost.decode_curve(batch, context_tokens, max_k))

    def time(self, ks: np.ndarray, survival: np.ndarray, catchup: CatchUp | None = None) -> float:
        """T(k⃗), each speculating request's catch-up included."""
        m = int(ks.max(initial=0))
        t = float(self.alpha[m] + self.beta[m] * ks.sum())
        if catchup is not None and m > 0:
            on = ks > 0
            t += float((catchup.fixed[on] + catchup.per_token[on] * expected_each(survival[on], ks[on])).sum())
        return t


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
    return StepCurve.of(cost, len(ks), context_tokens, int(ks.max(initial=0))).time(ks, survival, catchup)


def _frame(survival: np.ndarray, caps: np.ndarray, cost: CostModel, context_tokens: int,
           curve: StepCurve | None) -> tuple[np.ndarray, StepCurve, float, float, np.ndarray]:
    """What every selection starts from: caps within K, the step curve, the k = 0 step time and rate, and the
    survival made non-increasing along k (an estimate may wobble; the exact rule needs it monotone)."""
    batch = survival.shape[0]
    caps = np.clip(caps, 0, survival.shape[1]).astype(int)
    curve = curve or StepCurve.of(cost, batch, context_tokens, int(caps.max(initial=0)))
    t0 = float(curve.alpha[0])
    g0 = batch / t0 if t0 > 0 else 0.0
    surv = np.minimum.accumulate(np.clip(survival, 0.0, 1.0), axis=1) if batch else survival
    return caps, curve, t0, g0, surv


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
    curve: StepCurve | None = None,  # the cost model at this batch and context, when the caller has it
) -> Selection:
    """The best k⃗ for the decode step (see the module docstring); all zeros unless it pays."""
    batch = survival.shape[0]
    zeros = np.zeros(batch, dtype=int)
    caps, curve, t0, g0, surv = _frame(survival, caps, cost, context_tokens, curve)
    if batch == 0 or t0 <= 0:
        return Selection(zeros, g0, g0, t0)
    catchup = catchup or CatchUp.none(batch)
    lam = hysteresis * price_weight * g0
    if batch == 1:
        return _select_one(surv, caps, curve, catchup, lam, objective, g0, t0)
    best, best_t = zeros, t0
    if objective == "marginal":  # one price: the best k⃗ against k = 0 at λ₀
        best = best_at_price(surv, caps, curve, catchup, lam)
        best_t = curve.time(best, surv, catchup)
    else:
        for _ in range(_MAX_DINKELBACH_ITERS):
            ks = best_at_price(surv, caps, curve, catchup, lam)
            if not ks.any():
                break
            t = curve.time(ks, surv, catchup)
            ratio = expected_total(surv, ks) / t
            if ratio <= lam * (1 + 1e-12):
                break  # nothing beats the current price (the hysteresis first, then the ratio so far)
            best, best_t, lam = ks, t, ratio
    goodput = expected_total(surv, best) / best_t if best_t > 0 else 0.0
    return Selection(best.astype(int), goodput, g0, best_t)


def _select_one(surv: np.ndarray, caps: np.ndarray, curve: StepCurve, catchup: CatchUp, lam: float,
                objective: Objective, g0: float, t0: float) -> Selection:
    """`select_goodput` for one request: every k priced at once. Dinkelbach's fixed point is the k of the best
    ratio when that beats λ₀ (and k = 0 otherwise); the marginal objective is the best E − λ₀·T against k = 0.
    The same answers, without the [M, B, K] passes: at batch 1 (a GPU's shortest step) those were half
    the decision's host time."""
    top = min(int(caps[0]), len(curve.alpha) - 1)
    ks = np.arange(top + 1)
    each = np.concatenate([[1.0], 1.0 + np.cumsum(surv[0, :top])])  # E(k), k = 0 … top
    t = curve.alpha[ks] + curve.beta[ks] * ks + (ks > 0) * (catchup.fixed[0] + catchup.per_token[0] * each)
    k = 0
    if top > 0:
        if objective == "marginal":
            value = each[1:] - lam * t[1:]
            i = int(np.argmax(value))  # the first of equals: the smallest k
            k = i + 1 if value[i] > 1.0 - lam * t0 else 0
        else:
            ratio = np.where(t[1:] > 0, each[1:] / np.where(t[1:] > 0, t[1:], 1.0), 0.0)
            i = int(np.argmax(ratio))
            k = i + 1 if ratio[i] > lam * (1 + 1e-12) else 0
    best_t = float(t[k])
    goodput = float(each[k]) / best_t if best_t > 0 else 0.0
    return Selection(np.array([k]), goodput, g0, best_t)


def best_at_price(surv: np.ndarray, caps: np.ndarray, curve: StepCurve, catchup: CatchUp, lam: float) -> np.ndarray:
    """argmax over k⃗ of Σ E_i(k_i) − λ·T(k⃗), exactly (see the module docstring); zeros if none beats k = 0.
    Every cap M = 1 … max(caps) at once: arrays [M, B, K]."""
    batch, width = surv.shape
    top = min(int(caps.max(initial=0)), len(curve.alpha) - 1)
    zeros = np.zeros(batch, dtype=int)
    if top == 0:
        return zeros
    ms = np.arange(1, top + 1)
    cols = np.arange(width)[None, None, :]
    scale = 1.0 - lam * catchup.per_token  # [B]
    inc = surv[None] * scale[None, :, None] - lam * curve.beta[ms][:, None, None]  # value of each position
    capped = np.minimum(caps[None, :], ms[:, None])  # [M, B]
    take = (inc > 0) & (cols < capped[:, :, None])
    ks = take.cumprod(axis=2).sum(axis=2)
    gain = (inc * (cols < ks[:, :, None])).sum(axis=2) - lam * (catchup.fixed + catchup.per_token)[None, :]
    ks = np.where((ks > 0) & (gain > 0), ks, 0)
    # Each candidate re-scored at its true max (a solution found under cap M may use less).
    each = 1.0 + (surv[None] * (cols < ks[:, :, None])).sum(axis=2)  # E_i per candidate
    true_m = ks.max(axis=1)
    on = ks > 0
    t = (curve.alpha[true_m] + curve.beta[true_m] * ks.sum(axis=1)
         + ((catchup.fixed[None, :] + catchup.per_token[None, :] * each) * on).sum(axis=1))
    value = np.where(true_m > 0, each.sum(axis=1) - lam * t, -np.inf)
    pick = int(np.argmax(value))  # the first of equals: the smallest cap, as a scan upward would keep
    return ks[pick].astype(int) if value[pick] > batch - lam * curve.alpha[0] else zeros


def select_uniform(
    survival: np.ndarray, caps: np.ndarray, cost: CostModel, *, context_tokens: int, catchup: CatchUp | None = None,
    hysteresis: float = 1.0, curve: StepCurve | None = None,
) -> Selection:
    """One k for the whole batch (each request at min(k, its cap)), the best goodput over k = 0 … K, as the
    authors' code decides; k = 0 unless the best beats it by the hysteresis."""
    batch = survival.shape[0]
    zeros = np.zeros(batch, dtype=int)
    caps, curve, t0, g0, surv = _frame(survival, caps, cost, context_tokens, curve)
    best, best_g, best_t = zeros, g0 * hysteresis, t0
    for k in range(1, min(int(caps.max(initial=0)), len(curve.alpha) - 1) + 1):
        ks = np.minimum(caps, k).astype(int)
        t = curve.time(ks, surv, catchup)
        g = expected_total(surv, ks) / t if t > 0 else 0.0
        if g > best_g:
            best, best_g, best_t = ks, g, t
    goodput = expected_total(surv, best) / best_t if batch and best_t > 0 else 0.0
    return Selection(best, goodput, g0, best_t)


def goodput(survival: np.ndarray, ks: np.ndarray, cost: CostModel, *, context_tokens: int,
            catchup: CatchUp | None = None) -> float:
    """Predicted decode tokens/s of a given k⃗."""
    t = step_time(cost, ks, context_tokens, survival, catchup)
    return expected_total(survival, ks) / t if t > 0 else 0.0
