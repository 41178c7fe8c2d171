"""Catalog identifiers as columns: GTIN checked and normalised, MPN in the identifier channel, both in the
zero-shot score, the decision features, the index (format 3, migrated in place) and trained matchers."""

from __future__ import annotations

import json

import numpy as np
import pytest

import pmatch_duckdb as pm
from pmatch_duckdb import offer_vectors as ov
from pmatch_duckdb.decision import DecisionModel, train_decision
from pmatch_duckdb.features.codes import gtin_problem, mpn_identifiers, normalize_gtin
from pmatch_duckdb.features.lexical import identifiers
from pmatch_duckdb.fusion import FusionConfig, pair_score
from pmatch_duckdb.pair_features import PAIR_FEATURES, pair_feature_matrix
from pmatch_duckdb.store import FORMAT, META_KEY, OfferIndex


def ean13(body: str) -> str:
    """12 digits + the GS1 check digit (written out here independently of the code under test)."""
    s = sum(int(d) * (1 if i % 2 == 0 else 3) for i, d in enumerate(body))
    return body + str((10 - s % 10) % 10)


@pytest.mark.parametrize("value, norm", [
    ("4006381333931", "04006381333931"),          # EAN-13 (published example)
    ("036000291452", "00036000291452"),           # UPC-A (GTIN-12)
    ("0036000291452", "00036000291452"),          # the same item as EAN-13
    ("96385074", "00000096385074"),               # EAN-8
    ("10012345678902", "10012345678902"),         # GTIN-14
    (" 4006381-333931 ", "04006381333931"),       # spaces and hyphens ignored
    (36000291452, "00036000291452"),              # a numeric column lost the UPC's leading zero
    (4006381333931.0, "04006381333931"),          # ... or read it as DOUBLE
])
def test_valid_gtins_normalise_to_14_digits(value, norm):
    assert normalize_gtin(value) == norm and gtin_problem(value) is None


@pytest.mark.parametrize("value, problem", [
    ("4006381333932", "bad check digit"), ("036000291453", "bad check digit"), ("12345", "wrong length"),
    ("400638133393", "bad check digit"), ("40063813339310", "bad check digit"), ("123456789", "wrong length"),
    ("ABC-123", "not digits"), ("00000000", "all zeros"), (12.5, "not a whole number"), (10**15, "wrong length"),
])
def test_invalid_gtins_are_no_evidence(value, problem):
    assert normalize_gtin(value) is None
    assert gtin_problem(value).startswith(problem)


def test_empty_gtin_is_neither_valid_nor_a_problem():
    for v in (None, "", "  "):
        assert normalize_gtin(v) is None and gtin_problem(v) is None


def test_mpn_normalised_like_title_model_numbers():
    assert mpn_identifiers("KDL-40V4100")[0] == identifiers("Sony KDL-40V4100 40in TV")[0] == "kdl40v4100"
    assert "40v4100" in mpn_identifiers("KDL 40V4100")  # its parts too
    assert mpn_identifiers("MB990LL/A") == ["mb990lla"]
    assert mpn_identifiers("N/A") == mpn_identifiers("none") == mpn_identifiers("-") == mpn_identifiers(None) == []


def test_zero_shot_score_gtin_rule():
    cfg = FusionConfig()
    lex, nan = np.array([0.2, 0.95, 0.5, 0.5]), np.full(4, np.nan)
    s = pair_score(lex, nan, nan, np.zeros(4), cfg, np.array([1, -1, 0, 0]))
    assert s[0] >= cfg.gtin_match_score >= cfg.accept_threshold  # equal GTINs: accepted, whatever the titles say
    assert s[1] <= cfg.gtin_conflict_score < cfg.review_threshold  # different GTINs: rejected
    assert s[2] == s[3] == pytest.approx(pair_score(lex, nan, nan, np.zeros(4), cfg)[2])  # none: unchanged


def test_decision_features_and_old_feature_lists():
    n = 3
    z = np.zeros(n)
    x = pair_feature_matrix(z, z, z, z, [[]] * n, [[]] * n, [""] * n, [""] * n, [None] * n, [None] * n, z, z,
                            np.ones(n), z, gtin=np.array([1, -1, 0]))
    col = {f: x[:, i] for i, f in enumerate(PAIR_FEATURES)}
    assert col["gtin_equal"].tolist() == [1, 0, 0] and col["gtin_conflict"].tolist() == [0, 1, 0]
    old = DecisionModel.from_dict({"type": "logistic+isotonic", "features": list(PAIR_FEATURES[:25]),
                                   "coef": [0.1] * 25, "intercept": 0.0, "mean": [0.0] * 25, "scale": [1.0] * 25,
                                   "accept_threshold": None, "review_threshold": 0.5})
    assert not old.gtin_learnt()  # a matcher from before the GTIN columns: matching applies the GTIN rule


