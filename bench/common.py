"""Shared bench helpers: machine description, prompts, model loading, result files."""

from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from smartspec.sim.report import cpu_name

# Code-completion style prompts (HumanEval-like); the HumanEval set itself arrives with the load benchmark.
PROMPTS = [
    "Write a Python function `is_prime(n)` that returns True when n is a prime number.",
    "Write a Python function that returns the n-th Fibonacci number iteratively, with a docstring.",
    "Implement binary search over a sorted list in Python and explain its complexity.",
    "Write a Python function that parses a CSV line with quoted fields into a list of strings.",
    "Write a Python class `Stack` with push, pop, peek and is_empty methods.",
    "Write a function that merges two sorted lists into one sorted list.",
    "Write a Python function that counts word frequencies in a text and returns the top 5.",
    "Write a Python function that checks whether a string is a palindrome, ignoring case and spaces.",
]


def machine() -> str:
    # The vector ISA torch uses decides whether bf16 matmuls are fast (AVX-512 BF16) or emulated (AVX2):
    # results from VMs that differ in it are not comparable.
    isa = torch.backends.cpu.get_cpu_capability()
    return (f"{cpu_name()} ({isa}); torch {torch.__version__} ({torch.get_num_threads()} threads); "
            f"python {platform.python_version()}; {platform.system()} {platform.release()}")


def chat_ids(tokenizer: Any, text: str) -> list[int]:
    return [int(t) for t in tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                                            add_generation_prompt=True, tokenize=True,
                                                            return_dict=False)]


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def results_dir(tag: str) -> Path:
    """A new folder results/<date>-<tag>; a second run on the same day gets -2, -3 … (never overwrites one)."""
    root = Path(__file__).parent.parent / "results"
    out, n = root / f"{dt.date.today().isoformat()}-{tag}", 1
    while (out / "README.md").exists():
        n += 1
        out = root / f"{dt.date.today().isoformat()}-{tag}-{n}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_report(tag: str, title: str, body: str) -> Path:
    """Write `body` (markdown) with the exact command and machine into results/<date>-<tag>/."""
    out = results_dir(tag) / "README.md"
    script = Path(sys.argv[0])
    # As a module invocation from the repository root: no path of the machine that ran it.
    run = ["-m", f"bench.{script.stem}"] if script.parent.name == "bench" else [script.name]
    cmd = " ".join(shlex.quote(a) for a in ["python", *run, *sys.argv[1:]])
    out.write_text(f"# {title}\n\nCommand: `{cmd}`\n\nMachine: {machine()}\n\n{body}\n")
    return out


def real_pair_paths() -> tuple[str, str]:
    from smartspec.models.fetch import model_path
    from smartspec.models.settings import ModelSettings

    settings = ModelSettings()
    return str(model_path(settings, "target")), str(model_path(settings, "draft"))


def quiet() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
