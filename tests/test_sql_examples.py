"""Every example query in sql/examples/ runs through `pmatch sql -f` on a small generated shop and says
something true about it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

import pmatch_duckdb as pm
from pmatch_duckdb.cli import main as cli

EXAMPLES = Path(__file__).resolve().parents[1] / "sql" / "examples"
CATALOG = [
    (1, "Sony KDL-40V4100 40in LCD TV", "Sony"), (2, "Apple iPod nano 8GB silver", "Apple"),
    (3, "Canon PowerShot SD1100 IS digital camera", "Canon"), (4, "Bose QuietComfort 15 headphones", "Bose"),
    (5, "Garmin nuvi 260W GPS navigator", "Garmin"), (6, "Logitech MX Revolution cordless mouse", "Logitech"),
    (7, "Samsung LN46A650 46in LCD HDTV", "Samsung"), (8, "Panasonic Lumix DMC-FX35 camera black", "Panasonic"),
    (9, "Sony Bravia KDL-40V4100 40 inch LCD television", "Sony"),  # a duplicate of 1
]
FEED = [
    ("s1", "sony kdl40v4100 lcd tv 40 inch"), ("s2", "apple ipod nano 8 gb (silver)"),
    ("s3", "canon powershot sd 1100is camera"), ("s4", "bose quiet comfort 15 noise cancelling headphones"),
    ("s5", "garmin nuvi 260 w gps"), ("s6", "kitchen blender 600 watt"),
]
LABELS = [("s1", 1), ("s2", 2), ("s3", 3), ("s4", 4), ("s5", 5)]


@pytest.fixture(scope="module")
def shop(tmp_path_factory, home):
    root = tmp_path_factory.mktemp("examples")
    con = pm.connect(root / "shop.duckdb", home=home, image_roots=[root])
    con.execute("CREATE TABLE catalog (id INTEGER, title VARCHAR, brand VARCHAR)")
    con.executemany("INSERT INTO catalog VALUES (?, ?, ?)", CATALOG)
    con.execute("CREATE TABLE supplier_feed (id VARCHAR, title VARCHAR)")
    con.executemany("INSERT INTO supplier_feed VALUES (?, ?)", FEED)
    con.execute("CREATE TABLE labels (left_id VARCHAR, right_id INTEGER)")
    con.executemany("INSERT INTO labels VALUES (?, ?)", LABELS)
    con.close()
    cwd = os.getcwd()
    os.chdir(root)
    yield root / "shop.duckdb", home
    os.chdir(cwd)


def run_example(shop, name: str) -> list[list[dict]]:
    """The results of the example's statements that print something, in order."""
    db, home = shop
    r = CliRunner().invoke(cli, ["sql", str(db), "--home", str(home), "--format", "json", "-f", str(EXAMPLES / name)])
    assert r.exit_code == 0, r.output
    dec, text, out = json.JSONDecoder(), r.output.strip(), []
    while text:
        obj, end = dec.raw_decode(text)
        out.append(obj)
        text = text[end:].strip()
    return out


def test_every_example_is_tested():
    assert {p.name for p in EXAMPLES.glob("*.sql")} == {
        "link_feed_to_catalog.sql", "dedup_table.sql", "evaluate_against_labels.sql", "review_queue.sql"}


def test_link_feed_to_catalog(shop):
    index, links, summary = run_example(shop, "link_feed_to_catalog.sql")
    assert index[0]["total"] == len(CATALOG)
    best = {r["feed_id"]: r["catalog_id"] for r in links}
    assert set(best) == {f[0] for f in FEED}  # every feed offer is listed, with or without a candidate
    assert sum(best[s] in ({1, 9} if t == 1 else {t}) for s, t in LABELS) >= 4
    assert sum(r["feed_offers"] for r in summary) == len(FEED)


def test_dedup_table(shop):
    pairs, groups, counts = run_example(shop, "dedup_table.sql")
    top = pairs[0]
    assert {str(top["source_id"]), str(top["target_id"])} == {"1", "9"}
    assert top["decision"] == "accept" and [set(g["offers"]) for g in groups] == [{"1", "9"}]  # one entity
    assert counts == [{"offers": len(CATALOG), "after_dedup": len(CATALOG) - 1}]


def test_evaluate_against_labels(shop):
    bands, recall = run_example(shop, "evaluate_against_labels.sql")
    by = {b["taken_as_match"]: b for b in bands}
    assert by["best candidate (rank 1)"]["labelled_matches"] == len(LABELS)
    assert by["best candidate (rank 1)"]["correct"] >= 4
    assert recall[0]["recall@10"] >= recall[0]["recall@5"] >= recall[0]["recall@1"] >= 0.8


def test_review_queue(shop):
    queued, certify, audit, one, queue, verdicts = run_example(shop, "review_queue.sql")
    assert one == [{"queue": "feed_one", "queued": queued[0]["queued"], "one_match_conflicts": 0}]
    # up to 20 auto-rejected pairs on top of the boundary queue (fewer where fewer are rejected)
    assert audit[0]["queue"] == "feed_audit" and 0 < audit[0]["reject_samples"] <= 20
    assert audit[0]["queued"] == queued[0]["queued"] + audit[0]["reject_samples"]  # same result, same boundary pairs
    assert min(queued[0]["queued"], 20) == len(queue) > 0
    # the certification sample: above the zero-shot accept threshold, no more than the 87 that 0.95 needs
    assert certify[0]["queue"] == "feed_certify" and certify[0]["certify_above"] == 0.8
    assert 0 < certify[0]["certify_samples"] <= 87 and certify[0]["queued"] >= certify[0]["certify_samples"]
    assert [q["position"] for q in queue] == sorted(q["position"] for q in queue)
    assert verdicts == [{"verdict": "match", "pairs": 1}]
