"""GraphRunner: the ModelRunner whose verify forwards replay one captured step per bucket.

A forward whose rows are exactly the slots `0 … n-1` with widths 1 … max_width and a KV length
inside a bucket runs as that bucket's `StaticStep` (graph_step.py): the host copies token ids and
committed lengths into the step's buffers, the backend replays it, and the requested positions are
gathered from the full `[B, W, V]` logits, so callers get the same `ForwardOutput` as from the eager
runner. Anything else (prefill, long catch-ups, subsets of slots, shapes past the largest bucket)
runs eagerly. How a step is replayed is the backend's business: a CUDA graph on GPUs; on CPU the
step is simply called over its static buffers, the stand-in the tests compare with the eager runner.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from smartspec.engine.chain_sampling import ChainSampler, ChainSampling
from smartspec.engine.graph_step import Bucket, BucketConfig, StaticStep
from smartspec.engine.runner import ForwardOutput, ForwardStats, ModelRunner, RowInput

log = logging.getLogger(__name__)


class Replay(Protocol):
    """Runs a bucket's step: prepares it once (capture, compile), then replays it."""

    def prepare(self, step: StaticStep) -> None: ...

    def run(self, step: StaticStep) -> tuple[torch.Tensor, torch.Tensor]: ...


class EagerReplay:
    """Calls the step over its static buffers: what a replay computes, without a graph (CPU, tests)."""

    def prepare(self, step: StaticStep) -> None:
        return None

    def run(self, step: StaticStep) -> tuple[torch.Tensor, torch.Tensor]:
        return step()


class CompiledReplay:
    """`torch.compile(fullgraph=True, dynamic=False)` per bucket: fails loudly on a graph break or a host sync."""

    def __init__(self, backend: str = "aot_eager") -> None:
        self.backend = backend
        self._compiled: dict[Bucket, Any] = {}

    def prepare(self, step: StaticStep) -> None:
        self._compiled[step.bucket] = torch.compile(step.__call__, backend=self.backend, fullgraph=True,
                                                    dynamic=False)

    def run(self, step: StaticStep) -> tuple[torch.Tensor, torch.Tensor]:
        out: tuple[torch.Tensor, torch.Tensor] = self._compiled[step.bucket]()
        return out


class CudaGraphReplay:
    """One `torch.cuda.CUDAGraph` per bucket, all in one memory pool.

    Capture runs the step twice on a side stream first (allocator and library warm-up), which writes the
    KV of the rows in the buffers at their own positions: the replay that follows writes the same values,
    and pads only ever write dead cells. Outputs live in the pool and are overwritten by the next replay."""

    def __init__(self) -> None:
        self._graphs: dict[Bucket, tuple[Any, tuple[torch.Tensor, torch.Tensor]]] = {}
        self._pool: Any = None

    def prepare(self, step: StaticStep) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = step()
        self._pool = graph.pool()
        self._graphs[step.bucket] = (graph, out)

    def run(self, step: StaticStep) -> tuple[torch.Tensor, torch.Tensor]:
        graph, out = self._graphs[step.bucket]
        graph.replay()
        return out


def replay_for(device: torch.device) -> Replay:
    """CUDA graphs on CUDA; the eager stand-in elsewhere."""
    return CudaGraphReplay() if device.type == "cuda" else EagerReplay()


@dataclass
class GraphStats:
    """Forwards that replayed a bucket vs ran eagerly, and what preparing the buckets cost."""

    hits: int = 0
    prepared: int = 0
    prepare_s: float = 0.0
    pool_bytes: int = 0  # device memory the prepared buckets hold (CUDA: reserved by the graphs' pool)
    eager_why: dict[str, int] = field(default_factory=dict)

    @property
    def eager(self) -> int:
        return sum(self.eager_why.values())

    def fell_back(self, why: str) -> None:
        self.eager_why[why] = self.eager_why.get(why, 0) + 1


