"""The human-in-the-loop on generated data: a simulated reviewer answers a batch of the review queue from the
generator's ground truth, the matcher is retrained on pm_labels, and on the offers nobody reviewed the review
band shrinks while the precision of auto-accept (measured against the ground truth) does not drop.

The supplier feed is split in two by a hash of the offer id: the reviewer answers the queue entries of one
half only, the other half is where the before/after is measured (no human verdict overrides anything there).
Text-only offers keep the test quick (images would only slow embedding down). With ~90 simulated verdicts no
threshold can certify 0.99 precision (that needs ~270 all-correct held-out matches), so training certifies
0.75; what the test asserts is the measured precision, against the ground truth, before and after.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import pytest

import pmatch_duckdb as pm
from pmatch_duckdb.review import PairKey, record_verdict

pytestmark = pytest.mark.slow


def _reviewed_half(offer_id: str) -> bool:
    return zlib.crc32(offer_id.encode()) % 2 == 0


def test_review_retrain_shrinks_the_review_band(tmp_path: Path, home: Path) -> None:
    pytest.importorskip("torch")
    from pmatch_duckdb.demo.synthetic import generate, write_parquet
    from pmatch_duckdb.training import train_matcher

    data = generate(tmp_path / "data", n_products=100, seed=0)
    paths = write_parquet(data, tmp_path / "data")
    mhome = tmp_path / "home"  # own matcher registry; the encoder bundles are the shared ones
    mhome.mkdir()
    (mhome / "models").symlink_to(Path(home) / "models", target_is_directory=True)
    con = pm.connect(tmp_path / "shop.duckdb", home=mhome, image_roots=[tmp_path / "data"])
    for name, path in zip(("catalog", "supplier_feed", "truth"), paths, strict=True):
        cols = "* EXCLUDE (images)" if name != "truth" else "*"
        con.execute(f"CREATE TABLE {name} AS SELECT {cols} FROM read_parquet(?)", [str(path)])
    truth = set(con.execute("SELECT feed_id, catalog_id FROM truth").fetchall())

    def run(table: str) -> dict[str, float]:
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM match_products('supplier_feed', 'catalog', k := 5)")
        rows = [r for r in con.execute(f"SELECT source_id, target_id, decision FROM {table}").fetchall()
                if not _reviewed_half(r[0])]
        acc = [(s, t) in truth for s, t, d in rows if d == "accept"]
        kept = sum((s, t) in truth for s, t, d in rows if d != "reject")
        return {"review": sum(d == "review" for _, _, d in rows), "accepted": len(acc),
                "precision": sum(acc) / len(acc) if acc else float("nan"), "recall": kept}

    before = run("matches_before")
    con.execute("SELECT * FROM pm_queue_review('matches_before', accept_sample := 1.0)").fetchall()
    queued = con.execute("SELECT source_table, source_id, target_table, target_id, score, decision, reason, matcher "
                         "FROM pm_review_queue ORDER BY position").fetchall()
    for st, si, tt, ti, score, dec, reason, matcher in queued:
        if _reviewed_half(si):
            record_verdict(con, PairKey(st, si, tt, ti), "match" if (si, ti) in truth else "no_match", score=score,
                           decision=dec, reason=reason, matcher=matcher, queue="default", reviewer="simulated")
    n_match, n_labels = con.execute("SELECT count(*) FILTER (WHERE verdict = 'match'), count(*) "
                                    "FROM pm_labels_current").fetchall()[0]
    assert n_labels >= 50 and n_match >= 25  # enough to train on (54 here: conflicting siblings score under review)

    train_matcher(con, ["supplier_feed", "catalog"], pairs="pm_labels", target_precision=0.75, cross_fit=False,
                  epochs=40, progress=False, log=lambda _: None)
    after = run("matches_after")
    print(f"review band {before['review']} -> {after['review']}; auto-accept {before['accepted']} pairs at "
          f"precision {before['precision']:.3f} -> {after['accepted']} at {after['precision']:.3f}; "
          f"true pairs kept (accept+review) {before['recall']} -> {after['recall']}")
    assert after["accepted"] > 0
    assert after["review"] < 0.6 * before["review"]
    assert after["precision"] >= before["precision"]
    assert after["recall"] >= 0.9 * before["recall"]

    # a second round on the retrained model's scores (the half not trained on), then thresholds from those
    # reviews: a new matcher version carrying them (the trained one stays, for rollback)
    from pmatch_duckdb.matchers import active_matcher, active_version, matchers_dir
    from pmatch_duckdb.review.calibrate import calibrate

    st = con.execute("SELECT * FROM pm_queue_review('matches_after', queue := 'round2', accept_sample := 1.0)"
                     ).fetchall()[0]
    assert st[1] > 0
    for s_t, si, tt, ti, score, dec, reason, matcher in con.execute(
            "SELECT source_table, source_id, target_table, target_id, score, decision, reason, matcher "
            "FROM pm_review_queue WHERE queue = 'round2'").fetchall():
        assert matcher == "default/v1"
        if _reviewed_half(si):  # rechecks of pairs trained on: their new scores are in-sample, leave them
            continue
        record_verdict(con, PairKey(s_t, si, tt, ti), "match" if (si, ti) in truth else "no_match", score=score,
                       decision=dec, reason=reason, matcher=matcher, queue="round2", reviewer="simulated")
    cal = calibrate(con, "catalog", target_precision=0.75)
    assert cal.matcher == "default/v1" and cal.accept is not None and cal.accept_lower_bound >= 0.75
    assert active_version("default", mhome) == "v2" and "copy of v1" in cal.applied
    m = active_matcher("default", mhome)
    assert (m.decision.accept_threshold, m.decision.review_threshold) == pytest.approx((cal.accept, cal.review))
    assert m.bundle.manifest["parent"] == "v1" and m.bundle.manifest["calibration"]["kind"] == "pm_labels"
    # calibrating again on the same verdicts certifies the thresholds v2 has: no identical copy v3 is written
    same = calibrate(con, "catalog", target_precision=0.75)
    assert (same.accept, same.review) == (cal.accept, cal.review), (same, cal)
    assert same.unchanged and same.applied is None
    assert active_version("default", mhome) == "v2" and not (matchers_dir(mhome) / "default" / "v3").exists()
    assert (matchers_dir(mhome) / "default" / "v2").is_dir()

    # a third round on v2's scores: v2 is v1 with new thresholds, the same scores, so the verdicts given on v1's
    # scores in round 2 still count (only round 1's, on zero-shot scores, are another model's)
    con.execute("CREATE TABLE matches_v2 AS SELECT * FROM match_products('supplier_feed', 'catalog', k := 5)")
    con.execute("SELECT * FROM pm_queue_review('matches_v2', queue := 'round3', accept_sample := 1.0)").fetchall()
    new = 0
    for s_t, si, tt, ti, score, dec, reason, matcher in con.execute(
            "SELECT source_table, source_id, target_table, target_id, score, decision, reason, matcher "
            "FROM pm_review_queue WHERE queue = 'round3'").fetchall():
        assert matcher == "default/v2"
        if not _reviewed_half(si):
            record_verdict(con, PairKey(s_t, si, tt, ti), "match" if (si, ti) in truth else "no_match", score=score,
                           decision=dec, reason=reason, matcher=matcher, queue="round3", reviewer="simulated")
            new += 1
    again = calibrate(con, "catalog", target_precision=0.75, apply=False)
    assert again.matcher == "default/v2" and again.same_scores == ["default/v1", "default/v2"]
    assert again.reviewed == cal.reviewed + new and again.ignored_other_model == cal.ignored_other_model
    assert again.old_review == pytest.approx(cal.review)
    con.close()
    from click.testing import CliRunner

    from pmatch_duckdb.cli import main

    res = CliRunner().invoke(main, ["calibrate", str(tmp_path / "shop.duckdb"), "--target", "catalog",
                                    "--target-precision", "0.75", "--dry-run", "--home", str(mhome)])
    assert res.exit_code == 0, res.output
    assert (f"{again.reviewed} reviewed pairs ({again.matches} matches) scored by default/v2 (or by default/v1: the "
            "same scores, other thresholds)") in res.output, res.output
