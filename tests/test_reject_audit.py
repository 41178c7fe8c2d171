"""The reject audit (``pm_queue_review(audit_rejects := N)``, review/audit.py) and how calibrate's review threshold
accounts for the matches the threshold in force already auto-rejects."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
from test_review import _answer, _calibrate_cli, _connect, _plain_review_cut, _synthetic_result

from pmatch_duckdb.errors import PmatchError
from pmatch_duckdb.review.audit import allocate, draw_rejects, strata_sizes
from pmatch_duckdb.review.calibrate import _pick, calibrate, weighted_cut
from pmatch_duckdb.review.labels import PairKey, pair_unit, record_verdict
from pmatch_duckdb.review.queue import ModelState, queue_review


def test_strata_grow_from_the_top_and_each_gets_the_same_share() -> None:
    assert strata_sizes(1600) == [100, 100, 200, 400, 800]
    assert sum(strata_sizes(7)) == 7 and sum(strata_sizes(0)) == 0
    assert allocate([100, 100, 200, 400, 800], 100) == [20] * 5
    # strata smaller than their share are taken whole and the rest goes to the others
    got = allocate([3, 3, 6, 12, 24], 40)
    assert sum(got) == 40 and got[:3] == [3, 3, 6] and all(g <= s for g, s in zip(got, [3, 3, 6, 12, 24], strict=True))
    assert allocate([3, 3, 6, 12, 24], 500) == [3, 3, 6, 12, 24]


def _result(rows: list[dict]) -> tuple[duckdb.DuckDBPyConnection, str]:
    """A match result of rejected pairs in an in-memory database, and the SELECT the queue draws its audit from."""
    from pmatch_duckdb.review.queue import _rows_sql

    con = duckdb.connect()
    con.execute("CREATE TABLE res (source_table VARCHAR, source_id VARCHAR, target_table VARCHAR, target_id VARCHAR, "
                "score DOUBLE, decision VARCHAR, rank INTEGER)")
    con.executemany("INSERT INTO res VALUES (?, ?, ?, ?, ?, 'reject', ?)",
                    [[r.get("st", "feed"), r["sid"], r.get("tt", "cat"), r["tid"], r["score"], r.get("rank")]
                     for r in rows])
    cols = {"source_table", "source_id", "target_table", "target_id", "score", "decision"}
    return con, _rows_sql("res", cols | ({"rank"} if any("rank" in r for r in rows) else set()), "decision = 'reject'")


def _rows(n: int) -> list[dict]:
    return [{"score": 0.5 - 0.4 * i / n, "sid": f"s{i}", "tid": f"t{i}"} for i in range(n)]


def test_the_draw_is_stratified_by_score_deterministic_and_in_random_order() -> None:
    """Drawn in DuckDB (only the drawn rows leave it): five score strata, the same number from each, within a stratum
    the pairs with the lowest SHA-256 units of the seed, then in the order of another seed's units."""
    con, sql = _result(_rows(1000))
    got = draw_rejects(con, sql, 50, 0, set())
    assert len(got) == 50 and {r["reason"] for r in got} == {"reject_sample"}
    by = {k: [r for r in got if r["stratum"] == k] for k in range(1, 6)}
    assert [len(v) for v in by.values()] == [10] * 5
    assert [v[0]["stratum_pairs"] for v in by.values()] == strata_sizes(1000)
    ranks = {f"s{i}": i for i in range(1000)}  # by score, highest first
    bounds = [0, *np.cumsum(strata_sizes(1000)).tolist()]
    for k, v in by.items():  # each stratum's draw: the pairs of its score range with the lowest units of seed 0
        members = [PairKey("feed", f"s{i}", "cat", f"t{i}") for i in range(bounds[k - 1], bounds[k])]
        assert {r["key"] for r in v} == set(sorted(members, key=lambda m: pair_unit(0, m))[:10])
    assert max(ranks[r["key"].source_id] for r in by[5]) > 900  # spread over the stratum, not its top
    assert [pair_unit(1, r["key"]) for r in got] == sorted(pair_unit(1, r["key"]) for r in got)  # in random order
    assert [r["stratum"] for r in got] != sorted(r["stratum"] for r in got)
    assert [r["key"] for r in draw_rejects(con, sql, 50, 0, set())] == [r["key"] for r in got]
    assert {r["key"] for r in draw_rejects(con, sql, 50, 7, set())} != {r["key"] for r in got}
    # the queue's row fields come along, ids as the result has them
    assert {"source_table", "source_id", "target_table", "target_id", "score", "decision", "_rank"} <= set(got[0])
    # pairs left out (labelled, or queued otherwise) are in no stratum
    out = {r["key"] for r in got[:5]}
    again = draw_rejects(con, sql, 1000, 0, out)
    assert len(again) == 995 and not out & {r["key"] for r in again}
    assert sum(r["stratum_pairs"] for r in again if r["key"] == again[0]["key"]) < 1000
    small, small_sql = _result(_rows(3))
    assert len(draw_rejects(small, small_sql, 10, 0, set())) == 3
    assert draw_rejects(con, sql, 0, 0, set()) == [] and draw_rejects(con, sql + " AND false", 5, 0, set()) == []
    # no scratch tables left behind
    assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE '_pm_audit%'").fetchall() == [(0,)]


