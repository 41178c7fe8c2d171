"""Human review: pm_labels history, the review queue, human overrides in match_products and clusters."""

from __future__ import annotations

import json
import math
import urllib.parse
from pathlib import Path

import duckdb
import numpy as np
import pytest

import pmatch_duckdb as pm
from pmatch_duckdb.errors import PmatchError
from pmatch_duckdb.review import PairKey, current_verdicts, labels_as_pairs, record_verdict, wilson_interval
from pmatch_duckdb.review.labels import Verdict
from pmatch_duckdb.review.overrides import constrained_edges
from pmatch_duckdb.review.queue import ModelState, build_queue, interleave, order_boundary

# ----------------------------------------------------------------------------------------------
# pm_labels
# ----------------------------------------------------------------------------------------------


def test_labels_history_latest_wins_and_plain_sql(tmp_path: Path) -> None:
    db = tmp_path / "l.duckdb"
    con = duckdb.connect(str(db))  # no pmatch needed to write or read labels
    p = PairKey.of('"main"."Supplier_Feed"', 7, "catalog", "C1")
    assert p == PairKey("supplier_feed", "7", "catalog", "C1")
    record_verdict(con, p, "match", reviewer="ann", score=0.7, decision="review")
    record_verdict(con, p, "no_match", reviewer="bob", score=0.7, decision="review", note="other colour")
    q = PairKey.of("supplier_feed", 8, "catalog", "C2")
    record_verdict(con, q, "unsure", reviewer="ann")
    record_verdict(con, q, "retracted", reviewer="ann")  # an undo
    with pytest.raises(PmatchError, match="verdict must be one of"):
        record_verdict(con, q, "maybe")
    assert {k: v[0] for k, v in current_verdicts(con).items()} == {p: "no_match"}
    con.close()
    plain = duckdb.connect(str(db), read_only=True)
    assert plain.execute("SELECT count(*) FROM pm_labels").fetchall()[0][0] == 4  # history kept
    assert plain.execute("SELECT verdict, reviewer, note FROM pm_labels_current").fetchall() == [
        ("no_match", "bob", "other colour")]
    # the CHECK constraint holds for anyone writing by hand
    with pytest.raises(duckdb.Error):
        plain.execute("INSERT INTO pm_labels (source_table, source_id, target_table, target_id, verdict) "
                      "VALUES ('a', '1', 'b', '2', 'yes')")
    plain.close()


def test_dedup_pairs_are_unordered(tmp_path: Path) -> None:
    con = duckdb.connect()
    assert PairKey.of("feed", "b", "FEED", "a") == PairKey.of("feed", "a", "feed", "b")
    record_verdict(con, PairKey.of("feed", "b", "feed", "a"), "match")
    record_verdict(con, PairKey.of("feed", "x", "feed", "y"), "no_match")
    record_verdict(con, PairKey.of("feed", "x", "feed", "z"), "unsure")
    assert sorted(labels_as_pairs(con)) == [(("feed", "a"), ("feed", "b"), 1),
                                            (("feed", "x"), ("feed", "y"), 0)]  # unsure left out


def test_a_failed_insert_leaves_no_label(tmp_path: Path) -> None:
    con = duckdb.connect()
    record_verdict(con, PairKey.of("f", 1, "c", 2), "match")
    with pytest.raises(duckdb.Error):
        record_verdict(con, PairKey("f", None, "c", "2"), "match")  # NOT NULL violated inside the transaction
    assert con.execute("SELECT count(*) FROM pm_labels").fetchall()[0][0] == 1
    record_verdict(con, PairKey.of("f", 3, "c", 4), "match")  # the connection is usable afterwards
    assert con.execute("SELECT count(*) FROM pm_labels").fetchall()[0][0] == 2


