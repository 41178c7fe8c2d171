"""Positions within runs of equal keys: the rank of each candidate among its source's, once sorted."""

from __future__ import annotations

import numpy as np


def rank_in_runs(keys: np.ndarray) -> np.ndarray:
    """0-based position of each element within its run of equal consecutive ``keys`` (``keys`` sorted by
    group, best first inside a group: the result is each element's rank in its group)."""
    n = len(keys)
    starts = np.r_[0, np.flatnonzero(np.diff(keys)) + 1]
    return np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