def test_a_pair_listed_both_ways_is_one_pair() -> None:
    """Dedup results (one table on both sides) may list a pair in both orders: it is one pair of the population, keyed
    as pm_labels keys it (smaller id first), and a labelled pair is left out whichever order the result has it in."""
    rows = [{"st": "shop", "tt": "Shop", "sid": f"a{i}", "tid": f"b{i}", "score": 0.4} for i in range(20)]
    rows += [{"st": "shop", "tt": "Shop", "sid": f"b{i}", "tid": f"a{i}", "score": 0.3} for i in range(20)]
    con, sql = _result(rows)
    got = draw_rejects(con, sql, 100, 0, {PairKey.of("shop", "b3", "shop", "a3")})
    assert len(got) == 19 and sum(r["stratum_pairs"] for r in got) / 19 < 20
    assert {r["key"] for r in got} == {PairKey("shop", f"a{i}", "shop", f"b{i}") for i in range(20) if i != 3}
    assert {r["score"] for r in got} == {0.4}  # the listing with the higher score


def test_with_ranks_the_strata_follow_them() -> None:
    """A rejected rank-1 candidate (the source's best) is the likeliest missed match: its own stratum, then ranks 2-3,
    then the other rejects by score (quarter, quarter, half); a stratum smaller than its share is taken whole."""
    rows = [{"score": 0.5 - 0.001 * i, "rank": 1 + i % 10, "sid": f"s{i}", "tid": f"t{i}"} for i in range(400)]
    con, sql = _result(rows)
    got = draw_rejects(con, sql, 400, 0, set())
    strata = {k: [r for r in got if r["stratum"] == k] for k in range(1, 6)}
    assert [len(x) for x in strata.values()] == [40, 80, 70, 70, 140]
    assert {r["_rank"] for r in strata[1]} == {1} and {r["_rank"] for r in strata[2]} == {2, 3}
    assert min(r["score"] for r in strata[3]) > max(r["score"] for r in strata[4]) > max(r["score"] for r in strata[5])
    got = draw_rejects(con, sql, 250, 0, set())
    per = [sum(r["stratum"] == k for r in got) for k in range(1, 6)]
    assert per[0] == 40 and sum(per) == 250 and max(per[1:]) - min(per[1:]) <= 1
    assert {r["stratum_pairs"] for r in got if r["stratum"] == 1} == {40}


def test_weighted_cut() -> None:
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    y = np.array([1, 1, 1, 1, 1.0])
    assert weighted_cut(s, y, np.ones(5), 0.2) == 0.6  # one of five may go
    assert weighted_cut(s, y, np.array([1, 1, 1, 1, 10.0]), 0.2) == 0.5  # the lowest stands for ten
    assert weighted_cut(s, np.zeros(5), np.ones(5), 0.2) is None


