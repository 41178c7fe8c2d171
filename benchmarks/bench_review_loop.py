"""The human loop on real data: review N queued pairs, ``pmatch calibrate``, and what auto-accept gains on sources
nobody reviewed.

On a database that ``bench_quality.py`` left for a full-table part (``--workdir W``: the test split's sources as a
view, the target table, ``gt_test``), for each matcher version asked for:

1. the test sources are split by a hash of their id into a reviewed half (A) and a held-out half (B) — or, with
   ``--review-source T``, A is table T (e.g. the train split's sources, to review more pairs than half the test
   split holds; their stage-1 scores are then in-sample, which can only make the thresholds too permissive, and
   that shows in B) and B is every test source;
2. ``match_products`` over A, ``pm_queue_review`` (the queue a reviewer works through), and the first ``--review``
   queued pairs get the verdict the ground truth gives (a reviewer who is always right), recorded with
   ``record_verdict`` as the review page does;
3. ``calibrate`` (what ``pmatch calibrate`` runs) picks thresholds from those verdicts and activates a new
   matcher version if one is certified — or, with ``--retrain``, ``train_matcher(pairs="pm_labels")`` (what
   ``pmatch train --pairs pm_labels`` runs, with its defaults) trains a new matcher on them;
4. ``match_products`` over B before and after: accept precision / recall, the review band, and the recall of
   accept-or-review (what is not auto-rejected);
5. with ``--recheck-with NAME@vN``: the user moves to another matcher (retrained, or with a pair scorer) and queues
   A again: how many of the reviewed pairs ``pm_queue_review`` asks about again (``recheck``), against the count
   the rule before 2026-12-05 gave (any score moved by ``recheck_delta``, in either direction and across scales),
   and how many of those the new model scores further from the verdict than the score the reviewer saw. With a
   reviewer who is always right every recheck is work for nothing; a recheck earns its place where a person may
   have erred and the model now says so.

With ``--round2 N`` (without ``--retrain``) a second round follows the first calibration: the reviewed sources
matched again by the version calibrate activated, queued, ``N`` more reviewed, and calibrated again, by the rule in
force (both rounds' verdicts count: calibrate's copies share the scores of the version they copy) and, in a rolled
back dry run, by the rule before 2026-12-06 (round 2's verdicts only); the held-out sources judged at both.

With ``--certify P`` each matcher runs twice on the same review budget: the plain queue, then the queue with a
certification sample first (``pm_queue_review(certify := P)``), each calibrated at ``--target-precision``.

With ``--audit-rejects N`` each matcher runs twice: the plain queue, then the queue with a reject audit of ``N``
auto-rejected pairs (``pm_queue_review(audit_rejects := N)``); the head line says what calibrate estimated the review
threshold auto-rejects, against the ground truth's count on the reviewed sources' result.

Each matcher runs on a scratch copy of the database and its index folder, with its version linked into a scratch
pmatch home (as in ``bench_pair_cost.py``): nothing of the user's changes.

Usage::

    python benchmarks/bench_review_loop.py --db W/abt-buy-full.duckdb --matcher NAME@v1,NAME@v2 \
        --source abt_test --target buy_all --review 200 [--recheck-with NAME@v2] [--certify 0.99]
    python benchmarks/bench_review_loop.py --db W/abt-buy-full.duckdb --matcher zero-shot --review 1000 \
        --accept-sample 1.0 --review-source abt_train --retrain [--pair-kind siamese]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pair_cost import scratch_db, scratch_home  # noqa: E402
from bench_quality import retrieval_metrics, sql_match  # noqa: E402
from bench_top_m import split_truth  # noqa: E402

import pmatch_duckdb as pm  # noqa: E402
from pmatch_duckdb.api import context_of  # noqa: E402
from pmatch_duckdb.matchers import activate, active_version  # noqa: E402
from pmatch_duckdb.review.calibrate import CalibrationError, calibrate  # noqa: E402
from pmatch_duckdb.review.labels import PairKey, current_verdicts, record_verdict  # noqa: E402


def _line(label: str, m: dict) -> str:
    ap, ar = m.get("accept_precision", float("nan")), m.get("accept_recall", 0.0)
    return (f"| {label} | {ap:.3f} / {ar:.3f} | {m.get('review_band')} | "
            f"{m.get('accept_or_review_recall', 0.0):.3f} | {m['recall@1']:.3f} |")


def rechecks(con, name: str, version: str, home: Path, source: str, target: str,  # noqa: ANN001
             delta: float) -> str:
    """Step 5 of the module docstring: ``source`` matched again with matcher ``name@version`` and queued; a line
    with the recheck counts of the current rule and of the one before it."""
    activate(name, version, home)
    pm.install(con, dataclasses.replace(context_of(con).settings, matcher=name))
    sql_match(con, source, target)  # -> m_<source>, scored by the new matcher
    n_new, skipped = con.execute(f"SELECT rechecks, skipped_labelled FROM pm_queue_review('m_{source}', "
                                 f"queue := 'again', accept_sample := 0, recheck_delta := {delta})").fetchone()
    verdicts = current_verdicts(con)
    old = away = n_labelled = 0
    for st, si, tt, ti, score in con.execute(f"SELECT source_table, CAST(source_id AS VARCHAR), target_table, "
                                             f"CAST(target_id AS VARCHAR), score FROM m_{source}").fetchall():
        v = verdicts.get(PairKey.of(st, si, tt, ti))
        if v is None or v.score is None or score is None:
            continue
        n_labelled += 1
        if abs(score - v.score) >= delta:  # the rule before: any move of delta, either way, across scales
            old += 1
            away += (score < v.score) if v.verdict == "match" else (score > v.score)
    return (f"recheck after moving to {name}@{version}: {n_labelled} reviewed pairs in the new result; "
            f"rechecks {n_new} (the rule before: {old}, of which {away} moved away from the verdict and "
            f"{old - away} towards it); not asked again {skipped}")


def queue_cost(con, matches: str, rounds: int) -> str:  # noqa: ANN001
    """Wall seconds of ``pm_queue_review`` on ``matches`` as saved (with ``scored_by``) and on a copy without that
    column (a result saved before it existed: with a pair scorer the queue then scores the result again by stage 1
    to find the pairs it re-read), interleaved rounds after one warm-up of each; a line with the best of each."""
    con.execute(f"CREATE OR REPLACE TABLE {matches}_old AS SELECT * EXCLUDE (scored_by) FROM {matches}")
    best = {"with": float("inf"), "without": float("inf")}
    for r in range(rounds + 1):
        for kind, table in (("with", matches), ("without", f"{matches}_old")):
            t0 = time.perf_counter()
            con.execute(f"SELECT * FROM pm_queue_review('{table}', queue := 'cost_{kind}')").fetchall()
            if r:
                best[kind] = min(best[kind], time.perf_counter() - t0)
    con.execute("DELETE FROM pm_review_queue WHERE queue IN ('cost_with', 'cost_without')")
    con.execute(f"DROP TABLE {matches}_old")
    return (f"pm_queue_review on {matches}: {best['with']:.2f} s with scored_by, {best['without']:.2f} s without "
            f"(best of {rounds}; ratio without / with {best['without'] / best['with']:.1f})")


def run_one(db: Path, home: Path, ref: str, source: str, target: str, n_review: int, target_precision: float,
            seed: int, accept_sample: float, work: Path, review_source: str | None = None,
            recheck_with: str | None = None, recheck_delta: float = 0.3, queue_rounds: int = 0,
            retrain: bool = False, round2: int = 0, certify: float | None = None,
            certify_above: float | None = None, audit_rejects: int = 0, pair_kind: str | None = None,
            answer: str = "pairs") -> list[str]:
    """One matcher version through the loop on a scratch copy of ``db``; returns table lines. ``certify``: the
    queue puts a certification sample first (``pm_queue_review(certify := ...)``). ``pair_kind``: the pair kind
    ``--retrain`` asks for (default: ``pmatch train``'s). ``answer``: how the reviewer answers (``pairs``: match /
    no match on each entry; ``picks``: with picks; ``one-match``: with picks and "none of these" on a ``one_match`` queue)."""
    copy = scratch_db(db, work)
    if ref == "zero-shot":  # no trained matcher: the target index's zero-shot fusion and thresholds
        other = scratch_home(home, [recheck_with] if recheck_with else [], work / "home")
        name = "none"  # a matcher name with no versions in the scratch home
    else:
        (_, name, version), *other = scratch_home(home, [ref, *([recheck_with] if recheck_with else [])],
                                                  work / "home")
        activate(name, version, work / "home")
    con = pm.connect(copy, home=work / "home", matcher=name)
    try:
        truth = split_truth(con, source)
        if review_source:  # A: another table (its truth from all ground-truth pairs), B: every test source
            truth_b = truth
            truth = {**split_truth(con, review_source, "gt_train"), **truth}
            con.execute(f"CREATE OR REPLACE VIEW src_a AS SELECT * FROM {review_source}")
            con.execute(f"CREATE OR REPLACE VIEW src_b AS SELECT * FROM {source}")
        else:
            truth_b = _split_views(con, source, truth, f"{seed}:", ("src_a", "src_b"))
        before, _ = sql_match(con, "src_b", target)
        m_before = retrieval_metrics(before, truth_b)
        sql_match(con, "src_a", target)  # -> table m_src_a
        cost = queue_cost(con, "m_src_a", queue_rounds) if queue_rounds else None
        cert = "" if certify is None or retrain else f", certify := {certify}" + (
            "" if certify_above is None else f", certify_above := {certify_above}")
        cert += f", audit_rejects := {audit_rejects}" if audit_rejects else ""
        one = answer.startswith("one-match")
        cert += ", one_match := true" if one else ""
        queued, n_cert, floor = con.execute(
            f"SELECT queued, certify_samples, certify_above FROM pm_queue_review('m_src_a', accept_sample := "
            f"{accept_sample}, seed := {seed}{cert})").fetchone()
        if answer == "one-match-no-conflict-pages":  # the one-match queue as it was before those pages existed
            queued -= len(con.execute("DELETE FROM pm_review_queue WHERE queue = 'default' AND reason = "
                                      "'accept_conflict' RETURNING position").fetchall())
        rows = (_review(con, truth, "default", n_review) if answer == "pairs"
                else _review_picking(con, truth, "default", n_review, none_of_these=one))
        n_verdicts, n_match = _labelled(con, truth)
        if answer != "pairs":
            print(f"# {answer}: {len(rows)} pages gave {n_verdicts} verdicts, {n_match} of them true matches",
                  flush=True)
        if retrain:
            return _retrained(con, ref, target, truth, truth_b, m_before, rows, n_match, queued, target_precision,
                              round2, accept_sample, seed, certify, certify_above, pair_kind, answer, n_verdicts)
        try:
            cal = calibrate(con, target, target_precision)
            if cal.certify is not None:
                c = cal.certify
                note_c = (f"certification sample {n_cert} pairs >= {floor:.4f}, {c['reviewed']} reviewed "
                          f"({c['matches']} matches, lower bound "
                          f"{'-' if c['lower_bound'] is None else round(c['lower_bound'], 3)}); ")
            else:
                note_c = ""
            note = note_c + (f"stage 1 accept {cal.accept if cal.accept is None else round(cal.accept, 4)} "
                    f"(lower bound {cal.accept_lower_bound if cal.accept_lower_bound is None else round(cal.accept_lower_bound, 3)})")
            if cal.pair is not None:
                pa = cal.pair
                note += (f"; stacked accept {pa['accept'] if pa['accept'] is None else round(pa['accept'], 4)} "
                         f"(lower bound {pa['accept_lower_bound'] if pa['accept_lower_bound'] is None else round(pa['accept_lower_bound'], 3)})")
            note += f"; {cal.applied or 'nothing written'}"
            note += "; " + _loss_note(con, cal, truth)
        except CalibrationError as e:
            note = f"calibrate: {e}"
        pm.install(con, dataclasses.replace(context_of(con).settings))  # the version calibrate activated
        after, _ = sql_match(con, "src_b", target)
        m_after = retrieval_metrics(after, truth_b)
        more = _calibrate_round2(con, target, truth, truth_b, round2, accept_sample, seed, target_precision, name,
                                 work / "home") if round2 else []
        arm = "" if certify is None else f" [certify {certify}]"
        arm += f" [audit {audit_rejects}]" if audit_rejects else ""
        head = (f"# {ref}{arm}: {len(truth) - len(truth_b)} reviewed sources, {len(truth_b)} held out; queue {queued} "
                f"pairs, the first {len(rows)} reviewed ({n_match} matches{_how(answer, n_verdicts)}); {note}; active now "
                f"{active_version(name, work / 'home')}")
        if cost:
            head += "\n# " + cost
        if other:
            (_, name2, version2), = other
            head += "\n# " + rechecks(con, name2, version2, work / "home", "src_a", target, recheck_delta)
        if more:
            head += "\n" + more[0]
        return [head, _line(f"{ref}, held out, before", m_before), _line(f"{ref}{arm}, held out, after", m_after),
                *more[1:]]
    finally:
        con.close()


def _calibrate_round2(con, target: str, truth: dict, truth_b: dict, n: int, accept_sample: float,  # noqa: ANN001
                      seed: int, target_precision: float, name: str, home: Path) -> list[str]:
    """``--round2 N`` without ``--retrain``: a second review round after the first calibration. The reviewed
    sources matched again by the version now active (a calibrated copy where calibrate wrote one), queued
    (``round2``; pairs answered in round 1 are not asked again), ``n`` of it reviewed, and calibrated again: by the
    rule in force (the verdicts of both rounds count, calibrate's copies sharing their scores) and, in a dry run on
    the same database with round 1 taken out in a transaction that is rolled back, by the rule before 2026-12-06
    (only the verdicts given on the active version's own scores). The held-out sources' result (the same scores for
    every version of the line) matched by stage 1 alone (``pair_top_m`` 0: one scale) and judged at each rule's
    stage-1 thresholds. Returns a head line and two table lines."""
    from pmatch_duckdb.fusion import decide_by_thresholds

    v_round2 = active_version(name, home)
    sql_match(con, "src_a", target)  # -> m_src_a, scored by the version in force
    queued2 = con.execute(f"SELECT queued FROM pm_queue_review('m_src_a', queue := 'round2', accept_sample := "
                          f"{accept_sample}, seed := {seed})").fetchone()[0]
    rows2 = _review(con, truth, "round2", n)
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM pm_labels WHERE queue = 'default'")
        con.execute("DELETE FROM pm_review_queue WHERE queue = 'default'")
        try:
            old = calibrate(con, target, target_precision, apply=False)
        except CalibrationError as e:
            old = e
    finally:
        con.execute("ROLLBACK")
    try:
        new = calibrate(con, target, target_precision)
    except CalibrationError as e:
        new = e
    # the version calibrate activated, stage 1 alone: each rule's stage-1 thresholds judged on stage 1's scores
    pm.install(con, dataclasses.replace(context_of(con).settings, pair_top_m=0))
    held, _ = sql_match(con, "src_b", target)
    pm.install(con, dataclasses.replace(context_of(con).settings, pair_top_m=None))

    def judged(cal) -> dict:  # noqa: ANN001
        """The held-out result at the thresholds ``cal`` leaves in force (where it certifies nothing: the old ones)."""
        acc = cal.accept if cal.accept is not None else (float("inf") if cal.old_accept is None else cal.old_accept)
        rev = cal.review if cal.accept is not None else cal.old_review
        return retrieval_metrics({s: [(t, sc, d) for (t, sc, _), d in zip(lst, decide_by_thresholds(
            [sc for _, sc, _ in lst], acc, rev), strict=True)] for s, lst in held.items()}, truth_b)

    def said(cal) -> str:  # noqa: ANN001
        if isinstance(cal, CalibrationError):
            return f"calibrate: {cal}"
        acc = "none" if cal.accept is None else f"{cal.accept:.4f}"
        lb = "-" if cal.accept_lower_bound is None else f"{cal.accept_lower_bound:.3f}"
        out = (f"{cal.reviewed} reviewed pairs counted ({cal.matches} matches; {cal.ignored_other_model} left out as "
               f"another model's): stage 1 accept {acc} (lower bound {lb}), review {cal.review:.4f}")
        if cal.pair is not None:
            pa = cal.pair
            out += (f"; stacked accept {'none' if pa['accept'] is None else round(pa['accept'], 4)}, review "
                    f"{pa['review']:.4f}")
        return out

    head = (f"# round 2 on {v_round2}: queue {queued2} pairs, the first {len(rows2)} reviewed "
            f"({sum(ti in truth.get(si, ()) for _, si, _, ti, *_ in rows2)} matches). Calibrated by the rule in force: "
            f"{said(new)}; active now {active_version(name, home)}. By the rule before (round 2's verdicts only): "
            f"{said(old)}")
    lines = [head]
    for label, cal in (("both rounds' verdicts (rule in force)", new), ("round 2's verdicts only (rule before)", old)):
        if not isinstance(cal, CalibrationError):
            lines.append(_line(f"… round 2 calibrated on {label}: stage 1 alone at its thresholds, held out",
                               judged(cal)))
    return lines


def _split_views(con, source: str, truth: dict, salt: str, names: tuple[str, str]) -> dict:  # noqa: ANN001
    """Views ``names`` over ``source``: its sources in ``truth`` split in two by a hash of ``salt`` and the id; the
    second half's truth."""
    half = {s: zlib.crc32(f"{salt}{s}".encode()) % 2 for s in truth}
    for name, h in zip(names, (0, 1), strict=True):
        ids = ", ".join("'" + s.replace("'", "''") + "'" for s in truth if half[s] == h)
        con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM {source} WHERE CAST(id AS VARCHAR) IN ({ids})")
    return {s: v for s, v in truth.items() if half[s] == 1}


def _retrained(con, ref: str, target: str, truth: dict, truth_b: dict, m_before: dict, rows: list,  # noqa: ANN001
               n_match: int, queued: int, target_precision: float, round2: int, accept_sample: float,
               seed: int, certify: float | None = None, certify_above: float | None = None,
               pair_kind: str | None = None, answer: str = "pairs", n_verdicts: int = 0) -> list[str]:
    """Step 3 with ``--retrain``: instead of calibrating, ``pmatch train --pairs pm_labels`` (the defaults; the
    reviewed sources' offers and the target) and the held-out sources matched by the new matcher; with ``round2``,
    the reviewed sources queued again by it, that many of the queue reviewed, ``calibrate``, and the held-out
    sources matched again; table lines. With ``certify`` round 2 is a new batch instead: the held-out sources queued
    with a certification sample first, ``round2`` of it reviewed, calibrated, and the held-out sources matched again
    (their accept band's precision reported on all of it and on the pairs nobody reviewed)."""
    from pmatch_duckdb.training import train_matcher

    lines: list[str] = []
    t0 = time.perf_counter()
    from pmatch_duckdb.training.pair_model import PairOptions

    popts = PairOptions.from_recipe(train={"kind": pair_kind}) if pair_kind else None
    res = train_matcher(con, ["src_a", target], pairs="pm_labels", name="verdicts", target_precision=target_precision,
                        pair_options=popts, progress=False, log=lines.append)
    secs = time.perf_counter() - t0
    pm.install(con, dataclasses.replace(context_of(con).settings, matcher="verdicts"))
    pm.index(con, target, progress=False)  # re-projected for the new matcher
    after, _ = sql_match(con, "src_b", target)
    m_after = retrieval_metrics(after, truth_b)
    said = [ln for ln in lines if ln.startswith(("validation:", "decision model", "no score threshold", "pair model"))]
    head = (f"# {ref}: {len(truth) - len(truth_b)} reviewed sources, {len(truth_b)} held out; queue {queued} pairs, "
            f"the first {len(rows)} reviewed ({n_match} matches{_how(answer, n_verdicts)}); retrained on them as "
            f"'verdicts' {res.version} in "
            f"{secs:.0f} s (valid_split {json.loads((res.path / 'manifest.json').read_text())['training']['valid_split']}): "
            + " | ".join(said))
    out = [head, _line(f"{ref}, held out, before", m_before),
           _line(f"trained on the {len(rows)} verdicts, held out" if answer == "pairs" else
                 f"trained on {len(rows)} pages ({answer}: {n_verdicts} verdicts), held out", m_after)]
    if round2:  # the reviewed sources queued again by the new matcher (or, certify, half the held-out ones), reviewed
        part, held, truth_h = "src_a", "src_b", truth_b
        if certify is not None:  # a new batch: B1 queued with the sample and reviewed, B2 (nobody reviews) measured
            part, held = "src_b1", "src_b2"
            truth_h = _split_views(con, "src_b", truth_b, f"b{seed}:", ("src_b1", "src_b2"))
            m_trained_h = retrieval_metrics(sql_match(con, held, target)[0], truth_h)
        sql_match(con, part, target)  # -> m_<part>, scored by 'verdicts'
        cert = "" if certify is None else f", certify := {certify}" + (
            "" if certify_above is None else f", certify_above := {certify_above}")
        queued2, n_cert, floor = con.execute(
            f"SELECT queued, certify_samples, certify_above FROM pm_queue_review('m_{part}', queue := 'round2', "
            f"accept_sample := {accept_sample}, seed := {seed}{cert})").fetchone()
        rows2 = _review(con, truth, "round2", round2)
        try:
            cal = calibrate(con, target, target_precision)
            note = (f"accept {cal.accept if cal.accept is None else round(cal.accept, 4)} (lower bound "
                    f"{cal.accept_lower_bound if cal.accept_lower_bound is None else round(cal.accept_lower_bound, 3)}"
                    f" on {cal.reviewed} reviewed pairs, {cal.matches} matches); {cal.applied or 'nothing written'}")
            if cal.certify is not None:
                c = cal.certify
                note += (f"; certification sample {c['reviewed']} of {c['queued']} reviewed, {c['matches']} matches, "
                         f"lower bound {'-' if c['lower_bound'] is None else round(c['lower_bound'], 3)}")
        except CalibrationError as e:
            note = f"calibrate: {e}"
        pm.install(con, dataclasses.replace(context_of(con).settings))  # the version calibrate activated
        m_cal = retrieval_metrics(sql_match(con, held, target)[0], truth_h)
        out[0] += (f"\n# round 2: queue {queued2} pairs, the first {len(rows2)} reviewed "
                   f"({sum(ti in truth.get(si, ()) for _, si, _, ti, *_ in rows2)} matches); calibrate: {note}")
        if certify is None:
            out.append(_line(f"… + calibrated on round 2's {len(rows2)} verdicts, held out", m_cal))
        else:
            out[0] += (f"\n# round 2 is a new batch: {len(truth_b) - len(truth_h)} of the held-out sources queued with "
                       f"a certification sample ({n_cert} pairs >= {floor:.4f}); the other {len(truth_h)} measured")
            out += [_line("trained on the verdicts, held-out half B2", m_trained_h),
                    _line(f"… + calibrated on B1's {len(rows2)} verdicts (certification sample first), B2", m_cal)]
    return out


def _loss_note(con, cal, truth: dict) -> str:  # noqa: ANN001
    """What calibrate says the review threshold auto-rejects, against the ground truth on the reviewed sources'
    result (``m_src_a``): the share of its matches scoring below the old and the new review threshold (stage 1's
    scale; the pair scorer's re-read pairs are on another, so this is for matchers without one)."""
    rows = con.execute("SELECT source_id, target_id, score FROM m_src_a").fetchall()
    hit = [s for si, ti, s in rows if ti in truth.get(si, ())]
    frac = (lambda t: sum(s < t for s in hit) / len(hit)) if hit else (lambda t: float("nan"))
    said = "not known" if cal.recall_loss is None else (
        f"{cal.recall_loss:.3f}" + ("" if cal.recall_loss_upper is None else f", upper {cal.recall_loss_upper:.3f}")
        + f" ({cal.recall_loss_from})")
    out = (f"review {cal.old_review:.4f} -> {cal.review:.4f}, auto-rejected matches: calibrate says {said}, the "
           f"result's truth {frac(cal.old_review):.3f} -> {frac(cal.review):.3f} of {len(hit)}")
    if cal.review_kept:
        out += f" (kept: {cal.review_kept.split(':')[0]})"
    rej = con.execute("SELECT source_id, target_id, rank FROM m_src_a WHERE decision = 'reject'").fetchall()
    groups = {"1": (1,), "2-3": (2, 3)}
    by_rank = [(g, sum(r[2] in ranks and r[1] in truth.get(r[0], ()) for r in rej), sum(r[2] in ranks for r in rej))
               for g, ranks in groups.items()]
    rest = [r for r in rej if r[2] not in (1, 2, 3)]
    by_rank.append(("4+", sum(r[1] in truth.get(r[0], ()) for r in rest), len(rest)))
    out += "; rejected matches by rank " + ", ".join(f"{g}: {m} of {n}" for g, m, n in by_rank)
    if cal.reject_audit is not None and cal.reject_audit["estimate"] is not None:
        ra = cal.reject_audit
        truth_rej = sum(s < ra["review_threshold"] for s in hit)
        out += (f"; audit {ra['answered']} of {ra['rejected']} rejects: estimate {ra['estimate']:.0f} (upper "
                f"{ra['upper']:.0f}) rejected matches, truth {truth_rej}")
    return out


def _review_picking(con, truth: dict, queue: str, n: int, none_of_these: bool = False) -> list[tuple]:  # noqa: ANN001
    """As :func:`_review`, the way the page serves the queue (``next_entry``: the first entry nobody answered) and
    with picks: a non-matching pair whose offer's true match is among the listed other candidates is answered by
    picking it (in a ``one_match`` queue a match also answers the offer's other candidates); with
    ``none_of_these``, one whose true match is not listed is answered "none of these"; the entries shown."""
    from pmatch_duckdb.review import answer_entry, next_entry, pick_candidate, reject_listed

    shown = []
    while len(shown) < n and (e := next_entry(con, queue)) is not None:
        shown.append(tuple(e[c] for c in ("source_table", "source_id", "target_table", "target_id", "score",
                                          "decision", "reason", "matcher", "queue", "scored_by")))
        true = truth.get(e["source_id"], set())
        listed = [str(o["id"]) for o in json.loads(e["alternatives"] or "{}").get("others", [])]
        pick = next((c for c in listed if c in true), None)
        if e["target_id"] in true:
            answer_entry(con, e, "match", queue=queue, reviewer="ground truth")
        elif pick is not None:
            pick_candidate(con, e, pick, queue=queue, reviewer="ground truth")
        elif none_of_these and listed:
            reject_listed(con, e, queue=queue, reviewer="ground truth")
        else:
            answer_entry(con, e, "no_match", queue=queue, reviewer="ground truth")
    return shown


def _how(answer: str, n_verdicts: int) -> str:
    return "" if answer == "pairs" else f"; answered with {answer}: {n_verdicts} verdicts"


def _labelled(con, truth: dict) -> tuple[int, int]:  # noqa: ANN001
    """(match / no_match verdicts in force, true matches among them)."""
    said = [(k, v.verdict) for k, v in current_verdicts(con).items() if v.verdict in ("match", "no_match")]
    return len(said), sum(v == "match" and k.target_id in truth.get(k.source_id, ()) for k, v in said)


def _review(con, truth: dict, queue: str, n: int) -> list[tuple]:  # noqa: ANN001
    """The first ``n`` pairs of review queue ``queue`` answered by the ground truth ``truth`` (source id → its
    matching target ids), recorded as the review page records them; the rows answered."""
    rows = con.execute("SELECT source_table, source_id, target_table, target_id, score, decision, reason, matcher, "
                       "queue, scored_by FROM pm_review_queue WHERE queue = ? ORDER BY position LIMIT ?",
                       [queue, n]).fetchall()
    for st, si, tt, ti, score, dec, reason, matcher, q, scored_by in rows:
        verdict = "match" if ti in truth.get(si, ()) else "no_match"
        record_verdict(con, PairKey(st, si, tt, ti), verdict, reviewer="ground truth", matcher=matcher,
                       score=score, decision=dec, queue=q, reason=reason, scored_by=scored_by)
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--matcher", required=True,
                    help="comma-separated NAME or NAME@vN (default: active version), or zero-shot")
    ap.add_argument("--source", default="abt_test")
    ap.add_argument("--target", default="buy_all")
    ap.add_argument("--review", type=int, default=200, help="queued pairs the simulated reviewer answers")
    ap.add_argument("--target-precision", type=float, default=0.99)
    ap.add_argument("--accept-sample", type=float, default=0.05, help="pm_queue_review's accept_sample")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--review-source", default=None,
                    help="review this source table's queue instead of half the test sources (then every test "
                         "source is held out)")
    ap.add_argument("--recheck-with", default=None, metavar="NAME@vN",
                    help="then move to this matcher, queue the reviewed sources again and count the rechecks")
    ap.add_argument("--recheck-delta", type=float, default=0.3, help="pm_queue_review's recheck_delta")
    ap.add_argument("--pair-kind", default=None, choices=["cross", "siamese", "known"],
                    help="with --retrain: the pair kind train_matcher asks for (default: pmatch train's)")
    ap.add_argument("--retrain", action="store_true",
                    help="instead of calibrating, train a matcher on the verdicts (pmatch train --pairs pm_labels)")
    ap.add_argument("--round2", type=int, default=0, metavar="N",
                    help="queue the reviewed sources again with the new matcher (--retrain) or the calibrated one, "
                         "review N of the queue and calibrate")
    ap.add_argument("--certify", type=float, default=None, metavar="PRECISION",
                    help="run each matcher twice with the same review budget: the plain queue, and the queue with a "
                         "certification sample first (pm_queue_review(certify := PRECISION)); calibrate at "
                         "--target-precision after each. With --retrain --round2 N: round 2 is the held-out "
                         "sources queued with the sample, N of it reviewed")
    ap.add_argument("--certify-above", type=float, default=None, metavar="SCORE",
                    help="with --certify: the sample's score floor (default: pm_queue_review's)")
    ap.add_argument("--audit-rejects", type=int, default=0, metavar="N",
                    help="run each matcher twice: the plain queue, and the queue with a reject audit of N pairs "
                         "(pm_queue_review(audit_rejects := N))")
    ap.add_argument("--answer", default="pairs",
                    choices=["pairs", "picks", "one-match", "one-match-no-conflict-pages"],
                    help="how the reviewer answers the first round: match / no match on each page; with picks of "
                         "the offer's listed true match; with picks and 'none of these' on a one_match queue "
                         "(--review counts pages); the same on that queue without its accept_conflict pages")
    ap.add_argument("--queue-cost", type=int, default=0, metavar="ROUNDS",
                    help="also time pm_queue_review on the reviewed sources' result with and without scored_by")
    args = ap.parse_args(argv)
    con = pm.connect(args.db)
    home = context_of(con).settings.home
    con.close()
    out = ["| matcher, split | accept P / R | review band | accept or review R | R@1 |", "|---|---|---|---|---|"]
    heads = []
    if args.certify is not None and args.retrain and not args.round2:
        ap.error("--certify with --retrain certifies in round 2: give --round2 N")
    if args.audit_rejects and (args.certify is not None or args.retrain):
        ap.error("--audit-rejects runs its own two arms: not with --certify or --retrain")
    arms = [None, args.certify] if args.certify is not None and not args.retrain else [args.certify]
    audits = [0, args.audit_rejects] if args.audit_rejects else [0]
    arms = [(arm, 0) for arm in arms] if len(audits) == 1 else [(None, a) for a in audits]
    for ref in args.matcher.split(","):
        for arm, audit in arms:
            work = Path(tempfile.mkdtemp(prefix="pmatch-review-loop-"))
            try:
                head, *lines = run_one(args.db, home, ref, args.source, args.target, args.review,
                                       args.target_precision, args.seed, args.accept_sample, work, args.review_source,
                                       args.recheck_with, args.recheck_delta, args.queue_cost, args.retrain,
                                       args.round2, arm, args.certify_above, audit, args.pair_kind, args.answer)
            finally:
                shutil.rmtree(work, ignore_errors=True)
            print(head, flush=True)
            heads.append(head)
            out += lines if (arm, audit) == arms[0] else lines[1:]  # "before" is the same in both arms
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
