"""Grouped-query attention that reads each K/V head once, registered with transformers as `smartspec_sdpa`.

With a 4D mask (which the runner always passes) and more than one query row per sequence, transformers'
`sdpa` copies every K/V head once per query head (`repeat_kv`) before calling SDPA: for Qwen2.5-1.5B
(6 query heads per K/V head) a batch-16 verify copies 6× the KV it reads. Here the query heads of one
group are stacked along the query axis instead, `[B, H, W, D] -> [B, H_kv, n_rep·W, D]`, and the mask is
tiled to match, so SDPA attends every query of a group against the same K/V rows. The maths are the same
dot products and softmax per (head, query); only the layout differs.
"""

from __future__ import annotations

from typing import Any

import torch

NAME = "smartspec_sdpa"


def gqa_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,  # [B, H, W, D]
    key: torch.Tensor,  # [B, H_kv, KV, D]
    value: torch.Tensor,  # [B, H_kv, KV, D]
    attention_mask: torch.Tensor | None,  # additive or boolean, [B or 1, 1, W, KV]
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature; returns `[B, W, H, D]` as its `sdpa` does."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    batch, heads, width, dim = query.shape
    kv_heads = key.shape[1]
    rep = heads // kv_heads
    # What the packing does not cover goes to transformers' own path (same results, its speed): no
    # grouping, no mask (prefill without one is causal there), biases, soft-capping or dropout.
    plain = (rep == 1 or attention_mask is None or attention_mask.shape[1] != 1 or dropout
             or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None)
    if plain or attention_mask is None:  # (the second test only tells mypy what `plain` checked)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    # Head h belongs to K/V group h // rep, so a reshape groups them; row r·W + w of a group is query
    # head (g·rep + r) at position w, whose mask row is w: tile the mask rep times along the queries.
    packed = query.reshape(batch, kv_heads, rep * width, dim)
    mask = attention_mask.repeat(1, 1, rep, 1) if width > 1 else attention_mask
    out = torch.nn.functional.scaled_dot_product_attention(packed, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(batch, heads, width, value.shape[-1]).transpose(1, 2).contiguous(), None


def register() -> str:
    """Make `attn_implementation="smartspec_sdpa"` available to transformers (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, gqa_sdpa_forward)
    # Models build their masks by the attention's name: the same boolean/additive masks as `sdpa`.
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME


def use_gqa_attention(model: Any) -> bool:
    """Switch a loaded model to `smartspec_sdpa` where it has grouped K/V heads; whether it switched."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    if kv_heads == heads or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    register()
    model.set_attn_implementation(NAME)
    return True