def test_the_review_threshold_rises_only_by_what_is_left_of_the_recall_budget() -> None:
    """Without an audit: a trained matcher's recorded share below its review threshold (training's validation pairs)
    is spent first; the band's matches may lose only what is left."""
    s = np.linspace(0.5, 1.0, 101)
    y = np.ones(101)
    every = np.ones(101, dtype=bool)

    def state(loss: float | None) -> ModelState:
        return ModelState("m/v1", 0.5, float("inf"), recall_loss=loss, recall_loss_from="training's validation pairs")

    fresh = _pick(s, y, 0.99, 0.02, every, state(0.0))
    assert fresh.review == pytest.approx(0.51) and fresh.recall_loss == pytest.approx(2 / 101)  # 0.50, 0.505
    half = _pick(s, y, 0.99, 0.02, every, state(0.01))  # 1 - 0.98 / 0.99 of the band's matches: one of 101
    assert half.review == pytest.approx(0.505) and 0.01 < half.recall_loss <= 0.02
    spent = _pick(s, y, 0.99, 0.02, every, state(0.02))
    assert spent.review == 0.5 and spent.kept.startswith("2.0% of the matches are auto-rejected already")
    unknown = _pick(s, y, 0.99, 0.02, every, state(None))
    assert unknown.review == 0.5 and "never measured" in unknown.kept and unknown.recall_loss is None

    # where the share's upper bound is recorded, the band spends only what the bound leaves (as with an audit)
    def bounded(loss: float, upper: float) -> ModelState:
        return ModelState("m/v1", 0.5, float("inf"), recall_loss=loss, recall_loss_upper=upper,
                          recall_loss_from="training's validation pairs")

    low = _pick(s, y, 0.99, 0.02, every, bounded(0.002, 0.01))  # the bound leaves one of 101, as 1 % did above
    assert low.review == pytest.approx(0.505) and low.recall_loss_upper == pytest.approx(0.01 + 0.99 / 101)
    wide = _pick(s, y, 0.99, 0.02, every, bounded(0.002, 0.015))  # the point leaves 1.8 %, the bound under one match
    assert wide.review == 0.5 and wide.kept is None
    over = _pick(s, y, 0.99, 0.02, every, bounded(0.012, 0.03))
    assert over.review == 0.5 and over.kept == ("1.2% of the matches are auto-rejected already (training's "
                                                "validation pairs; 95 % upper bound 3.0%), against max_recall_loss "
                                                "2.0%")


