"""Answering queue entries: one verdict on the pair shown, a pick (the shown pair is not the offer's match, one of
its other candidates is: two verdicts in one transaction), and undoing the last answer as a whole.

A pick is what a reviewer does when the page's list of the offer's other candidates (``alternatives.py``) holds
its match: on Abt-Buy's zero-shot queue 98 % of the non-matching boundary entries have it listed. Without a pick
that match is found only if the queue happens to hold it too; with one it is labelled from the page the reviewer
already has open. The picked pair's verdict names the shown pair's (``pm_labels.with_label``), so an undo takes
back both, and where the picked pair is itself waiting in the queue its verdict carries that entry's reason: a
sample answered by a pick still counts for its audit.

"None of these" (:func:`reject_listed`) is the other answer the list allows: the pair shown and every listed
candidate are no match. It leaves the listed pairs that wait in the queue as samples or rechecks, and those with a
verdict, alone.

A queue made with ``one_match`` (``pm_queue_review(one_match := true)``: results that link each supplier offer to
at most one catalog product) takes a match, answered or picked, as the offer's only one: in the same answer the
offer's other unanswered boundary entries of the queue and the other candidates the page listed are recorded
``no_match`` (named by ``with_label`` too, so undone with it), and so are the offer's waiting ``accept_conflict``
entries (they are queued only because the offer is one product). Samples and rechecks waiting in the queue are
left for a person, and so is any pair that already has a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from ..errors import PmatchError
from .alternatives import recorded_context
from .labels import (
    ANSWERS_ENTRY,
    CONFLICT,
    IMPLIED,
    LISTED,
    PICKED,
    PairKey,
    ensure_labels,
    offer_verdicts,
    record_verdict,
    transaction,
)

#: reasons of waiting entries an answer on the offer's list also settles (the others, samples and rechecks, are each
#: for a person to judge on their own page)
SETTLED = ("boundary", CONFLICT)


@dataclass(frozen=True)
class Answer:
    """What one answer recorded: ``(pair, verdict)`` per label, the shown pair's first."""

    labels: tuple[tuple[PairKey, str], ...]

    def said(self, names: dict[str, str]) -> str:
        """One line for the page (``names``: verdict → its label)."""
        head = "; ".join(f"{names.get(v, v)}: {k.source_id} ↔ {k.target_id}" for k, v in self.labels[:2])
        rest = len(self.labels) - 2
        return head + (f"; {rest} other candidate{'s' if rest > 1 else ''} of the offer: "
                       f"{names.get('no_match', 'no_match')}" if rest > 0 else "")


def entry_key(entry: dict) -> PairKey:
    """The pm_labels key of a queue entry."""
    return PairKey(entry["source_table"], entry["source_id"], entry["target_table"], entry["target_id"])


def _shown(entry: dict) -> dict:
    """record_verdict's keywords for the pair an entry shows: what the reviewer saw and why it was queued."""
    return {"matcher": entry["matcher"], "score": entry["score"], "decision": entry["decision"],
            "reason": entry["reason"], "scored_by": entry.get("scored_by")}


def answer_entry(con: duckdb.DuckDBPyConnection, entry: dict, verdict: str, *, queue: str,
                 reviewer: str | None = None, note: str | None = None) -> Answer:
    """Record ``verdict`` on the pair queue entry ``entry`` shows (in a ``one_match`` queue a match also answers the
    offer's other candidates: see the module docstring)."""
    key = entry_key(entry)
    if verdict != "match" or not entry.get("one_match"):
        record_verdict(con, key, verdict, reviewer=reviewer, queue=queue, note=note, **_shown(entry))
        return Answer(((key, verdict),))
    ensure_labels(con)
    with transaction(con):
        first = record_verdict(con, key, verdict, reviewer=reviewer, queue=queue, note=note, own=False,
                               **_shown(entry))
        rest = _imply_rest(con, entry, queue, first, reviewer, {key}, key)
    return Answer(((key, verdict), *rest))


