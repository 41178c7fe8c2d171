"""A queued pair among its offer's other candidates: where the match result ranks it, and the best other
candidates of the same offer. A reviewer tells a product from its siblings (``Mavic 2 Zoom`` beside ``Mavic 2
Enterprise Zoom``, ``T111.417.37.441.06`` beside ``.05``) by seeing them side by side, and a candidate already
labelled a match for this offer says much about the one on screen.

Recorded at queue time (``pm_review_queue.alternatives``, JSON) from the saved result, so the page needs neither the
result nor its size later; read back and filled with the candidates' titles and verdicts for the page.
"""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa

from .labels import table_key

#: other candidates recorded per queued pair (the first in the result's order)
ALTERNATIVES = 4


def candidate_context(con: duckdb.DuckDBPyConnection, result: str, has_rank: bool,
                      entries: list[dict]) -> list[str | None]:
    """Per queue entry (``source_table`` / ``target_table`` as the result names them, ``key``: its
    :class:`~.labels.PairKey`), the JSON ``{"rank", "of", "others": [{"id", "score", "decision"}, ...]}``: the
    pair's rank among the candidates the result holds for the entry's left offer (1 = its best), how many there
    are, and the best :data:`ALTERNATIVES` others. ``result``: the quoted result table; ``has_rank``: whether it has
    ``match_products``' ``rank`` column, which orders an offer's candidates (with a pair scorer the re-read ones
    carry the stacked model's score, the others stage 1's: two scales, so score alone could misorder them); without
    it, by score. In a result of one table (dedup) an offer's candidates are the pairs that list it on either side;
    those listed from the other side have no rank for it and come after, by score. None where the result has no
    row of the pair."""
    if not entries:
        return []
    left = pa.table({
        "pos": list(range(len(entries))),
        "src_key": [e["key"].source_table for e in entries],
        "tgt_key": [e["key"].target_table for e in entries],
        "left_id": [e["key"].source_id for e in entries],
        "own_id": [e["key"].target_id for e in entries],
    })
    # the result's table names as pm_labels keys them ('feed' and "main"."FEED" are one table); where every name is
    # its own key already (the usual case) the result is read without that mapping
    names = [n for (n,) in con.execute(f"SELECT source_table FROM {result} UNION "
                                       f"SELECT target_table FROM {result}").fetchall() if n is not None]
    mapped = any(table_key(n) != n for n in names)
    tables = pa.table({"name": names, "tkey": [table_key(n) for n in names]}, schema=pa.schema(
        [("name", pa.string()), ("tkey", pa.string())]))
    rank = "TRY_CAST(r.rank AS BIGINT)" if has_rank else "NULL::BIGINT"
    keys = ("s.tkey AS skey, t.tkey AS tkey" if mapped else "r.source_table AS skey, r.target_table AS tkey")
    joins = ("JOIN _pm_alt_tables s ON r.source_table = s.name JOIN _pm_alt_tables t ON r.target_table = t.name"
             if mapped else "")
    # in a one-table (dedup) result an offer's candidates are also the pairs listing it as the target
    reverse = ("""UNION ALL
                SELECT e.pos, r.sid, r.score, r.decision, NULL::BIGINT
                FROM r JOIN _pm_alt_entries e ON e.src_key = e.tgt_key AND r.skey = e.src_key AND r.tkey = e.src_key
                     AND r.tid = e.left_id""" if any(e["key"].source_table == e["key"].target_table for e in entries)
               else "")
    con.register("_pm_alt_entries", left)
    con.register("_pm_alt_tables", tables)
    try:
        # a pair listed both ways counts once, at its higher score
        rows = con.sql(f"""
            WITH r AS (
                SELECT {keys}, CAST(r.source_id AS VARCHAR) AS sid,
                       CAST(r.target_id AS VARCHAR) AS tid, CAST(r.score AS DOUBLE) AS score, r.decision, {rank} AS rk
                FROM {result} r {joins}
            ), cand AS (
                SELECT e.pos, r.tid AS cid, r.score, r.decision, r.rk
                FROM r JOIN _pm_alt_entries e ON r.skey = e.src_key AND r.tkey = e.tgt_key AND r.sid = e.left_id
                {reverse}
            ), best AS (
                SELECT pos, cid, max(score) AS score, arg_max(decision, score) AS decision, min(rk) AS rk
                FROM cand WHERE score IS NOT NULL AND cid IS NOT NULL GROUP BY pos, cid
            ), placed AS (
                SELECT pos, cid, score, decision,
                       row_number() OVER (PARTITION BY pos ORDER BY rk NULLS LAST, score DESC, cid) AS place,
                       count(*) OVER (PARTITION BY pos) AS n
                FROM best
            ), ctx AS (  -- built here, so only one string per entry leaves DuckDB
                SELECT p.pos,
                       max(p.place) FILTER (WHERE p.cid = e.own_id) AS rank, any_value(p.n) AS n,
                       list(struct_pack(id := p.cid, score := round(p.score, 6), decision := p.decision)
                            ORDER BY p.place) FILTER (WHERE p.cid <> e.own_id AND p.place <= {ALTERNATIVES + 1})
                           AS others
                FROM placed p JOIN _pm_alt_entries e USING (pos) GROUP BY p.pos
            )
            SELECT CASE WHEN c.rank IS NOT NULL THEN to_json({{'rank': c.rank, 'of': c.n,
                   'others': coalesce(c.others, [])[1:{ALTERNATIVES}]}})::VARCHAR END AS js
            FROM _pm_alt_entries e LEFT JOIN ctx c USING (pos) ORDER BY e.pos""").to_arrow_table()
    finally:
        con.unregister("_pm_alt_entries")
        con.unregister("_pm_alt_tables")
    return rows.column("js").to_pylist()


def recorded_context(raw: str | None) -> dict | None:
    """The JSON :func:`candidate_context` recorded (None: a queue written before it was recorded, or a pair
    without one)."""
    return json.loads(raw) if raw else None
