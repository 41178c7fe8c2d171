"""score_pairs(source, target, pairs): given pairs scored by match_products' scoring path — same scores,
input order, unknown ids named, NULL ids kept with a reason, dedup mode, duplicate source ids."""

from __future__ import annotations

import random
from pathlib import Path

import duckdb
import pytest
from test_match import CATALOG, COLUMNS, FEED, _create, _query

import pmatch_duckdb as pm


@pytest.fixture()
def shop(tmp_path: Path, home: Path, images: Path):
    con = pm.connect(tmp_path / "shop.duckdb", home=home, image_roots=[images])
    _create(con, "catalog", CATALOG)
    _create(con, "feed", FEED)
    yield con
    con.close()


def test_scores_equal_match_products_for_its_own_pairs(shop):
    hits = _query(shop, "SELECT * FROM match_products('feed', 'catalog', k := 5)")
    shop.execute("CREATE TABLE given AS SELECT source_id, target_id FROM match_products('feed', 'catalog', k := 5) "
                 "ORDER BY score")  # an order match_products does not use
    got = _query(shop, "SELECT * FROM score_pairs('feed', 'catalog', 'given')")
    assert list(got[0]) == COLUMNS + ["note"]
    want = {(h["source_id"], h["target_id"]): h for h in hits}
    assert len(got) == len(want)
    for g in got:
        h = want[(g["source_id"], g["target_id"])]
        for col in ("rank", "decision", "identifier_match", "lexical_score", "text_score"):
            assert g[col] == pytest.approx(h[col]), col
        assert g["score"] == pytest.approx(h["score"], abs=1e-9)
        assert g["note"] is None and g["scored_by"] == h["scored_by"] == "zero-shot"
    assert [g["score"] for g in got] == sorted(g["score"] for g in got)  # input order kept


def test_input_order_kept_for_many_pairs_from_a_view(shop):
    rng = random.Random(3)
    pairs = [(rng.choice(FEED)[0], rng.choice(CATALOG)[0]) for _ in range(5000)]
    shop.execute("CREATE TABLE raw (n INTEGER, source_id INTEGER, target_id INTEGER)")
    shop.executemany("INSERT INTO raw VALUES (?, ?, ?)", [(i, a, b) for i, (a, b) in enumerate(pairs)])
    shop.execute("CREATE VIEW given AS SELECT source_id, target_id FROM raw ORDER BY n DESC")
    got = shop.execute("SELECT source_id, target_id, score FROM score_pairs('feed', 'catalog', 'given')").fetchall()
    assert [(a, b) for a, b, _ in got] == pairs[::-1]
    # the same pair always gets the same score
    by_pair: dict = {}
    for a, b, sc in got:
        assert by_pair.setdefault((a, b), sc) == pytest.approx(sc)


def test_cte_source_and_pairs(shop):
    rows = shop.execute("""
        WITH f AS (SELECT * FROM feed WHERE id < 103),
             p AS (SELECT * FROM (VALUES (102, 3), (101, 2)) v(source_id, target_id))
        SELECT source_id, target_id, decision FROM score_pairs('f', 'catalog', 'p')""").fetchall()
    assert [(a, b) for a, b, _ in rows] == [(102, 3), (101, 2)]
    assert all(d in ("accept", "review", "reject") for _, _, d in rows)


def test_unknown_ids_are_named(shop):
    shop.execute("CREATE TABLE given AS SELECT * FROM (VALUES (101, 2), (777, 2), (102, 4242), (888, 1)) "
                 "v(source_id, target_id)")
    with pytest.raises(duckdb.Error, match=r"unknown ids.*2 source_id\(s\) not in 'feed': '777', '888'.*"
                                           r"1 target_id\(s\) not in 'catalog': '4242'"):
        shop.execute("SELECT * FROM score_pairs('feed', 'catalog', 'given')").fetchall()


def test_null_ids_kept_with_a_reason_and_empty_pairs(shop):
    shop.execute("CREATE TABLE given (source_id INTEGER, target_id INTEGER)")
    assert shop.execute("SELECT * FROM score_pairs('feed', 'catalog', 'given')").fetchall() == []
    shop.executemany("INSERT INTO given VALUES (?, ?)", [(None, 2), (101, 2), (101, None), (None, None)])
    got = _query(shop, "SELECT * FROM score_pairs('feed', 'catalog', 'given')")
    assert [(g["source_id"], g["target_id"]) for g in got] == [(None, 2), (101, 2), (101, None), (None, None)]
    assert [g["note"] for g in got] == ["source_id is NULL", None, "target_id is NULL", "source_id is NULL"]
    assert got[1]["score"] > 0.5 and got[1]["decision"] in ("accept", "review")
    assert all(g["score"] is None and g["decision"] is None for g in got if g["note"])


def test_dedup_mode_self_pairs_and_both_directions(shop):
    shop.execute("CREATE TABLE given AS SELECT * FROM (VALUES (1, 9), (9, 1), (3, 3), (1, 10)) v(source_id, target_id)")
    got = _query(shop, "SELECT * FROM score_pairs('catalog', 'CATALOG', 'given')")
    assert [(g["source_id"], g["target_id"]) for g in got] == [(1, 9), (9, 1), (3, 3), (1, 10)]
    assert got[2]["note"] == "self pair (dedup mode)" and got[2]["score"] is None
    assert got[0]["score"] is not None and got[1]["score"] is not None
    # XJ-9000B vs XJ-7000C (same brand, near-identical title) scores above the gadget ZT-1200
    assert got[0]["score"] > got[3]["score"]
    dedup = {(h["source_id"], h["target_id"]): h["score"]
             for h in _query(shop, "SELECT * FROM match_products('catalog', 'catalog')")}
    for g in got:
        if (g["source_id"], g["target_id"]) in dedup:
            assert g["score"] == pytest.approx(dedup[(g["source_id"], g["target_id"])], abs=1e-9)


def test_duplicate_source_ids_and_missing_columns_are_errors(shop):
    shop.execute("CREATE VIEW twice AS SELECT * FROM feed UNION ALL SELECT * FROM feed WHERE id = 101")
    shop.execute("CREATE TABLE given AS SELECT * FROM (VALUES (101, 2)) v(source_id, target_id)")
    with pytest.raises(duckdb.Error, match="duplicate id"):
        shop.execute("SELECT * FROM score_pairs('twice', 'catalog', 'given')").fetchall()
    shop.execute("CREATE TABLE bad AS SELECT * FROM (VALUES (101, 2)) v(left_id, right_id)")
    with pytest.raises(duckdb.Error, match="source_id"):
        shop.execute("SELECT * FROM score_pairs('feed', 'catalog', 'bad')").fetchall()
