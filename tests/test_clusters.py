"""Entity clusters: assign_entities (components, stable ids across runs) and SQL product_clusters."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import pytest

import pmatch_duckdb as pm
from pmatch_duckdb.clusters import assign_entities

ENTITY_ID = re.compile(r"E\d{6}")


def _groups(result: dict[str, str]) -> set[frozenset[str]]:
    """The partition an assignment induces (entity id -> members), as a set of member sets."""
    by: dict[str, set[str]] = {}
    for key, eid in result.items():
        by.setdefault(eid, set()).add(key)
    return {frozenset(v) for v in by.values()}


# ----------------------------------------------------------------------------------------------
# assign_entities
# ----------------------------------------------------------------------------------------------


def test_connected_components(tmp_path: Path) -> None:
    members = ["t:a", "t:b", "t:c", "t:d", "t:e", "t:f"]
    pairs = [("t:a", "t:b"), ("t:c", "t:b"), ("t:d", "t:e")]
    res = assign_entities(tmp_path, "reg", members, pairs)
    assert set(res) == set(members)
    assert all(ENTITY_ID.fullmatch(e) for e in res.values())
    assert _groups(res) == {frozenset({"t:a", "t:b", "t:c"}), frozenset({"t:d", "t:e"}), frozenset({"t:f"})}


def test_pair_members_need_not_be_listed(tmp_path: Path) -> None:
    res = assign_entities(tmp_path, "reg", [], [("feed:1", "catalog:9")])
    assert set(res) == {"feed:1", "catalog:9"}
    assert res["feed:1"] == res["catalog:9"]


def test_singletons_get_distinct_ids(tmp_path: Path) -> None:
    members = ["t:x", "t:y", "t:z"]
    res = assign_entities(tmp_path, "reg", members, [])
    assert set(res) == set(members)
    assert len(set(res.values())) == 3
    assert all(ENTITY_ID.fullmatch(e) for e in res.values())


def test_ids_stable_across_runs(tmp_path: Path) -> None:
    members = ["t:a", "t:b", "t:c", "t:d", "t:e"]
    pairs = [("t:a", "t:b"), ("t:d", "t:e")]
    first = assign_entities(tmp_path, "reg", members, pairs)
    again = assign_entities(tmp_path, "reg", list(reversed(members)), [(b, a) for a, b in reversed(pairs)])
    assert again == first
    # the registry is on disk under the root: a third run sees it too
    assert assign_entities(tmp_path, "reg", members, pairs) == first
    assert (tmp_path / "lancedb" / "_entities_reg.lance").is_dir()


def test_new_offer_joins_existing_cluster(tmp_path: Path) -> None:
    first = assign_entities(tmp_path, "reg", ["t:a", "t:b", "t:c"], [("t:a", "t:b")])
    second = assign_entities(tmp_path, "reg", ["t:a", "t:b", "t:c", "t:new"], [("t:a", "t:b"), ("t:new", "t:b")])
    assert second["t:new"] == first["t:a"]
    assert second["t:a"] == first["t:a"] and second["t:b"] == first["t:b"]
    assert second["t:c"] == first["t:c"]


def test_merge_keeps_oldest_id(tmp_path: Path) -> None:
    # the older cluster has the alphabetically *later* keys, so "first in sort order" is not enough
    old = assign_entities(tmp_path, "reg", [], [("t:z1", "t:z2")])
    newer = assign_entities(tmp_path, "reg", [], [("t:a1", "t:a2"), ("t:z1", "t:z2")])
    assert newer["t:z1"] == old["t:z1"]
    assert newer["t:a1"] != old["t:z1"]
    merged = assign_entities(tmp_path, "reg", [], [("t:a1", "t:a2"), ("t:z1", "t:z2"), ("t:a2", "t:z1")])
    assert set(merged.values()) == {old["t:z1"]}
    assert set(merged) == {"t:a1", "t:a2", "t:z1", "t:z2"}


def test_fresh_ids_never_reuse_known_ones(tmp_path: Path) -> None:
    first = assign_entities(tmp_path, "reg", ["t:a", "t:b"], [])
    later = assign_entities(tmp_path, "reg", ["t:c"], [])  # a and b are not in this run
    assert later["t:c"] not in set(first.values())


def test_registries_are_independent(tmp_path: Path) -> None:
    a = assign_entities(tmp_path, "one", ["t:a", "t:b"], [])
    b = assign_entities(tmp_path, "two", ["t:b", "t:a"], [])
    # "two" starts numbering from scratch and does not know "one"'s assignment
    assert sorted(b.values()) == sorted(a.values())
    assert (tmp_path / "lancedb" / "_entities_one.lance").is_dir()
    assert (tmp_path / "lancedb" / "_entities_two.lance").is_dir()


def test_split_cluster_gets_distinct_ids(tmp_path: Path) -> None:
    """Two offers that are no longer linked are two entities: they must not share an id.

    Currently fails: every component takes the oldest id any member had, so both halves of a split
    cluster keep the same entity id (see report: clusters.assign_entities).
    """
    first = assign_entities(tmp_path, "reg", ["t:a", "t:b"], [("t:a", "t:b")])
    assert first["t:a"] == first["t:b"]
    split = assign_entities(tmp_path, "reg", ["t:a", "t:b"], [])
    assert split["t:a"] != split["t:b"]
    # one half keeps the old id, the other gets a fresh one
    assert first["t:a"] in {split["t:a"], split["t:b"]}


# ----------------------------------------------------------------------------------------------
# SQL product_clusters
# ----------------------------------------------------------------------------------------------

CATALOG = [
    (1, "Sony Bravia KDL-40V4100 40in LCD TV", "Sony", 499.0),
    (2, "Apple iPhone 13 128GB blue", "Apple", 799.0),
    (3, "Logitech MX Master 3 wireless mouse", "Logitech", 99.0),
    (4, "Bose QuietComfort 35 II noise cancelling headphones", "Bose", 299.0),
    (5, "Canon EOS 250D digital SLR camera", "Canon", 549.0),
    (6, "Dyson V11 cordless vacuum cleaner", "Dyson", 599.0),
]
FEED = [
    (101, "Sony Bravia KDL-40V4100 40in LCD TV", "Sony", 489.0),
    (102, "Logitech MX Master 3 wireless mouse", "Logitech", 95.0),
    (103, "Garden hose 20m with spray nozzle", "Gardena", 25.0),
]


@pytest.fixture()
def shop(tmp_path: Path, home: Path):
    images = tmp_path / "images"
    images.mkdir()
    con = pm.connect(tmp_path / "shop.duckdb", home=home, image_roots=[images])
    for name, rows in (("catalog", CATALOG), ("feed", FEED)):
        con.execute(f"CREATE TABLE {name} (id INTEGER, title VARCHAR, brand VARCHAR, price DOUBLE)")
        con.executemany(f"INSERT INTO {name} VALUES (?, ?, ?, ?)", rows)
    yield con
    con.close()


def test_product_clusters_over_saved_match_result(shop: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    shop.execute("CREATE TABLE matches AS SELECT * FROM match_products('feed', 'catalog', k := 2)").fetchall()
    rows = shop.execute("SELECT * FROM product_clusters('matches')")
    assert [d[0] for d in rows.description] == ["table_name", "offer_id", "entity_id"]
    rows = rows.fetchall()
    keys = [(t, o) for t, o, _ in rows]
    assert len(keys) == len(set(keys)), "one entity per offer"
    seen = shop.execute("""SELECT DISTINCT source_table, CAST(source_id AS VARCHAR) FROM matches
                           UNION SELECT DISTINCT target_table, CAST(target_id AS VARCHAR) FROM matches""").fetchall()
    assert set(keys) == set(seen)
    ent = {(t, o): e for t, o, e in rows}
    assert all(ENTITY_ID.fullmatch(e) for e in ent.values())
    accepted = shop.execute("SELECT CAST(source_id AS VARCHAR), CAST(target_id AS VARCHAR) FROM matches "
                            "WHERE decision = 'accept'").fetchall()
    # the two exact copies are accepted and end up in one entity each with their catalog offer
    assert {("101", "1"), ("102", "3")} <= set(accepted)
    for s, t in accepted:
        assert ent[("feed", s)] == ent[("catalog", t)]
    assert ent[("feed", "101")] != ent[("feed", "102")]
    # the registry lives beside the database and a second run gives the same ids
    assert (tmp_path / "shop.pmatch" / "lancedb" / "_entities_entities.lance").is_dir()
    assert shop.execute("SELECT * FROM product_clusters('matches')").fetchall() == rows
    assert sorted(pm.clusters(shop, "matches").fetchall()) == sorted(rows)


def test_product_clusters_components_from_decisions(shop: duckdb.DuckDBPyConnection) -> None:
    shop.execute("""CREATE TABLE pairs AS SELECT * FROM (VALUES
        ('feed', 1, 'catalog', 10, 'accept'),
        ('feed', 2, 'catalog', 10, 'accept'),
        ('feed', 3, 'catalog', 11, 'review'),
        ('feed', 4, 'catalog', 12, 'reject')
    ) t(source_table, source_id, target_table, target_id, decision)""")
    rows = shop.execute("SELECT table_name, offer_id, entity_id FROM product_clusters('pairs', registry := 'r1')"
                        ).fetchall()
    ent = {(t, o): e for t, o, e in rows}
    assert len(ent) == len(rows) == 7
    assert ent[("feed", "1")] == ent[("feed", "2")] == ent[("catalog", "10")]
    # review and reject do not link offers
    assert ent[("feed", "3")] != ent[("catalog", "11")]
    assert ent[("feed", "4")] != ent[("catalog", "12")]
    assert len(set(ent.values())) == 5


def test_product_clusters_bad_table_names_its_columns(shop: duckdb.DuckDBPyConnection) -> None:
    shop.execute("CREATE TABLE notpairs AS SELECT 1 AS a, 2 AS weird_column")
    with pytest.raises(duckdb.Error, match="decision") as err:
        shop.execute("SELECT * FROM product_clusters('notpairs')").fetchall()
    # the message lists the columns the table has (currently an un-interpolated '{sorted(cols)}')
    assert "weird_column" in str(err.value)


def test_product_clusters_rejects_bad_registry_name(shop: duckdb.DuckDBPyConnection) -> None:
    shop.execute("CREATE TABLE pairs AS SELECT 'feed' source_table, 1 source_id, 'catalog' target_table, "
                 "2 target_id, 'accept' decision")
    with pytest.raises(duckdb.Error, match="invalid index name"):
        shop.execute("SELECT * FROM product_clusters('pairs', registry := '../x')").fetchall()
