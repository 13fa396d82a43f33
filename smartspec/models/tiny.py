"""Seeded random-init tiny model pairs (shared byte-level tokenizer) for fast, download-free tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

Arch = Literal["llama", "qwen2"]

SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def byte_tokenizer() -> Any:
    """A byte-level tokenizer (256 byte tokens + ChatML specials): no training, no downloads."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIALS))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


@dataclass(frozen=True)
class TinyShape:
    """Dimensions of a tiny model; defaults give ~0.2M parameters and sub-millisecond steps."""

    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 128
    max_positions: int = 1024


def tiny_model(arch: Arch, vocab_size: int, shape: TinyShape, seed: int) -> Any:
    """A random-init causal LM of `arch` built from a config; seeded, fp32, eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        intermediate_size=shape.intermediate_size,
        max_position_embeddings=shape.max_positions,
        # Wide init keeps logits peaky, so fp32 argmax is never decided by rounding noise.
        initializer_range=0.3,
        tie_word_embeddings=False,
        pad_token_id=SPECIALS.index("<|endoftext|>") + 256,
        eos_token_id=SPECIALS.index("<|im_end|>") + 256,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model: Any
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=False))
    return model.eval()


@dataclass
class TinyPair:
    """A tiny target, a draft made from its first layers (so drafts are often accepted), one tokenizer."""

    target: Any
    draft: Any
    tokenizer: Any

    def save(self, folder: Path) -> tuple[Path, Path]:
        """Write target/ and draft/ as ordinary transformers folders; returns their paths."""
        out = []
        for name, model in (("target", self.target), ("draft", self.draft)):
            path = folder / name
            model.save_pretrained(path)
            self.tokenizer.save_pretrained(path)
            out.append(path)
        return out[0], out[1]


def tiny_pair(
    arch: Arch = "llama",
    seed: int = 0,
    shape: TinyShape | None = None,
    draft_layers: int = 1,
    deep_layer_scale: float = 0.1,
) -> TinyPair:
    """Build a seeded tiny pair in well under a second.

    The draft copies the target's embeddings, first `draft_layers` layers, final norm and head:
    a random draft would agree with a random target about 1/vocab of the time, which would leave
    the accept path of verification untested. The target's deeper layers write into the residual
    stream scaled by `deep_layer_scale`, which sets how often the two agree (0.1: about four tokens in five).
    """
    import torch

    shape = shape or TinyShape()
    tokenizer = byte_tokenizer()
    target = tiny_model(arch, len(tokenizer), shape, seed)
    with torch.no_grad():
        for layer in target.model.layers[draft_layers:]:
            layer.self_attn.o_proj.weight.mul_(deep_layer_scale)
            layer.mlp.down_proj.weight.mul_(deep_layer_scale)
    draft_shape = TinyShape(**{**shape.__dict__, "num_layers": draft_layers})
    draft = tiny_model(arch, len(tokenizer), draft_shape, seed + 1)
    own = draft.state_dict()
    draft.load_state_dict({k: v for k, v in target.state_dict().items() if k in own})
    return TinyPair(target=target, draft=draft, tokenizer=tokenizer)
