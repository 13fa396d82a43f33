"""GraphRunner: bucketed static steps give the eager runner's logits and greedy streams; buckets and refusals."""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch

from smartspec.engine.engine import SpecEngine
from smartspec.engine.graph_runner import CompiledReplay, EagerReplay, GraphRunner
from smartspec.engine.graph_step import Bucket, BucketConfig
from smartspec.engine.proposers.draft_model import DraftModelProposer
from smartspec.engine.runner import ModelRunner, RowInput
from smartspec.engine.sampling import SamplingParams

K = 4
BUCKETS = BucketConfig(batch_sizes=(1, 2, 4, 8), max_width=K + 1, kv_sizes=(32, 64, 128, 256))
# fp32 logits of the tiny models reach ±10; a bucket pads the batch and masks extra KV columns, which changes
# the order of fp32 sums (measured: up to 1.2e-5, ~1e-6 of the largest logit; 1.9e-6 with unpadded shapes).
EXACT: dict[str, Any] = {"atol": 2e-5, "rtol": 0.0}


def test_bucket_rounds_batch_and_kv_up_and_keeps_width_exact() -> None:
    cfg = BucketConfig(batch_sizes=(1, 2, 4, 8), max_width=5, kv_sizes=(32, 64), max_cells=24)
    assert cfg.bucket(3, 2, 40, num_slots=8, store_len=100) == Bucket(4, 2, 64)
    assert cfg.bucket(1, 5, 1, num_slots=8, store_len=100) == Bucket(1, 5, 32)
    assert cfg.bucket(2, 1, 60, num_slots=8, store_len=50) is None  # past the stores
    assert cfg.bucket(2, 1, 45, num_slots=8, store_len=50) == Bucket(2, 1, 50)  # the size cut to the stores
    assert cfg.bucket(9, 1, 10, num_slots=16, store_len=100) is None  # past the largest batch
    assert cfg.bucket(5, 1, 10, num_slots=6, store_len=100) is None  # pad rows need free slots
    assert cfg.bucket(2, 6, 10, num_slots=8, store_len=100) is None  # wider than K + 1
    assert cfg.bucket(8, 4, 10, num_slots=8, store_len=100) is None  # 32 cells > 24
    assert cfg.bucket(2, 1, 65, num_slots=8, store_len=100) is None  # past the largest KV size
    with pytest.raises(ValueError):
        BucketConfig(batch_sizes=())


class _Pair:
    """The eager runner and a graph runner over the same weights, driven through the same calls."""

    def __init__(self, model: Any, replay: Any = None, num_slots: int = 8, max_len: int = 160) -> None:
        self.eager = ModelRunner(model, num_slots=num_slots, max_len=max_len)
        self.graph = GraphRunner(model, num_slots=num_slots, max_len=max_len, buckets=BUCKETS,
                                 replay=replay or EagerReplay())

    def call(self, name: str, *args: Any) -> Any:
        a = getattr(self.eager, name)(*args)
        getattr(self.graph, name)(*args)
        return a

    def forward(self, rows: list[RowInput]) -> None:
        a, b = self.eager.forward(rows), self.graph.forward(rows)
        assert b.offsets == a.offsets and b.stats == a.stats
        torch.testing.assert_close(b.logits, a.logits, **EXACT)

    @torch.inference_mode()
    def poison(self) -> None:
        """Garbage in every static buffer and in every dead KV cell: a step must not read either."""
        for step in self.graph._steps.values():
            step.input_ids.fill_(3)
            step.lens.fill_(77)
            step.positions.fill_(5)
        cache = self.graph.cache
        for layer in cache.slot_layers:
            for s in range(cache.num_slots):
                start = cache.lengths[s] if s < cache.num_active else 0
                layer.k_store[s, :, start:] = 1e3
                layer.v_store[s, :, start:] = -1e3


