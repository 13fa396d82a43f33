"""Fitting the step-time cost model to measured steps: the linear parts, the per-row verify factors, checks."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from smartspec.policy.cost_model import (
    DRAFT_FEATURES,
    MAX_ROW_FACTORS,
    OVERHEAD_FEATURES,
    PREFILL_FEATURES,
    ROW_FACTOR_RANGE,
    SIGNED_FEATURES,
    VERIFY_FEATURES,
    CostModel,
    StepShape,
    default_cost_model,
    shapes_features,
)

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


@dataclass(frozen=True, eq=False)
class SampleColumns:
    """Steps as feature columns and time arrays, built once: a refit prices the same few hundred steps with
    two models, fits three parts and checks the result, and building the columns was most of its time."""

    samples: Sequence[StepSample]
    pads_to_max_k: bool
    feats: Mapping[str, np.ndarray]  # of the verified shapes
    draft_feats: Mapping[str, np.ndarray]  # of the draft work asked for (`StepSample.draft_shape`)
    draft_s: np.ndarray
    verify_s: np.ndarray
    overhead_s: np.ndarray

    @classmethod
    def of(cls, samples: Samples, pads_to_max_k: bool) -> SampleColumns:
        """`samples` as columns for a model that pads (or not); columns already built that way are reused."""
        if isinstance(samples, SampleColumns):
            if samples.pads_to_max_k == pads_to_max_k:
                return samples
            samples = samples.samples
        times = np.array([(s.draft_s, s.verify_s, s.overhead_s) for s in samples], dtype=float).reshape(-1, 3).T
        return cls(samples, pads_to_max_k, shapes_features([s.shape for s in samples], pads_to_max_k),
                   shapes_features([s.draft_shape or s.shape for s in samples], pads_to_max_k), *times)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def total_s(self) -> np.ndarray:
        return self.draft_s + self.verify_s + self.overhead_s


Samples = Sequence[StepSample] | SampleColumns  # what the functions below take


def predicted_totals(model: CostModel, samples: Samples) -> np.ndarray:
    """`StepSample.predicted_s` of every sample, computed at once (the refit asks for hundreds of them
    several times per fit)."""
    if not len(samples):
        return np.zeros(0)
    cols = SampleColumns.of(samples, model.pads_to_max_k)
    _, verify, overhead = model.components_of_features(cols.feats, len(cols))
    draft = model.components_of_features(cols.draft_feats, len(cols))[0]
    return np.asarray(draft + verify + overhead, dtype=float)


def relative_error(model: CostModel, samples: Samples) -> float:
    """Mean absolute error of predicted step times, relative to the mean step time."""
    actual = SampleColumns.of(samples, model.pads_to_max_k).total_s
    predicted = predicted_totals(model, samples)
    return float(np.abs(predicted - actual).mean() / max(actual.mean(), 1e-12))


def r_squared(actual: np.ndarray, predicted: np.ndarray) -> float:
    ss_tot = float(np.sum((actual - actual.mean()) ** 2))
    if ss_tot <= 0:
        return float("nan")
    return 1.0 - float(np.sum((actual - predicted) ** 2)) / ss_tot


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
    samples: Samples, prior: CostModel | None = None, *, pads_to_max_k: bool = True,
    ridge: float = 1e-3, name: str = "fitted",
) -> CostModel:
    """Fit draft, verify and overhead separately from measured steps; R² is of the total step time."""
    if not len(samples):
        raise ValueError("no step samples to fit")
    prior = prior or default_cost_model()
    cols = SampleColumns.of(samples, pads_to_max_k)
    feats, draft_feats = cols.feats, cols.draft_feats

    def matrix(names: Sequence[str], rows: Sequence[int], of: Mapping[str, np.ndarray] = feats) -> np.ndarray:
        return np.column_stack([of[n][list(rows)] for n in names]).reshape(len(rows), len(names))

    everything = list(range(len(cols)))
    spec_rows = [i for i in everything if draft_feats["spec"][i] > 0]
    verify = _fit_verify(matrix, everything, cols.verify_s, feats, prior.verify, ridge)
    overhead = _fit_part(matrix(OVERHEAD_FEATURES, everything), cols.overhead_s, OVERHEAD_FEATURES, prior.overhead,
                         ridge)
    draft = dict(prior.draft)
    if spec_rows:  # draft time is 0 by construction at k = 0; fit it on speculating steps only
        draft = _fit_part(matrix(DRAFT_FEATURES, spec_rows, draft_feats), cols.draft_s[spec_rows], DRAFT_FEATURES,
                          prior.draft, ridge)
    model = CostModel(name, verify=verify, draft=draft, overhead=overhead, pads_to_max_k=pads_to_max_k)
    if pads_to_max_k:
        model = replace(model, verify_rows=fit_row_factors(model, cols, prior.verify_rows))
    predicted = predicted_totals(model, cols)
    return replace(model, r2=r_squared(cols.total_s, predicted), samples=len(cols))


def _fit_verify(matrix: Callable[..., np.ndarray], rows: list[int], y: np.ndarray, feats: Mapping[str, np.ndarray],
                prior: Mapping[str, float], ridge: float) -> dict[str, float]:
    """Decode terms on the steps without prefill, then the prefill terms on what those leave of the rest.

    Fitted together, a prefill (seconds, once per request) is an outlier among hundreds of decode steps
    (tenths of a second) to the Huber weights, and its coefficients stayed near the prior: admission
    steps were predicted 20× too short on the real pair."""
    decode_names = [n for n in VERIFY_FEATURES if n not in PREFILL_FEATURES]
    decode = [i for i in rows if feats["prefill_tokens"][i] == 0]
    admit = [i for i in rows if feats["prefill_tokens"][i] > 0]
    out = {n: prior.get(n, 0.0) for n in VERIFY_FEATURES}
    if decode:
        out.update(_fit_part(matrix(decode_names, decode), y[decode], decode_names, prior, ridge))
    if admit:
        coef = np.array([out[n] for n in decode_names])
        rest = y[admit] - matrix(decode_names, admit) @ coef
        out.update(_fit_part(matrix(PREFILL_FEATURES, admit), rest, PREFILL_FEATURES, prior, ridge))
    return out


# How many steps' worth of belief the prior's factor of a row count carries: half of one, so the start-up
# profile's two steps of a width replace 80 % of it (the policy may never run that width again to correct it),
# while one stalled step still moves it only two thirds of the way.
_ROW_PRIOR_STEPS = 0.5


def fit_row_factors(model: CostModel, samples: Samples, prior: Mapping[int, float]) -> dict[int, float]:
    """`verify_rows` for `model`'s linear verify: per row count of the decode steps (no prefill), the median
    log ratio measured / linear, shrunk toward the prior's factor; row counts not in `samples` keep the prior's."""
    linear = replace(model, verify_rows={})
    cols = SampleColumns.of(samples, model.pads_to_max_k)
    logs: dict[int, list[float]] = {}
    lo, hi = ROW_FACTOR_RANGE
    predicted = linear.components_of_features(cols.feats, len(cols))[1]
    measured, batch = cols.verify_s, cols.feats["batch"]
    use = np.flatnonzero((cols.feats["prefill_tokens"] == 0) & (batch >= 1) & (measured > 0) & (predicted > 0))
    ratios = np.log(np.clip(measured[use] / predicted[use], lo, hi)).tolist()
    rows = (batch[use] * (cols.feats["max_k"][use] + 1)).astype(int).tolist()
    for row, r in zip(rows, ratios, strict=True):
        logs.setdefault(row, []).append(r)
    out = dict(prior)
    for rows, values in logs.items():
        n = len(values)
        start = np.log(prior.get(rows, 1.0))
        out[rows] = float(np.exp((n * float(np.median(values)) + _ROW_PRIOR_STEPS * start) / (n + _ROW_PRIOR_STEPS)))
    if len(out) > MAX_ROW_FACTORS:  # keep the row counts the samples saw, then the smallest
        keep = sorted(out, key=lambda r: (r not in logs, r))[:MAX_ROW_FACTORS]
        out = {r: out[r] for r in keep}
    return {r: round(f, 6) for r, f in sorted(out.items())}


def plausible(model: CostModel, samples: Samples, max_k: int) -> bool:
    """A positive step time, and no component meaningfully negative (> 5 % of the step), for any
    uniform k at the batch sizes and contexts seen: where the policy will ask."""
    feats = SampleColumns.of(samples, model.pads_to_max_k).feats
    batch = feats["batch"].astype(int)
    per_row = feats["context_tokens"].astype(int) // np.maximum(batch, 1)
    seen = sorted(set(zip(batch.tolist(), per_row.tolist(), strict=True)))
    probe = {seen[0], seen[len(seen) // 2], seen[-1]}
    shapes = [StepShape(b, ctx * b, k, k * b) for b, ctx in probe for k in range(max_k + 1)]
    parts = np.stack(model.components_of(shapes))  # [3, shapes]
    total = parts.sum(axis=0)
    return bool(np.all(total > 0) and np.all(parts.min(axis=0) >= -0.05 * total))
