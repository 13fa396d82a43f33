"""Chi-square goodness of fit with rare cells merged (the approximation needs >= 5 expected per bin)."""

from __future__ import annotations

import numpy as np
from scipy.stats import chisquare


def chisquare_pvalue(observed: np.ndarray, expected: np.ndarray, min_expected: float = 5.0) -> float:
    """p-value of `observed` counts against `expected` counts (same total), rarest cells merged first."""
    order = np.argsort(expected)
    bins_e: list[float] = []
    bins_o: list[float] = []
    acc_e = acc_o = 0.0
    for e, o in zip(expected[order], observed[order], strict=True):
        acc_e += float(e)
        acc_o += float(o)
        if acc_e >= min_expected:
            bins_e.append(acc_e)
            bins_o.append(acc_o)
            acc_e = acc_o = 0.0
    bins_e[-1] += acc_e
    bins_o[-1] += acc_o
    return float(chisquare(bins_o, bins_e).pvalue)