def _scenario(pair: _Pair, seed: int, steps: int) -> None:
    rng = random.Random(seed)
    vocab = pair.eager.vocab_size
    live: list[int] = []
    next_id = 0
    for _ in range(steps):
        if len(live) < 7 and (not live or rng.random() < 0.3):  # admit 1-2 prompts (eager prefill)
            for _ in range(rng.randint(1, 2)):
                pair.call("add", next_id)
                prompt = [rng.randrange(vocab) for _ in range(rng.randint(1, 12))]
                pair.forward([RowInput(next_id, prompt, 1)])
                pair.call("commit", next_id, len(prompt))
                live.append(next_id)
                next_id += 1
        # Every live sequence, ragged k in 0 … K (width k + 1), rows in a shuffled order.
        for sid in [s for s in live if pair.eager.committed_len(s) > pair.eager.max_len - K - 1]:
            pair.call("remove", sid)  # full: its slot goes to the next prompt
            live.remove(sid)
        if not live:
            continue
        rows = [RowInput(s, [rng.randrange(vocab) for _ in range(w)], w)
                for s, w in ((s, rng.randint(1, K + 1)) for s in live)]
        rng.shuffle(rows)
        pair.forward(rows)
        for row in rows:  # accept a random prefix, roll back the rest
            pair.call("commit", row.seq_id, rng.randint(1, len(row.token_ids)))
        if rng.random() < 0.2:
            sid = rng.choice(live)
            pair.call("truncate", sid, rng.randint(1, pair.eager.committed_len(sid)))
        if len(live) > 1 and rng.random() < 0.3:
            sid = rng.choice(live)
            pair.call("remove", sid)
            live.remove(sid)
        pair.poison()


@pytest.mark.parametrize("seed", [0, 1])
def test_static_steps_match_the_eager_runner(tiny: Any, seed: int) -> None:
    pair = _Pair(tiny.target)
    _scenario(pair, seed, steps=30)
    stats = pair.graph.graph_stats
    # The prompts ran eagerly; every all-slots verify within the buckets replayed a step.
    assert stats.hits >= 25 and stats.prepared >= 3
    assert set(stats.eager_why) <= {"shape", "slots"}


def test_subsets_and_live_pad_slots_run_eagerly(tiny: Any) -> None:
    pair = _Pair(tiny.target)
    for sid in range(3):
        pair.call("add", sid)
        pair.forward([RowInput(sid, [1 + sid, 2, 3, 4, 5, 6], 1)])  # 6 > K + 1 tokens: eager
        pair.call("commit", sid, 6)
    pair.forward([RowInput(1, [4, 5], 2)])  # slot 1 alone: pads would write slots 0 and 2
    pair.call("commit", 1, 1)
    pair.forward([RowInput(s, [6 + s], 1) for s in range(3)])  # bucket 4: its pad row is the free slot 3
    for s in range(3):
        pair.call("commit", s, 1)
    pair.forward([RowInput(0, [8], 1), RowInput(1, [9, 10], 2)])  # slots 0-1 exactly: bucket 2, no pads
    for s in range(2):
        pair.call("commit", s, 1)
    pair.call("add", 3)
    pair.forward([RowInput(3, [1, 2, 3, 4, 5, 6], 1)])
    pair.call("commit", 3, 6)
    pair.forward([RowInput(s, [11], 1) for s in range(3)])  # bucket 4's pad row would be slot 3: live
    assert pair.graph.graph_stats.eager_why == {"shape": 1, "slots": 4, "live pad slot": 1}  # prompts: slots 1-3 alone
    assert pair.graph.graph_stats.hits == 2


def test_prepare_is_refused_with_live_sequences(tiny: Any) -> None:
    runner = GraphRunner(tiny.target, num_slots=4, max_len=64, buckets=BUCKETS, replay=EagerReplay())
    runner.prepare(Bucket(2, 3, 32))  # nothing live: pads may write anywhere
    runner.add(0)
    with pytest.raises(RuntimeError, match="live sequences"):
        runner.prepare(Bucket(4, 1, 32))


