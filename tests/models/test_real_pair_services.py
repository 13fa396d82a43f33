"""The real pair behind the real services (fp32): greedy output over HTTP equals target-only greedy."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from smartspec.models.loading import load_tokenizer
from tests.conftest import hf_greedy
from tests.integration.conftest import LoopThread
from tests.integration.services import Stack, start_stack

pytestmark = pytest.mark.realpair


@pytest.fixture(scope="module")
def stack(real_pair: tuple[Path, Path]) -> Iterator[Stack]:
    loop = LoopThread()
    s = start_stack(loop, {"target": str(real_pair[0]), "draft": str(real_pair[1])}, policy="fixed", fixed_k=4,
                    max_len=512, max_batch_size=2)
    yield s
    s.stop()
    loop.close()


def test_http_greedy_equals_target_only(stack: Stack, real_pair: tuple[Path, Path]) -> None:
    tok = load_tokenizer(real_pair[0])
    messages = [{"role": "user", "content": "Write a Python function that reverses a string."}]
    r = httpx.post(f"{stack.url}/v1/chat/completions", timeout=300, json={
        "model": real_pair[0].name, "messages": messages, "max_tokens": 24, "temperature": 0, "ignore_eos": True})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    # The reference runs on the engine's own fp32 weights: the same numbers, no second copy in memory.
    target = stack.target.ctx.engine.scheduler.engine.runner.model
    expected = tok.decode(hf_greedy(target, list(ids), 24), skip_special_tokens=True)
    assert body["choices"][0]["message"]["content"] == expected
    spec = body["usage"]["speculation"]
    assert spec["draft_tokens"] > 0 and spec["acceptance_rate"] > 0.3  # a real draft, really accepted
