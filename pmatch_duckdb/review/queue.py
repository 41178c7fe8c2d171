"""The review queue: which candidate pairs a person should look at next, most informative first.

``queue_review(con, 'matches')`` reads a saved ``match_products`` result and writes its queue into
the ``pm_review_queue`` table (one transaction; re-queueing a name replaces that queue):

* ``boundary``: pairs the model sent to review, nearest the decision boundary first (the middle of
  the review band; 0.5 for a calibrated matcher that certifies no accept threshold), spread across
  sources — each further candidate of the same source offer is pushed back by a quarter of the
  half-band, so one offer's 30 candidates never come in a row. With a pair scorer in the matcher, the pairs
  it re-read (the result's ``scored_by`` column says which; in a result saved before that column existed, each
  source's top ``m`` by stage 1, found by scoring the result's pairs again by stage 1) are measured against its
  stacked model's thresholds, the others against stage 1's (two scales, one result);
* ``accept_sample``: a deterministic random sample (``accept_sample``, default 5%, at least one) of
  the auto-accepted pairs, spread evenly through the queue — the measured precision of auto-accept;
* ``certify_sample`` (only when asked for, ``certify``): a uniform random sample of the pairs scoring at least
  ``certify_above``, sized so that reviewing it can certify that precision (see ``certify.py``); first in the queue
  after the rechecks, in random order;
* ``reject_sample`` (only when asked for, ``audit_rejects``): a stratified random sample of the auto-rejected pairs,
  spread through the queue with the accept sample — how many matches the model already auto-rejects (``audit.py``).
  Both samples record their stratum and its size (``stratum``, ``stratum_pairs``), so their verdicts estimate the
  matches of the whole result;
* ``accept_conflict`` (:mod:`.conflicts`), after the certification sample: auto-accepted links that contradict
  another decision. In a ``one_match`` queue, a source offer the result auto-accepts for two or more target
  products, or for one while a person said match for another: one page, its second-best unlabelled accept (the
  best is then among the candidates the page lists, to pick), or its best one where a match verdict stands. In a
  one-table result, always: two offers of one cluster of accepted links that the result rejects as a pair (or a
  person said differ): one page for the weakest unlabelled accept on the path between them. A link the accept
  sample already drew gets no second page;
* ``recheck``: pairs already labelled where the model turned against the verdict since it was given; first in the
  queue. On the scale the reviewer saw (``pm_labels.scored_by``: zero-shot similarity, a trained matcher's stage 1,
  or its pair scorer's stacked model), that is a score moved by at least ``recheck_delta`` away from the verdict
  (down for ``match``, up for ``no_match``, either way for ``unsure``); a score that moved towards the verdict (as
  after training on it) is no reason to ask again. Across scales (a zero-shot score then, a trained one now; a pair
  re-read then and not now) scores do not compare, so decisions do: the model's decision now (from its score and
  the thresholds of the model that scored it) contradicts the verdict (``reject`` for ``match``, ``accept`` for
  ``no_match``) where the decision shown did not. Other labelled pairs are not asked again.

Each entry also records its place among its offer's candidates in the result and the best other candidates
(``alternatives``, :mod:`.alternatives`), which the page lists beside the pair.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from ..decision import wilson_lower
from ..errors import PmatchError
from ..fusion import decide_by_thresholds
from ..sqlident import quote_qualified
from .alternatives import candidate_context
from .audit import draw_rejects
from .conflicts import Offer, accept_conflicts, cluster_conflicts, offers_linked_twice
from .labels import (
    ANSWERS_ENTRY,
    PairKey,
    Verdict,
    current_verdicts,
    ensure_labels,
    has_column,
    has_labels,
    max_label_id,
    pair_unit,
    table_key,
    transaction,
)

QUEUE_DDL = """
CREATE TABLE IF NOT EXISTS pm_review_queue (
    queue            VARCHAR NOT NULL,
    position         INTEGER NOT NULL,
    source_ref       VARCHAR NOT NULL,  -- the source table as the match result names it (to read the offer)
    source_table     VARCHAR NOT NULL,  -- as pm_labels names it
    source_id        VARCHAR NOT NULL,
    target_ref       VARCHAR NOT NULL,
    target_table     VARCHAR NOT NULL,
    target_id        VARCHAR NOT NULL,
    score            DOUBLE,
    text_score       DOUBLE,
    image_score      DOUBLE,
    lexical_score    DOUBLE,
    identifier_match BOOLEAN,
    price_ratio      DOUBLE,
    decision         VARCHAR,
    reason           VARCHAR,  -- boundary / accept_sample / recheck
    matcher          VARCHAR,
    scored_by        VARCHAR,  -- the scale of score: zero-shot / stage1 / pair_scorer (the model that scored it)
    accept_threshold DOUBLE,
    review_threshold DOUBLE,
    labels_before    BIGINT,   -- verdicts with a larger label_id answer this queue entry
    certify_above    DOUBLE,   -- certify_sample: the score floor it was drawn above (certify.py)
    certify_target   DOUBLE,   -- certify_sample: the precision it was sized to certify
    stratum          INTEGER,  -- accept_sample (0) / reject_sample (1-5, 1 = likeliest matches): its stratum
    stratum_pairs    BIGINT,   -- how many unlabelled pairs of the result that stratum holds (audit.py)
    alternatives     VARCHAR,  -- JSON: the pair's rank among its offer's candidates in the result, and the best
                               -- others (alternatives.py)
    one_match        BOOLEAN,  -- the queue takes a match as its source offer's only one (answers.py)
    matches          VARCHAR,  -- the match result it was queued from, as named to pm_queue_review
    queued_at        TIMESTAMPTZ DEFAULT current_timestamp,
    PRIMARY KEY (queue, position)
)
"""

_OPTIONAL = ("text_score", "image_score", "lexical_score", "identifier_match", "price_ratio")
SPREAD_PENALTY = 0.25  # in half-band units per earlier candidate of the same source offer


@dataclass
class ModelState:
    """What the queue needs to know about the model that produced the scores."""

    matcher: str  # "default/v3" or "zero-shot"
    review_threshold: float
    accept_threshold: float  # inf: nothing is auto-accepted
    #: a matcher with a pair scorer: the thresholds of its stacked model (they apply to the pairs the scorer re-read,
    #: each source's ``top_m`` best by stage 1) and that ``m``
    pair: ModelState | None = None
    top_m: int = 0
    #: the scale its scores are on (decision.SCORED_BY); None: ``zero-shot`` for the zero-shot model, else ``stage1``
    scale: str | None = None
    #: the share of all matches its review threshold auto-rejects, as last measured, and where that figure comes
    #: from (:func:`recorded_recall_loss`); None: never measured (zero-shot defaults)
    recall_loss: float | None = None
    recall_loss_from: str | None = None
    #: its 95 % upper bound where one was recorded (training's validation share, a reject audit)
    recall_loss_upper: float | None = None
    #: the matcher names whose scores are this model's (``matchers.same_scores``: the versions ``pmatch calibrate``
    #: wrote as copies with new thresholds); empty: ``matcher`` alone
    same_scores: tuple[str, ...] = ()

    @property
    def verdicts_from(self) -> tuple[str, ...]:
        """The ``pm_labels.matcher`` / ``pm_review_queue.matcher`` values whose scores are this model's."""
        return self.same_scores or (self.matcher,)

    @property
    def scored_by(self) -> str:
        if self.scale is not None:
            return self.scale
        return "zero-shot" if self.matcher == "zero-shot" else "stage1"

    def decide(self, score: float) -> str:
        """The decision its thresholds give ``score`` — without what ``match_products`` applies on top: the GTIN
        rule, human verdicts, and, for a re-read pair, stage 1's accept kept unless the stacked model rejects (a
        saved result does not hold the model's own decision where a verdict overrode it)."""
        return decide_by_thresholds((score,), self.accept_threshold, self.review_threshold)[0]

    @property
    def boundary(self) -> float:
        if math.isfinite(self.accept_threshold):
            return (self.review_threshold + self.accept_threshold) / 2
        return max(self.review_threshold, 0.5)

    @property
    def half_band(self) -> float:
        hi = self.accept_threshold if math.isfinite(self.accept_threshold) else 1.0
        return max((hi - self.review_threshold) / 2, 1e-3)


