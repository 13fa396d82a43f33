"""Step-time cost model: draft + verify + overhead, each linear in features of the step's shape.

Features of a step with B verified requests, per-request k_i, M = max k_i, S = Σ k_i:

    batched_tokens  B·(M + 1) when the engine pads every row to the widest (smartspec's runner),
                    S + B when it does not (vLLM-style ragged batching, the published presets)
    context_tokens  Σ committed KV tokens of the verified requests
    prefill_tokens  prompt tokens prefilled in the same step
    spec            1 if any request speculates (M > 0), else 0
    max_k, draft_tokens   M and S: a draft model runs M sequential forwards over S tokens in all
    spec_batch, spec_context_tokens   B and Σ context, counted only when speculating
    draft_catchup_tokens   context a draft model had to ingest first (a new request's prompt, a
                    stretch at k = 0); the policy prices each request's pending catch-up apart
    prefill_padded_tokens  P·L_max: a prefill of P prompts pads every row to the longest one
    spec_width_context     (M + 1)·Σ context, only when speculating: a multi-token verify with a 4D mask
                    grows with batch × width × context (measured super-linear at batch 32)

Times are seconds. `draft_fraction` / `overhead_fraction` add that fraction of the verify time
when speculating (how the published n-gram presets model draft and overhead).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = (
    "const", "batch", "batched_tokens", "context_tokens", "prefill_tokens",
    "spec", "max_k", "draft_tokens", "spec_batch", "spec_context_tokens", "draft_catchup_tokens",
    "prefill_padded_tokens", "spec_width_context",
)
# What the online fit estimates for THIS engine, per component.
# `spec` in verify: a multi-token (k > 0) verify forward costs more than a one-token decode of the
# same size (4D masks instead of the causal fast path; measured here: 24 ms for a 2-token row vs
# 13 ms for 5 one-token rows), as the published 70B fit also found.
VERIFY_FEATURES = ("const", "spec", "batch", "batched_tokens", "context_tokens", "prefill_tokens",
                   "prefill_padded_tokens", "spec_width_context")
PREFILL_FEATURES = ("prefill_tokens", "prefill_padded_tokens")  # fitted apart: see _fit_verify
DRAFT_FEATURES = ("spec", "spec_batch", "max_k", "draft_tokens", "spec_context_tokens", "draft_catchup_tokens")
OVERHEAD_FEATURES = ("const", "batch", "draft_tokens")


@dataclass(frozen=True)
class StepShape:
    """What the policy knows about a step before running it."""

    batch: int
    context_tokens: int
    max_k: int
    draft_tokens: int
    prefill_tokens: int = 0
    draft_catchup_tokens: int = 0
    prefill_padded_tokens: int = 0  # 0: unknown, taken as prefill_tokens (no padding)

    def decode_only(self) -> StepShape:
        """The same step without its prefill: what k changes (the policy's objective)."""
        return replace(self, prefill_tokens=0, prefill_padded_tokens=0)

    def features(self, pads_to_max_k: bool) -> dict[str, float]:
        feats = feature_values(self.batch, self.context_tokens, self.max_k, self.draft_tokens, pads_to_max_k,
                               self.prefill_tokens, self.draft_catchup_tokens, self.prefill_padded_tokens)
        return {name: float(v) for name, v in feats.items()}


def feature_values(batch: int, context_tokens: int, max_k: Any, draft_tokens: Any, pads_to_max_k: bool,
                   prefill_tokens: int = 0, draft_catchup_tokens: int = 0, prefill_padded_tokens: int = 0,
                   ) -> dict[str, Any]:
    """The features of a step (see the module docstring); `max_k` and `draft_tokens` may be numpy arrays
    of the same shape, so one call prices a whole curve of steps (the policy's hot path)."""
    max_k = np.asarray(max_k, dtype=float)
    spec = (max_k > 0).astype(float)
    batched = batch * (max_k + 1) if pads_to_max_k else draft_tokens + batch
    width = max_k + 1 if pads_to_max_k else (np.asarray(draft_tokens, dtype=float) + batch) / max(batch, 1)
    zero = np.zeros_like(max_k)
    return {
        "const": zero + 1.0,
        "batch": zero + batch,
        "batched_tokens": zero + batched,
        "context_tokens": zero + context_tokens,
        "prefill_tokens": zero + prefill_tokens,
        "spec": spec,
        "max_k": max_k,
        "draft_tokens": zero + draft_tokens,
        "spec_batch": spec * batch,
        "spec_context_tokens": spec * context_tokens,
        "draft_catchup_tokens": zero + draft_catchup_tokens,
        "prefill_padded_tokens": zero + max(prefill_padded_tokens, prefill_tokens),
        "spec_width_context": spec * context_tokens * width,
    }


def _dot(coef: Mapping[str, float], feats: Mapping[str, Any]) -> Any:
    return sum((c * feats[name] for name, c in coef.items()), 0.0)


@dataclass(frozen=True)
class CostModel:
    """Predicts (draft_s, verify_s, overhead_s) of a step."""

    name: str
    verify: Mapping[str, float]
    draft: Mapping[str, float] = field(default_factory=dict)
    overhead: Mapping[str, float] = field(default_factory=dict)
    draft_fraction: float = 0.0
    overhead_fraction: float = 0.0
    pads_to_max_k: bool = True
    r2: float | None = None  # of the total step time, on the samples it was fitted to
    samples: int = 0

    def __post_init__(self) -> None:
        for part in (self.verify, self.draft, self.overhead):
            unknown = set(part) - set(FEATURES)
            if unknown:
                raise ValueError(f"unknown cost-model features {sorted(unknown)}; known: {', '.join(FEATURES)}")

    def components(self, shape: StepShape) -> tuple[float, float, float]:
        return self._parts(shape.features(self.pads_to_max_k))

    def _parts(self, feats: Mapping[str, Any]) -> tuple[Any, Any, Any]:
        """(draft, verify, overhead) of scalar features, or of arrays of them (`decode_curve`)."""
        verify = _dot(self.verify, feats)
        spec = feats["spec"]
        draft = _dot(self.draft, feats) + spec * self.draft_fraction * verify
        overhead = _dot(self.overhead, feats) + spec * self.overhead_fraction * verify
        return draft, verify, overhead

    def step_time(self, shape: StepShape) -> float:
        return sum(self.components(shape))

    def decode_curve(self, batch: int, context_tokens: int, max_k: int) -> tuple[np.ndarray, np.ndarray]:
        """(α, β) with the decode step's time T = α[M] + β[M]·S for M = max k ≤ `max_k` and S = Σ k: the
        model is affine in S at a fixed M, so two evaluations per M give every k⃗ of this batch exactly."""
        m = np.arange(max_k + 1, dtype=float)
        spec = (m > 0).astype(float)

        def total(s: np.ndarray) -> np.ndarray:
            return np.asarray(sum(self._parts(feature_values(batch, context_tokens, m, s, self.pads_to_max_k))),
                              dtype=float)

        alpha = total(np.zeros_like(m))
        return alpha, (total(spec) - alpha) * spec

    @cached_property  # the model is frozen; the policy asks every step
    def _catchup_s_per_token(self) -> float:
        base = StepShape(1, 0, 1, 1)
        return max(self.step_time(replace(base, draft_catchup_tokens=1)) - self.step_time(base), 0.0)

    def catchup_s_per_token(self) -> float:
        """Seconds one token of draft catch-up adds to a speculating step (the model is linear in it)."""
        return self._catchup_s_per_token

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "verify": dict(self.verify), "draft": dict(self.draft),
            "overhead": dict(self.overhead), "draft_fraction": self.draft_fraction,
            "overhead_fraction": self.overhead_fraction, "pads_to_max_k": self.pads_to_max_k,
            "r2": self.r2, "samples": self.samples,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CostModel:
        """Static coefficients (e.g. a JSON file or a policy document); seconds per feature unit."""
        known = {"name", "verify", "draft", "overhead", "draft_fraction", "overhead_fraction",
                 "pads_to_max_k", "r2", "samples"}
        extra = set(data) - known
        if extra:
            raise ValueError(f"unknown cost-model keys {sorted(extra)}")
        if "verify" not in data:
            raise ValueError("a cost model needs at least `verify` coefficients")
        try:
            model = cls(
                name=str(data.get("name", "static")),
                verify=_coefficients("verify", data["verify"]),
                draft=_coefficients("draft", data.get("draft", {})),
                overhead=_coefficients("overhead", data.get("overhead", {})),
                draft_fraction=_fraction("draft_fraction", data.get("draft_fraction", 0.0)),
                overhead_fraction=_fraction("overhead_fraction", data.get("overhead_fraction", 0.0)),
                pads_to_max_k=bool(data.get("pads_to_max_k", True)),
                r2=None if data.get("r2") is None else float(data["r2"]),
                samples=int(data.get("samples", 0)),
            )
        except (TypeError, AttributeError) as exc:  # e.g. `"verify": [1]` or `"const": null`: bad input, not a bug
            raise ValueError(f"malformed cost model: {exc}") from None
        return model


def _fraction(name: str, value: Any) -> float:
    v = float(value)
    if not 0.0 <= v <= 10.0:  # also false for NaN
        raise ValueError(f"cost-model {name} must be in [0, 10], got {value!r}")
    return v


def _coefficients(part_name: str, part: Any) -> dict[str, float]:
    values = {}
    for k, v in part.items():
        try:
            values[str(k)] = float(v)
        except (TypeError, ValueError):  # name the coefficient: "could not convert" alone says nothing
            raise ValueError(f"cost-model coefficient {part_name}.{k} must be a number, got {v!r}") from None
    bad = [k for k, v in values.items() if not np.isfinite(v)]
    if bad:
        raise ValueError(f"cost-model coefficients must be finite numbers: {bad}")
    negative = [f"{part_name}.{k}" for k, v in values.items() if v < 0 and k not in SIGNED_FEATURES]
    if negative:  # fits never produce them (see SIGNED_FEATURES); a document that has them was not fitted
        raise ValueError(f"cost-model coefficients must not be negative: {negative}")
    return values


# -- presets --------------------------------------------------------------------------------
_MS = 1e-3
# Published in the SmartSpec/TurboSpec authors' vLLM V1 prototype (auto_tuner.py / config.py,
# reference/paper-smartspec.md §4.2): linear verify model in ms, fitted on H100; n-gram draft =
# 4 % and overhead = 5 % of verify; vLLM batches ragged (no padding to max k).
_H100_8B_VERIFY = {
    "const": 6.938699571857084 * _MS, "context_tokens": 4.85907942e-05 * _MS,
    "batched_tokens": 1.84383603e-02 * _MS, "batch": -4.33144783e-02 * _MS,
}
PRESETS: dict[str, CostModel] = {
    "h100-llama8b": CostModel(
        "h100-llama8b", verify=_H100_8B_VERIFY, draft_fraction=0.04, overhead_fraction=0.05, pads_to_max_k=False
    ),
    "h100-llama70b": CostModel(
        "h100-llama70b",
        verify={"const": 18.34535 * _MS, "context_tokens": 6.24369264e-05 * _MS,
                "batched_tokens": 6.40216301e-02 * _MS, "batch": -3.97382298e-02 * _MS,
                "spec": -1.12291902e-01 * _MS},
        draft_fraction=0.04, overhead_fraction=0.05, pads_to_max_k=False,
    ),
    # As the prototype's code computes it: N_batched also adds the B decode tokens once more
    # (reference §4.2 notes the double count); this reproduces the §4.3 table to the token/s.
    "h100-llama8b-as-coded": CostModel(
        "h100-llama8b-as-coded",
        verify={**_H100_8B_VERIFY, "batch": _H100_8B_VERIFY["batch"] + _H100_8B_VERIFY["batched_tokens"]},
        draft_fraction=0.04, overhead_fraction=0.05, pads_to_max_k=False,
    ),
    # The same 8B target with the prototype's fitted EAGLE draft (N_sched = B decode tokens).
    "h100-llama8b-eagle": CostModel(
        "h100-llama8b-eagle", verify=_H100_8B_VERIFY,
        draft={"spec": 0.4471109584339972 * _MS, "max_k": 0.452175870 * _MS,
               "spec_batch": (4.38694070e-05 + 5.52805909e-03) * _MS,
               "spec_context_tokens": 2.89700974e-06 * _MS},
        overhead_fraction=0.05, pads_to_max_k=False,
    ),
}


def default_cost_model() -> CostModel:
    """The built-in model used until the engine has fitted its own: deliberately conservative.

    It prices a draft forward at a third of a target forward plus a fortieth per draft token, and
    makes verification compute-bound beyond ~32 batched tokens, so with a 0.7 acceptance it
    speculates only up to batch ~4 (up to ~8 once acceptance shows ~0.9); the online fit then
    replaces it with this machine's numbers. Draft catch-up is left unpriced here (the per-step cap
    bounds it): it is the default's prior in every fit, and a rarely varied feature keeps its prior,
    so a CPU-sized guess would stick on hardware where catch-up costs a hundredth of it.
    """
    base = 0.1
    return CostModel(
        "default",
        verify={"const": base, "batched_tokens": base / 32, "context_tokens": base / 1e5,
                "prefill_tokens": base / 32},
        draft={"spec": 0.0, "max_k": base / 3, "draft_tokens": base / 40},
        overhead={"const": 5e-4, "batch": 1e-5, "draft_tokens": 1e-5},
        pads_to_max_k=True,
    )


def load_cost_model(value: str) -> CostModel:
    """A preset name, 'default', or a JSON file of static coefficients."""
    from smartspec.errors import InvalidRequest

    if value.endswith(".json") or Path(value).is_file():
        try:
            return CostModel.from_dict(json.loads(Path(value).read_text()))
        except (OSError, ValueError) as exc:
            raise InvalidRequest(f"cannot use cost model file {value}: {exc}", param="cost_model") from None
    try:
        return resolve(value)
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="cost_model") from None


