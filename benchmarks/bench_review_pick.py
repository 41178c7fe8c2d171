"""What picking an offer's match among its other candidates buys a reviewer, on real data.

On a database that ``bench_quality.py`` left for a full-table part (``--workdir W``): ``match_products`` of the
sources (``--source``, e.g. the train split's, which are many) against the target table, ``pm_queue_review`` with
its defaults, and a reviewer who is always right (the ground truth, ``--gt``) working through the queue as the
review page serves it (``next_entry``: the first entry nobody has answered), in three ways on the same queue:

* ``pairs``: each page answered match / no match (the page before picks);
* ``picks``: a page whose pair is no match, where the offer's true match is among the other candidates the page
  lists, is answered with a pick (``pick_candidate``: two verdicts); otherwise as ``pairs``;
* ``picks, one match per source``: as ``picks``, on the same result queued with ``pm_queue_review(one_match :=
  true)`` (both ground truths here have at most one match per source): a match, answered or picked, records
  no_match for the offer's other unanswered boundary entries and the other candidates the page listed, so those
  entries take no page;
* ``picks and none of these, one match per source``: as the last, and a non-matching pair whose offer's true match
  is not listed is answered "none of these" (``reject_listed``: the pair and every listed candidate no_match).
  A one-match queue starts with one page per offer the result auto-accepts for two products (``accept_conflict``);
* ``..., no conflict pages``: as the last, on the same queue without those pages (a one-match queue as it was
  before they existed), side by side.

After each budget of pages: the verdicts given, the true matches labelled, and the links the reviewed result ends
with — a pair is linked where the reviewer said match, or the model auto-accepted it and nobody said no match —
as precision / recall against every true pair of the sources (retrieved or not). Each arm starts from no verdicts
(the previous arm's are deleted; the queue stays as it was built).

Usage::

    python benchmarks/bench_review_pick.py --db W/abt-buy-full.duckdb --source abt_train --target buy_all \
        --gt gt_train --budgets 100,200,400,800,all
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pair_cost import scratch_db, scratch_home  # noqa: E402
from bench_quality import sql_match  # noqa: E402
from bench_top_m import split_truth  # noqa: E402

import pmatch_duckdb as pm  # noqa: E402
from pmatch_duckdb.home import pmatch_home  # noqa: E402
from pmatch_duckdb.matchers import activate  # noqa: E402
from pmatch_duckdb.review import (  # noqa: E402
    answer_entry,
    current_verdicts,
    next_entry,
    pick_candidate,
    reject_listed,
)
from pmatch_duckdb.review.labels import PairKey  # noqa: E402

ARMS = ("pairs", "picks", "picks, one match per source", "picks and none of these, one match per source",
        "picks and none of these, one match per source, no conflict pages")


def _links(result: list[tuple], verdicts: dict) -> set[tuple[str, str]]:
    """(source id, target id) the reviewed result links: a human match, or an auto-accept nobody said no to."""
    out = set()
    for st, si, tt, ti, decision in result:
        v = verdicts.get(PairKey.of(st, si, tt, ti))
        said = v.verdict if v else None
        if said == "match" or (decision == "accept" and said != "no_match"):
            out.add((si, ti))
    return out


def _measure(con, result: list[tuple], truth: dict, pages: int) -> dict:  # noqa: ANN001
    verdicts = current_verdicts(con)
    said = [(k, v.verdict) for k, v in verdicts.items() if v.verdict in ("match", "no_match")]
    true_pairs = {(s, t) for s, ts in truth.items() for t in ts}
    links = _links(result, verdicts)
    tp = len(links & true_pairs)
    return {"pages": pages, "verdicts": len(said),
            "matches_labelled": sum(v == "match" and k.target_id in truth.get(k.source_id, ()) for k, v in said),
            "links": len(links), "precision": tp / len(links) if links else float("nan"),
            "recall": tp / len(true_pairs) if true_pairs else float("nan")}


def walk_queue(con, queue: str, budgets: list[int | None], answer: Callable[[dict], None],  # noqa: ANN001
               measure: Callable[[int], dict], before: Callable[[int], None] | None = None) -> list[dict]:
    """Answer ``queue`` in the page's order (``next_entry``: the first entry nobody answered) with
    ``answer(entry)``, one page each, from no verdicts; ``measure(pages)`` at each budget of pages (None: the queue's
    end; a queue that ends first gives its last measurement for the larger budgets). ``before(pages)``, if given,
    runs before each page is fetched. One row per budget, with its ``budget``."""
    con.execute("DELETE FROM pm_labels")
    rows, pages = [], 0
    todo = sorted(budgets, key=lambda b: float("inf") if b is None else b)
    while todo:
        if before is not None:
            before(pages)
        e = next_entry(con, queue)
        if e is None or (todo[0] is not None and pages >= todo[0]):
            rows.append({"budget": "all" if todo[0] is None else todo[0], **measure(pages)})
            todo.pop(0)
            if e is None:
                rows += [{**rows[-1], "budget": "all" if b is None else b} for b in todo]
                break
            continue
        pages += 1
        answer(e)
    return rows


def run_arm(con, arm: str, queue: str, truth: dict, result: list[tuple],  # noqa: ANN001
            budgets: list[int | None]) -> list[dict]:
    """Work through ``queue`` as ``arm`` says; a measurement at each budget (None: the queue's end)."""

    def answer(e: dict) -> None:
        true = truth.get(e["source_id"], set())
        if e["target_id"] in true:
            answer_entry(con, e, "match", queue=queue, reviewer="ground truth")
            return
        listed = [str(o["id"]) for o in json.loads(e["alternatives"] or "{}").get("others", [])]
        pick = next((c for c in listed if c in true), None) if arm != "pairs" else None
        if pick is not None:
            pick_candidate(con, e, pick, queue=queue, reviewer="ground truth")
        elif "none of these" in arm and listed:  # the offer's true match, if any, is none of those on the page
            reject_listed(con, e, queue=queue, reviewer="ground truth")
        else:
            answer_entry(con, e, "no_match", queue=queue, reviewer="ground truth")

    return [{"arm": arm, **r} for r in walk_queue(con, queue, budgets, answer,
                                                   lambda pages: _measure(con, result, truth, pages))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--matcher", default="zero-shot", help="NAME@vN, or zero-shot (the target index's fusion)")
    ap.add_argument("--source", default="abt_train")
    ap.add_argument("--target", default="buy_all")
    ap.add_argument("--gt", default="gt_train", help="ground-truth pairs table (left_id, right_id, label)")
    ap.add_argument("--home", type=Path, default=pmatch_home(), help="the pmatch home holding the matcher")
    ap.add_argument("--budgets", default="100,200,400,800,all", help="pages answered before each measurement")
    args = ap.parse_args(argv)
    budgets = [None if b == "all" else int(b) for b in args.budgets.split(",")]
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="pmatch-pick-"))
    try:
        copy = scratch_db(args.db, work)
        if args.matcher == "zero-shot":
            scratch_home(args.home, [], work / "home")
            name = "none"
        else:
            (_, name, version), = scratch_home(args.home, [args.matcher], work / "home")
            activate(name, version, work / "home")
        con = pm.connect(copy, home=work / "home", matcher=name)
        truth = split_truth(con, args.source, args.gt)
        sql_match(con, args.source, args.target)
        queued, boundary = con.execute(f"SELECT queued, boundary FROM pm_queue_review('m_{args.source}')").fetchone()
        conflicts = con.execute(f"SELECT accept_conflicts FROM pm_queue_review('m_{args.source}', queue := 'one', "
                                "one_match := true)").fetchone()[0]
        con.execute("INSERT INTO pm_review_queue SELECT * REPLACE ('one0' AS queue) FROM pm_review_queue "
                    "WHERE queue = 'one' AND reason <> 'accept_conflict'")
        result = [tuple(map(str, r[:4])) + (r[4],) for r in con.execute(
            f"SELECT source_table, source_id, target_table, target_id, decision FROM m_{args.source}").fetchall()]
        print(f"# bench_review_pick {time.strftime('%Y-%m-%dT%H:%M:%S')}  db={args.db}  matcher={args.matcher}  "
              f"match_products('{args.source}' ({len(truth)} offers, {sum(map(len, truth.values()))} true pairs), "
              f"'{args.target}')  queue {queued} entries ({boundary} boundary); one-match queue: {conflicts} "
              "accept-conflict pages", flush=True)
        print("| arm | pages (budget) | verdicts | true matches labelled | links | link precision | link recall |")
        print("|---|---|---|---|---|---|---|")
        for arm in ARMS:
            queue = ("one0" if "no conflict" in arm else "one") if "one match" in arm else "default"
            for r in run_arm(con, arm, queue, truth, result, budgets):
                print(f"| {arm} | {r['pages']} ({r['budget']}) | {r['verdicts']} | "
                      f"{r['matches_labelled']} | {r['links']} | {r['precision']:.3f} | {r['recall']:.3f} |",
                      flush=True)
        con.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"# done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