@dataclass
class QueueStats:
    """What ``queue_review`` wrote."""

    queue: str
    queued: int
    boundary: int
    accept_samples: int
    rechecks: int
    skipped_labelled: int
    certify_samples: int = 0
    certify_above: float | None = None  # the score floor of the certification sample (None: none asked for)
    reject_samples: int = 0
    accept_conflicts: int = 0  # one_match: offers queued for their conflicting auto-accepts
    #: asked for one_match: the source offers people already said match for two or more target products
    #: (:func:`offers_linked_twice`); None: one_match not asked for
    one_match_conflicts: int | None = None
    #: a few of them, ``(source_id, [target_id, ...])``, for the CLI's warning (not a column of the SQL row)
    conflict_examples: tuple = ()

    def as_row(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "conflict_examples"}


def model_state(ctx, target: str) -> ModelState:  # noqa: ANN001 - a PmatchContext
    """Thresholds and name of the model in force for matching against ``target``."""
    from ..matchers import active_matcher, same_scores
    from ..sqlident import index_name_for
    from ..store import OfferIndex

    m = active_matcher(ctx.settings.matcher, ctx.settings.home)
    if m is not None:
        ident = m.identity
        name = f"{ident['name']}/{ident['version']}"
        lineage = tuple(f"{ident['name']}/{v}" for v in same_scores(ident["name"], ident["version"], ctx.settings.home))
        pair, top_m = None, 0
        if m.pair is not None and m.pair_decision is not None:
            pair = ModelState(name, float(m.pair_decision.review_threshold), float(m.pair_decision.accept_threshold),
                              scale="pair_scorer", same_scores=lineage,
                              **recorded_recall_loss(m.pair_decision.info, "pair_scorer"))
            top_m = m.pair.top_m if ctx.settings.pair_top_m is None else ctx.settings.pair_top_m
        return ModelState(name, float(m.decision.review_threshold), float(m.decision.accept_threshold), pair, top_m,
                          same_scores=lineage, **recorded_recall_loss(m.decision.info))
    idx = OfferIndex(ctx.index_root, index_name_for(target))
    from ..fusion import FusionConfig

    cfg = idx.fusion() if idx.exists() else FusionConfig()
    meta = idx.metadata() if idx.exists() else {}
    return ModelState("zero-shot", cfg.review_threshold, cfg.accept_threshold,
                      **recorded_recall_loss({"calibration": meta.get("calibration")}))