def test_a_reject_audit_measures_what_the_review_threshold_already_rejects(review_demo) -> None:
    """The generated result: 714 pairs below the zero-shot review threshold 0.55, a quarter of its matches among
    them. An audit of 100 estimates them, and calibrate lowers the review threshold to where 2 % of all matches are
    lost, which the same reviews counted once each (the plain cut) would not."""
    con = _connect(review_demo)
    truth = _synthetic_result(con)
    scores = dict(((st, si, tt, ti), s) for st, si, tt, ti, s in con.execute(
        "SELECT source_table, source_id, target_table, target_id, score FROM big").fetchall())
    rejected = [k for k, s in scores.items() if s < 0.55]
    # a labelled reject is never drawn
    record_verdict(con, PairKey(*rejected[-1]), "match", score=scores[rejected[-1]], decision="reject")
    st = queue_review(con, "big", "audit", accept_sample=0, audit_rejects=100)
    assert st.reject_samples == 100 and st.queued == st.boundary + 100
    q = con.execute("SELECT position, decision, stratum, stratum_pairs, source_id FROM pm_review_queue WHERE queue = "
                    "'audit' AND reason = 'reject_sample' ORDER BY position").fetchall()
    assert {r[1] for r in q} == {"reject"} and rejected[-1][1] not in {r[4] for r in q}
    assert sorted({(r[2], r[3]) for r in q}) == list(zip(range(1, 6), strata_sizes(len(rejected) - 1), strict=True))
    assert q[0][0] < 30 and q[-1][0] > st.queued - 30  # spread through the queue
    # a few answered: some strata have none yet, so no estimate, and the threshold stays
    _answer(con, truth, "audit", 40)
    early = calibrate(con, "catalog", target_precision=0.95, apply=False)
    assert early.reject_audit["estimate"] is None and early.review == early.old_review and early.review_kept
    _answer(con, truth, "audit", 10**6)
    cal = calibrate(con, "catalog", target_precision=0.95, apply=False)
    a = cal.reject_audit
    # a sampled pair answered again in another queue still answers the audit's entry: it keeps its stratum's weight
    st_, si, tt, ti, k, sc = con.execute("SELECT source_table, source_id, target_table, target_id, stratum, score FROM "
                                         "pm_review_queue WHERE queue = 'audit' AND reason = 'reject_sample' AND "
                                         "stratum = 5 LIMIT 1").fetchall()[0]
    record_verdict(con, PairKey(st_, si, tt, ti), "match" if truth[(st_, si, tt, ti)] else "no_match", score=sc,
                   queue="elsewhere", matcher="zero-shot")
    from pmatch_duckdb.review.audit import audit_weights

    aw = audit_weights(con, "audit", [(st_, si, tt, ti), rejected[-1]])
    assert aw.w[0] == pytest.approx(aw.strata[5].weight) and aw.strata[5].weight > 10 and aw.stratum.tolist() == [5, 0] and aw.w[1] == 1
    again = calibrate(con, "catalog", target_precision=0.95, apply=False)
    assert again.review == cal.review and again.reject_audit == a
    true_below = sum(truth[k] for k in rejected[:-1])
    assert a["answered"] == 100 and 0.7 * true_below < a["estimate"] < 1.3 * true_below <= 1.3 * a["upper"]
    assert a["upper"] >= true_below
    matches = sum(truth.values())

    def lost(t: float) -> float:
        return sum(truth[k] for k, s in scores.items() if s < t) / matches

    assert lost(0.55) > 0.15  # what the zero-shot threshold in force loses
    assert 0.44 < cal.review < 0.52 and cal.recall_loss_from == "the reject audit"
    assert cal.recall_loss == pytest.approx(0.02, abs=0.005) and lost(cal.review) < 0.05
    assert _plain_review_cut(con) > cal.review + 0.02  # the audit's matches counted once each
    con.close()
    out = _calibrate_cli(review_demo)
    assert "reject audit (queue 'audit'): 100 of 100 sampled pairs answered, from 713 auto-rejected" in out
    assert "review >= 0.4" in out and "(max 2.0%; from the reject audit)" in out, out
    # an audit lowers the review threshold even where no accept threshold is certified (it only sends more pairs to
    # review): at 0.99 nothing is, and the lowered review threshold is written alone
    out = _calibrate_cli(review_demo, "--matches", "big")
    assert "no accept threshold certifies precision >= 0.99" in out, out
    assert "accept stays 0.8000" in out and "lowered, the reject audit found more matches" in out
    assert "written to index catalog (zero-shot thresholds)" in out, out
    con = _connect(review_demo)
    from pmatch_duckdb.api import context_of
    from pmatch_duckdb.review.queue import model_state

    now = model_state(context_of(con), "catalog")
    assert (now.accept_threshold, now.recall_loss_from) == (0.8, "an earlier calibration (the reject audit)")
    assert 0.44 < now.review_threshold < 0.52 and now.recall_loss_upper > now.recall_loss
    band = con.execute("SELECT count(*) FROM big WHERE score::DOUBLE >= ? AND score < 0.8",
                       [now.review_threshold]).fetchall()
    assert f"{band[0][0]} with the new thresholds" in out, out
    # the audit sampled what 0.55 rejected: under the lowered threshold it measures another set, so it is not used
    # again; the loss recorded with the threshold is (its upper bound leaves nothing, so the threshold stays)
    again = calibrate(con, "catalog", target_precision=0.95, apply=False)
    assert "sampled the pairs below review threshold 0.5500, and the threshold in force is" in again.reject_audit_stale
    assert again.review == now.review_threshold and again.recall_loss_from.startswith("an earlier calibration")
    assert again.review_kept.startswith(f"{now.recall_loss:.1%} of the matches are auto-rejected already")
    con.close()
    out = _calibrate_cli(review_demo)
    assert "  not used: the latest reject audit (queue 'audit') sampled" in out, out
    con = _connect(review_demo)
    # and a new audit needs a result decided by the thresholds in force: 'big' was decided by 0.55
    with pytest.raises(PmatchError, match=r"audit_rejects: \d+ unlabelled pairs of the result were decided by another "
                                          r"review threshold than the one in force \(0\.4"):
        queue_review(con, "big", "audit2", accept_sample=0, audit_rejects=50)
    assert queue_review(con, "big", "plain2", accept_sample=0).reject_samples == 0  # without an audit, as before
    con.execute("CREATE TABLE big2 AS SELECT * REPLACE (CASE WHEN score::DOUBLE >= 0.8 THEN 'accept' WHEN "
                "score::DOUBLE >= ? THEN 'review' ELSE 'reject' END AS decision) FROM big", [now.review_threshold])
    assert queue_review(con, "big2", "audit2", accept_sample=0, audit_rejects=50).reject_samples == 50
    fresh = calibrate(con, "catalog", target_precision=0.95, apply=False)
    assert fresh.reject_audit["queue"] == "audit2" and fresh.reject_audit_stale is None
    con.close()


def test_audit_rejects_arguments(review_demo) -> None:
    con = _connect(review_demo)
    _synthetic_result(con)
    row = con.execute("SELECT reject_samples, queued - boundary FROM pm_queue_review('big', accept_sample := 0, "
                      "audit_rejects := 25)").fetchall()[0]
    assert row == (25, 25)
    for bad in ("-1", "2.5", "'x'"):
        with pytest.raises(duckdb.Error, match="audit_rejects must be a whole number"):
            con.execute(f"SELECT * FROM pm_queue_review('big', audit_rejects := {bad})")
    # NULL: no audit (as the other optional arguments), and the queue is written
    row = con.execute("SELECT queue, reject_samples, queued FROM pm_queue_review('big', queue := 'n', "
                      "accept_sample := 0, audit_rejects := NULL)").fetchall()[0]
    assert row[:2] == ("n", 0) and row[2] == con.execute("SELECT count(*) FROM pm_review_queue WHERE queue = 'n'"
                                                         ).fetchall()[0][0] > 0
    con.close()


