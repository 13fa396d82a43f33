"""The fixed-shape verify step: one (batch, width, KV length) bucket's forward as a function of static buffers.

A CUDA graph replays kernels over fixed addresses, so everything a step varies in must live in
buffers the host overwrites before each replay: the token ids `[B, W]` and the committed lengths
`[B]`. Everything derived from them (positions, KV write positions, the additive mask) is computed
inside the step, and the slot KV cache is written in place through a `StaticPlan`. Row b of the
grid is slot b (slots are dense), rows past the real batch are pads, and cells past a row's own
width are pads too: they write dead positions of their row, so nothing they do is ever read.
The same function runs eagerly (the CPU stand-in for replay), under `torch.compile(fullgraph=True)`
and inside `torch.cuda.graph` capture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from smartspec.engine.kv_cache import StaticPlan

if TYPE_CHECKING:
    from smartspec.engine.runner import ModelRunner


@dataclass(frozen=True, order=True)
class Bucket:
    """One captured shape: padded batch, exact verify width, KV positions read per row."""

    batch: int
    width: int
    kv_len: int


@dataclass(frozen=True)
class BucketConfig:
    """Which shapes get a graph. Widths are exact (1 … max_width); batch and KV round up to a size."""

    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 24, 32, 48, 64)
    max_width: int = 9  # K + 1 at the default K = 8
    kv_sizes: tuple[int, ...] = (256, 512, 1024, 2048, 4096)
    # Past this many grid cells a verify is compute-bound anyway, and each graph's memory grows with it.
    max_cells: int = 576

    def __post_init__(self) -> None:
        ok = (self.batch_sizes and self.kv_sizes and min(self.batch_sizes) >= 1 and min(self.kv_sizes) >= 1
              and self.max_width >= 1 and self.max_cells >= 1)
        if not ok:
            raise ValueError(f"graph buckets need positive sizes, got {self}")

    def bucket(self, batch: int, width: int, kv_needed: int, *, num_slots: int, store_len: int) -> Bucket | None:
        """The smallest bucket holding `batch` rows of `width` that read `kv_needed` keys; None: run eagerly.

        The padded batch must fit the cache's slots (pad rows use free slots) and the KV read its stores."""
        if batch < 1 or not 1 <= width <= self.max_width:
            return None
        b = next((s for s in sorted(self.batch_sizes) if s >= batch), None)
        if b is None or b > num_slots or b * width > self.max_cells:
            return None
        kv = next((s for s in sorted(self.kv_sizes) if s >= kv_needed), None)
        if kv is not None:
            kv = min(kv, store_len)  # a size past the stores is cut to them: no slot holds more
        if kv is None or kv < kv_needed:
            return None
        return Bucket(b, width, kv)


class StaticStep:
    """One bucket's verify forward over static buffers: fill `input_ids` and `lens`, call, read the outputs.

    Returns `(logits [B, W, V], argmax [B, W])` for every grid cell. The caller puts `plan` in the cache
    (`cache.plan = step.plan`) around the call, and must not leave live uncommitted KV in slots past the
    real batch or at positions past a row's committed length: pads write there.
    """

    def __init__(self, runner: ModelRunner, bucket: Bucket) -> None:
        dev = runner.device
        b, w, kv = bucket.batch, bucket.width, bucket.kv_len
        self.bucket = bucket
        self.input_ids = torch.zeros((b, w), dtype=torch.long, device=dev)
        self.lens = torch.zeros(b, dtype=torch.long, device=dev)
        self.positions = torch.zeros((b, w), dtype=torch.long, device=dev)
        rows = torch.arange(b, device=dev)[:, None].expand(b, w).contiguous()
        self.plan = StaticPlan(rows, self.positions, b, kv)
        self._cols = torch.arange(w, device=dev)
        self._keys = torch.arange(kv, device=dev)
        self._open = torch.zeros((), dtype=runner.dtype, device=dev)
        self._shut = torch.full((), torch.finfo(runner.dtype).min, dtype=runner.dtype, device=dev)
        self._base, self._head = runner.base, runner.head
        self._cache, self._cache_kw = runner.cache, runner.cache_kw

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        self.positions.copy_(self.lens[:, None] + self._cols[None, :])
        # Query (b, w) sees keys 0 … lens_b + w of its own slot, as in ModelRunner.forward.
        allowed = self._keys[None, None, None, :] <= self.positions[:, None, :, None]  # [B, 1, W, KV]
        mask = torch.where(allowed, self._open, self._shut)
        hidden = self._base(input_ids=self.input_ids, attention_mask=mask, position_ids=self.positions,
                            use_cache=True, **{self._cache_kw: self._cache}).last_hidden_state
        logits = self._head(hidden)
        return logits, logits.argmax(dim=-1)