EARLIER = "an earlier calibration"


def recorded_recall_loss(info: dict, part: str | None = None) -> dict:
    """``recall_loss`` / ``recall_loss_from`` (and ``recall_loss_upper``, its 95 % upper bound, where recorded) of a
    model from the record its thresholds carry (a decision model's ``info``; ``part``: ``pair_scorer`` for the
    stacked model's share of a calibration record): what the last ``pmatch calibrate`` estimated, else the share of
    training's validation matches below the review threshold, else training's bound on it (``max_recall_loss``, in
    bundles trained before the share itself was recorded)."""
    cal = (info or {}).get("calibration") or {}
    cal = cal.get(part) or {} if part else cal

    def upper(x: object) -> dict:
        return {"recall_loss_upper": float(x)} if x is not None else {}

    if cal.get("recall_loss") is not None:
        src = cal.get("recall_loss_from")
        return {"recall_loss": float(cal["recall_loss"]), "recall_loss_from": src if src and src.startswith(
                    EARLIER) else f"{EARLIER} ({src})" if src else EARLIER, **upper(cal.get("recall_loss_upper"))}
    if info.get("review_recall_loss") is not None:
        loss, pos = float(info["review_recall_loss"]), info.get("validation_matches")
        hi = info.get("review_recall_loss_upper")
        if hi is None and isinstance(pos, int) and pos > 0:  # a bundle trained before the bound was recorded
            hi = 1 - float(wilson_lower(np.array([pos - round(loss * pos)]), np.array([pos]))[0])
        return {"recall_loss": loss, "recall_loss_from": "training's validation pairs", **upper(hi)}
    if info.get("max_recall_loss") is not None:
        return {"recall_loss": float(info["max_recall_loss"]),
                "recall_loss_from": "training's bound max_recall_loss (its validation share was not recorded)"}
    return {}


def finite_or_none(x: float | None) -> float | None:
    """A threshold as stored and reported: None for "none" (an infinite or missing threshold)."""
    return None if x is None or not math.isfinite(x) else float(x)


def _reread(con: duckdb.DuckDBPyConnection, ctx, matches: str, state: ModelState) -> set:  # noqa: ANN001
    """The pairs of ``matches`` the matcher's pair scorer re-read (empty without one), as (source table, source id,
    target table, target id) as the result has them: as its ``scored_by`` says; in a result saved without that
    column, each source's ``state.top_m`` best of the match result by stage 1's score (``match_products`` keeps those
    first, so with ``m <= k`` they are all in it), which means scoring the result's pairs again by stage 1."""
    if state.pair is None:
        return set()
    from ..api import context_of
    from .rescore import reread_in_result, result_pairs

    return reread_in_result(con, ctx or context_of(con), result_pairs(con, matches), state.top_m,
                            f"pm_queue_review: the matcher has a pair scorer, so which pairs of {matches!r} it "
                            "re-read (and whose thresholds they are near) needs stage 1's scores")


def _mark_reread(rows: list[dict], reread: set, state: ModelState) -> None:
    """Set ``_state`` = the stacked model's thresholds on the ``rows`` the pair scorer re-read (:func:`_reread`)."""
    for r in rows:
        if (r["source_table"], r["source_id"], r["target_table"], r["target_id"]) in reread:
            r["_state"] = state.pair


