"""UDFs behind ``pm_index``, ``match_products`` and ``product_clusters`` (see sql/match.sql)."""

from __future__ import annotations

import json
from collections import Counter

import duckdb
import numpy as np
import pyarrow as pa
from duckdb import sqltypes as T

from pmatch_duckdb.api import index_table
from pmatch_duckdb.clusters import assign_entities
from pmatch_duckdb.context import PmatchContext
from pmatch_duckdb.decision import SCORED_BY
from pmatch_duckdb.errors import PmatchError
from pmatch_duckdb.fusion import FusionConfig
from pmatch_duckdb.matchers import active_matcher
from pmatch_duckdb.matching import (
    Candidates,
    OfferVectors,
    match_offers,
    score_given,
    source_vectors,
    target_view,
)
from pmatch_duckdb.offer_vectors import embed_offers
from pmatch_duckdb.offers import REQUIRED, Offer, OfferTableError, offer_from_mapping
from pmatch_duckdb.review.labels import PairKey, current_verdicts, table_key
from pmatch_duckdb.review.overrides import constrained_edges, override_decisions
from pmatch_duckdb.sqlident import check_index_name, index_name_for, quote_ident, quote_qualified
from pmatch_duckdb.store import OfferIndex

from .arrow_util import Registrar, as_pylist
from .checks import check_unique, register_check_udfs

_INDEX_ROW = {"index": T.VARCHAR, "inserted": T.BIGINT, "updated": T.BIGINT, "deleted": T.BIGINT,
              "unchanged": T.BIGINT, "total": T.BIGINT, "version": T.BIGINT, "ann_index": T.BOOLEAN,
              "seconds": T.DOUBLE, "reprojected": T.BIGINT}
_HIT = pa.struct([("target_key", pa.string()), ("rank", pa.int32()), ("score", pa.float64()),
                  ("text_score", pa.float64()), ("image_score", pa.float64()), ("lexical_score", pa.float64()),
                  ("identifier_match", pa.bool_()), ("price_ratio", pa.float64()), ("decision", pa.string()),
                  ("human_verdict", pa.string()), ("scored_by", pa.string())])
_HIT_SQL = duckdb.struct_type({"target_key": T.VARCHAR, "rank": T.INTEGER, "score": T.DOUBLE,
                               "text_score": T.DOUBLE, "image_score": T.DOUBLE, "lexical_score": T.DOUBLE,
                               "identifier_match": T.BOOLEAN, "price_ratio": T.DOUBLE, "decision": T.VARCHAR,
                               "human_verdict": T.VARCHAR, "scored_by": T.VARCHAR})


_SCORED_BY = pa.array(SCORED_BY, pa.string())  # decision.SCORED_BY, indexed by a Candidates.scored_by code

_PAIR_IN_SQL = duckdb.struct_type({"pair_no": T.BIGINT, "source_key": T.VARCHAR, "target_key": T.VARCHAR,
                                   "source_row": T.VARCHAR, "copies": T.BIGINT})
_SCORED = pa.struct([("pair_no", pa.int64()), ("rank", pa.int32()), ("score", pa.float64()),
                     ("text_score", pa.float64()), ("image_score", pa.float64()), ("lexical_score", pa.float64()),
                     ("identifier_match", pa.bool_()), ("price_ratio", pa.float64()), ("decision", pa.string()),
                     ("human_verdict", pa.string()), ("scored_by", pa.string()), ("note", pa.string())])
_SCORED_SQL = duckdb.struct_type({"pair_no": T.BIGINT, "rank": T.INTEGER, "score": T.DOUBLE,
                                  "text_score": T.DOUBLE, "image_score": T.DOUBLE, "lexical_score": T.DOUBLE,
                                  "identifier_match": T.BOOLEAN, "price_ratio": T.DOUBLE, "decision": T.VARCHAR,
                                  "human_verdict": T.VARCHAR, "scored_by": T.VARCHAR, "note": T.VARCHAR})


def _source_offers(rows: list[dict], function: str, source: str) -> list[Offer]:
    """Source rows (lower-cased column names) as offers; a clear error when a required column is missing."""
    missing = [c for c in REQUIRED if c not in rows[0]]
    if missing:
        raise OfferTableError(
            f"{function}: source {source!r} lacks required column(s) {', '.join(missing)}; it has "
            f"{', '.join(rows[0])}. Map your columns with a view (... name AS title ...)")
    return [offer_from_mapping(row) for row in rows]


