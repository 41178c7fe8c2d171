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

import functools
from dataclasses import dataclass

import duckdb

from ..errors import PmatchError
from ..sqlident import index_name_for

VERDICTS = ("match", "no_match", "unsure")
RETRACTED = "retracted"

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
    reason       VARCHAR,   -- why it was queued: boundary / accept_sample / recheck
    note         VARCHAR
);
-- the verdict in force per pair (latest row; a retracted verdict is no verdict)
CREATE OR REPLACE VIEW pm_labels_current AS
SELECT * FROM pm_labels
QUALIFY row_number() OVER (PARTITION BY source_table, source_id, target_table, target_id
                           ORDER BY label_id DESC) = 1
    AND verdict <> '{RETRACTED}';
"""


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
    """Create ``pm_labels``, its sequence and the ``pm_labels_current`` view if missing."""
    if not has_labels(con):
        con.execute(LABELS_DDL)


def has_labels(con: duckdb.DuckDBPyConnection) -> bool:
    """Does the current database hold a ``pm_labels`` table?"""
    return bool(con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'pm_labels' AND schema_name = current_schema() "
        "AND database_name = current_database()").fetchall()[0][0])


def record_verdict(con: duckdb.DuckDBPyConnection, pair: PairKey, verdict: str, *, reviewer: str | None = None,
                   matcher: str | None = None, score: float | None = None, decision: str | None = None,
                   queue: str | None = None, reason: str | None = None, note: str | None = None) -> int:
    """Append one verdict (one transaction) and return its ``label_id``."""
    if verdict not in (*VERDICTS, RETRACTED):
        raise PmatchError(f"verdict must be one of {', '.join(VERDICTS)}; got {verdict!r}")
    ensure_labels(con)
    con.execute("BEGIN TRANSACTION")
    try:
        row = con.execute(
            "INSERT INTO pm_labels (source_table, source_id, target_table, target_id, verdict, reviewer, matcher, "
            "score, decision, queue, reason, note) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING label_id",
            [*pair.row(), verdict, reviewer, matcher, score, decision, queue, reason, note]).fetchall()
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return int(row[0][0])


def current_verdicts(con: duckdb.DuckDBPyConnection, tables: set[str] | None = None
                     ) -> dict[PairKey, tuple[str, float | None, int]]:
    """The verdict in force per pair: ``{pair: (verdict, score shown, label_id)}`` (optionally only
    pairs whose both tables are in ``tables``, given as table keys)."""
    if not has_labels(con):
        return {}
    rows = con.execute("SELECT source_table, source_id, target_table, target_id, verdict, score, label_id "
                       "FROM pm_labels_current").fetchall()
    out = {}
    for st, si, tt, ti, v, s, lid in rows:
        if tables is None or (st in tables and tt in tables):
            out[PairKey(st, si, tt, ti)] = (v, s, int(lid))
    return out


def max_label_id(con: duckdb.DuckDBPyConnection) -> int:
    """The highest label_id so far (0 without labels)."""
    if not has_labels(con):
        return 0
    return int(con.execute("SELECT coalesce(max(label_id), 0) FROM pm_labels").fetchall()[0][0])


def labels_as_pairs(con: duckdb.DuckDBPyConnection, table: str = "pm_labels"
                    ) -> list[tuple[tuple[str, str], tuple[str, str], int]]:
    """Training pairs from a labels table: ``((source_table, source_id), (target_table, target_id), 1 | 0)``
    for the current ``match`` / ``no_match`` verdicts; ``unsure`` and retracted verdicts are left out."""
    from ..sqlident import quote_qualified

    q = quote_qualified(table)
    rows = con.execute(
        f"SELECT source_table, source_id, target_table, target_id, verdict FROM {q} "
        "QUALIFY row_number() OVER (PARTITION BY source_table, source_id, target_table, target_id "
        "ORDER BY label_id DESC) = 1").fetchall()
    return [((st, a), (tt, b), int(v == "match")) for st, a, tt, b, v in rows if v in ("match", "no_match")]