def scorer_of(row: dict, state: ModelState) -> ModelState:
    """The model that scored a queued row: the stacked model where :func:`_mark_reread` set ``_state``, else
    ``state`` (stage 1 or the zero-shot scorer)."""
    return row.get("_state") or state


def _result_columns(con: duckdb.DuckDBPyConnection, matches: str) -> tuple[str, set[str]]:
    """(the quoted name of ``matches``, its lower-cased column names); a clear error where it is no match result."""
    q = quote_qualified(matches)
    try:
        cols = {d[0].lower() for d in con.execute(f"SELECT * FROM {q} LIMIT 0").description}
    except duckdb.CatalogException:
        raise PmatchError(f"pm_queue_review: no table or view {matches!r} (save a match_products result first, "
                          "e.g. CREATE TABLE matches AS SELECT * FROM match_products(...))") from None
    need = {"source_table", "source_id", "target_table", "target_id", "score", "decision"}
    if not need <= cols:
        raise PmatchError(f"pm_queue_review: {matches!r} needs the columns of a match_products result "
                          f"({', '.join(sorted(need))}); it has {', '.join(sorted(cols))}")
    return q, cols


def _rows_sql(q: str, cols: set[str], where: str) -> str:
    """A SELECT of the rows of result ``q`` (columns ``cols``) matching ``where``, columns as the queue reads them."""
    opt = ", ".join(o if o in cols else f"NULL AS {o}" for o in _OPTIONAL)
    opt += ", TRY_CAST(rank AS BIGINT) AS _rank" if "rank" in cols else ", NULL::BIGINT AS _rank"
    return (f"SELECT source_table, CAST(source_id AS VARCHAR) AS source_id, target_table, "
            f"CAST(target_id AS VARCHAR) AS target_id, CAST(score AS DOUBLE) AS score, decision, {opt} FROM {q} "
            f"WHERE score IS NOT NULL AND ({where})")


def _read_matches(con: duckdb.DuckDBPyConnection, matches: str, min_score: float | None = None) -> pa.Table:
    """The rows of ``matches`` that can be queued: review / accept pairs, pairs with a verdict, and (``min_score``,
    a certification sample's floor) every pair scoring at least that. (Its rejected pairs stay in DuckDB: a reject
    audit draws from them there, ``audit.draw_rejects``.)"""
    q, cols = _result_columns(con, matches)
    # only what can be queued leaves DuckDB: review / accept pairs, and pairs whose ids carry a verdict
    # (rechecks; table names and dedup order are checked exactly afterwards)
    labelled = ("OR (CAST(source_id AS VARCHAR), CAST(target_id AS VARCHAR)) IN (SELECT source_id, target_id FROM "
                "pm_labels_current UNION ALL SELECT target_id, source_id FROM pm_labels_current)"
                if has_labels(con) else "")
    floor = "" if min_score is None else " OR score >= " + repr(float(min_score))
    return con.sql(_rows_sql(q, cols, f"decision IN ('review', 'accept') {labelled}{floor}")).to_arrow_table()


def order_boundary(items: list[dict], state: ModelState) -> list[dict]:
    """Nearest the boundary first, spread across source offers (see the module docstring); an item's boundary is
    that of the model that scored it (``it["_state"]``, default ``state``)."""
    for it in items:
        st = scorer_of(it, state)
        it["_u"] = abs(it["score"] - st.boundary) / st.half_band
    items.sort(key=lambda it: (it["_u"], it["source_id"], it["target_id"]))
    seen: dict[tuple[str, str], int] = {}
    for it in items:
        src = (it["source_table"], it["source_id"])
        it["_p"] = it["_u"] + SPREAD_PENALTY * seen.get(src, 0)
        seen[src] = seen.get(src, 0) + 1
    items.sort(key=lambda it: it["_p"])
    # never the same source offer twice in a row when another one is waiting close behind (a look-ahead of
    # at most 8 entries, so the order stays nearest-first up to that)
    out: list[dict] = []
    held: deque[dict] = deque()

    def last() -> str | None:
        return out[-1]["source_id"] if out else None

    for it in items:
        while held and held[0]["source_id"] != last():
            out.append(held.popleft())
        if it["source_id"] == last() and len(held) < 8:
            held.append(it)
        else:
            out.append(it)
    while held:
        out.append(held.popleft())
    return out


def interleave(main: list[dict], extra: list[dict]) -> list[dict]:
    """``extra`` spread evenly through ``main`` (the first one after the first ``main`` item)."""
    if not extra:
        return list(main)
    if not main:
        return list(extra)
    out: list[dict] = []
    step = len(main) / len(extra)
    e = 0
    for i, it in enumerate(main):
        out.append(it)
        while e < len(extra) and i + 1 >= math.floor(e * step) + 1:
            out.append(extra[e])
            e += 1
    out.extend(extra[e:])
    return out