def _greedy_engine(runner: ModelRunner, draft: Any) -> SpecEngine:
    proposer = DraftModelProposer(ModelRunner(draft, num_slots=8, max_len=96 + K), runner.vocab_size)
    return SpecEngine(runner, proposer, max_k=K)


def test_greedy_streams_are_identical_with_ragged_k(tiny: Any) -> None:
    engines = [_greedy_engine(ModelRunner(tiny.target, num_slots=8, max_len=96), tiny.draft),
               _greedy_engine(GraphRunner(tiny.target, num_slots=8, max_len=96, buckets=BUCKETS,
                                          replay=EagerReplay()), tiny.draft)]
    rng = random.Random(3)
    prompts = [[rng.randrange(200) for _ in range(rng.randint(2, 10))] for _ in range(6)]
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    streams: list[dict[int, list[int]]] = [{}, {}]
    for i, p in enumerate(prompts):
        for e in engines:
            e.add_request(i, p, params)
    step = 0
    while engines[0].has_unfinished:
        ks = {sid: (sid + step) % (K + 1) for sid in range(len(prompts))}
        for e, out in zip(engines, streams, strict=True):
            for sid, toks in e.step(ks).emitted.items():
                out.setdefault(sid, []).extend(toks)
        step += 1
    assert not engines[1].has_unfinished
    assert streams[1] == streams[0] and all(len(s) == 24 for s in streams[0].values())
    graph_runner = engines[1].runner
    assert isinstance(graph_runner, GraphRunner) and graph_runner.graph_stats.hits > 0


def test_steps_compile_as_one_graph_and_warm_buckets_never_recompile(tiny_llama: Any) -> None:
    import torch._dynamo

    torch._dynamo.reset()
    pair = _Pair(tiny_llama.target, replay=CompiledReplay("aot_eager"), num_slots=4)
    for sid in range(3):
        pair.call("add", sid)
        pair.forward([RowInput(sid, [1 + sid, 2, 3, 4, 5, 6], 1)])  # wider than K + 1: eager
        pair.call("commit", sid, 6)

    def round_(widths: list[int]) -> None:
        pair.forward([RowInput(s, [7 + s] * w, w) for s, w in enumerate(widths)])
        for s in range(len(widths)):
            pair.call("commit", s, 1)

    round_([1, 1, 1])  # bucket (4, 1, 32)
    round_([2, 1, 2])  # bucket (4, 2, 32)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(3):
            round_([1, 1, 1])
            round_([1, 2, 2])
    assert pair.graph.graph_stats.hits == 8 and pair.graph.graph_stats.prepared == 2


@pytest.mark.parametrize("target_vocab", [300, 120])  # 120: chains that draft ids the target lacks are redone
def test_greedy_draft_chain_gives_the_step_by_step_drafts(tiny: Any, target_vocab: int) -> None:
    from smartspec.engine.proposers.base import ProposeRequest

    eager = DraftModelProposer(ModelRunner(tiny.draft, num_slots=4, max_len=128), target_vocab)
    graph_runner = GraphRunner(tiny.draft, num_slots=4, max_len=128, buckets=BUCKETS, replay=EagerReplay())
    graph = DraftModelProposer(graph_runner, target_vocab)
    rng = random.Random(5)
    greedy = SamplingParams(max_tokens=64, temperature=0.0)
    contexts = {sid: [rng.randrange(min(target_vocab, 250)) for _ in range(rng.randint(3, 9))] for sid in range(3)}
    for _ in range(12):
        reqs = [ProposeRequest(sid, list(toks), rng.randint(1, K), greedy) for sid, toks in contexts.items()]
        a, b = eager.propose(reqs), graph.propose(reqs)
        assert {s: p.draft_token_ids for s, p in b.items()} == {s: p.draft_token_ids for s, p in a.items()}
        assert {s: p.fed_tokens for s, p in b.items()} == {s: p.fed_tokens for s, p in a.items()}
        for sid, prop in a.items():  # the target keeps a random prefix of the drafts, then its own token
            keep = rng.randint(0, prop.k)
            contexts[sid] += [*prop.draft_token_ids[:keep], rng.randrange(min(target_vocab, 250))]
    # The first round prefilled the prompts (more than 4 tokens each way); the others chained.
    assert graph_runner.graph_stats.hits >= 11