def _same_table(a: str, b: str) -> bool:
    """Dedup mode: source and target are the same name (compared as SQL does it in match.sql)."""
    return a.lower() == b.lower()


def _nan_none(x: float) -> float | None:
    return None if x is None or np.isnan(x) else float(x)


def _hits(n_rows: int, cand: Candidates, ids: list[str], decisions: list[str], human: list[str | None]) -> pa.Array:
    """``_pm_match``'s result: per source row, its candidates as a list of ``_HIT`` structs, built from the
    candidate arrays (columns, not a dict per candidate); a NaN text, image score or price ratio becomes NULL."""
    src = np.asarray(cand.source, dtype=np.int64)
    order = np.argsort(src, kind="stable")  # match returns sources in order already; kept stable if not
    counts = np.bincount(src, minlength=n_rows) if len(src) else np.zeros(n_rows, np.int64)
    offsets = np.r_[0, np.cumsum(counts)].astype(np.int32)

    def f64(x: np.ndarray, nan_null: bool = True) -> pa.Array:
        x = np.asarray(x, dtype=np.float64)[order]
        return pa.array(x, pa.float64(), mask=np.isnan(x) if nan_null else None)

    take = pa.array(order)
    fields = [pa.array(ids, pa.string()).take(take), pa.array(np.asarray(cand.rank)[order], pa.int32()),
              f64(cand.score, False), f64(cand.text_score), f64(cand.image_score), f64(cand.lexical_score, False),
              pa.array(np.asarray(cand.id_match, dtype=bool)[order], pa.bool_()), f64(cand.price_ratio),
              pa.array(decisions, pa.string()).take(take), pa.array(human, pa.string()).take(take),
              _SCORED_BY.take(pa.array(np.asarray(cand.scored_by, dtype=np.int64)[order]))]
    structs = pa.StructArray.from_arrays(fields, fields=list(_HIT))
    return pa.ListArray.from_arrays(pa.array(offsets), structs, type=pa.list_(_HIT))