def _imply_rest(con: duckdb.DuckDBPyConnection, entry: dict, queue: str, anchor: int, reviewer: str | None,
                done: set[PairKey], match: PairKey) -> list[tuple[PairKey, str]]:
    """In a ``one_match`` queue, inside the caller's transaction: ``no_match`` for the offer's other unanswered
    boundary entries and the other candidates listed with ``entry`` that have no verdict and wait for no sample or
    recheck; ``done``: the pairs this answer already labels. Each names ``anchor``."""
    other = match.target_id if match.source_id == entry["source_id"] else match.source_id
    said = f"one match per source: the offer's match is {other}"
    out: list[tuple[PairKey, str]] = []
    waiting = _waiting_of_offer(con, queue, entry)
    held = {k for k, w in waiting.items() if w["reason"] not in SETTLED}  # for a person
    for k, w in waiting.items():
        if w["reason"] in SETTLED and k not in done:
            record_verdict(con, k, "no_match", reviewer=reviewer, queue=queue, note=said, own=False,
                           with_label=anchor, **_shown(w))
            done.add(k)
            out.append((k, "no_match"))
    listed = (recorded_context(entry.get("alternatives")) or {}).get("others", [])
    labelled = offer_verdicts(con, entry["source_table"], entry["target_table"], entry["source_id"])
    for o in listed:
        k = PairKey.of(entry["source_table"], entry["source_id"], entry["target_table"], o["id"])
        if k in done or k in held or k in labelled:
            continue
        record_verdict(con, k, "no_match", reviewer=reviewer, queue=queue, note=said, own=False, with_label=anchor,
                       **_listed(entry, o, IMPLIED))
        done.add(k)
        out.append((k, "no_match"))
    return out


def reject_listed(con: duckdb.DuckDBPyConnection, entry: dict, *, queue: str, reviewer: str | None = None,
                  note: str | None = None) -> Answer:
    """"None of these": ``no_match`` for the pair ``entry`` shows and for each other candidate recorded with it (those
    the page lists) that has no verdict and waits for no sample or recheck, in one answer (``with_label`` names the
    first; one undo). A listed pair waiting as a boundary entry is answered with that entry's reason and score;
    the others are recorded with the list's score and decision, reason ``listed``."""
    shown = entry_key(entry)
    listed = (recorded_context(entry.get("alternatives")) or {}).get("others", [])
    ensure_labels(con)
    with transaction(con):
        first = record_verdict(con, shown, "no_match", reviewer=reviewer, queue=queue, note=note, own=False,
                               **_shown(entry))
        out = [(shown, "no_match")]
        waiting = _waiting_of_offer(con, queue, entry)
        labelled = offer_verdicts(con, entry["source_table"], entry["target_table"], entry["source_id"])
        said = f"none of the offer's listed candidates (at entry {entry['position']})"
        for o in listed:
            k = PairKey.of(entry["source_table"], entry["source_id"], entry["target_table"], o["id"])
            w = waiting.get(k)
            if k == shown or k in labelled or (w is not None and w["reason"] not in SETTLED):
                continue
            how = _shown(w) if w is not None else _listed(entry, o, LISTED)
            record_verdict(con, k, "no_match", reviewer=reviewer, queue=queue, own=False, with_label=first,
                           note=f"{said}: {note}" if note else said, **how)
            out.append((k, "no_match"))
    return Answer(tuple(out))


def _listed(entry: dict, o: dict, reason: str) -> dict:
    """record_verdict's keywords for a candidate as the list showed it: its score and decision in the result. The
    score's scale is the entry's for a zero-shot result; with a trained matcher it may be stage 1's or its pair
    scorer's (the result does not say): NULL, and the decision shown tells rechecks what it was."""
    return {"matcher": entry["matcher"], "score": o.get("score"), "decision": o.get("decision"), "reason": reason,
            "scored_by": "zero-shot" if entry.get("scored_by") == "zero-shot" else None}


def _waiting_of_offer(con: duckdb.DuckDBPyConnection, queue: str, entry: dict) -> dict[PairKey, dict]:
    """The unanswered entries of ``queue`` for pairs of ``entry``'s left offer (on either side, in a one-table
    result, where a pair is keyed with the smaller id first), by pair."""
    rel = con.execute(
        f"SELECT * FROM pm_review_queue q WHERE queue = ? AND source_table = ? AND target_table = ? "
        f"AND (source_id = ? OR (source_table = target_table AND target_id = ?)) "
        f"AND NOT EXISTS (SELECT 1 FROM pm_labels_current l WHERE {ANSWERS_ENTRY}) ORDER BY position",
        [queue, entry["source_table"], entry["target_table"], entry["source_id"], entry["source_id"]])
    cols = [d[0] for d in rel.description]
    rows = [dict(zip(cols, r, strict=True)) for r in rel.fetchall()]
    return {entry_key(w): w for w in rows}