def resolve(name_or_model: str | CostModel) -> CostModel:
    if isinstance(name_or_model, CostModel):
        return name_or_model
    if name_or_model == "default":
        return default_cost_model()
    try:
        return PRESETS[name_or_model]
    except KeyError:
        raise ValueError(f"unknown cost model {name_or_model!r}; presets: default, {', '.join(PRESETS)}") from None


# -- fitting --------------------------------------------------------------------------------
_HUBER_PASSES = 4
_HUBER_K = 1.345


@dataclass(frozen=True)
class StepSample:
    """A measured step: its shape and the seconds each component took."""

    shape: StepShape
    draft_s: float
    verify_s: float
    overhead_s: float
    # The draft work asked for when it differs from what was verified: a step whose drafts missed the
    # deadline verified at k = 0 but waited draft_s for drafts of this shape (so fits learn the stall).
    draft_shape: StepShape | None = None

    @property
    def total_s(self) -> float:
        return self.draft_s + self.verify_s + self.overhead_s

    def predicted_s(self, model: CostModel) -> float:
        """What `model` says this step should have taken (drafts of the shape asked for, if they missed)."""
        if self.draft_shape is None:
            return model.step_time(self.shape)
        _, verify, overhead = model.components(self.shape)
        return model.components(self.draft_shape)[0] + verify + overhead