def _contradicts(verdict: str, decision: str | None) -> bool:
    return (verdict, decision) in (("match", "reject"), ("no_match", "accept"))


def recheck_priority(v: Verdict, score: float, st: ModelState, recheck_delta: float) -> float | None:
    """How strongly the model turned against verdict ``v`` now that it scores the pair ``score`` (``st``: the model
    that scored it), or None where that is no reason to ask again (see the module docstring)."""
    if v.score is None:  # no score was shown (a verdict written by hand): nothing to compare with
        return None
    if v.scale == st.scored_by:
        moved = score - v.score
        away = -moved if v.verdict == "match" else moved if v.verdict == "no_match" else abs(moved)
        return away if away >= recheck_delta else None
    if v.decision is None:  # neither the scale nor the decision shown is known: no way to tell a change
        return None
    if _contradicts(v.verdict, st.decide(score)) and not _contradicts(v.verdict, v.decision):
        return recheck_delta + abs(score - st.boundary)
    return None


def build_queue(rows: list[dict], verdicts: dict, state: ModelState, accept_sample: float = 0.05,
                recheck_delta: float = 0.3, seed: int = 0, certify: tuple[float, int] | None = None,
                audit: Callable[[set[PairKey]], list[dict]] | None = None, one_match: bool = False,
                rejected_among: Callable[[set[Offer]], dict[PairKey, float]] | None = None
                ) -> tuple[list[dict], dict]:
    """The ordered queue entries for the rows of a match result (no database, but for what ``audit`` reads).
    ``verdicts``: the verdicts in
    force, as :func:`labels.current_verdicts` returns them (plain ``(verdict, score, label_id)`` tuples are taken for
    verdicts of unknown scale); a row's ``_state`` is the model that scored it (default ``state``). ``certify``:
    (score floor, sample size) of a certification sample, drawn from the unlabelled rows scoring at least the floor
    (whatever their decision); the rest of them are queued as usual. ``audit``: where a reject audit is asked for,
    what draws it (``audit.draw_rejects`` over the result's rejected pairs, which stay in the database), given the
    pairs it must leave out: the labelled ones and those queued otherwise. ``one_match``: also queue the offers'
    conflicting auto-accepts; in a one-table result the links holding a cluster together against a pair known to
    differ are queued always (``accept_conflict``, :mod:`.conflicts`; ``rejected_among``: the result's rejected
    pairs among given offers with their scores, None: only verdicts say which pairs differ)."""
    boundary, accepts, recheck, pool, rejects, skipped = [], [], [], [], [], 0
    seen: set[PairKey] = set()
    for r in rows:
        eligible = certify is not None and r["score"] >= certify[0]
        if not verdicts and r["decision"] not in ("review", "accept") and not eligible:
            continue
        key = PairKey.of(r["source_table"], r["source_id"], r["target_table"], r["target_id"])
        if key in seen:
            continue
        seen.add(key)
        r["key"] = key
        st = scorer_of(r, state)
        r["scored_by"] = st.scored_by
        v = verdicts.get(key)
        if v is not None:
            prio = recheck_priority(v if isinstance(v, Verdict) else Verdict(*v), r["score"], st, recheck_delta)
            if prio is not None:
                r["reason"], r["_recheck"] = "recheck", prio
                # the match result's decision is the verdict's override; the reviewer is shown the model's own
                r["decision"] = st.decide(r["score"])
                recheck.append(r)
            else:
                skipped += 1
            continue
        if eligible:
            pool.append(r)
        else:
            _queue_as_usual(r, boundary, accepts, rejects)
    drawn: list[dict] = []
    if pool:
        pool.sort(key=lambda it: pair_unit(seed + 1, it["key"]))  # another draw than the accept sample's
        drawn, rest = pool[:max(0, certify[1])], pool[max(0, certify[1]):]
        for r in drawn:
            r["reason"] = "certify_sample"
        for r in rest:
            _queue_as_usual(r, boundary, accepts, rejects)
    n_sample = 0 if accept_sample <= 0 or not accepts else max(1, math.ceil(accept_sample * len(accepts)))
    accepts.sort(key=lambda it: pair_unit(seed, it["key"]))
    sample = accepts[:n_sample]
    for r in sample:  # one stratum: the accept band, as many pairs as were there to draw from
        r["stratum"], r["stratum_pairs"] = 0, len(accepts)
    drawn_rejects = []
    if audit is not None:
        _check_decided_by(state, boundary)
        drawn_rejects = audit((seen - {r["key"] for r in rejects}) | set(verdicts))
        for r in drawn_rejects:
            r["scored_by"] = scorer_of(r, state).scored_by
    conflicts = ((accept_conflicts(accepts, sample, verdicts) if one_match else [])
                 + cluster_conflicts(accepts, sample, verdicts, rejected_among))
    recheck.sort(key=lambda it: -it["_recheck"])
    ordered = recheck + drawn + conflicts + interleave(order_boundary(boundary, state), interleave(sample, drawn_rejects))
    return ordered, {"boundary": len(boundary), "accept_samples": len(sample), "rechecks": len(recheck),
                     "skipped_labelled": skipped, "certify_samples": len(drawn), "reject_samples": len(drawn_rejects),
                     "accept_conflicts": len(conflicts)}