def test_wilson_interval() -> None:
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    lo, hi = wilson_interval(20, 20)
    assert hi == 1.0 and lo == pytest.approx(0.8389, abs=1e-3)
    assert wilson_interval(0, 0) == (0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# queue ordering (pure)
# ----------------------------------------------------------------------------------------------


def _row(s: str, t: str, score: float, decision: str) -> dict:
    return {"source_table": "feed", "source_id": s, "target_table": "cat", "target_id": t, "score": score,
            "decision": decision}


def test_queue_order_boundary_spread_samples_and_rechecks() -> None:
    state = ModelState("zero-shot", 0.55, 0.80)  # boundary 0.675, half band 0.125
    rows = [_row("A", f"t{i}", 0.675 + 0.001 * i, "review") for i in range(10)]  # one offer, all near the boundary
    rows += [_row(f"S{i}", "x", 0.56 + 0.02 * i, "review") for i in range(6)]
    rows += [_row(f"P{i}", "y", 0.9, "accept") for i in range(40)]
    rows += [_row("L1", "z", 0.70, "review"), _row("L2", "z", 0.95, "accept"), _row("L3", "z", 0.2, "reject")]
    verdicts = {PairKey.of("feed", "L1", "cat", "z"): Verdict("match", 0.69, 1, "zero-shot", "review"),  # unchanged
                # score moved 0.35 up, against the verdict: recheck
                PairKey.of("feed", "L2", "cat", "z"): Verdict("no_match", 0.60, 2, "zero-shot", "review"),
                # moved 0.55 down, against it: recheck first
                PairKey.of("feed", "L3", "cat", "z"): Verdict("match", 0.75, 3, "zero-shot", "review")}
    ordered, counts = build_queue(rows, verdicts, state, accept_sample=0.05, seed=1)
    assert counts == {"boundary": 16, "accept_samples": 2, "rechecks": 2, "skipped_labelled": 1, "certify_samples": 0,
                      "reject_samples": 0, "accept_conflicts": 0}
    assert [it["source_id"] for it in ordered[:2]] == ["L3", "L2"]
    # the reviewer is shown the model's own decision, not the verdict's override of it
    assert [(it["decision"], it["scored_by"]) for it in ordered[:2]] == [("reject", "zero-shot"), ("accept", "zero-shot")]
    body = [it for it in ordered if it["reason"] == "boundary"]
    # nearest the boundary first, but offer A's ten candidates do not come in a row
    assert body[0]["source_id"] == "A"
    srcs = [it["source_id"] for it in ordered][:14]  # (after that only offer A's candidates are left)
    assert all(a != b for a, b in zip(srcs, srcs[1:], strict=False)), srcs
    assert max(i for i, it in enumerate(body) if it["source_id"].startswith("S")) < 12
    # accept samples spread through the queue, deterministic per seed
    pos = [i for i, it in enumerate(ordered) if it["reason"] == "accept_sample"]
    assert len(pos) == 2 and pos[1] - pos[0] >= 6
    again, _ = build_queue(rows, verdicts, state, accept_sample=0.05, seed=1)
    assert [it["key"] for it in again] == [it["key"] for it in ordered]
    other, _ = build_queue(rows, verdicts, state, accept_sample=0.05, seed=2)
    assert {it["key"] for it in other if it["reason"] == "accept_sample"} != \
        {it["key"] for it in ordered if it["reason"] == "accept_sample"}


def test_interleave() -> None:
    assert interleave([1, 2, 3, 4], ["a", "b"]) == [1, "a", 2, 3, "b", 4]
    assert interleave([], ["a"]) == ["a"]
    assert interleave([1], []) == [1]


def test_a_pair_scored_item_is_ordered_by_the_boundary_of_the_model_that_scored_it() -> None:
    """A matcher with a pair scorer: the pairs it re-read carry the stacked model's score, so their distance to
    the boundary is measured against its thresholds (a re-read pair at 0.9 sits on the stacked model's boundary;
    on stage 1's it would be a full half band away, behind a stage-1 pair at 0.5)."""
    stacked = ModelState("default/v1", 0.9, math.inf)  # boundary 0.9, half band 0.05
    state = ModelState("default/v1", 0.3, 0.9, pair=stacked, top_m=3)  # boundary 0.6, half band 0.3
    plain, reread = _row("A", "t", 0.5, "review"), _row("B", "t", 0.9, "review")
    reread["_state"] = stacked
    assert [it["source_id"] for it in order_boundary([plain, reread], state)] == ["B", "A"]
    del reread["_state"]  # read on stage 1's scale: the other way round
    assert [it["source_id"] for it in order_boundary([plain, reread], state)] == ["A", "B"]


def test_boundary_without_accept_threshold() -> None:
    s = ModelState("default/v1", 0.2, math.inf)
    assert s.boundary == 0.5 and s.half_band == pytest.approx(0.4)


# ----------------------------------------------------------------------------------------------
# constrained clustering (pure)
# ----------------------------------------------------------------------------------------------


def test_no_match_never_joins_through_a_chain() -> None:
    accepted = [("a", "b", 0.99), ("b", "c", 0.95), ("c", "d", 0.9)]
    kept = constrained_edges(accepted, must_link=[("x", "y")], cannot_link=[("a", "d")])
    assert ("x", "y") in kept and ("a", "b") in kept and ("b", "c") in kept
    assert ("c", "d") not in kept  # would put a and d into one entity
    assert constrained_edges([("a", "b", 0.9)], [], [("b", "a")]) == []


# ----------------------------------------------------------------------------------------------
# in SQL, on the generated shop
# ----------------------------------------------------------------------------------------------


def test_a_recheck_asks_again_only_where_the_model_turned_against_the_verdict() -> None:
    zs = ModelState("zero-shot", 0.55, 0.80)
    trained = ModelState("default/v2", 0.30, 0.95)
    pair = ModelState("default/v2", 0.20, float("inf"), scale="pair_scorer")
    trained.pair, trained.top_m = pair, 1

    def queued(score: float, v: Verdict, state: ModelState = zs, st: ModelState | None = None) -> bool:
        row = {**_row("A", "t", score, "review"), "_state": st}
        ordered, counts = build_queue([row], {PairKey.of("feed", "A", "cat", "t"): v}, state, accept_sample=0)
        assert counts["rechecks"] + counts["skipped_labelled"] == 1
        return counts["rechecks"] == 1

    # the same scale: a move of >= 0.3 away from the verdict, not towards it (as after training on the verdict)
    assert queued(0.35, Verdict("match", 0.70, 1, "zero-shot", "review"))
    assert not queued(0.99, Verdict("match", 0.60, 1, "zero-shot", "review"))  # the model turned, but agrees now
    assert not queued(0.05, Verdict("no_match", 0.70, 1, "zero-shot", "review"))
    assert queued(0.95, Verdict("no_match", 0.60, 1, "zero-shot", "review"))
    assert queued(0.30, Verdict("unsure", 0.65, 1, "zero-shot", "review")) and \
        not queued(0.60, Verdict("unsure", 0.65, 1, "zero-shot", "review"))
    assert not queued(0.35, Verdict("match", 0.60, 1, "zero-shot", "review"))  # moved 0.25 only
    # a zero-shot similarity then, a trained matcher's probability now: scores do not compare, decisions do
    assert not queued(0.20, Verdict("no_match", 0.72, 1, "zero-shot", "review"), trained)  # 0.52 down: agrees
    assert queued(0.10, Verdict("match", 0.62, 1, "zero-shot", "review"), trained)  # now rejected
    assert not queued(0.10, Verdict("match", 0.62, 1, "zero-shot", "reject"), trained)  # it said reject then too
    assert queued(0.97, Verdict("no_match", 0.78, 1, "zero-shot", "review"), trained)  # now auto-accepted
    assert not queued(0.90, Verdict("no_match", 0.40, 1, "zero-shot", "review"), trained)  # 0.5 up, but review
    # one trained matcher, re-read by its pair scorer then and not now (and the other way round)
    assert queued(0.10, Verdict("match", 0.45, 1, "default/v2", "review", "pair_scorer"), trained)
    assert not queued(0.40, Verdict("match", 0.90, 1, "default/v2", "review", "stage1"), trained, pair)
    assert queued(0.10, Verdict("match", 0.90, 1, "default/v2", "review", "pair_scorer"), trained, pair)
    # a verdict of unknown scale (written before scored_by existed) on a trained matcher's score: decisions compare;
    # without the decision shown either, nothing can be told (plain tuples are such verdicts)
    assert queued(0.10, Verdict("match", 0.50, 1, "default/v1", "review"), trained, pair)
    assert not queued(0.10, Verdict("match", 0.90, 1), trained) and not queued(0.10, ("match", 0.90, 1), trained)


def _connect(demo):  # noqa: ANN001, ANN202
    return pm.connect(demo.db, image_roots=[demo.images])


def _calibrate_cli(demo, *args: str) -> str:  # noqa: ANN001
    """``pmatch calibrate`` on the demo shop against ``catalog`` (``args``: more options; a dry run at 0.95 unless
    they say otherwise); its output, after checking it succeeded."""
    from click.testing import CliRunner

    from pmatch_duckdb.cli import main

    args = args or ("--target-precision", "0.95", "--dry-run")
    res = CliRunner().invoke(main, ["calibrate", str(demo.db), "--target", "catalog", *args, "--image-root",
                                    str(demo.images)])
    assert res.exit_code == 0, res.output
    return res.output


def test_pm_queue_review_sql(review_demo) -> None:
    con = _connect(review_demo)
    n_review, n_accept = con.execute("SELECT count(*) FILTER (WHERE decision = 'review'), "
                                     "count(*) FILTER (WHERE decision = 'accept') FROM matches").fetchall()[0]
    assert n_review > 5 and n_accept > 0
    row = con.execute("SELECT * FROM pm_queue_review('matches')").fetchall()[0]
    assert row == ("default", n_review + math.ceil(0.05 * n_accept), n_review, math.ceil(0.05 * n_accept), 0, 0, 0,
                   None, 0, 0, None)
    q = con.execute("SELECT position, decision, reason, matcher, score FROM pm_review_queue "
                    "WHERE queue = 'default' ORDER BY position").fetchall()
    assert [r[0] for r in q] == list(range(1, len(q) + 1))
    assert {r[2] for r in q} == {"boundary", "accept_sample"} and {r[3] for r in q} == {"zero-shot"}
    # label the first three; a second queue of the same result skips them
    for pos, verdict in ((1, "match"), (2, "no_match"), (3, "unsure")):
        st, si, tt, ti = con.execute("SELECT source_table, source_id, target_table, target_id FROM pm_review_queue "
                                     "WHERE position = ?", [pos]).fetchall()[0]
        record_verdict(con, PairKey(st, si, tt, ti), verdict, score=q[pos - 1][4])
    row = con.execute("SELECT queued, skipped_labelled FROM pm_queue_review('matches', queue := 'again', "
                      "accept_sample := 0)").fetchall()[0]
    assert row == (n_review - sum(r[2] == "boundary" for r in q[:3]), 3)
    with pytest.raises(duckdb.Error, match="needs the columns of a match_products result"):
        con.execute("SELECT * FROM pm_queue_review('catalog')")
    with pytest.raises(duckdb.Error, match="invalid table name"):
        con.execute("SELECT * FROM pm_queue_review('matches; DROP TABLE catalog')")
    con.execute("SELECT * FROM pm_queue_review('matches', queue := 'om', one_match := true)").fetchall()
    assert con.execute("SELECT bool_and(one_match), bool_or(one_match) FROM pm_review_queue GROUP BY queue "
                       "ORDER BY queue").fetchall() == [(False, False), (False, False), (True, True)]
    for bad in ("'yes'", "NULL", "1"):
        with pytest.raises(duckdb.Error, match="one_match must be true or false"):
            con.execute(f"SELECT * FROM pm_queue_review('matches', one_match := {bad})")
    con.close()


def test_human_verdicts_override_decisions_and_clusters(review_demo) -> None:
    con = _connect(review_demo)
    # an accepted pair that a person says is not a match, and a low-scored one they say is
    acc = con.execute("SELECT source_id, target_id FROM matches WHERE decision = 'accept' ORDER BY score DESC "
                      "LIMIT 1").fetchall()[0]
    low = con.execute("SELECT source_id, target_id FROM matches WHERE decision = 'reject' AND rank = 1 "
                      "ORDER BY score LIMIT 1").fetchall()[0]
    record_verdict(con, PairKey.of("supplier_feed", acc[0], "catalog", acc[1]), "no_match")
    record_verdict(con, PairKey.of("supplier_feed", low[0], "catalog", low[1]), "match")
    rows = {(r[0], r[1]): (r[2], r[3]) for r in con.execute(
        "SELECT source_id, target_id, decision, human_verdict FROM match_products('supplier_feed', 'catalog', k := 5)"
    ).fetchall()}
    assert rows[acc] == ("reject", "no_match")
    assert rows[low] == ("accept", "match")
    assert sum(v[1] is not None for v in rows.values()) == 2
    # clusters over the OLD saved result (made before the labels) still honour the verdicts
    ent = dict(((t, o), e) for t, o, e in con.execute("SELECT * FROM product_clusters('matches')").fetchall())
    assert ent[("supplier_feed", acc[0])] != ent[("catalog", acc[1])]
    assert ent[("supplier_feed", low[0])] == ent[("catalog", low[1])]
    con.close()


# ----------------------------------------------------------------------------------------------
# calibrate, the review CLI and the page's server side (Flask test client)
# ----------------------------------------------------------------------------------------------


def _simulate_reviewer(con, queue: str = "default") -> int:  # noqa: ANN001
    """Answer every entry of ``queue`` from the generator's ground truth (table truth)."""
    rows = con.execute(
        "SELECT q.source_table, q.source_id, q.target_table, q.target_id, q.score, q.decision, q.reason, q.matcher, "
        "EXISTS (SELECT 1 FROM truth t WHERE t.feed_id = q.source_id AND t.catalog_id = q.target_id) "
        "FROM pm_review_queue q WHERE q.queue = ?", [queue]).fetchall()
    for st, si, tt, ti, s, d, r, m, ok in rows:
        record_verdict(con, PairKey(st, si, tt, ti), "match" if ok else "no_match", score=s, decision=d, reason=r,
                       matcher=m, queue=queue, reviewer="simulated")
    return len(rows)


def test_calibrate_from_reviews_zero_shot(review_demo) -> None:
    from click.testing import CliRunner

    from pmatch_duckdb.cli import main
    from pmatch_duckdb.review.calibrate import CalibrationError, calibrate

    con = _connect(review_demo)
    with pytest.raises(CalibrationError, match="need at least 5 matches"):
        calibrate(con, "catalog")
    con.execute("SELECT * FROM pm_queue_review('matches', accept_sample := 1.0)").fetchall()
    _simulate_reviewer(con)
    dry = calibrate(con, "catalog", target_precision=0.99, apply=False)
    assert dry.accept is None and dry.applied is None  # 0.99 cannot be certified on a few dozen reviews
    cal = calibrate(con, "catalog", target_precision=0.8, apply=False)
    assert cal.accept is not None and cal.accept_lower_bound >= 0.8 and cal.accept_precision >= cal.accept_lower_bound
    assert cal.review <= cal.accept
    con.close()
    from pmatch_duckdb.sqlident import index_name_for
    from pmatch_duckdb.store import OfferIndex

    root = review_demo.db.with_suffix(".pmatch")
    before = OfferIndex(root, index_name_for("catalog")).fusion()
    args = ["calibrate", str(review_demo.db), "--target", "catalog", "--target-precision", "0.8", "--image-root",
            str(review_demo.images)]
    res = CliRunner().invoke(main, [*args, "--matches", "matchez"])  # misspelt: refused before anything is written
    assert res.exit_code == 1 and "--matches: no table or view 'matchez'" in res.output, res.output
    f = OfferIndex(root, index_name_for("catalog")).fusion()
    assert (f.accept_threshold, f.review_threshold) == (before.accept_threshold, before.review_threshold)
    res = CliRunner().invoke(main, [*args, "--matches", "matches"])
    assert res.exit_code == 0, res.output
    assert "written to index catalog" in res.output and "95% lower bound" in res.output
    con = _connect(review_demo)
    f = OfferIndex(root, index_name_for("catalog")).fusion()
    assert (f.accept_threshold, f.review_threshold) == pytest.approx((cal.accept, cal.review))
    # match_products decides with the new thresholds (on pairs without a human verdict)
    rows = con.execute("SELECT score, decision FROM match_products('supplier_feed', 'catalog', k := 5) "
                       "WHERE human_verdict IS NULL").fetchall()
    assert rows and all(d == ("accept" if s >= cal.accept else "review" if s >= cal.review else "reject")
                        for s, d in rows)
    con.close()


def test_review_page_server_side(review_demo) -> None:
    from pmatch_duckdb.review.app import ReviewConfig, create_app

    con = _connect(review_demo)
    con.execute("SELECT * FROM pm_queue_review('matches')").fetchall()
    con.close()
    app = create_app(ReviewConfig(review_demo.db, "default", (review_demo.images,), "ann"))
    c = app.test_client()
    page = c.get("/")
    assert page.status_code == 200 and "pair 1 of" in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert c.get("/", headers={"Host": "attacker.example"}).status_code == 400  # DNS rebinding
    token = page.text.split('name="token" value="', 1)[1].split('"', 1)[0]
    assert c.post("/label", data={"verdict": "match", "position": "1", "token": "forged"}).status_code == 403
    assert c.post("/label", data={"verdict": "maybe", "position": "1", "token": token}).status_code == 400
    r = c.post("/label", data={"verdict": "match", "position": "1", "token": token, "note": "same <b>item</b>"})
    assert r.status_code == 302
    assert "pair 2 of" in c.get(r.headers["Location"]).text
    r = c.post("/undo", data={"token": token})
    assert r.status_code == 302 and r.headers["Location"].endswith("/pair/1?undone=1")
    assert c.get("/img/1/s/0").status_code == 200 and c.get("/img/1/s/0").mimetype == "image/jpeg"
    assert c.get("/img/1/s/99").status_code == 404 and c.get("/img/1/x/0").status_code == 404
    summary = c.get("/summary")
    assert summary.status_code == 200 and "Labels so far" in summary.text
    missing = create_app(ReviewConfig(review_demo.db, "nope", (review_demo.images,), "ann")).test_client().get("/")
    assert missing.status_code == 400 and "pm_queue_review" in missing.text
    con = duckdb.connect(str(review_demo.db))
    assert con.execute("SELECT verdict, reviewer, note, matcher, scored_by FROM pm_labels ORDER BY label_id"
                       ).fetchall() == [("match", "ann", "same <b>item</b>", "zero-shot", "zero-shot"),
                                        ("retracted", "ann", "undo of match", "zero-shot", "zero-shot")]
    con.close()
    _check_other_candidates(review_demo, c)
    _check_pick(review_demo, c, token)
    _check_titles_differ(review_demo, c)


def _check_titles_differ(review_demo, c) -> None:  # noqa: ANN001 - the demo, a Flask test client
    """The page's bar names what the two titles say differently (the evidence a zero-shot score is lowered for)."""
    import re

    con = duckdb.connect(str(review_demo.db))
    pos, sid, tid = con.execute("SELECT position, source_id, target_id FROM pm_review_queue WHERE queue = 'default' "
                                "ORDER BY position LIMIT 1").fetchall()[0]

    def shown(source_title: str, target_title: str) -> str:
        con.execute("UPDATE supplier_feed SET title = ? WHERE id = ?", [source_title, sid])
        con.execute("UPDATE catalog SET title = ? WHERE id = ?", [target_title, tid])
        page = c.get(f"/pair/{pos}").text
        chip = re.search(r'<span class="twoproducts"[^>]*>([^<]*)</span>', page)
        return chip.group(1) if chip else ""

    try:
        assert shown("Acme KX-TG9341T phone, black, 16 GB", "Acme KX-TG9342T phone, silver, 32GB") == (
            "titles differ: model number, colour, quantity")
        assert shown("Acme KX-TG9341T phone, black", "Acme KXTG9341T phone - Black") == ""
        assert shown("Acme phone 16 GB", "Acme phone 16GB, white") == ""  # one side names no colour
    finally:
        con.close()


def _check_pick(review_demo, c, token: str) -> None:  # noqa: ANN001 - the demo, a Flask test client
    """The page's pick: the pair shown is no match, a listed other candidate is the offer's match; undone as one."""
    con = duckdb.connect(str(review_demo.db))
    pos, sid, tid, alt = con.execute(
        "SELECT position, source_id, target_id, alternatives FROM pm_review_queue WHERE queue = 'default' "
        "AND json_array_length(alternatives -> 'others') >= 1 ORDER BY position DESC LIMIT 1").fetchall()[0]
    con.close()
    cid = json.loads(alt)["others"][0]["id"]
    page = c.get(f"/pair/{pos}").text
    assert f'form="pick" name="candidate" value="{cid}"' in page and 'action="/pick"' in page
    assert c.post("/pick", data={"position": pos, "candidate": cid, "token": "forged"}).status_code == 403
    bad = c.post("/pick", data={"position": pos, "candidate": "no-such-id", "token": token})
    assert bad.status_code == 400 and "&#39;no-such-id&#39; is not among the other candidates" in bad.text
    r = c.post("/pick", data={"position": pos, "candidate": cid, "token": token, "note": "same model"})
    assert r.status_code == 302 and f"Match: {sid} ↔ {cid}" in urllib.parse.unquote_plus(r.headers["Location"])
    con = duckdb.connect(str(review_demo.db))
    got = con.execute("SELECT target_id, verdict, reviewer, note, with_label IS NOT NULL FROM pm_labels_current "
                      "WHERE source_id = ? ORDER BY label_id DESC LIMIT 2", [sid]).fetchall()
    con.close()
    assert got == [(cid, "match", "ann", f"picked instead of {tid}: same model", True),
                   (tid, "no_match", "ann", "same model", False)]
    r = c.post("/undo", data={"token": token})
    assert r.headers["Location"].endswith(f"/pair/{pos}?undone=1")
    con = duckdb.connect(str(review_demo.db))
    assert not con.execute("SELECT count(*) FROM pm_labels_current WHERE source_id = ? AND target_id IN (?, ?)",
                           [sid, tid, cid]).fetchall()[0][0]
    con.close()
    # none of these: the pair and its listed candidates
    assert 'action="/none"' in page and 'data-key="x"' in page
    assert c.post("/none", data={"position": pos, "token": "forged"}).status_code == 403
    r = c.post("/none", data={"position": pos, "token": token})
    assert r.status_code == 302 and f"No match: {sid} ↔ {tid}" in urllib.parse.unquote_plus(r.headers["Location"])
    con = duckdb.connect(str(review_demo.db))
    n = con.execute("SELECT count(*) FROM pm_labels_current WHERE verdict = 'no_match' AND source_id = ? "
                    "AND label_id >= (SELECT max(label_id) FROM pm_labels WHERE target_id = ? AND source_id = ?)",
                    [sid, tid, sid]).fetchall()[0][0]
    con.close()
    assert n >= 2  # the pair and at least one listed candidate
    assert c.post("/undo", data={"token": token}).headers["Location"].endswith(f"/pair/{pos}?undone=1")


def _check_other_candidates(review_demo, c) -> None:  # noqa: ANN001 - the demo, a Flask test client
    """Each pair page says where the result ranks the pair among its offer's candidates and lists the others, with
    their titles and a verdict already given on one of them."""
    import re

    con = duckdb.connect(str(review_demo.db))
    pos, sid, alt = con.execute("SELECT position, source_id, alternatives FROM pm_review_queue WHERE queue = 'default' "
                                "AND json_array_length(alternatives -> 'others') >= 2 ORDER BY position LIMIT 1"
                                ).fetchall()[0]
    alt = json.loads(alt)
    rank, n = con.execute("SELECT rank, count(*) OVER () FROM matches WHERE source_id = ? AND target_id = "
                          "(SELECT target_id FROM pm_review_queue WHERE queue = 'default' AND position = ?)",
                          [sid, pos]).fetchall()[0]
    assert (alt["rank"], alt["of"]) == (rank, con.execute("SELECT count(*) FROM matches WHERE source_id = ?",
                                                           [sid]).fetchall()[0][0])
    first = alt["others"][0]
    title = con.execute("SELECT title FROM catalog WHERE id = ?", [first["id"]]).fetchall()[0][0]
    record_verdict(con, PairKey.of("supplier_feed", sid, "catalog", alt["others"][1]["id"]), "no_match")
    con.close()
    page = c.get(f"/pair/{pos}").text
    chip = re.search(r'<span class="rank[^"]*"[^>]*>([^<]*)</span>', page).group(1)
    assert chip == (f"the offer's best of {alt['of']} candidates" if rank == 1 else
                    f"candidate {rank} of {alt['of']}: the result ranks another first")
    others = page.split('<div class="others">', 1)[1].split("</div>", 1)[0]
    assert re.sub(r"<[^>]+>", "", others).count(f"{first['score']:.3f}") >= 1
    assert all(w in re.sub(r"<[^>]+>", "", others) for w in title.split()[:3])
    assert others.count("<li") == len(alt["others"])
    assert '<span class="verdict no_match"' in others and others.count('class="verdict no_match"') == 1
    # a listed pair the result auto-accepts, with no verdict, says so
    assert others.count('class="verdict auto"') == sum(o["decision"] == "accept" for o in alt["others"][:1] +
                                                        alt["others"][2:])
    # each listed candidate shows its brand, price and first image, served by its place in the list only
    con = duckdb.connect(str(review_demo.db))
    facts = [con.execute("SELECT brand, price, images FROM catalog WHERE id = ?", [o["id"]]).fetchall()[0]
             for o in alt["others"]]
    con.close()
    text = re.sub(r"<[^>]+>", "", others)
    for k, (brand, price, images) in enumerate(facts, 1):
        assert (brand or "") in text and (price is None or f"{price:.2f}" in text)
        if images:
            assert f'src="/img/{pos}/c{k}/0"' in others
            img = c.get(f"/img/{pos}/c{k}/0")
            assert img.status_code == 200 and img.mimetype.startswith("image/")
            assert img.data == c.application.config["PMATCH_REVIEW"].policy.resolve(images[0])[0].read_bytes()
    assert c.get(f"/img/{pos}/c{len(facts) + 1}/0").status_code == 404  # no such place in the list
    assert c.get(f"/img/{pos}/c0/0").status_code == 404 and c.get(f"/img/{pos}/cx/0").status_code == 404


def test_a_listed_candidates_image_outside_the_roots_is_refused(review_demo) -> None:
    """A listed candidate's first image is shown only from inside the image roots: one outside them shows the
    reason instead, and its image route answers 403 (a missing file 404), as for the pair's own images."""
    from pmatch_duckdb.review.app import ReviewConfig, create_app

    con = _connect(review_demo)
    con.execute("SELECT * FROM pm_queue_review('matches')").fetchall()
    pos, alt = con.execute("SELECT position, alternatives FROM pm_review_queue WHERE queue = 'default' "
                           "AND json_array_length(alternatives -> 'others') >= 2 ORDER BY position LIMIT 1").fetchall()[0]
    first, second = (o["id"] for o in json.loads(alt)["others"][:2])
    con.execute("UPDATE catalog SET images = ['/etc/passwd'] WHERE id = ?", [first])
    con.execute("UPDATE catalog SET images = [?] WHERE id = ?", [str(review_demo.images / "gone.jpg"), second])
    con.close()
    c = create_app(ReviewConfig(review_demo.db, "default", (review_demo.images,), "ann")).test_client()
    others = c.get(f"/pair/{pos}").text.split('<div class="others">', 1)[1].split("</div>", 1)[0]
    assert 'title="image refused: outside allowed roots"' in others and f"/img/{pos}/c1/0" not in others
    assert c.get(f"/img/{pos}/c1/0").status_code == 403
    assert c.get(f"/img/{pos}/c2/0").status_code == 404


def test_a_finished_one_table_queue_says_to_queue_the_next_round(review_demo) -> None:
    """Deduplication goes in rounds (no_match verdicts inside clusters make conflicts known): the summary of a
    finished one-table queue says how to queue the next round; a two-table queue's does not."""
    from pmatch_duckdb.review.answers import answer_entry
    from pmatch_duckdb.review.app import ReviewConfig, create_app
    from pmatch_duckdb.review.queue import next_entry

    con = _connect(review_demo)
    con.execute("CREATE TABLE d AS SELECT * FROM match_products('catalog', 'catalog', k := 3)")
    con.execute("SELECT * FROM pm_queue_review('d', queue := 'dd')").fetchall()
    con.execute("SELECT * FROM pm_queue_review('matches', queue := 'two')").fetchall()
    for q in ("dd", "two"):
        while (e := next_entry(con, q)) is not None:
            answer_entry(con, e, "no_match", queue=q, reviewer="ann")
    con.close()
    for q, says in (("dd", True), ("two", False)):
        page = create_app(ReviewConfig(review_demo.db, q, (review_demo.images,), "ann")).test_client().get("/")
        assert page.status_code == 302 and "finished=1" in page.headers["Location"]
        summary = create_app(ReviewConfig(review_demo.db, q, (review_demo.images,), "ann")).test_client().get(
            "/summary?finished=1").text
        assert "is done" in summary and ("Deduplication goes in rounds" in summary) is says
        assert (f"pm_queue_review('d', queue := '{q}')" in summary) is says  # the result it was queued from
    con = duckdb.connect(str(review_demo.db))
    con.execute("ALTER TABLE pm_review_queue DROP COLUMN matches")  # a queue written before it was recorded
    con.close()
    summary = create_app(ReviewConfig(review_demo.db, "dd", (review_demo.images,), "ann")).test_client().get(
        "/summary?finished=1").text
    assert "pm_queue_review('RESULT', queue := 'dd')" in summary


def test_review_page_shows_the_verdict_a_recheck_asks_about_again(review_demo) -> None:
    from pmatch_duckdb.review.app import ReviewConfig, create_app

    con = _connect(review_demo)
    st, si, tt, ti, score = con.execute("SELECT source_table, source_id, target_table, target_id, score FROM matches "
                                        "WHERE decision = 'review' ORDER BY score LIMIT 1").fetchall()[0]
    # a match given on a score 0.35 above today's, on the same (zero-shot) scale: the model turned against it
    record_verdict(con, PairKey.of(st, si, tt, ti), "match", reviewer="<b>bob</b>", matcher="zero-shot",
                   score=score + 0.35, decision="accept", scored_by="zero-shot")
    stats = con.execute("SELECT rechecks FROM pm_queue_review('matches')").fetchall()[0]
    first = con.execute("SELECT source_id, target_id, reason, decision FROM pm_review_queue WHERE position = 1"
                        ).fetchall()[0]
    con.close()
    assert stats == (1,) and first == (str(si), str(ti), "recheck", "review")  # the model's own decision shown
    page = create_app(ReviewConfig(review_demo.db, "default", (review_demo.images,), "ann")).test_client().get("/")
    assert page.status_code == 200 and "the model now disagrees with the verdict given before" in page.text
    assert "before: <b>Match</b> by &lt;b&gt;bob&lt;/b&gt;" in page.text, page.text
    assert f"shown {score + 0.35:.3f} (accept)" in page.text
    second = create_app(ReviewConfig(review_demo.db, "default", (review_demo.images,), "ann")).test_client()
    assert "before:" not in second.get("/pair/2").text  # not a recheck


def test_labels_and_queue_written_by_an_earlier_version_gain_scored_by(tmp_path) -> None:
    """A ``pm_labels`` / ``pm_review_queue`` without ``scored_by`` (written before it existed) is read as it is and
    gains the column (NULL on the old rows) when written to; nothing of the history changes."""
    from pmatch_duckdb.review.labels import LABELS_DDL
    from pmatch_duckdb.review.queue import QUEUE_DDL, queue_review

    con = duckdb.connect(str(tmp_path / "old.duckdb"))
    con.execute(LABELS_DDL)
    con.execute("ALTER TABLE pm_labels DROP COLUMN scored_by")  # as an earlier version created it
    con.execute("ALTER TABLE pm_labels DROP COLUMN with_label")
    con.execute(QUEUE_DDL)
    con.execute("ALTER TABLE pm_review_queue DROP COLUMN scored_by")
    con.execute("ALTER TABLE pm_review_queue DROP COLUMN certify_above")
    con.execute("ALTER TABLE pm_review_queue DROP COLUMN certify_target")
    con.execute("ALTER TABLE pm_review_queue DROP COLUMN alternatives")
    con.execute("ALTER TABLE pm_review_queue DROP COLUMN one_match")
    con.execute("ALTER TABLE pm_review_queue DROP COLUMN matches")
    from pmatch_duckdb.review.pairview import other_candidates

    assert other_candidates(con, {"alternatives": None}) is None  # an entry queued before it was recorded
    from pmatch_duckdb.review.certify import certify_status, queue_certify_status

    assert certify_status(con, "default/v2", "cat") is None and queue_certify_status(con, "default") is None
    con.execute("INSERT INTO pm_labels (source_table, source_id, target_table, target_id, verdict, matcher, score, "
                "decision) VALUES ('feed', 'L', 'cat', 'x', 'match', 'default/v1', 0.9, 'accept')")
    assert current_verdicts(con)[PairKey("feed", "L", "cat", "x")] == Verdict("match", 0.9, 1, "default/v1", "accept")
    con.execute("CREATE TABLE m AS SELECT * FROM (VALUES ('feed', 'A', 'cat', 'y', 0.6, 'review'), "
                "('feed', 'L', 'cat', 'x', 0.1, 'accept')) t(source_table, source_id, target_table, target_id, "
                "score, decision)")
    stats = queue_review(con, "m", state=ModelState("default/v2", 0.3, 0.95))
    assert (stats.boundary, stats.rechecks) == (1, 1)  # the verdict's scale is unknown: now 'reject' contradicts it
    assert con.execute("SELECT source_id, reason, decision, scored_by FROM pm_review_queue ORDER BY position"
                       ).fetchall() == [("L", "recheck", "reject", "stage1"), ("A", "boundary", "review", "stage1")]
    assert con.execute("SELECT count(*) FROM pm_review_queue WHERE certify_above IS NULL AND certify_target IS NULL "
                       "AND one_match = false AND matches = 'm'").fetchall()[0][0] == 2
    assert [(s, json.loads(a)) for s, a in con.execute("SELECT source_id, alternatives FROM pm_review_queue "
                                                       "ORDER BY position").fetchall()] == [
        ("L", {"rank": 1, "of": 1, "others": []}), ("A", {"rank": 1, "of": 1, "others": []})]
    record_verdict(con, PairKey("feed", "A", "cat", "y"), "no_match", matcher="default/v2", score=0.6,
                   decision="review", scored_by="stage1")
    assert con.execute("SELECT source_id, scored_by, with_label FROM pm_labels_current ORDER BY label_id"
                       ).fetchall() == [("L", None, None), ("A", "stage1", None)]
    with pytest.raises(PmatchError, match="scored_by must be one of"):
        record_verdict(con, PairKey("feed", "A", "cat", "y"), "match", scored_by="stage 1")
    con.close()


def test_review_page_when_another_process_holds_the_database(review_demo) -> None:
    import subprocess
    import sys

    from pmatch_duckdb.review.app import ReviewConfig, create_app

    con = _connect(review_demo)
    con.execute("SELECT * FROM pm_queue_review('matches')").fetchall()
    con.close()
    c = create_app(ReviewConfig(review_demo.db, "default", (review_demo.images,), "ann")).test_client()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('ready', flush=True); "
         "time.sleep(120)", str(review_demo.db)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        busy = c.get("/")
        assert busy.status_code == 503 and "The database is busy" in busy.text
    finally:
        holder.kill()
        holder.wait(30)
    assert c.get("/").status_code == 200  # and the page works again once the other process is gone


def test_pmatch_review_command_queues_and_serves_on_loopback(review_demo, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    import pmatch_duckdb.review.app as app_mod
    from pmatch_duckdb.cli import main

    served = {}
    monkeypatch.setattr(app_mod, "serve", lambda *a, **kw: served.update(args=a, **kw))
    res = CliRunner().invoke(main, ["review", str(review_demo.db), "--matches", "matches", "--queue", "q1",
                                    "--image-root", str(review_demo.images), "--port", "8999"])
    assert res.exit_code == 0, res.output
    assert "queued" in res.output and "http://127.0.0.1:8999/" in res.output
    assert served["host"] == "127.0.0.1" and served["port"] == 8999 and served["queue"] == "q1"
    con = duckdb.connect(str(review_demo.db), read_only=True)
    assert con.execute("SELECT count(*) FROM pm_review_queue WHERE queue = 'q1'").fetchall()[0][0] > 0
    con.close()
    res = CliRunner().invoke(main, ["review", str(review_demo.db), "--host", "0.0.0.0"])
    assert "warning: binding 0.0.0.0" in res.output
    # a certification sample: said what it is and what reviewing it can certify
    res = CliRunner().invoke(main, ["review", str(review_demo.db), "--matches", "matches", "--queue", "c1",
                                    "--certify", "0.99", "--certify-above", "0.85", "--image-root",
                                    str(review_demo.images)])
    assert res.exit_code == 0, res.output
    assert "random pairs scoring >= 0.8500, first in the queue" in res.output
    assert "once 268 of them are matches without a no-match, or 446 with one" in res.output
    assert "unlabelled pairs score that high here" in res.output  # a 20-product shop holds far fewer
    res = CliRunner().invoke(main, ["review", str(review_demo.db), "--certify", "0.99"])
    assert res.exit_code == 1 and "give --matches too" in res.output
    # a reject audit: counted in the queue line; it needs --matches and a whole number >= 0
    res = CliRunner().invoke(main, ["review", str(review_demo.db), "--matches", "matches", "--queue", "a1",
                                    "--audit-rejects", "5", "--image-root", str(review_demo.images)])
    assert res.exit_code == 0 and "5 sampled auto-rejects" in res.output, res.output
    res = CliRunner().invoke(main, ["review", str(review_demo.db), "--audit-rejects", "5"])
    assert res.exit_code == 1 and "give --matches too" in res.output
    # one match per supplier offer
    res = CliRunner().invoke(main, ["review", str(review_demo.db), "--matches", "matches", "--queue", "o1",
                                    "--one-match", "--image-root", str(review_demo.images)])
    assert res.exit_code == 0 and "one match per supplier offer" in res.output, res.output
    from pmatch_duckdb.review.app import ReviewConfig, create_app

    page = create_app(ReviewConfig(review_demo.db, "o1", (review_demo.images,), "ann")).test_client().get("/")
    assert page.status_code == 200 and '<span class="onematch"' in page.text
    # a result that auto-accepts one offer for two products (the demo's zero-shot result no longer does since its
    # sibling products score lower; its rank-2 candidate is accepted here): the offer's second accept comes first
    con = duckdb.connect(str(review_demo.db))
    con.execute("UPDATE matches SET decision = 'accept' WHERE rank = 2 AND source_id = (SELECT min(source_id) FROM "
                "matches WHERE rank = 1 AND decision = 'accept' AND source_id IN (SELECT source_id FROM matches "
                "WHERE rank = 2 AND decision <> 'accept'))")
    con.close()
    res = CliRunner().invoke(main, ["review", str(review_demo.db), "--matches", "matches", "--queue", "o3",
                                    "--one-match", "--accept-sample", "0", "--image-root", str(review_demo.images)])
    assert res.exit_code == 0 and "and 1 offers auto-accepted for two products are queued first" in res.output
    first = create_app(ReviewConfig(review_demo.db, "o3", (review_demo.images,), "ann")).test_client().get("/")
    assert '<span class="reason accept_conflict">two auto-accepted products for one supplier offer' in first.text
    rival = first.text.split('<div class="others">', 1)[1].split("</li>", 1)[0]  # the best accept, listed first
    assert 'class="verdict auto"' in rival
    plain = create_app(ReviewConfig(review_demo.db, "q1", (review_demo.images,), "ann")).test_client().get("/")
    assert plain.status_code == 200 and '<span class="onematch"' not in plain.text
    assert "warning" not in res.output, res.output
    # the statement is checked: an offer already matched to another product is flagged on its page, and one
    # matched to two products makes the CLI warn (naming it)
    con = duckdb.connect(str(review_demo.db))
    sid, tid = con.execute("SELECT source_id, target_id FROM pm_review_queue WHERE queue = 'o1' AND position = 1"
                           ).fetchall()[0]
    others = [r[0] for r in con.execute("SELECT id FROM catalog WHERE id <> ? ORDER BY id LIMIT 2", [tid]).fetchall()]
    record_verdict(con, PairKey.of("supplier_feed", sid, "catalog", others[0]), "match")
    con.close()
    page = create_app(ReviewConfig(review_demo.db, "o1", (review_demo.images,), "ann")).test_client().get("/pair/1")
    assert '<span class="onematch conflict"' in page.text and f"already matched: {others[0]}<" in page.text
    con = duckdb.connect(str(review_demo.db))
    record_verdict(con, PairKey.of("supplier_feed", sid, "catalog", others[1]), "match")
    con.close()
    res = CliRunner().invoke(main, ["review", str(review_demo.db), "--matches", "matches", "--queue", "o2",
                                    "--one-match", "--image-root", str(review_demo.images)])
    assert res.exit_code == 0 and "warning: --one-match, yet " in res.output, res.output
    assert f"{sid} -> {', '.join(sorted(others))}" in res.output
    res = CliRunner().invoke(main, ["review", str(review_demo.db), "--one-match"])
    assert res.exit_code == 1 and "give --matches too" in res.output
    res = CliRunner().invoke(main, ["review", str(review_demo.db), "--matches", "matches", "--audit-rejects", "-1"])
    assert res.exit_code == 2 and "--audit-rejects" in res.output


def test_review_page_offer_gone(review_demo) -> None:
    from pmatch_duckdb.review.app import ReviewConfig, create_app

    con = _connect(review_demo)
    con.execute("SELECT * FROM pm_queue_review('matches')").fetchall()
    sid = con.execute("SELECT source_id FROM pm_review_queue WHERE position = 1").fetchall()[0][0]
    con.execute("DELETE FROM supplier_feed WHERE id = ?", [sid])
    con.close()
    c = create_app(ReviewConfig(review_demo.db, "default", (review_demo.images,), "ann")).test_client()
    page = c.get("/pair/1")
    assert page.status_code == 200 and f"Offer {sid} cannot be read from supplier_feed" in page.text
    assert c.get("/img/1/s/0").status_code == 404


def test_dedup_queue_entries_are_answered_by_their_labels() -> None:
    from pmatch_duckdb.review.queue import next_entry, progress, queue_review

    con = duckdb.connect()
    con.execute("CREATE TABLE m AS SELECT * FROM (VALUES ('feed', 'b', 'FEED', 'a', 0.7, 'review'), "
                "('feed', 'c', 'feed', 'd', 0.6, 'review')) t(source_table, source_id, target_table, target_id, "
                "score, decision)")
    st = queue_review(con, "m", state=ModelState("zero-shot", 0.55, 0.8))
    assert st.queued == 2
    e = next_entry(con, "default")
    assert (e["source_id"], e["target_id"]) == ("a", "b")  # stored as pm_labels stores the pair
    record_verdict(con, PairKey(e["source_table"], e["source_id"], e["target_table"], e["target_id"]), "match")
    record_verdict(con, PairKey.of("feed", "d", "feed", "c"), "no_match")  # given the other way round
    assert progress(con, "default") == (2, 2) and next_entry(con, "default") is None


def test_each_queued_pair_records_its_place_among_its_offers_candidates() -> None:
    """``pm_review_queue.alternatives``: the pair's rank among its offer's candidates in the result (the result's
    ``rank`` column where it has one, else the score), how many there are, and the best others — both directions in
    a one-table result, table names matched as pm_labels keys them, a pair listed both ways once."""
    from pmatch_duckdb.review.alternatives import ALTERNATIVES
    from pmatch_duckdb.review.queue import queue_review

    con = duckdb.connect()
    # two tables; the result's rank disagrees with the scores (a re-read candidate on the pair scorer's scale)
    con.execute("CREATE TABLE m AS SELECT * FROM (VALUES "
                "('feed', 'A', 'cat', 'x', 0.70, 'review', 2), ('feed', 'A', 'cat', 'y', 0.60, 'review', 1), "
                "('feed', 'A', 'cat', 'z', 0.10, 'reject', 3), ('feed', 'B', 'cat', 'x', 0.65, 'review', 1), "
                "('other', 'A', 'cat', 'w', 0.99, 'accept', 1)) "
                "t(source_table, source_id, target_table, target_id, score, decision, rank)")
    queue_review(con, "m", state=ModelState("zero-shot", 0.55, 0.8), accept_sample=0)
    got = {(s, t): json.loads(a) for s, t, a in con.execute(
        "SELECT source_id, target_id, alternatives FROM pm_review_queue WHERE source_table = 'feed'").fetchall()}
    assert got[("A", "x")] == {"rank": 2, "of": 3, "others": [{"id": "y", "score": 0.6, "decision": "review"},
                                                               {"id": "z", "score": 0.1, "decision": "reject"}]}
    assert got[("A", "y")]["rank"] == 1 and [o["id"] for o in got[("A", "y")]["others"]] == ["x", "z"]
    assert got[("B", "x")] == {"rank": 1, "of": 1, "others": []}  # 'other'.A's candidate w is another offer's
    # without a rank column: by score
    con.execute("CREATE TABLE m2 AS SELECT * EXCLUDE (rank) FROM m")
    queue_review(con, "m2", queue="q2", state=ModelState("zero-shot", 0.55, 0.8), accept_sample=0)
    assert json.loads(con.execute("SELECT alternatives FROM pm_review_queue WHERE queue = 'q2' AND source_id = 'A' "
                                  "AND target_id = 'x'").fetchall()[0][0])["rank"] == 1
    # one table (dedup): the offer's pairs on either side, spelled two ways, listed both ways
    rows = [("feed", "a", "FEED", "b", 0.70, "review"), ("FEED", "b", "feed", "a", 0.72, "review"),
            ("feed", "c", "feed", "a", 0.90, "accept"), ("feed", "a", "feed", "d", 0.20, "reject"),
            *[("feed", "a", "feed", f"e{i}", 0.05 - i / 100, "reject") for i in range(ALTERNATIVES)]]
    con.execute("CREATE TABLE d (source_table VARCHAR, source_id VARCHAR, target_table VARCHAR, target_id VARCHAR, "
                "score DOUBLE, decision VARCHAR)")
    con.executemany("INSERT INTO d VALUES (?, ?, ?, ?, ?, ?)", rows)
    queue_review(con, "d", queue="dd", state=ModelState("zero-shot", 0.55, 0.8), accept_sample=0)
    (sid, tid, alt), = con.execute("SELECT source_id, target_id, alternatives FROM pm_review_queue "
                                   "WHERE queue = 'dd' AND reason = 'boundary'").fetchall()
    alt = json.loads(alt)
    assert (sid, tid) == ("a", "b") and alt["rank"] == 2 and alt["of"] == 3 + ALTERNATIVES
    assert [o["id"] for o in alt["others"]] == ["c", "d", "e0", "e1"][:ALTERNATIVES]
    assert alt["others"][0] == {"id": "c", "score": 0.9, "decision": "accept"}


def test_a_pick_answers_the_shown_pair_and_names_the_offers_match_and_is_undone_as_one() -> None:
    """A pick: the shown pair is no match, one of its offer's other candidates is the match. Two verdicts in one
    answer (the second names the first); a picked pair waiting in the queue is answered with that entry's reason and
    shown score; undo takes back both; only a recorded candidate can be picked; dedup pairs keep their order."""
    from pmatch_duckdb.review.answers import PICKED, answer_entry, pick_candidate, undo_last
    from pmatch_duckdb.review.queue import entry_at, next_entry, progress, queue_review

    con = duckdb.connect()
    con.execute("CREATE TABLE m AS SELECT * FROM (VALUES "
                "('feed', 'A', 'cat', 'x', 0.70, 'review', 1), ('feed', 'A', 'cat', 'y', 0.60, 'review', 2), "
                "('feed', 'A', 'cat', 'z', 0.10, 'reject', 3), ('feed', 'B', 'cat', 'x', 0.65, 'review', 1)) "
                "t(source_table, source_id, target_table, target_id, score, decision, rank)")
    queue_review(con, "m", state=ModelState("zero-shot", 0.55, 0.8), accept_sample=0)
    pos = dict(con.execute("SELECT source_id || target_id, position FROM pm_review_queue").fetchall())
    ax, ay = entry_at(con, "default", pos["Ax"]), entry_at(con, "default", pos["Ay"])
    before = progress(con, "default")
    assert before == (0, 3)
    # z is not queued (auto-rejected): the pick labels it with what the list showed
    done = pick_candidate(con, ax, "z", queue="default", reviewer="ann", note="z is the one")
    assert done.said({"match": "Match", "no_match": "No match"}) == "No match: A ↔ x; Match: A ↔ z"
    rows = con.execute("SELECT label_id, source_id, target_id, verdict, reviewer, score, decision, reason, note, "
                       "scored_by, with_label FROM pm_labels ORDER BY label_id").fetchall()
    first = rows[0][0]
    assert rows == [(first, "A", "x", "no_match", "ann", 0.70, "review", "boundary", "z is the one", "zero-shot", None),
                    (first + 1, "A", "z", "match", "ann", 0.10, "reject", PICKED, "picked instead of x: z is the one",
                     "zero-shot", first)]
    assert progress(con, "default") == (1, 3)
    # calibrate counts the answered entry, not the found match: alone, found matches would overstate precision
    from pmatch_duckdb.review.calibrate import reviewed_pairs

    assert reviewed_pairs(con, "cat", "zero-shot")[0] == [("feed", "A", "cat", "x")]
    assert undo_last(con, "default", "ann") == pos["Ax"]
    assert progress(con, "default") == (0, 3) and not current_verdicts(con)
    # y waits in the queue: picking it answers its entry too, with that entry's reason and score
    pick_candidate(con, ax, "y", queue="default", reviewer="ann")
    assert con.execute("SELECT target_id, verdict, score, reason, scored_by FROM pm_labels_current ORDER BY label_id"
                       ).fetchall() == [("x", "no_match", 0.70, "boundary", "zero-shot"),
                                        ("y", "match", 0.60, "boundary", "zero-shot")]
    assert progress(con, "default") == (2, 3) and next_entry(con, "default")["source_id"] == "B"
    # the last answer found through the picked pair's entry is still undone as a whole, back to the shown pair
    assert undo_last(con, "default", "ann") == pos["Ax"] and progress(con, "default") == (0, 3)
    # another reviewer's answers are not theirs to undo; one verdict alone is undone alone
    answer_entry(con, ay, "match", queue="default", reviewer="bob")
    assert undo_last(con, "default", "ann") is None and undo_last(con, "default", "bob") == pos["Ay"]
    # only a recorded other candidate
    with pytest.raises(PmatchError, match=r"'w' is not among the other candidates recorded for queue entry .*'y', 'z'"):
        pick_candidate(con, ax, "w", queue="default")
    with pytest.raises(PmatchError, match="is the pair shown"):
        pick_candidate(con, {**ax, "alternatives": json.dumps({"rank": 1, "of": 2, "others": [
            {"id": "x", "score": 0.7, "decision": "review"}]})}, "x", queue="default")
    n = con.execute("SELECT count(*) FROM pm_labels").fetchall()[0][0]
    # a failed second insert leaves neither verdict
    with pytest.raises(duckdb.ConversionException):
        pick_candidate(con, {**ax, "alternatives": json.dumps({"rank": 1, "of": 2, "others": [
            {"id": "q", "score": "high", "decision": "review"}]})}, "q", queue="default")
    assert con.execute("SELECT count(*) FROM pm_labels").fetchall()[0][0] == n
    # dedup: the picked offer sorts before the shown offer's id, and is keyed that way round
    con.execute("CREATE TABLE d AS SELECT * FROM (VALUES ('feed', 'b', 'feed', 'c', 0.70, 'review'), "
                "('feed', 'a', 'feed', 'b', 0.20, 'reject')) t(source_table, source_id, target_table, target_id, "
                "score, decision)")
    queue_review(con, "d", queue="dd", state=ModelState("zero-shot", 0.55, 0.8), accept_sample=0)
    (p,), = con.execute("SELECT position FROM pm_review_queue WHERE queue = 'dd'").fetchall()
    pick_candidate(con, entry_at(con, "dd", p), "a", queue="dd")
    assert con.execute("SELECT source_id, target_id, verdict FROM pm_labels_current WHERE queue = 'dd' "
                       "ORDER BY label_id").fetchall() == [("b", "c", "no_match"), ("a", "b", "match")]
    con.close()


def test_none_of_these_answers_the_pair_and_its_listed_candidates_no_match() -> None:
    """"None of these": no_match for the pair shown and each listed candidate without a verdict; a listed pair waiting
    as a boundary entry is answered with its entry's reason, one waiting as a sample is left for a person; calibrate
    counts the queued pairs only; one undo."""
    from pmatch_duckdb.review.answers import reject_listed, undo_last
    from pmatch_duckdb.review.calibrate import reviewed_pairs
    from pmatch_duckdb.review.labels import LISTED
    from pmatch_duckdb.review.queue import entry_at, progress, queue_review

    con = duckdb.connect()
    con.execute("CREATE TABLE m AS SELECT * FROM (VALUES "
                "('feed', 'A', 'cat', 'x', 0.70, 'review', 1), ('feed', 'A', 'cat', 'y', 0.60, 'review', 2), "
                "('feed', 'A', 'cat', 'v', 0.58, 'review', 3), ('feed', 'A', 'cat', 'z', 0.10, 'reject', 4), "
                "('feed', 'A', 'cat', 'w', 0.90, 'accept', 5), ('feed', 'A', 'cat', 'u', 0.05, 'reject', 6)) "
                "t(source_table, source_id, target_table, target_id, score, decision, rank)")
    record_verdict(con, PairKey("feed", "A", "cat", "v"), "match")  # given before: not queued, kept
    queue_review(con, "m", state=ModelState("zero-shot", 0.55, 0.8), accept_sample=1.0)
    pos = dict(con.execute("SELECT source_id || target_id, position FROM pm_review_queue").fetchall())
    done = reject_listed(con, entry_at(con, "default", pos["Ax"]), queue="default", reviewer="ann", note="odd")
    assert [(k.target_id, v) for k, v in done.labels] == [("x", "no_match"), ("y", "no_match"), ("z", "no_match")]
    got = con.execute("SELECT target_id, verdict, reason, score, with_label IS NULL, note FROM pm_labels_current "
                      "ORDER BY label_id").fetchall()
    said = "none of the offer's listed candidates (at entry 1): odd"
    assert pos["Ax"] == 1 and got == [
        ("v", "match", None, None, True, None), ("x", "no_match", "boundary", 0.70, True, "odd"),
        ("y", "no_match", "boundary", 0.60, False, said), ("z", "no_match", LISTED, 0.10, False, said)]
    # w waits as an accept sample (for a person); u was not listed (four others are recorded)
    assert progress(con, "default") == (2, 3)
    assert sorted(reviewed_pairs(con, "cat", "zero-shot")[0]) == [("feed", "A", "cat", "x"), ("feed", "A", "cat", "y")]
    assert undo_last(con, "default", "ann") == pos["Ax"]
    assert con.execute("SELECT target_id FROM pm_labels_current").fetchall() == [("v",)]
    # one table (dedup): a listed pair keyed the other way round is still found waiting in the queue
    con.execute("CREATE TABLE d AS SELECT * FROM (VALUES ('feed', 'b', 'feed', 'c', 0.70, 'review'), "
                "('feed', 'b', 'feed', 'a', 0.65, 'review'), ('feed', 'b', 'feed', 'd', 0.95, 'accept'), "
                "('feed', 'b', 'feed', 'e', 0.10, 'reject')) t(source_table, source_id, target_table, target_id, "
                "score, decision)")
    queue_review(con, "d", queue="dd", state=ModelState("zero-shot", 0.55, 0.8), accept_sample=1.0)
    (p,), = con.execute("SELECT position FROM pm_review_queue WHERE queue = 'dd' AND target_id = 'c'").fetchall()
    reject_listed(con, entry_at(con, "dd", p), queue="dd")
    assert con.execute("SELECT source_id, target_id, reason FROM pm_labels_current WHERE queue = 'dd' "
                       "ORDER BY label_id").fetchall() == [("b", "c", "boundary"), ("a", "b", "boundary"),
                                                          ("b", "e", LISTED)]  # b-d waits as an accept sample
    con.close()


def test_one_match_is_checked_against_the_verdicts() -> None:
    """``one_match_conflicts``: the source offers people already said match for two or more target products (on
    pairs in the result or not; two auto-accepts are not a conflict); NULL in the SQL row without one_match."""
    from pmatch_duckdb.review.queue import queue_review

    con = duckdb.connect()
    con.execute("CREATE TABLE m AS SELECT * FROM (VALUES "
                "('feed', 'A', 'cat', 'w', 0.90, 'accept'), ('feed', 'A', 'cat', 'x', 0.60, 'review'), "
                "('feed', 'B', 'cat', 'y', 0.85, 'review'), "
                "('feed', 'C', 'cat', 'r', 0.95, 'accept'), ('feed', 'C', 'cat', 's', 0.60, 'review'), "
                "('feed', 'E', 'cat', 'e1', 0.91, 'accept'), ('feed', 'E', 'cat', 'e2', 0.90, 'accept'), "
                "('feed', 'F', 'cat', 'f', 0.60, 'review')) "
                "t(source_table, source_id, target_table, target_id, score, decision)")
    state = ModelState("zero-shot", 0.55, 0.8)
    record_verdict(con, PairKey("feed", "A", "cat", "w"), "match")
    record_verdict(con, PairKey("feed", "A", "cat", "x"), "match")
    record_verdict(con, PairKey("feed", "B", "cat", "q"), "match")  # a pair the result does not hold
    record_verdict(con, PairKey("feed", "B", "cat", "y"), "match")
    record_verdict(con, PairKey("feed", "C", "cat", "r"), "match")
    record_verdict(con, PairKey("feed", "C", "cat", "s"), "match")
    record_verdict(con, PairKey("feed", "C", "cat", "s"), "no_match")  # changed its mind: one match in force
    record_verdict(con, PairKey("feed", "F", "cat", "f"), "match")
    record_verdict(con, PairKey("other", "F", "cat", "g"), "match")  # another source table: not F's
    st = queue_review(con, "m", state=state, one_match=True)
    assert st.one_match_conflicts == 2 and st.conflict_examples == (("A", ["w", "x"]), ("B", ["q", "y"]))
    assert queue_review(con, "m", queue="plain", state=state).one_match_conflicts is None
    con.close()
    with pm.connect() as c:
        c.execute("CREATE TABLE m AS SELECT * FROM (VALUES ('feed', 'A', 'cat', 'w', 0.90, 'accept'), "
                  "('feed', 'A', 'cat', 'x', 0.85, 'accept')) t(source_table, source_id, target_table, target_id, "
                  "score, decision)")
        assert c.execute("SELECT one_match_conflicts FROM pm_queue_review('m', one_match := true)").fetchall() == [(0,)]
        assert c.execute("SELECT one_match_conflicts FROM pm_queue_review('m', queue := 'p')").fetchall() == [(None,)]


def test_a_one_match_queue_holds_one_page_per_offer_auto_accepted_twice() -> None:
    """``accept_conflict``: in a one-match queue, an offer auto-accepted for two products (or for one while a person
    said match for another) gets one page, its second-best accept (its best where a match verdict stands), first
    after the certification sample; not where the accept sample drew one of them, nor in a plain queue. A match
    given on another page of the offer settles it; calibrate leaves its verdicts out."""
    from pmatch_duckdb.review.answers import answer_entry
    from pmatch_duckdb.review.calibrate import reviewed_pairs
    from pmatch_duckdb.review.labels import CONFLICT
    from pmatch_duckdb.review.queue import entry_at, queue_review

    con = duckdb.connect()
    con.execute("CREATE TABLE m AS SELECT * FROM (VALUES "
                "('feed', 'A', 'cat', 'a1', 0.95, 'accept'), ('feed', 'A', 'cat', 'a2', 0.90, 'accept'), "
                "('feed', 'A', 'cat', 'a3', 0.85, 'accept'), ('feed', 'A', 'cat', 'a4', 0.60, 'review'), "
                "('feed', 'B', 'cat', 'b1', 0.97, 'accept'), ('feed', 'B', 'cat', 'b2', 0.70, 'review'), "
                "('feed', 'C', 'cat', 'c1', 0.88, 'accept'), ('feed', 'C', 'cat', 'c2', 0.30, 'reject'), "
                "('feed', 'D', 'cat', 'd1', 0.99, 'accept'), ('feed', 'D', 'cat', 'd2', 0.98, 'accept'), "
                "('feed', 'E', 'cat', 'e1', 0.93, 'accept'), ('feed', 'E', 'cat', 'e2', 0.92, 'accept')) "
                "t(source_table, source_id, target_table, target_id, score, decision)")
    record_verdict(con, PairKey("feed", "C", "cat", "c2"), "match")  # a person's match + an accept: a conflict
    record_verdict(con, PairKey("feed", "D", "cat", "d1"), "no_match")  # said no to: one accept left
    state = ModelState("zero-shot", 0.55, 0.8)
    st = queue_review(con, "m", state=state, accept_sample=0.0, one_match=True)
    got = con.execute("SELECT position, source_id, target_id, reason FROM pm_review_queue ORDER BY position"
                      ).fetchall()
    assert st.accept_conflicts == 3 and got[:3] == [(1, "E", "e2", CONFLICT), (2, "A", "a2", CONFLICT),
                                                    (3, "C", "c1", CONFLICT)], got
    assert {r[3] for r in got[3:]} == {"boundary"}
    assert queue_review(con, "m", queue="plain", state=state, accept_sample=0.0).accept_conflicts == 0
    # the accept sample drew one of E's accepts: that page settles it, no second one
    drawn = queue_review(con, "m", queue="all", state=state, accept_sample=1.0, one_match=True)
    assert drawn.accept_conflicts == 0
    # a match answered on A's boundary pair settles A's conflict page (and lists a1, a2, a3 no_match)
    a4 = entry_at(con, "default", next(p for p, s, t, _ in got if t == "a4"))
    answer_entry(con, a4, "match", queue="default", reviewer="ann")
    said = dict(con.execute("SELECT target_id, reason FROM pm_labels_current WHERE source_id = 'A' AND "
                            "verdict = 'no_match'").fetchall())
    assert said["a2"] == CONFLICT and set(said) == {"a1", "a2", "a3"}
    answer_entry(con, entry_at(con, "default", 3), "no_match", queue="default", reviewer="ann")
    assert ("feed", "C", "cat", "c1") not in reviewed_pairs(con, "cat", "zero-shot")[0]  # not a sample of scores
    assert ("feed", "A", "cat", "a4") in reviewed_pairs(con, "cat", "zero-shot")[0]
    con.close()


def test_a_one_table_queue_holds_the_links_that_chain_offers_known_to_differ() -> None:
    """Deduplication: accepted links (and matches people gave) that put two offers the result rejects as a pair, or a
    person said differ, in one cluster: the weakest unlabelled accept on the path between them gets one page
    (``accept_conflict``), weakest first; none where only people's matches link them, none for links the accept
    sample drew; a cluster of two, or a pair apart in different clusters, is no conflict."""
    from pmatch_duckdb.review.labels import CONFLICT
    from pmatch_duckdb.review.queue import queue_review

    con = duckdb.connect()
    rows = [("a", "b", 0.90, "accept"), ("b", "c", 0.85, "accept"), ("c", "d", 0.95, "accept"),
            ("a", "c", 0.20, "reject"),  # the model says a and c differ, yet a-b-c chains them
            ("f", "g", 0.88, "accept"), ("h", "i", 0.70, "review"), ("i", "j", 0.30, "reject"),
            ("k", "l", 0.93, "accept"), ("x", "y", 0.91, "accept"), ("y", "z", 0.20, "reject")]
    con.execute("CREATE TABLE m (source_table VARCHAR, source_id VARCHAR, target_table VARCHAR, target_id VARCHAR, "
                "score DOUBLE, decision VARCHAR)")
    con.executemany("INSERT INTO m VALUES ('feed', ?, 'feed', ?, ?, ?)", rows)
    record_verdict(con, PairKey.of("feed", "a", "feed", "d"), "no_match")  # same path: the same weakest link
    record_verdict(con, PairKey.of("feed", "e", "feed", "f"), "match")  # a person's link e-f, then f-g accepted,
    record_verdict(con, PairKey.of("feed", "e", "feed", "g"), "no_match")  # and e, g said to differ
    record_verdict(con, PairKey.of("feed", "h", "feed", "k"), "match")  # people's links only: h-k-... not asked
    record_verdict(con, PairKey.of("feed", "k", "feed", "m"), "match")
    record_verdict(con, PairKey.of("feed", "h", "feed", "m"), "no_match")
    state = ModelState("zero-shot", 0.55, 0.8)
    st = queue_review(con, "m", state=state, accept_sample=0.0)
    got = con.execute("SELECT source_id, target_id, reason FROM pm_review_queue ORDER BY position").fetchall()
    assert st.accept_conflicts == 2 and got[:2] == [("b", "c", CONFLICT), ("f", "g", CONFLICT)], got
    # y-z is rejected but x, y, z are no cluster of three (x-y alone); k-l is accepted, h-k-m people's own: no page
    assert {(s_, t) for s_, t, r in got if r == CONFLICT} == {("b", "c"), ("f", "g")}
    assert queue_review(con, "m", queue="all", state=state, accept_sample=1.0).accept_conflicts == 0  # sampled
    con.close()


def test_cluster_conflicts_examine_a_bounded_number_of_pairs_per_cluster() -> None:
    """A chained cluster (400 links in a row, 399 rejected pairs inside it) is examined for at most PER_CLUSTER pairs
    known to differ in one queue build: people's no_match first, then the result's rejects from the lowest score."""
    from pmatch_duckdb.review.conflicts import PER_CLUSTER, cluster_conflicts

    def key(i: int, j: int) -> PairKey:
        return PairKey.of("t", f"{i:04d}", "t", f"{j:04d}")

    accepts = [{"key": key(i, i + 1), "score": 0.9 + (i % 7) / 100} for i in range(400)]
    rejects = {key(i, i + 2): 0.1 + i / 10_000 for i in range(399)}
    said = {key(300, 305): Verdict("no_match", 0.5, 1)}
    out = cluster_conflicts(accepts, [], said, lambda members: rejects)
    assert 0 < len(out) <= PER_CLUSTER
    firsts = sorted(int(r["key"].source_id) for r in out)
    assert any(300 <= i < 305 for i in firsts)  # the person's no_match: examined first
    assert all(i < PER_CLUSTER + 1 or 300 <= i < 305 for i in firsts)  # then the lowest-scored rejects (0-2, 1-3, ...)


def test_a_one_match_queue_answers_the_offers_other_candidates_with_its_match() -> None:
    """``one_match``: a match (answered or picked) records no_match for the offer's other unanswered boundary
    entries and its listed other candidates, in one answer undone as one; samples waiting in the queue, pairs with a
    verdict and other offers are left alone; calibrate counts the implied verdicts of queued pairs only; refused for a
    one-table result."""
    from pmatch_duckdb.review.answers import answer_entry, pick_candidate, undo_last
    from pmatch_duckdb.review.calibrate import reviewed_pairs
    from pmatch_duckdb.review.labels import IMPLIED
    from pmatch_duckdb.review.queue import entry_at, progress, queue_review

    con = duckdb.connect()
    con.execute("CREATE TABLE m AS SELECT * FROM (VALUES "
                "('feed', 'A', 'cat', 'x', 0.70, 'review', 1), ('feed', 'A', 'cat', 'y', 0.60, 'review', 2), "
                "('feed', 'A', 'cat', 'v', 0.58, 'review', 3), ('feed', 'A', 'cat', 'z', 0.10, 'reject', 4), "
                "('feed', 'A', 'cat', 'w', 0.90, 'accept', 5), ('feed', 'B', 'cat', 'x', 0.65, 'review', 1), "
                "('feed', 'B', 'cat', 'y', 0.62, 'review', 2)) "
                "t(source_table, source_id, target_table, target_id, score, decision, rank)")
    record_verdict(con, PairKey("feed", "A", "cat", "v"), "unsure")  # a verdict already given: not queued, kept
    st = queue_review(con, "m", state=ModelState("zero-shot", 0.55, 0.8), accept_sample=1.0, one_match=True)
    assert (st.boundary, st.accept_samples) == (4, 1)
    pos = dict(con.execute("SELECT source_id || target_id, position FROM pm_review_queue").fetchall())
    assert con.execute("SELECT bool_and(one_match) FROM pm_review_queue").fetchall()[0][0] is True
    done = answer_entry(con, entry_at(con, "default", pos["Ax"]), "match", queue="default", reviewer="ann")
    assert done.said({"match": "Match", "no_match": "No match"}) == (
        "Match: A ↔ x; No match: A ↔ y; 1 other candidate of the offer: No match")
    got = con.execute("SELECT target_id, verdict, reason, with_label IS NULL, note FROM pm_labels_current "
                      "WHERE source_id = 'A' ORDER BY label_id").fetchall()
    assert got == [("v", "unsure", None, True, None), ("x", "match", "boundary", True, None),
                   ("y", "no_match", "boundary", False, "one match per source: the offer's match is x"),
                   ("z", "no_match", IMPLIED, False, "one match per source: the offer's match is x")]
    # w, an auto-accept sampled into the queue, waits for a person; offer B is untouched
    assert progress(con, "default") == (2, 5)
    assert {r[0] for r in con.execute("SELECT source_id || target_id FROM pm_review_queue q WHERE NOT EXISTS "
                                      "(SELECT 1 FROM pm_labels_current l WHERE l.source_id = q.source_id AND "
                                      "l.target_id = q.target_id AND l.label_id > q.labels_before)").fetchall()} == {
        "Aw", "Bx", "By"}
    # calibrate counts the queued pairs' verdicts, not the implied one of a candidate no entry waited for
    assert sorted(reviewed_pairs(con, "cat", "zero-shot")[0]) == [("feed", "A", "cat", "x"), ("feed", "A", "cat", "y")]
    assert undo_last(con, "default", "ann") == pos["Ax"]
    assert con.execute("SELECT target_id, verdict FROM pm_labels_current").fetchall() == [("v", "unsure")]
    # a pick in a one-match queue: the shown pair no, the picked yes, the rest no
    pick_candidate(con, entry_at(con, "default", pos["Bx"]), "y", queue="default", reviewer="ann")
    assert con.execute("SELECT target_id, verdict, reason FROM pm_labels_current WHERE source_id = 'B' "
                       "ORDER BY label_id").fetchall() == [("x", "no_match", "boundary"), ("y", "match", "boundary")]
    assert (st.one_match_conflicts, st.conflict_examples) == (0, ())
    # refused for one table
    con.execute("CREATE TABLE d AS SELECT * FROM (VALUES ('feed', 'a', 'feed', 'b', 0.70, 'review')) "
                "t(source_table, source_id, target_table, target_id, score, decision)")
    with pytest.raises(PmatchError, match="one_match is for a result linking two tables"):
        queue_review(con, "d", queue="dd", state=ModelState("zero-shot", 0.55, 0.8), one_match=True)
    con.close()


# ----------------------------------------------------------------------------------------------
# the certification sample (pm_queue_review(certify := ...), review/certify.py)
# ----------------------------------------------------------------------------------------------


def test_reviews_needed_is_the_fewest_that_reach_the_bound() -> None:
    import numpy as np

    from pmatch_duckdb.decision import wilson_lower
    from pmatch_duckdb.review.certify import reviews_needed

    assert reviews_needed(0.99, 0) == 268 and reviews_needed(0.99, 1) == 446  # the figures the docs quote
    for target in (0.9, 0.95, 0.98, 0.99, 0.995):
        for errors in (0, 1, 3):
            n = reviews_needed(target, errors)
            assert wilson_lower(np.array([n - errors]), np.array([n]))[0] >= target
            assert wilson_lower(np.array([n - 1 - errors]), np.array([n - 1]))[0] < target
    for bad in (1.0, 0.3, "x", None):
        with pytest.raises(PmatchError, match="target precision"):
            reviews_needed(bad)


def test_calibrated_threshold_is_where_the_scores_above_average_the_goal() -> None:
    import numpy as np

    from pmatch_duckdb.review.certify import calibrated_threshold

    s = np.array([1.0, 1.0, 0.99, 0.98, 0.9, 0.5, np.nan])
    assert calibrated_threshold(s, 0.99) == 0.98  # mean of the top four 0.9925; with 0.9 it is 0.974
    assert calibrated_threshold(s, 0.999) == 1.0
    assert calibrated_threshold(np.array([0.97, 0.96]), 0.99) is None
    assert calibrated_threshold(np.array([1.0, 0.99, 0.99, 0.5]), 0.995) == 1.0  # never between equal scores


def test_the_certification_sample_is_random_above_its_floor_and_first() -> None:
    state = ModelState("default/v1", 0.3, math.inf, scale="stage1")  # nothing auto-accepted
    rows = [_row(f"S{i}", "t", 0.5 + 0.5 * i / 400, "review") for i in range(400)]
    rows.append(_row("R", "t", 0.97, "reject"))  # above the floor whatever the decision
    rows.append(_row("L", "t", 0.99, "review"))  # labelled: not drawn
    verdicts = {PairKey.of("feed", "L", "cat", "t"): Verdict("match", 0.99, 1, "stage1", "review")}
    ordered, counts = build_queue(rows, verdicts, state, certify=(0.9, 40), seed=3)
    drawn = [it for it in ordered if it["reason"] == "certify_sample"]
    assert counts["certify_samples"] == 40 and ordered[:40] == drawn
    assert all(it["score"] >= 0.9 for it in drawn) and "L" not in {it["source_id"] for it in drawn}
    # a sample, not the top 40: spread over the 81 eligible pairs' range
    scores = sorted(it["score"] for it in drawn)
    assert scores[0] < 0.92 and scores[-1] > 0.98
    # the rest queued as usual (the rejected one, where not drawn, not at all)
    assert counts["boundary"] == 400 - sum(it["source_id"] != "R" for it in drawn)
    assert counts["skipped_labelled"] == 1
    again, _ = build_queue(rows, verdicts, state, certify=(0.9, 40), seed=3)
    assert [it["key"] for it in again] == [it["key"] for it in ordered]
    other, _ = build_queue(rows, verdicts, state, certify=(0.9, 40), seed=4)
    assert {it["key"] for it in other[:40]} != {it["key"] for it in drawn}
    everything, c = build_queue(rows, verdicts, state, certify=(0.9, 1000))  # more asked than there are: all
    assert c["certify_samples"] == 81 and c["boundary"] == 400 - 80


def _synthetic_result(con, n: int = 2000) -> dict:  # noqa: ANN001
    """A saved result of ``n`` pairs (scores 0.3..1, nothing auto-accepted) and its truth: below 0.9 every 15th
    pair is a non-match, above it every 200th."""
    truth = {}
    rows = []
    for i in range(n):
        s = 0.3 + 0.7 * i / (n - 1)
        truth[("feed_x", f"s{i}", "catalog", f"t{i}")] = i % (200 if s >= 0.9 else 15) != 0 and s >= 0.45
        rows.append((f"s{i}", f"t{i}", s, "review" if s >= 0.55 else "reject"))
    con.execute("CREATE TABLE big AS SELECT 'feed_x' AS source_table, 'catalog' AS target_table, * FROM "
                "(VALUES " + ", ".join(f"('{a}', '{b}', {s}, '{d}')" for a, b, s, d in rows) +
                ") v(source_id, target_id, score, decision)")
    return truth


def _answer(con, truth: dict, queue: str, n: int) -> None:  # noqa: ANN001
    rows = con.execute("SELECT source_table, source_id, target_table, target_id, score, decision, reason, matcher "
                       "FROM pm_review_queue WHERE queue = ? ORDER BY position LIMIT ?", [queue, n]).fetchall()
    for st, si, tt, ti, s, d, r, m in rows:
        record_verdict(con, PairKey(st, si, tt, ti), "match" if truth[(st, si, tt, ti)] else "no_match", score=s,
                       decision=d, reason=r, matcher=m, queue=queue)


def _plain_review_cut(con) -> float:  # noqa: ANN001
    """The "all but 2 % of the reviewed matches" cut of the current verdicts other than a certification sample's."""
    from pmatch_duckdb.decision import choose_thresholds

    rows = con.execute("SELECT score, verdict = 'match' FROM pm_labels_current WHERE reason <> 'certify_sample'"
                       ).fetchall()
    return choose_thresholds(np.array([r[0] for r in rows]), np.array([r[1] for r in rows], dtype=float), 0.95,
                             0.02)[1]


def _record_recall_loss(con, target: str, loss: float) -> None:  # noqa: ANN001
    """Write into ``target``'s index what an earlier calibration records: the share of the matches its zero-shot
    review threshold auto-rejects (without one, calibrate never raises that threshold)."""
    import json

    from pmatch_duckdb.api import context_of
    from pmatch_duckdb.sqlident import index_name_for
    from pmatch_duckdb.store import META_KEY, OfferIndex

    idx = OfferIndex(context_of(con).index_root, index_name_for(target))
    meta = {**idx.metadata(), "calibration": {"recall_loss": loss, "recall_loss_from": "a test"}}
    idx.table().to_lance().update_schema_metadata({META_KEY.decode(): json.dumps(meta)})


def test_a_certification_sample_lets_calibrate_certify_what_the_boundary_queue_cannot(review_demo) -> None:
    """Same review budget, same result: the boundary queue's reviews certify no accept threshold at 0.95, the
    certification sample's do, and calibrate reports how far the sample has got."""
    from pmatch_duckdb.review.calibrate import calibrate
    from pmatch_duckdb.review.certify import reviews_needed
    from pmatch_duckdb.review.queue import queue_review

    budget = reviews_needed(0.95, 1)
    con = _connect(review_demo)
    truth = _synthetic_result(con)
    queue_review(con, "big", "plain", accept_sample=0)
    _answer(con, truth, "plain", budget)
    plain = calibrate(con, "catalog", target_precision=0.95, apply=False)
    assert plain.accept is None and plain.certify is None
    con.execute("DELETE FROM pm_labels")
    st = queue_review(con, "big", "cert", accept_sample=0, certify=0.95, certify_above=0.9)
    assert (st.certify_samples, st.certify_above) == (budget, 0.9)
    _answer(con, truth, "cert", budget // 2)
    half = calibrate(con, "catalog", target_precision=0.95, apply=False)
    assert half.certify["reviewed"] == budget // 2 and half.certify["queued"] == budget
    # without a target, calibrate judges by the one the sample was drawn for (not 0.99)
    assert calibrate(con, "catalog", apply=False).target_precision == 0.95
    _answer(con, truth, "cert", budget)
    cal = calibrate(con, "catalog", target_precision=0.95, apply=False)
    assert cal.accept is not None and cal.accept >= 0.9 and cal.accept_lower_bound >= 0.95
    got = cal.certify
    assert (got["above"], got["target"], got["queued"], got["reviewed"]) == (0.9, 0.95, budget, budget)
    assert got["lower_bound"] >= 0.95 and got["matches"] >= budget - 1
    # the sample of a model whose scores other names share (calibrated copies): counted under any of them
    from pmatch_duckdb.review.certify import certify_status

    assert certify_status(con, ("m/v1", "zero-shot"), "catalog").as_dict() == got
    assert certify_status(con, ("m/v1", "m/v2"), "catalog") is None
    # the sample (all above 0.9) does not move the review threshold: no other verdicts, so it stays as it was
    # (taken from the sample it would be its matches' 2% quantile, above 0.9)
    assert cal.review == pytest.approx(cal.old_review) and cal.old_review < 0.6
    # nor do the reviews below: nobody measured what the zero-shot review threshold already auto-rejects (an earlier
    # calibration records it; see test_a_reject_audit_... for measuring it)
    assert cal.review_kept.startswith("the matches it already auto-rejects were never measured")
    _record_recall_loss(con, "catalog", 0.0)
    # and 300 boundary pairs, the queue's window around the boundary (0.675): the band under the window is unreviewed,
    # so the review threshold rises no higher than its lowest unanswered pair (the quantile rule alone: 0.624)
    _answer(con, truth, "cert", budget + 300)
    lowest = con.execute("SELECT min(score) FROM pm_review_queue q WHERE queue = 'cert' AND reason = 'boundary' AND "
                         "NOT EXISTS (SELECT 1 FROM pm_labels_current l WHERE l.source_id = q.source_id)").fetchall()[0][0]
    mixed = calibrate(con, "catalog", target_precision=0.95, apply=False)
    assert mixed.accept is not None and mixed.review == pytest.approx(lowest, abs=1e-12) and lowest < 0.56
    assert mixed.review_held and _plain_review_cut(con) > lowest + 0.05
    con.close()
    out = _calibrate_cli(review_demo)
    assert "(held at the lowest queued band pair nobody has answered yet" in out, out
    con = _connect(review_demo)
    # the whole queue answered: the review threshold is the "all but 2 % of the reviewed matches" cut of the reviewed
    # pairs other than the sample
    _answer(con, truth, "cert", 10**6)
    full = calibrate(con, "catalog", target_precision=0.95, apply=False)
    assert full.review == pytest.approx(min(_plain_review_cut(con), full.accept)) and full.review > lowest + 0.005
    assert not full.review_held
    # the queue table says which pairs were the sample and above what
    assert con.execute("SELECT count(*), min(certify_above), max(certify_above), min(score) >= 0.9 FROM "
                       "pm_review_queue WHERE queue = 'cert' AND reason = 'certify_sample'").fetchall()[0] == \
        (budget, 0.9, 0.9, True)
    con.close()
    out = _calibrate_cli(review_demo)
    assert f"certification sample: {budget} of {budget} sampled pairs above 0.9000 reviewed" in out
    assert "reaches 0.95" in out


def test_certify_arguments_are_checked(review_demo) -> None:
    con = _connect(review_demo)
    con.execute("CREATE TABLE empty AS SELECT * FROM matches WHERE false")
    assert con.execute("SELECT queued, certify_samples, certify_above FROM pm_queue_review('empty', queue := 'e', "
                       "certify := 0.9)").fetchall() == [(0, 0, None)]
    row = con.execute("SELECT certify_samples, certify_above FROM pm_queue_review('matches', certify := 0.9)"
                      ).fetchall()[0]
    assert row[0] > 0 and row[1] == pytest.approx(0.80)  # zero-shot: the accept threshold in force
    first = con.execute("SELECT reason, score >= 0.80 FROM pm_review_queue WHERE queue = 'default' AND position = 1"
                        ).fetchall()[0]
    assert first == ("certify_sample", True)
    for call, msg in (
            ("certify := 1.5", "target precision must be in"),
            ("certify := 'high'", "certify and certify_above must be numbers"),
            ("certify_above := 0.9", "need certify"),
            ("certify := 0.9, certify_size := 0", "certify_size must be at least 1"),
            ("certify := 0.9, certify_size := 2.5", "certify_size an integer")):
        with pytest.raises(duckdb.Error, match=msg):
            con.execute(f"SELECT * FROM pm_queue_review('matches', {call})").fetchall()
    con.close()
    from pmatch_duckdb.review.app import ReviewConfig, create_app

    page = create_app(ReviewConfig(review_demo.db, "default", (review_demo.images,), "ann")).test_client().get("/")
    assert page.status_code == 200 and "certification sample — a random top-scoring pair" in page.text


def test_the_default_certification_floor_and_when_there_is_none() -> None:
    import numpy as np

    from pmatch_duckdb.review.certify import default_floor

    s = np.array([1.0, 0.999, 0.99, 0.97, 0.9])
    assert default_floor(s, False, math.inf, 0.99) == 0.999  # the top two average 0.9995 >= 0.998; with 0.99: 0.9963
    assert default_floor(s, False, math.inf, 0.95) == 0.99  # goal 0.99: the top three average 0.9963, four 0.9898
    with pytest.raises(PmatchError, match="does not expect to reach 0.99 anywhere here"):
        default_floor(np.array([0.97]), False, math.inf, 0.99)
    assert default_floor(s, True, 0.80, 0.99) == 0.80  # zero-shot: the accept threshold in force
    with pytest.raises(PmatchError, match="give certify_above"):
        default_floor(s, True, math.inf, 0.99)


def test_calibrated_copies_share_their_scores_with_the_version_they_copy(tmp_path: Path) -> None:
    """``pmatch calibrate`` writes a copy of the version in force with new thresholds (manifest: ``parent`` and
    ``calibration``): verdicts given on any version of that line are on the same scores; a version trained anew starts
    its own line."""
    import json

    from pmatch_duckdb.matchers import matcher_dir, same_scores

    def version(v: str, **manifest: object) -> None:
        d = matcher_dir("m", tmp_path) / v
        d.mkdir(parents=True)
        (d / "manifest.json").write_text(json.dumps({"version": v, **manifest}))

    cal = {"kind": "pm_labels"}
    version("v1")
    version("v2", parent="v1", calibration=cal)
    version("v3", parent="v2")  # a parent without a calibration record: not a calibrated copy
    version("v4", parent="v3", calibration=cal)
    version("v5", parent="v2", calibration=cal)
    version("v6", parent="v6", calibration=cal)  # a loop ends where it started
    version("v7", parent="../v1", calibration=cal)  # not a version name
    (matcher_dir("m", tmp_path) / "v8").mkdir()  # no manifest
    assert same_scores("m", "v5", tmp_path) == same_scores("m", "v1", tmp_path) == ["v1", "v2", "v5"]
    assert same_scores("m", "v4", tmp_path) == ["v3", "v4"]
    assert same_scores("m", "v6", tmp_path) == ["v6"] and same_scores("m", "v7", tmp_path) == ["v7"]
    assert same_scores("m", "v8", tmp_path) == ["v8"]
