"""Slot KV cache: one preallocated KV row per sequence, per-row lengths, O(1) rollback.

A transformers `Cache` whose layers write each forward's new keys/values straight into the
owning sequence's slot at positions `committed_len … committed_len + w - 1`, then hand the
attention the slots' prefixes `[: kv_len]`. Nothing is committed by the forward itself: the
runner's `commit(seq_id, n)` afterwards keeps only the first n new positions (the accepted
prefix). Positions past `committed_len` are dead — the next forward overwrites them and the
runner's 4D mask never lets a query see them — so rejecting drafts costs nothing.

Slots are kept dense (`0 … num_active-1`): freeing a slot moves the last active one into the hole,
so a forward over all running sequences reads the cache as a zero-copy view.

A fixed-shape step (graph_step.py) writes every cell of its padded `[B, W]` grid instead of only the
real tokens, through a `StaticPlan`: a pad cell lands on its own row's dead position `len + w`, which
is why each slot may carry `headroom` positions past `max_len`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from smartspec.errors import CapacityExceeded


@dataclass
class WritePlan:
    """Where one forward's new keys/values go and which slot prefixes attention reads."""

    slots: torch.Tensor  # [B] slot of each batch row
    slot_range: tuple[int, int] | None  # (start, stop) when `slots` is an ascending contiguous run
    write_slot: torch.Tensor  # [N] slot of each valid new token
    write_pos: torch.Tensor  # [N] absolute position of each valid new token
    src_row: torch.Tensor  # [N] batch row of each valid new token
    src_col: torch.Tensor  # [N] column (within the padded width) of each valid new token
    kv_len: int  # keys read per row: max over rows of committed_len + width


@dataclass
class StaticPlan:
    """A fixed-shape step's writes: slot b takes grid row b, cell (b, w) goes to position positions[b, w].

    `positions` is a buffer the step fills in place, so a captured graph reads the same storage at replay.
    """

    rows: torch.Tensor  # [B, W] long: b in every column
    positions: torch.Tensor  # [B, W] long: committed_len_b + w, filled by the step
    batch: int  # slots 0 … batch-1 are read and written
    kv_len: int  # keys read per row (the bucket's, ≥ every row's committed_len + W)


class SlotLayer(CacheLayerMixin):
    """One decoder layer's slice of the slot cache."""

    is_compileable = False
    is_croppable = False

    def __init__(self, owner: SlotKVCache, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.owner = owner
        self.k_store = keys  # [num_slots, num_kv_heads, max_len, head_dim]
        self.v_store = values
        # The Cache API's names for the same storage.
        self.keys, self.values = keys, values
        self.is_initialized = True

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        return None

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # key_states: [B, H_kv, W, D] for the padded batch; only valid tokens are written.
        plan = self.owner.plan
        if plan is None:
            raise RuntimeError("SlotKVCache used outside ModelRunner.forward (no write plan set)")
        k_store, v_store = self.k_store, self.v_store
        if isinstance(plan, StaticPlan):  # every grid cell, pads included, onto unique positions
            k_store[plan.rows, :, plan.positions] = key_states.permute(0, 2, 1, 3)
            v_store[plan.rows, :, plan.positions] = value_states.permute(0, 2, 1, 3)
            return k_store[: plan.batch, :, : plan.kv_len], v_store[: plan.batch, :, : plan.kv_len]
        k_store[plan.write_slot, :, plan.write_pos] = key_states[plan.src_row, :, plan.src_col]
        v_store[plan.write_slot, :, plan.write_pos] = value_states[plan.src_row, :, plan.src_col]
        if plan.slot_range is not None:
            start, stop = plan.slot_range
            return k_store[start:stop, :, : plan.kv_len], v_store[start:stop, :, : plan.kv_len]
        return k_store[plan.slots, :, : plan.kv_len], v_store[plan.slots, :, : plan.kv_len]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        plan = self.owner.plan
        return (plan.kv_len if plan is not None else query_length), 0

    def get_seq_length(self) -> int:
        return max(self.owner.lengths, default=0)

    def get_max_length(self) -> int:
        return int(self.k_store.shape[2])


class SlotKVCache(Cache):
    """KV storage for up to `num_slots` sequences of up to `max_len` tokens each."""

    def __init__(self, config: Any, num_slots: int, max_len: int, dtype: torch.dtype, device: torch.device,
                 headroom: int = 0) -> None:
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        num_heads = int(text_config.num_attention_heads)
        num_kv_heads = int(getattr(text_config, "num_key_value_heads", None) or num_heads)
        head_dim = int(getattr(text_config, "head_dim", None) or text_config.hidden_size // num_heads)
        # `headroom` dead positions past max_len: where a fixed-shape step's pad cells write (module docstring).
        shape = (num_slots, num_kv_heads, max_len + headroom, head_dim)
        # Zeros, not empty: masked positions are multiplied by 0 in attention, and 0 * NaN garbage is NaN.
        self.slot_layers = [
            SlotLayer(self, torch.zeros(shape, dtype=dtype, device=device),
                      torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(int(text_config.num_hidden_layers))
        ]
        super().__init__(layers=list(self.slot_layers))
        self.num_slots = num_slots
        self.max_len = max_len
        self.lengths: list[int] = []  # committed length of each active slot; len() == active slots
        self.plan: WritePlan | StaticPlan | None = None

    @property
    def num_active(self) -> int:
        return len(self.lengths)

    def bytes_per_token(self) -> int:
        store = self.slot_layers[0].k_store
        per_layer = store[0, :, 0].numel() * store.element_size() * 2
        return int(per_layer * len(self.slot_layers))

    def alloc(self) -> int:
        """Take the next free slot (always `num_active`, as slots are dense)."""
        if self.num_active >= self.num_slots:
            raise CapacityExceeded(f"all {self.num_slots} KV slots are in use")
        self.lengths.append(0)
        return self.num_active - 1

    def free(self, slot: int, last_extent: int | None = None) -> int | None:
        """Release `slot`. If another slot moved into it to keep slots dense, return that slot's old id.

        `last_extent` is how many positions of the last slot hold live data (its committed length
        plus any appended-but-uncommitted tokens); defaults to the committed length.
        """
        last = self.num_active - 1
        if slot != last:
            n = self.lengths[last] if last_extent is None else last_extent
            for layer in self.slot_layers:
                layer.k_store[slot, :, :n] = layer.k_store[last, :, :n]
                layer.v_store[slot, :, :n] = layer.v_store[last, :, :n]
            self.lengths[slot] = self.lengths[last]
        self.lengths.pop()
        return last if slot != last else None
