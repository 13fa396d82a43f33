"""What a simulated step costs beyond its cost-model time: draft deadlines, shared cores and timing noise."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from smartspec.policy.cost_model import CostModel, StepShape

# The noise generator's key beside the run's seed (each request's acceptance draws use [seed, seq_id]).
NOISE_STREAM = 0x6E6F6973


@dataclass(frozen=True)
class Contention:
    """The target and the draft as two processes on the same C cores (as on this 2-core CPU).

    Each process runs one thread per core (torch's default) and, alone, has every core. A step waiting
    for drafts leaves the cores to the draft, so normally the two never compete. They do after a
    missed deadline: the draft keeps working through what it was asked for (its *backlog*) while the
    target verifies at k = 0. While both run they time-share the cores and each progresses at
    1/stretch of its solo speed, with

        stretch = 1 + busy × min(draft threads, C) / C

    where `busy` is the share of a thread's time that needs a core (the rest waits on memory): pure
    time-slicing of compute-bound work (busy = 1) would double both. busy = 0.6 makes a verify that
    overlaps the draft from start to end 1.6× slower, the worst measured on the real pair (1.61×,
    policy-diagnosis §1 item 5); one that overlaps only the draft's last R solo seconds takes
    V + 0.6·R, which spans the rest of the measured 1.06–1.61× over the 1–3 steps a backlog lasts.
    The target's Python overhead and the time between steps are not stretched (one thread, or idle):
    the draft works through its backlog alone then, at full speed.
    """

    cores: int = 2  # C; 0: the draft has cores of its own and nothing is stretched
    busy: float = 0.6
    draft_threads: int | None = None  # None: one per core, as torch does

    def __post_init__(self) -> None:
        threads_ok = self.draft_threads is None or self.draft_threads >= 0
        if self.cores < 0 or not 0.0 <= self.busy <= 1.0 or not threads_ok:
            raise ValueError(f"need cores >= 0, 0 <= busy <= 1 and draft_threads >= 0, got {self}")

    @property
    def stretch(self) -> float:
        """How many times longer each process takes while both run (1.0: no contention)."""
        if self.cores == 0:
            return 1.0
        threads = self.cores if self.draft_threads is None else self.draft_threads
        return 1.0 + self.busy * min(threads, self.cores) / self.cores


@dataclass(frozen=True)
class SimEffects:
    """What the simulated engine models beyond each step's cost-model time; the defaults are this CPU's pair."""

    # Honour the plan's draft deadline: drafts slower than it are waited for that long, then the step
    # verifies at k = 0 and the draft keeps working (see Contention). Off: drafts always arrive.
    deadline: bool = True
    contention: Contention = field(default_factory=Contention)
    # Multiplicative lognormal noise (median 1) on each component of each step, seeded by the run's seed:
    # real steps vary, and a draft that varies misses a deadline set from its mean.
    noise_sigma: float = 0.0

    def __post_init__(self) -> None:
        if not self.noise_sigma >= 0.0:
            raise ValueError(f"noise_sigma must be >= 0, got {self.noise_sigma}")

    def describe(self) -> str:
        c = self.contention
        cores = (f"target and draft share {c.cores} cores (overlapping work {c.stretch:.2f}× slower)" if c.cores
                 else "the draft has its own cores")
        noise = f"lognormal σ {self.noise_sigma:g}" if self.noise_sigma else "none"
        return f"draft deadline {'on' if self.deadline else 'off'}; {cores}; timing noise {noise}"


@dataclass(frozen=True)
class StepTiming:
    """How long one simulated step took, and what it verified."""

    shape: StepShape  # as verified: k = 0 and no catch-up after a missed deadline
    draft_s: float  # what the target waited for drafts (the deadline, after a miss)
    verify_s: float
    overhead_s: float
    missed: bool = False


class StepTimer:
    """Step times from the true cost model, with the draft's backlog carried from step to step."""

    def __init__(self, cost: CostModel, effects: SimEffects | None = None, seed: int = 0) -> None:
        self.cost = cost
        self.effects = effects or SimEffects()
        self._rng = np.random.default_rng([seed, NOISE_STREAM])
        self.backlog_s = 0.0  # solo seconds of draft work still running for steps that missed their deadline
        self._alone_since: float | None = None  # end of the last target forward: the draft had the cores since
        self.misses = 0

    def time(self, shape: StepShape, deadline_s: float | None, now: float) -> StepTiming:
        """A step of `shape` starting at `now` that waits at most `deadline_s` for its drafts."""
        if self._alone_since is not None:
            self.backlog_s = max(0.0, self.backlog_s - max(0.0, now - self._alone_since))
        noise = self._noise()
        draft, verify, overhead = (t * n for t, n in zip(self.cost.components(shape), noise, strict=True))
        limit = deadline_s if self.effects.deadline else None
        draft_s, missed = 0.0, False
        if shape.max_k > 0:
            if limit is not None and self.backlog_s > limit:
                # The draft service answers a Propose that queued past its budget with no drafts, but
                # still ingests its tokens: only the catch-up joins the backlog.
                ingest = StepShape(0, 0, 0, 0, draft_catchup_tokens=shape.draft_catchup_tokens)
                draft = self.cost.components(ingest)[0] * noise[0]
            need = self.backlog_s + max(draft, 0.0)  # one Propose at a time: the backlog goes first
            if limit is not None and need > limit:
                missed = True
                self.misses += 1
                draft_s, self.backlog_s = limit, need - limit
                shape = replace(shape, max_k=0, draft_tokens=0, draft_catchup_tokens=0)
                _, verify, overhead = self.cost.components(shape)
                verify, overhead = verify * noise[1], overhead * noise[2]
            else:
                draft_s, self.backlog_s = need, 0.0
        verify_s = self._beside_backlog(verify)
        self._alone_since = now + draft_s + verify_s
        return StepTiming(shape, draft_s, verify_s, overhead, missed)

    def _beside_backlog(self, solo_s: float) -> float:
        """Wall time of target work of `solo_s` solo seconds next to the draft's backlog (processor sharing:
        both at 1/stretch until one is done, then the target alone); never less than solo_s."""
        stretch = self.effects.contention.stretch
        backlog = self.backlog_s
        if backlog <= 0.0 or solo_s <= 0.0:
            return solo_s
        if solo_s <= backlog:
            self.backlog_s = backlog - solo_s
            return solo_s * stretch
        self.backlog_s = 0.0
        return max(solo_s, backlog * stretch + (solo_s - backlog))  # max: no rounding below solo_s

    def _noise(self) -> tuple[float, float, float]:
        sigma = self.effects.noise_sigma
        if sigma <= 0.0:
            return 1.0, 1.0, 1.0
        d, v, o = self._rng.lognormal(0.0, sigma, 3)
        return float(d), float(v), float(o)
