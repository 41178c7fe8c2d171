"""``pm_labels``: human verdicts on candidate pairs, kept as history in the user's DuckDB database.

Every verdict is one row (one transaction); nothing is updated or deleted. The latest row per pair
wins; an undo writes a ``retracted`` row, so the pair counts as unlabelled again and the history
still shows what happened. Plain SQL reads it (``pm_labels_current`` is an ordinary view, no UDFs),
so dbt models and ad-hoc queries can use the verdicts without pmatch installed.

Offers are identified by (table, id): the table as its unqualified, lower-cased name (what
``match_products`` results call ``supplier_feed`` or ``"db"."main"."supplier_feed"`` are both
``supplier_feed``), ids as text. In dedup mode (both sides one table) a pair is stored with the
smaller id first, so (a, b) and (b, a) are one pair.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import duckdb

from ..decision import SCORED_BY
from ..errors import PmatchError
from ..sqlident import index_name_for

VERDICTS = ("match", "no_match", "unsure")
RETRACTED = "retracted"
#: pm_labels.reason of a pair picked as an offer's match among its other candidates that no queue entry waited for
PICKED = "picked"
#: pm_labels.reason of a no_match a one-match queue's match implied for a listed candidate no queue entry waited for
IMPLIED = "one_match"
#: pm_labels.reason of a no_match given to a listed candidate ("none of these") that no queue entry waited for
LISTED = "listed"
#: pm_review_queue / pm_labels.reason of a one-match queue's page for an offer auto-accepted for two products
CONFLICT = "accept_conflict"
#: what each pm_labels / pm_review_queue reason means, in a few words (the summary page's "queued as")
REASON_NAMES = {
    "boundary": "near the decision boundary", "accept_sample": "check of auto-accepts",
    "certify_sample": "certification sample", "reject_sample": "check of auto-rejects", "recheck": "recheck",
    PICKED: "picked from the offer's list", IMPLIED: "implied: the offer's one match is another",
    LISTED: "none of these: listed", CONFLICT: "one of two auto-accepts of an offer",
    "other": "given outside a queue",
}
#: reasons of verdicts that are no sample of the scores (calibrate leaves them out): pairs found from a list, and
#: accepts queued because their offer has another (more often wrong than others at their score)
FOUND = (PICKED, IMPLIED, LISTED, CONFLICT)

LABELS_DDL = f"""
CREATE SEQUENCE IF NOT EXISTS pm_labels_seq;
CREATE TABLE IF NOT EXISTS pm_labels (
    label_id     BIGINT PRIMARY KEY DEFAULT nextval('pm_labels_seq'),
    source_table VARCHAR NOT NULL,
    source_id    VARCHAR NOT NULL,
    target_table VARCHAR NOT NULL,
    target_id    VARCHAR NOT NULL,
    verdict      VARCHAR NOT NULL CHECK (verdict IN ({", ".join(f"'{v}'" for v in (*VERDICTS, RETRACTED))})),
    reviewer     VARCHAR,
    labelled_at  TIMESTAMPTZ NOT NULL DEFAULT current_timestamp,
    matcher      VARCHAR,   -- matcher version whose score was shown ('zero-shot' without a trained one)
    score        DOUBLE,    -- the score shown
    decision     VARCHAR,   -- the model's decision shown (accept / review / reject)
    queue        VARCHAR,   -- review queue the pair came from
    reason       VARCHAR,   -- why it was queued: boundary / accept_sample / recheck / ...; picked / one_match /
                            -- listed: given from an offer's list of candidates, no entry waited for it (answers.py)
    note         VARCHAR,
    scored_by    VARCHAR,   -- which model's score was shown: zero-shot / stage1 / pair_scorer (NULL: not known)
    with_label   BIGINT     -- given in one answer with that label (a pick, a one-match queue's match, none of
                            -- these: each further verdict names the answer's first); undone together
);
-- the verdict in force per pair (latest row; a retracted verdict is no verdict)
CREATE OR REPLACE VIEW pm_labels_current AS
SELECT * FROM pm_labels
QUALIFY row_number() OVER (PARTITION BY source_table, source_id, target_table, target_id
                           ORDER BY label_id DESC) = 1
    AND verdict <> '{RETRACTED}';
"""


#: SQL condition: verdict ``l`` (a row of pm_labels_current) answers queue entry ``q`` (a row of pm_review_queue):
#: the same pair, given after the entry was queued
ANSWERS_ENTRY = ("l.source_table = q.source_table AND l.source_id = q.source_id AND l.target_table = q.target_table "
                 "AND l.target_id = q.target_id AND l.label_id > q.labels_before")


@functools.lru_cache(maxsize=1024)
def table_key(name: str) -> str:
    """How pm_labels names a table: unqualified and lower-cased."""
    return index_name_for(name)


@dataclass(frozen=True)
class PairKey:
    """One candidate pair as pm_labels identifies it (canonical order in dedup mode)."""

    source_table: str
    source_id: str
    target_table: str
    target_id: str

    @classmethod
    def of(cls, source_table: str, source_id: object, target_table: str, target_id: object) -> PairKey:
        """Normalise table names and ids; order the ids when both sides are one table."""
        st, tt, si, ti = table_key(source_table), table_key(target_table), str(source_id), str(target_id)
        if st == tt and ti < si:
            si, ti = ti, si
        return cls(st, si, tt, ti)

    def row(self) -> list[str]:
        return [self.source_table, self.source_id, self.target_table, self.target_id]


def ensure_labels(con: duckdb.DuckDBPyConnection) -> None:
    """Create ``pm_labels``, its sequence and the ``pm_labels_current`` view if missing; a ``pm_labels`` written by an
    earlier version gains the ``scored_by`` and ``with_label`` columns (NULL on its rows: not known / a verdict of
    its own)."""
    if not has_labels(con):
        con.execute(LABELS_DDL)
        return
    for column, kind in (("scored_by", "VARCHAR"), ("with_label", "BIGINT")):
        if not has_column(con, "pm_labels", column):
            con.execute(f"ALTER TABLE pm_labels ADD COLUMN IF NOT EXISTS {column} {kind}")


def scored_by_sql(con: duckdb.DuckDBPyConnection) -> str:
    """``pm_labels.scored_by`` in a SELECT list, or NULL where the table predates that column (readers do not
    alter the table; writers do, in :func:`ensure_labels`)."""
    return "scored_by" if has_column(con, "pm_labels", "scored_by") else "NULL AS scored_by"


def matcher_names(matcher: str | tuple[str, ...]) -> list[str]:
    """A matcher name (``pm_labels.matcher``, ``pm_review_queue.matcher``) or the names whose scores are one model's
    (``queue.ModelState.verdicts_from``: calibrate's copies and the version they copy), as a list."""
    return [matcher] if isinstance(matcher, str) else list(matcher)


def matcher_in(column: str, matcher: str | tuple[str, ...]) -> tuple[str, list[str]]:
    """(``column IN (?, ...)``, its parameters) for :func:`matcher_names` of ``matcher``."""
    names = matcher_names(matcher)
    return f"{column} IN ({', '.join('?' for _ in names)})", names


def pair_unit(seed: int, key: PairKey) -> int:
    """A pair's deterministic random number of draw ``seed``: the first 64 bits of the SHA-256 of the seed and the
    pair (``audit.draw_rejects`` computes the same in SQL), for the queue's samples."""
    return int(hashlib.sha256("\t".join([str(seed), *key.row()]).encode()).hexdigest()[:16], 16)


def has_column(con: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    """Does ``table`` of the current database and schema have ``column``?"""
    return bool(con.execute(
        "SELECT count(*) FROM duckdb_columns() WHERE table_name = ? AND column_name = ? "
        "AND schema_name = current_schema() AND database_name = current_database()", [table, column]).fetchall()[0][0])


def has_labels(con: duckdb.DuckDBPyConnection) -> bool:
    """Does the current database hold a ``pm_labels`` table?"""
    return bool(con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'pm_labels' AND schema_name = current_schema() "
        "AND database_name = current_database()").fetchall()[0][0])


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """One DuckDB transaction: committed when the block ends, rolled back if it raises."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def record_verdict(con: duckdb.DuckDBPyConnection, pair: PairKey, verdict: str, *, reviewer: str | None = None,
                   matcher: str | None = None, score: float | None = None, decision: str | None = None,
                   queue: str | None = None, reason: str | None = None, note: str | None = None,
                   scored_by: str | None = None, with_label: int | None = None, own: bool = True) -> int:
    """Append one verdict and return its ``label_id``. ``scored_by``: which model's score was shown (one of
    :data:`SCORED_BY`; the queue row says); ``with_label``: the label this one was given together with (a pick).
    ``own``: in a transaction of its own (False: inside the caller's, which ensured the table)."""
    if verdict not in (*VERDICTS, RETRACTED):
        raise PmatchError(f"verdict must be one of {', '.join(VERDICTS)}; got {verdict!r}")
    if scored_by is not None and scored_by not in SCORED_BY:
        raise PmatchError(f"scored_by must be one of {', '.join(SCORED_BY)} or NULL; got {scored_by!r}")
    insert = ("INSERT INTO pm_labels (source_table, source_id, target_table, target_id, verdict, reviewer, matcher, "
              "score, decision, queue, reason, note, scored_by, with_label) "
              "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING label_id")
    values = [*pair.row(), verdict, reviewer, matcher, score, decision, queue, reason, note, scored_by, with_label]
    if not own:
        return int(con.execute(insert, values).fetchall()[0][0])
    ensure_labels(con)
    with transaction(con):
        row = con.execute(insert, values).fetchall()
    return int(row[0][0])


class Verdict(NamedTuple):
    """The verdict in force on one pair, and what the reviewer was shown when giving it."""

    verdict: str
    score: float | None  # the score shown
    label_id: int
    matcher: str | None = None  # the matcher version that scored it ('zero-shot' without a trained one)
    decision: str | None = None  # the decision shown
    scored_by: str | None = None  # the scale the score is on (see SCORED_BY); NULL: not known

    @property
    def scale(self) -> str | None:
        """The scale of the shown score: ``scored_by``, else ``zero-shot`` where no trained matcher scored it;
        None where that is not known (a verdict recorded before ``scored_by`` existed, on a trained matcher's
        score, which may have been its pair scorer's)."""
        if self.scored_by is not None:
            return self.scored_by
        return "zero-shot" if self.matcher == "zero-shot" else None


def current_verdicts(con: duckdb.DuckDBPyConnection, tables: set[str] | None = None) -> dict[PairKey, Verdict]:
    """The verdict in force per pair (optionally only pairs whose both tables are in ``tables``, given as table
    keys)."""
    if not has_labels(con):
        return {}
    rows = con.execute("SELECT source_table, source_id, target_table, target_id, verdict, score, label_id, matcher, "
                       f"decision, {scored_by_sql(con)} FROM pm_labels_current").fetchall()
    out = {}
    for st, si, tt, ti, v, s, lid, m, d, by in rows:
        if tables is None or (st in tables and tt in tables):
            out[PairKey(st, si, tt, ti)] = Verdict(v, s, int(lid), m, d, by)
    return out


def offer_verdicts(con: duckdb.DuckDBPyConnection, source_table: str, target_table: str,
                   offer_id: str) -> dict[PairKey, str]:
    """The verdicts in force on the pairs of one offer (``source_table`` / ``target_table`` as pm_labels names them;
    in a one-table result the offer may be on either side), by pair."""
    return {PairKey(st, si, tt, ti): v for st, si, tt, ti, v in con.execute(
        "SELECT source_table, source_id, target_table, target_id, verdict FROM pm_labels_current "
        "WHERE source_table = ? AND target_table = ? AND ? IN (source_id, target_id)",
        [source_table, target_table, offer_id]).fetchall()}


def verdict_before(con: duckdb.DuckDBPyConnection, pair: PairKey, label_id: int) -> dict | None:
    """The verdict in force on ``pair`` up to ``label_id`` (a queue entry's ``labels_before``: what a recheck asks
    about again): verdict, reviewer, when, the score and decision shown and its scale; None if there was none."""
    if not has_labels(con):
        return None
    rel = con.execute(
        "SELECT verdict, reviewer, strftime(labelled_at, '%Y-%m-%d %H:%M') AS labelled_at, score, decision, "
        f"{scored_by_sql(con)} "
        "FROM pm_labels WHERE source_table = ? AND source_id = ? AND target_table = ? AND target_id = ? "
        "AND label_id <= ? ORDER BY label_id DESC LIMIT 1", [*pair.row(), label_id])
    cols = [d[0] for d in rel.description]
    row = rel.fetchall()
    if not row or row[0][0] == RETRACTED:
        return None
    return dict(zip(cols, row[0], strict=True))


def max_label_id(con: duckdb.DuckDBPyConnection) -> int:
    """The highest label_id so far (0 without labels)."""
    if not has_labels(con):
        return 0
    return int(con.execute("SELECT coalesce(max(label_id), 0) FROM pm_labels").fetchall()[0][0])


def labels_as_pairs(con: duckdb.DuckDBPyConnection, table: str = "pm_labels"
                    ) -> list[tuple[tuple[str, str], tuple[str, str], int]]:
    """Training pairs from a labels table: ``((source_table, source_id), (target_table, target_id), 1 | 0)``
    for the current ``match`` / ``no_match`` verdicts, oldest first; ``unsure`` and retracted verdicts are left out."""
    from ..sqlident import quote_qualified

    q = quote_qualified(table)
    rows = con.execute(
        f"SELECT source_table, source_id, target_table, target_id, verdict FROM {q} "
        "QUALIFY row_number() OVER (PARTITION BY source_table, source_id, target_table, target_id "
        "ORDER BY label_id DESC) = 1 ORDER BY label_id").fetchall()
    return [((st, a), (tt, b), int(v == "match")) for st, a, tt, b, v in rows if v in ("match", "no_match")]
