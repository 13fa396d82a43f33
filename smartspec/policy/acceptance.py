"""Per-request, per-position acceptance estimates, shrunk toward a prior while a request is young.

The estimator. For request i and draft position j (1-based) let c_ij be the *conditional*
acceptance rate: P(draft j accepted | drafts 1 … j-1 accepted). A step that proposed k tokens and
accepted a of them *tested* positions 1 … min(k, a+1) and accepted positions 1 … a; positions
after the first rejection were never tested and contribute nothing. Counting per position

    n_ij = Σ steps  γ^age · 1[j tested],      a_ij = Σ steps  γ^age · 1[j accepted]

gives a_ij / n_ij as an unbiased estimate of c_ij under truncation (each tested trial is a
Bernoulli(c_ij) draw), unlike accepted/drafted ratios, which count untested positions as
failures. With a Beta prior of strength m centred on the prior rate π_j (the pooled estimate over
all requests of the same class, or a configured value before any data) the posterior mean is

    ĉ_ij = (a_ij + m·π_j) / (n_ij + m),

so a young request follows the prior and an old one its own history. γ (per-step decay of a
request's own counts) keeps the estimate tracking drift; γ = 1 is a plain Beta-Bernoulli update.

How much a request's own history is worth is a property of the workload, so m is learnt per class
(empirical Bayes by prediction): before each step's outcomes update a request's counts, every m of
a small grid predicts them, and the class uses the m whose predictions had the lowest decayed log
loss. Where requests differ (one accepts 0.9, another 0.3) the smallest m wins; where they do not, and
a rejection says little about the next step, a large one does (on the real pair one rejection at
position 3 in the first step of half the HumanEval requests held them at k = 2 for 4-8 steps with
m = 4, while every later step of those requests accepted everything).
The survival s_ij = Π_{l≤j} ĉ_il is the probability that drafts 1 … j all pass, and the expected
tokens a step emits at k is E_i(k) = 1 + Σ_{j≤k} s_ij (the +1 is the recovered or bonus token).
A geometric α is the special case c_ij = α for every j.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

DEFAULT_CLASS = "default"


@dataclass(frozen=True)
class AcceptanceConfig:
    """How acceptance is estimated; `prior` is per position (conditional) or one rate for all."""

    max_k: int = 8
    # Optimistic until measured: a request that never speculates never corrects a pessimistic prior
    # (with 0.7, a cold target on the real pair, at 0.98 acceptance, stayed at k = 0); an optimistic
    # one costs a few steps of speculation before the pooled estimate takes over.
    prior: tuple[float, ...] = (0.9,)
    prior_strength: float = 4.0  # pseudo-trials per position, until the class has data to choose one
    # Candidate strengths m learnt per class from how well each predicted the requests' next steps
    # (empty: always `prior_strength`). None below 4: the positions a small m's estimates stop testing
    # are the ones that would show it wrong (replayed on the real pair, m fell to 1 and one early
    # rejection held requests at k = 2 for 20 steps).
    strength_grid: tuple[float, ...] = (4.0, 8.0, 16.0, 32.0, 64.0)
    decay: float = 0.97  # per-step decay of a request's own counts (memory ≈ 1 / (1 − decay) steps)
    pooled_decay: float = 0.999  # decay of the pooled (class) counts per step
    pooled_min_trials: float = 20.0  # pooled data needed before it replaces the configured prior

    def __post_init__(self) -> None:
        if self.prior_strength <= 0 or any(not m > 0 for m in self.strength_grid):
            raise ValueError(f"prior strengths must be > 0, got {self.prior_strength} and {self.strength_grid}")

    def prior_vector(self) -> np.ndarray:
        p = np.asarray(self.prior, dtype=float)
        if p.size == 1:
            p = np.full(self.max_k, float(p[0]))
        if p.size < self.max_k:  # extend with the last rate
            p = np.concatenate([p, np.full(self.max_k - p.size, p[-1])])
        return np.clip(p[: self.max_k], 1e-6, 1 - 1e-6)


@dataclass
class _Pool:
    accepted: np.ndarray
    tested: np.ndarray
    prior: np.ndarray  # configured (or controller-published) prior for this class
    loss: np.ndarray  # decayed log loss of each candidate prior strength's predictions
    scored: float = 0.0  # decayed number of predictions scored (trials after a request's first)


@dataclass
class AcceptanceTracker:
    """Counts for every live request (rows of two arrays) plus one pooled row per workload class."""

    config: AcceptanceConfig = field(default_factory=AcceptanceConfig)

    def __post_init__(self) -> None:
        k = self.config.max_k
        self._row: dict[int, int] = {}
        self._class_of: list[str] = []
        self._accepted = np.zeros((16, k))
        self._tested = np.zeros((16, k))
        self._free: list[int] = list(range(15, -1, -1))
        self._pools: dict[str, _Pool] = {}

    # -- membership -----------------------------------------------------------------------
    def add(self, seq_id: int, klass: str = DEFAULT_CLASS) -> None:
        if seq_id in self._row:
            return
        if not self._free:
            self._grow()
        row = self._free.pop()
        self._row[seq_id] = row
        self._accepted[row] = 0.0
        self._tested[row] = 0.0
        while len(self._class_of) <= row:
            self._class_of.append(DEFAULT_CLASS)
        self._class_of[row] = klass
        self._pool(klass)

    def remove(self, seq_id: int) -> None:
        row = self._row.pop(seq_id, None)
        if row is not None:
            self._free.append(row)

    def __contains__(self, seq_id: int) -> bool:
        return seq_id in self._row

    def set_prior(self, prior: Sequence[float], klass: str = DEFAULT_CLASS) -> None:
        """Replace a class's prior (e.g. with the controller's published estimate)."""
        cfg = AcceptanceConfig(max_k=self.config.max_k, prior=tuple(prior))
        self._pool(klass).prior = cfg.prior_vector()

    # -- updates --------------------------------------------------------------------------
    def observe(self, seq_ids: Sequence[int], ks: Sequence[int],
                accepted: Sequence[int]) -> dict[str, list[list[int]]]:
        """One step's outcomes: request seq_ids[b] proposed ks[b] drafts and had accepted[b] accepted.

        Returns this step's counts per class, [tested per position, accepted per position], for
        the step record (the controller pools them with the same truncation rule)."""
        known = [b for b, sid in enumerate(seq_ids) if sid in self._row and ks[b] > 0]
        if not known:
            return {}
        rows = np.array([self._row[seq_ids[b]] for b in known])
        k = np.minimum(np.array([ks[b] for b in known]), self.config.max_k)
        a = np.minimum(np.array([accepted[b] for b in known]), k)
        pos = np.arange(self.config.max_k)[None, :]
        tested = (pos < np.minimum(k, a + 1)[:, None]).astype(float)  # through the first rejection
        passed = (pos < a[:, None]).astype(float)
        self._score(rows, tested, passed)
        gamma = self.config.decay
        self._tested[rows] = gamma * self._tested[rows] + tested
        self._accepted[rows] = gamma * self._accepted[rows] + passed
        by_class: dict[str, list[int]] = {}
        for i, row in enumerate(rows):
            by_class.setdefault(self._class_of[row], []).append(i)
        step: dict[str, list[list[int]]] = {}
        for klass, idx in by_class.items():
            pool = self._pool(klass)
            g = self.config.pooled_decay
            t, p = tested[idx].sum(axis=0), passed[idx].sum(axis=0)
            pool.tested = g * pool.tested + t
            pool.accepted = g * pool.accepted + p
            width = int(np.count_nonzero(t))  # positions tested form a prefix; drop the untested tail
            step[klass] = [[int(x) for x in t[:width]], [int(x) for x in p[:width]]]
        return step

    def _score(self, rows: np.ndarray, tested: np.ndarray, passed: np.ndarray) -> None:
        """Charge every candidate prior strength the log loss of its prediction of these outcomes."""
        grid = np.asarray(self.config.strength_grid, dtype=float)
        if grid.size == 0:
            return
        own_n, own_a = self._tested[rows], self._accepted[rows]
        informed = tested * (own_n > 0)  # a request's first trial at a position is predicted alike by every m
        if not informed.any():
            return
        classes = [self._class_of[r] for r in rows]
        for klass in set(classes):
            idx = [i for i, c in enumerate(classes) if c == klass]
            pi = self.prior(klass)
            m = grid[:, None, None]
            pred = np.clip((own_a[idx] + m * pi) / (own_n[idx] + m), 1e-6, 1 - 1e-6)  # [G, n, K]
            ok, seen = passed[idx], informed[idx]
            loss = -(seen * (ok * np.log(pred) + (1 - ok) * np.log1p(-pred))).sum(axis=(1, 2))
            pool = self._pool(klass)
            g = self.config.pooled_decay
            pool.loss = g * pool.loss + loss
            pool.scored = g * pool.scored + float(seen.sum())

    # -- estimates ------------------------------------------------------------------------
    def strength(self, klass: str = DEFAULT_CLASS) -> float:
        """m for the class: the candidate with the lowest loss once enough predictions were scored."""
        pool = self._pool(klass)
        grid = self.config.strength_grid
        if not grid or pool.scored < self.config.pooled_min_trials:
            return self.config.prior_strength
        best = int(np.argmin(pool.loss))
        # Ties (nothing told the candidates apart yet) keep the configured strength.
        configured = [i for i, m in enumerate(grid) if m == self.config.prior_strength]
        if configured and pool.loss[best] >= pool.loss[configured[0]] - 1e-9:
            return self.config.prior_strength
        return float(grid[best])

    def prior(self, klass: str = DEFAULT_CLASS) -> np.ndarray:
        """π: the pooled per-position estimate where it has enough trials, carried forward to deeper
        positions that lack them; the configured prior before any position has enough."""
        pool = self._pool(klass)
        m = self.config.prior_strength
        pooled = (pool.accepted + m * pool.prior) / (pool.tested + m)
        enough = pool.tested >= self.config.pooled_min_trials
        # A position without enough trials starts from the last one before it that has them, not from
        # the configured prior: deeper positions are then tried as soon as the shallow ones say they
        # would pass (with the configured 0.7 there, k settled at 3 where 7 was best, measured on the real pair).
        last = np.maximum.accumulate(np.where(enough, np.arange(len(enough)), -1))
        return np.where(last >= 0, pooled[np.maximum(last, 0)], pool.prior)

    def conditional(self, seq_ids: Sequence[int]) -> np.ndarray:
        """ĉ [B, K]: posterior mean conditional acceptance per request and position."""
        return self._posterior(seq_ids)[0]

    def optimistic_survival(self, seq_ids: Sequence[int], z: float = 0.75) -> np.ndarray:
        """s [B, K] at the hopeful end of what is known, per position the lower of two hopes, each an estimate
        plus z·√(c(1 − c)/(n + 1)): the request's own (its posterior, n = its trials + m) and its class's (the
        pooled counts on the configured prior, n = pooled trials + m, before any gate on trials). What a trial
        step may hope for (policy probes): hope shrinks as the request or its class learns. A position past
        the deepest one its class has enough trials at hopes no more than that one (drafts that fail early
        say little of deep positions; without the cap a class at 0.8 was probed at k = 8 again and again)."""
        mean, trials = self._posterior(seq_ids)
        rows = [self._row.get(sid, -1) for sid in seq_ids]
        pools = [self._pool(self._class_of[r] if r >= 0 else DEFAULT_CLASS) for r in rows]
        m = self.config.prior_strength
        n_class = np.array([p.tested for p in pools]).reshape(mean.shape)
        c_class = np.array([(p.accepted + m * p.prior) / (p.tested + m) for p in pools]).reshape(mean.shape)

        def hope(c: np.ndarray, n: np.ndarray) -> np.ndarray:
            return c + z * np.sqrt(c * (1 - c) / (n + 1))

        upper = np.minimum(hope(mean, trials), hope(c_class, n_class + m))
        enough = n_class >= self.config.pooled_min_trials
        last = np.maximum.accumulate(np.where(enough, np.arange(mean.shape[1]), -1), axis=1)
        carried = np.take_along_axis(upper, np.maximum(last, 0), axis=1)
        upper = np.where((last >= 0) & ~enough, np.minimum(upper, carried), upper)
        return np.cumprod(np.clip(upper, 0.0, 1 - 1e-6), axis=1)

    def _posterior(self, seq_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(ĉ, n) [B, K]: posterior mean and its trials (the request's own plus the prior strength m)."""
        rows = np.array([self._row.get(sid, -1) for sid in seq_ids], dtype=int)
        classes = [self._class_of[r] if r >= 0 else DEFAULT_CLASS for r in rows]
        priors = {klass: self.prior(klass) for klass in set(classes)}
        strengths = {klass: self.strength(klass) for klass in priors}
        if len(priors) > 1:
            pi = np.stack([priors[c] for c in classes])
            m = np.array([strengths[c] for c in classes])[:, None]
        else:
            only = next(iter(priors), DEFAULT_CLASS)
            pi = np.tile(priors.get(only, self._pool(DEFAULT_CLASS).prior), (len(rows), 1))
            m = np.full((len(rows), 1), strengths.get(only, self.config.prior_strength))
        known = rows >= 0
        out = pi.copy()
        trials = np.broadcast_to(m, out.shape).copy()
        r = rows[known]
        out[known] = (self._accepted[r] + m[known] * pi[known]) / (self._tested[r] + m[known])
        trials[known] += self._tested[r]
        return out, trials

    def untested(self, seq_ids: Sequence[int]) -> np.ndarray:
        """[B, K] True where the request's class has too few pooled trials at that position to trust."""
        rows = [self._row.get(sid, -1) for sid in seq_ids]
        classes = [self._class_of[r] if r >= 0 else DEFAULT_CLASS for r in rows]
        need = self.config.pooled_min_trials
        by_class = {c: self._pool(c).tested < need for c in set(classes)}
        return np.array([by_class[c] for c in classes], dtype=bool).reshape(len(rows), self.config.max_k)

    def survival(self, seq_ids: Sequence[int]) -> np.ndarray:
        """s [B, K]: probability that drafts 1 … j all pass; E(k) = 1 + s[:, :k].sum()."""
        return np.cumprod(self.conditional(seq_ids), axis=1)

    def pooled_survival(self, klass: str = DEFAULT_CLASS) -> np.ndarray:
        return np.cumprod(self.prior(klass))

    def _pool(self, klass: str) -> _Pool:
        pool = self._pools.get(klass)
        if pool is None:
            k = self.config.max_k
            pool = self._pools[klass] = _Pool(np.zeros(k), np.zeros(k), self.config.prior_vector(),
                                              np.zeros(len(self.config.strength_grid)))
        return pool

    def _grow(self) -> None:
        old = self._accepted.shape[0]
        self._accepted = np.vstack([self._accepted, np.zeros_like(self._accepted)])
        self._tested = np.vstack([self._tested, np.zeros_like(self._tested)])
        self._free.extend(range(2 * old - 1, old - 1, -1))


def expected_tokens(survival: np.ndarray, k: int) -> float:
    """E(k) = 1 + Σ_{j≤k} s_j for one request's survival curve."""
    return 1.0 + float(np.sum(survival[:k]))
