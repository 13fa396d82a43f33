"""The speculation modes every part accepts (policy documents, CLI flags, settings, the engine's policy)."""

from __future__ import annotations

from typing import Literal

# goodput: per-request k for the best decode goodput; goodput-uniform: one k for the whole batch,
# decided every step (the authors' baseline); fixed: k = the fixed length; off: never speculate.
Mode = Literal["goodput", "goodput-uniform", "fixed", "off"]
MODES: tuple[Mode, ...] = ("goodput", "goodput-uniform", "fixed", "off")
ADAPTIVE_MODES: tuple[Mode, ...] = ("goodput", "goodput-uniform")