def test_decision_model_records_whether_it_saw_gtins():
    rng = np.random.default_rng(0)
    n = 400
    y = (rng.random(n) < 0.4).astype(float)
    x = np.zeros((n, len(PAIR_FEATURES)), np.float32)
    x[:, 0] = y + rng.normal(0, 0.6, n)
    m = train_decision(x, y, x, y)
    assert m.info["gtin_pairs"] == 0 and not m.gtin_learnt()
    x[:200, PAIR_FEATURES.index("gtin_equal")] = y[:200]
    x[:200, PAIR_FEATURES.index("gtin_conflict")] = 1 - y[:200]
    m = train_decision(x, y, x, y)
    assert m.info["gtin_pairs"] == 200 and m.gtin_learnt()


@pytest.fixture()
def shop(linked_home, tmp_path):
    """A catalog with gtin/mpn columns and a raw feed whose codes are named ean/part_no (mapped by a view);
    a pmatch home of its own (linking the default encoders) so a trained matcher stays in the test."""
    thome = linked_home(tmp_path)
    con = pm.connect(tmp_path / "shop.duckdb", home=thome, image_roots=[tmp_path])
    g = [ean13(f"40063813{i:04d}") for i in range(6)]
    con.execute("CREATE TABLE catalog (id INTEGER, title VARCHAR, brand VARCHAR, price DOUBLE, gtin VARCHAR, "
                "mpn VARCHAR)")
    con.executemany("INSERT INTO catalog VALUES (?, ?, ?, ?, ?, ?)", [
        [1, "Nordwind merino hiking sock, grey", "Nordwind", 12.0, g[0], None],
        [2, "Lumora ceramic pour-over kettle 1.2 l", "Lumora", 49.0, g[1], None],
        [3, "Ostrel cordless drill 18 V brushless", "Ostrel", 129.0, g[2], None],
        [4, "Vexora gaming mouse, wireless", "Vexora", 59.0, None, "VX-9000-W"],
        [5, "Halvik espresso cups, set of 4", "Halvik", 24.0, g[4], None],
        [6, "Zentrix desk lamp with USB charger", "Zentrix", 39.0, "1234", None],
    ])
    # ean: BIGINT (leading zeros lost); f1: other words, same GTIN; f2: same words, another valid GTIN;
    # f3: same words, invalid GTIN (bad check digit); f4: MPN only; f5: no codes; f6: valid vs invalid
    con.execute("CREATE TABLE raw_feed (sku VARCHAR, name VARCHAR, ean BIGINT, part_no VARCHAR)")
    con.executemany("INSERT INTO raw_feed VALUES (?, ?, ?, ?)", [
        ["f1", "Wandersocke Schafwolle, Gr. 39-42", int(g[0]), None],
        ["f2", "Lumora ceramic pour-over kettle 1.2 l", int(ean13("400638130099")), None],
        ["f3", "Ostrel cordless drill 18 V brushless", int(g[2][:-1] + str((int(g[2][-1]) + 1) % 10)), None],
        ["f4", "Kabellose Spielmaus", None, "vx 9000 w"],
        ["f5", "Halvik espresso cups, set of 4", None, None],
        ["f6", "Zentrix desk lamp with USB charger", int(ean13("400638139999")), None],
    ])
    con.execute("CREATE VIEW feed AS SELECT sku AS id, name AS title, ean AS gtin, part_no AS mpn FROM raw_feed")
    yield con, g
    con.close()


def _best(con) -> dict:
    rows = con.execute("SELECT source_id, target_id, score, decision, identifier_match FROM "
                       "match_products('feed', 'catalog', k := 6)").fetchall()  # every pair (6 catalog offers)
    out: dict = {}
    for s, t, score, d, idm in rows:
        out.setdefault(s, {})[t] = (score, d, idm)
    return out


def test_match_products_uses_gtin_and_mpn_columns(shop):
    con, _ = shop
    best = _best(con)
    assert best["f1"][1][0] >= 0.97 and best["f1"][1][1:] == ("accept", True)  # same GTIN, other language
    assert best["f2"][2][0] <= 0.05 and best["f2"][2][1] == "reject"  # same words, different valid GTINs
    assert best["f3"][3][1] == "accept" and best["f3"][3][0] >= 0.8  # invalid GTIN: no evidence either way
    assert best["f4"][4][2] is True  # MPN 'vx 9000 w' = 'VX-9000-W'
    assert best["f6"][6][1] == "accept"  # the catalog's '1234' is not a GTIN: no conflict


