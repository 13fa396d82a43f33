"""SimEngine: the SpecEngine interface the Scheduler drives, with step times from a CostModel and drawn acceptance."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from smartspec.engine.params import SamplingParams
from smartspec.engine.request_table import RequestTable
from smartspec.engine.sequence import SeqStatus, Sequence
from smartspec.engine.steps import (
    CATCHUP_FREE_TOKENS,
    AdmissionLimits,
    KChooser,
    StepOutput,
    StepPlan,
    StepStats,
    plan_of,
)
from smartspec.errors import InvalidRequest
from smartspec.policy.cost_model import CostModel, StepShape
from smartspec.sim.effects import SimEffects, StepTimer
from smartspec.sim.workload import SimRequest

MIN_STEP_S = 1e-6  # a cost model that predicts <= 0 somewhere still moves the clock
TOKEN = 0  # the simulator's only token id


class VirtualClock:
    """Simulated seconds since the start of the run; only the event loop and the engine move it."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, dt: float) -> None:
        if dt < 0:
            raise ValueError(f"time cannot go back ({dt} s)")
        self.now += dt

    def advance_to(self, t: float) -> None:
        self.now = max(self.now, t)


@dataclass
class _Truth:
    """What the simulated target and draft would do for one request."""

    accept: tuple[float, ...]  # conditional acceptance per draft position
    uniforms: list[float]  # one draw per output position: draft j at output position t passes iff u_t < accept[j-1]
    draft_seen: int = 0  # tokens the draft has ingested (for catch-up tokens)