def register_matching_udfs(reg: Registrar, ctx: PmatchContext) -> None:
    """Register ``_pm_index``, ``_pm_match`` and ``_pm_clusters`` bound to ``ctx``."""
    register_check_udfs(reg)

    def pm_index(tables: pa.ChunkedArray, names: pa.ChunkedArray, rebuild: pa.ChunkedArray) -> pa.Array:
        out = []
        for tbl, name, rb in zip(as_pylist(tables), as_pylist(names), as_pylist(rebuild), strict=True):
            if tbl is None:
                raise PmatchError("pm_index: the table name is NULL")
            stats = index_table(ctx, tbl, name, rebuild=bool(rb), progress=True)
            out.append(stats.as_row())
        return pa.array(out, type=pa.struct([(k, _arrow(v)) for k, v in _INDEX_ROW.items()]))

    def pm_match(src: pa.ChunkedArray, tgt: pa.ChunkedArray, k: pa.ChunkedArray, rows: pa.ChunkedArray) -> pa.Array:
        srcs, tgts, ks, js = as_pylist(src), as_pylist(tgt), as_pylist(k), as_pylist(rows)
        if not js:
            return pa.array([], type=pa.list_(_HIT))
        source, target, kk = srcs[0], tgts[0], ks[0]
        if not isinstance(kk, int) or kk <= 0:
            raise PmatchError(f"match_products: k must be a positive integer, got {kk!r}")
        if target is None or source is None:
            raise PmatchError("match_products: source and target table names must not be NULL")
        index = OfferIndex(ctx.index_root, check_index_name(index_name_for(target)))
        matcher = active_matcher(ctx.settings.matcher, ctx.settings.home)
        want = matcher.identity if matcher is not None else None
        if not index.exists() or index.matcher_identity() != want:
            index_table(ctx, target, progress=False)  # build, or re-project for the active matcher
        index.check_encoders(ctx.settings)
        view = target_view(index, ctx.settings.home)
        dedup = _same_table(source, target)
        reuse = view if dedup else _source_view(ctx, source)
        rows = [{key.lower(): v for key, v in json.loads(j).items()} for j in js]
        offers = _source_offers(rows, "match_products", source)
        # (the macro checks the whole source before any row; this guards the rows of one call)
        counts = Counter(o.id for o in offers)
        check_unique("match_products", source, sorted(i for i, c in counts.items() if c > 1))
        cand = match_offers(offers, view, ctx.settings, kk, exclude_self=dedup, reuse=reuse,
                            threads=ctx.duckdb_threads)
        ids = view.target_ids(cand.target)  # one per candidate
        # human verdicts (pm_labels) override the model's decision
        verdicts = _verdicts(ctx, source, target)
        if verdicts:
            keys = [PairKey.of(source, offers[int(cand.source[i])].id, target, ids[i])
                    for i in range(len(cand.source))]
            decisions, human = override_decisions(keys, cand.decision, verdicts)
        else:
            decisions, human = cand.decision, [None] * len(cand.source)
        return _hits(len(offers), cand, ids, decisions, human)

    def pm_clusters(pairs: pa.ChunkedArray, registry: pa.ChunkedArray) -> pa.Array:
        out = []
        for ptable, reg in zip(as_pylist(pairs), as_pylist(registry), strict=True):
            out.append(_clusters(ctx, ptable, reg or "entities"))
        return pa.array(out, type=pa.list_(pa.struct([("table_name", pa.string()), ("offer_id", pa.string()),
                                                       ("entity_id", pa.string())])))

    def pm_embed_offer(titles: pa.ChunkedArray, brands: pa.ChunkedArray, images: pa.ChunkedArray,
                       prices: pa.ChunkedArray) -> pa.Array:
        # normalised as an offer-table row is (NaN, infinite or negative price -> no price; empty paths dropped)
        offers = [offer_from_mapping({"id": str(i), "title": t, "brand": b, "images": im, "price": p})
                  for i, (t, b, im, p) in
                  enumerate(zip(as_pylist(titles), as_pylist(brands), as_pylist(images), as_pylist(prices), strict=True))]
        matcher = active_matcher(ctx.settings.matcher, ctx.settings.home)
        rows = embed_offers(offers, ctx.settings, FusionConfig(), [""] * len(offers), progress=False, matcher=matcher)
        v = OfferVectors.from_arrow(rows)
        has = v.text_ok | v.image_ok
        return pa.array([vec.tolist() if ok else None for vec, ok in zip(v.fused, has, strict=True)],
                        type=pa.list_(pa.float32()))

    def pm_score_pairs(src: pa.ChunkedArray, tgt: pa.ChunkedArray, items: pa.ChunkedArray) -> pa.Array:
        out = [None if it is None else _score_pairs(ctx, s_, t_, it)
               for s_, t_, it in zip(as_pylist(src), as_pylist(tgt), as_pylist(items), strict=True)]
        return pa.array([[] if o is None else o for o in out], type=pa.list_(_SCORED))

    reg.add("_pm_score_pairs", pm_score_pairs, [T.VARCHAR, T.VARCHAR, duckdb.list_type(_PAIR_IN_SQL)],
            duckdb.list_type(_SCORED_SQL), side_effects=True, null_handling="special")
    reg.add("_pm_embed_offer", pm_embed_offer, [T.VARCHAR, T.VARCHAR, duckdb.list_type(T.VARCHAR), T.DOUBLE],
            duckdb.list_type(T.FLOAT), null_handling="special")
    reg.add("_pm_index", pm_index, [T.VARCHAR, T.VARCHAR, T.BOOLEAN],
                     duckdb.struct_type(_INDEX_ROW), side_effects=True, null_handling="special")
    reg.add("_pm_match", pm_match, [T.VARCHAR, T.VARCHAR, T.BIGINT, T.VARCHAR],
                     duckdb.list_type(_HIT_SQL), side_effects=True, null_handling="special")
    reg.add("_pm_clusters", pm_clusters, [T.VARCHAR, T.VARCHAR],
                     duckdb.list_type(duckdb.struct_type({"table_name": T.VARCHAR, "offer_id": T.VARCHAR,
                                                          "entity_id": T.VARCHAR})),
                     side_effects=True, null_handling="special")


def _arrow(t: duckdb.sqltype) -> pa.DataType:
    return {str(T.VARCHAR): pa.string(), str(T.BIGINT): pa.int64(), str(T.BOOLEAN): pa.bool_(),
            str(T.DOUBLE): pa.float64()}[str(t)]


def _source_view(ctx: PmatchContext, source: str):
    """The source's own index (to reuse its vectors), if one exists and fits the encoders."""
    try:
        idx = OfferIndex(ctx.index_root, index_name_for(source))
        if idx.exists():
            idx.check_encoders(ctx.settings)
            return target_view(idx, ctx.settings.home)
    except PmatchError:
        return None
    return None


def _verdicts(ctx: PmatchContext, source: str, target: str) -> dict:
    """Current human verdicts between the two tables (empty without pm_labels)."""
    cur = ctx.con.cursor()
    try:
        return current_verdicts(cur, {table_key(source), table_key(target)})
    finally:
        cur.close()