class GraphRunner(ModelRunner):
    """A ModelRunner whose bucketed forwards replay static steps (module docstring)."""

    mixes_prefill = False

    def __init__(self, model: Any, *, num_slots: int, max_len: int, buckets: BucketConfig | None = None,
                 replay: Replay | None = None) -> None:
        self.buckets = buckets or BucketConfig()
        # Pad cells of a row write up to max_width - 1 positions past its real tokens.
        super().__init__(model, num_slots=num_slots, max_len=max_len, kv_headroom=self.buckets.max_width)
        self.replay = replay or replay_for(self.device)
        self.graph_stats = GraphStats()
        self._steps: dict[Bucket, StaticStep] = {}
        self._samplers: dict[int, ChainSampler] = {}

    @property
    def store_len(self) -> int:
        return int(self.cache.slot_layers[0].k_store.shape[2])

    def prepare(self, bucket: Bucket) -> None:
        """Prepare (capture, compile) a bucket ahead of traffic. Its pads write slots 0 … B-1 from position
        0, so this is refused while any sequence is live."""
        if self.cache.num_active:
            raise RuntimeError(f"cannot prepare graph bucket {bucket} with {self.cache.num_active} live sequences")
        if bucket not in self._steps:
            self._prepare(StaticStep(self, bucket))

    def _prepare(self, step: StaticStep) -> StaticStep:
        t0, held = time.perf_counter(), self._reserved()
        self.cache.plan = step.plan
        try:
            self.replay.prepare(step)
        finally:
            self.cache.plan = None
        self._steps[step.bucket] = step
        took, grew = time.perf_counter() - t0, self._reserved() - held
        stats = self.graph_stats
        stats.prepared, stats.prepare_s, stats.pool_bytes = stats.prepared + 1, stats.prepare_s + took, \
            stats.pool_bytes + grew
        log.info("graph bucket %s prepared in %.2fs (+%.1f MiB; %d buckets, %.1fs, %.1f MiB in all)", step.bucket,
                 took, grew / 2**20, stats.prepared, stats.prepare_s, stats.pool_bytes / 2**20)
        return step

    def _reserved(self) -> int:
        """Device memory reserved by the allocator (what a capture's pool adds to); 0 off CUDA."""
        return int(torch.cuda.memory_reserved(self.device)) if self.device.type == "cuda" else 0

    @torch.inference_mode()
    def forward(self, rows: list[RowInput]) -> ForwardOutput:
        order, slots, widths, lens = self._layout(rows)
        bucket, why = self._bucket(slots, widths, lens)
        if bucket is None:
            self.graph_stats.fell_back(why)
            return super().forward(rows)
        n, w = len(rows), bucket.width
        all_logits, _ = self._replay(bucket, rows, order, widths, lens)
        logits, offsets = self._pick(all_logits, rows, order, widths)
        for b, r in enumerate(order):
            self._pending[rows[r].seq_id] = widths[b]
        kv_len = max(n_ + w_ for n_, w_ in zip(lens, widths, strict=True))
        return ForwardOutput(logits, offsets, ForwardStats(n, w, sum(widths), n * w, kv_len))

    @torch.inference_mode()
    def chain(self, rows: list[RowInput], steps: int,
              sampling: ChainSampling | None = None) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """Drafting without a host round trip per token: feed each row's tokens, draft after its last one, then
        `steps - 1` one-token replays with that draft fed back on the device; one sync at the end.

        Greedy (argmax) unless `sampling` says otherwise per row: then each draft is drawn on the device from
        the row's q (chain_sampling.py), and q of every draft comes back too. Returns `(tokens [len(rows), steps]`
        on the host, `q [len(rows), steps, V]` on the device or None)` in the rows' order, or None where no bucket
        fits (draft eagerly). Row r's KV then holds its tokens plus its first `steps - 1` drafts, uncommitted:
        commit what it keeps."""
        order, slots, widths, lens = self._layout(rows)
        n = len(rows)
        first, _ = self._bucket(slots, widths, lens, extra=steps - 1)
        one, _ = self._bucket(slots, [1] * n, [a + b for a, b in zip(lens, widths, strict=True)], extra=steps - 1)
        if first is None or one is None or steps < 1:
            self.graph_stats.fell_back("chain")
            return None
        dev = self.device
        slot_order = torch.tensor(order)
        sampler = None
        if sampling is not None:
            sampler = self._sampler(first.batch, steps, sampling.target_vocab)
            sampler.load(_in_slot_order(sampling, slot_order))
        width_of = torch.tensor(widths + [1] * (first.batch - n), device=dev)
        logits, argmax = self._replay(first, rows, order, widths, lens)
        cell = (torch.arange(first.batch, device=dev), width_of - 1)
        tok = argmax[cell] if sampler is None else sampler(logits[cell])
        out = [tok[:n]]
        if steps > 1:
            base = torch.tensor(lens + [0] * (one.batch - n), device=dev) + width_of[: one.batch]
            step = self._steps.get(one)
            if step is None:  # a capture runs the step: with these rows' first draft in, it writes what replay will
                step = StaticStep(self, one)
                step.lens.copy_(base)
                step.input_ids[:, 0].copy_(tok[: one.batch])
                self._prepare(step)
            step.lens.copy_(base)
            self.cache.plan = step.plan
            try:
                for _ in range(steps - 1):
                    step.input_ids[:, 0].copy_(tok[: one.batch])
                    logits, argmax = self.replay.run(step)
                    # A replay's outputs are overwritten by the next: take the draft out of them now.
                    tok = argmax[:, 0].clone() if sampler is None else sampler(logits[:, 0])
                    out.append(tok[:n])
                    step.lens.add_(1)
            finally:
                self.cache.plan = None
            self.graph_stats.hits += steps - 1
        for b, r in enumerate(order):
            self._pending[rows[r].seq_id] = widths[b] + steps - 1
        tokens = torch.stack(out, dim=1).cpu()  # the one sync
        back = torch.empty_like(tokens)
        back[slot_order] = tokens  # slot order -> the rows' order
        if sampler is None:
            return back, None
        q = torch.empty_like(sampler.q[:n, :steps])
        q[slot_order.to(dev)] = sampler.q[:n, :steps]
        return back, q

    def _sampler(self, batch: int, steps: int, target_vocab: int) -> ChainSampler:
        """The persistent sampling buffers for chains of `batch` rows (grown, never shrunk, in steps)."""
        sampler = self._samplers.get(batch)
        if sampler is None or sampler.shape[1] < steps or sampler.target_vocab != target_vocab:
            sampler = ChainSampler(batch, max(steps, self.buckets.max_width), self.vocab_size, target_vocab,
                                   self.device)
            self._samplers[batch] = sampler
        return sampler

    def _replay(self, bucket: Bucket, rows: list[RowInput], order: list[int], widths: list[int],
                lens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Fill the bucket's buffers with these rows (slot order) and replay it: (logits, argmax) of the whole grid."""
        ids = np.zeros((bucket.batch, bucket.width), dtype=np.int64)
        for b, r in enumerate(order):
            ids[b, : widths[b]] = rows[r].token_ids
        lens_np = np.zeros(bucket.batch, dtype=np.int64)
        lens_np[: len(lens)] = lens
        step = self._steps.get(bucket)
        if step is None:  # first use: prepared with these rows in the buffers (a capture runs it)
            step = StaticStep(self, bucket)
            self._fill(step, ids, lens_np)
            self._prepare(step)
        else:
            self._fill(step, ids, lens_np)
        self.cache.plan = step.plan
        try:
            out = self.replay.run(step)
        finally:
            self.cache.plan = None
        self.graph_stats.hits += 1
        return out

    def _bucket(self, slots: list[int], widths: list[int], lens: list[int],
                extra: int = 0) -> tuple[Bucket | None, str]:
        """The bucket for these rows, reading `extra` more keys per row (a draft chain's later tokens)."""
        if slots != list(range(len(slots))):
            return None, "slots"  # a subset of the live slots: pads would write into the others
        width = max(widths)
        kv_needed = max(n + w for n, w in zip(lens, widths, strict=True)) + extra
        bucket = self.buckets.bucket(len(slots), width, kv_needed, num_slots=self.cache.num_slots,
                                     store_len=self.store_len)
        if bucket is None:
            return None, "shape"
        # Pad rows write positions 0 … W-1 of slots n … B-1: only free slots, or slots admitted this step
        # and not prefilled yet (their prefill overwrites them), may be there.
        for s in range(len(slots), min(bucket.batch, self.cache.num_active)):
            if self.cache.lengths[s] or self._pending.get(self._seq_of_slot[s]):
                return None, "live pad slot"
        return bucket, ""

    @staticmethod
    def _fill(step: StaticStep, ids: np.ndarray, lens: np.ndarray) -> None:
        step.input_ids.copy_(torch.from_numpy(ids), non_blocking=True)
        step.lens.copy_(torch.from_numpy(lens), non_blocking=True)

    def _pick(self, logits: torch.Tensor, rows: list[RowInput], order: list[int],
              widths: list[int]) -> tuple[torch.Tensor, list[int]]:
        """The requested trailing positions of each row, rows back to back in slot order (as the eager runner)."""
        counts = np.array([rows[r].num_logits for r in order], dtype=np.int64)
        ends = np.array(widths, dtype=np.int64)
        row_idx = np.repeat(np.arange(len(order)), counts)
        starts = np.cumsum(counts) - counts
        col_idx = np.arange(int(counts.sum())) - np.repeat(starts, counts) + np.repeat(ends - counts, counts)
        offsets = [0] * len(rows)
        for b, r in enumerate(order):
            offsets[r] = int(starts[b])
        dev = logits.device
        picked = logits[torch.from_numpy(row_idx).to(dev), torch.from_numpy(col_idx).to(dev)]
        return picked, offsets


def _in_slot_order(s: ChainSampling, slot_order: torch.Tensor) -> ChainSampling:
    """The same per-row inputs with rows permuted into the chain's slot order."""
    return ChainSampling(s.greedy[slot_order], s.temperature[slot_order], s.top_p[slot_order],
                         s.top_k[slot_order], s.uniforms[slot_order], s.target_vocab, s.q_top_k)