def _check_decided_by(state: ModelState, band: list[dict], rejects: list[dict] = ()) -> None:
    """A reject audit samples the result's rejected pairs and records the review threshold in force as where they
    end (``audit.audit_stale`` compares it with the threshold of a later calibration): refuse a result whose
    unlabelled pairs were decided by another review threshold (matched before ``pmatch calibrate`` moved it), as the
    sample would then stand for another set of pairs than the one recorded. ``band``: the unlabelled pairs sent to
    review; ``rejects``: unlabelled rejected pairs scoring above some review threshold (:func:`_rejects_above`). (A
    reject scoring exactly the threshold is one with different GTINs, capped there, ``matching.gtin_rule``.)"""
    off = [r for r in rejects if r["score"] > scorer_of(r, state).review_threshold]
    off += [r for r in band if r["score"] < scorer_of(r, state).review_threshold]
    if off:
        r = off[0]
        raise PmatchError(
            f"pm_queue_review: audit_rejects: {len(off)} unlabelled pairs of the result were decided by another review "
            f"threshold than the one in force ({scorer_of(r, state).review_threshold:.4f}; e.g. "
            f"({r['source_id']!r}, {r['target_id']!r}) scoring {r['score']:.4f} was sent to {r['decision']}). Match "
            "again with the thresholds in force (match_products), save the result, and audit that")


def _rejects_above(con: duckdb.DuckDBPyConnection, q: str, cols: set[str], state: ModelState, verdicts: dict,
                   reread: set) -> list[dict]:
    """The unlabelled rejected pairs of result ``q`` scoring above the lowest review threshold of ``state``'s
    models, each marked with the model that scored it: the ones :func:`_check_decided_by` looks at (in a result
    decided by the thresholds in force, none, or the pairs between the two models' thresholds)."""
    low = min([state.review_threshold, *([state.pair.review_threshold] if state.pair is not None else [])])
    rows = con.sql(_rows_sql(q, cols, f"decision = 'reject' AND CAST(score AS DOUBLE) > {float(low)!r}")
                   ).to_arrow_table().to_pylist()
    rows = [r for r in rows if PairKey.of(r["source_table"], r["source_id"], r["target_table"], r["target_id"])
            not in verdicts]
    _mark_reread(rows, reread, state)
    return rows


def _queue_as_usual(r: dict, boundary: list[dict], accepts: list[dict], rejects: list[dict]) -> None:
    """A row no other rule took: the boundary list if the model sent it to review, the accepts (to sample from) if it
    accepted it, the rejects if it rejected it (not queued as such: a reject audit draws from all of the result's
    rejected pairs in the database, these among them)."""
    if r["decision"] == "review":
        r["reason"] = "boundary"
        boundary.append(r)
    elif r["decision"] == "accept":
        r["reason"] = "accept_sample"
        accepts.append(r)
    elif r["decision"] == "reject":
        rejects.append(r)