def relative_error(model: CostModel, samples: Sequence[StepSample]) -> float:
    """Mean absolute error of predicted step times, relative to the mean step time."""
    actual = np.array([s.total_s for s in samples])
    predicted = np.array([s.predicted_s(model) for s in samples])
    return float(np.abs(predicted - actual).mean() / max(actual.mean(), 1e-12))


def r_squared(actual: np.ndarray, predicted: np.ndarray) -> float:
    ss_tot = float(np.sum((actual - actual.mean()) ** 2))
    if ss_tot <= 0:
        return float("nan")
    return 1.0 - float(np.sum((actual - predicted) ** 2)) / ss_tot


# Coefficients that may be negative: the per-request verify term (the published fits have one; the
# padding model absorbs part of it). Every other feature is a cost, and a negative cost lets the
# policy buy "free" speculation — or price k = 0 above its true cost — where the samples never went.
SIGNED_FEATURES = frozenset({"batch"})


def _fit_part(
    x: np.ndarray, y: np.ndarray, names: Sequence[str], prior: Mapping[str, float], ridge: float,
    signed: frozenset[str] = SIGNED_FEATURES,
) -> dict[str, float]:
    """Huber-weighted least squares with a small ridge toward the prior, in column-scaled space,
    with every cost coefficient kept >= 0 (active set: pin the most negative to 0, refit the rest).

    Directions the samples never vary (e.g. k always 0) keep their prior coefficients instead
    of taking arbitrary values, so the fit never extrapolates into nonsense; a few iteratively
    reweighted passes keep one stalled step (a GC pause, a noisy neighbour) from steering it.
    """
    pinned: set[int] = set()
    while True:
        theta = _huber_ridge(x, y, names, prior, ridge, pinned)
        bad = [i for i, n in enumerate(names) if n not in signed and i not in pinned and theta[i] < 0]
        if not bad:
            return {n: float(t) for n, t in zip(names, theta, strict=True)}
        pinned.add(min(bad, key=lambda i: theta[i] * max(float(np.abs(x[:, i]).max()), 1e-12)))


