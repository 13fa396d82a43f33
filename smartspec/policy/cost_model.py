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

`verify_rows` corrects the linear verify time per row count of the padded verify forward, B·(M + 1):
matrix kernels switch paths at row counts, so the measured verify time is a staircase, not a line (the
real pair in float32 on an AVX2 CPU, batch 1: 0.34 / 0.64 / 0.95 / 0.95 / 0.99 / 1.10 / 1.06 / 0.88 /
1.20 s at widths 1 … 9). A line through that priced width 9 below width 8's true cost, and goodput ran
k = 8 where k = 7 was 8 % faster. Each fit learns the factor measured / linear of every row count it
saw, shrunk toward the prior's factor; row counts it never saw keep the prior's (1 when none).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
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
MAX_ROW_FACTORS = 4096  # entries in `verify_rows` a document may carry: max batch 256 × width 16
ROW_FACTOR_RANGE = (0.25, 4.0)  # a verify this far off the line is a broken fit, not a kernel switch


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


def feature_values(batch: Any, context_tokens: Any, max_k: Any, draft_tokens: Any, pads_to_max_k: bool,
                   prefill_tokens: Any = 0, draft_catchup_tokens: Any = 0, prefill_padded_tokens: Any = 0,
                   ) -> dict[str, Any]:
    """The features of a step (see the module docstring). Any argument may be a numpy array (all of one
    shape), so one call prices a whole curve of steps (the policy's hot path) or every step of a refit."""
    max_k = np.asarray(max_k, dtype=float)
    spec = (max_k > 0).astype(float)
    batched = batch * (max_k + 1) if pads_to_max_k else draft_tokens + batch
    width = max_k + 1 if pads_to_max_k else (np.asarray(draft_tokens, dtype=float) + batch) / np.maximum(batch, 1)
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
        "prefill_padded_tokens": zero + np.maximum(prefill_padded_tokens, prefill_tokens),
        "spec_width_context": spec * context_tokens * width,
    }


def shapes_features(shapes: Sequence[StepShape], pads_to_max_k: bool) -> dict[str, np.ndarray]:
    """The features of many steps at once, a column per feature: a refit prices hundreds of steps several
    times over, and one StepShape at a time that cost 110-185 ms per refit (2-core VM) in the step loop."""
    cols = np.array([(s.batch, s.context_tokens, s.max_k, s.draft_tokens, s.prefill_tokens, s.draft_catchup_tokens,
                      s.prefill_padded_tokens) for s in shapes], dtype=float).reshape(-1, 7).T
    batch, context, max_k, draft, prefill, catchup, padded = cols
    feats = feature_values(batch, context, max_k, draft, pads_to_max_k, prefill, catchup, padded)
    return {name: np.asarray(v, dtype=float) for name, v in feats.items()}


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
    # measured / linear verify time per row count B·(M + 1) of a decode verify (module docstring); padded only
    verify_rows: Mapping[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for part in (self.verify, self.draft, self.overhead):
            unknown = set(part) - set(FEATURES)
            if unknown:
                raise ValueError(f"unknown cost-model features {sorted(unknown)}; known: {', '.join(FEATURES)}")

    def row_factor(self, rows: Any) -> Any:
        """The `verify_rows` factor of a row count, or of an array of them (1 where none was measured)."""
        r = np.asarray(rows, dtype=float)
        if not self.verify_rows or not self.pads_to_max_k:
            return np.ones_like(r) if r.ndim else 1.0
        # One lookup per distinct row count: a refit asks for hundreds of steps of a few widths.
        distinct, where = np.unique(r.ravel(), return_inverse=True)
        f = np.array([self.verify_rows.get(round(float(x)), 1.0) for x in distinct])[where].reshape(r.shape)
        return f if f.ndim else float(f)

    def components(self, shape: StepShape) -> tuple[float, float, float]:
        return self._parts(shape.features(self.pads_to_max_k))

    def components_of(self, shapes: Sequence[StepShape]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`components` of every shape at once: (draft, verify, overhead) arrays."""
        return self.components_of_features(shapes_features(shapes, self.pads_to_max_k), len(shapes))

    def components_of_features(self, feats: Mapping[str, np.ndarray], n: int,
                               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`components_of` from features already computed (`shapes_features` with this model's padding) of n
        steps: a refit prices the same steps with several models."""
        d, v, o = (np.broadcast_to(np.asarray(x, dtype=float), (n,)) for x in self._parts(feats))
        return d, v, o

    def _parts(self, feats: Mapping[str, Any]) -> tuple[Any, Any, Any]:
        """(draft, verify, overhead) of scalar features, or of arrays of them (`decode_curve`)."""
        verify = _dot(self.verify, feats)
        if self.verify_rows and self.pads_to_max_k:  # the prefill part is priced per token; the rest per row count
            prefill = sum((self.verify.get(n, 0.0) * feats[n] for n in PREFILL_FEATURES), 0.0)
            verify = prefill + (verify - prefill) * self.row_factor(feats["batched_tokens"])
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
        out: dict[str, Any] = {
            "name": self.name, "verify": dict(self.verify), "draft": dict(self.draft),
            "overhead": dict(self.overhead), "draft_fraction": self.draft_fraction,
            "overhead_fraction": self.overhead_fraction, "pads_to_max_k": self.pads_to_max_k,
            "r2": self.r2, "samples": self.samples,
        }
        if self.verify_rows:  # JSON keys are strings
            out["verify_rows"] = {str(rows): f for rows, f in sorted(self.verify_rows.items())}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CostModel:
        """Static coefficients (e.g. a JSON file or a policy document); seconds per feature unit."""
        known = {"name", "verify", "draft", "overhead", "draft_fraction", "overhead_fraction",
                 "pads_to_max_k", "r2", "samples", "verify_rows"}
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
                verify_rows=_row_factors(data.get("verify_rows", {})),
            )
        except (TypeError, AttributeError) as exc:  # e.g. `"verify": [1]` or `"const": null`: bad input, not a bug
            raise ValueError(f"malformed cost model: {exc}") from None
        return model


def _fraction(name: str, value: Any) -> float:
    v = float(value)
    if not 0.0 <= v <= 10.0:  # also false for NaN
        raise ValueError(f"cost-model {name} must be in [0, 10], got {value!r}")
    return v


def _row_factors(table: Any) -> dict[int, float]:
    """`verify_rows` from a document: at most MAX_ROW_FACTORS positive row counts, factors in ROW_FACTOR_RANGE."""
    if not isinstance(table, Mapping):
        raise ValueError(f"cost-model verify_rows must map row counts to factors, got {type(table).__name__}")
    if len(table) > MAX_ROW_FACTORS:
        raise ValueError(f"cost-model verify_rows has {len(table)} entries; at most {MAX_ROW_FACTORS}")
    out = {}
    lo, hi = ROW_FACTOR_RANGE
    for rows, factor in table.items():
        try:
            r, f = int(rows), float(factor)
        except (TypeError, ValueError):
            raise ValueError(f"cost-model verify_rows entry {rows!r}: {factor!r} is not row count: number") from None
        if r < 1 or not lo <= f <= hi:  # also false for NaN
            raise ValueError(f"cost-model verify_rows entry {rows!r}: row counts are >= 1, factors in [{lo}, {hi}]")
        out[r] = f
    return out


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


# Coefficients that may be negative: the per-request verify term (the published fits have one; the
# padding model absorbs part of it). Every other feature is a cost, and a negative cost lets the
# policy buy "free" speculation — or price k = 0 above its true cost — where the samples never went.
SIGNED_FEATURES = frozenset({"batch"})


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
