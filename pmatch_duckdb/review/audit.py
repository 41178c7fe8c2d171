"""The reject audit: how many matches the model already auto-rejects, measured from a sample of its rejects.

``max_recall_loss`` (2 %) promises a share of *all* matches, and the pairs under the review threshold are never
queued, so reviews of the band alone cannot tell how much of that share is spent. On Abt-Buy full (zero-shot,
default thresholds) 41 of the 717 matches among the train sources' top 10 candidates already score below the review
threshold (5.7 %), spread over 0.23-0.55 among 5,296 rejected pairs: ``calibrate`` raising the review threshold
from there would lose more still.

``pm_queue_review(audit_rejects := N)`` queues ``N`` of the result's rejected, unlabelled pairs, a random sample in
five strata with the same number from each (a stratum smaller than its share is taken whole), drawn in DuckDB
(:func:`draw_rejects`): the rejected rows, nine in ten of a top-10 result, never leave it. Where the result has
``match_products``' ``rank`` column the strata follow it, because that is where missed matches are: a source's best
candidate (rank 1) that was rejected anyway (on Abt-Buy 14 of 28 were matches), ranks 2-3 (14 of 769), and the other
rejects by score, the top quarter, the next quarter, the bottom half (13 of 4,499 together). Without ranks: five
score strata of growing size from the top (a sixteenth, a sixteenth, an eighth, a quarter, a half).

Each queued pair records its stratum and how many pairs that stratum holds, so a reviewed pair stands for
``stratum pairs / answered pairs of its stratum`` pairs (Horvitz-Thompson): the estimate of the matches below the
review threshold is unbiased for any answered share of each stratum (the queue shows each stratum's pairs in random
order). Its 95 % upper bound is the normal approximation of the stratified estimate (each stratum's share taken
as (matches + 0.5) / (answered + 1), so a stratum without a match still counts; finite-population corrected, so a
stratum taken whole adds no doubt). The accept sample records its stratum the same way (stratum 0), so one queue's
verdicts estimate the matches of the whole result: the accept band (sampled), the review band (reviewed in full)
and the rejects (sampled).
"""

from __future__ import annotations

import math
import secrets
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from ..decision import _sigmoid, fit_logistic
from .labels import ANSWERS_ENTRY, PairKey, has_column, has_labels, matcher_in, pair_unit, table_key

#: strata of the rejects, from the top: shares of the rejected pairs each holds
STRATA = (1 / 16, 1 / 16, 1 / 8, 1 / 4, 1 / 2)
REASON = "reject_sample"
Z95 = 1.6449  # one-sided 95 %


def strata_sizes(n_pairs: int) -> list[int]:
    """How many of ``n_pairs`` rejected pairs (ranked by score, highest first) fall in each stratum; every pair in
    exactly one (the last takes what rounding leaves)."""
    sizes = [int(math.floor(f * n_pairs)) for f in STRATA[:-1]]
    return [*sizes, n_pairs - sum(sizes)]


