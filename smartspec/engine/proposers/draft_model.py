"""Draft-model proposer: the same ModelRunner on a small model, k autoregressive steps, batched.

Per step, every sequence that wants drafts catches up on the tokens it has not seen (the last
emitted token, or the whole prompt the first time) in one batched forward, then the batch drafts
one token per forward, rows dropping out as their own k is reached — per-sequence k with no
per-request loop of forwards. The draft KV is reconciled against the engine's token list on every
call: whatever the target rejected is simply truncated away (O(1) with the slot cache).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from smartspec.engine.chain_sampling import ChainSampling
from smartspec.engine.proposers.base import Proposal, ProposeRequest
from smartspec.engine.runner import ModelRunner, RowInput
from smartspec.engine.sampling import make_generator, processed_probs, sample_from

# Catch-up rows longer than this (a prompt, or a long k = 0 stretch) go in their own forward, so
# that one prompt does not pad every other row of the first drafting pass to its length.
NARROW_ROW_TOKENS = 4


class _Track:
    """What the draft holds for one sequence: the tokens in its KV, and its RNG when sampling."""

    __slots__ = ("cached", "confirmed", "generator")

    def __init__(self, generator: torch.Generator | None) -> None:
        self.cached: list[int] = []
        self.confirmed = 0  # cached[:confirmed] came from the engine's tokens, so it can never mismatch
        self.generator = generator


class DraftModelProposer:
    name = "draft-model"

    def __init__(self, runner: ModelRunner, target_vocab_size: int, q_top_k: int | None = None) -> None:
        self.runner = runner
        self.target_vocab_size = target_vocab_size
        # Sample drafts from q truncated to its q_top_k most likely tokens (renormalised), so q can
        # be sent over the wire exactly; None keeps the full distribution (in-process use).
        self.q_top_k = q_top_k
        self._tracks: dict[int, _Track] = {}

    def release(self, seq_id: int) -> None:
        if self._tracks.pop(seq_id, None) is not None:
            self.runner.remove(seq_id)

    def unseen(self, seq_id: int, token_ids: Sequence[int]) -> int:
        track = self._tracks.get(seq_id)
        if track is None:
            return len(token_ids)
        return len(token_ids) - self._confirmed_prefix(track, token_ids)

    def propose(self, requests: list[ProposeRequest], deadline_s: float | None = None) -> dict[int, Proposal]:
        # In-process drafting cannot be abandoned half way: `deadline_s` is for remote proposers.
        live: list[tuple[ProposeRequest, int, list[int]]] = []  # (request, k, pending tokens)
        for req in requests:
            if req.k <= 0:
                continue
            track = self._tracks.get(req.seq_id)
            if track is None:
                if self.runner.free_slots == 0:
                    continue  # no draft capacity: this sequence runs at k = 0 this step
                gen = None if req.params.greedy else make_generator(
                    None if req.params.seed is None else req.params.seed + 1
                )
                track = self._tracks[req.seq_id] = _Track(gen)
                self.runner.add(req.seq_id)
            pending = self._reconcile(req.seq_id, track, req.token_ids)
            room = self.runner.max_len - self.runner.committed_len(req.seq_id) - len(pending)
            k = min(req.k, room + 1)
            if k > 0:
                live.append((req, k, pending))
        if not live:
            return {}

        chained = self._chain(live)
        if chained is not None:
            return chained
        tokens: dict[int, list[int]] = {req.seq_id: [] for req, _, _ in live}
        probs: dict[int, list[torch.Tensor]] = {req.seq_id: [] for req, _, _ in live}
        narrow = [item for item in live if len(item[2]) <= NARROW_ROW_TOKENS]
        wide = [item for item in live if len(item[2]) > NARROW_ROW_TOKENS]
        for group in (narrow, wide):
            if group:
                self._draft_one([(req, pending) for req, _, pending in group], tokens, probs)
        for req, _, _ in live:
            track = self._tracks[req.seq_id]
            track.confirmed = len(track.cached)
        k_of = {req.seq_id: k for req, k, _ in live}
        for j in range(1, max(k_of.values())):
            step = [(req, [tokens[req.seq_id][-1]]) for req, k, _ in live if k > j]
            self._draft_one(step, tokens, probs)

        out: dict[int, Proposal] = {}
        for req, _, pending in live:
            q = torch.stack(probs[req.seq_id]) if probs[req.seq_id] else None
            out[req.seq_id] = Proposal(tokens[req.seq_id], q, fed_tokens=len(pending))
        return out

    def _chain(self, live: list[tuple[ProposeRequest, int, list[int]]]) -> dict[int, Proposal] | None:
        """Drafting as one replayed chain (GraphRunner.chain) when every live sequence is in this call with a short
        catch-up; None: draft step by step below. Rows run to the largest k and each keeps its own k drafts: its
        KV keeps what it fed plus its first k - 1 drafts, as the step-by-step path does. A sampled row draws its k
        uniforms from its own generator up front, in the order the step-by-step path would draw them."""
        chain = getattr(self.runner, "chain", None)
        if chain is None or len(live) != self.runner.num_sequences:
            return None
        if any(len(pending) > NARROW_ROW_TOKENS for _, _, pending in live):
            return None
        steps = max(k for _, k, _ in live)
        rows_in = [RowInput(req.seq_id, pending, 1) for req, _, pending in live]
        sampled = [req for req, _, _ in live if not req.params.greedy]
        if not sampled:
            drafted = chain(rows_in, steps)
        else:
            gens = [g for req in sampled if (g := self._tracks[req.seq_id].generator) is not None]
            states = [g.get_state() for g in gens]
            drafted = chain(rows_in, steps, self._chain_sampling(live, steps))
            if drafted is None:  # nothing drafted: the draws are drawn again step by step
                for g, state in zip(gens, states, strict=True):
                    g.set_state(state)
        if drafted is None:
            return None
        tokens, q = drafted
        rows = tokens.tolist()
        if q is None and any(t >= self.target_vocab_size for (_, k, _), row in zip(live, rows, strict=True)
                             for t in row[:k]):
            for req, _, _ in live:  # an id the target cannot score: drop the chain's KV, draft step by step
                self.runner.commit(req.seq_id, 0)
            return None
        out: dict[int, Proposal] = {}
        for i, ((req, k, pending), row) in enumerate(zip(live, rows, strict=True)):
            self.runner.commit(req.seq_id, len(pending) + k - 1)
            track = self._tracks[req.seq_id]
            track.cached.extend(pending + row[: k - 1])
            track.confirmed = len(track.cached) - (k - 1)
            probs = None if q is None or req.params.greedy else q[i, :k]
            out[req.seq_id] = Proposal(row[:k], probs, fed_tokens=len(pending))
        return out

    def _chain_sampling(self, live: list[tuple[ProposeRequest, int, list[int]]], steps: int) -> ChainSampling:
        """Per-row sampling inputs of a chain; a sampled row's k uniforms come from its own generator."""
        uniforms = torch.full((len(live), steps), 0.5)
        for i, (req, k, _) in enumerate(live):
            gen = self._tracks[req.seq_id].generator
            if not req.params.greedy and gen is not None:
                uniforms[i, :k] = torch.cat([torch.rand(1, generator=gen) for _ in range(k)])
        params = [req.params for req, _, _ in live]
        return ChainSampling(
            greedy=torch.tensor([p.greedy for p in params]),
            temperature=torch.tensor([p.temperature for p in params], dtype=torch.float),
            top_p=torch.tensor([p.top_p for p in params], dtype=torch.float),
            top_k=torch.tensor([p.top_k for p in params], dtype=torch.long),
            uniforms=uniforms,
            target_vocab=self.target_vocab_size,
            q_top_k=self.q_top_k,
        )

    def _reconcile(self, seq_id: int, track: _Track, token_ids: Sequence[int]) -> list[int]:
        """Truncate the draft KV to its longest prefix that the engine's tokens confirm."""
        cached = track.cached
        same = self._confirmed_prefix(track, token_ids)
        # Always feed at least one token: its logits give the first draft.
        same = min(same, len(token_ids) - 1)
        if same < len(cached):
            self.runner.truncate(seq_id, same)
            del cached[same:]
        track.confirmed = same
        return list(token_ids[same:])

    @staticmethod
    def _confirmed_prefix(track: _Track, token_ids: Sequence[int]) -> int:
        """Length of the draft KV's prefix that the engine's tokens confirm."""
        # Only the drafts fed last time can disagree; everything before them is confirmed.
        same = min(track.confirmed, len(token_ids))
        limit = min(len(track.cached), len(token_ids))
        while same < limit and track.cached[same] == token_ids[same]:
            same += 1
        return same

    def _draft_one(
        self,
        rows: list[tuple[ProposeRequest, list[int]]],
        tokens: dict[int, list[int]],
        probs: dict[int, list[torch.Tensor]],
    ) -> None:
        """One draft forward: append each row's tokens, then pick the next draft token per row."""
        out = self.runner.forward([RowInput(req.seq_id, feed, 1) for req, feed in rows])
        logits = out.logits.float()  # [rows, Vd], rows in the given order
        logits = logits[torch.tensor(out.offsets, device=logits.device)]  # one logit row per input row
        vocab_d, vocab_t = logits.shape[1], self.target_vocab_size
        if vocab_d > vocab_t:
            logits[:, vocab_t:] = float("-inf")  # ids the target cannot score are never drafted
        for req, feed in rows:
            self.runner.commit(req.seq_id, len(feed))
            self._tracks[req.seq_id].cached.extend(feed)
        greedy = [i for i, (req, _) in enumerate(rows) if req.params.greedy]
        sampled = [i for i, (req, _) in enumerate(rows) if not req.params.greedy]
        if greedy:  # one argmax and one read from the device for every greedy row (a sync per row before)
            for i, tok in zip(greedy, logits[greedy].argmax(dim=-1).tolist(), strict=True):
                tokens[rows[i][0].seq_id].append(int(tok))
        if sampled:
            params = [rows[i][0].params for i in sampled]
            q = processed_probs(
                logits[sampled],
                torch.tensor([p.temperature for p in params]),
                torch.tensor([p.top_p for p in params]),
                torch.tensor([p.top_k for p in params], dtype=torch.long),
            )
            if self.q_top_k is not None and self.q_top_k < q.shape[-1]:
                top = torch.topk(q, self.q_top_k, dim=-1)
                q = torch.zeros_like(q).scatter_(-1, top.indices, top.values)
                q = q / q.sum(dim=-1, keepdim=True)
            if vocab_d < vocab_t:
                q = torch.nn.functional.pad(q, (0, vocab_t - vocab_d))
            gens = [self._tracks[rows[i][0].seq_id].generator for i in sampled]
            u = torch.cat([torch.rand(1, generator=g) for g in gens])
            picked = sample_from(q, u)
            for n, i in enumerate(sampled):
                sid = rows[i][0].seq_id
                tokens[sid].append(int(picked[n]))
                probs[sid].append(q[n])