def _clusters(ctx: PmatchContext, pairs_table: str, registry: str) -> list[dict]:
    """Read accepted pairs (and all offers seen) from a match_products result table; assign entities."""
    check_index_name(registry)
    cur = ctx.con.cursor()
    try:
        q = quote_qualified(pairs_table)
        cols = {d[0].lower() for d in cur.execute(f"SELECT * FROM {q} LIMIT 0").description}
        cur.fetchall()
        need = {"source_table", "source_id", "target_table", "target_id", "decision"}
        if not need <= cols:
            raise PmatchError(f"product_clusters: {pairs_table!r} needs columns {sorted(need)} "
                              f"(a match_products result); it has {sorted(cols)}")
        score = "CAST(score AS DOUBLE)" if "score" in cols else "1.0"
        rows = cur.execute(
            f"SELECT {quote_ident('source_table')}, CAST(source_id AS VARCHAR), {quote_ident('target_table')}, "
            f"CAST(target_id AS VARCHAR), decision, {score} FROM {q}").fetchall()
        names = {table_key(n): n for r in rows for n in (r[0], r[2])}
        verdicts = current_verdicts(cur, set(names))
    finally:
        cur.close()
    members, accepted = [], []
    for st, sid, tt, tid, dec, sc in rows:
        a, b = f"{st}:{sid}", f"{tt}:{tid}"
        members += [a, b]
        if dec == "accept":
            accepted.append((a, b, sc if sc is not None else 0.0))
    # human verdicts: a `match` links its offers whatever the model scored; a `no_match` pair never ends
    # up in one entity (not even through a chain of accepted pairs)
    must, cannot = [], []
    for key, v in verdicts.items():
        verdict = v[0]
        a, b = f"{names[key.source_table]}:{key.source_id}", f"{names[key.target_table]}:{key.target_id}"
        if verdict == "match":
            must.append((a, b))
            members += [a, b]
        elif verdict == "no_match":
            cannot.append((a, b))
    pairs = constrained_edges(accepted, must, cannot)
    ent = assign_entities(ctx.index_root, registry, list(dict.fromkeys(members)), pairs)
    return [{"table_name": key.split(":", 1)[0], "offer_id": key.split(":", 1)[1], "entity_id": e}
            for key, e in sorted(ent.items())]


def _name_some(ids: list[str], n: int = 10) -> str:
    head = ", ".join(repr(i) for i in ids[:n])
    return head + (f" and {len(ids) - n} more" if len(ids) > n else "")


def _target_view_for(ctx: PmatchContext, target: str):
    """The target's index view, built (or re-projected for the active matcher) when needed."""
    index = OfferIndex(ctx.index_root, check_index_name(index_name_for(target)))
    matcher = active_matcher(ctx.settings.matcher, ctx.settings.home)
    want = matcher.identity if matcher is not None else None
    if not index.exists() or index.matcher_identity() != want:
        index_table(ctx, target, progress=False)
    index.check_encoders(ctx.settings)
    return target_view(index, ctx.settings.home)


def score_table_pairs(ctx: PmatchContext, con: duckdb.DuckDBPyConnection, source: str, target: str,
                      pairs: list[tuple[str, str]], pair_top_m: int | None) -> list[tuple[float | None, float | None]]:
    """``score_pairs``' score and stage 1's own score of each (source id, target id) of two tables (the same number
    where the pair scorer did not re-read the pair), called from Python: the review
    commands score pairs again, also from inside ``_pm_queue_review``, where the ``score_pairs`` macro does not
    exist (TEMP macros belong to the connection that installed them; a UDF runs SQL on a cursor). ``con``: a
    connection or cursor to read ``source`` with; ``pair_top_m``: 0 = stage 1 alone, else every pair re-read by
    the matcher's pair scorer (the connection's setting is not consulted)."""
    ids = list(dict.fromkeys(a for a, _ in pairs))
    rows = con.execute(f"SELECT CAST(o.id AS VARCHAR), CAST(to_json(o) AS VARCHAR) FROM {quote_qualified(source)} "
                       "AS o WHERE CAST(o.id AS VARCHAR) IN (SELECT unnest(?::VARCHAR[]))", [ids]).fetchall()
    copies = Counter(k for k, _ in rows)
    row_of: dict[str, str] = {}
    for k, r in rows:
        row_of.setdefault(k, r)
    items = [{"pair_no": i + 1, "source_key": a, "target_key": b, "source_row": row_of.get(a),
              "copies": copies.get(a, 0)} for i, (a, b) in enumerate(pairs)]
    return [(r["score"], r["_stage1"]) for r in _score_pairs(ctx, source, target, items, pair_top_m)]


