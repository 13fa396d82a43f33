"""The speculation policy: mode, bounds, catch-up pricing, probing and exploration around the exact selection."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from smartspec.policy.acceptance import AcceptanceTracker
from smartspec.policy.cost_model import CostModel, StepShape, default_cost_model
from smartspec.policy.limits import MAX_K_LIMIT, cap_ks, within
from smartspec.policy.modes import ADAPTIVE_MODES, MODES, Mode
from smartspec.policy.selection import (
    CatchUp,
    Objective,
    Selection,
    StepCurve,
    expected_each,
    expected_total,
    select_goodput,
    select_uniform,
)

Admission = Literal["no-spec", "decode-only"]
OBJECTIVES: tuple[Objective, ...] = ("ratio", "marginal")


@dataclass(frozen=True)
class PolicyConfig:
    """What an operator sets (the `SpeculationPolicy` spec, in engine terms), and the policy's own knobs."""

    mode: Mode = "goodput"
    max_k: int = 8  # K: no request ever drafts more
    fixed_k: int = 3  # k for mode "fixed"
    hysteresis: float = 1.1  # speculate only if the decode step's predicted goodput beats k = 0 by this factor
    objective: Objective = "ratio"  # see selection.py
    # A step that admits prompts runs at k = 0 ("no-spec"): its prefill is most of its time, and a
    # speculating batch would make the new prompts wait for drafts too (measured: goodput chose k = 8 on
    # every admission step at batch 17-32 when prefill was in the objective, and TTFT doubled).
    admission: Admission = "no-spec"
    # Draft catch-up (context the draft has not seen) ingested per step at most: requests with the
    # least pending go first, the rest stay at k = 0 this step (one request may always go).
    max_catchup_tokens: int = 512
    # Requests waiting to be admitted are delayed by a longer step without benefiting from it: raise the
    # price of step time by 1 + waiting / (running + waiting).
    queue_weight: bool = False
    # A request held at k = 0 for `probe_every` steps drafts again to refresh its estimate — one request
    # per step (the one with the least catch-up), at the k that pays best if its acceptance is at the
    # hopeful end of what is known, and only where that hope would beat the step's rate by the hysteresis
    # twice (policy._trial; never a batch-wide verify pad or a large catch-up for a hope that small).
    probe_every: int = 16
    # For the cost model: one decision in `explore_every` runs the other side — k = 0 for the batch if the
    # policy speculates (cheap: one token of catch-up each next step), else one request (the least
    # catch-up) at the k it would pick without hysteresis, again only where that costs less than the
    # hysteresis. Without such steps a cost at a new batch size is extrapolated from elsewhere.
    explore_every: int = 50
    # Upward exploration: a request that accepted all k drafts tries k + 1 next step while its class has
    # too few trials at that position to trust its estimate, at batch sizes up to this (0 = never). Off by
    # default: the carried-forward prior (acceptance.py) already explores upward, and on top of it this
    # rule cost 1-2 % in simulation (python -m bench.sim_variants: 1.005 vs 0.984 of the best static at
    # 0.3 req/s, 0.982 vs 0.981 at 0.1) by pushing k past the optimum while positions gather trials.
    explore_up_batch: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.admission not in ("no-spec", "decode-only"):
            raise ValueError(f"admission must be 'no-spec' or 'decode-only', got {self.admission!r}")
        if not within(self.max_k, MAX_K_LIMIT):
            raise ValueError(f"max_k must be in [0, {MAX_K_LIMIT}], got {self.max_k}")
        if not within(self.fixed_k, self.max_k):
            raise ValueError(f"fixed_k must be in [0, max_k={self.max_k}], got {self.fixed_k}")
        if self.hysteresis < 1.0:
            raise ValueError(f"hysteresis must be >= 1.0, got {self.hysteresis}")
        for name in ("probe_every", "explore_every", "explore_up_batch", "max_catchup_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def adaptive(self) -> bool:
        return self.mode in ADAPTIVE_MODES


@dataclass(frozen=True)
class BatchRequest:
    """One running request as the policy sees it."""

    seq_id: int
    cap: int  # per-request bound: min(K, the request's own max_k, tokens it may still emit - 1)
    context_tokens: int
    pending_catchup: int = 0  # tokens the draft would have to ingest before drafting for it
    remaining: int = 1  # tokens the request may still emit


@dataclass(frozen=True)
class Decision:
    ks: dict[int, int]
    predicted_goodput: float  # decode tokens/s of the chosen k⃗ (what the choice maximised)
    predicted_goodput_k0: float
    predicted_step_s: float  # the whole step: prefill and this step's catch-up included
    predicted_draft_s: float  # the draft's share of it (for the draft deadline)
    decision_s: float  # wall time the decision took
    probes: int = 0
    explored: bool = False
    pending_catchup: int = 0  # Σ catch-up tokens of the requests asked for drafts (the draft ingests them now)


@dataclass
class SpeculationPolicy:
    """Chooses k for every running request, every step."""

    config: PolicyConfig = field(default_factory=PolicyConfig)
    cost_model: CostModel = field(default_factory=default_cost_model)
    acceptance: AcceptanceTracker = field(default_factory=AcceptanceTracker)

    def __post_init__(self) -> None:
        if self.acceptance.config.max_k < self.config.max_k:
            # A tracker narrower than K would silently cap goodput's k at its width (8 by default).
            self.acceptance = AcceptanceTracker(replace(self.acceptance.config, max_k=self.config.max_k))
        self._zero_streak: dict[int, int] = {}
        self._all_accepted: dict[int, int] = {}  # seq_id -> k whose drafts all passed last step
        self._probed: set[int] = set()  # requests probed in the last decision
        self._decisions = 0  # adaptive decisions with something to decide (for exploration)

    def forget(self, seq_id: int) -> None:
        self._zero_streak.pop(seq_id, None)
        self._probed.discard(seq_id)
        self._all_accepted.pop(seq_id, None)
        self.acceptance.remove(seq_id)

    def observe(self, verdicts: Mapping[int, tuple[int, int]]) -> dict[str, list[list[int]]]:
        """One step's (k proposed, accepted) per request; returns the per-class counts for the step record."""
        ids = [sid for sid, (k, _) in verdicts.items() if k > 0]
        self._all_accepted = {sid: verdicts[sid][0] for sid in ids if verdicts[sid][1] >= verdicts[sid][0]}
        return self.acceptance.observe(ids, [verdicts[i][0] for i in ids], [verdicts[i][1] for i in ids])

    def choose(self, batch: Sequence[BatchRequest], *, prefill_tokens: int = 0, prefill_padded_tokens: int = 0,
               waiting: int = 0) -> Decision:
        """k per request for a step that verifies `batch` and prefills prompts of `prefill_tokens` tokens
        (padded to `prefill_padded_tokens`): the prefill is priced in the prediction, never in the choice."""
        t0 = time.perf_counter()
        admitting = prefill_tokens > 0
        cfg = self.config
        # One pass over the requests; everything after is arrays (Python per request cost ~0.7 ms at batch 256).
        ids = [r.seq_id for r in batch]
        fields = np.array([(r.cap, r.context_tokens, r.pending_catchup, r.remaining) for r in batch],
                          dtype=np.int64).reshape(-1, 4).T
        caps = cap_ks(fields[0], cfg.max_k)
        context = int(fields[1].sum())
        survival = self.acceptance.survival(ids)[:, : cfg.max_k] if batch else np.zeros((0, max(cfg.max_k, 1)))
        pending = fields[2].astype(float)
        probes, explored = 0, False
        catchup = CatchUp.none(len(batch))
        curve = StepCurve.of(self.cost_model, len(batch), context, cfg.max_k)
        if cfg.mode == "off" or cfg.max_k == 0 or (admitting and cfg.admission == "no-spec" and cfg.adaptive):
            ks = np.zeros(len(batch), dtype=int)
        elif cfg.mode == "fixed":
            ks = np.minimum(caps, cfg.fixed_k)
        else:
            caps = self._catchup_caps(caps, pending)
            remaining = fields[3]
            per_token_s = self.cost_model.catchup_s_per_token() if pending.any() else 0.0
            weight = 1.0 + waiting / (len(batch) + waiting) if cfg.queue_weight and batch else 1.0
            # Without catch-up first: if nothing speculates then, nothing does with it (it only adds cost to
            # k > 0), and that is the common case where speculation does not pay (one selection, not two).
            ks = self._select(survival, caps, curve, CatchUp.none(len(batch)), cfg.hysteresis, weight).ks.copy()
            catchup = self._catchup(ks > 0, per_token_s * pending, remaining)
            if ks.any() and pending.any():
                ks = self._select(survival, caps, curve, catchup, cfg.hysteresis, weight).ks.copy()
            # A probe or an exploration step starts what may become a steady state, so it is judged
            # with every request's catch-up spread over the tokens it has left; priced in full, a
            # request whose estimate or cost had gone wrong could never be tried again.
            trial = _spread(per_token_s * pending, remaining)
            if cfg.mode == "goodput":
                ks = self._explore_up(ids, ks, caps, survival, len(batch))
                ks, probes = self._probe(ids, ks, caps, survival, curve, trial, pending)
            if cfg.explore_every and caps.any():
                self._decisions += 1
                if self._decisions % cfg.explore_every == 0:
                    ks, explored = self._explore(ks, survival, caps, curve, trial, pending)
        t_dec = curve.time(ks, survival, catchup)
        t_k0 = float(curve.alpha[0])
        catchup_tokens = int(pending[ks > 0].sum()) if batch else 0
        whole = StepShape(len(batch), context, int(ks.max(initial=0)), int(ks.sum()), prefill_tokens, catchup_tokens,
                          prefill_padded_tokens)
        draft_s, verify_s, overhead_s = self.cost_model.components(whole)
        emitted = expected_total(survival, ks) if batch else 0.0
        return Decision(
            ks=dict(zip(ids, ks.tolist(), strict=True)),
            predicted_goodput=emitted / t_dec if t_dec > 0 else 0.0,
            predicted_goodput_k0=len(batch) / t_k0 if t_k0 > 0 else 0.0,
            predicted_step_s=draft_s + verify_s + overhead_s,
            predicted_draft_s=max(draft_s, 0.0),
            decision_s=time.perf_counter() - t0,
            probes=probes,
            explored=explored,
            pending_catchup=catchup_tokens,
        )

    # -- pieces ---------------------------------------------------------------------------------
    def _select(self, survival: np.ndarray, caps: np.ndarray, curve: StepCurve, catchup: CatchUp,
                hysteresis: float, weight: float = 1.0) -> Selection:
        # The curve carries this step's batch and context (context_tokens is read only without one).
        if self.config.mode == "goodput-uniform":
            return select_uniform(survival, caps, self.cost_model, context_tokens=0, catchup=catchup,
                                  hysteresis=hysteresis * weight, curve=curve)
        return select_goodput(survival, caps, self.cost_model, context_tokens=0, catchup=catchup,
                              hysteresis=hysteresis, objective=self.config.objective, price_weight=weight,
                              curve=curve)

    def _catchup_caps(self, caps: np.ndarray, pending: np.ndarray) -> np.ndarray:
        """At most `max_catchup_tokens` of catch-up per step, least pending first (one request always may)."""
        limit = self.config.max_catchup_tokens
        if not limit or pending.sum() <= limit:
            return caps
        order = np.argsort(pending, kind="stable")
        before = np.concatenate([[0.0], np.cumsum(pending[order])[:-1]])
        allowed = np.zeros(len(caps), dtype=bool)
        allowed[order] = (before == 0) | (before + pending[order] <= limit)
        return np.where(allowed, caps, 0)

    @staticmethod
    def _catchup(steady: np.ndarray, cost: np.ndarray, remaining: np.ndarray) -> CatchUp:
        """Price each request's pending catch-up. A request the batch would speculate for anyway (`steady`:
        the decision with catch-up ignored) pays it once for every token it has left to emit, spread over
        them; any other pays it in full in this step — a probe or a lone speculating step never gets
        its catch-up for free."""
        if not cost.any():
            return CatchUp.none(len(cost))
        spread = _spread(cost, remaining)
        return CatchUp(np.where(steady, 0.0, cost), np.where(steady, spread.per_token, 0.0))

    def _affordable(self, ks: np.ndarray, base: np.ndarray, survival: np.ndarray, curve: StepCurve,
                    catchup: CatchUp) -> bool:
        """Exploration may cost at most the hysteresis: its goodput ≥ that of `base` / h."""
        def g(k: np.ndarray) -> float:
            t = curve.time(k, survival, catchup)
            return expected_total(survival, k) / t if t > 0 else 0.0
        return g(ks) * self.config.hysteresis >= g(base)


    def _explore_up(self, ids: list[int], ks: np.ndarray, caps: np.ndarray, survival: np.ndarray,
                    batch: int) -> np.ndarray:
        """After all k drafts passed, try k + 1 while the request's class has too few trials there to trust."""
        if not self._all_accepted or batch > self.config.explore_up_batch:
            return ks
        untested = self.acceptance.untested(ids)
        for b, sid in enumerate(ids):
            last = self._all_accepted.get(sid)
            if last is not None and ks[b] <= last < caps[b] and untested[b, last]:
                ks[b] = last + 1
        return ks

    def _probe(self, ids: list[int], ks: np.ndarray, caps: np.ndarray, survival: np.ndarray, curve: StepCurve,
               catchup: CatchUp, pending: np.ndarray) -> tuple[np.ndarray, int]:
        """k = 0 is not sticky: a request held at 0 for `probe_every` steps drafts again (see PolicyConfig)."""
        every = self.config.probe_every
        get = self._zero_streak.get
        streaks = np.where(ks > 0, 0, np.array([get(sid, 0) + 1 for sid in ids], dtype=int).reshape(len(ids)))
        probes = 0
        # A probe whose drafts all passed is repeated next step: one success moves a cautious estimate only
        # a little (0.90 to 0.92 per position), and `every` steps apart a request ends before the evidence
        # adds up (replayed: requests ran at k = 0 between successful k = 7 probes for 60 steps).
        again = np.zeros(len(ids), dtype=bool)
        if self._probed:  # at most one request was probed last step
            again = np.array([sid in self._probed and sid in self._all_accepted for sid in ids], dtype=bool)
        self._probed = set()
        if every:
            due = np.flatnonzero(((streaks >= every) | again) & (caps > 0) & (ks == 0))
            if due.size:
                pick = int(due[np.argmin(pending[due])])
                trial = self._trial(ids, pick, ks, caps, survival, curve, catchup)
                if trial is not None:
                    ks, probes = trial, 1
                    streaks[pick] = 0
                    self._probed = {ids[pick]}
        self._zero_streak.update(zip(ids, streaks.tolist(), strict=True))
        return ks, probes

    def _trial(self, ids: list[int], pick: int, ks: np.ndarray, caps: np.ndarray, survival: np.ndarray,
               curve: StepCurve, catchup: CatchUp) -> np.ndarray | None:
        """`ks` with request `pick` at the k that is best if its acceptance is at the hopeful end of what is known
        (AcceptanceTracker.optimistic_survival), if under that hope its extra tokens per extra second beat the
        step's rate by the hysteresis, twice; else None. A probe's point is to change the steady decision, as a
        confirmed hope then would; one that could not is not run (one draft token "because it is cheap" cost
        2 % against `off` where nothing paid: simulated, 40 requests at acceptance 0.8 on a CPU-shaped cost,
        once a first probe had caught the draft up).

        Not k = 1 always: where a width-2 verify costs 2-3× a decode (CPUs; the cost model's row factors) one
        draft token never pays while seven do at 0.99 acceptance, so a k = 1 probe is never affordable and a
        request held at 0 by a cautious prior would never learn what it accepts (replayed on the real pair in
        float32: goodput stayed at k = 0, 1.15× slower than fixed:7). Hope shrinks with trials, so a request
        whose drafts fail is soon probed at small k or not at all."""
        hopeful = survival.copy()
        hopeful[pick] = self.acceptance.optimistic_survival([ids[pick]])[0, : survival.shape[1]]
        base_e, base_t = expected_total(hopeful, ks), curve.time(ks, hopeful, catchup)
        # Every k = 1 … cap for `pick` at once, the rest as they are: E and T of each trial (what
        # expected_total and StepCurve.time give one trial at a time; one loop of them was 1.5 ms at batch 256).
        kk = np.arange(1, int(caps[pick]) + 1)
        if not kk.size:
            return None
        each = expected_each(hopeful, ks)
        cols = np.arange(hopeful.shape[1])
        pick_each = 1.0 + (hopeful[pick][None, :] * (cols[None, :] < kk[:, None])).sum(axis=1)  # E_pick(k)
        others = np.delete(ks, pick)
        on = others > 0
        others_each = np.delete(each, pick)
        e = others_each.sum() + pick_each
        m = np.maximum(others.max(initial=0), kk)
        t = curve.alpha[m] + curve.beta[m] * (others.sum() + kk)
        t = t + float((np.delete(catchup.fixed, pick)[on] + np.delete(catchup.per_token, pick)[on] * others_each[on])
                      .sum()) + catchup.fixed[pick] + catchup.per_token[pick] * pick_each
        ratio = np.where(t > 0, e / np.where(t > 0, t, 1.0), 0.0)
        i = int(np.argmax(ratio))  # the first of equals: the smallest k, as the scan upward kept
        if ratio[i] <= 0 or base_t <= 0:
            return None
        best, best_e, best_t = ks.copy(), float(e[i]), float(t[i])
        best[pick] = int(kk[i])
        h, rate = self.config.hysteresis, base_e / base_t
        # The request's hoped-for extra tokens per extra second must beat the step's rate by the hysteresis twice
        # over: once for a confirmed hope to change the steady decision, once for what the probe itself costs
        # and wastes when the hope fails (its draft catch-up, the repeats). Once only, probes at k = 1 on an
        # acceptance of 0.8 where one draft just breaks even cost 2.7 % against `off` (simulated, 20 requests).
        extra_t = best_t - base_t
        return best if extra_t <= 0 or (best_e - base_e) / extra_t >= h * h * rate else None

    def _explore(self, ks: np.ndarray, survival: np.ndarray, caps: np.ndarray, curve: StepCurve, catchup: CatchUp,
                 pending: np.ndarray) -> tuple[np.ndarray, bool]:
        """The other side of the decision for one step (see PolicyConfig.explore_every)."""
        if ks.any():
            return np.zeros_like(ks), True
        best = self._select(survival, caps, curve, catchup, 1.0).ks
        candidates = np.flatnonzero(caps > 0)
        pick = int(candidates[np.argmin(pending[candidates])])
        trial = np.zeros_like(ks)
        trial[pick] = max(int(best[pick]), 1)
        if self._affordable(trial, ks, survival, curve, catchup):
            return trial, True
        return ks, False


def _spread(cost_s: np.ndarray, remaining: np.ndarray) -> CatchUp:
    """Catch-up seconds charged per token the request is expected to emit, over the tokens it has left."""
    return CatchUp(np.zeros_like(cost_s), cost_s / np.maximum(remaining, 1))