def queue_review(con: duckdb.DuckDBPyConnection, matches: str, queue: str = "default", *,
                 state: ModelState | None = None, accept_sample: float = 0.05, recheck_delta: float = 0.3,
                 seed: int = 0, certify: float | None = None, certify_above: float | None = None,
                 certify_size: int | None = None, audit_rejects: int = 0, one_match: bool = False,
                 ctx=None) -> QueueStats:  # noqa: ANN001 - ctx: a PmatchContext
    """Write the review queue ``queue`` for the saved match result ``matches`` into ``pm_review_queue``.

    ``state``: thresholds and name of the model that scored ``matches`` (default: read from the
    pmatch installation ``ctx`` or that of ``con``: the active matcher, else the target index's
    zero-shot thresholds). ``certify``: a target precision (e.g. 0.99) to queue a certification sample for, drawn
    above ``certify_above`` (default: see ``certify.py``), ``certify_size`` pairs (default: enough to certify it
    with one no-match among them). ``audit_rejects``: how many auto-rejected pairs to queue as a reject audit
    (``audit.py``; 0: none). ``one_match``: the result links each source offer to at most one target product, so
    a match given on the page answers the offer's other candidates no_match (``answers.py``; two tables only).
    """
    from . import certify as cert

    if not queue or not isinstance(queue, str):
        raise PmatchError("pm_queue_review: the queue name must be a non-empty string")
    if not 0 <= accept_sample <= 1:
        raise PmatchError(f"pm_queue_review: accept_sample must be in [0, 1], got {accept_sample}")
    if audit_rejects is None or int(audit_rejects) != audit_rejects or audit_rejects < 0:
        raise PmatchError(f"pm_queue_review: audit_rejects must be a whole number >= 0, got {audit_rejects}")
    if certify is None and (certify_above is not None or certify_size is not None):
        raise PmatchError("pm_queue_review: certify_above and certify_size need certify (the target precision)")
    if certify is not None:
        certify = cert.check_target(certify)
        if certify_size is not None and int(certify_size) < 1:
            raise PmatchError(f"pm_queue_review: certify_size must be at least 1, got {certify_size}")
        if certify_above is not None and not math.isfinite(float(certify_above)):
            raise PmatchError(f"pm_queue_review: certify_above must be a finite score, got {certify_above}")
    data = _read_matches(con, matches, certify_above if certify is not None else None).to_pylist()
    if state is None:
        from ..api import context_of

        state = model_state(ctx or context_of(con), data[0]["target_table"] if data else matches)
    reread = _reread(con, ctx, matches, state) if data or audit_rejects else set()
    _mark_reread(data, reread, state)
    plan = None
    if certify is not None and data:  # (an empty result: nothing to draw; certify_above stays NULL)
        above = (cert.default_floor(np.array([r["score"] for r in data], dtype=np.float64),
                                    state.scored_by == "zero-shot", state.accept_threshold, certify)
                 if certify_above is None else float(certify_above))
        plan = (above, int(certify_size) if certify_size is not None else cert.reviews_needed(certify, 1))
    if one_match and any(table_key(r["source_table"]) == table_key(r["target_table"]) for r in data):
        raise PmatchError("pm_queue_review: one_match is for a result linking two tables; in a one-table (dedup) "
                          "result an offer can have several duplicates")
    tables = {table_key(r[c]) for r in data for c in ("source_table", "target_table")}
    ensure_labels(con)
    verdicts = current_verdicts(con, tables)
    conflicts = offers_linked_twice(data, verdicts) if one_match else None
    audit = None
    q, cols = _result_columns(con, matches)
    if audit_rejects:
        _check_decided_by(state, [], _rejects_above(con, q, cols, state, verdicts, reread))

        def audit(exclude: set[PairKey]) -> list[dict]:
            drawn = draw_rejects(con, _rows_sql(q, cols, "decision = 'reject'"), int(audit_rejects), seed + 2,
                                 exclude)
            _mark_reread(drawn, reread, state)
            return drawn

    def rejected_among(offers: set[Offer]) -> dict[PairKey, float]:  # one table: the result's rejects in clusters
        con.register("_pm_cluster_ids", pa.table({"id": pa.array(sorted({i for _, i in offers}), pa.string())}))
        try:
            inside = "CAST({} AS VARCHAR) IN (SELECT id FROM _pm_cluster_ids)"
            rows = con.sql(_rows_sql(q, cols, f"decision = 'reject' AND {inside.format('source_id')} AND "
                                              f"{inside.format('target_id')}")).fetchall()
        finally:
            con.unregister("_pm_cluster_ids")
        return {PairKey.of(*r[:4]): float(r[4]) for r in rows}

    ordered, counts = build_queue(data, verdicts, state, accept_sample, recheck_delta, seed, plan, audit, one_match,
                                  rejected_among)
    context = candidate_context(con, q, "rank" in cols, ordered)
    before = max_label_id(con)
    out = pa.table({
        "queue": [queue] * len(ordered),
        "position": list(range(1, len(ordered) + 1)),
        "source_ref": [it["source_table"] for it in ordered],
        "source_table": [it["key"].source_table for it in ordered],
        "source_id": [it["key"].source_id for it in ordered],  # as pm_labels has it (dedup: smaller id first)
        "target_ref": [it["target_table"] for it in ordered],
        "target_table": [it["key"].target_table for it in ordered],
        "target_id": [it["key"].target_id for it in ordered],
        **{c: [it[c] for it in ordered] for c in ("score", *_OPTIONAL, "decision", "reason")},
        "matcher": [state.matcher] * len(ordered),
        "scored_by": [it["scored_by"] for it in ordered],
        "accept_threshold": pa.array([finite_or_none(scorer_of(it, state).accept_threshold) for it in ordered],
                                     type=pa.float64()),
        "review_threshold": [scorer_of(it, state).review_threshold for it in ordered],
        "labels_before": [before] * len(ordered),
        "certify_above": pa.array([plan[0] if it["reason"] == "certify_sample" else None for it in ordered],
                                  type=pa.float64()),
        "certify_target": pa.array([certify if it["reason"] == "certify_sample" else None for it in ordered],
                                   type=pa.float64()),
        "stratum": pa.array([it.get("stratum") for it in ordered], type=pa.int32()),
        "stratum_pairs": pa.array([it.get("stratum_pairs") for it in ordered], type=pa.int64()),
        "alternatives": pa.array(context, type=pa.string()),
        "one_match": pa.array([bool(one_match)] * len(ordered), type=pa.bool_()),
        "matches": pa.array([matches] * len(ordered), type=pa.string()),
    }).cast(pa.schema([
        ("queue", pa.string()), ("position", pa.int32()), ("source_ref", pa.string()), ("source_table", pa.string()),
        ("source_id", pa.string()), ("target_ref", pa.string()), ("target_table", pa.string()),
        ("target_id", pa.string()), ("score", pa.float64()), ("text_score", pa.float64()),
        ("image_score", pa.float64()), ("lexical_score", pa.float64()), ("identifier_match", pa.bool_()),
        ("price_ratio", pa.float64()), ("decision", pa.string()), ("reason", pa.string()), ("matcher", pa.string()),
        ("scored_by", pa.string()), ("accept_threshold", pa.float64()), ("review_threshold", pa.float64()), ("labels_before", pa.int64()),
        ("certify_above", pa.float64()), ("certify_target", pa.float64()), ("stratum", pa.int32()),
        ("stratum_pairs", pa.int64()), ("alternatives", pa.string()), ("one_match", pa.bool_()),
        ("matches", pa.string())]))
    con.execute(QUEUE_DDL)
    for col, typ in (("scored_by", "VARCHAR"), ("certify_above", "DOUBLE"), ("certify_target", "DOUBLE"),
                     ("stratum", "INTEGER"), ("stratum_pairs", "BIGINT"),
                     ("alternatives", "VARCHAR"), ("one_match", "BOOLEAN"),
                     ("matches", "VARCHAR")):  # a queue table of an earlier version
        if not has_column(con, "pm_review_queue", col):
            con.execute(f"ALTER TABLE pm_review_queue ADD COLUMN IF NOT EXISTS {col} {typ}")
    con.register("_pm_new_queue", out)
    try:
        with transaction(con):
            con.execute("DELETE FROM pm_review_queue WHERE queue = ?", [queue])
            con.execute("INSERT INTO pm_review_queue BY NAME SELECT * FROM _pm_new_queue")
    finally:
        con.unregister("_pm_new_queue")
    return QueueStats(queue, len(ordered), **counts, certify_above=plan[0] if plan else None,
                      one_match_conflicts=None if conflicts is None else len(conflicts),
                      conflict_examples=tuple(conflicts[:3]) if conflicts else ())


