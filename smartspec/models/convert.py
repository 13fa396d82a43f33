"""One-time GGUF → safetensors (bf16) conversion, checked by comparing logits before and after."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from smartspec.errors import FetchFailed
from smartspec.models.registry import PinnedModel
from smartspec.models.resources import require_memory

CHECK_PROMPT = "def fibonacci(n):\n    "


def convert_gguf(gguf_path: Path, out_dir: Path, spec: PinnedModel, progress: Callable[[str], None]) -> None:
    """Dequantise `gguf_path` into a plain transformers folder at `out_dir` (written atomically)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    # transformers warns that bf16 GGUF loading is slower than fp32; bf16 halves the peak memory.
    hf_logging.set_verbosity_error()

    require_memory(spec.convert_peak_bytes, f"converting {spec.name}")
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.monotonic()
    progress(f"{spec.role}: converting {gguf_path.name} to bf16 safetensors (one time, ~1-2 min)")
    src, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=torch.bfloat16)
    model.eval()
    progress(f"{spec.role}: dequantised in {time.monotonic() - t0:.0f}s; writing safetensors")

    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["architectures"] = [type(model).__name__]
    type(model.config).from_dict(cfg).save_pretrained(tmp)
    model.generation_config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    # Tied weights share storage; safetensors refuses duplicates, so keep the first name only.
    state: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, tensor in model.state_dict().items():
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:
            continue
        seen.add(ptr)
        state[key] = tensor.detach().contiguous()
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})

    ids = tokenizer(CHECK_PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode():
        expected = model(ids).logits
        del model, state
        reloaded = AutoModelForCausalLM.from_pretrained(str(tmp), dtype=torch.bfloat16)
        got = reloaded(ids).logits
    if not torch.equal(expected, got):
        shutil.rmtree(tmp, ignore_errors=True)
        raise FetchFailed(
            f"{spec.name}: converted model's logits differ from the GGUF model's "
            f"(max abs diff {(expected - got).abs().max().item():.3g})"
        )
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.replace(out_dir)
    progress(f"{spec.role}: converted and checked in {time.monotonic() - t0:.0f}s")
