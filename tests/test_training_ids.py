"""Training on two offer tables whose ids overlap (a supplier feed and a catalog both numbered 1..n)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import pmatch_duckdb as pm

pytest.importorskip("torch")
from pmatch_duckdb.training import train_matcher  # noqa: E402
from pmatch_duckdb.training.train import _OfferKeys  # noqa: E402

BRANDS = ["Nordwind", "Lumora", "Ostrel", "Vexora", "Halvik", "Zentrix", "Marwick", "Kestrelle"]
KINDS = ["shirt", "dress", "jacket", "trousers", "sneaker", "cap", "scarf", "hoodie"]
COLOURS = ["red", "blue", "green", "black", "white", "yellow", "orange", "pink", "grey", "beige"]


@pytest.fixture(scope="module")
def numbered(tmp_path_factory, linked_home):
    """feed and catalog both numbered 1..n; feed offer i is catalog offer perm[i] (so feed 5 and catalog 5
    are, as a rule, different products)."""
    root = tmp_path_factory.mktemp("train_ids")
    thome = linked_home(root)
    rng = np.random.default_rng(7)
    combos = sorted({(b, k, c) for b, k, c in zip(rng.choice(BRANDS, 2000), rng.choice(KINDS, 2000),
                                                   rng.choice(COLOURS, 2000), strict=True)})[:200]
    n = len(combos)
    perm = rng.permutation(n) + 1
    con = pm.connect(root / "shop.duckdb", home=thome, image_roots=[root])
    con.execute("CREATE TABLE feed (id INTEGER, title VARCHAR, grp INTEGER)")
    con.execute("CREATE TABLE catalog (id INTEGER, title VARCHAR, grp INTEGER)")
    for i, (b, k, c) in enumerate(combos):
        con.execute("INSERT INTO feed VALUES (?, ?, ?)", [i + 1, f"{b.upper()} {c}-{k} item", i])
        con.execute("INSERT INTO catalog VALUES (?, ?, ?)", [int(perm[i]), f"{b} {k} in {c}", i])
    con.execute("CREATE TABLE labels (left_id INTEGER, right_id INTEGER)")
    con.executemany("INSERT INTO labels VALUES (?, ?)", [[i + 1, int(perm[i])] for i in range(n)])
    yield con, n
    con.close()


def test_offer_keys_resolve_by_table_then_side():
    keys = _OfferKeys(["1", "2", "1", "3"], [0, 0, 1, 1], ["feed", "main.catalog"])
    assert keys.resolve("1", 0) == 0 and keys.resolve("1", 1) == 2  # in both tables: left → first, right → second
    assert keys.resolve("2", 1) == 1 and keys.resolve("3", 0) == 3  # in one table only: that table's offer
    assert keys.resolve(("catalog", "1"), 0) == 2 and keys.resolve(("MAIN.CATALOG", "1"), 0) == 2
    assert keys.resolve(("feed", "3"), 0) is None and keys.resolve("9", 0) is None
    assert keys.resolve(("nope", "1"), 0) is None


def test_training_on_tables_numbered_1_to_n(numbered):
    con, n = numbered
    assert con.execute("SELECT count(*) FROM feed JOIN catalog USING (id)").fetchall()[0][0] == n  # all ids overlap
    r = train_matcher(con, ["feed", "catalog"], pairs="labels", name="ids", epochs=30, seed=1, activate=False,
                      cross_fit=False, progress=False, log=lambda _: None)
    training = json.loads((r.path / "manifest.json").read_text())["training"]
    assert training["positive_pairs"] >= 0.7 * n
    assert r.metrics["valid"]["best_f1"] > 0.8, r.metrics["valid"]
    # retrieval truth is (table, id): had feed 5 been confused with catalog 5, recall would be near 0
    assert r.metrics["valid"]["vector_recall@10_trained"] > 0.8, r.metrics["valid"]


def test_labels_naming_tables_and_group_column(numbered):
    con, n = numbered
    # the same labels written the other way round, each side naming its table
    con.execute("CREATE OR REPLACE TABLE labels_named AS SELECT right_id AS left_id, 'catalog' AS left_table, "
                "left_id AS right_id, 'feed' AS right_table FROM labels")
    a = train_matcher(con, ["feed", "catalog"], pairs="labels_named", name="named", epochs=5, seed=1,
                      activate=False, cross_fit=False, progress=False, log=lambda _: None)
    b = train_matcher(con, ["feed", "catalog"], group_column="grp", name="grp", epochs=5, seed=1,
                      activate=False, cross_fit=False, progress=False, log=lambda _: None)
    for r in (a, b):
        t = json.loads((r.path / "manifest.json").read_text())["training"]
        assert t["positive_pairs"] >= 0.7 * n, (r.name, t)
        assert r.metrics["valid"]["vector_recall@10_trained"] > 0.5, (r.name, r.metrics["valid"])


def test_a_labels_table_that_is_not_there_is_a_clear_error(numbered):
    """A misspelt --pairs / --valid-pairs table: an error naming it (was DuckDB's traceback through the CLI)."""
    con, _ = numbered
    for kw in ({"pairs": "lables"}, {"pairs": "labels", "valid_pairs": "lables"}):
        with pytest.raises(pm.PmatchError, match="labels table 'lables' not found in the database"):
            train_matcher(con, ["feed", "catalog"], activate=False, progress=False, log=lambda _: None, **kw)
