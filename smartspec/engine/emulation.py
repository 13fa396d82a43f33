"""Acceptance emulation (experiments only): accept each draft token with probability α, not by the target.

Step-time curves need realistic acceptance, but random-weight models of real shapes (all a GPU
machine without trained weights can hold) accept almost nothing. With emulation on, the verify
forward runs exactly as in real speculation (same shapes, same KV work) and the verdict is redrawn:
draft j survives with probability α given that j-1 survived (the geometric model of the paper), and
the step emits the surviving drafts plus the target's own token after them. The text is then NOT
what the target alone would write, so this is never on by default and everything that reports on
such a run says so.
"""

from __future__ import annotations

import random

from smartspec.engine.verification import ScoredRow


class AcceptanceEmulator:
    def __init__(self, alpha: float, seed: int = 0) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"emulated acceptance must be in [0, 1], got {alpha}")
        self.alpha = alpha
        self._rng = random.Random(seed)

    def redraw(self, rows: list[ScoredRow], verdicts: list[tuple[int, list[int]]]) -> list[tuple[int, list[int]]]:
        """Replace each speculating row's verdict; rows at k = 0 keep the target's token."""
        out = []
        for row, verdict in zip(rows, verdicts, strict=True):
            if row.proposal is None or row.k == 0:
                out.append(verdict)
                continue
            n = 0
            while n < row.k and self._rng.random() < self.alpha:
                n += 1
            # The target's choice after n accepted drafts: its argmax at that position (the KV for
            # the accepted drafts is already in the verify forward, so nothing is recomputed).
            nxt = int(row.argmax[n]) if row.argmax is not None else int(row.logits[n].argmax())
            out.append((n, [*row.proposal.draft_token_ids[:n], nxt]))
        return out