class SimEngine(RequestTable):
    """Admission, k capping, one "forward" per step and emission exactly as SpecEngine does them; the forward's
    duration is the cost model's draft + verify + overhead for the step's StepShape, and draft j of request i
    is accepted with its conditional rate given j - 1 was (so emitted = accepted + 1).

    Each output position t of a request has one uniform u_t, fixed by (seed, request id): a draft that
    proposes position t passes iff u_t < the request's rate at its draft position. Every position is tested
    at most once (a rejection emits the target's own token there), so this is the per-step geometric draw,
    and a request meets the same luck under every policy (common random numbers across the sweep).

    `effects` (smartspec.sim.effects) adds what the real pair showed beyond the cost model: a draft slower
    than the plan's deadline turns the step into a deadline-long wait and a k = 0 verify, recorded as the
    real engine records it, while the abandoned draft work slows the next target forwards on shared cores;
    and optional timing noise."""

    def __init__(self, requests: Mapping[int, SimRequest], cost: CostModel, clock: VirtualClock, *,
                 num_slots: int = 256, max_k: int = 8, limits: AdmissionLimits | None = None,
                 max_len: int | None = None, seed: int = 0, effects: SimEffects | None = None) -> None:
        self.requests = requests
        self.cost = cost
        self.clock = clock
        self.num_slots = num_slots
        self.max_k = max_k
        self.limits = limits or AdmissionLimits()
        self.max_len = max_len
        self.seed = seed
        super().__init__()
        self._truth: dict[int, _Truth] = {}
        self._step_id = 0
        self.busy_s = 0.0  # virtual seconds spent in steps
        self.timer = StepTimer(cost, effects, seed)

    # -- requests ------------------------------------------------------------------------
    def add_request(self, seq_id: int, prompt_ids: list[int], params: SamplingParams) -> Sequence:
        self._check_new(seq_id, prompt_ids, params)
        if self.max_len is not None and len(prompt_ids) + params.max_tokens > self.max_len:
            raise InvalidRequest(f"prompt + max_tokens exceeds the context of {self.max_len} tokens",
                                 param="max_tokens")
        req = self.requests.get(seq_id)
        if req is None:
            raise InvalidRequest(f"request {seq_id} is not in the simulated workload")
        seq = Sequence.create(seq_id, prompt_ids, params)
        seq.stats.arrival_s = self.clock.now
        if req.agreement:  # replayed: u_t = 0 passes and 1 fails at any rate in (0, 1)
            u = [0.0 if ok else 1.0 for ok in req.agreement[: params.max_tokens]]
            self._truth[seq_id] = _Truth((0.5,), u + [0.0] * (params.max_tokens - len(u)))
        else:
            rng = np.random.default_rng([self.seed, seq_id])
            self._truth[seq_id] = _Truth(req.accept, rng.random(params.max_tokens).tolist())
        return self._enqueue(seq)

    def _forget(self, seq_id: int) -> None:
        self._truth.pop(seq_id, None)

    # -- the step ------------------------------------------------------------------------
    def step(self, ks: Mapping[int, int] | StepPlan | KChooser | None = None) -> StepOutput:
        self._step_id += 1
        prefill = self._admit()
        fresh = {s.seq_id for s in prefill}
        running = [self.seqs[i] for i in self.running if i not in fresh]
        plan = plan_of(ks(running, prefill) if callable(ks) else ks)
        k_of = [self._cap_k(s, plan.ks.get(s.seq_id, 0)) for s in running]
        context = sum(len(s.tokens) - 1 for s in running)  # committed KV: everything but the last emitted token
        pending = [self.draft_pending(s) for s in running]
        catchup = sum(p for p, k in zip(pending, k_of, strict=True) if k > 0)
        prefill_tokens = sum(s.prompt_len for s in prefill)
        padded = len(prefill) * max((s.prompt_len for s in prefill), default=0)
        shape = StepShape(len(running), context, max(k_of, default=0), sum(k_of), prefill_tokens, catchup, padded)
        timing = self.timer.time(shape, plan.draft_deadline_s, self.clock.now)
        draft_s, verify_s, overhead_s = timing.draft_s, timing.verify_s, timing.overhead_s
        missed_ks: list[int] = []
        if timing.missed:  # as SpecEngine: verified at k = 0; the draft still ingested what it was sent
            for s, k in zip(running, k_of, strict=True):
                if k > 0:
                    self._truth[s.seq_id].draft_seen = len(s.tokens)
            missed_ks, k_of, shape = k_of, [0] * len(k_of), timing.shape
        dt = max(draft_s + verify_s + overhead_s, MIN_STEP_S)
        self.clock.advance(dt)
        self.busy_s += dt

        out = StepOutput()
        k_max = shape.max_k
        proposed = [0] * k_max
        accepted = [0] * k_max
        for s, k in zip(running, k_of, strict=True):
            n_acc = self._verify(s, k)
            for j in range(k):
                proposed[j] += 1
                accepted[j] += int(j < n_acc)
            out.verdicts[s.seq_id] = (k, n_acc)
            s.stats.k_history.append(k)
            s.stats.num_drafts += int(k > 0)
            s.stats.num_draft_tokens += k
            s.stats.num_accepted_tokens += n_acc
            self._emit(s, n_acc + 1, out)
        for s in prefill:
            s.status = SeqStatus.RUNNING
            self._emit(s, 1, out)
        out.stats = StepStats(
            step_id=self._step_id, batch_size=len(running), num_prefills=len(prefill), ks=k_of,
            num_proposed_per_pos=proposed, num_accepted_per_pos=accepted,
            num_emitted=sum(len(v) for v in out.emitted.values()), context_tokens=context,
            num_forwards=1, real_tokens=len(running) + sum(k_of) + prefill_tokens,
            padded_tokens=len(running) * (k_max + 1) + len(prefill) * max((s.prompt_len for s in prefill), default=0),
            draft_s=draft_s, verify_s=verify_s, overhead_s=overhead_s, prefill_tokens=prefill_tokens,
            draft_catchup_tokens=shape.draft_catchup_tokens, prefill_padded_tokens=padded,
            pending_catchup_tokens=sum(pending), draft_deadline_s=plan.draft_deadline_s, missed_ks=missed_ks,
        )
        return out

    def draft_usable(self) -> bool:
        return True  # the simulated draft always answers (late answers are priced, not suspended)

    def draft_pending(self, seq: Sequence) -> int:
        truth = self._truth.get(seq.seq_id)
        return 0 if truth is None else max(0, len(seq.tokens) - truth.draft_seen - CATCHUP_FREE_TOKENS)

    # -- helpers -------------------------------------------------------------------------
    def _admit(self) -> list[Sequence]:
        """FIFO under KV slots, the batch-size limit and the per-step prefill budget (as SpecEngine._admit)."""
        max_batch = self.limits.max_batch_size or self.num_slots
        budget = self.limits.max_prefill_tokens
        admitted: list[Sequence] = []
        tokens = 0
        while self.waiting and len(self.running) < min(max_batch, self.num_slots):
            seq = self.seqs[self.waiting[0]]
            if budget is not None and admitted and tokens + seq.prompt_len > budget:
                break
            self.waiting.popleft()
            self.running.append(seq.seq_id)
            seq.stats.admitted_s = self.clock.now
            admitted.append(seq)
            tokens += seq.prompt_len
        return admitted

    def _cap_k(self, seq: Sequence, k: int) -> int:
        from smartspec.policy.limits import cap_k  # the one clamp on k, as in the real engine

        room = None if self.max_len is None else self.max_len - (len(seq.tokens) - 1) - 1
        return cap_k(k, self.max_k, seq.remaining - 1, room)

    def _verify(self, seq: Sequence, k: int) -> int:
        """Accepted drafts of k proposed: leading passes of u_t < rate_j (t = output position, j = draft position)."""
        if k == 0:
            return 0
        truth = self._truth[seq.seq_id]
        n = seq.num_output
        u, rates = truth.uniforms, truth.accept
        acc = 0
        while acc < k and u[n + acc] < rates[min(acc, len(rates) - 1)]:
            acc += 1
        # The draft fed its own drafts but the last; it keeps what the target accepted of them.
        truth.draft_seen = len(seq.tokens) + min(acc, k - 1)
        return acc

    def _emit(self, seq: Sequence, count: int, out: StepOutput) -> None:
        now = self.clock.now
        seq.stats.steps += 1
        if seq.stats.first_token_s is None:
            seq.stats.first_token_s = now
        count = min(count, seq.remaining)
        seq.tokens.extend([TOKEN] * count)
        out.emitted[seq.seq_id] = [TOKEN] * count
        if seq.remaining <= 0:
            self._finish(seq, "length")
            out.finished.append(seq.seq_id)

    def _now(self) -> float:
        return self.clock.now