def _huber_ridge(x: np.ndarray, y: np.ndarray, names: Sequence[str], prior: Mapping[str, float], ridge: float,
                 pinned: set[int]) -> np.ndarray:
    free = [i for i in range(len(names)) if i not in pinned]
    theta = np.zeros(len(names))
    if not free:
        return theta
    xf = x[:, free]
    scale = np.abs(xf).max(axis=0)
    scale[scale == 0] = 1.0
    xs = xf / scale
    p = np.array([max(prior.get(names[i], 0.0), 0.0) if names[i] not in SIGNED_FEATURES else prior.get(names[i], 0.0)
                  for i in free]) * scale
    lam = np.sqrt(ridge * max(len(y), 1))
    weights = np.ones(len(y))
    theta_s = p
    for _ in range(_HUBER_PASSES):
        w = np.sqrt(weights)[:, None]
        a = np.vstack([xs * w, lam * np.eye(len(free))])
        b = np.concatenate([y * w[:, 0], lam * p])
        theta_s, *_ = np.linalg.lstsq(a, b, rcond=None)
        resid = np.abs(xs @ theta_s - y)
        spread = 1.4826 * float(np.median(resid)) or 1e-12
        weights = np.minimum(1.0, _HUBER_K * spread / np.maximum(resid, 1e-12))
    theta[free] = theta_s / scale
    return theta


