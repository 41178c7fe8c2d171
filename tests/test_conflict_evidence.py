"""Zero-shot: titles that say two products (another model number, colour or quantity) lower the score, so a
sibling is not auto-accepted beside its twin; an index recorded before the rule keeps its scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

import pmatch_duckdb as pm
from pmatch_duckdb.features.lexical import identifiers
from pmatch_duckdb.fusion import FusionConfig, pair_score
from pmatch_duckdb.pair_features import PAIR_FEATURES, PairTexts, conflict_evidence, pair_feature_matrix
from pmatch_duckdb.store import META_KEY, OfferIndex

PAIRS = [  # (title a, title b, description b, the titles say two products)
    ("Panasonic KX-TG9341T Cordless Phone", "Panasonic KX-TG9342T Cordless Phone", None, True),  # another model
    ("Panasonic KX-TG9341T Cordless Phone", "Panasonic KXTG9341T cordless phone", None, False),  # the same code
    ("Sony Cyber-shot DSC-W150 Digital Camera", "Sony Cyber-shot DSCW150B Camera", None, False),  # variant spelling
    ("Garmin nuvi 255W Navigator", "Garmin Navigator 010-00718-20", "the nuvi 255W in a box", False),  # code below
    ("Logitech Harmony 1000 Remote - 966230-0403", "Logitech Harmony remote", None, False),  # one side has none
    ("Sony DVD Player - Black", "Sony DVD Player - Silver", None, True),  # another colour
    ("Sony DVD Player - Black", "Sony DVD Player black", None, False),
    ("Orange Crush 20 guitar amplifier", "Orange Crush 20 guitar amp, black", None, False),  # a brand, not a colour
    ("Kingston 16GB USB stick", "Kingston 32 GB USB stick", None, True),  # another capacity
    ("Kingston 16GB USB stick", "Kingston 16 GB USB stick", None, False),
    ("Kingston 16GB USB stick", "Kingston USB stick", None, False),
    ("Canon PowerShot 14.7 Megapixel Camera", "Canon PowerShot 14 Megapixel Camera", None, False),  # rounded
    ("LG 1.6 cu. ft. Microwave", "LG 2.0 cu.ft. Microwave", None, True),
]


def _texts(titles: list[str], brands: list[str | None], descs: list[str | None]) -> PairTexts:
    idents = [identifiers(f"{b or ''} {t}") for t, b in zip(titles, brands, strict=True)]
    desc = [[x for x in identifiers(d) if x not in i] for d, i in zip(descs, idents, strict=True)]
    return PairTexts(idents, titles, brands, desc)


def test_conflict_evidence_names_siblings_not_variants():
    brands = ["Orange" if a.startswith("Orange") else None for a, *_ in PAIRS]
    a = _texts([p[0] for p in PAIRS], brands, [None] * len(PAIRS))
    b = _texts([p[1] for p in PAIRS], brands, [p[2] for p in PAIRS])
    at = np.arange(len(PAIRS))
    got = conflict_evidence(a, b, at, at)
    assert got.tolist() == [p[3] for p in PAIRS]
    # the same evidence as the trained model's features, read together
    z = np.zeros(len(PAIRS))
    x = pair_feature_matrix(z, z, z, z, a.idents, b.idents, a.titles, b.titles, brands, brands, z, z,
                            np.ones(len(PAIRS)), z, a.desc_idents, b.desc_idents)
    f = {n: x[:, i] > 0 for i, n in enumerate(PAIR_FEATURES)}
    want = (f["full_id_conflict"] & ~f["id_partial"]) | f["colour_conflict"] | f["unit_conflict"]
    rounded = np.array(["14.7 Megapixel" in p[0] for p in PAIRS])  # the one place they part: values a rounding apart
    assert got.tolist() == (want & ~rounded).tolist() and want[rounded].all()
    # positions into longer offer lists, pairs in any order, an empty batch
    assert conflict_evidence(a, b, at[::-1], at[::-1]).tolist() == got[::-1].tolist()
    assert conflict_evidence(a, b, np.zeros(0, np.int64), np.zeros(0, np.int64)).shape == (0,)


def test_pair_score_lowers_conflicts_by_the_penalty():
    lex = np.array([0.9, 0.9])
    nan = np.full(2, np.nan)
    cfg = FusionConfig()
    plain = pair_score(lex, nan, nan, np.zeros(2), cfg)
    got = pair_score(lex, nan, nan, np.zeros(2), cfg, conflict=np.array([True, False]))
    assert got[1] == plain[1] and got[0] == pytest.approx(plain[0] - cfg.conflict_penalty)
    off = FusionConfig(conflict_penalty=0.0)
    assert pair_score(lex, nan, nan, np.zeros(2), off, conflict=np.array([True, False])).tolist() == plain.tolist()
    # equal valid GTINs still win: the GTIN rule comes after the penalty
    assert pair_score(lex, nan, nan, np.zeros(2), cfg, np.array([1, 0]), np.array([True, False]))[0] >= 0.97


def test_older_index_records_keep_their_scores():
    assert FusionConfig().conflict_penalty == 0.2
    assert FusionConfig.from_dict({}).conflict_penalty == 0.0  # recorded before the rule
    assert FusionConfig.from_dict(FusionConfig().to_dict()).conflict_penalty == 0.2


@pytest.fixture()
def siblings(linked_home, tmp_path):
    thome = linked_home(tmp_path)
    con = pm.connect(tmp_path / "s.duckdb", home=thome, image_roots=[tmp_path])
    con.execute("CREATE TABLE catalog (id VARCHAR, title VARCHAR, brand VARCHAR, price DOUBLE)")
    con.executemany("INSERT INTO catalog VALUES (?, ?, ?, ?)", [
        ["twin", "Panasonic DECT 6.0 Expandable Digital Cordless Phone System - KXTG9341T", "Panasonic", 99.0],
        ["sibling", "Panasonic DECT 6.0 Expandable Digital Cordless Phone System - KXTG9342T", "Panasonic", 99.0],
        ["other", "Ostrel cordless drill 18 V brushless", "Ostrel", 129.0],
    ])
    con.execute("CREATE TABLE feed (id VARCHAR, title VARCHAR, brand VARCHAR, price DOUBLE)")
    con.execute("INSERT INTO feed VALUES ('f', 'Panasonic KX-TG9341T DECT 6.0 Expandable Digital Cordless Phone "
                "System', 'Panasonic', 99.0)")
    yield con, tmp_path
    con.close()


def _scores(con) -> dict:
    return {t: (s, d) for t, s, d in con.execute(
        "SELECT target_id, score, decision FROM match_products('feed', 'catalog', k := 3)").fetchall()}


def test_match_products_does_not_accept_the_sibling(siblings):
    con, _ = siblings
    got = _scores(con)
    assert got["twin"][1] == "accept"
    assert got["sibling"][1] != "accept"
    # the same index recorded before the rule (no conflict_penalty in its settings): the sibling's old score,
    # higher by the penalty, which is what put it in the accept band
    from pmatch_duckdb.api import context_of

    idx = OfferIndex(context_of(con).index_root, "catalog")
    meta = idx.metadata()
    assert meta["fusion"]["conflict_penalty"] == 0.2
    del meta["fusion"]["conflict_penalty"]
    idx.table().to_lance().update_schema_metadata({META_KEY.decode(): json.dumps(meta)})
    old = _scores(con)
    assert old["sibling"][0] == pytest.approx(min(got["sibling"][0] + 0.2, 1.0))
    assert old["sibling"][1] == "accept" and old["twin"][0] == pytest.approx(got["twin"][0])


def test_score_pairs_and_on_disk_views_agree(siblings):
    con, _ = siblings
    con.execute("CREATE TABLE p AS SELECT 'f' AS source_id, unnest(['twin', 'sibling']) AS target_id")
    given = {t: (s, d) for t, s, d in con.execute(
        "SELECT target_id, score, decision FROM score_pairs('feed', 'catalog', 'p')").fetchall()}
    got = _scores(con)
    for t in ("twin", "sibling"):
        assert given[t][0] == pytest.approx(got[t][0]) and given[t][1] == got[t][1]
    # a view that reads candidate rows from the index (as against a large catalog) reads the titles it needs
    from pmatch_duckdb import matching as M
    from pmatch_duckdb.api import context_of
    from pmatch_duckdb.offers import read_offers

    ctx = context_of(con)
    index = OfferIndex(ctx.index_root, "catalog")
    scores = []
    for on_disk in (False, True):
        view = M.TargetView(index, ctx.settings.home, on_disk=on_disk)
        src = M.source_vectors(read_offers(con, "feed"), ctx.settings, view.fusion, matcher=None)
        c = M.match(src, view, 3)
        scores.append(dict(zip(view.target_ids(c.target), c.score.tolist(), strict=True)))
    assert scores[0].keys() == scores[1].keys() == got.keys()
    for t, sc in scores[0].items():
        assert scores[1][t] == pytest.approx(sc, abs=1e-5) and got[t][0] == pytest.approx(sc, abs=1e-5)


def test_index_built_without_the_penalty_on_request(siblings):
    con, _ = siblings
    with_rule = _scores(con)
    off = FusionConfig(conflict_penalty=0.0)
    with pytest.raises(pm.PmatchError, match="rebuild=True"):  # its rows were fused with its own settings
        pm.index(con, "catalog", progress=False, fusion=off)
    pm.index(con, "catalog", progress=False, rebuild=True, fusion=off)
    got = _scores(con)
    assert got["sibling"][1] == "accept" and got["sibling"][0] > with_rule["sibling"][0]
    pm.index(con, "catalog", progress=False, fusion=off)  # the same settings: a refresh
    pm.index(con, "catalog", progress=False)  # none given: the index keeps its own
    assert _scores(con) == got