def test_index_stores_codes_and_rewrites_code_only_changes_without_embedding(shop, monkeypatch):
    con, g = shop
    con.execute("SELECT * FROM pm_index('catalog')").fetchall()
    idx = OfferIndex(_index_root(con), "catalog")
    data = idx.table().to_arrow()
    assert idx.metadata()["format"] == FORMAT == 3
    codes = dict(zip(data["id"].to_pylist(), zip(data["gtin"].to_pylist(), data["mpn"].to_pylist(), strict=True), strict=True))
    assert codes["1"] == ("0" + g[0], None) and codes["4"] == (None, "VX-9000-W") and codes["6"] == (None, None)
    con.execute(f"UPDATE catalog SET gtin = '{ean13('400638130099')}' WHERE id = 1")
    embedded = []
    real = ov.embed_offers
    monkeypatch.setattr(ov, "embed_offers", lambda offers, *a, **kw: embedded.append(len(offers)) or
                        real(offers, *a, **kw))
    st = con.execute("SELECT inserted, updated, unchanged FROM pm_index('catalog')").fetchall()[0]
    assert st == (0, 1, 5) and embedded == [0]  # rewritten, not re-embedded
    best = _best(con)
    assert best["f1"][1][1] == "reject" and best["f2"][1][1] == "accept"  # f2's GTIN is now catalog 1's


def _index_root(con):
    from pmatch_duckdb.api import context_of

    return context_of(con).index_root


def test_format_2_index_gains_code_columns_in_place(shop):
    con, g = shop
    con.execute("SELECT * FROM pm_index('catalog')").fetchall()
    idx = OfferIndex(_index_root(con), "catalog")
    data = idx.table().to_arrow().drop_columns(["gtin", "mpn"])
    meta = {**idx.metadata(), "format": 2}
    idx.db.create_table("catalog", data.replace_schema_metadata({META_KEY: json.dumps(meta).encode()}),
                        mode="overwrite", on_bad_vectors="null")
    st = con.execute("SELECT inserted, updated, unchanged FROM pm_index('catalog')").fetchall()[0]
    assert st == (0, 0, 6)
    data = idx.table().to_arrow()
    assert idx.metadata()["format"] == 3 and "0" + g[0] in data["gtin"].to_pylist()
    assert _best(con)["f1"][1][1] == "accept"


def test_trained_matcher_without_gtin_training_data_applies_the_gtin_rule(shop):
    pytest.importorskip("torch")
    from pmatch_duckdb.training import train_matcher

    con, _ = shop
    rng = np.random.default_rng(3)
    words = ["red", "blue", "green", "wool", "steel", "oak", "mini", "max", "pro", "lite", "neo", "eco"]
    con.execute("CREATE TABLE tcat (id INTEGER, title VARCHAR)")
    con.execute("CREATE TABLE tfeed (id INTEGER, title VARCHAR)")
    titles = sorted({" ".join(rng.choice(words, 4)) for _ in range(400)})[:150]
    con.executemany("INSERT INTO tcat VALUES (?, ?)", [[i, t] for i, t in enumerate(titles)])
    con.executemany("INSERT INTO tfeed VALUES (?, ?)", [[i, t.upper()] for i, t in enumerate(titles)])
    con.execute("CREATE TABLE tlabels AS SELECT id AS left_id, id AS right_id FROM tfeed")
    r = train_matcher(con, ["tfeed", "tcat"], pairs="tlabels", name="default", epochs=5, cross_fit=False,
                      progress=False, log=lambda _: None)
    assert r.activated and r.metrics["valid"]["best_f1"] > 0.5
    best = _best(con)  # the catalog index is re-projected with the new matcher
    assert best["f1"][1][1] == "accept" and best["f2"][2][1] == "reject"


def test_sql_functions_check_codes_like_the_index(con):
    rows = con.execute("""
        SELECT pm_gtin(code), pm_gtin_error(code) FROM (VALUES ('4006381333931'), ('0036000291452'),
            ('4006381333932'), ('12345'), ('ABC'), (NULL), ('')) t(code)""").fetchall()
    assert rows == [("04006381333931", None), ("00036000291452", None), (None, "bad check digit"),
                    (None, "wrong length (a GTIN has 8, 12, 13 or 14 digits)"), (None, "not digits"),
                    (None, None), (None, None)]
    # numeric columns lost the UPC's leading zero: restored, as pm_index does
    assert con.execute("SELECT pm_gtin(36000291452::BIGINT), pm_gtin(36000291452::DECIMAL(14, 0)), "
                       "pm_gtin(4006381333931::DOUBLE)").fetchall() == [
        ("00036000291452", "00036000291452", "04006381333931")]
    # the analyst's question: which catalog codes are no evidence, and why
    con.execute("CREATE TABLE cat AS SELECT * FROM (VALUES (1, '4006381333931'), (2, '4006381333932')) t(id, gtin)")
    assert con.execute("SELECT id, pm_gtin_error(gtin) FROM cat WHERE pm_gtin_error(gtin) IS NOT NULL"
                       ).fetchall() == [(2, "bad check digit")]
