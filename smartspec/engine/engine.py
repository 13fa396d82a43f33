"""The speculative engine: one step = admit/prefill → propose → ONE verify forward → verify → commit → emit.

The caller decides k per running request each step (`step(ks)`); the engine caps it (K bound,
remaining tokens, KV room), asks the proposer, scores every request's `[last token + k_i drafts]`
plus any new prompts in one batched target forward, verifies losslessly, rolls rejected
positions back, and emits 1 … k_i + 1 tokens per request. A step in which every k_i is 0 makes
no proposer call and scores exactly one position per request: plain batched decoding.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

import torch

from smartspec.engine.emulation import AcceptanceEmulator
from smartspec.engine.proposers.base import DraftDeadlineMissed, Proposal, Proposer, ProposeRequest
from smartspec.engine.request_table import RequestTable
from smartspec.engine.runner import ForwardOutput, ForwardStats, ModelRunner, RowInput
from smartspec.engine.sampling import SamplingParams
from smartspec.engine.sequence import SeqStatus, Sequence
from smartspec.engine.steps import CATCHUP_FREE_TOKENS as CATCHUP_FREE_TOKENS
from smartspec.engine.steps import AdmissionLimits as AdmissionLimits
from smartspec.engine.steps import KChooser as KChooser
from smartspec.engine.steps import StepOutput as StepOutput
from smartspec.engine.steps import StepPlan as StepPlan
from smartspec.engine.steps import StepStats as StepStats
from smartspec.engine.steps import plan_of
from smartspec.engine.verification import ScoredRow, first_tokens, verify_rows
from smartspec.errors import InvalidRequest
from smartspec.policy.limits import cap_k

# Prefill rows share the verify forward unless padding them together would cost this much more
# than two separate forwards (the runner pads every row to the widest one).
MIX_PREFILL_SLACK = 1.25


class SpecEngine(RequestTable):
    """Holds the requests; drives a target ModelRunner and an optional Proposer."""

    def __init__(
        self,
        runner: ModelRunner,
        proposer: Proposer | None,
        *,
        eos_token_ids: Iterable[int] = (),
        max_k: int = 8,
        limits: AdmissionLimits | None = None,
        emulate_acceptance: float | None = None,
    ) -> None:
        self.runner = runner
        self.proposer = proposer
        self.eos_token_ids = frozenset(eos_token_ids)
        self.max_k = max_k
        self.limits = limits or AdmissionLimits()
        # Experiments only (see emulation.py): verdicts redrawn with acceptance probability α.
        self.emulator = AcceptanceEmulator(emulate_acceptance) if emulate_acceptance is not None else None
        super().__init__()
        self._step_id = 0

    # -- requests ------------------------------------------------------------------------
    def add_request(self, seq_id: int, prompt_ids: list[int], params: SamplingParams) -> Sequence:
        """Validate and queue a request; it is prefilled by the next step with a free slot."""
        self._check_new(seq_id, prompt_ids, params)
        vocab = self.runner.vocab_size
        bad = [t for t in prompt_ids if not 0 <= t < vocab]
        if bad:
            raise InvalidRequest(f"prompt has token ids outside [0, {vocab}): {bad[:5]}", param="prompt")
        limit = self.runner.max_len
        if len(prompt_ids) + params.max_tokens > limit:
            raise InvalidRequest(
                f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the model's "
                f"context of {limit} tokens",
                param="max_tokens" if len(prompt_ids) < limit else "prompt",
            )
        return self._enqueue(Sequence.create(seq_id, prompt_ids, params))

    # -- the step ------------------------------------------------------------------------
    def step(self, ks: Mapping[int, int] | StepPlan | KChooser | None = None) -> StepOutput:
        """Run one step; `ks` maps running request ids to the k wanted (missing means 0), or is
        a function that returns that map once this step's batch is known."""
        t0 = time.perf_counter()
        self._step_id += 1
        prefill = self._admit()
        fresh = {s.seq_id for s in prefill}
        running = [self.seqs[i] for i in self.running if i not in fresh]
        plan = plan_of(ks(running, prefill) if callable(ks) else ks)
        k_want = {s.seq_id: self._cap_k(s, plan.ks.get(s.seq_id, 0)) for s in running}
        context = sum(self.runner.committed_len(s.seq_id) for s in running)
        pending = sum(self.draft_pending(s) for s in running) if self.proposer is not None else 0

        proposals, invalid, draft_s, missed = self._propose(running, k_want, plan.draft_deadline_s)
        graphs = getattr(self.runner, "graph_stats", None)
        hits_before = graphs.hits if graphs is not None else 0
        t_v = time.perf_counter()
        scored, firsts, forwards = self._score(running, prefill, proposals)
        verdicts = verify_rows(scored) if scored else []
        if self.emulator is not None and verdicts:
            verdicts = self.emulator.redraw(scored, verdicts)
        t_e = time.perf_counter()

        out = StepOutput()
        proposed, accepted = self._commit_and_emit(scored, verdicts, prefill, firsts, out)
        total_s = time.perf_counter() - t0
        out.stats = StepStats(
            step_id=self._step_id,
            batch_size=len(running),
            num_prefills=len(prefill),
            ks=[row.k for row in scored],
            num_proposed_per_pos=proposed,
            num_accepted_per_pos=accepted,
            num_emitted=sum(len(v) for v in out.emitted.values()),
            context_tokens=context,
            num_forwards=len(forwards),
            graph_forwards=graphs.hits - hits_before if graphs is not None else 0,
            real_tokens=sum(f.real_tokens for f in forwards),
            padded_tokens=sum(f.padded_tokens for f in forwards),
            draft_s=draft_s,
            verify_s=t_e - t_v,
            overhead_s=max(total_s - draft_s - (t_e - t_v), 0.0),
            num_invalid_proposals=invalid,
            prefill_tokens=sum(s.prompt_len for s in prefill),
            draft_catchup_tokens=sum(max(0, p.fed_tokens - CATCHUP_FREE_TOKENS) for p in proposals.values()),
            prefill_padded_tokens=len(prefill) * max((s.prompt_len for s in prefill), default=0),
            pending_catchup_tokens=pending,
            draft_deadline_s=plan.draft_deadline_s,
            missed_ks=[k_want[s.seq_id] for s in running] if missed else [],
        )
        return out

    def draft_usable(self) -> bool:
        """Whether drafts can be had now (a remote draft may be disconnected or suspended)."""
        return self.proposer is not None and bool(getattr(self.proposer, "usable", True))

    def draft_pending(self, seq: Sequence) -> int:
        unseen = getattr(self.proposer, "unseen", None)
        if unseen is None or not self.runner.has(seq.seq_id):
            return 0
        return max(0, int(unseen(seq.seq_id, seq.tokens)) - CATCHUP_FREE_TOKENS)

    def _propose(self, running: list[Sequence], k_want: dict[int, int],
                 deadline_s: float | None) -> tuple[dict[int, Proposal], int, float, bool]:
        """Ask the proposer for drafts: (valid proposals, invalid count, seconds, deadline missed).
        No call when every k is 0."""
        if self.proposer is None or not any(k_want.values()):
            return {}, 0, 0.0, False
        t0 = time.perf_counter()
        reqs = [ProposeRequest(s.seq_id, s.tokens, k_want[s.seq_id], s.params) for s in running if k_want[s.seq_id]]
        try:
            raw = self.proposer.propose(reqs, deadline_s=deadline_s)
        except DraftDeadlineMissed:
            return {}, 0, time.perf_counter() - t0, True
        draft_s = time.perf_counter() - t0
        return *self._sanitize(raw, k_want), draft_s, False

    def _score(
        self, running: list[Sequence], prefill: list[Sequence], proposals: dict[int, Proposal]
    ) -> tuple[list[ScoredRow], list[int], list[ForwardStats]]:
        """The target forward(s): every running request's [last token + drafts], plus new prompts."""
        verify_in = []
        for s in running:
            drafts = proposals[s.seq_id].draft_token_ids if s.seq_id in proposals else []
            verify_in.append(RowInput(s.seq_id, [s.tokens[-1], *drafts], 1 + len(drafts)))
        prefill_in = [RowInput(s.seq_id, list(s.tokens), 1) for s in prefill]
        outputs = self._forward(verify_in, prefill_in)
        want_argmax = any(s.params.greedy for s in running)
        logits_of: dict[int, torch.Tensor] = {}
        argmax_of: dict[int, torch.Tensor] = {}
        for fwd, rows in outputs:
            # One argmax over the whole forward instead of one per request.
            argmax = fwd.logits.argmax(dim=-1) if want_argmax else None
            for r, row_in in enumerate(rows):
                span = slice(fwd.offsets[r], fwd.offsets[r] + row_in.num_logits)
                logits_of[row_in.seq_id] = fwd.logits[span]
                if argmax is not None:
                    argmax_of[row_in.seq_id] = argmax[span]
        scored = [ScoredRow(s, proposals.get(s.seq_id), logits_of[s.seq_id], argmax_of.get(s.seq_id)) for s in running]
        firsts = first_tokens(prefill, torch.stack([logits_of[s.seq_id][-1] for s in prefill])) if prefill else []
        return scored, firsts, [fwd.stats for fwd, _ in outputs]

    def _commit_and_emit(
        self,
        scored: list[ScoredRow],
        verdicts: list[tuple[int, list[int]]],
        prefill: list[Sequence],
        firsts: list[int],
        out: StepOutput,
    ) -> tuple[list[int], list[int]]:
        """Keep each request's accepted prefix in the KV, hand out its tokens; per-position counts."""
        # Commit every row before any request finishes: freeing a slot moves another one.
        for row, (n_acc, _) in zip(scored, verdicts, strict=True):
            self.runner.commit(row.seq.seq_id, 1 + n_acc)
        for seq in prefill:
            self.runner.commit(seq.seq_id, seq.prompt_len)
        k_max = max((row.k for row in scored), default=0)
        proposed = [0] * k_max
        accepted = [0] * k_max
        for row, (n_acc, tokens) in zip(scored, verdicts, strict=True):
            for j in range(row.k):
                proposed[j] += 1
                accepted[j] += int(j < n_acc)
            out.verdicts[row.seq.seq_id] = (row.k, n_acc)
            row.seq.stats.k_history.append(row.k)
            row.seq.stats.num_drafts += int(row.k > 0)
            row.seq.stats.num_draft_tokens += row.k
            row.seq.stats.num_accepted_tokens += n_acc
            self._emit(row.seq, tokens, out)
        for seq, tok in zip(prefill, firsts, strict=True):
            seq.status = SeqStatus.RUNNING
            self._emit(seq, [tok], out)
        return proposed, accepted

    # -- helpers -------------------------------------------------------------------------
    def _admit(self) -> list[Sequence]:
        """FIFO admission under KV slots, the batch-size limit and the per-step prefill budget."""
        max_batch = self.limits.max_batch_size or self.runner.cache.num_slots
        budget = self.limits.max_prefill_tokens
        admitted: list[Sequence] = []
        tokens = 0
        while self.waiting and self.runner.free_slots > 0 and len(self.running) < max_batch:
            seq = self.seqs[self.waiting[0]]
            if budget is not None and admitted and tokens + seq.prompt_len > budget:
                break
            self.waiting.popleft()
            self.runner.add(seq.seq_id)
            self.running.append(seq.seq_id)
            seq.stats.admitted_s = time.perf_counter()
            admitted.append(seq)
            tokens += seq.prompt_len
        return admitted

    def _cap_k(self, seq: Sequence, k: int) -> int:
        # Never draft past max_tokens (k drafts emit up to k + 1 tokens) or the slot's end.
        room = self.runner.max_len - self.runner.committed_len(seq.seq_id) - 1
        return cap_k(k, self.max_k, seq.remaining - 1, room)

    def _sanitize(self, raw: dict[int, Proposal], k_want: dict[int, int]) -> tuple[dict[int, Proposal], int]:
        """Keep only proposals the verifier can use; anything else becomes k = 0 (never an error)."""
        ok: dict[int, Proposal] = {}
        invalid = 0
        vocab = self.runner.vocab_size
        for sid, prop in raw.items():
            if sid not in k_want or prop.k == 0:
                continue
            good = prop.k <= k_want[sid] and all(0 <= t < vocab for t in prop.draft_token_ids)
            if good and prop.draft_probs is not None:
                good = tuple(prop.draft_probs.shape) == (prop.k, vocab)
            if good:
                ok[sid] = prop
            else:
                invalid += 1
        return ok, invalid

    def _forward(
        self, verify_rows_in: list[RowInput], prefill_rows: list[RowInput]
    ) -> list[tuple[ForwardOutput, list[RowInput]]]:
        groups = [g for g in (verify_rows_in, prefill_rows) if g]
        if len(groups) == 2 and self.runner.mixes_prefill:
            w_v = max(len(r.token_ids) for r in verify_rows_in)
            w_p = max(len(r.token_ids) for r in prefill_rows)
            together = (len(verify_rows_in) + len(prefill_rows)) * max(w_v, w_p)
            apart = len(verify_rows_in) * w_v + len(prefill_rows) * w_p
            if together <= MIX_PREFILL_SLACK * apart:
                groups = [verify_rows_in + prefill_rows]
        return [(self.runner.forward(g), g) for g in groups]

    def _emit(self, seq: Sequence, tokens: list[int], out: StepOutput) -> None:
        now = time.perf_counter()
        seq.stats.steps += 1
        if seq.stats.first_token_s is None:
            seq.stats.first_token_s = now
        emitted: list[int] = []
        reason = None
        for tok in tokens:
            emitted.append(tok)
            seq.tokens.append(tok)
            if (tok in self.eos_token_ids and not seq.params.ignore_eos) or tok in seq.params.stop_token_ids:
                reason = "stop"
                break
            if seq.remaining <= 0:
                reason = "length"
                break
        out.emitted[seq.seq_id] = emitted
        if reason is not None:
            self._finish(seq, reason)
            out.finished.append(seq.seq_id)

    def _now(self) -> float:
        return time.perf_counter()

    def _release(self, seq: Sequence) -> None:
        if self.runner.has(seq.seq_id):
            self.runner.remove(seq.seq_id)
        if self.proposer is not None:
            self.proposer.release(seq.seq_id)