_ANSWERED = f"EXISTS (SELECT 1 FROM pm_labels_current l WHERE {ANSWERS_ENTRY})"


def next_entry(con: duckdb.DuckDBPyConnection, queue: str) -> dict | None:
    """The first unanswered entry of ``queue`` (None when the queue is done)."""
    rel = con.execute(f"SELECT * FROM pm_review_queue q WHERE queue = ? AND NOT {_ANSWERED} "
                      "ORDER BY position LIMIT 1", [queue])
    cols = [d[0] for d in rel.description]
    row = rel.fetchall()
    return dict(zip(cols, row[0], strict=True)) if row else None


def entry_at(con: duckdb.DuckDBPyConnection, queue: str, position: int) -> dict | None:
    """The queue entry at ``position``."""
    rel = con.execute("SELECT * FROM pm_review_queue WHERE queue = ? AND position = ?", [queue, position])
    cols = [d[0] for d in rel.description]
    row = rel.fetchall()
    return dict(zip(cols, row[0], strict=True)) if row else None


def progress(con: duckdb.DuckDBPyConnection, queue: str) -> tuple[int, int]:
    """(answered, total) entries of ``queue``."""
    done, total = con.execute(f"SELECT count(*) FILTER (WHERE {_ANSWERED}), count(*) FROM pm_review_queue q "
                              "WHERE queue = ?", [queue]).fetchall()[0]
    return int(done), int(total)


def has_queue_table(con: duckdb.DuckDBPyConnection) -> bool:
    """Does the database hold ``pm_review_queue``?"""
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'pm_review_queue' "
                            "AND database_name = current_database()").fetchall()[0][0])
