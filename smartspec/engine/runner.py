"""Model runner: many sequences, ragged new tokens per sequence, ONE forward per call.

Each call appends, for every row, any number of new tokens after that sequence's committed
prefix — a whole prompt (prefill), one token (decode at k = 0), or `[last token + k drafts]`
(verify) — all in a single forward of the transformers model. Rows are padded to the widest row
(W): the forward costs `B × W` token slots, which is what the cost model must be fed as
"batched tokens" (see `ForwardStats.padded_tokens`). Each row gets its own `position_ids` and a 4D
additive mask row that lets query i see keys `0 … committed_len + i` of its own slot only.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from smartspec.engine.kv_cache import SlotKVCache, WritePlan
from smartspec.errors import CapacityExceeded, UnknownSequence, UnsupportedModel


@dataclass(frozen=True)
class RowInput:
    """New tokens for one sequence, and how many trailing positions need logits (≥ 1)."""

    seq_id: int
    token_ids: list[int]
    num_logits: int = 1


@dataclass(frozen=True)
class ForwardStats:
    """What one forward cost in token slots: real tokens vs the padded B × W grid."""

    batch_size: int
    width: int
    real_tokens: int
    padded_tokens: int
    kv_len: int


@dataclass
class ForwardOutput:
    """Logits of the requested positions, rows back to back in the order the rows were given."""

    logits: torch.Tensor  # [sum(num_logits), vocab] in the model's dtype
    offsets: list[int]  # row r's logits are logits[offsets[r] : offsets[r] + rows[r].num_logits]
    stats: ForwardStats


def check_supported(model: Any, max_len: int) -> None:
    """Refuse models whose maths the runner would get wrong, instead of returning wrong tokens."""
    config = model.config
    window = getattr(config, "sliding_window", None)
    # A window at least as long as a slot never cuts anything off; a shorter one would.
    if window is not None and int(window) < max_len:
        raise UnsupportedModel(
            f"{config.model_type}: sliding-window attention ({window} tokens) is not supported by the slot cache; "
            f"use a max length <= {window}"
        )
    for attr in ("final_logit_softcapping", "logit_scale"):
        if getattr(config, attr, None) not in (None, 1.0):
            raise UnsupportedModel(f"{config.model_type}: `{attr}` post-processing of logits is not supported")
    if model.get_output_embeddings() is None:
        raise UnsupportedModel(f"{config.model_type}: model has no output embedding (lm_head)")


class ModelRunner:
    """Holds one model and a slot KV cache for up to `num_slots` concurrent sequences."""

    # Whether prompts may share a forward with verify rows (the engine then pads them together); a runner
    # with fixed-shape verify steps says no, so verifies keep their shape.
    mixes_prefill = True

    def __init__(self, model: Any, *, num_slots: int, max_len: int, kv_headroom: int = 0) -> None:
        limit = int(getattr(model.config, "max_position_embeddings", max_len) or max_len)
        self.max_len = min(max_len, limit)
        check_supported(model, self.max_len)
        self.model = model.eval()
        self.base = model.base_model
        self.lm_head = model.get_output_embeddings()
        self.head: Any = self.lm_head  # what turns hidden states into logits (a draft may read a subset: head.py)
        self.device = next(model.parameters()).device
        # The activations' dtype: the input embedding's (a Linear may hold int8 weights: quant.py).
        self.dtype = model.get_input_embeddings().weight.dtype
        self.vocab_size = int(self.lm_head.weight.shape[0])
        self.cache = SlotKVCache(model.config, num_slots, self.max_len, self.dtype, self.device, headroom=kv_headroom)
        self._slot_of: dict[int, int] = {}
        self._seq_of_slot: list[int] = []
        self._pending: dict[int, int] = {}  # seq_id -> tokens appended by the last forward, uncommitted
        params = inspect.signature(self.base.forward).parameters
        # transformers 5.x renames `past_key_values` to `cache`; use whichever this version takes.
        self.cache_kw = "cache" if "cache" in params else "past_key_values"

    # -- sequence bookkeeping -------------------------------------------------------------
    @property
    def num_sequences(self) -> int:
        return len(self._slot_of)

    @property
    def free_slots(self) -> int:
        return self.cache.num_slots - self.cache.num_active

    def has(self, seq_id: int) -> bool:
        return seq_id in self._slot_of

    def add(self, seq_id: int) -> None:
        if seq_id in self._slot_of:
            raise ValueError(f"sequence {seq_id} already in the runner")
        slot = self.cache.alloc()
        self._slot_of[seq_id] = slot
        self._seq_of_slot.append(seq_id)

    def remove(self, seq_id: int) -> None:
        slot = self._slot(seq_id)
        last_seq = self._seq_of_slot[-1]
        # The sequence that moves may have appended tokens not committed yet; move those too.
        extent = self.cache.lengths[-1] + self._pending.get(last_seq, 0)
        moved_from = self.cache.free(slot, extent)
        del self._slot_of[seq_id]
        self._pending.pop(seq_id, None)
        if moved_from is not None:
            moved_seq = self._seq_of_slot[moved_from]
            self._slot_of[moved_seq] = slot
            self._seq_of_slot[slot] = moved_seq
        self._seq_of_slot.pop()

    def committed_len(self, seq_id: int) -> int:
        return self.cache.lengths[self._slot(seq_id)]

    def commit(self, seq_id: int, n: int) -> None:
        """Keep the first `n` tokens the last forward appended for `seq_id`; drop the rest."""
        appended = self._pending.pop(seq_id, 0)
        if not 0 <= n <= appended:
            raise ValueError(f"sequence {seq_id}: cannot commit {n} of {appended} appended tokens")
        self.cache.lengths[self._slot(seq_id)] += n

    def truncate(self, seq_id: int, length: int) -> None:
        """Roll a sequence back to its first `length` committed tokens (O(1): later KV is dead)."""
        slot = self._slot(seq_id)
        if not 0 <= length <= self.cache.lengths[slot]:
            raise ValueError(f"sequence {seq_id}: cannot truncate {self.cache.lengths[slot]} tokens to {length}")
        self.cache.lengths[slot] = length
        self._pending.pop(seq_id, None)

    def _slot(self, seq_id: int) -> int:
        try:
            return self._slot_of[seq_id]
        except KeyError:
            raise UnknownSequence(f"sequence {seq_id} is not in the runner") from None

    # -- the forward ------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, rows: list[RowInput]) -> ForwardOutput:
        """One batched forward over `rows` (each sequence at most once)."""
        order, slots, widths, lens = self._layout(rows)
        batch, width = len(rows), max(widths)
        dev = self.device
        # One tensor from padded lists: a tensor per row cost ~7 µs each, every forward (64 rows: ~0.5 ms).
        input_ids = torch.tensor([[*rows[r].token_ids, *[0] * (width - widths[b])] for b, r in enumerate(order)],
                                 dtype=torch.long)
        lens_t = torch.tensor(lens, dtype=torch.long)
        widths_t = torch.tensor(widths, dtype=torch.long)
        cols = torch.arange(width)
        position_ids = lens_t[:, None] + cols[None, :]  # [B, W]; pads continue the row's positions
        kv_len = int((lens_t + widths_t).max())
        plan = self._write_plan(slots, position_ids, cols[None, :] < widths_t[:, None], kv_len)
        # Query i of row b sees keys j <= committed_len_b + i: its committed prefix plus its own
        # new tokens causally. Stale positions beyond that are never visible.
        allowed = torch.arange(kv_len)[None, None, :] <= position_ids[:, :, None]  # [B, W, kv_len]
        mask = torch.zeros((batch, 1, width, kv_len), dtype=self.dtype)
        mask.masked_fill_(~allowed[:, None], torch.finfo(self.dtype).min)
        self.cache.plan = plan
        try:
            hidden = self.base(
                input_ids=input_ids.to(dev),
                attention_mask=mask.to(dev),
                position_ids=position_ids.to(dev),
                use_cache=True,
                **{self.cache_kw: self.cache},
            ).last_hidden_state  # [B, W, hidden]
        finally:
            self.cache.plan = None
        logits, offsets = self._head(hidden, rows, order, widths)
        for b, r in enumerate(order):
            self._pending[rows[r].seq_id] = widths[b]
        stats = ForwardStats(batch, width, sum(widths), batch * width, kv_len)
        return ForwardOutput(logits=logits, offsets=offsets, stats=stats)

    def _layout(self, rows: list[RowInput]) -> tuple[list[int], list[int], list[int], list[int]]:
        """Validate rows and order them by slot: (order, slots, widths, committed lengths)."""
        if not rows:
            raise ValueError("forward needs at least one row")
        order = sorted(range(len(rows)), key=lambda r: self._slot(rows[r].seq_id))
        slots = [self._slot(rows[r].seq_id) for r in order]
        if len(set(slots)) != len(slots):
            raise ValueError("a sequence appears twice in one forward")
        widths = [len(rows[r].token_ids) for r in order]
        lens = [self.cache.lengths[s] for s in slots]
        for r, w, n in zip(order, widths, lens, strict=True):
            row = rows[r]
            if w < 1 or not 1 <= row.num_logits <= w:
                raise ValueError(f"sequence {row.seq_id}: {w} tokens, {row.num_logits} logits requested")
            if n + w > self.max_len:
                raise CapacityExceeded(f"sequence {row.seq_id}: {n + w} tokens exceed the slot length {self.max_len}")
        return order, slots, widths, lens

    def _write_plan(self, slots: list[int], position_ids: torch.Tensor, valid: torch.Tensor, kv_len: int) -> WritePlan:
        dev = self.device
        src_row, src_col = valid.nonzero(as_tuple=True)  # only real tokens are written, never pads
        slots_t = torch.tensor(slots, dtype=torch.long)
        contiguous = slots == list(range(slots[0], slots[0] + len(slots)))
        return WritePlan(
            slots=slots_t.to(dev),
            slot_range=(slots[0], slots[0] + len(slots)) if contiguous else None,
            write_slot=slots_t[src_row].to(dev),
            write_pos=position_ids[src_row, src_col].to(dev),
            src_row=src_row.to(dev),
            src_col=src_col.to(dev),
            kv_len=kv_len,
        )

    def _head(
        self, hidden: torch.Tensor, rows: list[RowInput], order: list[int], widths: list[int]
    ) -> tuple[torch.Tensor, list[int]]:
        """LM head over only the requested trailing positions (a prefill needs just its last)."""
        pick_rows: list[int] = []
        pick_cols: list[int] = []
        offsets = [0] * len(rows)
        total = 0
        for b, r in enumerate(order):
            n = rows[r].num_logits
            offsets[r] = total  # `logits` is laid out in slot order; offsets[r] points input row r at its block
            pick_rows.extend([b] * n)
            pick_cols.extend(range(widths[b] - n, widths[b]))
            total += n
        dev = self.device
        picked = hidden[torch.tensor(pick_rows, device=dev), torch.tensor(pick_cols, device=dev)]
        return self.head(picked), offsets  # [N, vocab]