_SETTING = object()  # _score_pairs: pair_top_m from the connection's settings


def _score_pairs(ctx: PmatchContext, source: str | None, target: str | None, items: list[dict],
                 pair_top_m: int | None | object = _SETTING) -> list[dict]:
    """``score_pairs``: score the given pairs (one dict per item, in order) with match_products' scoring
    (``pair_top_m``: the connection's setting unless given). ``_stage1`` in each dict is stage 1's own score, for
    callers in Python; the UDF's struct conversion takes only ``_SCORED``'s fields."""
    if source is None or target is None:
        raise PmatchError("score_pairs: source and target table names must not be NULL")
    if not items:
        return []
    view = _target_view_for(ctx, target)
    dedup = _same_table(source, target)
    dup = sorted({it["source_key"] for it in items if (it["copies"] or 0) > 1})
    if dup:
        raise OfferTableError(f"score_pairs: source {source!r} has duplicate id(s) {_name_some(dup)}; "
                              "ids must be unique")
    unknown_s = list(dict.fromkeys(it["source_key"] for it in items
                                   if it["source_key"] is not None and it["source_row"] is None))
    tkeys = list(dict.fromkeys(it["target_key"] for it in items if it["target_key"] is not None))
    tpos = dict(zip(tkeys, view.positions(tkeys).tolist(), strict=True))
    unknown_t = [key for key in tkeys if tpos[key] < 0]
    if unknown_s or unknown_t:
        parts = []
        if unknown_s:
            parts.append(f"{len(unknown_s)} source_id(s) not in {source!r}: {_name_some(unknown_s)}")
        if unknown_t:
            parts.append(f"{len(unknown_t)} target_id(s) not in {target!r}: {_name_some(unknown_t)}")
        raise PmatchError(f"score_pairs: unknown ids in the pairs: {'; '.join(parts)}")
    out: list[dict | None] = [None] * len(items)
    todo = []
    for i, it in enumerate(items):
        note = ("source_id is NULL" if it["source_key"] is None else "target_id is NULL" if it["target_key"] is None
                else "self pair (dedup mode)" if dedup and it["source_key"] == it["target_key"] else None)
        if note:
            out[i] = {"pair_no": it["pair_no"], "rank": None, "score": None, "text_score": None,
                      "image_score": None, "lexical_score": None, "identifier_match": None, "price_ratio": None,
                      "decision": None, "human_verdict": None, "scored_by": None, "note": note, "_stage1": None}
        else:
            todo.append(i)
    if todo:
        src_pos: dict[str, int] = {}
        rows = []
        for i in todo:
            key = items[i]["source_key"]
            if key not in src_pos:
                src_pos[key] = len(rows)
                rows.append({k.lower(): v for k, v in json.loads(items[i]["source_row"]).items()})
        offers = _source_offers(rows, "score_pairs", source)
        reuse = view if dedup else _source_view(ctx, source)
        src_vecs = source_vectors(offers, ctx.settings, view.fusion, reuse=reuse, matcher=view.matcher)
        s = np.array([src_pos[items[i]["source_key"]] for i in todo], dtype=np.int64)
        t = np.array([tpos[items[i]["target_key"]] for i in todo], dtype=np.int64)
        top_m = ctx.settings.pair_top_m if pair_top_m is _SETTING else pair_top_m
        cand = score_given(src_vecs, view, s, t, exclude_self=dedup, pair_top_m=top_m)
        # human verdicts (pm_labels) override the model's decision, as in match_products
        keys = [PairKey.of(source, items[i]["source_key"], target, items[i]["target_key"]) for i in todo]
        decisions, human = override_decisions(keys, cand.decision, _verdicts(ctx, source, target))
        for j, i in enumerate(todo):
            out[i] = {"pair_no": items[i]["pair_no"], "rank": int(cand.rank[j]), "score": _nan_none(cand.score[j]),
                      "text_score": _nan_none(cand.text_score[j]), "image_score": _nan_none(cand.image_score[j]),
                      "lexical_score": float(cand.lexical_score[j]), "identifier_match": bool(cand.id_match[j]),
                      "price_ratio": _nan_none(cand.price_ratio[j]), "decision": decisions[j],
                      "human_verdict": human[j], "scored_by": SCORED_BY[cand.scored_by[j]], "note": None,
                      "_stage1": _nan_none(cand.stage1_score[j])}
    return out
