"""``pmatch calibrate``: re-pick the accept / review thresholds from reviewed pairs.

Reviewed pairs are exactly the held-out data thresholds need: people answered them, the model never
trained on their verdicts. The accept threshold is the lowest score whose reviewed pairs above it have
a one-sided 95% Wilson lower bound on precision ≥ the target (the rule training uses, decision.py). The review
threshold auto-rejects at most ``max_recall_loss`` of *all* matches: the review band is reviewed in full, but the
pairs under the review threshold never are, so what they already cost comes from a reject audit
(``pm_queue_review(audit_rejects := N)``, ``audit.py``: then the cut is taken over the whole result, each sampled pair
weighted by how many it stands for, and may fall below the old threshold), else from the share recorded with the
thresholds (training's validation pairs, or an earlier calibration); where neither exists (zero-shot defaults) the
review threshold stays. It rises no higher than the lowest queued boundary pair nobody has answered
(:func:`unreviewed_floor`).

Only verdicts given on scores of the model in force count (``pm_labels.matcher``): another model's
scores are on another scale. A matcher with a pair scorer shows two scales itself (re-read pairs carry the stacked
model's score, the others stage 1's; ``pm_labels.scored_by`` says which, but only for verdicts given since it
exists): its reviewed pairs are scored again through ``score_pairs``, re-read by the pair scorer (which also gives
stage 1's own score of each), and each model's thresholds are picked from its own scores (where a reviewed pair's table is gone, its shown score
stands in for the model ``scored_by`` names). Caveat: the queue asks about the whole review band but only a sample of
the auto-accepted pairs, so reviewed pairs under-represent the high scores; as those are mostly
matches, the precision estimate is on the cautious side. Where nothing is auto-accepted yet, few reviewed pairs lie
where an accept threshold could go: a certification sample (``pm_queue_review(certify := 0.99)``, ``certify.py``)
puts a uniform random sample of the top pairs first in the queue, and calibrate reports how far its review has got.

Where the new thresholds go: the active trained matcher gets a new version (a copy whose decision.json
and manifest carry the new thresholds and where they came from; ``pmatch models rollback`` undoes it);
without a trained matcher they are written into the target index's metadata (the zero-shot thresholds).
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from dataclasses import asdict, dataclass

import numpy as np

from ..decision import choose_thresholds, wilson_lower
from ..errors import PmatchError
from ..staging import new_staging_dir
from .audit import AuditWeights, audit_stale, audit_weights, latest_audit
from .certify import certify_status
from .labels import FOUND, has_column, has_labels, matcher_in, matcher_names, scored_by_sql, table_key
from .queue import ModelState, finite_or_none, model_state
from .rescore import score_again_both


class CalibrationError(PmatchError):
    """Not enough reviewed pairs to pick thresholds from."""


@dataclass
class Calibration:
    """The outcome of one calibration (what ``pmatch calibrate`` prints)."""

    matcher: str
    target: str
    reviewed: int
    matches: int
    ignored_other_model: int
    old_accept: float | None
    old_review: float
    accept: float | None  # None: no threshold certifies the target precision
    review: float
    target_precision: float
    accept_precision: float | None  # on the reviewed pairs scoring >= accept
    accept_lower_bound: float | None  # one-sided 95% Wilson lower bound of that precision
    accept_reviewed: int
    applied: str | None = None  # where the thresholds were written (None: dry run / nothing certified / unchanged)
    #: the certified thresholds are the ones in force already: nothing is written (no new matcher version)
    unchanged: bool = False
    #: a matcher with a pair scorer: reviewed pairs whose tables could not be read any more, so their scores were
    #: taken as shown, each for the model that scored it (``pm_labels.scored_by``), instead of scored again
    scores_as_shown: int = 0
    #: a matcher with a pair scorer: the stacked model's thresholds, picked from the reviewed pairs re-read by it
    #: (the fields above are then stage 1's, from the same pairs scored by stage 1 alone)
    pair: dict | None = None
    #: the certification sample queued for this matcher and target (``pm_queue_review(certify := ...)``), how far its
    #: review has got (:class:`certify.CertifyStatus` as a dict); None where none was queued
    certify: dict | None = None
    #: the review threshold would have risen higher but was held at the lowest queued band pair nobody has answered
    review_held: bool = False
    #: estimated share of all matches auto-rejected at the new review threshold (None: not known), from what, and (a
    #: reject audit's) its 95 % upper bound
    recall_loss: float | None = None
    recall_loss_from: str | None = None
    recall_loss_upper: float | None = None
    #: why the review threshold stayed where it was, where the rule kept it (None: it was picked)
    review_kept: str | None = None
    #: the reject audit the review threshold was picked with (:class:`audit.RejectAudit` as a dict), or None
    reject_audit: dict | None = None
    #: why the latest reject audit was not used (it was drawn below another review threshold), or None
    reject_audit_stale: str | None = None
    #: the matcher versions whose verdicts counted: ``matcher`` and the versions with the same scores (``pmatch
    #: calibrate``'s copies and the version they copy)
    same_scores: list[str] | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def reviewed_pairs(con, target: str, matcher: str | tuple[str, ...]  # noqa: ANN001
                   ) -> tuple[list[tuple[str, str, str, str]], np.ndarray, np.ndarray, int, list[str | None],
                              np.ndarray]:
    """(pairs as (source table, source id, target table, target id), scores shown, 1 = match / 0 = no_match,
    verdicts ignored because another model scored them (``matcher``: the names whose scores count,
    ``ModelState.verdicts_from``), which model scored each (``pm_labels.scored_by``), True
    where the pair was a certification sample's (``pm_labels.reason``))."""
    if not has_labels(con):
        return [], np.zeros(0), np.zeros(0), 0, [], np.zeros(0, dtype=bool)
    rows = con.execute(
        f"SELECT source_table, source_id, target_table, target_id, score, verdict, matcher, {scored_by_sql(con)}, "
        "coalesce(reason = 'certify_sample', false) "
        "FROM pm_labels_current WHERE verdict IN ('match', 'no_match') AND score IS NOT NULL "
        # verdicts given from an offer's list of other candidates on pairs no queue entry waited for (a pick, a
        # one-match queue's implied no_match, "none of these") are no sample of the scores: found matches alone
        # would overstate the precision of a score range, their siblings alone understate it
        f"AND coalesce(reason NOT IN ({', '.join(repr(r) for r in FOUND)}), true) "
        "AND (target_table = ? OR source_table = ?) ORDER BY label_id", [table_key(target), table_key(target)]
    ).fetchall()
    same = set(matcher_names(matcher))
    keep = [r for r in rows if r[6] in same]
    s = np.array([r[4] for r in keep], dtype=np.float64)
    y = np.array([r[5] == "match" for r in keep], dtype=np.float64)
    return ([tuple(r[:4]) for r in keep], s, y, len(rows) - len(keep), [r[7] for r in keep],
            np.array([bool(r[8]) for r in keep], dtype=bool))


def unreviewed_floor(con, target: str, matcher: str | tuple[str, ...]) -> dict[str, float]:  # noqa: ANN001
    """Per score scale (``stage1``, which includes zero-shot, and ``pair_scorer``), the lowest score of a pair queued as
    ``boundary`` for ``matcher``'s scores against ``target`` that nobody has answered ``match`` or ``no_match``; a scale
    whose queued boundary pairs are all answered (or that has none queued) is left out.

    Below that score the review band was reviewed completely, so only up to there can calibrate tell how many
    matches a higher review threshold would auto-reject; above it the reviews are the queue's window around the
    boundary, which says nothing about the matches under the window."""
    if not has_column(con, "pm_review_queue", "reason") or not has_labels(con):
        return {}
    key, (by_matcher, names) = table_key(target), matcher_in("q.matcher", matcher)
    scale = "coalesce(q.scored_by, 'stage1')" if has_column(con, "pm_review_queue", "scored_by") else "'stage1'"
    rows = con.execute(
        f"SELECT CASE WHEN {scale} = 'pair_scorer' THEN 'pair_scorer' ELSE 'stage1' END AS scale, min(q.score) "
        f"FROM pm_review_queue q WHERE q.reason = 'boundary' AND {by_matcher} "
        "AND q.score IS NOT NULL "
        "AND (q.target_table = ? OR q.source_table = ?) AND NOT EXISTS (SELECT 1 FROM pm_labels_current l WHERE "
        "l.source_table = q.source_table AND l.source_id = q.source_id AND l.target_table = q.target_table AND "
        "l.target_id = q.target_id AND l.verdict IN ('match', 'no_match')) GROUP BY ALL",
        [*names, key, key]).fetchall()
    return {sc: float(v) for sc, v in rows}


def rescore_reviewed(con, ctx, pairs: list[tuple[str, str, str, str]], shown: np.ndarray,  # noqa: ANN001
                     scored_by: list[str | None]) -> tuple[np.ndarray, np.ndarray, int]:
    """(stage-1 scores, stacked scores, pairs taken as shown) of reviewed pairs, through ``score_pairs`` with every
    pair re-read by the active matcher's pair scorer (one pass gives both); NaN where a model has no score for a pair.

    Where the pairs of one (source table, target table) cannot be scored again (a table dropped since the
    review, an offer deleted), their shown scores stand in, each for the model that scored it
    (``pm_labels.scored_by``; NaN for the other model). A verdict that does not say which model scored it
    (given before ``scored_by`` existed) makes that an error naming the table: its score's scale is unknown."""
    why = ("calibrate: the active matcher has a pair scorer, so the reviewed pairs must be scored again (the "
           "scores shown mix stage 1's and the stacked model's scales)")
    stage1, stacked, as_shown = np.full(len(pairs), np.nan), np.full(len(pairs), np.nan), 0
    groups: dict[tuple[str, str], list[int]] = {}
    for i, (st, _, tt, _) in enumerate(pairs):
        groups.setdefault((st, tt), []).append(i)
    for idx in groups.values():
        sub = [pairs[i] for i in idx]
        try:
            stage1[idx], stacked[idx] = score_again_both(con, ctx, sub, why)
        except PmatchError as e:
            unknown = sum(scored_by[i] not in ("stage1", "pair_scorer") for i in idx)
            if unknown:
                raise CalibrationError(
                    f"{e}; and {unknown} of those verdicts do not say which model scored them (given before "
                    "pm_labels.scored_by existed), so their shown scores cannot stand in") from None
            for i in idx:
                (stage1 if scored_by[i] == "stage1" else stacked)[i] = shown[i]
            as_shown += len(idx)
    return stage1, stacked, as_shown


def calibrate(con, target: str, target_precision: float | None = None, max_recall_loss: float = 0.02,  # noqa: ANN001
              apply: bool = True, min_matches: int = 5, ctx=None) -> Calibration:  # noqa: ANN001
    """Pick thresholds for matching against ``target`` from the reviewed pairs; write them unless ``apply``
    is False or nothing certified changes (see :func:`new_thresholds`). ``target_precision`` by default: the
    target a queued certification sample was drawn for (``certify_target``), else 0.99."""
    from ..api import context_of

    ctx = ctx or context_of(con)
    state = model_state(ctx, target)
    status = certify_status(con, matcher=state.verdicts_from, target=target)
    if target_precision is None:
        target_precision = status.target if status is not None and status.target is not None else 0.99
    pairs, s, y, ignored, scored_by, sampled = reviewed_pairs(con, target, state.verdicts_from)
    if int(y.sum()) < min_matches:
        raise CalibrationError(
            f"calibrate: {len(y)} reviewed pairs ({int(y.sum())} matches) scored by {state.matcher} against "
            f"{target!r}; need at least {min_matches} matches. Review more pairs: pmatch review "
            f"<db>{f' ({ignored} verdicts were given on another model' + chr(39) + 's scores)' if ignored else ''}")
    stacked, as_shown = None, 0
    if state.pair is not None:  # two scales in the scores shown: each model's own scores of every reviewed pair
        s, stacked, as_shown = rescore_reviewed(con, ctx, pairs, s, scored_by)
    floor = unreviewed_floor(con, target, state.verdicts_from)
    audit = latest_audit(con, state.verdicts_from, target)
    stale = audit_stale(con, audit, state) if audit is not None else None
    # each reviewed pair's weight: how many pairs of the audited result it stands for
    aw = audit_weights(con, audit.queue, pairs) if audit is not None and audit.complete and not stale else None
    picked = _pick(s, y, target_precision, max_recall_loss, ~sampled, state, floor.get("stage1"), aw)
    cal = Calibration(
        matcher=state.matcher, target=target, reviewed=len(y), matches=int(y.sum()), ignored_other_model=ignored,
        old_accept=finite_or_none(state.accept_threshold), old_review=state.review_threshold, accept=picked.accept,
        review=picked.review, target_precision=target_precision, accept_precision=picked.precision,
        accept_lower_bound=picked.lower_bound, accept_reviewed=picked.n_above, scores_as_shown=as_shown,
        review_held=picked.held, recall_loss=picked.recall_loss, recall_loss_from=picked.recall_loss_from,
        recall_loss_upper=picked.recall_loss_upper,
        review_kept=picked.kept, reject_audit=audit.as_dict() if audit is not None else None,
        reject_audit_stale=stale, same_scores=list(state.verdicts_from))
    if state.pair is not None and stacked is not None:
        pp = _pick(stacked, y, target_precision, max_recall_loss, ~sampled, state.pair, floor.get("pair_scorer"), aw)
        cal.pair = {"accept": pp.accept, "review": pp.review, "old_accept": finite_or_none(state.pair.accept_threshold),
                    "old_review": state.pair.review_threshold, "accept_precision": pp.precision,
                    "accept_lower_bound": pp.lower_bound, "accept_reviewed": pp.n_above, "review_held": pp.held,
                    "recall_loss": pp.recall_loss, "recall_loss_from": pp.recall_loss_from,
                    "recall_loss_upper": pp.recall_loss_upper,
                    "review_kept": pp.kept}
    cal.certify = status.as_dict() if status is not None else None
    certified = new_thresholds(cal.as_dict()) is not None or (
        cal.pair is not None and new_thresholds(cal.pair) is not None)
    cal.unchanged = certified and not _changes_thresholds(cal)
    if apply and certified and not cal.unchanged:
        cal.applied = _apply(ctx, target, state, cal)
    return cal


def _changes_thresholds(cal: Calibration) -> bool:
    """Whether writing ``cal`` would change a threshold in force (a calibration that certifies exactly the
    thresholds in force writes no new matcher version: rerunning calibrate on the same verdicts, or on a few more
    that move nothing, must not pile up identical copies)."""
    parts = [cal.as_dict(), *([cal.pair] if cal.pair is not None else [])]
    return any((new := new_thresholds(p)) is not None and tuple(map(float, new)) != tuple(map(float, _in_force(p)))
               for p in parts)


def _in_force(part: dict) -> tuple[float, float]:
    """(accept, review) one model had in force, from its part of a calibration (a ``Calibration`` as a dict, or its
    ``pair`` dict); accept is inf where it had none."""
    return (float("inf") if part["old_accept"] is None else part["old_accept"]), part["old_review"]


@dataclass
class _Picked:
    accept: float | None  # None: no threshold certifies the target
    review: float
    precision: float | None  # of the reviewed pairs above accept
    lower_bound: float | None
    n_above: int
    held: bool  # held down by the lowest unanswered queued band pair
    recall_loss: float | None
    recall_loss_from: str | None
    kept: str | None  # why the review threshold stayed (None: picked)
    recall_loss_upper: float | None = None  # 95 % upper bound of recall_loss (a reject audit's)


def weighted_cut(s: np.ndarray, y: np.ndarray, w: np.ndarray, budget: float) -> float | None:
    """The highest score ``t`` among ``s`` such that the weighted matches scoring below ``t`` are at most ``budget``
    of all weighted matches (None: no match)."""
    order = np.argsort(-s, kind="stable")
    s, m = s[order], (y * w)[order]
    total = m.sum()
    if total <= 0:
        return None
    lost = total - np.cumsum(m)
    last_of_value = np.r_[s[1:] != s[:-1], True]
    ok = np.flatnonzero((lost <= budget * total + 1e-12) & last_of_value)
    return float(s[ok[0]])


def _pick(s: np.ndarray, y: np.ndarray, target_precision: float, max_recall_loss: float, for_review: np.ndarray,
          state: ModelState, unreviewed: float | None = None, audit: AuditWeights | None = None) -> _Picked:
    """The thresholds of one model (``state``: its thresholds in force and recorded recall loss) from the reviewed
    pairs with a score (NaN: the model has none for the pair).

    Accept: the usual rule on every reviewed pair. Review: from the pairs ``for_review`` only (a certification sample
    is drawn from the top scores alone, so its matches would pull the cut upwards), so that at most
    ``max_recall_loss`` of all matches score below it:

    * ``audit`` given (a complete reject audit, :mod:`audit`): the weighted matches of the whole result, the
      rejected ones included. Where their estimate says
      more than ``max_recall_loss`` is lost already, the cut over them lowers the threshold; where even the upper
      bound says less, the band may lose what is left of the budget after that bound; in between it stays;
    * else from ``state.recall_loss`` (the share already below the old threshold; its upper bound
      ``state.recall_loss_upper`` where one is recorded, as the audit's bound is used above): the matches above it may
      lose ``1 - (1 - max_recall_loss) / (1 - recall_loss)`` of themselves; nothing where that share is unknown or
      spent.

    It rises no higher than ``unreviewed`` (:func:`unreviewed_floor`; or the old threshold where that is higher):
    nobody has looked at the queued band pairs from there up, so how many matches a higher review threshold would
    auto-reject is not known."""
    scored = np.isfinite(s)
    s, y, for_review = s[scored], y[scored], for_review[scored]
    old = state.review_threshold
    accept, _, _ = choose_thresholds(s, y, target_precision, max_recall_loss)
    rs, ry = s[for_review], y[for_review]
    aw = audit.take(scored).take(for_review) if audit is not None else None
    rw = aw.w if aw is not None else np.ones(len(rs))
    kept, loss_from = None, state.recall_loss_from
    total = float((ry * rw).sum())
    audited = aw is not None and total > 0
    ys = aw.smoothed(rs, ry) if audited else ry  # the audit's matches spread over the scores around them

    def loss_at(t: float) -> tuple[float | None, float | None]:
        """(estimate, 95 % upper bound) of the share of all matches scoring below ``t``."""
        if audited:
            below, extra = float((ys * rw)[rs < t].sum()), aw.excess_below(rs, ry, t)
            return below / total, (below + extra) / (total + extra)
        if state.recall_loss is None:
            return None, None
        up = rs >= old
        lost = float((ry * rw)[up & (rs < t)].sum() / (ry * rw)[up].sum()) if (ry * rw)[up].sum() else 0.0
        hi = state.recall_loss_upper
        return state.recall_loss + (1 - state.recall_loss) * lost, None if hi is None else hi + (1 - hi) * lost

    if audited:
        loss_from = "the reject audit"
        est, upper = loss_at(old)
        if est > max_recall_loss:  # more is lost already than the budget allows: lower it (more pairs to review)
            review = weighted_cut(rs, ys, rw, max_recall_loss)
        elif upper <= max_recall_loss:  # even the bound leaves room: the band may lose what is left
            up = rs >= old
            budget = 1 - (1 - max_recall_loss) / (1 - upper)
            review = weighted_cut(rs[up], ry[up], rw[up], budget) if budget > 0 else None
            review = old if review is None else max(review, old)
        else:
            review, kept = old, (f"the reject audit puts the matches auto-rejected already at about {est:.1%}, but "
                                 f"cannot rule out {upper:.1%} (95 % upper bound) against max_recall_loss "
                                 f"{max_recall_loss:.1%}: audit more rejects to let it rise")
    elif state.recall_loss is None:
        review, kept = old, ("the matches it already auto-rejects were never measured: queue a reject audit "
                             "(pm_queue_review(audit_rejects := 200), pmatch review --audit-rejects 200)")
    else:  # as with an audit, the band may lose only what the recorded share's upper bound leaves, where recorded
        spent = state.recall_loss if state.recall_loss_upper is None else state.recall_loss_upper
        budget = 1 - (1 - max_recall_loss) / (1 - spent)
        up = rs >= old
        review = weighted_cut(rs[up], ry[up], rw[up], budget) if budget > 0 else None
        if review is None and budget <= 0:
            kept = f"{state.recall_loss:.1%} of the matches are auto-rejected already ({state.recall_loss_from}"
            kept += (f"; 95 % upper bound {state.recall_loss_upper:.1%}" if state.recall_loss_upper is not None
                     else "")
            kept += f"), against max_recall_loss {max_recall_loss:.1%}"
        review = old if review is None else max(review, old)
    review = min(review, accept)
    held = unreviewed is not None and review > max(unreviewed, old)
    if held:
        review = max(unreviewed, old)
    above = s >= accept
    n_above, m_above = int(above.sum()), int(y[above].sum())
    lb = float(wilson_lower(np.array([m_above]), np.array([n_above]))[0]) if n_above else None
    loss, loss_upper = loss_at(review)
    return _Picked(finite_or_none(accept), float(review), (m_above / n_above) if n_above else None, lb, n_above, held,
                   loss, loss_from, kept, loss_upper)


def new_thresholds(part: dict) -> tuple[float, float] | None:
    """(accept, review) to write for one model's part of a calibration (a ``Calibration`` as a dict, or its ``pair``
    dict), or None to keep the model's thresholds: a certified accept threshold brings its review threshold; without
    one, a review threshold a reject audit lowered is written alone (it only sends more pairs to review)."""
    if part["accept"] is not None:
        return part["accept"], part["review"]
    if part.get("recall_loss_from") == "the reject audit" and part["review"] < part["old_review"]:
        return _in_force(part)[0], part["review"]
    return None


def review_band_counts(con, ctx, matches: str, cal: Calibration) -> tuple[int, int]:  # noqa: ANN001
    """Pairs of the saved result ``matches`` in the review band before and after ``cal`` (each model's band;
    with a pair scorer, the pairs it re-read are held to the stacked model's; a model whose new accept threshold
    is not certified keeps its thresholds, as ``_apply`` does)."""
    from ..sqlident import quote_qualified
    from .queue import model_state
    from .rescore import reread_in_result, result_pairs

    whole_cal = cal.as_dict()
    old1 = _in_force(whole_cal)[::-1]  # bands are (review, accept)
    new1 = _band_of(new_thresholds(whole_cal), old1)
    old2 = new2 = old1
    if cal.pair is not None:
        old2 = _in_force(cal.pair)[::-1]
        new2 = _band_of(new_thresholds(cal.pair), old2)
    q = quote_qualified(matches)
    cols = {d[0].lower() for d in con.execute(f"SELECT * FROM {q} LIMIT 0").description}
    whole = "scored_by" in cols and not con.execute(
        f"SELECT count(*) FROM {q} WHERE score IS NOT NULL AND scored_by IS NULL").fetchall()[0][0]
    if cal.pair is None or whole:  # counted in DuckDB: the scale of each pair is in the result (or there is one)
        stacked = "scored_by = 'pair_scorer'" if cal.pair is not None else "false"
        inside = (f"CASE WHEN {stacked} THEN sc >= ? AND sc < ? ELSE sc >= ? AND sc < ? END")
        got = con.execute(
            f"SELECT count(*) FILTER (WHERE {inside}), count(*) FILTER (WHERE {inside}) FROM (SELECT *, "
            f"CAST(score AS DOUBLE) AS sc FROM {q} WHERE score IS NOT NULL)", [*old2, *old1, *new2, *new1]
        ).fetchall()[0]
        return int(got[0]), int(got[1])
    # a result saved before match_products had scored_by: which pairs the pair scorer re-read is found by scoring
    # the result again, in Python
    rows = result_pairs(con, matches)
    reread = reread_in_result(con, ctx, rows, model_state(ctx, cal.target).top_m,
                              f"calibrate --matches: which pairs of {matches!r} the pair scorer re-read")

    def band(stage1: tuple[float, float], stacked: tuple[float, float]) -> int:
        return sum((lo <= r[4] < hi) for r in rows for lo, hi in [stacked if r[:4] in reread else stage1])

    return band(old1, old2), band(new1, new2)


def _band_of(new: tuple[float, float] | None, old: tuple[float, float]) -> tuple[float, float]:
    return old if new is None else (new[1], new[0])


def _apply(ctx, target: str, state: ModelState, cal: Calibration) -> str:  # noqa: ANN001
    source = {"kind": "pm_labels", "reviewed_pairs": cal.reviewed, "matches": cal.matches,
              "target_precision": cal.target_precision, "accept_lower_bound": cal.accept_lower_bound,
              "recall_loss": cal.recall_loss, "recall_loss_from": cal.recall_loss_from,
              "recall_loss_upper": cal.recall_loss_upper,
              "previous": {"accept": cal.old_accept, "review": cal.old_review},
              **({"pair_scorer": {**cal.pair, "rescored": "score_pairs, re-read (stage 1's own score from the same pass)"}} if cal.pair else {}),
              "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    if state.matcher == "zero-shot":
        from ..sqlident import index_name_for
        from ..store import META_KEY, OfferIndex

        idx = OfferIndex(ctx.index_root, index_name_for(target))
        meta = idx.metadata()
        accept, review = new_thresholds(cal.as_dict())
        meta["fusion"] = {**meta.get("fusion", {}), "accept_threshold": accept,
                          "review_threshold": review}
        meta["calibration"] = source
        idx.table().to_lance().update_schema_metadata({META_KEY.decode(): json.dumps(meta)})
        return f"index {idx.name} (zero-shot thresholds)"
    return _new_matcher_version(ctx, state, cal, source)


def _new_matcher_version(ctx, state: ModelState, cal: Calibration, source: dict) -> str:  # noqa: ANN001
    from ..bundles import write_manifest
    from ..matchers import activate, load_matcher, matchers_dir, next_version

    name, version = state.matcher.split("/", 1)
    home = ctx.settings.home
    old = matchers_dir(home) / name / version
    new_version = next_version(name, home)
    final = old.parent / new_version
    tmp = new_staging_dir(old.parent, f".{new_version}.")
    try:
        for p in old.iterdir():
            if p.is_file() and p.name != "manifest.json":
                shutil.copy2(p, tmp / p.name)
        # each model takes the thresholds its own scores certified; one whose reviews certify none keeps its own
        thresholds = {}
        for fname, got in (("decision.json", new_thresholds(cal.as_dict())),
                           ("pair_decision.json", None if cal.pair is None else new_thresholds(cal.pair))):
            model = json.loads((old / fname).read_text()) if (old / fname).is_file() else None
            if model is None:
                continue
            if got is not None:
                model["accept_threshold"], model["review_threshold"] = got
                model.setdefault("info", {})["calibration"] = source
                (tmp / fname).write_text(json.dumps(model, indent=1))
            thresholds[fname] = {"accept": model["accept_threshold"], "review": model["review_threshold"]}
        manifest = json.loads((old / "manifest.json").read_text())
        manifest.pop("files", None)
        manifest.update(version=new_version, parent=version,
                        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                        thresholds=thresholds["decision.json"], calibration=source)
        write_manifest(tmp, manifest)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load_matcher(name, new_version, home)  # verifies what was written
    activate(name, new_version, home)
    return f"matcher {name} {new_version} (copy of {version} with the new thresholds; activated)"