def allocate(sizes: list[int], n: int) -> list[int]:
    """The same number drawn from each stratum (``n`` in all), a stratum smaller than its share taken whole and the
    rest shared among the others."""
    take = [0] * len(sizes)
    left, open_ = n, [i for i, s in enumerate(sizes) if s > 0]
    while left > 0 and open_:
        share = max(1, left // len(open_))
        for i in list(open_):
            k = min(share, sizes[i] - take[i], left)
            take[i] += k
            left -= k
            if take[i] == sizes[i]:
                open_.remove(i)
            if left == 0:
                break
    return take


def draw_rejects(con, rows_sql: str, n: int, seed: int, exclude: set[PairKey]) -> list[dict]:  # noqa: ANN001
    """The reject audit: ``n`` of the rejected pairs of ``rows_sql`` (a SELECT of a match result's rows decided
    ``reject``, with ``source_table``, ``source_id``, ``target_table``, ``target_id`` as text, ``score`` as DOUBLE and
    ``_rank``, NULL where the result has no ``rank``), stratified (see the module docstring), as queue rows: each with
    ``key`` (the pair as pm_labels has it), ``reason``, ``stratum`` (1: the likeliest matches) and ``stratum_pairs``,
    in random order.

    The population is every pair of the result decided ``reject`` and not in ``exclude`` (the pairs labelled, and the
    ones queued otherwise), each pair once (dedup: either order); the strata, the draw within them and their order
    are computed in DuckDB, so a result of millions of rows never leaves it: only the drawn rows do. Deterministic
    per ``seed``: a pair's place in the draw is the first 64 bits of a SHA-256 of the seed and the pair."""
    if n <= 0:
        return []
    tabs = con.execute(f"SELECT DISTINCT source_table, target_table FROM ({rows_sql})").fetchall()
    if not tabs:
        return []
    tag = secrets.token_hex(6)
    names = {"tabs": f"_pm_audit_tabs_{tag}", "excl": f"_pm_audit_excl_{tag}", "pop": f"_pm_audit_pop_{tag}"}
    con.register(names["tabs"], pa.table({"source_ref": [a for a, _ in tabs], "target_ref": [b for _, b in tabs],
                                          "st": [table_key(a) for a, _ in tabs], "tt": [table_key(b) for _, b in tabs]}))
    keys = sorted(exclude, key=lambda k: k.row())
    con.register(names["excl"], pa.table({c: pa.array([getattr(k, c) for k in keys], type=pa.string())
                                          for c in ("source_table", "source_id", "target_table", "target_id")}))
    try:
        con.execute(
            f"CREATE TEMP TABLE {names['pop']} AS WITH r AS (SELECT x.*, m.st, m.tt FROM ({rows_sql}) x "
            f"JOIN {names['tabs']} m ON x.source_table = m.source_ref AND x.target_table = m.target_ref "
            "WHERE x.source_id IS NOT NULL AND x.target_id IS NOT NULL), "
            "k AS (SELECT *, CASE WHEN st = tt AND target_id < source_id THEN target_id ELSE source_id END AS _ksid, "
            "CASE WHEN st = tt AND target_id < source_id THEN source_id ELSE target_id END AS _ktid FROM r), "
            "u AS (SELECT * FROM k QUALIFY row_number() OVER (PARTITION BY st, _ksid, tt, _ktid "
            "ORDER BY score DESC, source_id, target_id) = 1) "
            "SELECT u.*, ('0x' || left(sha256(concat_ws(chr(9), ?, st, _ksid, tt, _ktid)), 16))::UBIGINT AS _u0 FROM u "
            f"WHERE NOT EXISTS (SELECT 1 FROM {names['excl']} e WHERE e.source_table = u.st AND e.source_id = u._ksid "
            "AND e.target_table = u.tt AND e.target_id = u._ktid)", [str(seed)])
        total, ranked, first, near = con.execute(
            f"SELECT count(*), count(_rank), count(*) FILTER (WHERE _rank = 1), count(*) FILTER (WHERE _rank IN (2, 3)) "
            f"FROM {names['pop']}").fetchall()[0]
        if ranked:  # a source's best candidate, ranks 2-3, then the rest by score: top quarter, next, bottom half
            q = (total - first - near) // 4
            sizes = [first, near, q, q, total - first - near - 2 * q]
            stratum = (f"CASE WHEN _rank = 1 THEN 1 WHEN _rank IN (2, 3) THEN 2 WHEN _i <= {q} THEN 3 "
                       f"WHEN _i <= {2 * q} THEN 4 ELSE 5 END")
            idx = "row_number() OVER (PARTITION BY coalesce(_rank IN (1, 2, 3), false) ORDER BY score DESC, _u0)"
        else:  # five score strata of growing size from the top
            sizes = strata_sizes(total)
            bounds = np.cumsum(sizes)[:-1].tolist()
            stratum = "CASE " + " ".join(f"WHEN _i <= {b} THEN {k}" for k, b in enumerate(bounds, start=1)) + " ELSE 5 END"
            idx = "row_number() OVER (ORDER BY score DESC, _u0)"
        strata = f"SELECT * EXCLUDE (_i), {stratum} AS _stratum FROM (SELECT *, {idx} AS _i FROM {names['pop']})"
        sizes = [int(x) for x in sizes]
        take = allocate(sizes, n)
        rel = con.execute(
            f"SELECT * FROM ({strata}) QUALIFY row_number() OVER (PARTITION BY _stratum ORDER BY _u0) <= "
            f"[{', '.join(map(str, take))}][_stratum]")
        cols = [d[0] for d in rel.description]
        drawn = [dict(zip(cols, row, strict=True)) for row in rel.fetchall()]
    finally:
        con.execute(f"DROP TABLE IF EXISTS {names['pop']}")
        con.unregister(names["tabs"])
        con.unregister(names["excl"])
    out = []
    for r in drawn:
        key = PairKey(r.pop("st"), r.pop("_ksid"), r.pop("tt"), r.pop("_ktid"))
        k = int(r.pop("_stratum"))
        r.pop("_u0")
        out.append({**r, "key": key, "reason": REASON, "stratum": k, "stratum_pairs": sizes[k - 1],
                    "_order": pair_unit(seed + 1, key)})
    out.sort(key=lambda r: r.pop("_order"))  # in random order: another draw than the one within the strata
    return out


@dataclass
class Stratum:
    """One stratum of a queue's accept sample (``stratum`` 0) or reject audit, as far as it is answered."""

    stratum: int
    pairs: int  # pairs of the result in it (unlabelled when queued)
    queued: int
    answered: int  # verdicts match / no_match
    matches: int

    @property
    def weight(self) -> float | None:
        """How many of the stratum's pairs one answered pair stands for (None: none answered)."""
        return self.pairs / self.answered if self.answered else None

    def estimate(self) -> float | None:
        return None if not self.answered else self.pairs * self.matches / self.answered

    def variance(self) -> float | None:
        """Variance of :meth:`estimate` (its share taken as (matches + 0.5) / (answered + 1), so that a stratum without
        a match still counts; finite-population corrected: a stratum answered whole has none)."""
        if not self.answered:
            return None
        p = (self.matches + 0.5) / (self.answered + 1)
        fpc = max(0.0, 1 - self.answered / self.pairs) if self.pairs else 0.0
        return self.pairs ** 2 * p * (1 - p) / self.answered * fpc


@dataclass
class RejectAudit:
    """How far a queue's reject audit has got, and what it says."""

    queue: str
    strata: list[Stratum]
    review_threshold: float  # of the scale the audited scores are on (stage 1 / zero-shot)

    @property
    def rejected(self) -> int:
        return sum(s.pairs for s in self.strata)

    @property
    def queued(self) -> int:
        return sum(s.queued for s in self.strata)

    @property
    def answered(self) -> int:
        return sum(s.answered for s in self.strata)

    @property
    def matches(self) -> int:
        return sum(s.matches for s in self.strata)

    @property
    def complete(self) -> bool:
        """Every stratum has an answer: only then does the audit estimate the matches of every rejected pair."""
        return bool(self.strata) and all(s.answered for s in self.strata)

    def estimate(self) -> float | None:
        """Estimated matches among the rejected pairs (None until every stratum has an answer)."""
        return sum(s.estimate() for s in self.strata) if self.complete else None

    def upper(self) -> float | None:
        """Approximate one-sided 95 % upper bound of the matches among the rejected pairs (module docstring)."""
        if not self.complete:
            return None
        return min(self.estimate() + Z95 * math.sqrt(sum(s.variance() for s in self.strata)), float(self.rejected))

    def as_dict(self) -> dict:
        return {**asdict(self), "rejected": self.rejected, "queued": self.queued, "answered": self.answered,
                "matches": self.matches, "estimate": self.estimate(), "upper": self.upper()}


def _strata(con, queue: str, reasons: tuple[str, ...]) -> dict[int, Stratum]:  # noqa: ANN001
    marks = ", ".join("?" for _ in reasons)
    rows = con.execute(
        "SELECT coalesce(q.stratum, 0), max(q.stratum_pairs), count(*), count(l.verdict) FILTER (WHERE l.verdict IN "
        "('match', 'no_match')), count(*) FILTER (WHERE l.verdict = 'match') FROM pm_review_queue q "
        f"LEFT JOIN pm_labels_current l ON {ANSWERS_ENTRY} "
        f"WHERE q.queue = ? AND q.reason IN ({marks}) AND q.stratum_pairs IS NOT NULL GROUP BY ALL ORDER BY 1",
        [queue, *reasons]).fetchall()
    return {int(k): Stratum(int(k), int(n), int(qd), int(a), int(m)) for k, n, qd, a, m in rows}


def latest_audit(con, matcher: str | tuple[str, ...], target: str) -> RejectAudit | None:  # noqa: ANN001
    """The reject audit of the most recently queued queue of ``matcher``'s scores (a name, or the names whose scores
    are the same, ``ModelState.verdicts_from``) against ``target`` that has one (None where none has)."""
    if not has_column(con, "pm_review_queue", "stratum") or not has_labels(con):
        return None
    key, (by_matcher, names) = table_key(target), matcher_in("matcher", matcher)
    row = con.execute(
        f"SELECT queue FROM pm_review_queue WHERE reason = '{REASON}' AND {by_matcher} "
        "AND (target_table = ? OR source_table = ?) GROUP BY queue ORDER BY max(queued_at) DESC, queue LIMIT 1",
        [*names, key, key]).fetchall()
    return queue_audit(con, row[0][0]) if row else None


def queue_audit(con, queue: str) -> RejectAudit | None:  # noqa: ANN001
    """The reject audit of ``queue`` (None where it has none), as the review page's summary shows it."""
    if not has_column(con, "pm_review_queue", "stratum"):
        return None
    row = con.execute(f"SELECT min(review_threshold) FROM pm_review_queue WHERE queue = ? AND reason = '{REASON}'",
                      [queue]).fetchall()
    if row[0][0] is None:
        return None
    return RejectAudit(queue, list(_strata(con, queue, (REASON,)).values()), float(row[0][0]))


def audit_stale(con, audit: RejectAudit, state) -> str | None:  # noqa: ANN001 - state: a queue.ModelState
    """Why ``audit`` no longer measures what ``state``'s review threshold rejects (None: it does). Its strata are the
    pairs under the review threshold in force when it was queued; once that threshold moved (``pmatch calibrate``
    lowered or raised it), part of what the sampled pairs stand for is in the review band now, or rejected pairs
    are in no stratum, and the estimate is of another set."""
    scale = "coalesce(scored_by, 'stage1')" if has_column(con, "pm_review_queue", "scored_by") else "'stage1'"
    rows = con.execute(f"SELECT DISTINCT {scale} = 'pair_scorer', review_threshold FROM pm_review_queue "
                       f"WHERE queue = ? AND reason = '{REASON}'", [audit.queue]).fetchall()
    for stacked, drawn in rows:
        model = state.pair if stacked and state.pair is not None else state
        if drawn is None or not math.isclose(float(drawn), model.review_threshold, rel_tol=0, abs_tol=1e-9):
            was = "an unrecorded one" if drawn is None else f"{float(drawn):.4f}"
            return (f"the latest reject audit (queue {audit.queue!r}) sampled the pairs below review threshold "
                    f"{was}, and the threshold in force is {model.review_threshold:.4f}: it no longer "
                    "measures what is auto-rejected. Queue a new one on a result matched with the thresholds in "
                    "force (pm_queue_review(audit_rejects := 200))")
    return None


@dataclass
class AuditWeights:
    """The reviewed pairs as a reject audit sees them: how many pairs of the audited result each stands for (``w``,
    1 outside the samples), its stratum (``stratum``: 0 outside the reject audit) and the audit's strata."""

    w: np.ndarray
    stratum: np.ndarray
    strata: dict[int, Stratum]

    def take(self, keep: np.ndarray) -> AuditWeights:
        return AuditWeights(self.w[keep], self.stratum[keep], self.strata)

    def smoothed(self, s: np.ndarray, y: np.ndarray) -> np.ndarray:
        """``y`` with each sampled reject's verdict replaced by its fitted probability of being a match (a weighted
        logistic regression on its score and whether it is in stratum 1 or 2; strata answered whole keep their
        verdicts). The fit keeps the weighted sum of matches, but spreads each sampled match, which stands for up to
        dozens of pairs, over the scores around it: a threshold cut by it does not sit just under one sampled
        match, where the matches nobody sampled go uncounted."""
        sel = (self.stratum > 0) & (self.w > 1)
        if sel.sum() < 3 or not y[sel].any() or y[sel].all():
            return y
        x = np.c_[s[sel], self.stratum[sel] == 1, self.stratum[sel] == 2].astype(np.float64)
        coef, b, mean, scale = fit_logistic(x, y[sel], l2=1.0, sample_weight=self.w[sel])
        out = y.astype(np.float64).copy()
        out[sel] = _sigmoid(((x - mean) / scale) @ coef + b)
        return out

    def excess_below(self, s: np.ndarray, y: np.ndarray, t: float) -> float:
        """The 95 % upper bound less the estimate of the audited matches scoring below ``t`` (``s``, ``y``: the
        scores and verdicts of the same pairs): what the audit cannot rule out on top of its estimate."""
        var = 0.0
        for k, st in self.strata.items():
            if k == 0 or not st.answered:
                continue
            m = int(((self.stratum == k) & (y > 0) & (s < t)).sum())
            var += Stratum(k, st.pairs, st.queued, st.answered, m).variance()
        return Z95 * math.sqrt(var)


def audit_weights(con, queue: str, pairs: list[tuple[str, str, str, str]]) -> AuditWeights:  # noqa: ANN001
    """:class:`AuditWeights` of reviewed ``pairs`` (keys as pm_labels has them) against ``queue``'s accept sample and
    reject audit: a verdict that answers one of its sampled entries (given after the queue was written, in whichever
    queue: as its strata count them) stands for its stratum's pairs over the answered ones; any other pair for itself
    (a band pair is reviewed in full)."""
    strata = _strata(con, queue, ("accept_sample", REASON))
    rows = con.execute(
        "SELECT q.source_table, q.source_id, q.target_table, q.target_id, coalesce(q.stratum, 0) "
        f"FROM pm_review_queue q JOIN pm_labels_current l ON {ANSWERS_ENTRY} AND l.verdict IN ('match', 'no_match') "
        f"WHERE q.queue = ? AND q.reason IN ('accept_sample', '{REASON}') AND q.stratum_pairs IS NOT NULL",
        [queue]).fetchall()
    of = {tuple(r[:4]): int(r[4]) for r in rows if strata[int(r[4])].weight is not None}
    k = np.array([of.get(p, -1) for p in pairs], dtype=np.int64)
    w = np.array([strata[i].weight if i >= 0 else 1.0 for i in k])
    # stratum 0 (the accept sample) is weighted but not part of the reject audit's bound
    return AuditWeights(w, np.where(k > 0, k, 0), strata)


def describe(audit: RejectAudit) -> str:
    """``pmatch calibrate``'s line about the reject audit."""
    head = (f"reject audit (queue {audit.queue!r}): {audit.answered} of {audit.queued} sampled pairs answered, from "
            f"{audit.rejected} auto-rejected (below {audit.review_threshold:.4f}); {audit.matches} matches")
    if not audit.complete:
        empty = [s.stratum for s in audit.strata if not s.answered]
        return head + f"; no estimate until every score stratum has an answer (none yet in {empty})"
    return head + (f": about {audit.estimate():.0f} matches among the rejected pairs (95 % upper bound "
                   f"{audit.upper():.0f})")