@pytest.mark.parametrize(("target_vocab", "q_top_k"), [(300, None), (120, None), (400, 20)])
def test_sampled_draft_chain_gives_the_step_by_step_tokens_and_q(tiny: Any, target_vocab: int,
                                                                 q_top_k: int | None) -> None:
    """Seeded sampling, greedy and sampled rows in one chain, top-k / top-p rows, a target vocabulary smaller
    (ids it lacks are never drafted) and larger (q is padded) than the draft's, and q truncated for the wire."""
    from smartspec.engine.proposers.base import ProposeRequest

    eager = DraftModelProposer(ModelRunner(tiny.draft, num_slots=4, max_len=128), target_vocab, q_top_k)
    graph_runner = GraphRunner(tiny.draft, num_slots=4, max_len=128, buckets=BUCKETS, replay=EagerReplay())
    graph = DraftModelProposer(graph_runner, target_vocab, q_top_k)
    rng = random.Random(11)
    params = [
        SamplingParams(max_tokens=64, temperature=0.0),
        SamplingParams(max_tokens=64, temperature=0.9, seed=3),
        SamplingParams(max_tokens=64, temperature=1.3, top_p=0.8, top_k=40, seed=4),
    ]
    contexts = {sid: [rng.randrange(min(target_vocab, 250)) for _ in range(rng.randint(3, 9))] for sid in range(3)}
    for _ in range(10):
        reqs = [ProposeRequest(sid, list(toks), rng.randint(1, K), params[sid]) for sid, toks in contexts.items()]
        a, b = eager.propose(reqs), graph.propose(reqs)
        assert {s: p.draft_token_ids for s, p in b.items()} == {s: p.draft_token_ids for s, p in a.items()}
        for sid, prop in a.items():
            assert all(t < target_vocab for t in prop.draft_token_ids)
            if prop.draft_probs is None:
                assert b[sid].draft_probs is None
            else:
                got = b[sid].draft_probs
                assert got is not None and got.shape == prop.draft_probs.shape
                torch.testing.assert_close(got, prop.draft_probs, atol=1e-5, rtol=0.0)
            keep = rng.randint(0, prop.k)
            contexts[sid] += [*prop.draft_token_ids[:keep], rng.randrange(min(target_vocab, 250))]
    assert graph_runner.graph_stats.hits >= 9  # the first round prefilled; every later one chained


def test_chain_sampling_compiles_as_one_graph_and_never_recompiles() -> None:
    import torch._dynamo

    from smartspec.engine.chain_sampling import ChainSampler, ChainSampling

    torch._dynamo.reset()
    sampler = ChainSampler(4, 5, 50, 40, torch.device("cpu"))
    step = torch.compile(sampler.__call__, backend="aot_eager", fullgraph=True, dynamic=False)
    gen = torch.Generator().manual_seed(0)
    for round_ in range(3):
        s = ChainSampling(greedy=torch.tensor([True, False, False]), temperature=torch.tensor([1.0, 0.7, 1.2]),
                          top_p=torch.tensor([1.0, 0.9, 1.0]), top_k=torch.tensor([0, 0, 5]),
                          uniforms=torch.rand(3, 4, generator=gen), target_vocab=40)
        sampler.load(s)
        logits = [torch.randn(4, 50, generator=gen) for _ in range(4)]
        with torch._dynamo.config.patch(error_on_recompile=round_ > 0):
            tokens = torch.stack([step(x) for x in logits], dim=1)
        assert int(sampler.j) == 4 and bool((tokens < 40).all())
        assert torch.equal(tokens[0], torch.stack([x[0, :40].argmax() for x in logits]))  # the greedy row
        assert torch.allclose(sampler.q[1:3, :4].sum(-1), torch.ones(2, 4))
        assert bool((sampler.q[2, :4] > 0).sum(-1).le(5).all())  # top-k 5


