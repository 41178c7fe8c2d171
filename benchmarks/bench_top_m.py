"""Quality of trained matchers at several ``m`` (pairs per source the pair scorer re-reads), without retraining.

Runs ``match_products(source, target, k := 10)`` in SQL on a database that ``bench_quality.py`` left for a
full-table part (``--workdir W``: ``W/abt-buy-full.duckdb`` or ``W/amazon-google-full.duckdb``, which hold the
test split's ground truth in ``gt_test``), once per matcher version and ``m``, and prints the full-table
metrics of ``bench_quality.py`` for each: R@1 / R@5 / R@10 over the test sources, best F1 and R@P≥0.99 over the
returned pairs (and over the 1:1 pairs), the accept band and the review band. ``m = 0`` is stage 1 alone (the
same matcher, its pair scorer off).

The matcher versions are linked into a scratch pmatch home and activated there (as in ``bench_pair_cost.py``),
so the user's home and its active versions are not touched.

Usage::

    python benchmarks/bench_top_m.py --db W/abt-buy-full.duckdb --matcher NAME@v2 --m 0,1,3,10 \
        --source abt_test --target buy_all
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pair_cost import scratch_home  # noqa: E402
from bench_quality import _log_retrieval, retrieval_metrics, sql_match  # noqa: E402

import pmatch_duckdb as pm  # noqa: E402
from pmatch_duckdb.api import context_of  # noqa: E402
from pmatch_duckdb.matchers import activate, load_matcher  # noqa: E402


def split_truth(con, source: str, gt: str = "gt_test") -> dict[str, set[str]]:  # noqa: ANN001
    """Source id -> its true target ids (from ``gt``'s pairs), for every offer of ``source`` (those without a match:
    empty)."""
    truth: dict[str, set[str]] = {r[0]: set() for r in con.execute(f"SELECT CAST(id AS VARCHAR) FROM {source}")
                                  .fetchall()}
    for a, b in con.execute(f"SELECT left_id, right_id FROM {gt} WHERE label = 1").fetchall():
        if a in truth:
            truth[a].add(b)
    return truth


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", type=Path, required=True)
    ap.add_argument("--matcher", required=True, help="comma-separated NAME or NAME@vN (default: active version)")
    ap.add_argument("--m", default="0,1,3,10", help="comma-separated m values (0: the pair scorer off)")
    ap.add_argument("--source", default="abt_test")
    ap.add_argument("--target", default="buy_all")
    args = ap.parse_args(argv)
    con = pm.connect(args.db)
    settings = context_of(con).settings
    truth = split_truth(con, args.source)
    print(f"# {time.strftime('%Y-%m-%dT%H:%M:%S')} match_products('{args.source}' ({len(truth)} offers, "
          f"{sum(map(len, truth.values()))} true pairs), '{args.target}', k := 10)", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="pmatch-top-m-"))
    try:
        for ref, name, version in scratch_home(settings.home, args.matcher.split(","), tmp / "home"):
            if load_matcher(name, version, tmp / "home").pair is None:
                raise SystemExit(f"matcher {ref} has no pair scorer")
            activate(name, version, tmp / "home")
            for top_m in [int(x) for x in args.m.split(",") if x.strip()]:
                pm.install(con, dataclasses.replace(settings, home=tmp / "home", matcher=name, pair_top_m=top_m))
                ranked, secs = sql_match(con, args.source, args.target)
                met = retrieval_metrics(ranked, truth)
                _log_retrieval(ref, f"m={top_m} ({secs:.1f}s)", met)
                # what the review band leaves out: matches decided "reject" (accept or review = sent on)
                print(f"    accept or review P/R {met['accept_or_review_precision']:.3f}/"
                      f"{met['accept_or_review_recall']:.3f}", flush=True)
    finally:
        pm.install(con, settings)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
