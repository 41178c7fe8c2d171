"""What the conflict pages of a one-table (deduplication) review queue buy, on real data.

Abt-Buy's two tables put in one (``offers``: the 1,076 Abt and 1,076 Buy offers; the ground truth's 1,076 pairs are
its duplicates), from a database ``bench_quality.py`` left for ``abt-buy-full`` (``--workdir W``). Zero-shot
``match_products('offers', 'offers')`` and ``pm_queue_review`` with its defaults, which in a one-table result queue a
page (``accept_conflict``) for the weakest auto-accepted link on the path between two offers of one cluster that
the result rejects as a pair. A reviewer who is always right works through the queue in the page's order
(``next_entry``), answering each page match / no match, or, with picks, picking the offer's true duplicate where the
page lists it; once on that queue and once on the same queue without its conflict pages, each from no verdicts.
A last arm builds the queue again every 200 pages (``pm_queue_review`` once more: the verdicts given so far, no_match
inside a cluster among them, make more conflicts known), as a team reviewing in rounds would.

After each budget of pages: the links the reviewed result ends with (a pair a person said match, or one the model
auto-accepted that nobody said no to; each pair once), their precision / recall against every true pair, and the
pairwise precision / recall of the clusters those links make (connected components: a wrong link merges two
products' offers, which is what transitivity conflicts point at).

Usage::

    python benchmarks/bench_review_clusters.py --db W/abt-buy-full.duckdb --budgets 100,200,400,all
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from itertools import combinations
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pair_cost import scratch_db, scratch_home  # noqa: E402
from bench_review_pick import walk_queue  # noqa: E402

import pmatch_duckdb as pm  # noqa: E402
from pmatch_duckdb.clusters import DisjointSet  # noqa: E402
from pmatch_duckdb.fusion import FusionConfig  # noqa: E402
from pmatch_duckdb.home import pmatch_home  # noqa: E402
from pmatch_duckdb.review import answer_entry, current_verdicts, pick_candidate  # noqa: E402
from pmatch_duckdb.review.labels import PairKey  # noqa: E402

K = 10
ARMS = (("pairs", "q"), ("pairs, no conflict pages", "q0"), ("picks", "q"), ("picks, no conflict pages", "q0"),
        ("pairs, queued again every 200 pages", "q"))
REQUEUE = 200


def _pairs_of(groups: list[set[str]]) -> set[tuple[str, str]]:
    return {tuple(sorted(p)) for g in groups for p in combinations(g, 2)}


def _measure(con, result: list[tuple[str, str, str]], truth: set[tuple[str, str]], pages: int) -> dict:  # noqa: ANN001
    verdicts = current_verdicts(con)
    links = set()
    for a, b, decision in result:
        v = verdicts.get(PairKey.of("offers", a, "offers", b))
        said = v.verdict if v else None
        if said == "match" or (decision == "accept" and said != "no_match"):
            links.add(tuple(sorted((a, b))))
    ds = DisjointSet()
    for a, b in links:
        ds.union(a, b)
    comps: dict[str, set[str]] = {}
    for node in list(ds.parent):
        comps.setdefault(ds.find(node), set()).add(node)
    clustered = _pairs_of(list(comps.values()))
    tp, ctp = len(links & truth), len(clustered & truth)
    return {"pages": pages, "links": len(links), "lp": tp / len(links) if links else float("nan"),
            "lr": tp / len(truth), "cp": ctp / len(clustered) if clustered else float("nan"), "cr": ctp / len(truth),
            "largest": max((len(c) for c in comps.values()), default=0)}


def run_arm(con, arm: str, queue: str, same: dict[str, str], truth: set[tuple[str, str]],  # noqa: ANN001
            result: list[tuple[str, str, str]], budgets: list[int | None]) -> list[dict]:
    """Work through ``queue`` as ``arm`` says (``same``: offer id → its entity); a measurement at each budget."""
    queued_at = [0]

    def again(pages: int) -> None:  # the rounds arm: the verdicts so far make more conflicts known
        if pages - queued_at[0] >= REQUEUE:
            con.execute(f"SELECT * FROM pm_queue_review('m', queue := '{queue}')").fetchall()
            queued_at[0] = pages

    def answer(e: dict) -> None:
        a, b = e["source_id"], e["target_id"]
        if same[a] == same[b]:
            answer_entry(con, e, "match", queue=queue, reviewer="ground truth")
            return
        # the page lists the candidates of its left offer (the entry's source id)
        listed = [str(o["id"]) for o in json.loads(e["alternatives"] or "{}").get("others", [])]
        pick = next((c for c in listed if same[c] == same[a]), None) if arm.startswith("picks") else None
        if pick is not None:
            pick_candidate(con, e, pick, queue=queue, reviewer="ground truth")
        else:
            answer_entry(con, e, "no_match", queue=queue, reviewer="ground truth")

    if "again" in arm:  # from the queue as first built
        con.execute("DELETE FROM pm_labels")
        con.execute(f"SELECT * FROM pm_queue_review('m', queue := '{queue}')").fetchall()
    return [{"arm": arm, **r} for r in walk_queue(con, queue, budgets, answer,
                                                   lambda pages: _measure(con, result, truth, pages),
                                                   again if "again" in arm else None)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, required=True, help="bench_quality.py's abt-buy-full database")
    ap.add_argument("--home", type=Path, default=pmatch_home(), help="the pmatch home holding the models")
    ap.add_argument("--budgets", default="100,200,400,all", help="pages answered before each measurement")
    ap.add_argument("--conflict-penalty", type=float, default=FusionConfig().conflict_penalty,
                    help="the zero-shot score's penalty for titles that say two products (0: off)")
    ap.add_argument("--arms", default=None, help="comma-separated arm numbers to run (1-5; default: all)")
    args = ap.parse_args(argv)
    budgets = [None if b == "all" else int(b) for b in args.budgets.split(",")]
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="pmatch-clusters-"))
    try:
        copy = scratch_db(args.db, work)
        scratch_home(args.home, [], work / "home")
        con = pm.connect(copy, home=work / "home", matcher="none")
        con.execute("CREATE TABLE offers AS SELECT ('L' || id) AS id, title, description, brand, price, currency "
                    "FROM abt UNION ALL SELECT * FROM buy_all")
        pm.index(con, "offers", progress=False, fusion=FusionConfig(conflict_penalty=args.conflict_penalty))
        con.execute(f"CREATE TABLE m AS SELECT * FROM match_products('offers', 'offers', k := {K})")
        ds = DisjointSet()
        ids = [r[0] for r in con.execute("SELECT id FROM offers").fetchall()]
        for i in ids:
            ds.find(i)
        for s, t in con.execute("SELECT 'L' || source_id, 'R' || target_id FROM abt_buy_gt").fetchall():
            ds.union(s, t)
        same = {i: ds.find(i) for i in ids}
        groups: dict[str, set[str]] = {}
        for i, g in same.items():
            groups.setdefault(g, set()).add(i)
        truth = _pairs_of(list(groups.values()))
        st = con.execute("SELECT queued, boundary, accept_conflicts FROM pm_queue_review('m', queue := 'q')").fetchone()
        con.execute("INSERT INTO pm_review_queue SELECT * REPLACE ('q0' AS queue) FROM pm_review_queue "
                    "WHERE queue = 'q' AND reason <> 'accept_conflict'")
        result = [(str(a), str(b), d) for a, b, d in con.execute("SELECT source_id, target_id, decision FROM m")
                  .fetchall()]
        print(f"# bench_review_clusters {time.strftime('%Y-%m-%dT%H:%M:%S')}  db={args.db}  zero-shot "
              f"match_products('offers', 'offers', k := {K}): {len(ids)} offers, {len(truth)} true pairs; queue "
              f"{st[0]} entries ({st[1]} boundary, {st[2]} conflict pages); conflict penalty {args.conflict_penalty}",
              flush=True)
        print("| arm | pages (budget) | links | link precision / recall | cluster pair precision / recall | "
              "largest cluster |")
        print("|---|---|---|---|---|---|")
        base = _measure(con, result, truth, 0)
        print(f"| no review | 0 | {base['links']} | {base['lp']:.3f} / {base['lr']:.3f} | {base['cp']:.3f} / "
              f"{base['cr']:.3f} | {base['largest']} |", flush=True)
        arms = ARMS if args.arms is None else [ARMS[int(i) - 1] for i in args.arms.split(",")]
        for arm, queue in arms:
            for r in run_arm(con, arm, queue, same, truth, result, budgets):
                print(f"| {arm} | {r['pages']} ({r['budget']}) | {r['links']} | {r['lp']:.3f} / {r['lr']:.3f} | "
                      f"{r['cp']:.3f} / {r['cr']:.3f} | {r['largest']} |", flush=True)
        con.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"# done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
