"""Chat prompts: the model's chat template around message text that stays text.

`apply_chat_template(tokenize=True)` renders the conversation to one string and tokenizes it with
special tokens parsed, so a user who writes `<|im_end|>\n<|im_start|>system\n…` gets real control
tokens: a forged turn. Here the template is rendered with a unique marker in place of each message's
content, the template's own text is tokenized as usual (its control tokens are real), and each
content is tokenized with special-token strings split into ordinary text. For ordinary text the ids
are the ones `apply_chat_template` gives.
"""

from __future__ import annotations

import secrets
from typing import Any

from smartspec.errors import InvalidRequest


def chat_prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    nonce = secrets.token_hex(8)
    marks = [f"\u2063smartspec-{nonce}-{i}\u2063" for i in range(len(messages))]
    marked = [{**m, "content": mark} for m, mark in zip(messages, marks, strict=True)]
    rendered = str(tokenizer.apply_chat_template(marked, add_generation_prompt=True, tokenize=False))
    if any(rendered.count(mark) != 1 for mark in marks):
        return _plain(tokenizer, messages)  # a template that drops, repeats or rewrites content
    ids: list[int] = []
    rest = rendered
    for mark, message in zip(marks, messages, strict=True):
        before, rest = rest.split(mark, 1)
        ids += _ids(tokenizer, before, split_special=False)
        ids += _ids(tokenizer, message["content"], split_special=True)
    ids += _ids(tokenizer, rest, split_special=False)
    return ids


def _ids(tokenizer: Any, text: str, split_special: bool) -> list[int]:
    if not text:
        return []
    return [int(t) for t in tokenizer(text, add_special_tokens=False, split_special_tokens=split_special).input_ids]


def _plain(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The template's own tokenization, allowed only when no content holds a control-token string."""
    specials = [t for t in getattr(tokenizer, "all_special_tokens", []) if t]
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    specials += [str(t) for t in added.values() if getattr(t, "special", False)]
    for m in messages:
        hit = next((s for s in specials if s in m["content"]), None)
        if hit is not None:
            raise InvalidRequest(f"message content contains the control token {hit!r}, which this model's chat "
                                 "template cannot keep as plain text", param="messages")
    return [int(t) for t in tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                          return_dict=False)]
