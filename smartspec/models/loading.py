"""Load a causal LM and its tokenizer from a local folder, and check that a draft fits a target."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from smartspec.errors import IncompatibleModels, ModelNotFound, UnsupportedModel

DTYPES = ("float32", "bfloat16", "float16")


def torch_dtype(name: str) -> Any:
    import torch

    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {name!r}")
    return getattr(torch, name)


def _model_dir(path: str | Path) -> Path:
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise ModelNotFound(
            f"no model at {folder}: expected a transformers folder with config.json "
            "(for the real pair run `smartspec models fetch`, then `smartspec models path target|draft`)"
        )
    return folder


def load_tokenizer(path: str | Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_model_dir(path)), local_files_only=True)


def load_model(path: str | Path, dtype: str = "bfloat16", cpu_kernels: Literal["auto", "on", "off"] = "auto") -> Any:
    """An eval-mode `AutoModelForCausalLM` with SDPA attention (grouped-query aware), from local files only;
    `cpu_kernels` (auto | on | off): bf16 Linear layers through smartspec's kernel on AVX2 CPUs (engine/cpu_bf16.py)."""
    from transformers import AutoModelForCausalLM

    folder = _model_dir(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=torch_dtype(dtype), attn_implementation="sdpa", local_files_only=True
        )
    except ValueError as exc:  # unknown architecture / not a causal LM
        raise UnsupportedModel(f"{folder} is not a causal LM transformers can load: {exc}") from exc
    from smartspec.engine.attention import use_gqa_attention

    # Grouped K/V heads are read once per group, not copied per query head (engine/attention.py). Measured on
    # the real target, bf16, this CPU: a batch-16 width-5 verify 751-825 ms against 865-869 ms.
    use_gqa_attention(model)
    from smartspec.engine.cpu_bf16 import use_cpu_bf16_kernel

    use_cpu_bf16_kernel(model, cpu_kernels)
    return model.eval()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """sha256 over the token → id map (special tokens included): equal iff ids mean the same text."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()


def check_pair(target_tokenizer: Any, draft_tokenizer: Any) -> None:
    """Refuse a draft whose token ids do not mean what the target's mean."""
    t, d = tokenizer_fingerprint(target_tokenizer), tokenizer_fingerprint(draft_tokenizer)
    if t != d:
        raise IncompatibleModels(
            f"draft tokenizer differs from the target's (vocab {len(draft_tokenizer)} vs "
            f"{len(target_tokenizer)}, fingerprint {d[:12]} vs {t[:12]}); speculation needs the same tokenizer"
        )