def fit_cost_model(
    samples: Sequence[StepSample], prior: CostModel | None = None, *, pads_to_max_k: bool = True,
    ridge: float = 1e-3, name: str = "fitted",
) -> CostModel:
    """Fit draft, verify and overhead separately from measured steps; R² is of the total step time."""
    if not samples:
        raise ValueError("no step samples to fit")
    prior = prior or default_cost_model()
    feats = [s.shape.features(pads_to_max_k) for s in samples]
    draft_feats = [(s.draft_shape or s.shape).features(pads_to_max_k) for s in samples]

    def matrix(names: Sequence[str], rows: Sequence[int], of: list[dict[str, float]] = feats) -> np.ndarray:
        return np.array([[of[i][n] for n in names] for i in rows], dtype=float)

    everything = list(range(len(samples)))
    spec_rows = [i for i in everything if draft_feats[i]["spec"] > 0]
    verify = _fit_verify(matrix, everything, np.array([s.verify_s for s in samples]), feats, prior.verify, ridge)
    overhead = _fit_part(matrix(OVERHEAD_FEATURES, everything), np.array([s.overhead_s for s in samples]),
                         OVERHEAD_FEATURES, prior.overhead, ridge)
    draft = dict(prior.draft)
    if spec_rows:  # draft time is 0 by construction at k = 0; fit it on speculating steps only
        draft_s = np.array([samples[i].draft_s for i in spec_rows])
        draft = _fit_part(matrix(DRAFT_FEATURES, spec_rows, draft_feats), draft_s, DRAFT_FEATURES, prior.draft, ridge)
    model = CostModel(name, verify=verify, draft=draft, overhead=overhead, pads_to_max_k=pads_to_max_k)
    predicted = np.array([s.predicted_s(model) for s in samples])
    actual = np.array([s.total_s for s in samples])
    return replace(model, r2=r_squared(actual, predicted), samples=len(samples))


def _fit_verify(matrix: Callable[..., np.ndarray], rows: list[int], y: np.ndarray, feats: list[dict[str, float]],
                prior: Mapping[str, float], ridge: float) -> dict[str, float]:
    """Decode terms on the steps without prefill, then the prefill terms on what those leave of the rest.

    Fitted together, a prefill (seconds, once per request) is an outlier among hundreds of decode steps
    (tenths of a second) to the Huber weights, and its coefficients stayed near the prior: admission
    steps were predicted 20× too short on the real pair."""
    decode_names = [n for n in VERIFY_FEATURES if n not in PREFILL_FEATURES]
    decode = [i for i in rows if feats[i]["prefill_tokens"] == 0]
    admit = [i for i in rows if feats[i]["prefill_tokens"] > 0]
    out = {n: prior.get(n, 0.0) for n in VERIFY_FEATURES}
    if decode:
        out.update(_fit_part(matrix(decode_names, decode), y[decode], decode_names, prior, ridge))
    if admit:
        coef = np.array([out[n] for n in decode_names])
        rest = y[admit] - matrix(decode_names, admit) @ coef
        out.update(_fit_part(matrix(PREFILL_FEATURES, admit), rest, PREFILL_FEATURES, prior, ridge))
    return out


def plausible(model: CostModel, samples: list[StepSample], max_k: int) -> bool:
    """A positive step time, and no component meaningfully negative (> 5 % of the step), for any
    uniform k at the batch sizes and contexts seen: where the policy will ask."""
    seen = sorted({(s.shape.batch, s.shape.context_tokens // max(s.shape.batch, 1)) for s in samples})
    probe = {seen[0], seen[len(seen) // 2], seen[-1]}
    for batch, ctx in probe:
        for k in range(max_k + 1):
            parts = model.components(StepShape(batch, ctx * batch, k, k * batch))
            total = sum(parts)
            if total <= 0 or min(parts) < -0.05 * total:
                return False
    return True