def test_with_an_audit_the_review_threshold_falls_rises_or_stays_by_its_estimate_and_bound() -> None:
    """1,000 band pairs (all matches) above the old threshold 0.55; 100 of 1,000 rejected pairs audited (each stands
    for 10). No match among them: even the upper bound leaves room, so the band gives up what is left; one: the
    estimate (1 %) is within 2 % but the bound (2.8 %) is not, so it stays; five (about 5 %): it falls among them,
    as far as the budget needs."""
    from pmatch_duckdb.review.audit import AuditWeights, Stratum

    band = np.linspace(0.55, 1.0, 1000)
    rej = np.linspace(0.50, 0.30, 100)
    s = np.r_[band, rej]
    state = ModelState("zero-shot", 0.55, 0.9)
    every = np.ones(len(s), dtype=bool)

    def picked(m: int):  # noqa: ANN202
        y = np.r_[np.ones(1000), (np.arange(100) < m).astype(float)]  # the audit's matches score highest
        aw = AuditWeights(np.r_[np.ones(1000), np.full(100, 10.0)], np.r_[np.zeros(1000), np.ones(100)].astype(int),
                          {1: Stratum(1, 1000, 100, 100, m)})
        return _pick(s, y, 0.9999, 0.02, every, state, None, aw)  # (a target no accept threshold reaches)

    none = picked(0)
    assert none.review > 0.55 and none.kept is None and none.recall_loss_from == "the reject audit"
    assert none.recall_loss < none.recall_loss_upper <= 0.02 + 1e-9
    one = picked(1)
    assert one.review == 0.55 and "cannot rule out 2.8%" in one.kept and one.recall_loss == pytest.approx(10 / 1010)
    five = picked(5)
    # lowered among the five (each spread over the scores around it by the fit), to where about 2 % are left below
    assert rej[10] < five.review < rej[2] and five.kept is None
    assert 0.01 < five.recall_loss <= 0.02 + 1e-9 and five.recall_loss_upper > five.recall_loss


def test_the_recall_loss_a_model_records() -> None:
    """Training records the share of its validation matches below the review threshold; calibrate's record wins
    over it; bundles from before count training's bound; zero-shot defaults record nothing."""
    from pmatch_duckdb.decision import choose_thresholds, wilson_lower
    from pmatch_duckdb.review.queue import recorded_recall_loss

    s = np.linspace(0, 1, 200)
    y = (s > 0.3).astype(float)
    _, review, info = choose_thresholds(s, y, 0.99, 0.02)
    assert info["review_recall_loss"] == pytest.approx(y[s < review].sum() / y.sum()) and 0 < \
        info["review_recall_loss"] <= 0.02
    lost, pos = y[s < review].sum(), y.sum()
    assert info["review_recall_loss_upper"] == pytest.approx(1 - wilson_lower(np.array([pos - lost]),
                                                                              np.array([pos]))[0])
    assert info["review_recall_loss"] < info["review_recall_loss_upper"] < 0.06
    assert recorded_recall_loss(info) == {"recall_loss": info["review_recall_loss"],
                                          "recall_loss_from": "training's validation pairs",
                                          "recall_loss_upper": info["review_recall_loss_upper"]}
    # a bundle trained before the bound was recorded: derived from the validation matches it counted
    old = {k: v for k, v in info.items() if k != "review_recall_loss_upper"}
    assert recorded_recall_loss(old)["recall_loss_upper"] == pytest.approx(info["review_recall_loss_upper"])
    assert recorded_recall_loss({"review_recall_loss": 0.01}) == {"recall_loss": 0.01,
                                                                  "recall_loss_from": "training's validation pairs"}
    assert recorded_recall_loss({"max_recall_loss": 0.02})["recall_loss"] == 0.02
    cal = {"recall_loss": 0.011, "recall_loss_from": "the reject audit", "recall_loss_upper": 0.019,
           "pair_scorer": {"recall_loss": 0.004}}
    assert recorded_recall_loss({**info, "calibration": cal}) == {"recall_loss": 0.011,
                                                                  "recall_loss_from": "an earlier calibration (the "
                                                                                      "reject audit)",
                                                                  "recall_loss_upper": 0.019}
    assert recorded_recall_loss({"calibration": cal}, "pair_scorer") == {"recall_loss": 0.004,
                                                                         "recall_loss_from": "an earlier calibration"}
    assert recorded_recall_loss({"calibration": None}) == {} and recorded_recall_loss({}) == {}