def pick_candidate(con: duckdb.DuckDBPyConnection, entry: dict, candidate_id: str, *, queue: str,
                   reviewer: str | None = None, note: str | None = None) -> Answer:
    """The shown pair is no match; the offer's match is ``candidate_id``, one of the other candidates recorded with
    the entry. Both verdicts in one transaction, the pick's naming the shown one's (``with_label``). The pick
    records the candidate's score and decision as the list showed them; its scale is not known (``scored_by``
    NULL) unless the pair waits in the queue, whose entry then supplies what it shows and its reason."""
    ctx = recorded_context(entry.get("alternatives"))
    listed = {str(o["id"]): o for o in (ctx or {}).get("others", [])}
    cand = listed.get(str(candidate_id))
    if cand is None:
        raise PmatchError(f"{candidate_id!r} is not among the other candidates recorded for queue entry "
                          f"{entry['position']} (offer {entry['source_id']!r}); those are: "
                          f"{', '.join(repr(i) for i in listed) or 'none'}")
    shown = entry_key(entry)
    picked = PairKey.of(entry["source_table"], entry["source_id"], entry["target_table"], candidate_id)
    if picked == shown:
        raise PmatchError(f"{candidate_id!r} is the pair shown by queue entry {entry['position']}; answer it instead")
    waiting = _waiting_of_offer(con, queue, entry).get(picked)
    how = _shown(waiting) if waiting else _listed(entry, cand, PICKED)
    said = f"picked instead of {entry['target_id']}"
    ensure_labels(con)
    with transaction(con):
        first = record_verdict(con, shown, "no_match", reviewer=reviewer, queue=queue, note=note, own=False,
                               **_shown(entry))
        record_verdict(con, picked, "match", reviewer=reviewer, queue=queue, own=False, with_label=first,
                       note=f"{said}: {note}" if note else said, **how)
        rest = (_imply_rest(con, entry, queue, first, reviewer, {shown, picked}, picked)
                if entry.get("one_match") else [])
    return Answer(((shown, "no_match"), (picked, "match"), *rest))


def undo_last(con: duckdb.DuckDBPyConnection, queue: str, reviewer: str | None) -> int | None:
    """Retract ``reviewer``'s last answer in ``queue``, every verdict of it (a pick's two), and return the position
    of the entry it answered (None: nothing to undo)."""
    ensure_labels(con)
    last = con.execute(
        f"SELECT l.label_id, l.with_label FROM pm_labels_current l JOIN pm_review_queue q "
        f"ON q.queue = l.queue AND {ANSWERS_ENTRY} WHERE l.queue = ? AND l.reviewer IS NOT DISTINCT FROM ? "
        "ORDER BY l.label_id DESC LIMIT 1", [queue, reviewer]).fetchall()
    if not last:
        return None
    anchor = last[0][1] if last[0][1] is not None else last[0][0]
    # the answer's verdicts still in force (one retracted or overwritten since stays as it is)
    group = con.execute("SELECT * FROM pm_labels_current WHERE label_id = ? OR with_label = ? ORDER BY label_id",
                        [anchor, anchor])
    cols = [d[0] for d in group.description]
    rows = [dict(zip(cols, r, strict=True)) for r in group.fetchall()]
    position = con.execute(
        f"SELECT q.position FROM pm_labels l JOIN pm_review_queue q ON q.queue = l.queue AND {ANSWERS_ENTRY} "
        "WHERE l.label_id = ? ORDER BY q.position LIMIT 1", [anchor]).fetchall()
    with transaction(con):
        for r in rows:
            record_verdict(con, PairKey(r["source_table"], r["source_id"], r["target_table"], r["target_id"]),
                           "retracted", reviewer=reviewer, matcher=r["matcher"], score=r["score"],
                           decision=r["decision"], queue=queue, reason=r["reason"], note=f"undo of {r['verdict']}",
                           scored_by=r["scored_by"], own=False)
    return int(position[0][0]) if position else None
