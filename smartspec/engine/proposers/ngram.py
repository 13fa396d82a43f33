"""Model-free prompt-lookup proposer: continue the latest earlier occurrence of the last n-gram."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from smartspec.engine.proposers.base import Proposal, ProposeRequest


def lookup(tokens: np.ndarray, k: int, max_n: int, min_n: int) -> list[int]:
    """Up to k tokens that followed the most recent earlier match of the longest suffix n-gram."""
    size = tokens.shape[0]
    for n in range(max_n, min_n - 1, -1):
        if size <= n:
            continue
        windows = np.lib.stride_tricks.sliding_window_view(tokens[:-1], n)  # windows[i] = tokens[i:i+n]
        hits = np.flatnonzero((windows == tokens[-n:]).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n
            return [int(t) for t in tokens[start : start + k]]
    return []


class NgramProposer:
    """Drafts are copies of earlier context, so q is one-hot (`draft_probs=None`) and drafting is free."""

    name = "ngram"

    def __init__(self, max_n: int = 4, min_n: int = 2) -> None:
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= min_n <= max_n, got min_n={min_n} max_n={max_n}")
        self.max_n = max_n
        self.min_n = min_n

    def propose(self, requests: list[ProposeRequest], deadline_s: float | None = None) -> dict[int, Proposal]:
        out: dict[int, Proposal] = {}
        for req in requests:
            if req.k <= 0:
                continue
            drafts = lookup(np.asarray(req.token_ids, dtype=np.int64), req.k, self.max_n, self.min_n)
            if drafts:
                out[req.seq_id] = Proposal(drafts)
        return out

    def release(self, seq_id: int) -> None:
        return None

    def unseen(self, seq_id: int, token_ids: Sequence[int]) -> int:
        return 0  # a lookup reads the context as it is: nothing to catch up