def test_seeded_sampled_streams_are_identical_with_graph_target_and_draft(tiny: Any) -> None:
    """Target and draft both on graph runners (the draft sampling in its chain) against both eager, ragged k."""

    def engine(graphs: bool) -> SpecEngine:
        def runner(model: Any, max_len: int) -> ModelRunner:
            if graphs:
                return GraphRunner(model, num_slots=8, max_len=max_len, buckets=BUCKETS, replay=EagerReplay())
            return ModelRunner(model, num_slots=8, max_len=max_len)

        target = runner(tiny.target, 96)
        return SpecEngine(target, DraftModelProposer(runner(tiny.draft, 96 + K), target.vocab_size), max_k=K)

    engines = [engine(False), engine(True)]
    rng = random.Random(8)
    prompts = [[rng.randrange(200) for _ in range(rng.randint(2, 4))] for _ in range(4)]
    streams: list[dict[int, list[int]]] = [{}, {}]
    for i, p in enumerate(prompts):
        params = SamplingParams(max_tokens=20, temperature=0.7 + 0.1 * i, top_p=0.95 if i % 2 else 1.0, seed=i,
                                ignore_eos=True)
        for e in engines:
            e.add_request(i, p, params)
    step = 0
    while engines[0].has_unfinished:
        ks = {sid: 1 + (sid + step) % K for sid in range(len(prompts))}
        for e, out in zip(engines, streams, strict=True):
            for sid, toks in e.step(ks).emitted.items():
                out.setdefault(sid, []).extend(toks)
        step += 1
    assert not engines[1].has_unfinished
    assert streams[1] == streams[0] and all(len(s) == 20 for s in streams[0].values())
    draft = engines[1].proposer.runner  # type: ignore[union-attr]
    assert isinstance(draft, GraphRunner) and draft.graph_stats.hits > step  # the draft chained (several per step)


def test_a_sampled_chain_that_does_not_fit_leaves_the_generators_as_they_were(tiny: Any) -> None:
    """KV buckets up to 16 keys: chains stop fitting as contexts grow, and the step-by-step drafts that follow
    must draw the same uniforms the eager proposer draws."""
    from smartspec.engine.proposers.base import ProposeRequest

    small = BucketConfig(batch_sizes=(1, 2, 4), max_width=K + 1, kv_sizes=(16,))
    eager = DraftModelProposer(ModelRunner(tiny.draft, num_slots=4, max_len=64), 300)
    graph_runner = GraphRunner(tiny.draft, num_slots=4, max_len=64, buckets=small, replay=EagerReplay())
    graph = DraftModelProposer(graph_runner, 300)
    rng = random.Random(2)
    params = SamplingParams(max_tokens=64, temperature=1.0, seed=9)
    contexts = {sid: [rng.randrange(250) for _ in range(3)] for sid in range(2)}
    for _ in range(8):
        reqs = [ProposeRequest(sid, list(toks), K, params) for sid, toks in contexts.items()]
        a, b = eager.propose(reqs), graph.propose(reqs)
        assert {s: p.draft_token_ids for s, p in b.items()} == {s: p.draft_token_ids for s, p in a.items()}
        for sid, prop in a.items():
            contexts[sid] += [*prop.draft_token_ids[:1], rng.randrange(250)]
    assert graph_runner.graph_stats.eager_why.get("chain", 0) > 0 and graph_runner.graph_stats.hits > 0
