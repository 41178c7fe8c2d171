"""What the reviews say: label counts, and the measured precision of auto-accept with its interval."""

from __future__ import annotations

import math
from dataclasses import dataclass

import duckdb

from .labels import has_labels

_Z = {0.90: 1.6449, 0.95: 1.9600, 0.99: 2.5758}


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided Wilson score interval of a proportion ((0, 1) when ``n`` is 0)."""
    if n <= 0:
        return 0.0, 1.0
    z = _Z.get(confidence, 1.96)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class AcceptPrecision:
    """Precision of auto-accept measured on the randomly sampled accepted pairs people reviewed."""

    matches: int
    reviewed: int  # match + no_match verdicts (unsure left out)
    unsure: int
    low: float
    high: float

    @property
    def precision(self) -> float | None:
        return self.matches / self.reviewed if self.reviewed else None


def accept_precision(con: duckdb.DuckDBPyConnection, queue: str | None = None,
                     confidence: float = 0.95) -> AcceptPrecision:
    """From current verdicts on pairs queued as ``accept_sample`` (an unbiased sample of auto-accepts)."""
    if not has_labels(con):
        return AcceptPrecision(0, 0, 0, 0.0, 1.0)
    where = "reason = 'accept_sample'" + (" AND queue = ?" if queue else "")
    m, n, u = con.execute(
        "SELECT count(*) FILTER (WHERE verdict = 'match'), count(*) FILTER (WHERE verdict IN ('match', 'no_match')), "
        f"count(*) FILTER (WHERE verdict = 'unsure') FROM pm_labels_current WHERE {where}",
        [queue] if queue else []).fetchall()[0]
    lo, hi = wilson_interval(int(m), int(n), confidence)
    return AcceptPrecision(int(m), int(n), int(u), lo, hi)


def label_summary(con: duckdb.DuckDBPyConnection) -> list[dict]:
    """Current verdicts per queue reason and verdict, plus reviewers and time span."""
    if not has_labels(con):
        return []
    rel = con.execute("""
        SELECT coalesce(reason, 'other') AS reason, verdict, count(*) AS pairs,
               string_agg(DISTINCT reviewer, ', ') AS reviewers, min(labelled_at) AS first, max(labelled_at) AS last
        FROM pm_labels_current GROUP BY ALL ORDER BY reason, verdict""")
    cols = [d[0] for d in rel.description]
    return [dict(zip(cols, r, strict=True)) for r in rel.fetchall()]
